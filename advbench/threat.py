"""The attack template: what the harness does around every attack's ``run`` (see ``advbench.api.Attack``).

``run_attack`` is the final call every attack goes through (foolbox 3's shape): the batch goes to the device
once, the plugin's ``run`` crafts, and the template enforces the threat model on what comes back, the same way
for every attack: into [0, 1] and the norm ball, onto the data's intensity grid, success judged on the image
an attacker would actually submit. ``project``, ``quantize`` and ``norms`` are the pure steps it is made of.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from torch import nn

from advbench.api import AttackResult, RunContext, ThreatModel
from advbench.boundary import check_adversarial
from advbench.errors import AdvbenchError

# Part of every attack's cache key: bump it when a change here changes the stored adversarial images.
TEMPLATE_REVISION = "1"
NORMS = ("linf", "l2", "l0")
# (adv - x) * levels is a whole number of grid steps up to float noise; noise this small is not a step
GRID_SLACK = 1e-4
# a quantised image this far past eps (linf, l2) is float rounding, not an image out of the ball
BALL_SLACK = 1e-6
# without a grid, an element counts as changed (l0) when it moved more than this
L0_THRESHOLD = 1e-6


def run_attack(attack: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext,
               threat: ThreatModel, defence: Optional[Any] = None) -> AttackResult:
    """Run ``attack`` on one batch under ``threat`` and return the submitted images, success and norms (CPU).

    ``y`` holds the true labels, or the target labels when ``threat.targeted``. The plugin's ``run`` gets
    detached, contiguous copies on ``ctx.device`` and a context whose ``threat`` is set; it runs with gradients
    enabled. An adaptive attack also gets ``defence``, which it must have.
    """
    x = x.detach().to(ctx.device).contiguous()
    y = y.detach().to(ctx.device).long().contiguous()
    arguments: tuple[Any, ...] = (model, x.clone(), y.clone(), dataclasses.replace(ctx, threat=threat))
    if attack.knowledge == "adaptive":
        if defence is None:
            raise AdvbenchError(f"attack {attack.name!r} is adaptive: it needs the defence it attacks, and none "
                                "was given")
        arguments += (defence,)
    with torch.enable_grad():
        raw = attack.run(*arguments)
    raw = check_adversarial(_identity(attack), raw, x).detach().to(x.dtype)
    projected = project(raw, x, threat.norm, threat.eps)
    final = projected
    if threat.quantize and threat.levels:
        final = quantize(projected, x, threat.levels, threat.norm, threat.eps)
    with torch.no_grad():
        success = _succeeds(model(final), y, threat.targeted)
        unquantized = success if final is projected else _succeeds(model(projected), y, threat.targeted)
    return AttackResult(adversarial=final.cpu(), success=success.cpu(), success_unquantized=unquantized.cpu(),
                        norms={name: value.cpu() for name, value in norms(final, x, threat.levels).items()})


def project(adv: torch.Tensor, x: torch.Tensor, norm: str, eps: Optional[float]) -> torch.Tensor:
    """``adv`` moved into [0, 1] and then into the ``norm`` ball of radius ``eps`` around ``x`` (in [0, 1]).

    linf clamps each element to x +- eps; l2 shrinks an image's perturbation to length eps where it is longer;
    l0 keeps an image's ``int(eps)`` largest changes and resets the other elements to x. Both steps keep the
    image inside [0, 1], since x is. ``eps`` None: no ball, only [0, 1]. Elements already inside are unchanged.
    """
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r}; allowed: {', '.join(NORMS)}")
    adv = adv.clamp(0.0, 1.0)
    if eps is None:
        return adv
    if norm == "linf":
        return torch.min(torch.max(adv, x - eps), x + eps)
    delta = (adv - x).flatten(1)
    if norm == "l2":
        length = delta.norm(dim=1, keepdim=True)
        outside = length > eps
        shrunk = x.flatten(1) + delta * (eps / length.clamp_min(1e-12))
        return torch.where(outside, shrunk, adv.flatten(1)).clamp(0.0, 1.0).view_as(x)
    k = min(int(eps), delta.shape[1])
    keep = torch.zeros_like(delta, dtype=torch.bool)
    keep.scatter_(1, delta.abs().topk(k, dim=1).indices, True)
    return torch.where(keep, adv.flatten(1), x.flatten(1)).view_as(x)


def quantize(adv: torch.Tensor, x: torch.Tensor, levels: int, norm: str, eps: Optional[float]) -> torch.Tensor:
    """``adv`` rounded onto the grid of multiples of ``1 / levels``, an image an attacker can save and submit.

    Rounding can take an image out of the ball (an l2 perturbation grows; a linf budget between two grid steps
    is exceeded). For such an image each element's change is truncated toward x to whole grid steps instead:
    no element moves further from x than before, so no lp norm grows, and the image stays on the grid when x
    is on it. ``adv`` must already lie in [0, 1] and in the ball (``project``).
    """
    rounded = torch.round(adv * levels) / levels
    if eps is None:
        return rounded
    slack = 0.5 if norm == "l0" else BALL_SLACK
    outside = norms(rounded, x, levels)[norm] > eps + slack
    steps = (adv - x) * levels
    truncated = x + torch.sign(steps) * torch.floor(steps.abs() + GRID_SLACK) / levels
    snapped = torch.round(truncated * levels) / levels  # x on the grid: remove float noise of the addition
    truncated = torch.where((snapped - truncated).abs() <= GRID_SLACK / levels, snapped, truncated)
    return torch.where(outside.view(-1, *[1] * (x.dim() - 1)), truncated.clamp(0.0, 1.0), rounded)


def norms(adv: torch.Tensor, x: torch.Tensor, levels: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Per-image distances of ``adv`` to ``x``: "linf", "l2" and "l0" (float tensors of length N).

    l0 counts the input elements (C x H x W) that moved more than half a grid step (``0.5 / levels``), or
    more than ``L0_THRESHOLD`` for data without a grid: float noise is not a change an image could show.
    """
    delta = (adv - x).flatten(1).float()
    threshold = 0.5 / levels if levels else L0_THRESHOLD
    return {"linf": delta.abs().amax(dim=1), "l2": delta.norm(dim=1),
            "l0": (delta.abs() > threshold).sum(dim=1).float()}


def l0_unit(levels: Optional[int]) -> str:
    """What a recorded l0 norm counts (results.json ``l0_unit``)."""
    if levels:
        return f"input elements (C x H x W) changed by more than half a grid step (0.5/{levels})"
    return f"input elements (C x H x W) changed by more than {L0_THRESHOLD:g}"


def _succeeds(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Untargeted: the victim's label is not y; targeted: it is y (the target)."""
    predicted = logits.argmax(dim=1)
    return predicted == y if targeted else predicted != y


def _identity(attack: Any) -> dict[str, str]:
    """The attack as boundary errors name it: its registration's distribution and version where it has one."""
    from advbench import plugins

    identity = {"kind": "attack", "name": attack.name or type(attack).__name__}
    try:
        reg = plugins.registry()["attack"].get(attack.name)
    except Exception:  # noqa: BLE001 - naming the plugin must never hide the error being reported
        reg = None
    if reg is not None and reg.loaded and reg.cls is type(attack):
        identity.update(distribution=reg.distribution, version=reg.version)
    return identity
