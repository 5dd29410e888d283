"""The HTML report: built from a results.json that follows docs/DESIGN.md, checked number by number."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import advbench
import advbench.errors
from advbench import plugins
from advbench.report import render_report
from advbench.report.format import fmt

HOSTILE = "<script>alert(1)</script>"
SUITE = f"paper {HOSTILE} & $co$"
EVIL_DETECTOR = f"kd {HOSTILE} & $x"
VICTIMS = ["alexnet", "vgg"]
ATTACKS = ["fgsm", "jsma", "cw"]
CLASSES = ["plane", "car", "bird"]
PAIRS = [("alexnet", "alexnet"), ("vgg", "vgg"), ("vgg", "alexnet")]


# ---------------------------------------------------------------------------------------------------------
# a results.json that follows the DESIGN.md contract


def _roc(seed: int) -> dict:
    power = 1.5 + seed % 7
    fpr = [i / 20 for i in range(21)]
    return {"fpr": fpr, "tpr": [round(1 - (1 - f) ** power, 6) for f in fpr]}


def _metric(seed: int, low: float = 0.5) -> float:
    return round(low + (1 - low) * ((seed * 0.61803398875) % 1.0), 5)


def make_results(complete: bool = True) -> dict:
    detection = []
    seed = 0
    for detector, interpreter in [("contrast", "lan"), (EVIL_DETECTOR, None)]:
        for source, target in PAIRS:
            for attack in ATTACKS:
                for subset, population in [("all", "successful"), ("filtered", "successful"), ("all", "attacked")]:
                    if subset == "filtered" and interpreter is None:
                        continue
                    seed += 1
                    row = {
                        "detector": detector, "interpreter": interpreter, "attack": attack, "source": source,
                        "target": target, "subset": subset, "population": population,
                        "n_adversarial": 40 + seed, "n_benign": 40 + seed,
                        "tpr": _metric(seed), "tnr": _metric(seed + 100), "auroc": _metric(seed + 200),
                        "tpr_at_fpr_1": _metric(seed + 300, 0.0), "tpr_at_fpr_5": _metric(seed + 400, 0.0),
                        "tpr_at_fpr_10": _metric(seed + 500, 0.0), "tnr_at_tpr_90": _metric(seed + 600, 0.0),
                        "tnr_at_tpr_95": None,
                        "mask_invariance": _metric(seed + 700) if interpreter else None,
                        "recovery_rate": _metric(seed + 800) if subset == "filtered" else None,
                        "score_definition": "1 if f1(x) != f2(g(x)) else 0" if interpreter else "kernel density <&>",
                        "roc": _roc(seed),
                        "operating_point": {"fpr": 0.25, "tpr": _metric(seed + 900)} if interpreter else None,
                        "sweep": {},
                    }
                    detection.append(row)
    # the contrast detector's mask invariance does not depend on the detector: keep one value per cell
    worst_case = [{"detector": d, "interpreter": i, "source": s, "target": t, "subset": "all", "n_pairs": 3,
                   "auroc": _metric(k + 1000), "tpr": _metric(k + 1100), "tnr": _metric(k + 1200)}
                  for k, ((d, i), (s, t)) in enumerate([(dt, p) for dt in [("contrast", "lan"), (EVIL_DETECTOR, None)]
                                                        for p in PAIRS])]
    return {
        "suite": SUITE,
        "suite_file": f"suites/{HOSTILE}.yaml",
        "command": f"advbench run 'suites/{HOSTILE}.yaml' --seed 0 && echo done",
        "advbench_version": advbench.__version__,
        "seed": 0,
        "device": "cpu",
        "started": "2024-01-01T00:00:00+00:00",
        "finished": "2024-01-01T00:12:34+00:00",
        "wall_seconds": 754.25,
        "complete": complete,
        "dataset": {"plugin": f"digits {HOSTILE} &", "classes": CLASSES, "n_train": 1000, "n_test": 300},
        "plugins": [
            {"kind": "dataset", "name": f"digits {HOSTILE} &", "distribution": f"dist {HOSTILE} & co",
             "version": "9.9.9"},
            {"kind": "victim", "name": "alexnet", "distribution": "advbench", "version": "0.1.0"},
            {"kind": "interpreter", "name": "lan", "distribution": "advbench", "version": "0.1.0"},
            {"kind": "detector", "name": EVIL_DETECTOR, "distribution": "evil-plugin", "version": "1.2.3"},
        ],
        "stages": [
            {"stage": "train", "label": "train:alexnet", "seconds": 120.5, "cached": False},
            {"stage": "train", "label": "train:vgg", "seconds": 300.25, "cached": True},
            {"stage": "attack", "label": "attack:fgsm@alexnet", "seconds": 10.0, "cached": False},
            {"stage": "detect", "label": f"detect:{HOSTILE}", "seconds": 2.5, "cached": False},
        ],
        "victims": {"alexnet": {"plugin": "alexnet", "clean_accuracy": 0.82345},
                    "vgg": {"plugin": "vgg_like", "clean_accuracy": 0.87655}},
        "interpreters": [
            {"victim": "alexnet", "interpreter": "lan", "plugin": "lan", "mask_classifier_accuracy": 0.60049,
             "majority_class_share": 0.21111},
            {"victim": "vgg", "interpreter": "lan", "plugin": "lan", "mask_classifier_accuracy": 0.65432,
             "majority_class_share": None},
        ],
        "attacks": [{"attack": a, "plugin": a, "norm": {"fgsm": "linf", "jsma": "l0", "cw": "l2"}[a], "source": s,
                     "n": 100, "n_success": 90 - k, "success_rate": (90 - k) / 100, "mean_linf": _metric(k + 50, 0),
                     "mean_l2": 1.23456 + k, "mean_l0": 30.5 + k, "quantization_undone": k,
                     "threat_model": {"norm": {"fgsm": "linf", "jsma": "l0", "cw": "l2"}[a],
                                      "eps": {"fgsm": 8 / 255, "jsma": 20, "cw": None}[a], "quantize": a != "cw",
                                      "targeted": a == "jsma", "levels": 255}}
                    for k, (a, s) in enumerate([(a, s) for a in ATTACKS for s in VICTIMS])],
        "detection": detection,
        "worst_case": worst_case,
        "missing": [] if complete else ["attack:cw@vgg", f"detect:{HOSTILE}"],
        "warnings": [f"mask classifier of vgg predicts one class {HOSTILE} & more"],
        "paper_reference": {
            "table1": {"fgsm": 0.863, "jsma": 0.878, "cw": 0.997},
            "table2": {"fgsm": {"tpr": 0.878, "tnr": 0.614}, "jsma": {"tpr": 0.96, "tnr": 0.614},
                       "cw": {"tpr": 0.86, "tnr": 0.614}},
            "table3": {"fgsm": {"tpr": 0.843, "tnr": 0.665}, "jsma": {"tpr": 0.853, "tnr": 0.647},
                       "cw": {"tpr": 0.917, "tnr": 0.75}},
            "table4": {a: {"tpr": 1.0, "tnr": 1.0, "recovery_rate": 1.0} for a in ATTACKS},
        },
    }


def make_gallery(mask_channels: int = 1, n_examples: int = 2) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    k, e = len(CLASSES), n_examples

    def images(n: int, c: int = 3) -> torch.Tensor:
        return torch.rand(n, c, 8, 8, generator=gen)

    def labels(n: int, shift: int = 0) -> torch.Tensor:
        return (torch.arange(n, dtype=torch.int64) + shift) % k

    return [{
        "victim": victim, "interpreter": "lan", "classes": CLASSES,
        "per_class": {"x": images(k), "mask": images(k, mask_channels), "y": labels(k), "f1": labels(k),
                      "f2": labels(k, 1)},
        "examples": {"x": images(e), "mask": images(e, mask_channels), "y": labels(e), "f1": labels(e),
                     "f2": labels(e),
                     "adversarial": {a: {"x": images(e), "mask": images(e, mask_channels), "f1": labels(e, 1),
                                         "f2": labels(e), "success": torch.tensor([True, False][:e] + [True] * (e - 2))}
                                     for a in ATTACKS}}}
        for victim, mask_channels in [("alexnet", mask_channels), ("vgg", 3)]]


def write_run(folder: Path, results: dict, gallery: list | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    if gallery is not None:
        torch.save(gallery, folder / "gallery.pt")
    return folder


# ---------------------------------------------------------------------------------------------------------
# reading the page back


class Page(HTMLParser):
    """Tables by id (header labels and body rows as text), figures, images, scripts and every src/href."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._table = None
        self._row = None
        self._cell = None
        self._in_head = False
        self._script = None
        self._figure = None
        self.figures: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        for key in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
            if key in attrs and attrs[key] is not None:
                self.links.append((tag, key, attrs[key]))
        if tag == "table" and attrs.get("id"):
            self._table = {"id": attrs["id"], "header": [], "rows": [], "best": []}
            self.tables[attrs["id"]] = self._table
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"text": "", "cls": attrs.get("class") or ""}
        elif tag == "script":
            self._script = (attrs, [])
        elif tag == "figure":
            self._figure = {"class": attrs.get("class"), "id": attrs.get("id"), "svg": 0}
            self.figures.append(self._figure)
        elif tag == "svg" and self._figure is not None:
            self._figure["svg"] += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._in_head:
                if not any("groups" in c["cls"] for c in self._row):
                    self._table["header"] = [c["text"].strip() for c in self._row]
                self._table.setdefault("head_rows", []).append([c["text"].strip() for c in self._row])
            else:
                self._table["rows"].append([c["text"].strip() for c in self._row])
                self._table["best"].append(["best" in c["cls"] for c in self._row])
            self._row = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "table":
            self._table = None
        elif tag == "script" and self._script is not None:
            self.scripts.append((self._script[0], "".join(self._script[1])))
            self._script = None
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._script is not None:
            self._script[1].append(data)

    def records(self, table_id: str) -> list[dict[str, str]]:
        table = self.tables[table_id]
        return [dict(zip(table["header"], row)) for row in table["rows"]]


