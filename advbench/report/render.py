"""Assemble a run's HTML report from its results.json (and gallery.pt when there is one).

The page is one self-contained file: inline CSS, figures as inline SVG, gallery images as PNG data URIs and
results.json itself embedded in a ``<script type="application/json" id="results">`` block. No number is
computed here: every value shown is read from results.json (ROC points included) and only formatted.
Anything missing (an interrupted run, an older results.json) is shown as "not computed" instead of failing.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import jinja2
from markupsafe import Markup

from advbench.report import figures
from advbench.report.charts import heatmaps as draw_heatmaps, roc_figures
from advbench.report.format import NA, NOT_COMPUTED, Cell, Column, Table, fmt, is_number, num, period, seconds, text
from advbench.report.gallery import gallery_blocks
from advbench.report.sections import arrange, collect
from advbench.report.tables import (attacks_table, detection_table, interpreters_table, invariance_rows,
                                    invariance_table, leaderboard_tables, plugins_table, score_definitions,
                                    stage_tables, transfer_tables, victims_table, worst_case_table)
from advbench.report.view import View, dicts, interp_label, mapping, ordered, population, sweep_label

# the built-in sections in page order, with their navigation titles; plugin sections are placed among them
CORE_SECTIONS = [("overview", "Overview"), ("paper", "Paper vs this run"), ("sweep", "Sweep trade-off"),
                 ("leaderboard", "Leaderboard"), ("roc", "ROC curves"), ("detection", "Detection tables"),
                 ("transfer", "Transfer"), ("attacks", "Attacks"), ("gallery", "Mask gallery"), ("run", "Run details")]
# ids the page uses for things other than sections (a plugin section may not take them)
RESERVED_IDS = {"results", "warnings", "report-problems", "incomplete-banner", "unknown-banner", "suite-name",
                "command", "filtered", "invariance", "attacked", "worst-case", "gallery-missing"}
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
               "Only inputs whose benign attention mask f2 classifies correctly (subset \"filtered\")."),
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


def build_context(results: dict[str, Any], raw: str, run_dir: Path, env: jinja2.Environment) -> dict[str, Any]:
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
    sweep = sweep_section(results, view)
    if sweep is not None:
        sweep.update(sweep_figures(sweep))
    gallery, gallery_note = gallery_blocks(run_dir, results)
    warnings = [str(w) for w in results.get("warnings") or []] if isinstance(results.get("warnings"), list) else []
    missing = results.get("missing") if isinstance(results.get("missing"), list) else []
    complete = results.get("complete")
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
        "report_problems": [],
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
        "heatmaps": draw_heatmaps(heat),
        "attacks_table": attacks_table(view),
        "worst_table": worst_case_table(view),
        "gallery": gallery,
        "gallery_note": gallery_note,
        "results_json": embed_json(raw),
        "any_detection": bool(view.detection),
        "sweep": sweep,
    }
    core = [(sid, title) for sid, title in CORE_SECTIONS
            if (sid != "paper" or context["has_paper"]) and (sid != "sweep" or sweep is not None)]
    sections, problems = collect(results, run_dir, env, {sid for sid, _ in core} | RESERVED_IDS)
    context["report_problems"] += problems
    order, context["slots"] = arrange(sections, [sid for sid, _ in core])
    titles = dict(core) | {s["id"]: s["title"] for s in sections}
    nav = [(sid, titles[sid]) for sid in order]
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
    env = environment()
    html = env.get_template("report.html").render(**build_context(results, raw, run_dir, env))
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
