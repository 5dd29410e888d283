"""The generic figures' data, drawn by ``figures``: ROC panels and transfer heat maps as inline SVG.

A figure that fails to draw becomes an error line on the page, never a failed report.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from advbench.report import figures
from advbench.report.view import View, interp_label, mapping, ordered, sweep_label

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



def heatmaps(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transfer tables' heat-map panels (``tables.transfer_tables``) drawn, one figure per detector."""
    out = []
    for index, item in enumerate(items):
        try:
            svg = figures.heatmap_figure(item["panels"], item["sources"], item["targets"], prefix=f"heat{index}")
            out.append({**item, "svg": Markup(svg), "error": ""})
        except Exception as exc:
            out.append({**item, "svg": None, "error": f"figure failed: {type(exc).__name__}: {exc}"})
    return out