def rows_where(view: list[dict], **match) -> list[dict]:
    return [r for r in view if all(r.get(k) == v for k, v in match.items())]


def detection_rows(results: dict, **match) -> list[dict]:
    out = []
    for row in results["detection"]:
        if all((row.get(k) if k != "direct" else row["source"] == row["target"]) == v for k, v in match.items()):
            out.append(row)
    return out


def na(value) -> str:
    return fmt(value) if value is not None else "—"


# ---------------------------------------------------------------------------------------------------------
# the full page


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    results = make_results()
    run = write_run(tmp_path_factory.mktemp("run"), results, make_gallery())
    path = render_report(run)
    html = path.read_text(encoding="utf-8")
    return results, html, Page(html), run


def test_writes_index_html(rendered):
    results, html, page, run = rendered
    assert (run / "index.html").exists()
    assert html.startswith("<!DOCTYPE html>")
    for section in ["overview", "paper", "leaderboard", "roc", "detection", "transfer", "attacks", "gallery", "run"]:
        assert f'<section id="{section}"' in html, section


def test_embedded_json_parses_back_equal(rendered):
    results, html, page, run = rendered
    blocks = [text for attrs, text in page.scripts if attrs.get("id") == "results"]
    assert len(blocks) == 1
    assert json.loads(blocks[0]) == results
    assert json.loads(blocks[0]) == json.loads((run / "results.json").read_text())
    types = [attrs.get("type") for attrs, _ in page.scripts]
    assert types == ["application/json"], "the only script is the JSON data block"


