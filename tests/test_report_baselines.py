"""The baselines section: each baseline detector beside its published CIFAR-10 numbers (paper_reference.baselines)."""

from __future__ import annotations

from advbench.report import render_report
from test_report import EVIL_DETECTOR, Page, make_results, write_run


def test_published_numbers_sit_beside_ours_with_the_verdict(tmp_path):
    results = make_results()
    row = next(r for r in results["detection"] if r["detector"] == EVIL_DETECTOR and r["attack"] == "fgsm"
               and r["source"] == r["target"] == "alexnet" and r["subset"] == "all"
               and r["population"] == "successful")
    row["auroc_ci"] = [0.6, 0.7]
    row["calibrated"] = {"fpr_5": {"target_fpr": 0.05, "threshold": 0.5, "n_calibration": 200, "tpr": 0.4,
                                   "tpr_ci": [0.3, 0.5], "fpr": 0.06, "fpr_ci": [0.03, 0.1]}}
    results["paper_reference"] = {"source": "a review", "baselines": {
        EVIL_DETECTOR: {"source": "Table 9", "fgsm": {"tpr": 0.35, "fpr": 0.073}, "jsma": {"auroc": 0.99}}}}
    page = Page(render_report(write_run(tmp_path / "run", results)).read_text(encoding="utf-8"))
    records = page.records("table-baselines")
    assert {(r["victim"], r["attack"]) for r in records} == {(v, a) for v in ("alexnet", "vgg")
                                                            for a in ("fgsm", "jsma")}  # "source" is no attack
    rows = {r["attack"]: r for r in records if r["victim"] == "alexnet"}
    fgsm = rows["fgsm"]
    assert fgsm["detector"] == EVIL_DETECTOR  # escaped on the page, read back as text
    assert fgsm["published TPR"] == "0.350" and fgsm["our TPR at 5% FPR"] == "0.400 [0.300, 0.500]"
    assert fgsm["published number"] == "inside our interval"
    jsma = next(r for r in results["detection"] if r["detector"] == EVIL_DETECTOR and r["attack"] == "jsma"
                and r["source"] == r["target"] == "alexnet" and r["subset"] == "all"
                and r["population"] == "successful")
    assert rows["jsma"]["published AUROC"] == "0.990"
    # no AUROC interval on that row: no verdict is made up
    assert jsma.get("auroc_ci") is None and rows["jsma"]["published number"] == "—"
    # a reference with only baselines draws no empty "Paper vs this run" section
    assert "table-paper" not in " ".join(page.tables)
