"""The typed results contract: advbench.results, its published JSON Schema, and write_outputs' use of it."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys

import pytest
import torch

from advbench.outputs import write_outputs
from advbench.results import SCHEMA_VERSION, Results, json_schema, validate_results
from conftest import REPO, load_results

SCHEMA_FILE = REPO / "docs" / "results.schema.json"
REPORTS = sorted(REPO.glob("reports/**/results.json"))  # sub-runs beside a report too
REGENERATE = "python -m advbench.results > docs/results.schema.json"


def test_committed_schema_is_the_generated_one():
    printed = subprocess.run([sys.executable, "-m", "advbench.results"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
    assert json.loads(printed) == json_schema()
    assert SCHEMA_FILE.read_text() == printed, (
        f"docs/results.schema.json is out of date with advbench/results.py; regenerate it: {REGENERATE}")


def test_schema_version_is_semver_and_published():
    assert all(part.isdigit() for part in SCHEMA_VERSION.split(".")) and SCHEMA_VERSION.count(".") == 1
    assert json.loads(SCHEMA_FILE.read_text())["properties"]["schema_version"]["default"] == SCHEMA_VERSION


@pytest.mark.parametrize("path", REPORTS, ids=[p.parent.name for p in REPORTS])
def test_committed_reports_validate(path):
    raw = json.loads(path.read_text())
    results = Results.model_validate(raw)
    assert results.schema_version == raw.get("schema_version", "0")  # written before the field: "0"
    assert results.detection and results.attacks and results.victims
    # rewriting one changes nothing but schema_version: same keys, same order, same numbers
    written = validate_results(raw)
    assert json.dumps(written, indent=1) == json.dumps({"schema_version": SCHEMA_VERSION, **raw}, indent=1)


@pytest.mark.parametrize("path", REPORTS, ids=[p.parent.name for p in REPORTS])
def test_committed_reports_match_the_published_json_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(path.read_text()), json.loads(SCHEMA_FILE.read_text()))


def test_older_design_md_results_load():
    """test_report's hand-written results.json follows DESIGN.md as first written: fewer columns, no
    schema_version."""
    from test_report import make_results

    results = Results.model_validate(make_results())
    assert results.schema_version == "0"
    assert results.worst_case[0].roc is None and results.interpreters[0].mask_channels is None


def _paper() -> dict:
    return json.loads((REPO / "reports" / "paper" / "results.json").read_text())


def test_extra_columns_are_kept_in_place():
    raw = _paper()
    raw["detection"][0] = {"plugin_margin": [0.5, 1.0], **raw["detection"][0], "plugin_note": "kept"}
    raw["from_a_later_version"] = {"x": 1}
    written = validate_results(raw)
    assert list(written["detection"][0])[0] == "plugin_margin"
    assert written["detection"][0]["plugin_note"] == "kept"
    assert written["from_a_later_version"] == {"x": 1}


def test_known_fields_are_typed():
    raw = _paper()
    raw["detection"][0]["subset"] = "some"
    raw["attacks"][0]["n"] = "many"
    with pytest.raises(Exception) as info:
        validate_results(raw)
    text = str(info.value)
    assert "detection.0.subset" in text and "attacks.0.n" in text


def test_write_outputs_adds_schema_version_and_changes_nothing_else(tmp_path):
    raw = _paper()
    raw.pop("schema_version", None)  # as a results dict is before it is written
    raw["detection"][0]["auroc"] = float("nan")  # written as null, as before
    raw["attacks"][0]["plugin_tensor"] = torch.tensor([1, 2])  # a plugin column: a list in the file
    write_outputs(tmp_path, raw, [])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert list(on_disk)[0] == "schema_version" and on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["detection"][0]["auroc"] is None
    assert on_disk["attacks"][0]["plugin_tensor"] == [1, 2]
    assert list(on_disk)[1:] == list(raw)
    Results.model_validate(on_disk)


def test_results_that_break_the_schema_are_written_anyway_with_a_warning(tmp_path, caplog):
    raw = _paper()
    raw["detection"][3]["auroc"] = "not a number"  # a broken plugin column must not lose the run
    original = copy.deepcopy(raw)
    with caplog.at_level(logging.WARNING, logger="advbench"):
        write_outputs(tmp_path, raw, [])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == {"schema_version": SCHEMA_VERSION, **original}
    assert (tmp_path / "detection.csv").is_file()
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "detection.3.auroc" in warning and "schema" in warning


def test_digits_run_validates_and_carries_schema_version(digits_run):
    raw = load_results(digits_run)
    assert raw["schema_version"] == SCHEMA_VERSION
    results = Results.model_validate(raw)
    assert results.complete and results.detection and results.stages and results.plugins
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(raw, json.loads(SCHEMA_FILE.read_text()))


def _security_rows() -> list[dict]:
    from test_security import measured
    from advbench.security import unavailable_row

    return [measured(misclassified=40, eps=2 / 255), measured(misclassified=70, eps=8 / 255),
            measured(misclassified=20, eps=8 / 255, knowledge="adaptive", attack_plugin="opgd"),
            unavailable_row(detector="lid", interpreter=None, target="cnn", source="resnet", attack="opgd@8/255",
                            attack_plugin="opgd", knowledge="adaptive", threat_model={"norm": "linf", "eps": 8 / 255},
                            steps=10, gradient="bpda", fit_attack=None, status="not-applicable",
                            reason="transfer pair: adaptive attacks run white-box on the target only")]


def test_security_rows_and_sanity_checks_are_typed():
    from advbench.security import sanity_checks

    raw = _paper()
    raw["security"] = _security_rows()
    raw["sanity_checks"] = sanity_checks(raw["security"])
    written = validate_results(json.loads(json.dumps(raw)))
    assert written["security"] == json.loads(json.dumps(raw["security"]))
    results = Results.model_validate(written)
    assert results.security[3].status == "not-applicable" and results.security[3].success_under_detection is None
    assert results.security[0].threat_model.eps == 2 / 255
    assert {c.check for c in results.sanity_checks} == {"eps-growth", "more-steps", "transfer-vs-whitebox"}
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(written, json.loads(SCHEMA_FILE.read_text()))
    raw["sanity_checks"][0]["outcome"] = "maybe"
    raw["security"][0]["n_correct"] = "most"
    with pytest.raises(Exception) as info:
        validate_results(raw)
    assert "sanity_checks.0.outcome" in str(info.value) and "security.0.n_correct" in str(info.value)


def test_results_without_security_rows_still_load():
    older = {k: v for k, v in _paper().items() if k not in ("security", "sanity_checks")}  # a 1.0 file
    results = Results.model_validate(older)
    assert results.security == [] and results.sanity_checks == []
    assert "security" not in validate_results(older)  # not filled in: the file keeps what it had


def test_security_and_sanity_csvs_are_flat_tables(tmp_path):
    import csv

    from advbench.security import sanity_checks

    raw = _paper()
    raw["security"] = _security_rows()
    raw["sanity_checks"] = sanity_checks(raw["security"])
    raw["detection"][0]["auroc_ci"] = [0.61, 0.72]
    raw["detection"][0].pop("tpr_ci", None)  # a row without this interval: its columns stay empty
    write_outputs(tmp_path, raw, [])
    with (tmp_path / "security.csv").open(newline="") as handle:
        security = list(csv.DictReader(handle))
    assert len(security) == 4
    first, unavailable = security[0], security[3]
    row = raw["security"][0]
    assert float(first["success_under_detection_ci_low"]) == row["success_under_detection_ci"][0]
    assert float(first["success_rate_ci_high"]) == row["success_rate_ci"][1]
    assert (first["knowledge"], first["norm"], first["quantize"], first["targeted"]) == ("oblivious", "linf",
                                                                                         "True", "False")
    assert int(first["n_evaded"]) == row["n_evaded"] and first["fit_attack"] == ""
    assert unavailable["status"] == "not-applicable" and unavailable["success_under_detection"] == ""
    assert unavailable["reason"].startswith("transfer pair")
    with (tmp_path / "sanity_checks.csv").open(newline="") as handle:
        checks = list(csv.DictReader(handle))
    assert [c["check"] for c in checks] == [c["check"] for c in raw["sanity_checks"]]
    eps_growth = next(c for c in checks if c["check"] == "eps-growth")
    assert (eps_growth["outcome"], eps_growth["attack_plugin"], eps_growth["target"]) == ("pass", "pgd", "cnn")
    assert eps_growth["detector"] == "" and eps_growth["detail"]  # an oblivious attack's success: any detector
    # the older tables keep their interval columns
    with (tmp_path / "detection.csv").open(newline="") as handle:
        detection = next(csv.DictReader(handle))
    assert (detection["auroc_ci_low"], detection["auroc_ci_high"], detection["tpr_ci_low"]) == ("0.61", "0.72", "")
