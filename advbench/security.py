"""Temporary stand-in (replaced by the security metrics module): keeps the driver importable."""

from __future__ import annotations

from typing import Any


def security_row(**cell: Any) -> dict[str, Any]:
    import torch

    y, clean, adv = cell.pop("y"), cell.pop("pred_clean"), cell.pop("pred_adv")
    scores, threshold = cell.pop("adversarial_scores"), cell["threshold"]
    correct = clean == y
    mis = correct & (adv != y)
    evaded = mis & (scores <= threshold)
    n = int(correct.sum())
    return {**cell, "n_correct": n, "n_evaded": int(evaded.sum()),
            "success_under_detection": float(evaded.sum()) / n if n else None, "status": "ok"}


def unavailable_row(**cell: Any) -> dict[str, Any]:
    return dict(cell)


def sanity_checks(rows: list) -> list:
    return []


def sanity_warnings(checks: list) -> list:
    return []
