"""Detection metrics, computed apart from any drawing: pure functions of scores, flags and labels.

Conventions: adversarial inputs are the positive class; a score is "higher = more likely adversarial";
a flag is the detector's hard decision (True = flagged adversarial). Every value returned is a plain Python
``float``/``int``/``None`` (or lists/dicts of them), so the results are JSON-serializable as they stand.
Rates are rounded to 6 decimals, which never changes a reported figure's meaning.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

DIGITS = 6
ROC_MAX_POINTS = 200
FPR_TARGETS = {"tpr_at_fpr_1": 0.01, "tpr_at_fpr_5": 0.05, "tpr_at_fpr_10": 0.10}
TPR_TARGETS = {"tnr_at_tpr_90": 0.90, "tnr_at_tpr_95": 0.95}
# A tiny slack for comparing a rate with a target, so that e.g. 1/100 counts as "FPR <= 1%" despite rounding.
_EPS = 1e-12


def _array(values: Any, dtype: Any = np.float64) -> np.ndarray:
    """A 1-D numpy array from a list, numpy array or torch tensor (on any device)."""
    if values is None:
        return np.zeros(0, dtype=dtype)
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    return arr.reshape(-1).astype(dtype)


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), DIGITS)


def _scores(values: Any, side: str) -> np.ndarray:
    arr = _array(values)
    if np.isnan(arr).any():
        raise ValueError(f"{side} scores contain NaN; a detector must return a number for every input")
    return arr


def _rate(flags: np.ndarray) -> Optional[float]:
    return float(flags.mean()) if flags.size else None


def _downsample(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_MAX_POINTS) -> dict[str, list[float]]:
    """At most ``max_points`` points of the curve, evenly spaced by index, both endpoints kept."""
    n = len(fpr)
    if n > max_points:
        idx = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": [_round(v) for v in fpr], "tpr": [_round(v) for v in tpr]}


def _empty_metrics(n_benign: int, n_adversarial: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n_benign": n_benign, "n_adversarial": n_adversarial, "auroc": None,
                           "tpr": None, "tnr": None}
    out.update({key: None for key in FPR_TARGETS})
    out.update({key: None for key in TPR_TARGETS})
    out["roc"] = None
    out["operating_point"] = None
    out["tpr_ci"] = out["tnr_ci"] = out["auroc_ci"] = None
    return out


def detection_metrics(benign_scores: Any, adversarial_scores: Any, benign_flags: Any = None,
                      adversarial_flags: Any = None) -> dict[str, Any]:
    """Threshold-free and operating-point metrics of one detector on one benign/adversarial population.

    Returns ``n_benign``, ``n_adversarial``; ``auroc`` (None if either side is empty); ``tpr``/``tnr``, the
    share of adversarial inputs flagged and of benign inputs not flagged (None without flags);
    ``tpr_at_fpr_{1,5,10}``, the best TPR over score thresholds whose FPR is at most 1%, 5%, 10%;
    ``tnr_at_tpr_{90,95}``, the TNR of the lowest-FPR threshold whose TPR reaches 90%, 95%;
    ``roc`` = {"fpr": [...], "tpr": [...]} (at most ~200 points, endpoints kept) and ``operating_point`` =
    {"fpr": 1 - tnr, "tpr": tpr} (None without flags on both sides). A threshold flags scores >= it.
    """
    benign = _scores(benign_scores, "benign")
    adversarial = _scores(adversarial_scores, "adversarial")
    out = _empty_metrics(int(benign.size), int(adversarial.size))

    tpr = tnr = None
    if adversarial_flags is not None:
        flags = _array(adversarial_flags, bool)
        if flags.size != adversarial.size:
            raise ValueError("adversarial_flags and adversarial_scores differ in length")
        tpr = _rate(flags)
    if benign_flags is not None:
        flags = _array(benign_flags, bool)
        if flags.size != benign.size:
            raise ValueError("benign_flags and benign_scores differ in length")
        rate = _rate(flags)
        tnr = None if rate is None else 1.0 - rate
    out["tpr"], out["tnr"] = _round(tpr), _round(tnr)
    # 95% intervals: a rate from ~250 inputs is +-0.05, an AUROC +-0.03; differences inside them are noise
    out["tpr_ci"] = None if tpr is None else wilson_interval(int(round(tpr * adversarial.size)), adversarial.size)
    out["tnr_ci"] = None if tnr is None else wilson_interval(int(round(tnr * benign.size)), benign.size)
    if tpr is not None and tnr is not None:
        out["operating_point"] = {"fpr": _round(1.0 - tnr), "tpr": _round(tpr)}

    if benign.size == 0 or adversarial.size == 0:
        return out

    scores = np.concatenate([benign, adversarial])
    if not np.isfinite(scores).all():
        # +-inf is a legitimate "certainly (not) adversarial"; ranks keep the order and every ROC point
        # (ties included) while sklearn only accepts finite numbers.
        scores = _ranks(scores)
    labels = np.concatenate([np.zeros(benign.size, dtype=int), np.ones(adversarial.size, dtype=int)])
    # imported here: scikit-learn takes about a second to import, and only the ROC needs it
    from sklearn.metrics import roc_auc_score, roc_curve

    out["auroc"] = _round(roc_auc_score(labels, scores))
    out["auroc_ci"] = auroc_interval(benign, adversarial)

    fpr, tpr_curve, _ = roc_curve(labels, scores, drop_intermediate=False)
    for key, target in FPR_TARGETS.items():
        ok = fpr <= target + _EPS
        out[key] = _round(tpr_curve[ok].max())  # the (0, 0) point is always there
    for key, target in TPR_TARGETS.items():
        ok = tpr_curve >= target - _EPS
        out[key] = _round(1.0 - fpr[ok].min())  # the (1, 1) point is always there
    fpr_d, tpr_d, _ = roc_curve(labels, scores, drop_intermediate=True)
    out["roc"] = _downsample(fpr_d, tpr_d)
    return out


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals


def wilson_interval(successes: int, n: int, z: float = Z95) -> Optional[list[float]]:
    """The Wilson score interval of a binomial rate (95% by default): [low, high], None when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and is honest at rates near 0 or 1 and at small n.
    """
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return [_round(max(0.0, centre - half)), _round(min(1.0, centre + half))]


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return ranks


def _delong_components(benign: np.ndarray, adversarial: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and DeLong's structural components: per positive, the share of negatives ranked below it; per
    negative, the share of positives ranked above it (ties count half)."""
    m, n = adversarial.size, benign.size
    scores = np.concatenate([adversarial, benign])
    if not np.isfinite(scores).all():
        scores = _ranks(scores)
    all_ranks = _midranks(scores)
    pos_ranks, neg_ranks = _midranks(scores[:m]), _midranks(scores[m:])
    auc = (all_ranks[:m].sum() - m * (m + 1) / 2) / (m * n)
    return auc, (all_ranks[:m] - pos_ranks) / n, 1.0 - (all_ranks[m:] - neg_ranks) / m


