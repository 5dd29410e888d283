"""Security under detection: how often an attack fools the victim AND slips under the detector, and the sanity
checks that catch a broken evaluation (Carlini et al., "On Evaluating Adversarial Robustness", 2019).

Pure functions of labels, predictions and scores (lists, numpy arrays or torch tensors); every value returned is
plain JSON data. One row per (detector, attack, knowledge, eps) cell: ``security_row`` for a cell that ran,
``unavailable_row`` for one an attack could not run. ``sanity_checks`` reads the rows back and says whether the
numbers behave as a sound evaluation's must; ``sanity_warnings`` turns its failures into warning lines.

Conventions: an input is flagged when its score is strictly above the threshold (``Defence.flagged``,
``metrics.calibrated_threshold``), so a score equal to the threshold evades. Rates are over the inputs the
victim classified correctly, with Wilson 95% intervals; a rate over no inputs is None, never NaN.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

import numpy as np

from advbench.metrics import DIGITS, _array, _scores, wilson_interval

# the budget past which any working attack, a single step included, must win (almost) every time: half the
# input range in linf (every pixel may go to mid-grey), and in l2 as much as a 0.5 change on 40 elements; l0 has
# no agreed one. Smaller "large" budgets (16/255) are not enough for one-step attacks on small, smooth images
LARGE_EPS = {"linf": 0.5, "l2": 10.0}
REACH = 0.95  # "success reaches ~1.0": at a large budget the interval must reach this rate
CHECKS = ("eps-growth", "more-steps", "transfer-vs-whitebox")
# a row's identity as the checks group it: everything that names a cell except the attack's own name (and the
# attack a detector was fitted on, which follows the budget: grouping on it would split every eps series)
IDENTITY = ("detector", "interpreter", "target", "source", "attack_plugin", "knowledge", "gradient",
            "norm", "eps", "steps", "targeted", "quantize")
# an oblivious attack never sees the detector: its success without the detector is one number for all detectors
DETECTOR_FIELDS = ("detector", "interpreter")


def _identifying(detector: str, interpreter: Optional[str], target: str, source: str, attack: str,
                 attack_plugin: str, knowledge: str, threat_model: dict[str, Any], steps: Optional[int],
                 gradient: str, fit_attack: Optional[str]) -> dict[str, Any]:
    eps = threat_model.get("eps")
    return {"detector": detector, "interpreter": interpreter, "target": target, "source": source, "attack": attack,
            "attack_plugin": attack_plugin, "knowledge": knowledge, "norm": threat_model.get("norm"),
            "eps": None if eps is None else float(eps), "threat_model": dict(threat_model),
            "steps": None if steps is None else int(steps), "gradient": gradient, "fit_attack": fit_attack}


_LOW_PRECISION = {"float32": np.float32, "float16": np.float16}


def _in_precision(threshold: float, scores: Any) -> float:
    """``threshold`` rounded to the scores' float precision: ``Defence.flagged`` compares a float32 tensor with
    the threshold in float32, so a score that equals the threshold there must equal it here too."""
    dtype = str(getattr(scores, "dtype", "")).removeprefix("torch.")
    return float(_LOW_PRECISION[dtype](threshold)) if dtype in _LOW_PRECISION else float(threshold)


def _rate(hits: int, n: int) -> Optional[float]:
    return round(hits / n, DIGITS) if n else None


def security_row(*, detector: str, interpreter: Optional[str], target: str, source: str, attack: str,
                 attack_plugin: str, knowledge: str, threat_model: dict[str, Any], steps: Optional[int],
                 gradient: str, fit_attack: Optional[str], y: Any, pred_clean: Any, pred_adv: Any,
                 adversarial_scores: Any, threshold: float, fpr: float,
                 targets: Optional[Any] = None) -> dict[str, Any]:
    """One cell's attack success with and without the detector, from one entry per evaluation input.

    ``y`` true labels, ``pred_clean``/``pred_adv`` the target victim's labels of the clean and adversarial input,
    ``adversarial_scores`` the detector's score of the adversarial input; ``threshold`` is the detector's at
    ``fpr`` false positives on held-out benign images; ``targets``, for a targeted attack, the labels it was
    sent to reach (then "misclassified" means given the target, as the attack rows count it). Counts: ``n_correct`` (clean input classified right),
    ``n_misclassified`` (of those, the adversarial one classified wrong), ``n_evaded`` (of those, not flagged).
    Rates, each with a ``_ci``: ``success_rate`` = misclassified / correct (the detector ignored),
    ``success_under_detection`` = evaded / correct, ``robust_accuracy_detection_aware`` = 1 - that (over the
    correctly classified inputs, not all inputs), ``detected_share`` = flagged / misclassified.
    """
    truth = _array(y, np.int64)
    clean, adversarial = _array(pred_clean, np.int64), _array(pred_adv, np.int64)
    scores = _scores(adversarial_scores, "adversarial")  # a NaN score would silently count as flagged
    if not truth.size == clean.size == adversarial.size == scores.size:
        raise ValueError(f"y, pred_clean, pred_adv and adversarial_scores differ in length: {truth.size}, "
                         f"{clean.size}, {adversarial.size}, {scores.size}")
    correct = clean == truth
    hit = adversarial != truth if targets is None else adversarial == _array(targets, np.int64)
    misclassified = correct & hit
    evaded = misclassified & (scores <= _in_precision(threshold, adversarial_scores))
    n_correct, n_misclassified, n_evaded = int(correct.sum()), int(misclassified.sum()), int(evaded.sum())
    n_detected = n_misclassified - n_evaded
    return {**_identifying(detector, interpreter, target, source, attack, attack_plugin, knowledge, threat_model,
                           steps, gradient, fit_attack),
            "threshold": float(threshold), "fpr": float(fpr), "status": "ok", "reason": None,
            "n": int(truth.size), "n_correct": n_correct, "n_misclassified": n_misclassified, "n_evaded": n_evaded,
            "success_rate": _rate(n_misclassified, n_correct),
            "success_rate_ci": wilson_interval(n_misclassified, n_correct),
            "success_under_detection": _rate(n_evaded, n_correct),
            "success_under_detection_ci": wilson_interval(n_evaded, n_correct),
            "robust_accuracy_detection_aware": _rate(n_correct - n_evaded, n_correct),
            "robust_accuracy_detection_aware_ci": wilson_interval(n_correct - n_evaded, n_correct),
            "detected_share": _rate(n_detected, n_misclassified),
            "detected_share_ci": wilson_interval(n_detected, n_misclassified)}


METRIC_FIELDS = ("n", "n_correct", "n_misclassified", "n_evaded", "success_rate", "success_rate_ci",
                 "success_under_detection", "success_under_detection_ci", "robust_accuracy_detection_aware",
                 "robust_accuracy_detection_aware_ci", "detected_share", "detected_share_ci")


def unavailable_row(*, detector: str, interpreter: Optional[str], target: str, source: str, attack: str,
                    attack_plugin: str, knowledge: str, threat_model: dict[str, Any], steps: Optional[int],
                    gradient: str, fit_attack: Optional[str], status: str, reason: str,
                    threshold: Optional[float] = None, fpr: Optional[float] = None) -> dict[str, Any]:
    """A cell the attack could not run, with the same identifying fields as ``security_row`` and no metrics.

    ``status`` is a short word the report shows in the cell ("unsupported": the defence offers no gradient the
    attack needs; "not-applicable": the cell does not exist by design, e.g. an adaptive attack on a transfer
    pair; "failed": the attack raised), ``reason`` one sentence saying why.
    """
    if status == "ok":
        raise ValueError("an unavailable row needs a status other than 'ok'")
    return {**_identifying(detector, interpreter, target, source, attack, attack_plugin, knowledge, threat_model,
                           steps, gradient, fit_attack),
            "threshold": threshold, "fpr": fpr, "status": status, "reason": reason,
            **{field: None for field in METRIC_FIELDS}}


# ---------------------------------------------------------------------------------------------------------
# sanity checks


def eps_label(eps: Optional[float], norm: Optional[str] = None) -> str:
    """"8/255" for an L-inf budget on the 8-bit grid, "0.5" otherwise, "unbounded" for None."""
    if eps is None:
        return "unbounded"
    levels = eps * 255
    if norm == "linf" and eps > 0 and abs(levels - round(levels)) < 1e-6:
        return f"{round(levels)}/255"
    return f"{eps:g}"


def _is_large(eps: Optional[float], norm: Optional[str]) -> bool:
    return eps is None or (norm in LARGE_EPS and eps >= LARGE_EPS[norm] - 1e-9)


def _identity(row: dict[str, Any]) -> dict[str, Any]:
    threat = row.get("threat_model") if isinstance(row.get("threat_model"), dict) else {}
    return {name: row.get(name, threat.get(name)) for name in IDENTITY}


def _key(row: dict[str, Any], ignore: Iterable[str]) -> str:
    """What a row's identity is without the ``ignore``d fields (and the attack's name), its sweep point and seed."""
    ignore = set(ignore)
    scope = {k: v for k, v in _identity(row).items() if k not in ignore}
    return json.dumps([scope, row.get("sweep") or {}, row.get("seed")], sort_keys=True, default=str)


def _groups(rows: Iterable[dict[str, Any]], ignore: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Rows that differ only in the ``ignore``d identity fields (and the attack's name), per sweep point."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_key(row, ignore), []).append(row)
    return groups


def _scope(row: dict[str, Any], ignore: Iterable[str]) -> dict[str, Any]:
    ignore = set(ignore)
    return {k: v for k, v in _identity(row).items() if k not in ignore and v is not None}


def _entry(check: str, outcome: str, row: dict[str, Any], ignore: Iterable[str], detail: str) -> dict[str, Any]:
    entry = {"check": check, "outcome": outcome, "scope": _scope(row, ignore), "detail": detail}
    if row.get("sweep"):
        entry["sweep"] = row["sweep"]
    if row.get("seed") is not None:
        entry["seed"] = row["seed"]
    return entry


def _measured(row: dict[str, Any], field: str) -> bool:
    return row.get("status", "ok") == "ok" and row.get(field) is not None and row.get(f"{field}_ci") is not None


def _drop(before: dict[str, Any], after: dict[str, Any], field: str) -> float:
    """How far ``after``'s 95% interval lies below ``before``'s; > 0 is a fall beyond the sampling noise.

    Non-overlapping intervals are a conservative test (a real fall may go unflagged), which suits a warning.
    """
    return before[f"{field}_ci"][0] - after[f"{field}_ci"][1]


def _value(row: dict[str, Any], field: str) -> str:
    low, high = row[f"{field}_ci"]
    return f"{row[field]:.3f} [{low:.3f}, {high:.3f}]"


def _worst_fall(series: list[tuple[float, dict[str, Any]]], field: str) -> Optional[tuple[dict, dict]]:
    """The pair (earlier, later) of a series sorted by its setting that falls the most beyond the noise."""
    worst, worst_drop = None, 0.0
    for i, (setting_a, a) in enumerate(series):
        for setting_b, b in series[i + 1:]:
            drop = _drop(a, b, field)
            if setting_a < setting_b and drop > worst_drop:
                worst, worst_drop = (a, b), drop
    return worst


def _eps_order(row: dict[str, Any]) -> float:
    return float("inf") if row.get("eps") is None else float(row["eps"])


def _eps_growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    measured = [r for r in rows if _measured(r, "success_rate")]
    for knowledge_rows, ignore in [([r for r in measured if r.get("knowledge") == "oblivious"],
                                    ("eps",) + DETECTOR_FIELDS),
                                   ([r for r in measured if r.get("knowledge") != "oblivious"], ("eps",))]:
        for group in _groups(knowledge_rows, ignore).values():
            group.sort(key=_eps_order)
            per_eps: dict[float, dict[str, Any]] = {}
            for row in group:
                per_eps.setdefault(_eps_order(row), row)
            largest = list(per_eps.values())[-1]
            norm, large = largest.get("norm"), _is_large(largest.get("eps"), largest.get("norm"))
            if len(per_eps) < 2 and not large:
                continue
            series = " → ".join(f"{_value(r, 'success_rate')} at {eps_label(r.get('eps'), norm)}"
                                for r in per_eps.values())
            budget = "the unbounded budget" if largest.get("eps") is None else \
                f"the large budget {eps_label(largest['eps'], norm)}"
            problems = []
            fall = _worst_fall([(_eps_order(r), r) for r in group], "success_rate")
            if fall:
                a, b = fall
                problems.append(f"it falls from {eps_label(a.get('eps'), norm)} to {eps_label(b.get('eps'), norm)} "
                                "beyond the 95% intervals")
            if large and largest["success_rate_ci"][1] < REACH:
                problems.append(f"at {budget} its interval stays below {REACH}: an attack given that much room "
                                "must win")
            if problems:
                detail = f"Success without the detector {series}: " + "; ".join(problems) + "."
            elif large:
                grows = " does not fall as eps grows and" if len(per_eps) > 1 else ""
                detail = f"Success without the detector {series}{grows} reaches ~1.0 at {budget}."
            else:
                limit = f"{eps_label(LARGE_EPS[norm], norm)}" if norm in LARGE_EPS else "none is set for this norm"
                detail = (f"Success without the detector {series} does not fall as eps grows (reaching ~1.0 not "
                          f"checked: the largest budget is below the large one, {limit}).")
            out.append(_entry("eps-growth", "fail" if problems else "pass", largest, ignore, detail))
    return out


def _more_steps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    measured = [r for r in rows if r.get("steps") is not None and _measured(r, "success_under_detection")]
    for group in _groups(measured, ("steps",)).values():
        group.sort(key=lambda r: r["steps"])
        if len({r["steps"] for r in group}) < 2:
            continue
        series = " → ".join(f"{_value(r, 'success_under_detection')} at {r['steps']} steps" for r in group)
        fall = _worst_fall([(r["steps"], r) for r in group], "success_under_detection")
        if fall:
            a, b = fall
            detail = (f"Success under detection {series}: it falls from {a['steps']} to {b['steps']} steps beyond "
                      "the 95% intervals, and more iterations of a working attack never hurt it.")
        else:
            detail = f"Success under detection {series} does not fall with more steps."
        out.append(_entry("more-steps", "fail" if fall else "pass", group[-1], ("steps",), detail))
    return out


def _transfer_vs_whitebox(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    measured = [r for r in rows if _measured(r, "success_rate")]
    # white-box rows of the same attack and budget on the same target, whatever their knowledge or steps
    attack_ignore = DETECTOR_FIELDS + ("source", "knowledge", "gradient", "steps")
    whitebox = _groups([r for r in measured if r.get("source") == r.get("target")], attack_ignore)
    ignore = DETECTOR_FIELDS
    for group in _groups([r for r in measured if r.get("source") != r.get("target")], ignore).values():
        transfer = max(group, key=lambda r: r["success_rate"])
        counterparts = whitebox.get(_key(transfer, attack_ignore))
        if not counterparts:
            continue
        best = max(counterparts, key=lambda r: r["success_rate"])
        beats = transfer["success_rate_ci"][0] > best["success_rate_ci"][1]
        where = f"{transfer['source']} → {transfer['target']}"
        if beats:
            detail = (f"Transferred from {where}, success {_value(transfer, 'success_rate')} beats the white-box "
                      f"attack's {_value(best, 'success_rate')} on {transfer['target']} beyond the 95% intervals: "
                      "the white-box attack is not working.")
        else:
            detail = (f"Transferred from {where}, success {_value(transfer, 'success_rate')} does not beat the "
                      f"white-box attack's {_value(best, 'success_rate')} on {transfer['target']}.")
        out.append(_entry("transfer-vs-whitebox", "fail" if beats else "pass", transfer, ignore, detail))
    return out


WHY_NOT_RUN = {
    "eps-growth": "no attack was measured at two or more budgets (or at one large or unbounded budget)",
    "more-steps": "no attack was measured at two or more step counts with all else equal",
    "transfer-vs-whitebox": "no transferred attack has a white-box counterpart (same attack and budget on the "
                            "same target)",
}


def sanity_checks(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checks that catch a broken evaluation, one entry per series compared: ``{"check", "outcome", "scope",
    "detail"}`` (and ``sweep`` for a sweep point's rows).

    - ``eps-growth``: an attack's success without the detector does not fall as eps grows, and at a large budget
      (linf >= 0.5, l2 >= 10, or unbounded) reaches ~1.0 (its interval reaches 0.95).
    - ``more-steps``: success under detection does not fall with more steps, all else equal.
    - ``transfer-vs-whitebox``: an attack transferred from another victim does not beat the strongest white-box
      attack of the same plugin and budget on the same target.

    "Falls" and "beats" mean beyond the rows' 95% intervals (they do not overlap), so sampling noise alone does
    not fail a check. A check with nothing to compare gets one "not-applicable" entry saying why. Only rows with
    status "ok" take part.
    """
    rows = [r for r in rows if isinstance(r, dict)]
    out = []
    for check, run in zip(CHECKS, (_eps_growth, _more_steps, _transfer_vs_whitebox)):
        entries = run(rows)
        out += entries or [{"check": check, "outcome": "not-applicable", "scope": {},
                            "detail": f"Not run: {WHY_NOT_RUN[check]}."}]
    return out


