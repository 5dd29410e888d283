"""The sweep trade-off section: one table row per setting and detector, AUROC and f2 accuracy against the swept
value, and a TPR/TNR scatter. It appears where results.json has a sweep (``sweep_fields``, or rows with ``sweep``).
The setting marked for each detector and attack is the one chosen on the validation images (``sweep_choice``).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Optional

from markupsafe import Markup

from advbench.report import figures
from advbench.report.format import NA, Cell, Column, Table, fmt, is_number, num, text
from advbench.report.view import View, dicts, interp_label, mapping, ordered, sweep_label

from advbench_reports.controls import control_note, is_control, rank

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



def validation_choices(results: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """(group, attack) -> the point chosen on the validation images (results.json ``sweep_choice``): its key and
    validation AUROC. Left out where every point scored the same there (nothing was chosen)."""
    out = {}
    for c in dicts(results.get("sweep_choice")):
        if c.get("tied") or not isinstance(c.get("sweep"), dict):
            continue
        group = (str(c.get("detector")), interp_label(c.get("interpreter")), c.get("source"), c.get("target"))
        out[(group, str(c.get("attack")))] = {"key": sweep_key(c["sweep"]), "auroc": c.get("validation_auroc")}
    return out


def choice_note(results: dict[str, Any]) -> str:
    """What the bold cells mean, or why there are none."""
    if dicts(results.get("sweep_choice")):
        return ("Bold: the setting chosen for each attack (per detector) by AUROC on the validation images, "
                "disjoint from the evaluation images these rows are read on; the best row here would be chosen on "
                "the test set.")
    return ("No setting is marked: the run has no validation images (evaluation.n_validation: 0, or a run from "
            "before the split), and the best row here would be chosen on the test set.")


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
    groups.sort(key=lambda g: (rank(g[0], g[1]), g[2] != g[3]))  # stable: keeps sort_rows' order within
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
    chosen = validation_choices(results)
    for gi, group in enumerate(groups):
        detector, interp, source, target = group
        control = is_control(detector)
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
                choice = chosen.get((group, attack))
                if choice is not None and choice["key"] == point["key"]:
                    auroc = num(r.get("auroc"), cls="gs best")
                    auroc.title = (f"chosen for {attack} on the validation images (validation AUROC "
                                   f"{fmt(choice['auroc'])})")
                cells += [auroc, num(r.get("tpr")), num(r.get("tnr"))]
            body.append(cells)
            row_cls.append(" ".join(c for c in ["group-start" if pi == 0 and gi > 0 else "",
                                                "control" if control else ""] if c))
    table = Table("table-sweep", columns, body,
                  "One row per setting and detector: successful adversarial inputs, all test inputs. "
                  + choice_note(results), groups=table_groups, row_cls=row_cls)

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
    if groups and not is_control(groups[0][0]):
        primary = groups[0]
        control_group = next((g for g in groups if is_control(g[0]) and g[2:] == primary[2:]), None)
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
        order = " (interpretation-based detectors first" + control_note([g[0] for g in groups]) + ")"
    fields_text = Markup(", ").join(Markup("<code>{}</code>").format(f) for f in fields)
    values_text = f" ({', '.join(p['label'] for p in points)})" if len(fields) == 1 else ""
    return {"fields": fields, "points": points, "table": table, "attacks": attacks, "choice_note": choice_note(results),
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



def section(results: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The "Sweep trade-off" section, before the leaderboard; None when the run has no sweep."""
    sweep = sweep_section(results, View.of(results))
    if sweep is None:
        return None
    sweep.update(sweep_figures(sweep))
    template = resources.files(__package__).joinpath("templates", "sweep.html").read_text(encoding="utf-8")
    return {"id": "sweep", "title": "Sweep trade-off", "place": "before:leaderboard", "template": template,
            "context": {"sweep": sweep}}
