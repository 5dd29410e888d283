"""advbench.metrics against cases small enough to compute by hand."""

import json

import numpy as np
import pytest
import torch

from advbench import metrics
from advbench.metrics import detection_metrics, mask_invariance, recovery_rate, worst_case


def test_perfectly_separated():
    m = detection_metrics([0.0, 0.1, 0.2], [0.8, 0.9, 1.0])
    assert m["auroc"] == 1.0
    for key in ("tpr_at_fpr_1", "tpr_at_fpr_5", "tpr_at_fpr_10", "tnr_at_tpr_90", "tnr_at_tpr_95"):
        assert m[key] == 1.0
    assert m["n_benign"] == 3 and m["n_adversarial"] == 3
    assert m["tpr"] is None and m["tnr"] is None and m["operating_point"] is None


def test_reversed():
    m = detection_metrics([0.8, 0.9, 1.0], [0.0, 0.1, 0.2])
    assert m["auroc"] == 0.0
    assert m["tpr_at_fpr_1"] == 0.0 and m["tpr_at_fpr_10"] == 0.0
    assert m["tnr_at_tpr_90"] == 0.0 and m["tnr_at_tpr_95"] == 0.0


def test_all_tied_is_chance():
    m = detection_metrics([0.5] * 4, [0.5] * 4)
    assert m["auroc"] == 0.5
    assert m["tpr_at_fpr_5"] == 0.0  # the only thresholds are "flag none" and "flag all"
    assert m["tnr_at_tpr_95"] == 0.0


def test_sklearn_doc_example():
    # y = [0, 0, 1, 1], scores = [0.1, 0.4, 0.35, 0.8]: ROC points (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    m = detection_metrics([0.1, 0.4], [0.35, 0.8], benign_flags=[False, True], adversarial_flags=[False, True])
    assert m["auroc"] == 0.75
    assert m["tpr_at_fpr_1"] == 0.5 and m["tpr_at_fpr_10"] == 0.5
    assert m["tnr_at_tpr_90"] == 0.5 and m["tnr_at_tpr_95"] == 0.5
    assert m["tpr"] == 0.5 and m["tnr"] == 0.5
    assert m["operating_point"] == {"fpr": 0.5, "tpr": 0.5}
    assert m["roc"]["fpr"][0] == 0.0 and m["roc"]["tpr"][0] == 0.0
    assert m["roc"]["fpr"][-1] == 1.0 and m["roc"]["tpr"][-1] == 1.0


def test_ten_by_ten_by_hand():
    benign = np.arange(10, dtype=float)  # 0 .. 9
    adversarial = [5.5, 8.5, 9.5, 10, 11, 12, 13, 14, 15, 16]
    m = detection_metrics(benign, adversarial)
    # adversarial beats benign: 5.5 beats 6, 8.5 beats 9, the other 8 beat all 10 -> 95 of 100 pairs
    assert m["auroc"] == pytest.approx(0.95)
    # FPR <= 10% allows flagging benign 9 -> threshold 8.5 flags 9 of 10 adversarial
    assert m["tpr_at_fpr_10"] == pytest.approx(0.9)
    # FPR <= 5% or 1% allows no benign -> threshold 9.5 flags 8 of 10
    assert m["tpr_at_fpr_5"] == pytest.approx(0.8) and m["tpr_at_fpr_1"] == pytest.approx(0.8)
    # TPR >= 90% needs threshold 8.5 (benign 9 flagged); TPR >= 95% needs 5.5 (benign 6..9 flagged)
    assert m["tnr_at_tpr_90"] == pytest.approx(0.9)
    assert m["tnr_at_tpr_95"] == pytest.approx(0.6)


def test_flags_give_tpr_tnr_and_operating_point():
    m = detection_metrics(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.5, 0.6]),
                          torch.tensor([False, False, False, True]), torch.tensor([True, False]))
    assert m["tpr"] == 0.5 and m["tnr"] == 0.75
    assert m["operating_point"] == {"fpr": 0.25, "tpr": 0.5}


def test_empty_side_and_json():
    m = detection_metrics([], [0.3, 0.4], benign_flags=[], adversarial_flags=[True, True])
    assert m["auroc"] is None and m["roc"] is None and m["tpr_at_fpr_5"] is None
    assert m["tpr"] == 1.0 and m["tnr"] is None and m["operating_point"] is None
    assert m["n_benign"] == 0 and m["n_adversarial"] == 2
    json.dumps(m)


