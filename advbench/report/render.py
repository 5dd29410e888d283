"""Assemble a run's HTML report from its results.json (and gallery.pt when there is one).

The page is one self-contained file: inline CSS, figures as inline SVG, gallery images as PNG data URIs and
results.json itself embedded in a ``<script type="application/json" id="results">`` block. No number is
computed here: every value shown is read from results.json (ROC points included) and only formatted.
Anything missing (an interrupted run, an older results.json) is shown as "not computed" instead of failing.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import jinja2
from markupsafe import Markup

from advbench.report import figures

NA = "—"
NA_TITLE = "not computed or does not apply"
NOT_COMPUTED = "not computed"
PAPER = "paper (Nguyen et al. 2017)"
THIS_RUN = "this run"
DIGITS = 3

# optional metric columns, shown where some row has a value
EXTRA_METRICS = [
    ("tpr_at_fpr_1", "TPR @ FPR 1%"),
    ("tpr_at_fpr_5", "TPR @ FPR 5%"),
    ("tpr_at_fpr_10", "TPR @ FPR 10%"),
    ("tnr_at_tpr_90", "TNR @ TPR 90%"),
    ("tnr_at_tpr_95", "TNR @ TPR 95%"),
]

PAPER_TABLES = {
    "table1": ("Table 1 · mask invariance",
               "Share of successful adversarial inputs whose attention mask keeps the mask classifier's (f2) "
               "reading of the benign input."),
    "table2": ("Table 2 · direct detection",
               "Adversarial inputs crafted on the defended victim itself (source = target); paper: AlexNet."),
    "table3": ("Table 3 · transferred detection",
               "Adversarial inputs crafted on another victim (source ≠ target); paper: crafted on VGG-like."),
    "table4": ("Table 4 · after filtering",
               "Only inputs whose benign attention mask f2 classifies correctly (subset \"filtered\")."),
}


# ---------------------------------------------------------------------------------------------------------
# formatting


@dataclass
class Cell:
    text: str
    cls: str = ""
    title: str = ""


@dataclass
class Column:
    label: str
    cls: str = ""
    title: str = ""


@dataclass
class Table:
    id: str
    columns: list[Column]
    rows: list[list[Cell]]
    caption: str = ""
    groups: list[tuple[str, int, str]] = field(default_factory=list)  # (label, colspan, css class)
    note: str = ""
    row_cls: list[str] = field(default_factory=list)  # a css class per body row ("" for none)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any, digits: int = DIGITS) -> str:
    """How every metric is printed: fixed ``digits`` decimals; "—" for null, NaN or a non-number."""
    return f"{value:.{digits}f}" if is_number(value) else NA


def num(value: Any, digits: int = DIGITS, cls: str = "") -> Cell:
    if not is_number(value):
        return Cell(NA, "num na", NA_TITLE)
    return Cell(fmt(value, digits), ("num " + cls).strip())


def count(value: Any) -> Cell:
    if is_number(value):
        return Cell(str(int(value)) if float(value).is_integer() else fmt(value), "num")
    return Cell(NA, "num na", NA_TITLE)


def text(value: Any, cls: str = "") -> Cell:
    if value is None or value == "":
        return Cell(NA, ("na " + cls).strip(), NA_TITLE)
    return Cell(str(value), cls)


def seconds(value: Any) -> str:
    if not is_number(value):
        return NA
    value = float(value)
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def period(started: Any, finished: Any) -> str:
    """"2024-01-01 10:00:00 → 10:12:34 UTC" from two ISO times; the raw strings when they do not parse."""
    import datetime as dt

    def parse(value: Any) -> Optional[dt.datetime]:
        try:
            return dt.datetime.fromisoformat(str(value))
        except ValueError:
            return None

    a, b = parse(started), parse(finished)
    if a is None or b is None or a.tzinfo != b.tzinfo:
        return f"{started or NA} → {finished or NA}"
    zone = "" if a.tzinfo is None else (" UTC" if a.utcoffset() == dt.timedelta(0) else a.strftime(" %z"))
    end = b.strftime("%H:%M:%S") if a.date() == b.date() else b.strftime("%Y-%m-%d %H:%M:%S")
    return f"{a.strftime('%Y-%m-%d %H:%M:%S')} → {end}{zone}"


# ---------------------------------------------------------------------------------------------------------
# reading results.json defensively


def dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def population(row: dict[str, Any]) -> str:
    return str(row.get("population") or "successful")


def subset(row: dict[str, Any]) -> str:
    return str(row.get("subset") or "all")


def sweep_label(row: dict[str, Any]) -> str:
    sweep = row.get("sweep")
    if isinstance(sweep, dict) and sweep:
        return ", ".join(f"{k}={v}" for k, v in sweep.items())
    return ""


def interp_label(value: Any) -> str:
    return NA if value in (None, "") else str(value)


def ordered(values: Iterable[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for value in values:
        if value not in seen:
            seen[value] = None
    return list(seen)


@dataclass
class View:
    """The parts of results.json the page is made of, each a list or dict even when the run left it out."""

    results: dict[str, Any]
    victims: dict[str, Any]
    interpreters: list[dict[str, Any]]
    attacks: list[dict[str, Any]]
    detection: list[dict[str, Any]]
    worst_case: list[dict[str, Any]]
    victim_order: list[str]
    attack_order: list[str]
    any_sweep: bool

    @classmethod
    def of(cls, results: dict[str, Any]) -> "View":
        victims = mapping(results.get("victims"))
        attacks = dicts(results.get("attacks"))
        detection = [r for r in dicts(results.get("detection"))]
        victim_order = ordered([str(v) for v in victims]
                               + [str(r.get(k)) for r in detection for k in ("source", "target") if r.get(k)]
                               + [str(r.get("source")) for r in attacks if r.get("source")])
        attack_order = ordered([str(r.get("attack")) for r in attacks if r.get("attack") is not None]
                               + [str(r.get("attack")) for r in detection if r.get("attack") is not None])
        return cls(results, victims, dicts(results.get("interpreters")), attacks, detection,
                   dicts(results.get("worst_case")), victim_order, attack_order,
                   any(sweep_label(r) for r in detection))

    def rows(self, *, subset_: Optional[str] = "all", population_: Optional[str] = "successful",
             direct: Optional[bool] = None) -> list[dict[str, Any]]:
        out = []
        for row in self.detection:
            if subset_ is not None and subset(row) != subset_:
                continue
            if population_ is not None and population(row) != population_:
                continue
            if direct is not None and (row.get("source") == row.get("target")) != direct:
                continue
            out.append(row)
        return out

    def victim_key(self, name: Any) -> int:
        return self.victim_order.index(str(name)) if str(name) in self.victim_order else len(self.victim_order)

    def attack_key(self, name: Any) -> int:
        return self.attack_order.index(str(name)) if str(name) in self.attack_order else len(self.attack_order)

    def sort_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        detectors = ordered(str(r.get("detector")) for r in self.detection)
        interps = ordered(interp_label(r.get("interpreter")) for r in self.detection)
        return sorted(rows, key=lambda r: (self.victim_key(r.get("target")), self.victim_key(r.get("source")),
                                           detectors.index(str(r.get("detector"))),
                                           interps.index(interp_label(r.get("interpreter"))),
                                           sweep_label(r), self.attack_key(r.get("attack"))))


# ---------------------------------------------------------------------------------------------------------
# tables


def detection_table(view: View, rows: list[dict[str, Any]], table_id: str, caption: str, *, pair: str,
                    show_subset: bool = False, show_population: bool = False, recovery: str = "no") -> Table:
    """``pair``: "victim" (source = target, one column), or "both" (source and target columns).
    ``recovery``: "always", "auto" (where some row has a recovery rate) or "no"."""
    recovery = recovery == "always" or (recovery == "auto" and any(is_number(r.get("recovery_rate")) for r in rows))
    columns: list[Column] = []
    if pair == "victim":
        columns.append(Column("victim"))
    else:
        columns += [Column("source", title="victim the attack was crafted on"),
                    Column("target", title="victim whose detector is evaluated")]
    columns += [Column("detector"), Column("interpreter"), Column("attack")]
    if view.any_sweep:
        columns.append(Column("sweep"))
    if show_subset:
        columns.append(Column("subset"))
    if show_population:
        columns.append(Column("population"))
    columns += [Column("n adv", "num", "adversarial inputs evaluated"),
                Column("n benign", "num", "benign inputs evaluated"),
                Column("TPR", "num", "true positive rate: adversarial inputs flagged"),
                Column("TNR", "num", "true negative rate: benign inputs passed"),
                Column("AUROC", "num", "area under the ROC curve of the detector's score")]
    if recovery:
        columns.append(Column("recovery", "num", "share of adversarial inputs whose original class is recovered"))
    extras = [(k, label) for k, label in EXTRA_METRICS if any(is_number(r.get(k)) for r in rows)]
    columns += [Column(label, "num") for _, label in extras]
    body = []
    for row in view.sort_rows(rows):
        cells = [text(row.get("target"))] if pair == "victim" else [text(row.get("source")), text(row.get("target"))]
        cells += [text(row.get("detector")), text(row.get("interpreter")), text(row.get("attack"))]
        if view.any_sweep:
            cells.append(text(sweep_label(row)))
        if show_subset:
            cells.append(text(subset(row)))
        if show_population:
            cells.append(text(population(row)))
        cells += [count(row.get("n_adversarial")), count(row.get("n_benign")), num(row.get("tpr")),
                  num(row.get("tnr")), num(row.get("auroc"))]
        if recovery:
            cells.append(num(row.get("recovery_rate")))
        cells += [num(row.get(k)) for k, _ in extras]
        body.append(cells)
    return Table(table_id, columns, body, caption)


def invariance_rows(view: View) -> list[dict[str, Any]]:
    """One row per (source, target, interpreter, attack, sweep) with a mask invariance; detectors share it."""
    seen: dict[tuple, dict[str, Any]] = {}
    for row in view.sort_rows(view.rows(subset_="all", population_="successful")):
        if not is_number(row.get("mask_invariance")) or row.get("interpreter") in (None, ""):
            continue
        key = (row.get("source"), row.get("target"), row.get("interpreter"), row.get("attack"), sweep_label(row),
               row.get("mask_invariance"))
        seen.setdefault(key, row)
    return list(seen.values())


def invariance_table(view: View) -> Table:
    columns = [Column("source"), Column("target"), Column("interpreter"), Column("attack")]
    if view.any_sweep:
        columns.append(Column("sweep"))
    columns += [Column("n adv", "num"), Column("mask invariance", "num",
                                               "share of adversarial inputs whose mask keeps its f2 class")]
    body = []
    for row in invariance_rows(view):
        cells = [text(row.get(key)) for key in ("source", "target", "interpreter", "attack")]
        if view.any_sweep:
            cells.append(text(sweep_label(row)))
        cells += [count(row.get("n_adversarial")), num(row.get("mask_invariance"))]
        body.append(cells)
    return Table("table-invariance", columns, body,
                 "Mask invariance (paper Table 1): share of successful adversarial inputs whose attention mask "
                 "f2 still reads as the benign input's mask did.")


def victims_table(view: View) -> Table:
    body = []
    for name in view.victims:
        info = mapping(view.victims.get(name))
        body.append([text(name), text(info.get("plugin")), num(info.get("clean_accuracy"))])
    return Table("table-victims", [Column("victim"), Column("plugin"), Column("clean accuracy", "num")], body,
                 "Victim classifiers (f1) and their accuracy on the clean test set.")


def interpreters_table(view: View) -> Table:
    with_f2 = any(row.get("mask_classifier") for row in view.interpreters)
    with_sweep = any(sweep_label(row) for row in view.interpreters)
    body = []
    for row in view.interpreters:
        body.append([text(row.get("victim")), text(row.get("interpreter")), text(row.get("plugin"))]
                    + ([text(row.get("mask_classifier"))] if with_f2 else [])
                    + ([text(sweep_label(row))] if with_sweep else [])
                    + [num(row.get("mask_classifier_accuracy")), count(row.get("n_accuracy_masks")),
                       num(row.get("majority_class_share")), count(row.get("n_train_masks"))])
    return Table("table-interpreters",
                 [Column("victim"), Column("interpreter"), Column("plugin")]
                 + ([Column("f2", title="the mask classifier's plugin")] if with_f2 else [])
                 + ([Column("sweep")] if with_sweep else [])
                 + [Column("mask classifier accuracy", "num", "accuracy of f2 on the test images' masks"),
                    Column("test masks", "num", "clean test images the accuracy is measured on"),
                    Column("majority class share", "num", "share of the most frequent class among f2's predictions: "
                           "near 1 means f2 collapsed onto one class"),
                    Column("training masks", "num", "training images whose masks f2 learned from")],
                 body, "Mask classifiers (f2): accuracy on the masks of the clean test set.")


def attacks_table(view: View) -> Table:
    units = ordered(str(r["l0_unit"]) for r in view.attacks if r.get("l0_unit"))
    columns = [Column("attack"), Column("plugin"), Column("norm"), Column("source"), Column("n", "num"),
               Column("n success", "num"), Column("success rate", "num"), Column("mean l∞", "num"),
               Column("mean l2", "num"), Column("mean l0", "num", "; ".join(units))]
    rows = sorted(view.attacks, key=lambda r: (view.attack_key(r.get("attack")), view.victim_key(r.get("source"))))
    body = [[text(r.get("attack")), text(r.get("plugin")), text(r.get("norm")), text(r.get("source")),
             count(r.get("n")), count(r.get("n_success")), num(r.get("success_rate")), num(r.get("mean_linf")),
             num(r.get("mean_l2")), num(r.get("mean_l0"))] for r in rows]
    return Table("table-attacks", columns, body,
                 "Attacks: success rate on the attacked test images and the mean perturbation size of the "
                 "successful adversarial inputs.")


def leaderboard_tables(view: View) -> list[Table]:
    """Detectors (with interpreter) x attacks, AUROC, per (source, target) pair; best per column marked."""
    rows = view.rows(subset_="all", population_="successful")
    pairs = ordered((r.get("source"), r.get("target"), sweep_label(r)) for r in view.sort_rows(rows))
    pairs.sort(key=lambda p: (p[0] != p[1], view.victim_key(p[1]), view.victim_key(p[0])))
    tables = []
    for index, (source, target, sweep) in enumerate(pairs):
        sub = [r for r in rows if (r.get("source"), r.get("target"), sweep_label(r)) == (source, target, sweep)]
        detectors = ordered((str(r.get("detector")), interp_label(r.get("interpreter"))) for r in view.sort_rows(sub))
        attacks = ordered(str(r.get("attack")) for r in sorted(sub, key=lambda r: view.attack_key(r.get("attack"))))
        value = {(str(r.get("detector")), interp_label(r.get("interpreter")), str(r.get("attack"))): r.get("auroc")
                 for r in sub}
        worst = {}
        for w in view.worst_case:
            if (w.get("source"), w.get("target"), str(w.get("subset") or "all")) == (source, target, "all") and \
                    sweep_label(w) == sweep:
                worst[(str(w.get("detector")), interp_label(w.get("interpreter")))] = w.get("auroc")
        columns_values = [[value.get((d, i, a)) for d, i in detectors] for a in attacks]
        if worst:
            columns_values.append([worst.get((d, i)) for d, i in detectors])
        best = []
        for values in columns_values:
            numbers = [v for v in values if is_number(v)]
            best.append(max(numbers) if numbers else None)
        body = []
        for j, (d, i) in enumerate(detectors):
            cells = [Cell(d), Cell(i, "na" if i == NA else "")]
            for c, values in enumerate(columns_values):
                v = values[j]
                cell = num(v)
                if is_number(v) and best[c] is not None and v == best[c] and len(detectors) > 1:
                    cell = num(v, cls="best")
                    cell.title = "best in this column"
                cells.append(cell)
            body.append(cells)
        columns = [Column("detector"), Column("interpreter")] + [Column(a, "num") for a in attacks]
        if worst:
            columns.append(Column("worst case", "num", "worst AUROC over the attacks (results.json worst_case)"))
        where = f"on {source}" if source == target else f"crafted on {source}, evaluated on {target}"
        caption = f"AUROC per attack, adversarial inputs {where}" + (f" ({sweep})" if sweep else "") + \
            ". Bold: best detector in the column."
        tables.append(Table(f"table-leaderboard-{index}", columns, body, caption,
                            note=f"{source} → {target}" if source != target else str(target)))
    return tables


def transfer_tables(view: View) -> tuple[Optional[Table], list[dict[str, Any]]]:
    """The AUROC transfer matrix (source x target) per detector, interpreter and attack, and heat-map panels."""
    rows = view.rows(subset_="all", population_="successful")
    if not any(r.get("source") != r.get("target") for r in rows):
        return None, []
    sources = [v for v in view.victim_order if any(r.get("source") == v for r in rows)]
    targets = [v for v in view.victim_order if any(r.get("target") == v for r in rows)]
    groups: dict[tuple, dict[tuple, Any]] = {}
    for r in view.sort_rows(rows):
        key = (str(r.get("detector")), interp_label(r.get("interpreter")), sweep_label(r), str(r.get("attack")))
        groups.setdefault(key, {})[(r.get("source"), r.get("target"))] = r.get("auroc")
    columns = [Column("detector"), Column("interpreter")]
    if view.any_sweep:
        columns.append(Column("sweep"))
    columns += [Column("attack"), Column("source ↓ / target →")] + [Column(t, "num") for t in targets]
    body = []
    for (d, i, s, a), cells in groups.items():
        for source in sources:
            if not any((source, t) in cells for t in targets):
                continue
            row = [Cell(d), Cell(i)] + ([text(s)] if view.any_sweep else []) + [Cell(a), Cell(source, "rowhead")]
            for t in targets:
                cell = num(cells.get((source, t)))
                if source == t and "na" not in cell.cls:
                    cell.cls += " diag"
                    cell.title = "direct (source = target)"
                row.append(cell)
            body.append(row)
    table = Table("table-transfer-matrix", columns, body,
                  "AUROC of each detector when the adversarial inputs are crafted on the source victim and "
                  "evaluated against the target victim; the diagonal is the direct setting.")
    figures_ = []
    by_detector: dict[tuple, list[tuple[str, dict]]] = {}
    for (d, i, s, a), cells in groups.items():
        by_detector.setdefault((d, i, s), []).append((a, cells))
    for (d, i, s), panels in by_detector.items():
        data = [{"title": a, "matrix": [[cells.get((src, t)) for t in targets] for src in sources]}
                for a, cells in panels]
        figures_.append({"detector": d, "interpreter": i, "sweep": s, "panels": data, "sources": sources,
                         "targets": targets})
    return table, figures_


def paper_tables(view: View, reference: dict[str, Any]) -> list[Table]:
    """The paper's Tables 1-4 beside this run's numbers, one column group per comparable configuration."""
    detector_filter = reference.get("detector")
    interpreter_filter = reference.get("interpreter")

    def chosen(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(detector_filter, str):
            rows = [r for r in rows if r.get("detector") == detector_filter]
        elif any(r.get("interpreter") not in (None, "") for r in rows):
            rows = [r for r in rows if r.get("interpreter") not in (None, "")]  # interpretation-based detectors
        if isinstance(interpreter_filter, str):
            rows = [r for r in rows if r.get("interpreter") == interpreter_filter]
        return view.sort_rows(rows)

    def paper_value(entry: Any, key: str) -> Any:
        if isinstance(entry, dict):
            if key == "recovery_rate" and "recovery_rate" not in entry:
                return entry.get("recovery")
            return entry.get(key)
        return entry if key in ("mask_invariance", "value") else None

    tables = []
    for name, (title, caption) in PAPER_TABLES.items():
        paper = reference.get(name)
        if not isinstance(paper, dict):
            continue
        if name == "table1":
            rows = [r for r in invariance_rows(view) if r.get("source") == r.get("target")]
            metrics = [("mask_invariance", "retained")]
            combo_of: Callable[[dict], tuple] = lambda r: (r.get("target"), interp_label(r.get("interpreter")),
                                                           sweep_label(r))
        else:
            if name == "table2":
                rows = chosen(view.rows(subset_="all", population_="successful", direct=True))
            elif name == "table3":
                rows = chosen(view.rows(subset_="all", population_="successful", direct=False))
            else:
                rows = chosen(view.rows(subset_="filtered", population_="successful"))
            metrics = [("tpr", "TPR"), ("tnr", "TNR")] + ([("recovery_rate", "recovery")] if name == "table4" else [])
            combo_of = lambda r: (r.get("source"), r.get("target"), str(r.get("detector")),
                                  interp_label(r.get("interpreter")), sweep_label(r))
        combos = ordered(combo_of(r) for r in rows)
        paper_attacks = [str(a) for a, v in paper.items() if is_number(v) or isinstance(v, dict)]
        attacks = ordered(paper_attacks + [str(r.get("attack")) for r in rows])
        values = {(combo_of(r), str(r.get("attack"))): r for r in rows}

        def group_columns(kind: str) -> list[Column]:
            return [Column(label, f"num {kind}" + (" gs" if k == 0 else "")) for k, (_, label) in enumerate(metrics)]

        def group_cells(row: Optional[dict[str, Any]], kind: str) -> list[Cell]:
            cells = [num(row.get(key) if row else None, cls=kind) for key, _ in metrics]
            cells[0].cls += " gs"
            return cells

        columns = [Column("attack")] + group_columns("paper")
        groups = [("", 1, ""), (PAPER, len(metrics), "paper gs")]
        for combo in combos:
            columns += group_columns("run")
            if name == "table1":
                victim, interp, sweep = combo
                label = f"{THIS_RUN} · {victim} · {interp}"
            else:
                source, target, det, interp, sweep = combo
                where = str(target) if source == target else f"{source} → {target}"
                label = f"{THIS_RUN} · {where} · {det}" + (f" · {interp}" if interp != NA else "")
            groups.append((label + (f" · {sweep}" if sweep else ""), len(metrics), "run gs"))
        if not combos:
            columns += group_columns("run")
            groups.append((f"{THIS_RUN} · {NOT_COMPUTED}", len(metrics), "run gs"))
        body = []
        for attack in attacks:
            entry = paper.get(attack)
            cells = [Cell(attack)] + group_cells({key: paper_value(entry, key) for key, _ in metrics}, "paper")
            for combo in combos:
                cells += group_cells(values.get((combo, attack)), "run")
            if not combos:
                cells += group_cells(None, "run")
            body.append(cells)
        tables.append(Table(f"paper-{name}", columns, body, caption, groups=groups, note=title))
    return tables


def stage_tables(results: dict[str, Any]) -> tuple[Table, Table, float]:
    stages = dicts(results.get("stages"))
    totals: dict[str, list[float]] = {}
    for s in stages:
        entry = totals.setdefault(str(s.get("stage", "?")), [0, 0.0, 0])
        entry[0] += 1
        entry[1] += float(s["seconds"]) if is_number(s.get("seconds")) else 0.0
        entry[2] += 1 if s.get("cached") else 0
    summary = Table("table-stage-summary",
                    [Column("stage"), Column("steps", "num"), Column("cached", "num"), Column("wall time", "num"),
                     Column("seconds", "num")],
                    [[Cell(k), Cell(str(n), "num"), Cell(str(c), "num"), Cell(seconds(t), "num"), num(t, 1)]
                     for k, (n, t, c) in totals.items()],
                    "Wall time per stage (summed over its steps; a cached step cost only its lookup).")
    full = Table("table-stages",
                 [Column("stage"), Column("step"), Column("seconds", "num"), Column("cached")],
                 [[text(s.get("stage")), text(s.get("label")), num(s.get("seconds"), 2),
                   Cell("cached" if s.get("cached") else "computed", "cached" if s.get("cached") else "")]
                  for s in stages], "Every step, in the order it finished.")
    return summary, full, sum(t for _, t, _ in totals.values())


def plugins_table(results: dict[str, Any]) -> Table:
    rows = sorted(dicts(results.get("plugins")), key=lambda p: (str(p.get("kind")), str(p.get("name"))))
    return Table("table-plugins", [Column("kind"), Column("name"), Column("distribution"), Column("version")],
                 [[text(p.get("kind")), text(p.get("name")), text(p.get("distribution")), text(p.get("version"))]
                  for p in rows], "Plugins used by the run and the distributions that provide them.")


def score_definitions(view: View) -> Table:
    seen = ordered((str(r.get("detector")), str(r.get("score_definition")))
                   for r in view.detection if r.get("score_definition"))
    return Table("table-scores", [Column("detector"), Column("score (higher = more likely adversarial)")],
                 [[Cell(d), Cell(s)] for d, s in seen], "")


# ---------------------------------------------------------------------------------------------------------
# sweep trade-off


CONTROL = "label-only"


def sweep_key(sweep: Any) -> str:
    return json.dumps(sweep if isinstance(sweep, dict) else {}, sort_keys=True, default=str)


def sweep_fields(results: dict[str, Any], view: View) -> list[str]:
    """results.json's ``sweep_fields``; for an older results.json without it, the keys the rows' sweeps use."""
    declared = results.get("sweep_fields")
    if isinstance(declared, list) and declared:
        return [str(f) for f in declared]
    rows = view.interpreters + view.attacks + view.detection + view.worst_case
    return ordered(str(k) for r in rows if isinstance(r.get("sweep"), dict) for k in r["sweep"])


def _short_fields(fields: list[str]) -> dict[str, str]:
    """Each field path's last component ("eps" for attacks.fgsm.options.eps) where that is unambiguous."""
    last = [f.rsplit(".", 1)[-1] for f in fields]
    return {f: (s if last.count(s) == 1 else f) for f, s in zip(fields, last)}


