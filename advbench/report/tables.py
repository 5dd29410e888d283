"""The generic tables of a report: victims, interpreters, attacks, detection, leaderboards, transfer, stages,
plugins, score definitions and the worst case. Each function reads a ``View`` and returns a ``Table``."""

from __future__ import annotations

from typing import Any, Optional

from advbench.report.format import NA, NA_TITLE, Cell, Column, Table, count, fmt, is_number, num, seconds, text
from advbench.report.view import View, dicts, interp_label, mapping, ordered, population, subset, sweep_label

# optional metric columns, shown where some row has a value
EXTRA_METRICS = [
    # thresholds chosen on held-out benign calibration images: comparable across detectors, never fitted to
    # the inputs they are read on
    ("tpr_cal_1", "TPR @ calibrated 1%"),
    ("tpr_cal_5", "TPR @ calibrated 5%"),
    ("fpr_cal_5", "FPR @ calibrated 5%"),
    ("tpr_cal_10", "TPR @ calibrated 10%"),
    # the older reading: the best TPR among thresholds picked on the evaluation ROC itself (optimistic)
    ("tpr_at_fpr_1", "TPR @ FPR 1%"),
    ("tpr_at_fpr_5", "TPR @ FPR 5%"),
    ("tpr_at_fpr_10", "TPR @ FPR 10%"),
    ("tnr_at_tpr_90", "TNR @ TPR 90%"),
    ("tnr_at_tpr_95", "TNR @ TPR 95%"),
    ("kept_share", "kept of all"),
]