def scope_label(entry: dict[str, Any]) -> str:
    """"pgd (adaptive, linf, 100 steps) on cnn from vgg, detector kd/lan" for a check's scope."""
    scope = entry.get("scope") or {}
    how = ", ".join(str(v) for v in (scope.get("knowledge"), scope.get("norm")) if v)
    if scope.get("steps") is not None:
        how += f", {scope['steps']} steps"
    label = f"{scope.get('attack_plugin', 'every attack')}" + (f" ({how})" if how else "")
    if scope.get("target"):
        label += f" on {scope['target']}"
        if scope.get("source") not in (None, scope["target"]):
            label += f" from {scope['source']}"
    if scope.get("detector"):
        label += f", detector {scope['detector']}" + (f"/{scope['interpreter']}" if scope.get("interpreter") else "")
    if entry.get("sweep"):
        label += " [" + ", ".join(f"{k}={v}" for k, v in entry["sweep"].items()) + "]"
    return label


def sanity_warnings(checks: Iterable[dict[str, Any]]) -> list[str]:
    """One warning line per failed check, for results.json's ``warnings`` and the run's log; a check that reads
    the attack alone (success without the detector) fails once per detector beside it, and is said once."""
    return list(dict.fromkeys(f"sanity check {c.get('check')} failed for {scope_label(c)}: {c.get('detail')}"
                              for c in checks if isinstance(c, dict) and c.get("outcome") == "fail"))