def auroc_interval(benign: Any, adversarial: Any, z: float = Z95) -> Optional[list[float]]:
    """DeLong's 95% interval of the AUROC (DeLong, DeLong & Clarke-Pearson 1988; midrank form of Sun & Xu
    2014), clipped to [0, 1]; None when a side has fewer than two scores."""
    neg, pos = _scores(benign, "benign"), _scores(adversarial, "adversarial")
    m, n = pos.size, neg.size
    if m < 2 or n < 2:
        return None
    auc, v_pos, v_neg = _delong_components(neg, pos)
    variance = v_pos.var(ddof=1) / m + v_neg.var(ddof=1) / n
    half = z * float(np.sqrt(max(variance, 0.0)))
    return [_round(max(0.0, auc - half)), _round(min(1.0, auc + half))]


def paired_auroc_test(benign_a: Any, adversarial_a: Any, benign_b: Any, adversarial_b: Any,
                      z: float = Z95) -> Optional[dict[str, Any]]:
    """DeLong's paired test of two detectors' AUROCs on the SAME inputs (score i of a and of b belong to one
    input): the difference a - b, its 95% interval and the two-sided p-value. Two detectors read on one set of
    inputs are correlated, so comparing their separate intervals is too conservative; this accounts for it.
    None when a side has fewer than two inputs or the two score sets do not align."""
    from math import erf, sqrt

    neg_a, pos_a = _scores(benign_a, "benign"), _scores(adversarial_a, "adversarial")
    neg_b, pos_b = _scores(benign_b, "benign"), _scores(adversarial_b, "adversarial")
    if neg_a.size != neg_b.size or pos_a.size != pos_b.size or neg_a.size < 2 or pos_a.size < 2:
        return None
    auc_a, vpos_a, vneg_a = _delong_components(neg_a, pos_a)
    auc_b, vpos_b, vneg_b = _delong_components(neg_b, pos_b)
    m, n = pos_a.size, neg_a.size
    cov_pos = np.cov(np.vstack([vpos_a, vpos_b]), ddof=1)
    cov_neg = np.cov(np.vstack([vneg_a, vneg_b]), ddof=1)
    variance = (cov_pos[0, 0] + cov_pos[1, 1] - 2 * cov_pos[0, 1]) / m + \
        (cov_neg[0, 0] + cov_neg[1, 1] - 2 * cov_neg[0, 1]) / n
    delta = float(auc_a - auc_b)
    sd = float(np.sqrt(max(variance, 0.0)))
    if sd == 0.0:  # identical rankings: no difference to test
        p_value = 1.0 if delta == 0.0 else 0.0
    else:
        p_value = float(2.0 * (1.0 - 0.5 * (1.0 + erf(abs(delta) / sd / sqrt(2.0)))))
    return {"delta": _round(delta), "delta_ci": [_round(delta - z * sd), _round(delta + z * sd)],
            "p_value": _round(p_value), "significant": bool(delta - z * sd > 0 or delta + z * sd < 0)}


