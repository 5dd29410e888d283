"""The paper's Tables 1-4 (Nguyen et al. 2017) beside this run's numbers, from the suite's ``paper_reference``.

The section appears where results.json has a ``paper_reference`` mapping (suites/paper.yaml writes one):
``table1`` (mask invariance), ``table2`` (direct), ``table3`` (transferred) and ``table4`` (after filtering),
each ``{attack: number or {"tpr", "tnr", "recovery_rate"}}``, and an optional ``note``. Numbers are only
read and formatted, never computed here.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Callable, Optional

from advbench.report.format import NA, NOT_COMPUTED, Cell, Column, Table, is_number, num
from advbench.report.tables import invariance_rows
from advbench.report.view import View, interp_label, ordered, sweep_label

PAPER = "paper (Nguyen et al. 2017)"
THIS_RUN = "this run"

PAPER_TABLES = {
    "table1": ("Table 1 · mask invariance",
               "Share of successful adversarial inputs whose attention mask keeps the mask classifier's (f2) "
               "reading of the benign input."),
    "table2": ("Table 2 · direct detection",
               "Adversarial inputs crafted on the defended victim itself (source = target); paper: AlexNet."),
    "table3": ("Table 3 · transferred detection",
               "Adversarial inputs crafted on another victim (source ≠ target); paper: crafted on VGG-like."),
    "table4": ("Table 4 · after filtering",
               "Only inputs whose benign attention mask f2 classifies correctly (subset \"filtered\"). TNR is 1.0 "
               "by construction, in the paper as here: a kept benign input has f2 = true label = f1, so the "
               "contrastive rule cannot flag it; read TPR beside the share of inputs the filter drops."),
}


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



def section(results: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The "Paper vs this run" section, right after the overview; None without a ``paper_reference``."""
    reference = results.get("paper_reference")
    if not isinstance(reference, dict) or not any(name in reference for name in PAPER_TABLES):
        return None  # e.g. a reference holding only the baselines' published numbers (advbench_reports.baselines)
    template = resources.files(__package__).joinpath("templates", "paper.html").read_text(encoding="utf-8")
    return {"id": "paper", "title": "Paper vs this run", "place": "after:overview", "template": template,
            "context": {"tables": paper_tables(View.of(results), reference), "note": reference.get("note"),
                        "paper": PAPER, "this_run": THIS_RUN}}
