"""Security under detection (advbench.security): the row arithmetic and the sanity checks, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advbench.metrics import wilson_interval
from advbench.security import eps_label, sanity_checks, sanity_warnings, security_row, unavailable_row

LINF = {"norm": "linf", "quantize": True, "targeted": False}
CELL = {"detector": "kd", "interpreter": None, "target": "cnn", "source": "cnn", "attack_plugin": "pgd",
        "knowledge": "oblivious", "steps": 10, "gradient": "exact", "fit_attack": None}


def measured(*, misclassified: int, evaded: int | None = None, correct: int = 100, eps: float | None = 8 / 255,
             **cell) -> dict:
    """A row from synthetic inputs: ``correct`` classified right, ``misclassified`` of them fooled after the attack,
    ``evaded`` of those under the threshold (all of them unless given)."""
    evaded = misclassified if evaded is None else evaded
    y = torch.zeros(correct, dtype=torch.long)
    adv = torch.zeros(correct, dtype=torch.long)
    adv[:misclassified] = 1
    scores = torch.ones(correct)
    scores[:evaded] = 0.0
    cell = {**CELL, **cell}
    return security_row(**cell, attack=f"{cell['attack_plugin']}@{eps_label(eps, 'linf')}",
                        threat_model={**LINF, "eps": eps}, y=y, pred_clean=y, pred_adv=adv, adversarial_scores=scores,
                        threshold=0.5, fpr=0.05)


def only(checks: list[dict], check: str) -> list[dict]:
    return [c for c in checks if c["check"] == check]


# ---------------------------------------------------------------------------------------------------------
# rows


def test_security_row_counts_and_rates_on_a_hand_made_case():
    y = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    clean = [0, 1, 2, 0, 1, 2, 0, 1, 0, 1]  # the last two wrong before any attack
    adv = [1, 2, 0, 1, 2, 0, 0, 1, 1, 2]  # fools inputs 0-5; 8-9 were never correct, so they do not count
    threshold = 0.4
    scores = [0.9, 0.41, 0.4, 0.1, -3.0, 0.0, 5.0, 5.0, 0.0, 0.0]  # 0, 1 flagged; 2 sits on the threshold: evades
    row = security_row(**CELL, attack="pgd@8/255", threat_model={**LINF, "eps": 8 / 255}, y=torch.tensor(y),
                       pred_clean=np.array(clean), pred_adv=adv, adversarial_scores=torch.tensor(scores),
                       threshold=threshold, fpr=0.05)
    assert (row["n"], row["n_correct"], row["n_misclassified"], row["n_evaded"]) == (10, 8, 6, 4)
    # float32 scores are compared in float32, as Defence.flagged compares them: 0.4f is not above 0.4
    assert int((torch.tensor(scores)[:6] > threshold).sum()) == 6 - row["n_evaded"]
    as_float64 = security_row(**CELL, attack="pgd@8/255", threat_model={**LINF, "eps": 8 / 255}, y=y, pred_clean=clean,
                              pred_adv=adv, adversarial_scores=scores, threshold=threshold, fpr=0.05)
    assert as_float64["n_evaded"] == 4
    assert row["success_rate"] == 0.75 and row["success_rate_ci"] == wilson_interval(6, 8)
    assert row["success_under_detection"] == 0.5 and row["success_under_detection_ci"] == wilson_interval(4, 8)
    assert row["robust_accuracy_detection_aware"] == 0.5
    assert row["robust_accuracy_detection_aware_ci"] == wilson_interval(4, 8)
    assert row["detected_share"] == round(2 / 6, 6) and row["detected_share_ci"] == wilson_interval(2, 6)
    assert row["status"] == "ok" and row["reason"] is None
    assert (row["norm"], row["eps"], row["threat_model"]["quantize"]) == ("linf", 8 / 255, True)
    assert (row["threshold"], row["fpr"], row["steps"], row["knowledge"]) == (0.4, 0.05, 10, "oblivious")


def test_no_correct_input_gives_none_not_nan():
    y = torch.tensor([0, 1, 2])
    row = security_row(**CELL, attack="pgd", threat_model={**LINF, "eps": None}, y=y, pred_clean=y + 1,
                       pred_adv=y + 1, adversarial_scores=torch.zeros(3), threshold=0.0, fpr=0.05)
    assert row["n"] == 3 and row["n_correct"] == 0 and row["eps"] is None
    for field in ("success_rate", "success_under_detection", "robust_accuracy_detection_aware", "detected_share"):
        assert row[field] is None and row[f"{field}_ci"] is None, field
    nothing_fooled = measured(misclassified=0)
    assert nothing_fooled["success_rate"] == 0.0 and nothing_fooled["detected_share"] is None


def test_bad_inputs_are_refused():
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="NaN"):
        security_row(**CELL, attack="pgd", threat_model=LINF, y=y, pred_clean=y, pred_adv=y,
                     adversarial_scores=torch.tensor([0.0, float("nan")]), threshold=0.0, fpr=0.05)
    with pytest.raises(ValueError, match="differ in length"):
        security_row(**CELL, attack="pgd", threat_model=LINF, y=y, pred_clean=y, pred_adv=y[:1],
                     adversarial_scores=torch.zeros(2), threshold=0.0, fpr=0.05)


def test_unavailable_row_names_the_cell_and_has_no_metrics():
    ok = measured(misclassified=50, knowledge="adaptive", attack_plugin="opgd")
    row = unavailable_row(**{**CELL, "knowledge": "adaptive", "attack_plugin": "opgd"}, attack=ok["attack"],
                          threat_model={**LINF, "eps": 8 / 255}, status="unsupported",
                          reason="detector has no differentiable score")
    assert set(row) == set(ok)
    assert {k: row[k] for k in CELL} == {k: ok[k] for k in CELL}
    assert row["status"] == "unsupported" and row["reason"] == "detector has no differentiable score"
    assert row["n"] is None and row["success_under_detection"] is None and row["success_rate_ci"] is None
    with pytest.raises(ValueError):
        unavailable_row(**CELL, attack="pgd", threat_model=LINF, status="ok", reason="")


# ---------------------------------------------------------------------------------------------------------
# sanity checks


def test_eps_series_that_falls_fails():
    rows = [measured(misclassified=80, eps=2 / 255), measured(misclassified=30, eps=4 / 255),
            measured(misclassified=90, eps=8 / 255)]
    entry, = only(sanity_checks(rows), "eps-growth")
    assert entry["outcome"] == "fail"
    assert "falls from 2/255 to 4/255" in entry["detail"] and "0.300" in entry["detail"]
    assert entry["scope"]["attack_plugin"] == "pgd" and "eps" not in entry["scope"]


def test_eps_series_that_rises_to_one_passes():
    rows = [measured(misclassified=30, eps=2 / 255), measured(misclassified=85, eps=8 / 255),
            measured(misclassified=100, eps=128 / 255)]
    entry, = only(sanity_checks(rows), "eps-growth")
    assert entry["outcome"] == "pass"
    assert "reaches ~1.0 at the large budget 128/255" in entry["detail"]


def test_eps_series_that_stays_low_at_a_large_budget_fails():
    rows = [measured(misclassified=30, eps=2 / 255), measured(misclassified=60, eps=128 / 255)]
    entry, = only(sanity_checks(rows), "eps-growth")
    assert entry["outcome"] == "fail" and "must win" in entry["detail"]
    # 16/255 is not "large": a one-step attack need not win there, so only the growth part applies
    modest, = only(sanity_checks([measured(misclassified=30, eps=2 / 255), measured(misclassified=60, eps=16 / 255)]),
                   "eps-growth")
    assert modest["outcome"] == "pass"
    unbounded, = only(sanity_checks([measured(misclassified=70, eps=None)]), "eps-growth")
    assert unbounded["outcome"] == "fail" and "unbounded" in unbounded["detail"]


def test_small_budgets_and_noise_pass_and_say_what_was_not_checked():
    # 0.50 then 0.45 of 100: inside each other's intervals, so noise, not a broken attack
    rows = [measured(misclassified=50, eps=2 / 255), measured(misclassified=45, eps=4 / 255)]
    entry, = only(sanity_checks(rows), "eps-growth")
    assert entry["outcome"] == "pass" and "not checked" in entry["detail"]


def test_oblivious_success_is_checked_once_adaptive_per_detector():
    rows = []
    for detector in ("kd", "lid"):
        rows += [measured(misclassified=40, eps=2 / 255, detector=detector),
                 measured(misclassified=80, eps=8 / 255, detector=detector)]
        rows += [measured(misclassified=40, eps=2 / 255, detector=detector, knowledge="adaptive",
                          attack_plugin="opgd"),
                 measured(misclassified=10 if detector == "lid" else 80, eps=8 / 255, detector=detector,
                          knowledge="adaptive", attack_plugin="opgd")]
    entries = only(sanity_checks(rows), "eps-growth")
    assert [(e["scope"]["knowledge"], e["scope"].get("detector"), e["outcome"]) for e in entries] == [
        ("oblivious", None, "pass"), ("adaptive", "kd", "pass"), ("adaptive", "lid", "fail")]


def test_steps_series_that_falls_fails_and_one_that_rises_passes():
    falling = [measured(misclassified=80, evaded=70, steps=10), measured(misclassified=80, evaded=20, steps=100)]
    entry, = only(sanity_checks(falling), "more-steps")
    assert entry["outcome"] == "fail" and "from 10 to 100 steps" in entry["detail"]
    rising = [measured(misclassified=80, evaded=20, steps=10), measured(misclassified=90, evaded=70, steps=100)]
    entry, = only(sanity_checks(rising), "more-steps")
    assert entry["outcome"] == "pass" and "steps" not in entry["scope"]


def test_transfer_beating_white_box_fails():
    whitebox = measured(misclassified=40, target="cnn", source="cnn")
    transfer = measured(misclassified=90, target="cnn", source="resnet")
    entry, = only(sanity_checks([whitebox, transfer]), "transfer-vs-whitebox")
    assert entry["outcome"] == "fail"
    assert entry["scope"]["source"] == "resnet" and "resnet → cnn" in entry["detail"]
    weaker = measured(misclassified=35, target="cnn", source="resnet")
    entry, = only(sanity_checks([whitebox, weaker]), "transfer-vs-whitebox")
    assert entry["outcome"] == "pass"


def test_each_check_says_when_it_had_nothing_to_compare():
    for rows in ([], [measured(misclassified=50)]):
        checks = sanity_checks(rows)
        assert [(c["check"], c["outcome"]) for c in checks] == [
            ("eps-growth", "not-applicable"), ("more-steps", "not-applicable"),
            ("transfer-vs-whitebox", "not-applicable")]
        assert all(c["detail"].startswith("Not run: ") for c in checks)


def test_unavailable_rows_and_other_sweep_points_are_not_compared():
    broken = unavailable_row(**CELL, attack="pgd@2/255", threat_model={**LINF, "eps": 2 / 255}, status="failed",
                             reason="the attack raised")
    rows = [broken, measured(misclassified=80, eps=2 / 255) | {"sweep": {"beta": 1}},
            measured(misclassified=20, eps=4 / 255) | {"sweep": {"beta": 2}}]
    assert only(sanity_checks(rows), "eps-growth")[0]["outcome"] == "not-applicable"
    same_point = [measured(misclassified=80, eps=2 / 255) | {"sweep": {"beta": 1}},
                  measured(misclassified=20, eps=4 / 255) | {"sweep": {"beta": 1}}]
    entry, = only(sanity_checks(same_point), "eps-growth")
    assert entry["outcome"] == "fail" and entry["sweep"] == {"beta": 1}


def test_sanity_warnings_name_each_failed_check():
    rows = [measured(misclassified=80, eps=2 / 255), measured(misclassified=20, eps=4 / 255),
            measured(misclassified=90, evaded=80, steps=100, eps=4 / 255, knowledge="adaptive", detector="kd",
                     interpreter="lan")]
    checks = sanity_checks(rows)
    warnings = sanity_warnings(checks)
    assert len(warnings) == sum(c["outcome"] == "fail" for c in checks) == 1
    assert warnings[0].startswith("sanity check eps-growth failed for pgd (oblivious, linf, 10 steps) on cnn: ")
    assert sanity_warnings([{"check": "eps-growth", "outcome": "pass"}]) == []
    # the same failed check beside two detectors (it reads the attack alone) is said once
    assert sanity_warnings(checks + checks) == warnings


def test_eps_labels():
    assert [eps_label(8 / 255, "linf"), eps_label(0.5, "l2"), eps_label(None), eps_label(0.03, "linf")] == [
        "8/255", "0.5", "unbounded", "0.03"]
