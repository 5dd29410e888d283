"""Each baseline detector beside the numbers published for it on CIFAR-10, from ``paper_reference.baselines``.

``paper_reference.baselines`` maps a detector to ``{attack: {"tpr": ..., "fpr": ..., "auroc": ...}}`` (any of the
three; rates as fractions) and may carry ``source`` (where the numbers come from) per detector or at the top
of ``paper_reference``. Ours is read at the threshold chosen on the calibration images for 5% FPR (the operating
point closest to the published detection rates) with its Wilson interval, and the AUROC with DeLong's. Numbers
are only read and formatted here, never computed.
"""

from __future__ import annotations

from typing import Any, Optional

from advbench.report.format import NA, Cell, Column, Table, fmt, is_number, num
from advbench.report.view import View, dicts, mapping, population, subset


def _interval(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value):
        return f"[{fmt(value[0])}, {fmt(value[1])}]"
    return ""


def _verdict(published: Any, low: Any, high: Any) -> str:
    if not (is_number(published) and is_number(low) and is_number(high)):
        return NA
    if low <= published <= high:
        return "inside our interval"
    return f"{'above' if published > high else 'below'} our interval"


def baseline_table(view: View, reference: dict[str, Any]) -> Optional[Table]:
    rows = {(r.get("detector"), r.get("attack"), r.get("target")): r for r in view.detection
            if subset(r) == "all" and population(r) == "successful" and r.get("source") == r.get("target")
            and r.get("knowledge", "oblivious") == "oblivious"}
    victims = [v for v in view.victim_order if any(key[2] == v for key in rows)] or [NA]
    body = []
    for detector, attacks in mapping(reference.get("baselines")).items():
        cells = [(victim, attack, mapping(published)) for victim in victims
                 for attack, published in mapping(attacks).items() if attack != "source"]
        for victim, attack, published in cells:
            ours = rows.get((detector, attack, victim), {})
            calibrated = mapping(mapping(ours.get("calibrated")).get("fpr_5"))
            tpr_ci = calibrated.get("tpr_ci") or [None, None]
            auroc_ci = ours.get("auroc_ci") or [None, None]
            body.append([
                Cell(str(detector)), Cell(str(victim)), Cell(str(attack)),
                num(published.get("tpr")), num(published.get("fpr")), num(published.get("auroc")),
                Cell(f"{fmt(calibrated.get('tpr'))} {_interval(tpr_ci)}".strip() if calibrated else NA, "num"),
                num(calibrated.get("fpr")),
                Cell(f"{fmt(ours.get('auroc'))} {_interval(auroc_ci)}".strip() if ours else NA, "num"),
                Cell(_verdict(published.get("tpr"), *tpr_ci) if "tpr" in published
                     else _verdict(published.get("auroc"), *auroc_ci))])
    if not body:
        return None
    columns = [Column("detector"), Column("victim"), Column("attack"),
               Column("published TPR", "num", "detection rate as published"),
               Column("published FPR", "num", "its false-positive rate as published"),
               Column("published AUROC", "num"),
               Column("our TPR at 5% FPR", "num", "threshold from the calibration images; Wilson 95% interval"),
               Column("our FPR", "num", "on the evaluation's benign images, at that threshold"),
               Column("our AUROC", "num", "DeLong 95% interval"),
               Column("published number", title="where the published TPR (else AUROC) lies against our interval")]
    return Table("table-baselines", columns, body, "Successful adversarial inputs on the defended victim itself; "
                 "every natural evaluation image as benign.")


def section(results: dict[str, Any]) -> Optional[dict[str, Any]]:
    reference = results.get("paper_reference")
    if not isinstance(reference, dict) or not isinstance(reference.get("baselines"), dict):
        return None
    table = baseline_table(View.of(results), reference)
    sources = [f"{d}: {mapping(a).get('source')}" for d, a in mapping(reference.get("baselines")).items()
               if mapping(a).get("source")]
    lead = ("Each baseline beside the numbers published for it on CIFAR-10"
            + (f" ({reference.get('source')})" if reference.get("source") else "") + ". Published detection rates "
            "come with their own false-positive rate; ours is read at 5% on held-out calibration images, so a "
            "published rate at a higher FPR is easier to reach." + (" Sources: " + "; ".join(sources) if sources
                                                                    else ""))
    return {"id": "baselines", "title": "Baselines vs their published numbers", "place": "after:overview",
            "lead": lead, "tables": [table] if table else []}