def with_kept_share(view: View, filtered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Filtered rows, each with ``kept_share``: the share of the unfiltered row's adversarial inputs it keeps, so
    a filtered rate is never read without how much the filter threw away (copies: results stay as read)."""
    def key(row: dict[str, Any]) -> tuple:
        return (row.get("detector"), row.get("interpreter"), row.get("attack"), row.get("source"),
                row.get("target"), row.get("population"), sweep_label(row))

    everything = {key(r): r for r in view.rows(subset_="all", population_=None)}
    out = []
    for row in filtered:
        full = everything.get(key(row)) or {}
        n, total = row.get("n_adversarial"), full.get("n_adversarial")
        share = n / total if is_number(n) and is_number(total) and total else None
        out.append({**row, "kept_share": share})
    return out


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
    intervals = [(k, label) for k, label in INTERVALS if any(r.get(k) for r in rows)]
    columns += [Column(label, "num", "95% interval (Wilson for rates, DeLong for AUROC): differences inside it "
                                     "are noise") for _, label in intervals]
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
        cells += [interval(row.get(k)) for k, _ in intervals]
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
    with_match = any(row.get("accuracy_match") for row in view.interpreters)
    body = []
    for row in view.interpreters:
        match = mapping(row.get("accuracy_match"))
        body.append([text(row.get("victim")), text(row.get("interpreter")), text(row.get("plugin"))]
                    + ([text(row.get("mask_classifier"))] if with_f2 else [])
                    + ([text(sweep_label(row))] if with_sweep else [])
                    + [num(row.get("mask_classifier_accuracy")), count(row.get("n_accuracy_masks")),
                       num(row.get("majority_class_share")), count(row.get("n_train_masks"))]
                    + ([Cell(_match_label(match)) if match else text(None)] if with_match else []))
    return Table("table-interpreters",
                 [Column("victim"), Column("interpreter"), Column("plugin")]
                 + ([Column("f2", title="the mask classifier's plugin")] if with_f2 else [])
                 + ([Column("sweep")] if with_sweep else [])
                 + [Column("mask classifier accuracy", "num", "accuracy of f2 on the test images' masks"),
                    Column("test masks", "num", "clean test images the accuracy is measured on"),
                    Column("majority class share", "num", "share of the most frequent class among f2's predictions: "
                           "near 1 means f2 collapsed onto one class"),
                    Column("training masks", "num", "training images whose masks f2 learned from")]
                 + ([Column("matched to", title="an f2 trained only until it read the calibration images as "
                            "well as another interpreter's f2 (match_accuracy)")] if with_match else []),
                 body, "Mask classifiers (f2): accuracy on the masks of the clean test set.")


def _match_label(match: dict[str, Any]) -> str:
    how = f"stopped after epoch {match.get('epochs')}" if match.get("stopped") else "trained in full, short of it"
    return (f"{match.get('to')}: {fmt(match.get('accuracy'))} vs {fmt(match.get('target_accuracy'))} on "
            f"{match.get('n_images')} calibration images, {how}")


def threat_label(threat: Any) -> Optional[str]:
    """A threat model as a short phrase: "linf ≤ 8/255, on the 1/255 grid, targeted"."""
    threat = mapping(threat)
    if not threat.get("norm"):
        return None
    eps = threat.get("eps")
    if not is_number(eps):
        budget = f"{threat['norm']} unbounded"
    elif threat["norm"] in ("linf", "l2") and abs(eps * 255 - round(eps * 255)) <= 1e-6:
        budget = f"{threat['norm']} ≤ {round(eps * 255)}/255"
    else:
        budget = f"{threat['norm']} ≤ {int(eps) if float(eps).is_integer() else fmt(eps)}"
    levels = threat.get("levels")
    grid = f"on the 1/{levels} grid" if threat.get("quantize") and levels else "not quantised"
    return ", ".join([budget, grid] + (["targeted"] if threat.get("targeted") else []))


def attacks_table(view: View) -> Table:
    units = ordered(str(r["l0_unit"]) for r in view.attacks if r.get("l0_unit"))
    rows = sorted(view.attacks, key=lambda r: (view.attack_key(r.get("attack")), view.victim_key(r.get("source"))))
    # runs since the field's convention was recorded: success among the inputs the victim got right, and the
    # share of the inputs fooling the source that fool each other victim too; since the threat model was
    # recorded: what each attack was allowed, and the successes quantisation undid
    correct = any(is_number(r.get("success_rate_correct")) for r in rows)
    threats = any(r.get("threat_model") for r in rows)
    targets = ordered(t for r in rows for t in mapping(r.get("transfer")))
    columns = [Column("attack"), Column("plugin"), Column("norm")]
    columns += [Column("threat model", title="norm and budget, the grid inputs were rounded onto, targeted or "
                                             "not")] if threats else []
    columns += [Column("source"), Column("n", "num"), Column("n success", "num"), Column("success rate", "num")]
    columns += [Column("success of correct", "num", "n success / inputs the victim classified right")] \
        if correct else []
    columns += [Column("undone by quantisation", "num", "inputs the raw output fooled that the submitted "
                                                        "(quantised) image does not: counted as failures")] \
        if threats else []
    columns += [Column("mean l∞", "num"), Column("mean l2", "num"), Column("mean l0", "num", "; ".join(units))]
    columns += [Column(f"transfer to {t}", "num", "of the inputs fooling the source, the share fooling this "
                                                  "victim too") for t in targets]
    body = []
    for r in rows:
        cells = [text(r.get("attack")), text(r.get("plugin")), text(r.get("norm"))]
        cells += [text(threat_label(r.get("threat_model")))] if threats else []
        cells += [text(r.get("source")), count(r.get("n")), count(r.get("n_success")), num(r.get("success_rate"))]
        cells += [num(r.get("success_rate_correct"))] if correct else []
        cells += [count(r.get("quantization_undone"))] if threats else []
        cells += [num(r.get("mean_linf")), num(r.get("mean_l2")), num(r.get("mean_l0"))]
        cells += [num(mapping(mapping(r.get("transfer")).get(t)).get("transfer_rate")) for t in targets]
        body.append(cells)
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
        verdicts = [_column_verdict(view, a, source, target, sweep) for a in attacks]
        if worst:
            columns_values.append([worst.get((d, i)) for d, i in detectors])
            verdicts.append(None)  # a worst case mixes attacks: no paired test behind it, so no mark
        body = []
        for j, (d, i) in enumerate(detectors):
            cells = [Cell(d), Cell(i, "na" if i == NA else "")]
            for c, values in enumerate(columns_values):
                cell = num(values[j])
                verdict = verdicts[c]
                if verdict is not None and verdict["best"] == (d if i == NA else f"{d}/{i}"):
                    cell = num(values[j], cls="best" if verdict["significant"] else "tied")
                    cell.title = verdict["title"]
                cells.append(cell)
            body.append(cells)
        columns = [Column("detector"), Column("interpreter")] + [Column(a, "num") for a in attacks]
        if worst:
            columns.append(Column("worst case", "num", "worst AUROC over the attacks (results.json worst_case)"))
        where = f"on {source}" if source == target else f"crafted on {source}, evaluated on {target}"
        caption = f"AUROC per attack, adversarial inputs {where}" + (f" ({sweep})" if sweep else "") + \
            ". Bold: the best detector in the column, beyond noise (DeLong's paired test against the runner-up on " \
            "the same inputs, 95%); underlined: best, but within noise of the runner-up."
        tables.append(Table(f"table-leaderboard-{index}", columns, body, caption,
                            note=f"{source} → {target}" if source != target else str(target)))
    return tables


def _column_verdict(view: View, attack: str, source: Any, target: Any, sweep: str) -> Optional[dict[str, Any]]:
    """Whether the column's best detector beats the runner-up beyond noise (results.json comparisons)."""
    rows = [c for c in dicts(view.results.get("comparisons"))
            if (str(c.get("attack")), c.get("source"), c.get("target"), str(c.get("subset")),
                str(c.get("population")), sweep_label(c)) == (attack, source, target, "all", "successful", sweep)]
    if not rows:
        return None
    runner_up = max(rows, key=lambda c: c.get("auroc_other") if is_number(c.get("auroc_other")) else -1.0)
    gap = f"{fmt(runner_up.get('delta'))} [{fmt((runner_up.get('delta_ci') or [None])[0])}, " \
          f"{fmt((runner_up.get('delta_ci') or [None, None])[1])}]"
    significant = bool(runner_up.get("significant"))
    title = (f"best beyond noise: AUROC {gap} above {runner_up.get('other')} (paired DeLong, p = "
             f"{fmt(runner_up.get('p_value'))})" if significant else
             f"best, but within noise of {runner_up.get('other')}: difference {gap} (paired DeLong, p = "
             f"{fmt(runner_up.get('p_value'))})")
    return {"best": str(runner_up.get("best")), "significant": significant, "title": title}


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


INTERVALS = [("tpr_ci", "TPR 95% CI"), ("tnr_ci", "TNR 95% CI"), ("auroc_ci", "AUROC 95% CI")]


def interval(value: Any) -> Cell:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value)):
        return Cell(NA, "num na", NA_TITLE)
    return Cell(f"[{fmt(value[0])}, {fmt(value[1])}]", "num")


