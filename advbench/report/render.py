"""Assemble a run's HTML report from its results.json (and gallery.pt when there is one).

The page is one self-contained file: inline CSS, figures as inline SVG, gallery images as PNG data URIs and
results.json itself embedded in a ``<script type="application/json" id="results">`` block. No number is
computed here: every value shown is read from results.json (ROC points included) and only formatted.
Anything missing (an interrupted run, an older results.json) is shown as "not computed" instead of failing.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from advbench.report.charts import heatmaps as draw_heatmaps, roc_figures
from advbench.report.format import NOT_COMPUTED, fmt, period, seconds
from advbench.report.gallery import gallery_blocks
from advbench.report.sections import arrange, collect
from advbench.report.tables import (attacks_table, controls_table, detection_table, interpreters_table,
                                    invariance_table, leaderboard_tables, plugins_table, score_definitions,
                                    stage_tables, transfer_tables, unseen_table, victims_table, with_kept_share,
                                    worst_case_table)
from advbench.report.view import View, dicts, mapping, ordered, population
from advbench.security import sanity_warnings

# the built-in sections in page order, with their navigation titles; plugin sections are placed among them
CORE_SECTIONS = [("overview", "Overview"),
                 ("leaderboard", "Leaderboard"), ("roc", "ROC curves"), ("detection", "Detection tables"),
                 ("transfer", "Transfer"), ("attacks", "Attacks"), ("gallery", "Mask gallery"), ("run", "Run details")]
# ids the page uses for things other than sections (a plugin section may not take them)
RESERVED_IDS = {"results", "warnings", "report-problems", "incomplete-banner", "unknown-banner", "suite-name",
                "command", "filtered", "invariance", "attacked", "worst-case", "gallery-missing"}


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
    transfer_table, heat = transfer_tables(view)
    gallery, gallery_note = gallery_blocks(run_dir, results)
    warnings = [str(w) for w in results.get("warnings") or []] if isinstance(results.get("warnings"), list) else []
    # a failed sanity check is a warning even in a results.json whose writer did not copy it into "warnings"
    warnings += [w for w in sanity_warnings(dicts(results.get("sanity_checks"))) if w not in warnings]
    missing = results.get("missing") if isinstance(results.get("missing"), list) else []
    complete = results.get("complete")
    distributions = ordered((str(p.get("distribution")), str(p.get("version")))
                            for p in dicts(results.get("plugins")) if p.get("distribution"))
    victims = [{"name": str(k), "plugin": mapping(v).get("plugin"), "accuracy": mapping(v).get("clean_accuracy")}
               for k, v in view.victims.items()]
    controls = controls_table(view)  # the table and, per attack, who beats every control
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
        "leaderboards": leaderboard_tables(view),
        "rocs": roc_figures(view),
        "direct_table": detection_table(view, view.rows(direct=True), "table-direct",
                                        "Detection of adversarial inputs crafted on the defended victim (source = "
                                        "target), successful attacks, all test inputs.", pair="victim"),
        "transfer_table": detection_table(view, view.rows(direct=False), "table-transfer",
                                          "Detection of adversarial inputs crafted on another victim (source ≠ "
                                          "target), successful attacks, all test inputs.", pair="both"),
        "filtered_table": detection_table(view, with_kept_share(view, view.rows(subset_="filtered")),
                                          "table-filtered",
                                          "After filtering (paper Table 4): only inputs whose benign mask f2 "
                                          "classifies correctly; recovery = original class recovered from the mask. "
                                          "For the contrastive detector TNR is 1.0 by construction here (a kept "
                                          "benign input has f2 = true label = f1, so it cannot be flagged), and its "
                                          "AUROC is inflated the same way; 'kept of all' is the share of adversarial "
                                          "inputs the filter keeps.",
                                          pair="both", recovery="always"),
        "transfer_target_table": detection_table(view, view.rows(direct=False, population_="fools-target"),
                                                 "table-transfer-target",
                                                 "Transferred inputs counted on the target: the positives are the "
                                                 "adversarial inputs the target victim misclassifies (its clean "
                                                 "original classified right), whether or not they fooled the source.",
                                                 pair="both"),
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
        "unseen_table": unseen_table(view),
        "controls_table": controls[0],
        "controls_verdicts": controls[1],
        "gallery": gallery,
        "gallery_note": gallery_note,
        "results_json": embed_json(raw),
        "any_detection": bool(view.detection),
    }
    core = list(CORE_SECTIONS)
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