def test_hostile_strings_escaped(rendered):
    results, html, page, run = rendered
    assert HOSTILE not in html
    assert "alert(1)</script>" not in html
    assert html.count("<script") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&amp; co" in html  # plugin distribution and suite name
    assert f"<title>advbench · {SUITE.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</title>" in html
    plugins_view = page.records("table-plugins")
    assert {r["distribution"] for r in plugins_view} >= {f"dist {HOSTILE} & co"}  # parsed back: the text itself


def test_header_facts(rendered):
    results, html, page, run = rendered
    assert "1000 train / 300 test" in html
    assert "0.823" in html and "0.877" in html  # clean accuracy
    assert "12 min 34 s" in html
    assert "advbench run &#39;suites/&lt;script&gt;" in html  # the reproducing command, escaped
    assert 'id="incomplete-banner"' not in html
    warnings = html[html.index('id="warnings"'):]
    assert "mask classifier of vgg predicts one class &lt;script&gt;" in warnings[:2000]
    stages = page.records("table-stage-summary")
    assert rows_where(stages, stage="train")[0]["seconds"] == fmt(420.75, 1)
    assert rows_where(stages, stage="train")[0]["cached"] == "1"
    assert len(page.tables["table-stages"]["rows"]) == len(results["stages"])
    versions = {(r["kind"], r["name"]): r["version"] for r in page.records("table-plugins")}
    assert versions[("detector", EVIL_DETECTOR)] == "1.2.3"


def _check_detection_table(page: Page, table_id: str, rows: list[dict], pair: str, recovery: bool = False):
    view = page.records(table_id)
    assert len(view) == len(rows)
    for row in rows:
        key = {"detector": row["detector"], "interpreter": row["interpreter"] or "—", "attack": row["attack"]}
        if pair == "victim":
            key["victim"] = row["target"]
        else:
            key.update(source=row["source"], target=row["target"])
        if "subset" in page.tables[table_id]["header"]:
            key["subset"] = row["subset"]
        found = rows_where(view, **key)
        assert len(found) == 1, key
        shown = found[0]
        assert shown["TPR"] == fmt(row["tpr"])
        assert shown["TNR"] == fmt(row["tnr"])
        assert shown["AUROC"] == fmt(row["auroc"])
        assert shown["n adv"] == str(row["n_adversarial"])
        assert shown["TPR @ FPR 1%"] == fmt(row["tpr_at_fpr_1"])
        assert shown["TPR @ FPR 5%"] == fmt(row["tpr_at_fpr_5"])
        assert shown["TPR @ FPR 10%"] == fmt(row["tpr_at_fpr_10"])
        assert shown["TNR @ TPR 90%"] == fmt(row["tnr_at_tpr_90"])
        assert "TNR @ TPR 95%" not in shown  # null everywhere: no column
        if recovery:
            assert shown["recovery"] == na(row["recovery_rate"])
        else:
            assert "recovery" not in shown


