"""Small helpers shared by the built-in attacks (no plugin classes here)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from advbench.api import Options


class AdaptiveLinfOptions(Options):
    """The l-inf budget and step size the adaptive attacks share (Bryniarski et al.'s defaults: 8/255, 1/255)."""

    eps: float = Field(8 / 255, ge=0.0, le=1.0, description="l-inf budget, in [0, 1] input units")
    alpha: float = Field(1 / 255, gt=0.0, le=1.0, description="step size, in [0, 1] input units")


def batch_salt(y: torch.Tensor) -> tuple[Any, ...]:
    """A salt that tells batches apart for ``ctx.generator``: the batch's labels (device independent)."""
    return (len(y), tuple(int(v) for v in y.tolist()))


def uniform(shape: torch.Size, low: float, high: float, generator: torch.Generator,
            device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(low, high) drawn on the CPU from a private generator, then moved (same numbers on every device)."""
    u = torch.rand(shape, generator=generator, dtype=dtype)
    return (low + (high - low) * u).to(device)


def project_linf(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``adv`` moved into the l-inf ball of radius ``eps`` around ``x`` and into [0, 1]."""
    return torch.min(torch.max(adv, x - eps), x + eps).clamp_(0.0, 1.0)


class BestIterate:
    """Per image, the iterate an adaptive attack returns, chosen on the device (no host sync per step).

    Ranked: misclassified and not flagged (score at most the defence's threshold), then misclassified, then
    neither; within the first two the lowest detector score wins, and among images never misclassified the
    latest iterate is kept.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.detach().clone()
        self.rank = torch.full((len(x),), -1, dtype=torch.int64, device=x.device)
        self.score = torch.full((len(x),), float("inf"), device=x.device)

    def update(self, adv: torch.Tensor, misclassified: torch.Tensor, score: torch.Tensor, threshold: float) -> None:
        score = score.detach().float()
        rank = misclassified.long() + (misclassified & (score <= threshold)).long()
        better = (rank > self.rank) | ((rank == self.rank) & ((rank == 0) | (score < self.score)))
        self.x = torch.where(better.view(-1, *([1] * (adv.dim() - 1))), adv.detach(), self.x)
        self.rank = torch.where(better, rank, self.rank)
        self.score = torch.where(better, score, self.score)
