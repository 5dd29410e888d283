"""The Security section: how often attacks fool a victim without its detector noticing, oblivious beside adaptive.

It appears where results.json has ``security`` rows (advbench.security): a table per target victim (a row per
detector, a column per attack grouped by budget), a success-under-detection against eps figure per detector, and
the sanity checks (``sanity_checks``), failed ones first and highlighted. Numbers are only read and formatted.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Optional

from markupsafe import Markup

from advbench.report import figures
from advbench.report.format import NA, NA_TITLE, Cell, Column, Table, fmt, is_number, text
from advbench.report.view import dicts, interp_label, ordered, sweep_label
from advbench.security import eps_label, scope_label

from advbench_reports.controls import is_control, rank

KNOWLEDGE = {"oblivious": "crafted on the victim alone", "adaptive": "crafted against the victim and its detector"}
OUTCOME_ORDER = {"fail": 0, "pass": 1, "not-applicable": 2}


def _knowledge_rank(knowledge: Any) -> int:
    return list(KNOWLEDGE).index(knowledge) if knowledge in KNOWLEDGE else len(KNOWLEDGE)


def _eps(row: dict[str, Any]) -> Optional[float]:
    return row["eps"] if is_number(row.get("eps")) else None


def _eps_key(row: dict[str, Any]) -> tuple:
    """Budgets by norm, then growing, unbounded last."""
    return str(row.get("norm")), _eps(row) is None, _eps(row) or 0.0


def _budget(row: dict[str, Any]) -> str:
    return f"{row.get('norm') or NA} ε = {eps_label(_eps(row), row.get('norm'))}"


def _attack_name(row: dict[str, Any]) -> str:
    """The attack without its budget suffix ("pgd@8/255" -> "pgd"): the column group already names the budget."""
    return str(row.get("attack") or row.get("attack_plugin")).split("@")[0]


def _detector_key(row: dict[str, Any]) -> tuple:
    return (str(row.get("detector")), interp_label(row.get("interpreter")), sweep_label(row))


def _attack_key(row: dict[str, Any]) -> tuple:
    return (row.get("source"), str(row.get("knowledge")), _attack_name(row), row.get("steps"))


def _steps_vary(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Per attack name, whether its rows differ in steps (only then does a label name them)."""
    steps: dict[str, set] = {}
    for r in rows:
        steps.setdefault(_attack_name(r), set()).add(r.get("steps"))
    return {name: len(values) > 1 for name, values in steps.items()}


def _column_label(name: str, knowledge: str, steps: Optional[int], source: Any, target: Any) -> str:
    """"pgd (oblivious)", "pgd · 100 steps (adaptive)", "pgd (oblivious) from vgg"."""
    return (name + (f" · {steps} steps" if steps is not None else "") + f" ({knowledge})"
            + (f" from {source}" if source != target else ""))


def _with_interval(value: Any, interval: Any) -> str:
    if isinstance(interval, list) and len(interval) == 2 and all(is_number(v) for v in interval):
        return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"
    return fmt(value)


def _cell(row: Optional[dict[str, Any]]) -> Cell:
    if row is None:
        return Cell(NA, "num na", NA_TITLE)
    if row.get("status", "ok") != "ok":
        return Cell(str(row.get("status")), "na status", str(row.get("reason") or ""))
    if not is_number(row.get("success_under_detection")):
        return Cell(NA, "num na", "no input the victim classifies correctly")
    return Cell(_with_interval(row["success_under_detection"], row.get("success_under_detection_ci")), "num",
                f"{row.get('n_evaded')} of {row.get('n_correct')} correctly classified inputs evade; success without "
                f"the detector {_with_interval(row.get('success_rate'), row.get('success_rate_ci'))}")


def security_tables(rows: list[dict[str, Any]]) -> list[Table]:
    """One table per target victim: a row per detector, a column per attack grouped by budget."""
    tables = []
    for target in ordered(r.get("target") for r in rows):
        mine = [r for r in rows if r.get("target") == target]
        detectors = sorted(ordered(_detector_key(r) for r in mine), key=lambda d: rank(d[0], d[1]))
        budgets = ordered(_budget(r) for r in sorted(mine, key=_eps_key))
        attacks = {budget: sorted(ordered(_attack_key(r) for r in mine if _budget(r) == budget),
                                  key=lambda a: (a[0] != target, _knowledge_rank(a[1]), a[2], a[3] or 0))
                   for budget in budgets}
        steps_vary = _steps_vary(mine)
        cells = {}
        for r in mine:
            cells.setdefault((_detector_key(r), _budget(r), _attack_key(r)), r)
        show_sweep = any(d[2] for d in detectors)
        columns = [Column("detector"), Column("interpreter")]
        columns += [Column("setting", "sweepval", "sweep point")] if show_sweep else []
        groups = [("", len(columns), "")]
        for budget in budgets:
            for k, (source, knowledge, name, steps) in enumerate(attacks[budget]):
                label = _column_label(name, knowledge, steps if steps_vary[name] else None, source, target)
                columns.append(Column(label, f"num {knowledge}" + (" gs" if k == 0 else ""),
                                      KNOWLEDGE.get(knowledge, "")))
            groups.append((budget, len(attacks[budget]), "gs attack"))
        body, row_cls = [], []
        for detector in detectors:
            name, interp, sweep = detector
            line = [Cell(name + (" (control)" if is_control(name) else "")), Cell(interp, "na" if interp == NA else "")]
            line += [text(sweep, "sweepval")] if show_sweep else []
            for budget in budgets:
                for k, attack in enumerate(attacks[budget]):
                    cell = _cell(cells.get((detector, budget, attack)))
                    cell.cls += " gs" if k == 0 else ""
                    line.append(cell)
            body.append(line)
            row_cls.append("control" if is_control(name) else "")
        fprs = ordered(f"{r['fpr']:.0%}" for r in mine if is_number(r.get("fpr")))
        at = f" at {' / '.join(fprs)} false positives on held-out benign images" if fprs else ""
        tables.append(Table(f"table-security-{len(tables)}", columns, body,
                            f"Success under detection on {target}: of the inputs {target} classifies correctly, the "
                            f"share the attack makes it misclassify while the detector, thresholded{at}, does not flag "
                            "them; 95% intervals in brackets. Lower is better for the defence.",
                            groups=groups, note=f"Target {target}", row_cls=row_cls))
    return tables