def test_detection_tables_match_results(rendered):
    results, html, page, run = rendered
    _check_detection_table(page, "table-direct",
                           detection_rows(results, direct=True, subset="all", population="successful"), "victim")
    _check_detection_table(page, "table-transfer",
                           detection_rows(results, direct=False, subset="all", population="successful"), "both")
    _check_detection_table(page, "table-filtered", detection_rows(results, subset="filtered"), "both", recovery=True)
    attacked = detection_rows(results, population="attacked")
    assert attacked
    _check_detection_table(page, "table-attacked", attacked, "both")  # no recovery rate: no column
    assert "Population “attacked”" in html


def test_mask_invariance_table(rendered):
    results, html, page, run = rendered
    view = page.records("table-invariance")
    rows = detection_rows(results, subset="all", population="successful", detector="contrast")
    assert len(view) == len(rows)
    for row in rows:
        found = rows_where(view, source=row["source"], target=row["target"], attack=row["attack"])
        assert [f["mask invariance"] for f in found] == [fmt(row["mask_invariance"])]


def test_summary_tables(rendered):
    results, html, page, run = rendered
    interp = page.records("table-interpreters")
    for row in results["interpreters"]:
        shown = rows_where(interp, victim=row["victim"], interpreter=row["interpreter"])[0]
        assert shown["mask classifier accuracy"] == fmt(row["mask_classifier_accuracy"])
        assert shown["majority class share"] == na(row["majority_class_share"])
    victims = page.records("table-victims")
    for name, info in results["victims"].items():
        assert rows_where(victims, victim=name)[0]["clean accuracy"] == fmt(info["clean_accuracy"])
    attacks = page.records("table-attacks")
    assert len(attacks) == len(results["attacks"])
    for row in results["attacks"]:
        shown = rows_where(attacks, attack=row["attack"], source=row["source"])[0]
        assert shown["success rate"] == fmt(row["success_rate"])
        assert shown["mean l∞"] == fmt(row["mean_linf"])
        assert shown["mean l2"] == fmt(row["mean_l2"])
        assert shown["mean l0"] == fmt(row["mean_l0"])
        assert shown["n success"] == str(row["n_success"])
        assert shown["norm"] == row["norm"]
        assert shown["undone by quantisation"] == str(row["quantization_undone"])
        assert shown["threat model"] == {"fgsm": "linf ≤ 8/255, on the 1/255 grid",
                                         "jsma": "l0 ≤ 20, on the 1/255 grid, targeted",
                                         "cw": "l2 unbounded, not quantised"}[row["attack"]]


def test_leaderboard_marks_best(rendered):
    results, html, page, run = rendered
    boards = [t for t in page.tables if t.startswith("table-leaderboard-")]
    assert len(boards) == len(PAIRS)
    seen_pairs = set()
    for table_id in boards:
        table = page.tables[table_id]
        view = page.records(table_id)
        # which pair: find it from the first AUROC cell
        first = view[0]
        candidates = [(s, t) for s, t in PAIRS
                      if fmt(detection_rows(results, source=s, target=t, subset="all", population="successful",
                                            detector=first["detector"], attack=ATTACKS[0])[0]["auroc"])
                      == first[ATTACKS[0]]]
        assert len(candidates) == 1
        source, target = candidates[0]
        seen_pairs.add((source, target))
        for attack in ATTACKS:
            column = table["header"].index(attack)
            values = {}
            for r in detection_rows(results, source=source, target=target, subset="all", population="successful",
                                    attack=attack):
                values[r["detector"]] = r["auroc"]
            for row, marks in zip(table["rows"], table["best"]):
                assert row[column] == fmt(values[row[0]])
                assert not marks[column]  # these results carry no paired tests: nothing is called best
        assert "worst case" in table["header"]
        worst = {w["detector"]: w["auroc"] for w in results["worst_case"]
                 if (w["source"], w["target"]) == (source, target)}
        column = table["header"].index("worst case")
        assert {row[0]: row[column] for row in table["rows"]} == {d: fmt(v) for d, v in worst.items()}
    assert seen_pairs == set(PAIRS)


