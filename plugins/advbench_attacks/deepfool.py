"""DeepFool l2, through foolbox 3."""

from __future__ import annotations

import foolbox as fb
import torch
from pydantic import Field
from torch import nn

from advbench.api import Attack, Options, RunContext


class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep
    neural networks", CVPR 2016), untargeted, l2 threat model, run through foolbox 3's ``L2DeepFoolAttack``
    (batched) on ``fb.PyTorchModel(model, bounds=(0, 1))``; iterates are clipped to the input range [0, 1].

    Each step linearises the logit differences to the ``candidates`` most likely classes and moves to the
    nearest linearised boundary; the total perturbation is scaled by ``1 + overshoot``. Images already
    misclassified stop moving. Points not fooled within ``steps`` come back as the last iterate.

    Options:
        steps: the maximum number of steps (default 50, as foolbox and the paper's implementation).
        overshoot: the overshoot factor (default 0.02, as in the paper).
        candidates: how many of the most likely classes to consider (default 10).
    """

    name = "deepfool"
    description = "DeepFool l2 (Moosavi-Dezfooli et al. 2016), via foolbox"
    norm = "l2"
    revision = "1"

    class Options(Options):
        steps: int = Field(50, ge=1, le=10_000, description="maximum number of steps")
        overshoot: float = Field(0.02, ge=0.0, le=10.0, description="overshoot factor")
        candidates: int = Field(10, ge=2, le=100_000, description="number of most likely classes considered")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        o = self.options
        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=ctx.device)
        attack = fb.attacks.L2DeepFoolAttack(steps=o.steps, candidates=o.candidates, overshoot=o.overshoot,
                                             loss="logits")
        raw, _, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
        return raw
