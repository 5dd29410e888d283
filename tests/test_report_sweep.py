"""The report's sweep trade-off section: a table per setting, lines against the swept value, a TPR/TNR scatter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml

from advbench.report import render_report
from advbench.selection import sweep_choice
from advbench.report.format import fmt

REPO = Path(__file__).resolve().parents[1]
FIELD = "interpreters.lan.options.beta"
BETAS = [0.5, 1, 2]
ATTACKS = ["fgsm", "pgd"]
DETECTORS = [("label-only", None), ("contrastive", "lan")]  # the control listed first: the page puts it last


# ---------------------------------------------------------------------------------------------------------
# a results.json with a sweep, following docs/DESIGN.md


def _value(*parts: int) -> float:
    return round(0.3 + 0.65 * ((sum((k + 3) * p for k, p in enumerate(parts)) * 0.618034) % 1.0), 5)


def make_results(fields: list[str] | None = None, points: list[dict] | None = None) -> dict:
    fields = fields or [FIELD]
    points = points or [{FIELD: b} for b in BETAS]
    detection, interpreters, worst = [], [], []
    for p, sweep in enumerate(points):
        interpreters.append({"victim": "cnn", "interpreter": "lan", "plugin": "lan", "mask_classifier": "lenet",
                             "mask_classifier_accuracy": _value(p, 7), "majority_class_share": 0.2,
                             "sweep": dict(sweep)})
        for d, (detector, interp) in enumerate(DETECTORS):
            for a, attack in enumerate(ATTACKS):
                for s, (subset, population) in enumerate([("all", "successful"), ("filtered", "successful"),
                                                          ("all", "attacked")]):
                    detection.append({
                        "detector": detector, "interpreter": interp, "attack": attack, "source": "cnn",
                        "target": "cnn", "subset": subset, "population": population, "n_adversarial": 40,
                        "n_benign": 40, "tpr": _value(p, d, a, s, 1), "tnr": _value(p, d, a, s, 2),
                        "auroc": _value(p, d, a, s, 3), "tpr_at_fpr_1": None, "tpr_at_fpr_5": None,
                        "tpr_at_fpr_10": None, "tnr_at_tpr_90": None, "tnr_at_tpr_95": None,
                        "mask_invariance": None, "recovery_rate": None, "score_definition": "s",
                        "roc": {"fpr": [0, 0.5, 1], "tpr": [0, 0.7, 1]}, "operating_point": None,
                        "sweep": dict(sweep)})
            worst.append({"detector": detector, "interpreter": interp, "source": "cnn", "target": "cnn",
                          "subset": "all", "n_pairs": 2, "auroc": 0.5, "tpr": 0.5, "tnr": 0.5, "sweep": dict(sweep)})
    # the same rows on the validation images, with other AUROCs: the point a sweep reports is chosen on these
    validation = [{**r, "auroc": _value(p, d, a, 4), "roc": None}
                  for p, sweep in enumerate(points) for d, (detector, _) in enumerate(DETECTORS)
                  for a, attack in enumerate(ATTACKS) for r in detection
                  if (r["sweep"], r["detector"], r["attack"], r["subset"]) == (sweep, detector, attack, "all")]
    return {
        "suite": "sweep-test", "complete": True, "seed": 0, "device": "cpu", "sweep_fields": fields,
        "dataset": {"plugin": "digits", "classes": [str(i) for i in range(10)], "n_train": 100, "n_test": 50},
        "victims": {"cnn": {"plugin": "small-cnn", "clean_accuracy": 0.95}},
        "points": [{"sweep": dict(s), "victims": {"cnn": {"plugin": "small-cnn", "clean_accuracy": 0.9 + 0.01 * i}}}
                   for i, s in enumerate(points)],
        "interpreters": interpreters,
        "attacks": [{"attack": a, "plugin": a, "norm": "linf", "source": "cnn", "n": 40, "n_success": 30,
                     "success_rate": 0.75, "mean_linf": 0.1, "mean_l2": 1.0, "mean_l0": 64, "sweep": dict(s)}
                    for s in points for a in ATTACKS],
        "detection": detection,
        "validation": validation,
        "sweep_choice": sweep_choice(validation, detection),
        "worst_case": worst,
        "warnings": ["contrastive/lan on fgsm (cnn->cnn, all): AUROC 0.510 is within 0.05 of label-only's 0.500"],
        "missing": [],
    }


class Page(HTMLParser):
    """Tables by id: header rows and body rows as (text, css class) cells."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self._table = self._row = self._cell = None
        self._head = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._table = self.tables[attrs["id"]] = {"head": [], "rows": [], "row_cls": []}
        elif tag == "thead":
            self._head = True
        elif tag == "tr" and self._table is not None:
            self._row = []
            if not self._head:
                self._table["row_cls"].append(attrs.get("class") or "")
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ["", attrs.get("class") or ""]
        elif tag == "strong" and self._cell is not None:
            self._cell[1] += " <strong>"

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table["head" if self._head else "rows"].append(self._row)
            self._row = None
        elif tag == "thead":
            self._head = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