def test_leaderboard_calls_a_detector_best_only_beyond_noise(tmp_path):
    """Bold needs DeLong's paired test against the runner-up to exclude 0; a gap inside the noise is marked as
    such (class tied, the title says within noise), whatever the AUROCs' order."""
    results = make_results()
    source, target = PAIRS[0]
    rows = detection_rows(results, source=source, target=target, subset="all", population="successful")
    comparisons = []
    for attack, significant in zip(ATTACKS[:2], (True, False)):
        ranked = sorted((r for r in rows if r["attack"] == attack), key=lambda r: -r["auroc"])
        best, other = ranked[0], ranked[1]
        label = lambda r: f"{r['detector']}/{r['interpreter']}" if r["interpreter"] else r["detector"]
        comparisons.append({"attack": attack, "source": source, "target": target, "subset": "all",
                            "population": "successful", "best": label(best), "other": label(other),
                            "auroc_best": best["auroc"], "auroc_other": other["auroc"], "delta": 0.1,
                            "delta_ci": [0.02, 0.18] if significant else [-0.05, 0.25], "p_value": 0.01 if
                            significant else 0.3, "significant": significant})
    results["comparisons"] = comparisons
    html = render_report(write_run(tmp_path, results, make_gallery())).read_text(encoding="utf-8")
    page = Page(html)
    marked = {}
    for table_id in (t for t in page.tables if t.startswith("table-leaderboard-")):
        table = page.tables[table_id]
        for attack in ATTACKS[:2]:
            column = table["header"].index(attack)
            marked.setdefault(attack, []).extend(marks[column] for marks in table["best"])
    assert sum(marked[ATTACKS[0]]) == 1 and sum(marked[ATTACKS[1]]) == 0
    assert "within noise of" in html and "best beyond noise" in html and 'class="num tied"' in html


def test_roc_figures(rendered):
    results, html, page, run = rendered
    rocs = [f for f in page.figures if f["class"] == "roc"]
    groups = {(r["target"], r["detector"], r["interpreter"])
              for r in detection_rows(results, subset="all", population="successful")}
    assert len(rocs) == len(groups) == 4
    assert all(f["svg"] == 1 for f in rocs)
    assert len(re.findall(r'<figure class="roc"[^>]*>\s*<figcaption>.*?</figcaption>\s*<svg', html, re.S)) == 4
    # the SVG ids are prefixed per figure: no id is defined twice in the document
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))


def test_transfer_matrix(rendered):
    results, html, page, run = rendered
    heat = [f for f in page.figures if f["class"] == "heatmap"]
    assert len(heat) == 2 and all(f["svg"] == 1 for f in heat)
    table = page.tables["table-transfer-matrix"]
    header = table["header"]
    for row in table["rows"]:
        record = dict(zip(header, row))
        source = record["source ↓ / target →"]
        for target in VICTIMS:
            match = detection_rows(results, source=source, target=target, subset="all", population="successful",
                                   detector=record["detector"], attack=record["attack"])
            assert record[target] == (fmt(match[0]["auroc"]) if match else "—")
    # detectors x attacks x source victims (alexnet only attacks itself, vgg attacks both)
    assert len(table["rows"]) == 2 * len(ATTACKS) * 2
    assert {dict(zip(header, r))["source ↓ / target →"] for r in table["rows"]} == {"vgg", "alexnet"}


def test_paper_tables_side_by_side(rendered):
    results, html, page, run = rendered
    reference = results["paper_reference"]
    assert "paper (Nguyen et al. 2017)" in html
    for name in ["table1", "table2", "table3", "table4"]:
        table = page.tables[f"paper-{name}"]
        groups = table["head_rows"][0]
        assert groups[1] == "paper (Nguyen et al. 2017)"
        assert all(g.startswith("this run") for g in groups[2:])
        for row in table["rows"]:
            attack = row[0]
            entry = reference[name][attack]
            if name == "table1":
                assert row[1] == fmt(entry)
            else:
                assert row[1:3] == [fmt(entry["tpr"]), fmt(entry["tnr"])]
    # this run's numbers beside the paper's: Table 2 direct, contrast detector (interpretation-based)
    table = page.tables["paper-table2"]
    groups = table["head_rows"][0]
    assert len(groups) == 2 + 2  # attack, paper, alexnet, vgg
    for gi, victim in [(2, "alexnet"), (3, "vgg")]:
        assert victim in groups[gi] and "contrast" in groups[gi]
        for row in table["rows"]:
            r = detection_rows(results, source=victim, target=victim, subset="all", population="successful",
                               detector="contrast", attack=row[0])[0]
            column = 1 + 2 * (gi - 1)
            assert row[column:column + 2] == [fmt(r["tpr"]), fmt(r["tnr"])]
    table = page.tables["paper-table4"]
    row = table["rows"][0]
    r = detection_rows(results, source="alexnet", target="alexnet", subset="filtered", detector="contrast",
                       attack=row[0])[0]
    assert row[4:7] == [fmt(r["tpr"]), fmt(r["tnr"]), fmt(r["recovery_rate"])]
    table = page.tables["paper-table1"]
    for row in table["rows"]:
        r = detection_rows(results, source="alexnet", target="alexnet", subset="all", population="successful",
                           detector="contrast", attack=row[0])[0]
        assert row[2] == fmt(r["mask_invariance"])