def sweep_points(results: dict[str, Any], view: View, fields: list[str]) -> list[dict[str, Any]]:
    """The sweep's points in run order: ``{"values", "key", "label", "x"}``; ``x`` is the value on the plots' axis."""
    candidates = [p.get("sweep") for p in dicts(results.get("points"))]
    candidates += [r.get("sweep") for r in view.interpreters + view.attacks + view.detection + view.worst_case]
    seen: dict[str, dict[str, Any]] = {}
    for sweep in candidates:
        if isinstance(sweep, dict) and sweep and sweep_key(sweep) not in seen:
            seen[sweep_key(sweep)] = sweep
    short = _short_fields(fields)
    # with several fields, a label names only what differs from the suite's own setting (sweep_base), so a
    # one-field-at-a-time sweep reads "beta=4" rather than every field
    base = mapping(results.get("sweep_base"))
    points = []
    for key, values in seen.items():
        if len(fields) == 1:
            label = str(values.get(fields[0], NA))
        elif base:
            changed = [f for f in fields if f not in base or values.get(f, NA) != base[f]]
            label = ", ".join(f"{short[f]}={values.get(f, NA)}" for f in changed) or "base"
        else:
            label = ", ".join(f"{short[f]}={values.get(f, NA)}" for f in fields)
        points.append({"values": values, "key": key, "label": label})
    numeric = len(fields) == 1 and points and all(is_number(p["values"].get(fields[0])) for p in points)
    for index, point in enumerate(points):
        point["x"] = float(point["values"][fields[0]]) if numeric else index
    return points


