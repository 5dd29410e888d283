"""FGSM, through torchattacks."""

from __future__ import annotations

import torch
import torchattacks
from pydantic import Field
from torch import nn

from advbench.api import Attack, Options, RunContext


class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
    Examples", ICLR 2015), untargeted, l-inf threat model, run through ``torchattacks.FGSM``.

    One step ``x + eps * sign(grad_x CE(f(x), y))``, clipped to the input range [0, 1].

    Options:
        eps: the l-inf budget in [0, 1] input units (default 8/255).
    """

    name = "fgsm"
    description = "Fast Gradient Sign Method (Goodfellow et al. 2015), one l-inf step of size eps"
    norm = "linf"
    revision = "1"

    class Options(Options):
        eps: float = Field(8 / 255, ge=0.0, le=1.0, description="l-inf budget, in [0, 1] input units")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        attack = torchattacks.FGSM(model, eps=self.options.eps)
        attack.set_device(ctx.device)
        return attack(x, y)