def test_gallery(rendered):
    results, html, page, run = rendered
    gallery = make_gallery()
    imgs = [attrs for tag, attrs in page.tags if tag == "img"]
    expected = sum(2 * (len(CLASSES) + 2 * (1 + len(ATTACKS))) for _ in gallery)
    assert len(imgs) == expected
    from PIL import Image

    modes = set()
    for attrs in imgs:
        assert attrs["src"].startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1])))
        assert image.size == (96, 96)  # 8 x 8 upscaled (nearest) to about 96 px
        modes.add(image.mode)
    assert modes == {"L", "RGB"}  # one-channel masks grayscale, images and 3-channel masks RGB
    section = html[html.index('<section id="gallery"'):html.index('<section id="run"')]
    for name in CLASSES:
        assert f"f1 {name}" in section and f"f2 {name}" in section
    assert "attack failed" in section
    assert "f1 ≠ f2" in section


def test_no_network_resources(rendered):
    """Static check that the page is self-contained: every src is a data: URI, every href a fragment."""
    results, html, page, run = rendered
    assert page.links, "the page has images"
    for tag, attribute, value in page.links:
        if attribute == "src":
            assert value.startswith("data:"), (tag, value[:60])
        else:
            assert value.startswith("#") or value.startswith("data:"), (tag, attribute, value[:60])
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"link", "iframe", "object", "embed", "base", "video", "audio", "source"}
    assert not re.search(r"@import|url\(\s*['\"]?(https?:|//)", html)
    for tag, attrs in page.tags:
        for key, value in attrs.items():
            if key.startswith("xmlns"):
                continue
            assert not re.match(r"\s*(https?:)?//", value or ""), (tag, key, value)


def test_render_is_deterministic(rendered, tmp_path):
    results, html, page, run = rendered
    again = write_run(tmp_path / "again", results, make_gallery())
    assert render_report(again).read_text(encoding="utf-8") == html


# ---------------------------------------------------------------------------------------------------------
# partial runs


def test_incomplete_run_shows_banner_and_not_computed(tmp_path):
    results = make_results(complete=False)
    results["detection"] = []
    results["worst_case"] = []
    del results["attacks"]
    del results["paper_reference"]
    del results["interpreters"]
    run = write_run(tmp_path / "run", results)  # no gallery.pt
    html = render_report(run).read_text(encoding="utf-8")
    assert 'id="incomplete-banner"' in html
    banner = html[html.index('id="incomplete-banner"'):]
    banner = banner[:banner.index("</div>")]
    assert "incomplete" in banner
    assert "<code>attack:cw@vgg</code>" in banner
    assert "<code>detect:&lt;script&gt;alert(1)&lt;/script&gt;</code>" in banner
    assert HOSTILE not in html
    assert "not computed" in html
    assert 'id="gallery-missing"' in html and "no gallery.pt" in html
    assert '<figure class="roc"' not in html
    assert '<section id="paper"' not in html
    page = Page(html)
    assert "table-direct" not in page.tables and "table-attacks" not in page.tables
    for attrs, text in page.scripts:
        assert json.loads(text) == results


@pytest.mark.parametrize("results", [
    {},
    {"suite": "bare", "complete": False},
    {"suite": "odd", "detection": [{"detector": "d"}], "attacks": [{}], "victims": {"v": None},
     "interpreters": "broken", "stages": [{"stage": "x"}], "paper_reference": {"table2": {"fgsm": 0.5}},
     "worst_case": [{}], "warnings": ["w"]},
])
def test_tolerates_missing_parts(tmp_path, results):
    run = write_run(tmp_path / "run", results)
    html = render_report(run).read_text(encoding="utf-8")
    assert "not computed" in html
    assert json.loads(Page(html).scripts[0][1]) == results


def test_sweep_points_are_kept_apart(tmp_path):
    results = make_results()
    rows = []
    for eps in (0.1, 0.3):
        for row in detection_rows(results, direct=True, subset="all", population="successful"):
            row = copy.deepcopy(row)
            row["sweep"] = {"attacks.fgsm.options.eps": eps}
            row["auroc"] = round(row["auroc"] * (1 - eps), 5)
            rows.append(row)
    results["detection"] = rows
    results["worst_case"] = []
    html = render_report(write_run(tmp_path / "run", results)).read_text(encoding="utf-8")
    page = Page(html)
    view = page.records("table-direct")
    assert len(view) == len(rows)
    for row in rows:
        found = rows_where(view, victim=row["target"], detector=row["detector"], attack=row["attack"],
                           sweep=f"attacks.fgsm.options.eps={row['sweep']['attacks.fgsm.options.eps']}")
        assert [f["AUROC"] for f in found] == [fmt(row["auroc"])]
    assert len([f for f in page.figures if f["class"] == "roc"]) == 2 * 2 * 2  # victims x detectors x points
    assert len([t for t in page.tables if t.startswith("table-leaderboard-")]) == 2 * 2