def worst_case_table(view: View) -> Table:
    ci = any(w.get("auroc_ci") for w in view.worst_case)  # runs before intervals were recorded have none
    fitted = any(w.get("fit_attack") for w in view.worst_case)
    columns = [Column("detector"), Column("interpreter")] + \
        ([Column("fitted on", "", "the attack whose adversarial examples fitted the one model scored")]
         if fitted else []) + \
        [Column("source"), Column("target"), Column("subset"), Column("pairs", "num"), Column("AUROC", "num")] + \
        ([Column("AUROC 95% CI", "num")] if ci else []) + [Column("TPR", "num"), Column("TNR", "num")]
    rows = [[text(w.get("detector")), text(w.get("interpreter"))] + ([text(w.get("fit_attack"))] if fitted else [])
            + [text(w.get("source")), text(w.get("target")), text(w.get("subset")), count(w.get("n_pairs")),
               num(w.get("auroc"))]
            + ([interval(w.get("auroc_ci"))] if ci else []) + [num(w.get("tpr")), num(w.get("tnr"))]
            for w in view.worst_case]
    return Table("table-worst-case", columns, rows, "Worst case over attacks per detector, one fitted model's "
                 "scores throughout (a detector fitted on adversarial examples: the model fitted on the attack "
                 "named).")


