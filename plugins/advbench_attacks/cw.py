"""Carlini & Wagner l2, through foolbox 3."""

from __future__ import annotations

import foolbox as fb
import torch
from pydantic import Field
from torch import nn

from advbench.api import Attack, Options, RunContext


class CarliniWagnerL2(Attack):
    """Carlini & Wagner l2 attack (Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks",
    IEEE S&P 2017), untargeted, l2 threat model, run through foolbox 3's ``L2CarliniWagnerAttack`` on
    ``fb.PyTorchModel(model, bounds=(0, 1))`` (input range [0, 1]; the tanh change of variables keeps every
    iterate inside it).

    Minimises ``||delta||_2^2 + c * max(Z_y - max_{j != y} Z_j + confidence, 0)`` on the logits Z with Adam,
    with a binary search over the constant c (per image: multiplied by 10 until an adversarial is found, then
    bisected). Returns the smallest adversarial found. Where no constant gave an adversarial, foolbox returns
    an all-zero image; this plugin returns the unchanged input there instead, so a black image that happens
    to be misclassified is not counted as a success.

    Options:
        binary_search_steps: steps of the search over c (default 5; foolbox's default is 9).
        steps: Adam steps per value of c (default 100; foolbox's default is 10000).
        stepsize: Adam's learning rate (default 0.01, as foolbox).
        confidence: the logit margin kappa an adversarial must reach (default 0, as foolbox).
        initial_const: the first c (default 1e-2; foolbox uses 1e-3 with 9 search steps, one decade higher
            here so that 5 steps still reach c = 100).
        abort_early: stop Adam for a value of c when the loss stops decreasing (default True, as foolbox).
    """

    name = "cw"
    aliases = ("cw-l2", "carlini-wagner")
    description = "Carlini & Wagner l2 attack with binary search over c (Carlini & Wagner 2017), via foolbox"
    norm = "l2"
    revision = "1"
    # foolbox's early abort compares the loss summed over the whole batch: when Adam stops for one value of c
    # depends on the other images of the batch (the binary search itself is per image)
    batch_dependent = True

    def depends_on_batch(self) -> bool:
        return self.options.abort_early

    class Options(Options):
        binary_search_steps: int = Field(5, ge=1, le=20, description="steps of the binary search over c")
        steps: int = Field(100, ge=1, le=100_000, description="Adam steps per value of c")
        stepsize: float = Field(0.01, gt=0.0, le=1.0, description="Adam learning rate")
        confidence: float = Field(0.0, ge=0.0, le=100.0, description="required logit margin (kappa)")
        initial_const: float = Field(1e-2, gt=0.0, le=1e4, description="first value of c")
        abort_early: bool = Field(True, description="stop Adam early when the loss stalls")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        o = self.options
        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=ctx.device)
        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=o.binary_search_steps, steps=o.steps, stepsize=o.stepsize,
            confidence=o.confidence, initial_const=o.initial_const, abort_early=o.abort_early)
        raw, _, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
        # foolbox starts its "best adversarial" buffer at zeros; a point never found adversarial keeps them.
        # A real C&W output is never exactly all-zero (tanh space maps into the open interval (0, 1)).
        flat_raw, flat_x = raw.flatten(1), x.flatten(1)
        failed = (flat_raw == 0).all(dim=1) & (flat_x != 0).any(dim=1)
        return torch.where(failed.view(-1, *([1] * (x.dim() - 1))), x, raw)