def test_broken_gallery_is_reported_not_fatal(tmp_path):
    run = write_run(tmp_path / "run", make_results())
    (run / "gallery.pt").write_bytes(b"not a torch file")
    html = render_report(run).read_text(encoding="utf-8")
    assert "gallery.pt could not be read" in html
    assert '<figure class="roc"' in html


def test_missing_results_json_is_a_clear_error(tmp_path):
    with pytest.raises(advbench.errors.AdvbenchError, match="no results.json"):
        render_report(tmp_path)


def test_gallery_three_channel_masks_and_odd_sizes(tmp_path):
    gallery = make_gallery(mask_channels=3, n_examples=1)
    gallery[0]["per_class"]["mask"] = torch.rand(len(CLASSES), 2, 8, 8)  # odd channel count: averaged
    gallery[1]["examples"]["adversarial"] = {}
    run = write_run(tmp_path / "run", {"suite": "s", "complete": True}, gallery)
    html = render_report(run).read_text(encoding="utf-8")
    assert html.count("<img ") == 2 * len(CLASSES) * 2 + 2 * (1 + len(ATTACKS)) + 2


# ---------------------------------------------------------------------------------------------------------
# plugin sections


class _Section:
    def __init__(self, title: str, html: str) -> None:
        self.title, self.html, self.calls = title, html, []

    @advbench.hookimpl
    def report_sections(self, results, run_dir):
        self.calls.append((results.get("suite"), run_dir))
        return [{"title": self.title, "html": self.html}]


def test_report_sections_hook(tmp_path):
    run = write_run(tmp_path / "run", make_results())
    section = _Section(f"Extra {HOSTILE} & more", '<p class="from-plugin">plugin <b>markup</b></p>')
    plugins.register_plugin(section, name=f"test-report-section-{id(section)}")
    try:
        html = render_report(run).read_text(encoding="utf-8")
    finally:
        plugins.unregister_plugin(section)
    assert section.calls == [(SUITE, str(run))]
    assert '<p class="from-plugin">plugin <b>markup</b></p>' in html  # html inserted as markup
    assert "<h2>Extra &lt;script&gt;alert(1)&lt;/script&gt; &amp; more</h2>" in html  # title escaped
    assert HOSTILE not in html
    assert 'href="#plugin-section-0"' in html
    # unregistered: gone on the next rendering
    assert "from-plugin" not in render_report(run).read_text(encoding="utf-8")


def test_failing_report_section_hook_is_reported(tmp_path):
    class Broken:
        @advbench.hookimpl
        def report_sections(self, results, run_dir):
            raise RuntimeError("boom")

    run = write_run(tmp_path / "run", {"suite": "s", "complete": True})
    broken = Broken()
    plugins.register_plugin(broken, name=f"test-report-broken-{id(broken)}")
    try:
        html = render_report(run).read_text(encoding="utf-8")
    finally:
        plugins.unregister_plugin(broken)
    assert "report_sections hook of a plugin failed: RuntimeError: boom" in html


class _StructuredSection:
    """A third-party plugin that returns data, not markup: the report escapes and formats it."""

    @advbench.hookimpl
    def report_sections(self, results, run_dir):
        return [{"title": f"Third party {HOSTILE}", "id": "third-party", "place": "after:overview",
                 "lead": f"lead {HOSTILE}",
                 "template": '<p class="from-template">{{ who }} · {{ value|fmt }}</p>',
                 "context": {"who": results["suite"], "value": 0.123456},
                 "tables": [{"title": f"table {HOSTILE}", "columns": ["name", "value"],
                             "rows": [[HOSTILE, 0.98765], ["count", 7], ["missing", None]]}]},
                {"title": "Last", "id": "overview", "place": "after:third-party"}]  # a taken id: renamed


def test_third_party_structured_section_is_placed_and_escaped(tmp_path):
    run = write_run(tmp_path / "run", make_results())
    section = _StructuredSection()
    plugins.register_plugin(section, name=f"test-report-structured-{id(section)}")
    try:
        html = render_report(run).read_text(encoding="utf-8")
    finally:
        plugins.unregister_plugin(section)
    assert HOSTILE not in html
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<h2>Third party {escaped}</h2>" in html
    assert f'<p class="lead">lead {escaped}</p>' in html
    assert f'<p class="from-template">paper {escaped} &amp; $co$ · 0.123</p>' in html
    assert f"<h3>table {escaped}</h3>" in html
    page = Page(html)
    assert page.records("third-party-table-0") == [{"name": HOSTILE, "value": "0.988"},
                                                   {"name": "count", "value": "7"},
                                                   {"name": "missing", "value": "—"}]
    # after the overview and before the paper tables (which the built-in plugin places after the overview too)
    order = [html.index(f'<section id="{sid}"') for sid in ["overview", "third-party", "overview-2", "paper",
                                                              "leaderboard"]]
    assert order == sorted(order)
    assert 'href="#third-party"' in html and 'href="#overview-2"' in html