def render(tmp_path: Path, results: dict) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "results.json").write_text(json.dumps(results))
    return render_report(tmp_path).read_text(encoding="utf-8")


def section(html: str) -> str:
    start = html.index('<section id="sweep"')
    return html[start:html.index("</section>", start)]


def row_of(results: dict, detector: str, attack: str, sweep: dict) -> dict:
    found = [r for r in results["detection"] if r["detector"] == detector and r["attack"] == attack
             and r["sweep"] == sweep and r["subset"] == "all" and r["population"] == "successful"]
    assert len(found) == 1
    return found[0]


# ---------------------------------------------------------------------------------------------------------
# (a) a synthetic results.json


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    results = make_results()
    html = render(tmp_path_factory.mktemp("sweep"), results)
    return results, html, Page(html)


def test_section_and_table_values(synthetic):
    results, html, page = synthetic
    assert '<a href="#sweep">Sweep trade-off</a>' in html
    part = section(html)
    assert "<h2>Sweep trade-off</h2>" in part and f"<code>{FIELD}</code>" in part
    table = page.tables["table-sweep"]
    groups, header = [c[0] for c in table["head"][0]], [c[0] for c in table["head"][1]]
    assert groups == ["setting"] + ATTACKS
    lead = header.index("AUROC")
    assert header[:lead] == ["detector", "interpreter", "victim", "beta", "f1 accuracy", "f2 accuracy"]
    assert header[lead:] == ["AUROC", "TPR", "TNR"] * len(ATTACKS)
    rows = table["rows"]
    assert len(rows) == len(DETECTORS) * len(BETAS)
    # the contrastive detector's rows first, label-only's after them as the control
    assert [r[0][0] for r in rows] == ["contrastive"] * 3 + ["label-only (control)"] * 3
    assert all("control" in c for c in table["row_cls"][3:]) and "group-start" in table["row_cls"][3]
    f2 = {json.dumps(r["sweep"]): r["mask_classifier_accuracy"] for r in results["interpreters"]}
    f1 = {json.dumps(p["sweep"]): p["victims"]["cnn"]["clean_accuracy"] for p in results["points"]}
    for k, row in enumerate(rows):
        detector = "contrastive" if k < 3 else "label-only"
        sweep = {FIELD: BETAS[k % 3]}
        cells = [c[0] for c in row]
        assert cells[3] == str(BETAS[k % 3])
        assert cells[4] == fmt(f1[json.dumps(sweep)])
        assert cells[5] == (fmt(f2[json.dumps(sweep)]) if detector == "contrastive" else "—")
        for a, attack in enumerate(ATTACKS):
            r = row_of(results, detector, attack, sweep)
            assert cells[lead + 3 * a: lead + 3 * a + 3] == [fmt(r["auroc"]), fmt(r["tpr"]), fmt(r["tnr"])]


def validation_auroc(results: dict, detector: str, attack: str, sweep: dict) -> float:
    return next(r["auroc"] for r in results["validation"] if (r["detector"], r["attack"], r["sweep"], r["population"])
                == (detector, attack, sweep, "successful"))


