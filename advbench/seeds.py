"""Mean and spread across training seeds (a suite's ``seeds``), read from the per-seed rows of results.json.

Each seed runs the same grid on the same images; only what is trained or drawn differs. A summary row is one
figure of one row identity (the row's fields but its seed) across the seeds: mean, sample standard deviation,
min and max, with the seeds and their values so a reader can recompute them.
"""

from __future__ import annotations

import json
import statistics
from typing import Any, Iterable

# results section -> (the fields that identify a row across seeds, the figures summarised)
SUMMARIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "victims": (("victim",), ("clean_accuracy",)),
    "interpreters": (("victim", "interpreter"), ("mask_classifier_accuracy",)),
    "detection": (("detector", "interpreter", "attack", "knowledge", "source", "target", "subset", "population"),
                  ("auroc", "tpr_cal_5", "fpr_cal_5")),
    "security": (("detector", "interpreter", "attack", "knowledge", "source", "target"),
                 ("success_under_detection",)),
}


def victim_rows(points: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each seed's victims (results.json ``points``) as rows with their seed."""
    return [{"victim": name, "seed": point.get("seed"), "sweep": point.get("sweep") or None, **row}
            for point in points for name, row in (point.get("victims") or {}).items()]


def spread(values: list[float]) -> dict[str, Any]:
    """n_seeds, mean, sample standard deviation (null for one seed), min and max of ``values``."""
    return {"n_seeds": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "min": min(values), "max": max(values)}


def seed_summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (section, row identity, figure) across the seeds; a seed where the figure is null (not
    computed, or undefined there) is left out of it and of ``n_seeds``."""
    sections = {"victims": victim_rows(results.get("points") or []), **{
        name: results.get(name) or [] for name in SUMMARIES if name != "victims"}}
    out = []
    for section, (identity, figures) in SUMMARIES.items():
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in sections[section]:
            if row.get("seed") is None or row.get("status", "ok") != "ok":
                continue
            key = json.dumps([[row.get(f) for f in identity], row.get("sweep") or {}], sort_keys=True, default=str)
            groups.setdefault(key, []).append(row)
        for rows in groups.values():
            first = rows[0]
            for figure in figures:
                measured = [(r["seed"], r[figure]) for r in rows if isinstance(r.get(figure), (int, float))]
                if not measured:
                    continue
                out.append({"section": section, **{f: first.get(f) for f in identity},
                            **({"sweep": first["sweep"]} if first.get("sweep") else {}), "metric": figure,
                            **spread([v for _, v in measured]), "seeds": [s for s, _ in measured],
                            "values": [v for _, v in measured]})
    return out