CALIBRATED_FPRS = {"1": 0.01, "5": 0.05, "10": 0.10}


def calibrated_threshold(calibration_scores: Any, fpr: float) -> Optional[float]:
    """The threshold a detector uses at a target false-positive rate, chosen on held-out benign scores alone.

    A score strictly above the threshold is flagged. With n calibration scores, at most floor(fpr * n) of them
    lie above it, so the calibration FPR never exceeds the target; None without calibration scores.
    """
    calibration = np.sort(_scores(calibration_scores, "calibration"))[::-1]
    if calibration.size == 0:
        return None
    allowed = int(np.floor(fpr * calibration.size + _EPS))
    return float(calibration[allowed]) if allowed < calibration.size else float("-inf")


def calibrated_metrics(calibration_scores: Any, benign_scores: Any, adversarial_scores: Any) -> dict[str, Any]:
    """TPR and FPR on the evaluation inputs at thresholds chosen on the calibration inputs (1, 5, 10% FPR).

    Every detector is read at the same operating points, whatever its own decision rule, and no threshold is
    chosen on the inputs it is scored on. Each point: ``target_fpr``, ``threshold``, ``tpr`` and ``fpr`` on the
    evaluation inputs with their Wilson 95% intervals, and ``calibration_fpr``.
    """
    calibration = _scores(calibration_scores, "calibration")
    benign = _scores(benign_scores, "benign")
    adversarial = _scores(adversarial_scores, "adversarial")
    out: dict[str, Any] = {}
    for name, target in CALIBRATED_FPRS.items():
        threshold = calibrated_threshold(calibration, target)
        if threshold is None:
            out[f"fpr_{name}"] = None
            continue
        hits, false = int((adversarial > threshold).sum()), int((benign > threshold).sum())
        out[f"fpr_{name}"] = {
            "target_fpr": target, "threshold": threshold, "n_calibration": int(calibration.size),
            "calibration_fpr": _round((calibration > threshold).mean()),
            "tpr": _round(hits / adversarial.size) if adversarial.size else None,
            "tpr_ci": wilson_interval(hits, adversarial.size),
            "fpr": _round(false / benign.size) if benign.size else None,
            "fpr_ci": wilson_interval(false, benign.size)}
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    """Dense ranks (ties share a rank), order-preserving and finite."""
    _, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.float64)