def test_the_setting_chosen_on_validation_is_bold_not_the_best_on_evaluation(synthetic):
    results, html, page = synthetic
    table = page.tables["table-sweep"]
    header = [c[0] for c in table["head"][1]]
    lead = header.index("AUROC")
    differs = 0
    for start, detector in [(0, "contrastive"), (3, "label-only")]:
        for a, attack in enumerate(ATTACKS):
            values = [validation_auroc(results, detector, attack, {FIELD: b}) for b in BETAS]
            chosen = values.index(max(values))
            evaluation = [row_of(results, detector, attack, {FIELD: b})["auroc"] for b in BETAS]
            differs += evaluation.index(max(evaluation)) != chosen
            cells = [table["rows"][start + p][lead + 3 * a] for p in range(3)]
            assert [("best" in cls, "<strong>" in cls) for _, cls in cells] == \
                [(p == chosen, p == chosen) for p in range(3)], (detector, attack)
            # TPR and TNR cells are never marked
            assert not any("best" in table["rows"][start + p][lead + 3 * a + 1][1] for p in range(3))
    assert differs  # the fixture tells the two rules apart
    assert "chosen for each attack (per detector) by AUROC on the validation images" in section(html)


def test_without_validation_no_setting_is_marked(tmp_path):
    results = make_results()
    del results["validation"], results["sweep_choice"]
    html = render(tmp_path, results)
    table = Page(html).tables["table-sweep"]
    assert not any("best" in cls for row in table["rows"] for _, cls in row)
    assert "No setting is marked: the run has no validation images" in section(html)


def test_scatter_has_one_marker_per_point_and_attack(synthetic):
    results, html, page = synthetic
    part = section(html)
    figure = part[part.index('<figure class="sweep-scatter"'):]
    figure = figure[:figure.index("</figure>")]
    assert figure.count("<svg") == 1
    assert 'data-points="6"' in figure
    markers = re.findall(r'<g id="sweepscatter-point-(\d+)-(\d+)"', figure)
    assert sorted(markers) == sorted((str(a), str(p)) for a in range(len(ATTACKS)) for p in range(len(BETAS)))
    control = re.findall(r'<g id="sweepscatter-control-(\d+)-(\d+)"', figure)
    assert len(control) == len(ATTACKS) * len(BETAS)  # label-only drawn hollow beside it
    assert "contrastive/lan on cnn" in figure and "label-only on cnn" in figure
    lines = part[part.index('<figure class="sweep-lines"'):]
    assert lines[:lines.index("</figure>")].count("<svg") == 1
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))


def test_warnings_are_prominent(synthetic):
    results, html, page = synthetic
    assert 'href="#warnings">1 warning</a>' in html  # a chip in the page header
    banner = html[html.index('id="warnings"'):]
    assert "is within 0.05 of label-only&#39;s 0.500" in banner[:1000]
    assert html.index('id="warnings"') < html.index('<section id="overview"')


def test_a_control_equal_at_every_setting_has_no_best(tmp_path):
    results = make_results()
    for row in results["detection"] + results["validation"]:
        if row["detector"] == "label-only":
            row["auroc"] = 0.6  # the control does not depend on the swept LAN field
    results["sweep_choice"] = sweep_choice(results["validation"], results["detection"])
    table = Page(render(tmp_path, results)).tables["table-sweep"]
    lead = [c[0] for c in table["head"][1]].index("AUROC")
    control = [row for row in table["rows"] if row[0][0].startswith("label-only")]
    assert len(control) == len(BETAS)
    assert not any("best" in row[lead + 3 * a][1] for row in control for a in range(len(ATTACKS)))
    contrastive = [row for row in table["rows"] if row[0][0] == "contrastive"]
    assert sum("best" in row[lead][1] for row in contrastive) == 1


def test_no_sweep_no_section(tmp_path):
    results = make_results()
    results["sweep_fields"] = []
    for key in ("detection", "interpreters", "attacks", "worst_case"):
        for row in results[key]:
            row.pop("sweep")
    results["detection"] = [r for r in results["detection"] if r["auroc"]][:4]
    del results["points"]
    html = render(tmp_path, results)
    assert '<section id="sweep"' not in html and "#sweep" not in html


def test_several_fields_use_point_labels(tmp_path):
    fields = ["attacks.fgsm.options.eps", "interpreters.lan.plugin"]
    points = [{fields[0]: e, fields[1]: i} for e in (0.1, 0.3) for i in ("lan", "gradient")]
    results = make_results(fields, points)
    results["detection"][0]["auroc"] = None  # a missing value is shown as such, not fatal
    html = render(tmp_path, results)
    page = Page(html)
    header = [c[0] for c in page.tables["table-sweep"]["head"][1]]
    assert header[3:5] == ["eps", "plugin"]
    assert len(page.tables["table-sweep"]["rows"]) == len(DETECTORS) * len(points)
    part = section(html)
    assert part.count("<svg") == 2 and "figure failed" not in part
    assert len(re.findall(r'<g id="sweepscatter-point-', part)) == len(ATTACKS) * len(points)


