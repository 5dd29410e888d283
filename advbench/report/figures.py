"""Figures for the report: functions that take plain data and return inline SVG markup or PNG data URIs.

Nothing here reads results.json or computes a metric: the caller hands over the numbers to draw. SVG output is
deterministic (fixed ``svg.hashsalt``, no date, text drawn as paths) and every figure's element ids carry a
prefix of their own, so many figures can share one HTML document.
"""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Any, Optional, Sequence

import numpy as np

# a colour-blind-friendly palette (Okabe & Ito), then matplotlib's tab10 for more series
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
           "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
DASHES = [(0, (5, 2)), (0, (2, 1.5)), (0, (6, 2, 1.5, 2)), (0, (1, 1)), (0, (8, 3))]

_RC = {
    "svg.hashsalt": "advbench-report",
    "svg.fonttype": "path",
    "svg.image_inline": True,
    "font.family": "DejaVu Sans",
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.labelsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#555555",
    "axes.linewidth": 0.8,
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "grid.color": "#e4e4e4",
    "grid.linewidth": 0.6,
    "path.simplify": True,
}


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    return matplotlib


def mpl_text(text: Any) -> str:
    """A string drawn literally by matplotlib: ``$`` would start mathtext (and may fail to parse)."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _to_svg(fig, prefix: str, tight: bool = True) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None},
                bbox_inches="tight" if tight else None, pad_inches=0.04)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE: the SVG goes inline
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)  # RDF boilerplate, no content
    return _prefix_ids(svg, prefix)


def _prefix_ids(svg: str, prefix: str) -> str:
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    if not ids:
        return svg

    def swap(match: re.Match) -> str:
        name = match.group(2)
        return match.group(1) + (f"{prefix}-{name}" if name in ids else name)

    return re.sub(r'(\bid="|url\(#|href="#)([^")]+)', swap, svg)


def _figure(width: float, height: float):
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def roc_figure(curves: Sequence[dict[str, Any]], title: str = "", prefix: str = "roc") -> str:
    """ROC curves as SVG.

    Each curve: ``{"label": str, "fpr": [...], "tpr": [...], "auroc": float|None, "color": int,
    "dash": int (0 = solid, k > 0 = k-th dash pattern), "operating_point": {"fpr", "tpr"} | None}``.
    The legend reads ``label (AUROC x.xxx)``; an operating point is drawn as a marker on its curve's colour.
    """
    matplotlib = _matplotlib()
    from matplotlib.lines import Line2D

    entries = len(curves) + (1 if any(_has_point(c) for c in curves) else 0)
    ncol = 1 if entries <= 8 else 2
    rows = max(1, math.ceil(entries / ncol))
    # a fixed layout (inches): every ROC figure has the same width and axes, so they share one scale on the page
    width, side, left, top, below = 4.0, 3.05, 0.62, 0.1, 0.5
    legend = 0.08 + rows * 0.165
    height = top + side + below + legend
    with matplotlib.rc_context(_RC):
        fig = _figure(width, height)
        ax = fig.add_axes((left / width, (below + legend) / height, side / width, side / height))
        ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, linestyle=(0, (3, 3)), zorder=1)
        for curve in curves:
            color = PALETTE[int(curve.get("color", 0)) % len(PALETTE)]
            dash = int(curve.get("dash", 0))
            style = "-" if dash <= 0 else DASHES[(dash - 1) % len(DASHES)]
            auroc = curve.get("auroc")
            label = _shorten(str(curve.get("label", "")), 34 if ncol == 1 else 14)
            label = mpl_text(label) + (f" (AUROC {auroc:.3f})" if _is_number(auroc) else " (AUROC n/a)")
            fpr = [float(v) for v in curve.get("fpr") or []]
            tpr = [float(v) for v in curve.get("tpr") or []]
            if fpr and len(fpr) == len(tpr):
                ax.plot(fpr, tpr, color=color, linestyle=style, linewidth=1.6, label=label, zorder=3)
            else:
                ax.plot([], [], color=color, linestyle=style, linewidth=1.6, label=label + ", no curve")
            if _has_point(curve):
                point = curve["operating_point"]
                ax.plot([point["fpr"]], [point["tpr"]], marker="o", markersize=6.5, color=color,
                        markeredgecolor="#222222", markeredgewidth=0.9, linestyle="none", zorder=4)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel("false positive rate (benign flagged)")
        ax.set_ylabel("true positive rate (adversarial flagged)")
        ax.grid(True, zorder=0)
        if title:
            ax.set_title(mpl_text(title), loc="left")
        handles, labels = ax.get_legend_handles_labels()
        if entries > len(curves):
            handles.append(Line2D([], [], marker="o", linestyle="none", color="#ffffff", markeredgecolor="#222222",
                                  markersize=6))
            labels.append("hard decision (operating point)")
        if handles:
            fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.03, (legend + 0.02) / height), ncol=ncol,
                       handlelength=2.6, columnspacing=1.0, borderaxespad=0.0, labelspacing=0.35)
        return _to_svg(fig, prefix, tight=False)


def _has_point(curve: dict[str, Any]) -> bool:
    point = curve.get("operating_point")
    return isinstance(point, dict) and _is_number(point.get("fpr")) and _is_number(point.get("tpr"))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def heatmap_figure(panels: Sequence[dict[str, Any]], row_labels: Sequence[str], col_labels: Sequence[str],
                   title: str = "", prefix: str = "heat", row_title: str = "source victim (attacked)",
                   col_title: str = "target victim (defended)") -> str:
    """AUROC transfer matrices as SVG, one panel per entry ``{"title": str, "matrix": rows x cols}``.

    Cells hold a number in [0, 1] or None (not computed, drawn hatched). Values are printed in each cell.
    """
    matplotlib = _matplotlib()
    from matplotlib.colors import Normalize

    n = max(1, len(panels))
    rows, cols = max(1, len(row_labels)), max(1, len(col_labels))
    cell = 0.62
    width = min(16.0, n * (cols * cell + 1.3) + 0.9)
    height = rows * cell + 1.4
    with matplotlib.rc_context(_RC):
        fig = _figure(width, height)
        cmap = matplotlib.colormaps["viridis"]
        norm = Normalize(vmin=0.0, vmax=1.0)
        axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
        image = None
        for ax, panel in zip(axes, panels):
            matrix = np.full((rows, cols), np.nan)
            for i, row in enumerate(panel.get("matrix") or []):
                for j, value in enumerate(row or []):
                    if i < rows and j < cols and _is_number(value):
                        matrix[i, j] = float(value)
            ax.set_facecolor("#f2f2f2")
            image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="equal",
                              interpolation="nearest")
            for i in range(rows):
                for j in range(cols):
                    value = matrix[i, j]
                    if np.isnan(value):
                        ax.text(j, i, "–", ha="center", va="center", color="#888888", fontsize=8)
                    else:
                        rgba = cmap(norm(value))
                        light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55
                        ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7.5,
                                color="#111111" if light else "#ffffff")
            ax.set_xticks(range(cols))
            ax.set_xticklabels([mpl_text(c) for c in col_labels], rotation=30, ha="right")
            ax.set_yticks(range(rows))
            ax.set_yticklabels([mpl_text(r) for r in row_labels])
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_title(mpl_text(panel.get("title", "")), fontsize=8.5)
            ax.set_xlabel(col_title, fontsize=7.5)
        if axes:
            axes[0].set_ylabel(row_title, fontsize=7.5)
        if image is not None:
            bar = fig.colorbar(image, ax=axes, fraction=0.035 if n > 1 else 0.05, pad=0.03)
            bar.set_label("AUROC", fontsize=7.5)
            bar.ax.tick_params(labelsize=7)
            bar.outline.set_visible(False)
        if title:
            fig.suptitle(mpl_text(title), x=0.02, ha="left", fontsize=9.5)
        return _to_svg(fig, prefix)


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]


def _sweep_axis(ax, x: Sequence[float], ticklabels: Sequence[str], numeric: bool, xlabel: str) -> None:
    """The swept value on x: the values themselves when they are numbers, else one category per setting."""
    ax.set_xticks(list(x))
    if numeric:
        ax.set_xticklabels([mpl_text(t) for t in ticklabels])
    else:
        rotate = max((len(str(t)) for t in ticklabels), default=0) * len(ticklabels) > 48
        ax.set_xticklabels([mpl_text(_shorten(str(t), 28)) for t in ticklabels], rotation=25 if rotate else 0,
                           ha="right" if rotate else "center")
        if len(x):
            ax.set_xlim(min(x) - 0.4, max(x) + 0.4)
    ax.set_xlabel(mpl_text(xlabel))


def sweep_lines_figure(panels: Sequence[dict[str, Any]], x: Sequence[float], ticklabels: Sequence[str],
                       numeric: bool = True, xlabel: str = "", prefix: str = "sweep") -> str:
    """Metrics against a swept value as SVG, one panel per entry side by side.

    Each panel: ``{"title", "ylabel", "chance": float|None (a grey reference line), "series": [{"label",
    "values": [one per x, number or None], "color": int, "dash": int (0 solid), "marker": int, "intervals":
    optional [one per x, [low, high] or None], drawn as error bars}]}``. ``x``: the positions (the swept values,
    or 0..n-1 for categories) and ``ticklabels`` their labels. A missing value breaks its line. The y axis spans
    [0, 1].
    """
    matplotlib = _matplotlib()
    n = max(1, len(panels))
    entries = max([len(p.get("series") or []) for p in panels] or [1])
    legend_rows = math.ceil(entries / 2)
    width, height = 4.0 * n, 3.0 + 0.17 * legend_rows
    with matplotlib.rc_context(_RC):
        fig = _figure(width, height)
        axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
        for ax, panel in zip(axes, panels):
            chance = panel.get("chance")
            if _is_number(chance):
                ax.axhline(chance, color="#bbbbbb", linewidth=0.8, linestyle=(0, (3, 3)), zorder=1)
            for series in panel.get("series") or []:
                color = PALETTE[int(series.get("color", 0)) % len(PALETTE)]
                dash = int(series.get("dash", 0))
                style = "-" if dash <= 0 else DASHES[(dash - 1) % len(DASHES)]
                values = [float(v) if _is_number(v) else np.nan for v in series.get("values") or []]
                values += [np.nan] * (len(x) - len(values))
                ax.plot(list(x), values[:len(x)], color=color, linestyle=style, linewidth=1.5,
                        marker=MARKERS[int(series.get("marker", 0)) % len(MARKERS)], markersize=4.5,
                        label=mpl_text(_shorten(str(series.get("label", "")), 40)), zorder=3)
                bars = [(at, value, interval) for at, value, interval in zip(x, values, series.get("intervals") or [])
                        if not np.isnan(value) and isinstance(interval, (list, tuple)) and len(interval) == 2
                        and all(_is_number(v) for v in interval)]
                if bars:
                    below = [max(0.0, value - low) for _, value, (low, _) in bars]
                    above = [max(0.0, high - value) for _, value, (_, high) in bars]
                    ax.errorbar([b[0] for b in bars], [b[1] for b in bars], yerr=[below, above], fmt="none",
                                ecolor=color, elinewidth=0.9, capsize=2.5, alpha=0.8, zorder=2)
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel(mpl_text(panel.get("ylabel", "")))
            ax.set_title(mpl_text(panel.get("title", "")), loc="left")
            ax.grid(True, zorder=0)
            _sweep_axis(ax, x, ticklabels, numeric, xlabel)
            if panel.get("series"):
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2 if numeric else -0.26), ncol=2,
                          handlelength=2.4, columnspacing=1.0, borderaxespad=0.0)
        fig.subplots_adjust(wspace=0.3)
        return _to_svg(fig, prefix)


def tradeoff_scatter_figure(series: Sequence[dict[str, Any]], prefix: str = "tradeoff") -> str:
    """TPR (y) against TNR (x) as SVG, one marker per setting.

    Each series: ``{"label", "color": int, "marker": int, "hollow": bool, "annotate": bool, "points": [{"tnr",
    "tpr", "label", "gid"}], "connect": bool}``. Each marker is its own SVG group with id ``<prefix>-<gid>``; where
    ``connect`` a series' points are joined in order by a faint line, and where ``annotate`` labelled. The grey
    diagonal is chance (TPR = 1 - TNR); up and to the right is better.
    """
    matplotlib = _matplotlib()
    from matplotlib.lines import Line2D

    with matplotlib.rc_context(_RC):
        fig = _figure(4.6, 4.4)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot([0, 1], [1, 0], color="#bbbbbb", linewidth=0.8, linestyle=(0, (3, 3)), zorder=1)
        handles, labels = [], []
        for s in series:
            color = PALETTE[int(s.get("color", 0)) % len(PALETTE)]
            marker = MARKERS[int(s.get("marker", 0)) % len(MARKERS)]
            hollow = bool(s.get("hollow"))
            face = "white" if hollow else color
            points = [p for p in s.get("points") or [] if _is_number(p.get("tnr")) and _is_number(p.get("tpr"))]
            if len(points) > 1 and s.get("connect", True):
                ax.plot([p["tnr"] for p in points], [p["tpr"] for p in points], color=color, alpha=0.35,
                        linewidth=1.0, linestyle=(0, (2, 2)) if hollow else "-", zorder=2)
            for p in points:
                line, = ax.plot([p["tnr"]], [p["tpr"]], linestyle="none", marker=marker, markersize=7,
                                markerfacecolor=face, markeredgecolor=color if hollow else "#222222",
                                markeredgewidth=1.1 if hollow else 0.6, zorder=4 if not hollow else 3)
                if p.get("gid"):
                    line.set_gid(str(p["gid"]))
                if s.get("annotate", True) and p.get("label") not in (None, ""):
                    ax.annotate(mpl_text(_shorten(str(p["label"]), 24)), (p["tnr"], p["tpr"]),
                                textcoords="offset points", xytext=(5, 4), fontsize=7, color="#333333", zorder=5)
            handles.append(Line2D([], [], linestyle="none", marker=marker, markersize=6.5, markerfacecolor=face,
                                  markeredgecolor=color if hollow else "#222222"))
            labels.append(mpl_text(_shorten(str(s.get("label", "")), 40)))
        ax.set_xlim(-0.02, 1.05)
        ax.set_ylim(-0.02, 1.05)
        ax.set_aspect("equal")
        ax.set_xlabel("TNR (benign inputs passed)")
        ax.set_ylabel("TPR (adversarial inputs flagged)")
        ax.grid(True, zorder=0)
        handles.append(Line2D([], [], color="#bbbbbb", linewidth=0.8, linestyle=(0, (3, 3))))
        labels.append("chance (TPR = 1 − TNR)")
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, borderaxespad=0.0)
        return _to_svg(fig, prefix)


def image_data_uri(array: Any, target: int = 96) -> Optional[str]:
    """A C x H x W (or H x W) array in [0, 1] as a PNG data URI, upscaled (nearest) to about ``target`` px.

    One channel is drawn grayscale, three as RGB; any other channel count is averaged to grayscale.
    Returns None for something that is not an image.
    """
    from PIL import Image

    data = np.asarray(array, dtype=np.float32)
    if data.ndim == 3 and data.shape[0] not in (1, 3):
        data = data.mean(axis=0, keepdims=True)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[1] == 0 or data.shape[2] == 0:
        return None
    data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=0.0)
    pixels = (np.clip(data, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if pixels.shape[0] == 1:
        image = Image.fromarray(pixels[0])
    else:
        image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))
    height, width = pixels.shape[1:]
    scale = max(1, int(round(target / max(height, width))))
    if scale > 1:
        image = image.resize((width * scale, height * scale), resample=Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