def mask_invariance(f2_benign_labels: Any, f2_adversarial_labels: Any) -> Optional[float]:
    """Share of adversarial inputs whose mask keeps the benign mask's class (the paper's Table 1).

    Inputs are aligned: element i of both is the mask classifier f2's label for benign image i and for its
    adversarial counterpart. None when there are no pairs.
    """
    benign = _array(f2_benign_labels, np.int64)
    adversarial = _array(f2_adversarial_labels, np.int64)
    if benign.size != adversarial.size:
        raise ValueError("f2_benign_labels and f2_adversarial_labels differ in length")
    return _round((benign == adversarial).mean()) if benign.size else None


def recovery_rate(f2_adversarial_labels: Any, true_labels: Any) -> Optional[float]:
    """Share of adversarial inputs whose mask classifier f2 still gives the true label (the paper's Table 4).

    None when there are no inputs.
    """
    adversarial = _array(f2_adversarial_labels, np.int64)
    truth = _array(true_labels, np.int64)
    if adversarial.size != truth.size:
        raise ValueError("f2_adversarial_labels and true_labels differ in length")
    return _round((adversarial == truth).mean()) if adversarial.size else None


def worst_case(per_attack: Mapping[str, Sequence[Any]], benign_scores: Any, benign_flags: Any = None
               ) -> dict[str, Any]:
    """MEAD-style worst case over attacks (Granese et al. 2022) for one detector.

    ``per_attack`` maps an attack name to ``(adversarial_scores, adversarial_flags, success_mask)``, all
    aligned by test-image index with ``benign_scores``/``benign_flags`` (flags may be None). For each image,
    only its SUCCESSFUL attacks count: the image's worst-case adversarial score is the minimum score over
    them, and it is detected only if every one of them is flagged. Images no attack succeeded on are left
    out, on both the benign and the adversarial side, so the population is ``n_pairs`` benign/adversarial
    pairs. Returns ``detection_metrics`` of those pairs plus ``n_pairs``.
    """
    benign = _scores(benign_scores, "benign")
    n = benign.size
    b_flags = None if benign_flags is None else _array(benign_flags, bool)
    if b_flags is not None and b_flags.size != n:
        raise ValueError("benign_flags and benign_scores differ in length")

    worst_score = np.full(n, np.inf)
    any_success = np.zeros(n, dtype=bool)
    all_detected = np.ones(n, dtype=bool)
    have_flags = True
    for attack, entry in per_attack.items():
        scores, flags, success = entry
        scores = _scores(scores, f"{attack} adversarial")
        success = _array(success, bool)
        if scores.size != n or success.size != n:
            raise ValueError(f"attack {attack!r}: scores and success mask must have one entry per benign image "
                             f"({n}), got {scores.size} and {success.size}")
        any_success |= success
        worst_score = np.where(success, np.minimum(worst_score, scores), worst_score)
        if flags is None:
            have_flags = False
        else:
            flags = _array(flags, bool)
            if flags.size != n:
                raise ValueError(f"attack {attack!r}: flags must have one entry per benign image ({n})")
            all_detected &= flags | ~success

    keep = any_success
    out = detection_metrics(
        benign[keep], worst_score[keep],
        None if b_flags is None else b_flags[keep],
        all_detected[keep] if have_flags and per_attack else None,
    )
    out["n_pairs"] = int(keep.sum())
    return out