def test_without_the_reports_plugin_the_generic_tables_remain(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", make_results())
    monkeypatch.setenv(plugins.DISABLE_ENV, "reports")
    plugins.reset()
    try:
        html = render_report(run).read_text(encoding="utf-8")
    finally:
        monkeypatch.delenv(plugins.DISABLE_ENV)
        plugins.reset()
    page = Page(html)
    assert '<section id="paper"' not in html and 'href="#paper"' not in html
    assert not [t for t in page.tables if t.startswith("paper-")]
    for table in ["table-victims", "table-interpreters", "table-direct", "table-transfer", "table-filtered",
                  "table-invariance", "table-attacks", "table-transfer-matrix", "table-leaderboard-0"]:
        assert page.records(table), table
    assert "report-problems" not in html
    assert '<section id="paper"' in render_report(run).read_text(encoding="utf-8")  # back once enabled


# ---------------------------------------------------------------------------------------------------------
# LEAD: the real digits suite. `digits_run` (a fixture in tests/conftest.py) returns the run folder of a
# finished run of the digits suite; this test checks the report of that real run against its results.json.


def test_report_of_real_digits_run(digits_run):
    run = Path(digits_run)
    results = json.loads((run / "results.json").read_text())
    html = render_report(run).read_text(encoding="utf-8")
    page = Page(html)
    assert json.loads([t for a, t in page.scripts if a.get("id") == "results"][0]) == results
    direct = [r for r in results["detection"] if r.get("source") == r.get("target")
              and r.get("subset", "all") == "all" and r.get("population", "successful") == "successful"]
    assert direct, "the digits run has direct detection rows"
    view = page.records("table-direct")
    assert len(view) == len(direct)
    for row in direct:
        found = rows_where(view, victim=row["target"], detector=row["detector"], attack=row["attack"],
                           interpreter=row["interpreter"] if row.get("interpreter") else "—")
        sweep = ", ".join(f"{k}={v}" for k, v in (row.get("sweep") or {}).items())
        found = [f for f in found if f.get("sweep", "") in (sweep, "—" if not sweep else sweep)]
        assert len(found) == 1, row
        for key, label in [("tpr", "TPR"), ("tnr", "TNR"), ("auroc", "AUROC")]:
            assert found[0][label] == na(row.get(key)), (row, label)
    attacks = page.records("table-attacks")
    for row in results.get("attacks", []):
        shown = rows_where(attacks, attack=row["attack"], source=row["source"])[0]
        assert shown["success rate"] == na(row["success_rate"])
    interps = page.records("table-interpreters") if results.get("interpreters") else []
    for row in results.get("interpreters", []):
        shown = rows_where(interps, victim=row["victim"], interpreter=row["interpreter"])[0]
        assert shown["mask classifier accuracy"] == na(row["mask_classifier_accuracy"])
    rocs = [f for f in page.figures if f["class"] == "roc"]
    assert rocs and all(f["svg"] == 1 for f in rocs)
    if (run / "gallery.pt").exists():
        imgs = [a for t, a in page.tags if t == "img"]
        assert imgs and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert results.get("complete") is not False or 'id="incomplete-banner"' in html


def test_the_core_imports_no_report_plugin():
    core = Path(advbench.__file__).parent
    offenders = [str(f.relative_to(core)) for f in core.rglob("*.py") if "advbench_reports" in f.read_text()]
    assert offenders == []


def test_filtered_table_says_what_the_filter_kept_and_that_tnr_is_one_by_construction(rendered):
    results, html, page, run = rendered
    view = page.records("table-filtered")
    every = {(r["detector"], r["interpreter"] or "—", r["attack"], r["source"], r["target"]): r
             for r in results["detection"] if r["subset"] == "all" and r["population"] == "successful"}
    checked = 0
    for row in results["detection"]:
        if row["subset"] != "filtered" or row["population"] != "successful":
            continue
        full = every[(row["detector"], row["interpreter"] or "—", row["attack"], row["source"], row["target"])]
        shown, = rows_where(view, detector=row["detector"], interpreter=row["interpreter"] or "—",
                            attack=row["attack"], source=row["source"], target=row["target"])
        assert shown["kept of all"] == fmt(row["n_adversarial"] / full["n_adversarial"])
        checked += 1
    assert checked
    assert "1.0 by construction" in html


def test_intervals_get_their_own_columns(tmp_path):
    results = make_results()
    for row in results["detection"]:
        row["auroc_ci"] = [0.5, 0.75]
    html = render_report(write_run(tmp_path, results, make_gallery())).read_text(encoding="utf-8")
    shown = Page(html).records("table-direct")
    assert shown and all(r["AUROC 95% CI"] == f"[{fmt(0.5)}, {fmt(0.75)}]" for r in shown)
