"""Helpers shared by the built-in interpreters (not a plugin; no class here is registered).

Conventions every interpreter here follows:
- the label explained is the victim's own prediction ``argmax f1(x)``, never the true label (there is none at
  test time, and an adversarial input must be explained as the victim sees it);
- gradients are taken under ``torch.enable_grad()`` so ``explain`` also works when the harness calls it inside
  ``torch.no_grad()`` (``torch.inference_mode()`` cannot be undone and is not supported);
- every sample's mask depends on that sample alone: maps are normalized per sample, and where noise is needed
  each sample gets its own generator, seeded from the run seed and a hash of the sample's bytes, so the mask
  is the same whether the sample is explained alone or inside any batch (see ``sample_generators``).
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch
from torch import nn

from advbench.api import RunContext
from advbench.errors import AdvbenchError


class InterpreterError(AdvbenchError):
    """An interpreter cannot work with the given victim or state (the message says why and what to do)."""


def predicted_labels(victim: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """argmax f1(x): the label every interpreter explains."""
    with torch.no_grad():
        return victim(x).argmax(dim=1)


def input_gradient(victim: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d logit[label] / dx for each sample (the sum over the batch separates: no cross-sample terms)."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = victim(xg)
        score = logits.gather(1, labels.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, xg)
    return grad.detach()


def chunked_gradient(victim: nn.Module, x: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """``input_gradient`` over a large stack of inputs, ``chunk`` rows at a time (bounded memory)."""
    parts = [input_gradient(victim, x[i:i + chunk], labels[i:i + chunk]) for i in range(0, len(x), chunk)]
    return torch.cat(parts) if parts else torch.empty_like(x)


def channel_max(m: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x 1 x H x W, the largest value over channels."""
    return m.amax(dim=1, keepdim=True)


def normalize_per_sample(m: torch.Tensor, percentile: Optional[float] = None) -> torch.Tensor:
    """Scale each sample's non-negative map into [0, 1] on its own.

    With ``percentile`` None the map is divided by its maximum; otherwise values above that percentile of the
    sample are clipped to it before dividing (SmoothGrad's visualization recipe, robust to a few huge pixels).
    An all-zero map stays all zero.
    """
    m = m.float().clamp_min(0)
    flat = m.reshape(len(m), -1)
    if percentile is None or percentile >= 100:
        top = flat.amax(dim=1)
    else:
        top = torch.quantile(flat, percentile / 100.0, dim=1)
    top = top.view(-1, *([1] * (m.dim() - 1)))
    out = torch.where(top > 0, m / top.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))
    return out.clamp(0.0, 1.0)


def sample_digest(sample: torch.Tensor) -> str:
    """A stable hash of one sample's values (float32 bytes, CPU), independent of the batch it came in."""
    data = sample.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:32]


def sample_generators(ctx: RunContext, x: torch.Tensor, *salt: object) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from the run seed, ``salt`` and the sample's content hash.

    Noise drawn from these (then moved to the device) is deterministic for a ctx seed, identical on every
    device, and independent of which other samples share the batch.
    """
    return [ctx.generator(*salt, sample_digest(s)) for s in x]


def per_sample_noise(gens: list[torch.Generator], shape: tuple[int, ...], kind: str,
                     device: torch.device) -> torch.Tensor:
    """Stack one draw of ``shape`` per generator: "normal" (N(0, 1)) or "uniform" (U[0, 1))."""
    draw = torch.randn if kind == "normal" else torch.rand
    return torch.stack([draw(shape, generator=g) for g in gens]).to(device)