def test_one_field_at_a_time_over_many_fields_reads_as_one_setting_column(tmp_path):
    """Four fields varied one at a time around sweep_base: one "setting" column naming what differs."""
    fields = [f"interpreters.lan.options.{name}" for name in ("beta", "width", "depth", "epochs")]
    base = {fields[0]: 2.0, fields[1]: 512, fields[2]: 3, fields[3]: 5}
    points = [dict(base), {**base, fields[0]: 4.0}, {**base, fields[2]: 2}, {**base, fields[1]: 256, fields[3]: 15}]
    results = make_results(fields, points)
    results["sweep_base"] = base
    page = Page(render(tmp_path, results))
    table = page.tables["table-sweep"]
    header = [c[0] for c in table["head"][1]]
    assert header[:4] == ["detector", "interpreter", "victim", "setting"]
    assert not set(header) & {"beta", "width", "depth", "epochs"}
    labels = [[c[0] for c in row][3] for row in table["rows"][:len(points)]]
    assert labels == ["base", "beta=4.0", "depth=2", "width=256, epochs=15"]


# ---------------------------------------------------------------------------------------------------------
# (b) a real tiny sweep through the CLI


def run_small_digits_sweep(tmp_path: Path, change) -> tuple[Path, dict]:
    """``advbench run`` on suites/digits.yaml after ``change(suite)``, sized down; the run folder and results."""
    suite = yaml.safe_load((REPO / "suites" / "digits.yaml").read_text())
    change(suite)
    path = tmp_path / "digits-sweep.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "run"
    env = {**os.environ, "ADVBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "advbench.cli", "run", str(path), "--out", str(out),
                           "--set", "victims.cnn.options.epochs=3", "--set", "mask_classifier.options.epochs=3",
                           "--set", "evaluation.n_eval=60", "--set", "evaluation.n_fit=40"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_real_sweep_run(tmp_path):
    out, results = run_small_digits_sweep(
        tmp_path, lambda suite: suite.update(sweep={"attacks.fgsm.options.eps": [0.1, 0.3]}))
    assert results["sweep_fields"] == ["attacks.fgsm.options.eps"]
    swept = {r["sweep"]["attacks.fgsm.options.eps"] for r in results["detection"]}
    assert swept == {0.1, 0.3}
    html = (out / "index.html").read_text(encoding="utf-8")
    part = section(html)
    assert "<code>attacks.fgsm.options.eps</code>" in part and "(0.1, 0.3)" in part
    table = Page(html).tables["table-sweep"]
    rows = [[c[0] for c in r] for r in table["rows"]]
    assert [r[3] for r in rows] == ["0.1", "0.3"]
    header = [c[0] for c in table["head"][1]]
    lead = header.index("AUROC")
    for row, eps in zip(rows, (0.1, 0.3)):
        r = row_of(results, "contrastive", "fgsm", {"attacks.fgsm.options.eps": eps})
        assert row[lead:lead + 3] == [fmt(r["auroc"]), fmt(r["tpr"]), fmt(r["tnr"])]
    assert len(re.findall(r'<g id="sweepscatter-point-0-\d"', part)) == 2


def test_one_field_at_a_time_sweep_trains_the_lan_once(tmp_path):
    """A list of grids, one field each: the LAN's output map is chosen after training, so the three points
    share one trained LAN (one interpreter node in the plan, computed once) while each output gets its own
    masks; labels name only what differs from the suite's own setting."""
    def change(suite: dict) -> None:
        suite["interpreters"] = {"lan": {"plugin": "lan", "options": {"width": 64, "epochs": 2}}}
        suite["sweep"] = [{"interpreters.lan.options.output": ["importance", "masked_image"]},
                          {"attacks.fgsm.options.eps": [0.3]}]

    out, results = run_small_digits_sweep(tmp_path, change)
    fields = ["interpreters.lan.options.output", "attacks.fgsm.options.eps"]
    assert results["sweep_fields"] == fields
    assert results["sweep_base"] == {fields[0]: "importance", fields[1]: 0.2}
    points = [{fields[0]: "importance", fields[1]: 0.2}, {fields[0]: "masked_image", fields[1]: 0.2},
              {fields[0]: "importance", fields[1]: 0.3}]
    assert [r["sweep"] for r in results["interpreters"]] == points
    trained = [s for s in results["stages"] if s["stage"] == "interpreter"]
    assert len(trained) == 1 and not trained[0]["cached"]  # a node the points share is one node
    fresh_masks = [s for s in results["stages"] if s["stage"] == "masks" and "training masks" in s["label"]
                   and not s["cached"]]
    assert len(fresh_masks) == 2  # importance and masked_image; the eps point reuses the first
    log = (out / "run.log").read_text()
    f2_lines = [line for line in log.splitlines() if "clean test masks" in line]
    assert [line.rsplit("[sweep point ", 1)[1] for line in f2_lines] == [
        "the suite's own setting]", "interpreters.lan.options.output=masked_image]",
        "attacks.fgsm.options.eps=0.3]"]
    # benign scores do not depend on the attack for detectors fitted on benign data: the eps point reuses them
    benign = [s for s in results["stages"] if s["stage"] == "scores" and s["label"].endswith(", benign")]
    assert [s["cached"] for s in benign if s["label"].startswith("contrastive/")] == [False, False]
    adversarial = [s for s in results["stages"] if s["stage"] == "scores" and "fgsm from" in s["label"]]
    assert adversarial and not any(s["cached"] for s in adversarial)
    html = (out / "index.html").read_text(encoding="utf-8")
    rows = [[c[0] for c in r] for r in Page(html).tables["table-sweep"]["rows"]]
    assert [r[3:5] for r in rows[:3]] == [["importance", "0.2"], ["masked_image", "0.2"], ["importance", "0.3"]]
    part = section(html)
    for label in ("base", "output=masked_image", "eps=0.3"):
        assert f"<!-- {label} -->" in part, label  # matplotlib writes each text as a comment before its glyphs


def test_finished_sweep_points_are_on_disk_while_the_rest_run(tmp_path, monkeypatch):
    """After each sweep point, results.json holds the points finished so far (complete: false, and a line
    in missing saying how many); the last point's write is the complete one."""
    import advbench
    from advbench import api, plugins
    from advbench.cache import Cache
    from advbench.runner import run_suite
    from advbench.suite import load_suite

    out = tmp_path / "run"
    seen: list[dict] = []

    from advbench_executors.local import LocalExecutor

    class PeekingExecutor(LocalExecutor):
        name = "zz-peeking-executor"
        description = "runs nodes in order and reads results.json before each one"

        def wait(self, timeout=None):
            path = out / "results.json"
            seen.append(json.loads(path.read_text()) if path.exists() else {})
            return super().wait(timeout)

    class Plugin:
        @advbench.hookimpl
        def register_executors(register):
            register(PeekingExecutor)

    suite = yaml.safe_load((REPO / "suites" / "digits.yaml").read_text())
    suite.update(executor={"plugin": "zz-peeking-executor"},
                 sweep={"attacks.fgsm.options.eps": [0.1, 0.3]})
    suite["victims"]["cnn"]["options"]["epochs"] = 2
    suite["mask_classifier"]["options"]["epochs"] = 2
    suite["evaluation"].update(n_eval=40, n_fit=30)
    path = tmp_path / "digits-peek.yaml"
    path.write_text(yaml.safe_dump(suite))
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    plugins.register_plugin(Plugin, name="zz-peeking-executor-plugin")
    try:
        final = run_suite(load_suite(path), out, torch.device("cpu"), Cache(tmp_path / "cache"))
    finally:
        plugins.unregister_plugin(Plugin)
    assert seen[0] == {}
    snapshot = next(s for s in seen if s)  # the first write: the first point finished, the second not yet
    assert snapshot["complete"] is False
    assert "in progress: 1 of 2 sweep points finished" in snapshot["missing"]
    assert {r["sweep"]["attacks.fgsm.options.eps"] for r in snapshot["detection"]} == {0.1}
    assert snapshot["detection"] == [r for r in final["detection"] if r["sweep"]["attacks.fgsm.options.eps"] == 0.1]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["complete"] is True and on_disk["missing"] == []
    assert {r["sweep"]["attacks.fgsm.options.eps"] for r in on_disk["detection"]} == {0.1, 0.3}