def _detector_rank(detector: str, interpreter: str) -> int:
    """Interpretation-based detectors (the contrastive detector) first, label-only (the control) last."""
    if detector == CONTROL:
        return 2
    return 0 if interpreter != NA else 1


def sweep_section(results: dict[str, Any], view: View) -> Optional[dict[str, Any]]:
    """The trade-off across the sweep's points, read from the rows: a table and the figures' data.

    None when the run has no sweep. Rows: detection rows of population "successful", subset "all", grouped
    by (detector, interpreter, source, target); f2 accuracy from the interpreters rows of the same point.
    """
    fields = sweep_fields(results, view)
    if not fields:
        return None
    points = sweep_points(results, view, fields)
    rows = [r for r in view.rows(subset_="all", population_="successful") if sweep_label(r)]
    attacks = ordered(str(r.get("attack")) for r in sorted(rows, key=lambda r: view.attack_key(r.get("attack"))))
    detection: dict[tuple, dict[str, Any]] = {}
    groups: list[tuple[str, str, Any, Any]] = []
    for r in view.sort_rows(rows):
        group = (str(r.get("detector")), interp_label(r.get("interpreter")), r.get("source"), r.get("target"))
        if group not in groups:
            groups.append(group)
        detection.setdefault((group, sweep_key(r.get("sweep")), str(r.get("attack"))), r)
    groups.sort(key=lambda g: (_detector_rank(g[0], g[1]), g[2] != g[3]))  # stable: keeps sort_rows' order within
    f2: dict[tuple, Any] = {}
    for r in view.interpreters:
        if isinstance(r.get("sweep"), dict):
            f2.setdefault((str(r.get("victim")), str(r.get("interpreter")), sweep_key(r.get("sweep"))),
                          r.get("mask_classifier_accuracy"))
    f1: dict[tuple, Any] = {}
    for p in dicts(results.get("points")):
        for victim, info in mapping(p.get("victims")).items():
            f1.setdefault((str(victim), sweep_key(p.get("sweep"))), mapping(info).get("clean_accuracy"))
    interp_pairs = ordered((str(r.get("victim")), str(r.get("interpreter"))) for r in view.interpreters
                           if isinstance(r.get("sweep"), dict) and r.get("interpreter") not in (None, ""))
    direct = all(g[2] == g[3] for g in groups)
    show_f1 = bool(f1)
    show_f2 = any(g[1] != NA for g in groups)

    lead = [Column("detector"), Column("interpreter")]
    lead += [Column("victim")] if direct else [Column("source", title="victim the attack was crafted on"),
                                               Column("target", title="victim whose detector is evaluated")]
    short = _short_fields(fields)
    # many fields varied one at a time: one "setting" column (what differs from the suite's own values) reads
    # better than a column per field that mostly repeats the base value
    base = mapping(results.get("sweep_base"))
    compact = len(fields) > 3 and bool(base)
    if compact:
        lead.append(Column("setting", "sweepval", "what differs from the suite's own setting: "
                           + "; ".join(f"{f}={base.get(f, NA)}" for f in fields)))
    else:
        lead += [Column(short[f], "sweepval", f"swept field {f}") for f in fields]
    if show_f1:
        lead.append(Column("f1 accuracy", "num", "the (target) victim's accuracy on the clean test set at this "
                                                 "setting (results.json points[].victims)"))
    if show_f2:
        lead.append(Column("f2 accuracy", "num", "accuracy of the mask classifier f2 on the masks of the clean test "
                                                 "set, for this victim and interpreter (results.json interpreters)"))
    columns = list(lead)
    table_groups: list[tuple[str, int, str]] = [("setting", len(lead), "")]
    for attack in attacks:
        columns += [Column("AUROC", "num gs", "area under the ROC curve of the detector's score"),
                    Column("TPR", "num", "true positive rate: adversarial inputs flagged"),
                    Column("TNR", "num", "true negative rate: benign inputs passed")]
        table_groups.append((attack, 3, "gs attack"))
    body: list[list[Cell]] = []
    row_cls: list[str] = []
    best: dict[tuple, Any] = {}
    for group in groups:
        for attack in attacks:
            values = [detection.get((group, p["key"], attack), {}).get("auroc") for p in points]
            numbers = [v for v in values if is_number(v)]
            # no "best" where every setting scores the same (a control the swept fields do not reach)
            best[(group, attack)] = max(numbers) if len(set(numbers)) > 1 else None
    for gi, group in enumerate(groups):
        detector, interp, source, target = group
        control = _detector_rank(detector, interp) == 2
        for pi, point in enumerate(points):
            cells = [Cell(detector + (" (control)" if control else "")), Cell(interp, "na" if interp == NA else "")]
            cells += [text(target)] if direct else [text(source), text(target)]
            if compact:
                cells.append(text(point["label"], "sweepval"))
            else:
                cells += [text(point["values"].get(f), "sweepval") for f in fields]
            if show_f1:
                cells.append(num(f1.get((str(target), point["key"]))))
            if show_f2:
                cells.append(num(f2.get((str(target), interp, point["key"])) if interp != NA else None))
            for attack in attacks:
                r = detection.get((group, point["key"], attack), {})
                auroc = num(r.get("auroc"), cls="gs")
                if best[(group, attack)] is not None and r.get("auroc") == best[(group, attack)]:
                    auroc = num(r.get("auroc"), cls="gs best")
                    auroc.title = f"best setting for {attack} by AUROC"
                cells += [auroc, num(r.get("tpr")), num(r.get("tnr"))]
            body.append(cells)
            row_cls.append(" ".join(c for c in ["group-start" if pi == 0 and gi > 0 else "",
                                                "control" if control else ""] if c))
    table = Table("table-sweep", columns, body,
                  "One row per setting and detector: successful adversarial inputs, all test inputs. Bold: the "
                  "best setting for each attack by AUROC (per detector).", groups=table_groups, row_cls=row_cls)

    def group_label(group: tuple) -> str:
        detector, interp, source, target = group
        where = str(target) if source == target else f"{source}→{target}"
        return f"{detector}" + (f"/{interp}" if interp != NA else "") + f" on {where}"

    auroc_series = []
    for gi, group in enumerate(groups):
        for attack in attacks:
            auroc_series.append({
                "label": f"{attack} · {group_label(group)}" if len(groups) > 1 else attack,
                "values": [detection.get((group, p["key"], attack), {}).get("auroc") for p in points],
                "color": view.attack_key(attack), "dash": gi, "marker": gi})
    panels = [{"title": "AUROC per attack", "ylabel": "AUROC", "series": auroc_series, "chance": 0.5}]
    if interp_pairs:
        panels.append({"title": "f2 accuracy (clean test masks)", "ylabel": "f2 accuracy", "series": [
            {"label": f"{victim} · {interp}", "values": [f2.get((victim, interp, p["key"])) for p in points],
             "color": 8 + k, "dash": 0, "marker": 0} for k, (victim, interp) in enumerate(interp_pairs)]})
    numeric = bool(points) and all(isinstance(p["x"], float) for p in points)
    xlabel = fields[0] if len(fields) == 1 else "setting"

    # the scatter: the first (interpretation-based) detector's rows, with the control's at the same pair hollow
    scatter, primary, control_group = [], None, None
    if groups and _detector_rank(*groups[0][:2]) < 2:
        primary = groups[0]
        control_group = next((g for g in groups if _detector_rank(*g[:2]) == 2 and g[2:] == primary[2:]), None)
    for group, hollow in [(primary, False), (control_group, True)]:
        if group is None:
            continue
        for ai, attack in enumerate(attacks):
            pts = []
            for pi, point in enumerate(points):
                r = detection.get((group, point["key"], attack), {})
                if is_number(r.get("tpr")) and is_number(r.get("tnr")):
                    pts.append({"tnr": r["tnr"], "tpr": r["tpr"], "label": point["label"],
                                "gid": f"{'control' if hollow else 'point'}-{ai}-{pi}"})
            scatter.append({"label": attack + (f" · {group[0]} (control)" if hollow else ""), "points": pts,
                            "color": view.attack_key(attack), "marker": ai, "hollow": hollow,
                            # past a handful of settings the labels overprint each other: the table names them
                            "annotate": not hollow and len(points) <= 8, "connect": numeric})
    order = ""
    if len(groups) > 1:
        order = " (interpretation-based detectors first" + (
            "; label-only is the control: it flags on the victim's label alone)"
            if any(_detector_rank(*g[:2]) == 2 for g in groups) else ")")
    fields_text = Markup(", ").join(Markup("<code>{}</code>").format(f) for f in fields)
    values_text = f" ({', '.join(p['label'] for p in points)})" if len(fields) == 1 else ""
    return {"fields": fields, "points": points, "table": table, "attacks": attacks,
            "fields_text": fields_text, "values_text": values_text, "order_text": order,
            "groups": [group_label(g) for g in groups], "panels": panels, "numeric": numeric, "xlabel": xlabel,
            "x": [p["x"] for p in points], "xticklabels": [p["label"] for p in points], "scatter": scatter,
            "scatter_of": group_label(primary) if primary else None,
            "control_of": group_label(control_group) if control_group else None,
            "n_scatter": sum(len(s["points"]) for s in scatter if not s["hollow"])}


