"""Choosing a sweep's point on the validation images, and reading it off the evaluation images.

Picking the setting with the best AUROC on the evaluation images and reporting that AUROC is model selection on
the test set: the number is biased upwards. The choice here reads only the validation rows (results.json
``validation``: the same detectors, fitted the same way, on disjoint attacked test images); the evaluation rows
only report the chosen point.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

CELL = ("detector", "interpreter", "attack", "source", "target")
# the rows a choice compares: every benign image against the adversarial inputs that fool the victim
SUBSET, POPULATION = "all", "successful"


def _cell(row: dict[str, Any]) -> tuple:
    return tuple(row.get(f) for f in CELL)


def _point(row: dict[str, Any]) -> str:
    return json.dumps(row.get("sweep") or {}, sort_keys=True, default=str)


def _compared(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("subset") == SUBSET and r.get("population") == POPULATION
            and r.get("knowledge", "oblivious") == "oblivious" and r.get("sweep")]


def sweep_choice(validation: list[dict[str, Any]], detection: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (detector, interpreter, attack, source, target): the sweep point with the highest validation AUROC
    (the earliest point on a tie), its validation AUROC, and its evaluation AUROC with DeLong's interval."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in _compared(validation):
        cells.setdefault(_cell(row), []).append(row)
    evaluation = {(_cell(r), _point(r)): r for r in _compared(detection)}
    out = []
    for cell, rows in cells.items():
        scored = [r for r in rows if isinstance(r.get("auroc"), (int, float))]
        if not scored:
            continue
        chosen = max(scored, key=lambda r: r["auroc"])  # max keeps the first of equal values
        reported: Optional[dict[str, Any]] = evaluation.get((cell, _point(chosen)))
        out.append({**dict(zip(CELL, cell)), "subset": SUBSET, "population": POPULATION,
                    "sweep": chosen["sweep"], "n_points": len(rows),
                    # nothing told the points apart (a control the swept fields do not reach)
                    "tied": len(scored) > 1 and len({r["auroc"] for r in scored}) == 1,
                    "validation_auroc": chosen["auroc"],
                    "validation_n_adversarial": chosen.get("n_adversarial"),
                    "validation_n_benign": chosen.get("n_benign"),
                    "evaluation_auroc": reported.get("auroc") if reported else None,
                    "evaluation_auroc_ci": reported.get("auroc_ci") if reported else None})
    return out