def test_values_are_plain_python_and_roc_downsampled():
    rng = np.random.default_rng(0)
    m = detection_metrics(rng.normal(size=2000).astype(np.float32), rng.normal(1.0, size=2000).astype(np.float32),
                          rng.random(2000) < 0.1, rng.random(2000) < 0.7)
    text = json.dumps(m)
    assert json.loads(text) == m
    assert type(m["auroc"]) is float and type(m["n_benign"]) is int
    assert all(type(v) is float for v in m["roc"]["fpr"] + m["roc"]["tpr"])
    assert 2 <= len(m["roc"]["fpr"]) <= 201 and len(m["roc"]["fpr"]) == len(m["roc"]["tpr"])
    assert m["roc"]["fpr"][0] == 0.0 and m["roc"]["tpr"][-1] == 1.0 and m["roc"]["fpr"][-1] == 1.0
    assert np.all(np.diff(m["roc"]["fpr"]) >= 0) and np.all(np.diff(m["roc"]["tpr"]) >= 0)
    assert 0.7 < m["auroc"] < 0.8  # N(1,1) vs N(0,1): Phi(1/sqrt 2) = 0.760


def test_infinite_scores_keep_their_order():
    m = detection_metrics([-np.inf, 0.0], [1.0, np.inf])
    assert m["auroc"] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics([np.nan], [1.0])