def sweep_figures(section: dict[str, Any]) -> dict[str, Any]:
    """The section's two figures as inline SVG (or an error line each): the lines and the TPR/TNR scatter."""
    out = {}
    try:
        svg = figures.sweep_lines_figure(section["panels"], section["x"], section["xticklabels"],
                                         numeric=section["numeric"], xlabel=section["xlabel"], prefix="sweeplines")
        out["lines"], out["lines_error"] = Markup(svg), ""
    except Exception as exc:  # a malformed value must not take the page down
        out["lines"], out["lines_error"] = None, f"figure failed: {type(exc).__name__}: {exc}"
    if any(s["points"] for s in section["scatter"]):
        try:
            svg = figures.tradeoff_scatter_figure(section["scatter"], prefix="sweepscatter")
            out["scatter"], out["scatter_error"] = Markup(svg), ""
        except Exception as exc:
            out["scatter"], out["scatter_error"] = None, f"figure failed: {type(exc).__name__}: {exc}"
    else:
        out["scatter"], out["scatter_error"] = None, "not computed: no detection row with both TPR and TNR."
    return out


# ---------------------------------------------------------------------------------------------------------
# figures


def roc_figures(view: View) -> list[dict[str, Any]]:
    rows = view.rows(subset_="all", population_="successful")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in view.sort_rows(rows):
        key = (r.get("target"), str(r.get("detector")), interp_label(r.get("interpreter")), sweep_label(r))
        groups.setdefault(key, []).append(r)
    out = []
    for index, ((target, detector, interp, sweep), members) in enumerate(groups.items()):
        members.sort(key=lambda r: (r.get("source") != target, view.victim_key(r.get("source")),
                                    view.attack_key(r.get("attack"))))
        sources = ordered(r.get("source") for r in members if r.get("source") != target)
        curves = []
        for r in members:
            roc = mapping(r.get("roc"))
            transfer = r.get("source") != target
            label = str(r.get("attack")) + (f" from {r.get('source')}" if transfer else "")
            curves.append({"label": label, "fpr": roc.get("fpr") or [], "tpr": roc.get("tpr") or [],
                           "auroc": r.get("auroc"), "operating_point": r.get("operating_point"),
                           "color": view.attack_key(r.get("attack")),
                           "dash": sources.index(r.get("source")) + 1 if transfer else 0})
        try:
            svg = figures.roc_figure(curves, prefix=f"roc{index}")
        except Exception as exc:  # a malformed curve must not take the page down
            svg = None
            error = f"figure failed: {type(exc).__name__}: {exc}"
        else:
            error = ""
        out.append({"target": target, "detector": detector, "interpreter": interp, "sweep": sweep,
                    "svg": Markup(svg) if svg else None, "error": error, "transfer": bool(sources),
                    "n_curves": len(curves)})
    return out


