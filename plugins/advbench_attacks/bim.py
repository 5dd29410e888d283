"""BIM (iterative FGSM), through torchattacks."""

from __future__ import annotations

import torch
import torchattacks
from pydantic import Field
from torch import nn

from advbench.api import Attack, Options, RunContext


class BIM(Attack):
    """Basic Iterative Method (Kurakin, Goodfellow & Bengio, "Adversarial Examples in the Physical World",
    2016), untargeted, l-inf threat model, run through ``torchattacks.BIM``.

    ``steps`` steps of size ``alpha`` along the sign of the cross-entropy gradient, each followed by a
    projection onto the l-inf ball of radius ``eps`` around x and onto the input range [0, 1]. No random start.

    Options:
        eps: the l-inf budget in [0, 1] input units (default 8/255).
        alpha: the step size in [0, 1] input units (default 2/255).
        steps: the number of steps (default 10); 0 picks the paper's rule
            ``int(min(eps*255 + 4, 1.25*eps*255))``.
    """

    name = "bim"
    aliases = ("i-fgsm",)
    description = "Basic Iterative Method / iterative FGSM (Kurakin et al. 2016), l-inf"
    norm = "linf"
    revision = "1"

    class Options(Options):
        eps: float = Field(8 / 255, ge=0.0, le=1.0, description="l-inf budget, in [0, 1] input units")
        alpha: float = Field(2 / 255, gt=0.0, le=1.0, description="step size, in [0, 1] input units")
        steps: int = Field(10, ge=0, le=10_000, description="number of steps (0: the paper's rule)")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        o = self.options
        attack = torchattacks.BIM(model, eps=o.eps, alpha=o.alpha, steps=o.steps)
        attack.set_device(ctx.device)
        return attack(x, y)