def test_mask_invariance_and_recovery():
    assert mask_invariance([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
    assert recovery_rate(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(2 / 3, abs=1e-6)
    assert mask_invariance([], []) is None and recovery_rate([], []) is None
    with pytest.raises(ValueError):
        mask_invariance([1], [1, 2])


def _three_images(b_flag_on_image0: bool, b_score_on_image0: float):
    """Image 0: both attacks succeed; image 1: only A succeeds (B's failure is undetected and low-scored);
    image 2: no attack succeeds (left out, even though its benign copy is falsely flagged)."""
    per_attack = {
        "A": (np.array([0.9, 0.5, 0.7]), np.array([True, True, True]), np.array([True, True, False])),
        "B": (np.array([b_score_on_image0, 0.05, 0.4]), np.array([b_flag_on_image0, False, False]),
              np.array([True, False, False])),
    }
    return worst_case(per_attack, np.array([0.1, 0.2, 0.3]), np.array([False, False, True]))


def test_worst_case_all_successful_attacks_detected():
    m = _three_images(True, 0.6)
    assert m["n_pairs"] == 2 and m["n_benign"] == 2 and m["n_adversarial"] == 2
    assert m["tpr"] == 1.0  # B's undetected failure on image 1 does not count
    assert m["tnr"] == 1.0  # image 2's flagged benign copy is excluded
    assert m["auroc"] == 1.0  # worst scores 0.6 and 0.5 (not B's 0.05) vs benign 0.1, 0.2


def test_worst_case_one_missed_attack_and_min_score():
    m = _three_images(False, 0.15)
    assert m["tpr"] == 0.5  # image 0 is missed by B, so the pair counts as undetected
    # worst scores [0.15, 0.5] vs benign [0.1, 0.2]: 3 of 4 pairs ordered
    assert m["auroc"] == 0.75


def test_worst_case_without_flags_or_successes():
    per_attack = {"A": ([0.5, 0.6], None, [True, False])}
    m = worst_case(per_attack, [0.1, 0.2], None)
    assert m["n_pairs"] == 1 and m["tpr"] is None and m["tnr"] is None and m["auroc"] == 1.0
    m = worst_case({"A": ([0.5, 0.6], [True, True], [False, False])}, [0.1, 0.2], [False, False])
    assert m["n_pairs"] == 0 and m["auroc"] is None and m["tpr"] is None
    json.dumps(m)


def test_wilson_interval_matches_its_closed_form_and_stays_in_the_unit_interval():
    assert metrics.wilson_interval(0, 10) == [0.0, pytest.approx(0.277533, abs=1e-6)]
    low, high = metrics.wilson_interval(125, 250)
    assert low == pytest.approx(0.438491, abs=1e-6) and high == pytest.approx(0.561509, abs=1e-6)
    assert metrics.wilson_interval(250, 250)[1] == 1.0 and metrics.wilson_interval(0, 0) is None


def test_delong_interval_agrees_with_a_bootstrap_of_the_auroc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    benign, adversarial = rng.normal(0, 1, 300), rng.normal(1, 1, 250)
    low, high = metrics.auroc_interval(benign, adversarial)
    labels = np.r_[np.zeros(300), np.ones(250)]
    boot = [roc_auc_score(labels, np.r_[rng.choice(benign, 300), rng.choice(adversarial, 250)]) for _ in range(500)]
    b_low, b_high = np.percentile(boot, [2.5, 97.5])
    assert low == pytest.approx(b_low, abs=0.01) and high == pytest.approx(b_high, abs=0.01)
    assert low < roc_auc_score(labels, np.r_[benign, adversarial]) < high


def test_detection_rows_carry_their_intervals():
    out = metrics.detection_metrics([0.1, 0.2, 0.3, 0.9], [0.8, 0.7, 0.35, 0.95], [False, False, False, True],
                                    [True, True, False, True])
    assert out["tpr"] == 0.75 and out["tpr_ci"] == metrics.wilson_interval(3, 4)
    assert out["tnr"] == 0.75 and out["tnr_ci"] == metrics.wilson_interval(3, 4)
    low, high = out["auroc_ci"]
    assert 0 <= low <= out["auroc"] <= high <= 1


def test_calibrated_thresholds_come_from_the_calibration_scores_alone():
    calibration = np.arange(100) / 100.0  # 0.00 .. 0.99
    benign, adversarial = np.array([0.2, 0.95, 0.999]), np.array([0.5, 0.97, 0.999, 1.5])
    first = metrics.calibrated_metrics(calibration, benign, adversarial)
    assert first["fpr_5"]["threshold"] == 0.94 and first["fpr_5"]["calibration_fpr"] == 0.05
    assert first["fpr_1"]["threshold"] == 0.98 and first["fpr_10"]["threshold"] == 0.89
    assert first["fpr_5"]["tpr"] == 0.75 and first["fpr_5"]["fpr"] == pytest.approx(2 / 3, abs=1e-6)
    # other evaluation scores move the rates, never the thresholds
    second = metrics.calibrated_metrics(calibration, benign * 0.1, adversarial * 10)
    for name in ("fpr_1", "fpr_5", "fpr_10"):
        assert second[name]["threshold"] == first[name]["threshold"]
    assert second["fpr_5"]["fpr"] == 0.0 and second["fpr_5"]["tpr"] == 1.0
    assert metrics.calibrated_metrics([], benign, adversarial)["fpr_5"] is None


def test_paired_auroc_test_separates_a_real_gap_from_noise():
    """Two detectors on the same inputs: one informative, one nearly chance -> a significant gap; the same
    detector against itself plus tiny jitter -> within noise; swapping the pair flips the sign."""
    import numpy as np

    from advbench import metrics

    rng = np.random.default_rng(0)
    benign, adversarial = rng.normal(0, 1, 300), rng.normal(1.5, 1, 300)
    weak_b, weak_a = benign + rng.normal(0, 5, 300), adversarial + rng.normal(0, 5, 300)
    gap = metrics.paired_auroc_test(benign, adversarial, weak_b, weak_a)
    assert gap["significant"] and gap["delta"] > 0.1 and gap["p_value"] < 0.001
    assert gap["delta_ci"][0] <= gap["delta"] <= gap["delta_ci"][1]
    flipped = metrics.paired_auroc_test(weak_b, weak_a, benign, adversarial)
    assert flipped["delta"] == pytest.approx(-gap["delta"]) and flipped["significant"]
    jitter = metrics.paired_auroc_test(benign, adversarial, benign + rng.normal(0, 0.01, 300),
                                       adversarial + rng.normal(0, 0.01, 300))
    assert not jitter["significant"] and abs(jitter["delta"]) < 0.01
    # the paired interval is narrower than comparing the two separate DeLong intervals would suggest
    low, high = metrics.auroc_interval(benign, adversarial)
    assert jitter["delta_ci"][1] - jitter["delta_ci"][0] < (high - low)
    assert metrics.paired_auroc_test(benign[:1], adversarial, benign[:1], adversarial) is None
    assert metrics.paired_auroc_test(benign, adversarial, benign[:10], adversarial) is None