# ---------------------------------------------------------------------------------------------------------
# gallery


def _array(value: Any) -> Any:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if hasattr(value, "float") and value.dtype.is_floating_point:
            value = value.float()
        return value.numpy()
    return value


def _labels(value: Any) -> list[int]:
    value = _array(value)
    if value is None:
        return []
    try:
        return [int(v) for v in list(value)]
    except (TypeError, ValueError):
        return []


def _tile(x: Any, mask: Any, i: int, name: Callable[[Optional[int]], str], f1: list[int], f2: list[int],
          y: Optional[int] = None, head: str = "", success: Optional[bool] = None) -> dict[str, Any]:
    image = figures.image_data_uri(x[i]) if x is not None and i < len(x) else None
    mask_uri = figures.image_data_uri(mask[i]) if mask is not None and i < len(mask) else None
    a = f1[i] if i < len(f1) else None
    b = f2[i] if i < len(f2) else None
    return {"head": head, "image": image, "mask": mask_uri, "y": name(y), "f1": name(a), "f2": name(b),
            "f1_wrong": y is not None and a is not None and a != y,
            "disagree": a is not None and b is not None and a != b, "success": success}


def gallery_blocks(run_dir: Path, results: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """(blocks, note): one block per (victim, interpreter) entry of gallery.pt; note says why there are none."""
    path = run_dir / "gallery.pt"
    if not path.exists():
        return [], "not computed: the run folder has no gallery.pt."
    try:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        return [], f"gallery.pt could not be read: {type(exc).__name__}: {exc}"
    entries = dicts(data if isinstance(data, list) else [data])
    dataset_classes = mapping(results.get("dataset")).get("classes")
    blocks = []
    for entry in entries:
        classes = entry.get("classes") or (dataset_classes if isinstance(dataset_classes, list) else [])
        classes = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else []

        def name(i: Optional[int], classes: list[str] = classes) -> str:
            if i is None:
                return NA
            return classes[i] if 0 <= i < len(classes) else str(i)

        block: dict[str, Any] = {"victim": str(entry.get("victim", NA)),
                                 "interpreter": str(entry.get("interpreter", NA)),
                                 "per_class": [], "examples": [], "attacks": [], "error": ""}
        try:
            per = mapping(entry.get("per_class"))
            x, mask = _array(per.get("x")), _array(per.get("mask"))
            y, f1, f2 = _labels(per.get("y")), _labels(per.get("f1")), _labels(per.get("f2"))
            for i in range(len(x) if x is not None else 0):
                block["per_class"].append(_tile(x, mask, i, name, f1, f2, y=y[i] if i < len(y) else None,
                                                head=name(y[i]) if i < len(y) else ""))
            ex = mapping(entry.get("examples"))
            x, mask = _array(ex.get("x")), _array(ex.get("mask"))
            y, f1, f2 = _labels(ex.get("y")), _labels(ex.get("f1")), _labels(ex.get("f2"))
            adversarial = mapping(ex.get("adversarial"))
            block["attacks"] = [str(a) for a in adversarial]
            for i in range(len(x) if x is not None else 0):
                label = y[i] if i < len(y) else None
                row = [_tile(x, mask, i, name, f1, f2, y=label, head="benign")]
                for attack, adv in adversarial.items():
                    adv = mapping(adv)
                    success = _labels(adv.get("success"))
                    row.append(_tile(_array(adv.get("x")), _array(adv.get("mask")), i, name,
                                     _labels(adv.get("f1")), _labels(adv.get("f2")), y=label, head=str(attack),
                                     success=bool(success[i]) if i < len(success) else None))
                block["examples"].append({"y": name(label), "tiles": row})
        except Exception as exc:
            block["error"] = f"part of this gallery entry could not be drawn: {type(exc).__name__}: {exc}"
        blocks.append(block)
    if not blocks:
        return [], "not computed: gallery.pt holds no entries."
    return blocks, ""


# ---------------------------------------------------------------------------------------------------------
# plugin sections


def plugin_sections(results: dict[str, Any], run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    from advbench import plugins

    try:
        replies = plugins.get_manager().hook.report_sections(results=copy.deepcopy(results), run_dir=str(run_dir))
    except Exception as exc:
        return [], [f"the report_sections hook of a plugin failed: {type(exc).__name__}: {exc}"]
    sections, problems = [], []
    for reply in replies or []:
        if reply is None:
            continue
        for item in reply if isinstance(reply, (list, tuple)) else [reply]:
            if not isinstance(item, dict) or "title" not in item:
                problems.append(f"a report_sections reply was ignored: expected {{'title', 'html'}}, got {item!r:.80}")
                continue
            sections.append({"title": str(item.get("title")), "html": Markup(str(item.get("html") or ""))})
    for index, section in enumerate(sections):
        section["id"] = f"plugin-section-{index}"
    return sections, problems


# ---------------------------------------------------------------------------------------------------------
# page


def embed_json(raw: str) -> Markup:
    """results.json as the text of a ``<script type="application/json">``: ``<``, ``>`` and ``&`` only occur
    inside JSON strings, so writing them as ``\\u003c`` etc. keeps the same JSON and cannot close the tag."""
    safe = raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(safe)


def environment() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(Path(__file__).parent / "templates"))
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.ChainableUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["seconds"] = seconds
    return env


def build_context(results: dict[str, Any], raw: str, run_dir: Path) -> dict[str, Any]:
    from advbench import __version__

    view = View.of(results)
    dataset = mapping(results.get("dataset"))
    classes = dataset.get("classes")
    n_classes = len(classes) if isinstance(classes, list) else classes
    command = results.get("command")
    if isinstance(command, list):
        command = shlex.join(str(c) for c in command)
    stage_summary, stage_full, stage_total = stage_tables(results)
    reference = results.get("paper_reference")
    transfer_table, heat = transfer_tables(view)
    heatmaps = []
    for index, item in enumerate(heat):
        try:
            svg = figures.heatmap_figure(item["panels"], item["sources"], item["targets"], prefix=f"heat{index}")
            heatmaps.append({**item, "svg": Markup(svg), "error": ""})
        except Exception as exc:
            heatmaps.append({**item, "svg": None, "error": f"figure failed: {type(exc).__name__}: {exc}"})
    sections, problems = plugin_sections(results, run_dir)
    sweep = sweep_section(results, view)
    if sweep is not None:
        sweep.update(sweep_figures(sweep))
    gallery, gallery_note = gallery_blocks(run_dir, results)
    warnings = [str(w) for w in results.get("warnings") or []] if isinstance(results.get("warnings"), list) else []
    missing = results.get("missing") if isinstance(results.get("missing"), list) else []
    complete = results.get("complete")
    worst = Table("table-worst-case",
                  [Column("detector"), Column("interpreter"), Column("source"), Column("target"), Column("subset"),
                   Column("pairs", "num"), Column("AUROC", "num"), Column("TPR", "num"), Column("TNR", "num")],
                  [[text(w.get("detector")), text(w.get("interpreter")), text(w.get("source")), text(w.get("target")),
                    text(w.get("subset")), count(w.get("n_pairs")), num(w.get("auroc")), num(w.get("tpr")),
                    num(w.get("tnr"))] for w in view.worst_case],
                  "Worst case over attacks per detector, as reported by the run.")
    distributions = ordered((str(p.get("distribution")), str(p.get("version")))
                            for p in dicts(results.get("plugins")) if p.get("distribution"))
    victims = [{"name": str(k), "plugin": mapping(v).get("plugin"), "accuracy": mapping(v).get("clean_accuracy")}
               for k, v in view.victims.items()]
    context = {
        "results": results,
        "suite": results.get("suite") or NOT_COMPUTED,
        "suite_file": results.get("suite_file"),
        "description": results.get("description"),
        "dataset": dataset,
        "n_classes": n_classes,
        "victims": victims,
        "device": results.get("device"),
        "environment": " · ".join(f"{name} {results[key]}" for name, key in
                                  [("python", "python_version"), ("torch", "torch_version")] if results.get(key)),
        "evaluation": mapping(results.get("evaluation")),
        "limit": results.get("limit"),
        "seed": results.get("seed"),
        "advbench_version": results.get("advbench_version"),
        "report_version": __version__,
        "when": period(results.get("started"), results.get("finished")),
        "started": results.get("started"),
        "finished": results.get("finished"),
        "wall_seconds": results.get("wall_seconds"),
        "command": command,
        "incomplete": complete is False,
        "complete_unknown": complete is None,
        "missing": [str(m) for m in missing],
        "warnings": warnings,
        "report_problems": problems,
        "plugins_table": plugins_table(results),
        "stage_summary": stage_summary,
        "stage_full": stage_full,
        "stage_total": stage_total,
        "distributions": distributions,
        "victims_table": victims_table(view),
        "interpreters_table": interpreters_table(view),
        "paper_tables": paper_tables(view, reference) if isinstance(reference, dict) else [],
        "has_paper": isinstance(reference, dict),
        "paper_note": reference.get("note") if isinstance(reference, dict) else None,
        "leaderboards": leaderboard_tables(view),
        "rocs": roc_figures(view),
        "direct_table": detection_table(view, view.rows(direct=True), "table-direct",
                                        "Detection of adversarial inputs crafted on the defended victim (source = "
                                        "target), successful attacks, all test inputs.", pair="victim"),
        "transfer_table": detection_table(view, view.rows(direct=False), "table-transfer",
                                          "Detection of adversarial inputs crafted on another victim (source ≠ "
                                          "target), successful attacks, all test inputs.", pair="both"),
        "filtered_table": detection_table(view, view.rows(subset_="filtered"), "table-filtered",
                                          "After filtering (paper Table 4): only inputs whose benign mask f2 "
                                          "classifies correctly; recovery = original class recovered from the mask.",
                                          pair="both", recovery="always"),
        "attacked_table": detection_table(view, view.rows(subset_=None, population_="attacked"), "table-attacked",
                                          "Population \"attacked\": every attacked input, failed attacks included "
                                          "(the main tables count successful adversarial inputs only).",
                                          pair="both", show_subset=True, show_population=True, recovery="auto"),
        "other_population": sorted({population(r) for r in view.detection} - {"successful", "attacked"}),
        "invariance_table": invariance_table(view),
        "score_table": score_definitions(view),
        "transfer_matrix": transfer_table,
        "heatmaps": heatmaps,
        "attacks_table": attacks_table(view),
        "worst_table": worst,
        "gallery": gallery,
        "gallery_note": gallery_note,
        "plugin_sections": sections,
        "results_json": embed_json(raw),
        "any_detection": bool(view.detection),
        "sweep": sweep,
    }
    nav = [("overview", "Overview")]
    if context["has_paper"]:
        nav.append(("paper", "Paper vs this run"))
    if sweep is not None:
        nav.append(("sweep", "Sweep trade-off"))
    nav += [("leaderboard", "Leaderboard"), ("roc", "ROC curves"), ("detection", "Detection tables"),
            ("transfer", "Transfer"), ("attacks", "Attacks"), ("gallery", "Mask gallery")]
    nav += [(s["id"], s["title"]) for s in sections]
    nav.append(("run", "Run details"))
    context["nav"] = nav
    return context


def render_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/index.html`` from ``<run_dir>/results.json`` (and gallery.pt); return its path."""
    run_dir = Path(run_dir)
    source = run_dir / "results.json"
    if not source.exists():
        from advbench.errors import AdvbenchError

        raise AdvbenchError(f"{run_dir}: no results.json in this folder; is it a run folder?")
    raw = source.read_text(encoding="utf-8")
    results = json.loads(raw)
    if not isinstance(results, dict):
        from advbench.errors import AdvbenchError

        raise AdvbenchError(f"{source}: expected a JSON object, found {type(results).__name__}")
    html = environment().get_template("report.html").render(**build_context(results, raw, run_dir))
    target = run_dir / "index.html"
    fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".html", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(html)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