def unseen_table(view: View) -> Table:
    """Detectors fitted on one attack's adversarial examples, read on the attacks they never saw, beside the
    same detector fitted on that attack (seen): the gap is what fitting on the test attack buys."""
    seen = {(r.get("detector"), r.get("interpreter"), r.get("attack"), r.get("source"), r.get("target")): r
            for r in view.detection if r.get("protocol") == "seen" and subset(r) == "all"
            and population(r) == "successful"}
    rows = []
    for r in dicts(view.results.get("unseen")):
        if subset(r) != "all" or population(r) != "successful":
            continue
        same = seen.get((r.get("detector"), r.get("interpreter"), r.get("attack"), r.get("source"), r.get("target")))
        rows.append([text(r.get("detector")), text(r.get("interpreter")), text(r.get("fit_attack")),
                     text(r.get("attack")), text(r.get("source")), text(r.get("target")),
                     count(r.get("n_adversarial")), num(r.get("auroc")), interval(r.get("auroc_ci")),
                     num((same or {}).get("auroc")), interval((same or {}).get("auroc_ci")),
                     num(r.get("tpr_cal_5"))])
    columns = [Column("detector"), Column("interpreter"), Column("fitted on"), Column("tested on"), Column("source"),
               Column("target"), Column("n adv", "num"), Column("AUROC unseen", "num"),
               Column("95% CI", "num"), Column("AUROC seen", "num", "the same detector fitted on the tested attack"),
               Column("95% CI", "num"), Column("TPR at 5% FPR", "num", "threshold from the calibration images")]
    return Table("table-unseen", columns, rows, "Detectors that learn from adversarial examples, fitted on one "
                 "attack (evaluation.unseen_fit) and tested on the others; successful adversarial inputs, every "
                 "natural evaluation image as benign.")


def controls_table(view: View) -> tuple[Table, list[str]]:
    """Each interpretation-based detector against each control on the same inputs (subset all, successful
    adversarial inputs), and per attack the detectors that beat every control beyond noise."""
    rows, cells = [], {}
    for r in dicts(view.results.get("controls")):
        if subset(r) != "all" or population(r) != "successful":
            continue
        key = (r.get("attack"), r.get("source"), r.get("target"), r.get("detector"))
        cells.setdefault(key, []).append(r)
    controls = ordered(str(r.get("control")) for group in cells.values() for r in group)
    verdicts = []
    for (attack, source, target, detector), group in cells.items():
        by_control = {str(r.get("control")): r for r in group}
        line = [text(attack), text(f"{source}->{target}"), text(detector)]
        for control in controls:
            r = by_control.get(control)
            if r is None:
                line.append(text(None))
                continue
            ci = r.get("delta_ci") or [None, None]
            line.append(Cell(f"{r.get('verdict')} ({fmt(r.get('delta'))} [{fmt(ci[0])}, {fmt(ci[1])}])",
                             "num", f"AUROC {fmt(r.get('auroc'))} vs {fmt(r.get('auroc_control'))}, "
                                    f"p = {fmt(r.get('p_value'))}"))
        rows.append(line)
        if all(r.get("verdict") == "beats" for r in group):
            verdicts.append(f"{detector} beats every control on {attack} ({source}->{target})")
    columns = [Column("attack"), Column("pair"), Column("detector")] + \
        [Column(f"vs {c}", "num", "verdict (AUROC difference [DeLong paired 95% interval])") for c in controls]
    return Table("table-controls", columns, rows, "Interpretation-based detectors against the controls on the same "
                 "inputs: beats / within noise / worse, with the AUROC difference and its paired interval."), verdicts
