"""The "Across seeds" section: each figure as mean ± sample std over the training seeds, with its range.

It appears where results.json has ``seed_summary`` (a suite with ``seeds``): one table for the models (victims'
clean accuracy, f2's accuracy) and one for the detectors (AUROC, TPR and FPR at the threshold chosen for 5% FPR
on the calibration images, success under detection). Numbers are only read and formatted.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Optional

from advbench.report.format import NA, NA_TITLE, Cell, Column, Table, fmt, is_number, text
from advbench.report.view import dicts, interp_label, ordered

from advbench_reports.controls import is_control, rank

MODEL_FIGURES = {"clean_accuracy": "clean accuracy (victim)", "mask_classifier_accuracy": "f2 accuracy"}
DETECTION_FIGURES = {"auroc": ("AUROC", "area under the ROC curve"),
                     "tpr_cal_5": ("TPR @ 5% cal.", "adversarial inputs flagged at the threshold chosen for 5% FPR "
                                                     "on the calibration images"),
                     "fpr_cal_5": ("FPR @ 5% cal.", "benign evaluation inputs flagged at that threshold"),
                     "success_under_detection": ("success under detection", "of the inputs the victim classifies "
                                                 "correctly, the share the attack fools without being flagged (at "
                                                 "5% FPR)")}


def spread_cell(row: Optional[dict[str, Any]]) -> Cell:
    """"0.812 ± 0.021 [0.790, 0.834]": mean ± sample std, then min and max; the seeds' values in the title."""
    if row is None or not is_number(row.get("mean")):
        return Cell(NA, "num na", NA_TITLE)
    std = f" ± {fmt(row['std'])}" if is_number(row.get("std")) else ""
    values = ", ".join(f"seed {s}: {fmt(v)}" for s, v in zip(row.get("seeds") or [], row.get("values") or []))
    return Cell(f"{fmt(row['mean'])}{std} [{fmt(row.get('min'))}, {fmt(row.get('max'))}]", "num spread",
                f"{row.get('n_seeds')} seeds; {values}")


def models_table(rows: list[dict[str, Any]]) -> Table:
    body = [[text(r.get("victim")), Cell(interp_label(r.get("interpreter"))),
             text(MODEL_FIGURES.get(str(r.get("metric")), r.get("metric"))), spread_cell(r), text(r.get("n_seeds"))]
            for r in rows if r.get("section") in ("victims", "interpreters")]
    return Table("table-seed-models", [Column("victim"), Column("interpreter"), Column("figure"),
                                       Column("mean ± std [min, max]", "num", "across the training seeds"),
                                       Column("seeds", "num")], body,
                 "The trained models across seeds: the same training and test images, other initialisations and "
                 "draws.")


def detection_table(rows: list[dict[str, Any]]) -> Table:
    """A row per (detector, attack, pair, subset, population); security figures joined on the same cell."""
    def cell(r: dict[str, Any]) -> tuple:
        return (str(r.get("detector")), interp_label(r.get("interpreter")), str(r.get("attack")),
                str(r.get("knowledge") or "oblivious"), r.get("source"), r.get("target"))

    cells: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r.get("section") == "detection":
            cells.setdefault((cell(r), (r.get("subset"), r.get("population"))), {})[str(r.get("metric"))] = r
    for r in rows:  # a security figure has no subset or population: it joins the all-images, successful row
        if r.get("section") == "security":
            cells.setdefault((cell(r), ("all", "successful")), {})[str(r.get("metric"))] = r
    populations = ["successful", "attacked", "fools-target"]
    order = sorted(cells, key=lambda k: (rank(k[0][0], k[0][1]), k[0][:4], k[1][0] != "all",
                                         populations.index(k[1][1]) if k[1][1] in populations else len(populations)))
    body, row_cls = [], []
    for identity, (subset, population) in order:
        detector, interp, attack, knowledge, source, target = identity
        figures = cells[(identity, (subset, population))]
        pair = str(target) if source == target else f"{source}→{target}"
        body.append([Cell(detector + (" (control)" if is_control(detector) else "")), Cell(interp, "na" if interp == NA
                                                                                             else ""),
                     text(attack), text(knowledge), text(pair), text(subset), text(population)]
                    + [spread_cell(figures.get(m)) for m in DETECTION_FIGURES])
        row_cls.append("control" if is_control(detector) else "")
    columns = [Column("detector"), Column("interpreter"), Column("attack"), Column("knowledge"),
               Column("victim"), Column("subset"), Column("population")]
    columns += [Column(label, "num", title) for label, title in DETECTION_FIGURES.values()]
    return Table("table-seed-detection", columns, body,
                 "Each figure as mean ± sample standard deviation across seeds, then [min, max]; hover for each "
                 "seed's value. Success under detection is given on the row of successful inputs, all images.",
                 row_cls=row_cls)


def section(results: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The "Across seeds" section, after the leaderboard; None without seed_summary."""
    rows = dicts(results.get("seed_summary"))
    if not rows:
        return None
    seeds = ordered(s for r in rows for s in (r.get("seeds") or []))
    template = resources.files(__package__).joinpath("templates", "seeds.html").read_text(encoding="utf-8")
    return {"id": "seeds", "title": "Across seeds", "place": "after:leaderboard", "template": template,
            "context": {"seeds": ", ".join(str(s) for s in seeds), "n_seeds": len(seeds),
                        "split_seed": (results.get("evaluation") or {}).get("split_seed", results.get("seed")),
                        "models": models_table(rows), "detection": detection_table(rows)}}
