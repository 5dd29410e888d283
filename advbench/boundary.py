"""Checks on what a plugin hands back, made where the stage functions call it.

A plugin that returns masks of the wrong shape, NaN scores or adversarial images of another size would
otherwise flow into published numbers (or crash a later stage that blames someone else). Each check raises
``PluginOutputError``: one line naming the plugin's kind, name and distribution and what was wrong. The driver
marks that cell failed, keeps it out of the tables, and runs the rest of the grid.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from advbench.errors import AdvbenchError

TOLERANCE = 1e-4  # masks a hair outside [0, 1] from float rounding are clamped, not refused


class PluginOutputError(AdvbenchError):
    """A plugin broke the contract of what it returns (docs/PLUGINS.md)."""


def who(plugin: Optional[dict[str, str]]) -> str:
    if not plugin:
        return "plugin"
    return (f"{plugin.get('kind', 'plugin')} {plugin.get('name')!r} "
            f"({plugin.get('distribution', '?')} {plugin.get('version', '?')})")


def _fail(plugin: Optional[dict[str, str]], what: str) -> None:
    raise PluginOutputError(f"{who(plugin)}: {what}")


def _tensor(plugin: Optional[dict[str, str]], value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        _fail(plugin, f"{what} is a {type(value).__name__}, not a tensor")
    return value


def _finite(plugin: Optional[dict[str, str]], value: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        _fail(plugin, f"{what} holds {int(bad.sum())} NaN or infinite values")


def check_masks(plugin: Optional[dict[str, str]], masks: Any, x: torch.Tensor) -> torch.Tensor:
    """Masks for a batch: N x C' x H x W with C' 1 or C, floating, finite, in [0, 1], on x's device."""
    masks = _tensor(plugin, masks, "explain's output")
    n, c, h, w = x.shape
    if masks.dim() != 4 or masks.shape[0] != n or masks.shape[2:] != (h, w) or masks.shape[1] not in (1, c):
        allowed = " or ".join(dict.fromkeys(f"{n} x {k} x {h} x {w}" for k in (1, c)))
        _fail(plugin, f"explain returned masks of shape {tuple(masks.shape)} for inputs {tuple(x.shape)}; "
                      f"allowed: {allowed}")
    if not masks.is_floating_point():
        _fail(plugin, f"explain returned {masks.dtype} masks; allowed: a floating dtype")
    if masks.device != x.device:
        _fail(plugin, f"explain returned masks on {masks.device} for inputs on {x.device}")
    _finite(plugin, masks, "explain's masks")
    values = masks.detach()  # an adaptive attacker's masks carry a graph; the range check needs none
    if len(masks) and (float(values.min()) < -TOLERANCE or float(values.max()) > 1 + TOLERANCE):
        _fail(plugin, f"explain returned masks in [{float(values.min()):.4g}, {float(values.max()):.4g}]; "
                      "allowed: [0, 1]")
    return masks


def check_adversarial(plugin: Optional[dict[str, str]], adv: Any, x: torch.Tensor) -> torch.Tensor:
    """An attack's output for a batch: x's shape, floating, finite, on x's device."""
    adv = _tensor(plugin, adv, "run's output")
    if adv.shape != x.shape:
        _fail(plugin, f"run returned shape {tuple(adv.shape)} for inputs {tuple(x.shape)}; allowed: the same shape")
    if not adv.is_floating_point():
        _fail(plugin, f"run returned {adv.dtype} images; allowed: a floating dtype")
    if adv.device != x.device:
        _fail(plugin, f"run returned images on {adv.device} for inputs on {x.device}")
    _finite(plugin, adv, "run's images")
    return adv


def check_scores(plugin: Optional[dict[str, str]], out: Any, n: int) -> Any:
    """A detector's output for a batch of n: a 1-D finite float score of length n, a bool flag of n or None."""
    score = _tensor(plugin, getattr(out, "score", None), "score's DetectorOutput.score")
    if score.dim() != 1 or len(score) != n:
        _fail(plugin, f"score returned scores of shape {tuple(score.shape)} for {n} inputs; allowed: ({n},)")
    if not score.is_floating_point():
        _fail(plugin, f"score returned {score.dtype} scores; allowed: a floating dtype")
    _finite(plugin, score, "score's scores")
    flag = getattr(out, "flag", None)
    if flag is not None:
        flag = _tensor(plugin, flag, "score's DetectorOutput.flag")
        if flag.shape != (n,) or flag.dtype != torch.bool:
            _fail(plugin, f"score returned flags of shape {tuple(flag.shape)} and dtype {flag.dtype} for {n} "
                          f"inputs; allowed: ({n},) torch.bool or None")
    return out


def check_logits(plugin: Optional[dict[str, str]], logits: Any, n: int, num_classes: int) -> torch.Tensor:
    """A classifier's output for n inputs: n x num_classes, floating, finite."""
    logits = _tensor(plugin, logits, "the model's output")
    if logits.shape != (n, num_classes):
        _fail(plugin, f"the built model returned shape {tuple(logits.shape)} for {n} inputs; allowed: "
                      f"({n}, {num_classes}) logits")
    if not logits.is_floating_point():
        _fail(plugin, f"the built model returned {logits.dtype} logits; allowed: a floating dtype")
    _finite(plugin, logits, "the model's logits")
    return logits


def check_data(plugin: Optional[dict[str, str]], data: Any) -> Any:
    """A dataset's splits: float32 images in [0, 1], N x C x H x W, int64 labels naming its classes."""
    for split in ("train", "test"):
        x = _tensor(plugin, getattr(data, f"{split}_x", None), f"load's {split}_x")
        y = _tensor(plugin, getattr(data, f"{split}_y", None), f"load's {split}_y")
        if x.dim() != 4 or x.dtype != torch.float32:
            _fail(plugin, f"load returned {split}_x of shape {tuple(x.shape)} and dtype {x.dtype}; allowed: "
                          "N x C x H x W float32")
        if y.shape != (len(x),) or y.dtype != torch.int64:
            _fail(plugin, f"load returned {split}_y of shape {tuple(y.shape)} and dtype {y.dtype} for "
                          f"{len(x)} images; allowed: ({len(x)},) int64")
        if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
            _fail(plugin, f"load returned {split}_x in [{float(x.min()):.4g}, {float(x.max()):.4g}]; allowed: [0, 1]")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(data.classes)):
            _fail(plugin, f"load returned {split}_y outside 0..{len(data.classes) - 1} (its classes)")
    return data