def security_figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Success under detection against eps, one figure per detector (and target and norm): a line per attack,
    oblivious dashed, adaptive solid, 95% intervals as error bars."""
    measured = [r for r in rows if r.get("status", "ok") == "ok"]
    steps_vary = _steps_vary(measured)
    # one colour per attack and source across the figures, so a transferred attack is told from the white-box one
    colours = ordered((_attack_name(r), r.get("source") != r.get("target"))
                      for r in sorted(measured, key=lambda r: _knowledge_rank(r.get("knowledge"))))
    panels: dict[tuple, list[dict[str, Any]]] = {}
    for r in measured:
        panels.setdefault((r.get("target"), *_detector_key(r), str(r.get("norm"))), []).append(r)
    out = []
    for index, ((target, detector, interp, sweep, norm), members) in enumerate(panels.items()):
        members.sort(key=_eps_key)
        budgets = ordered(_eps(r) for r in members)
        series = []
        for source, knowledge, name, steps in sorted(ordered(_attack_key(r) for r in members),
                                                     key=lambda a: (_knowledge_rank(a[1]), a[2], a[3] or 0)):
            line = {_eps(r): r for r in members if _attack_key(r) == (source, knowledge, name, steps)}
            label = _column_label(name, knowledge, steps if steps_vary[name] else None, source, target)
            series.append({"label": label, "color": colours.index((name, source != target)),
                           "marker": _knowledge_rank(knowledge),
                           "dash": 0 if knowledge == "adaptive" else 1,
                           "values": [line[e].get("success_under_detection") if e in line else None for e in budgets],
                           "intervals": [line[e].get("success_under_detection_ci") if e in line else None
                                         for e in budgets]})
        title = f"{detector}" + (f"/{interp}" if interp != NA else "") + \
            f" on {target}" + (f" · {sweep}" if sweep else "")
        try:
            svg = figures.sweep_lines_figure([{"title": "", "ylabel": "success under detection", "series": series}],
                                             list(range(len(budgets))), [eps_label(e, norm) for e in budgets],
                                             numeric=False, xlabel=f"{norm} budget ε", prefix=f"security{index}")
            out.append({"title": title, "svg": Markup(svg), "error": "", "n_lines": len(series)})
        except Exception as exc:  # a malformed value must not take the page down
            out.append({"title": title, "svg": None, "error": f"figure failed: {type(exc).__name__}: {exc}",
                        "n_lines": len(series)})
    return out


def checks_table(checks: list[dict[str, Any]]) -> Table:
    """The sanity checks, failed ones first (and marked), then passed, then those that had nothing to compare."""
    checks = sorted(checks, key=lambda c: OUTCOME_ORDER.get(str(c.get("outcome")), len(OUTCOME_ORDER)))
    body = [[text(c.get("check")), Cell(str(c.get("outcome")), f"outcome {c.get('outcome')}"),
             text(scope_label(c) if c.get("scope") else None), text(c.get("detail"), "detail")] for c in checks]
    return Table("table-sanity-checks", [Column("check"), Column("outcome"), Column("scope"), Column("detail")], body,
                 "Checks that catch a broken evaluation (Carlini et al., \"On Evaluating Adversarial Robustness\", "
                 "2019): success grows with the budget and reaches ~1.0 at a large one, does not fall with more steps, "
                 "and a transferred attack does not beat the white-box one. Rises and falls count only beyond the 95% "
                 "intervals.", row_cls=["check-fail" if c.get("outcome") == "fail" else "" for c in checks])


def section(results: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The "Security" section, after the leaderboard; None without security rows."""
    rows = dicts(results.get("security"))
    if not rows:
        return None
    checks = dicts(results.get("sanity_checks"))
    reasons = ordered((str(r.get("status")), str(r.get("reason") or NA)) for r in rows
                      if r.get("status", "ok") != "ok")
    template = resources.files(__package__).joinpath("templates", "security.html").read_text(encoding="utf-8")
    return {"id": "security", "title": "Security", "place": "after:leaderboard", "template": template,
            "context": {"tables": security_tables(rows), "figures": security_figures(rows), "reasons": reasons,
                        "checks": checks_table(checks) if checks else None,
                        "n_failed": sum(c.get("outcome") == "fail" for c in checks)}}
