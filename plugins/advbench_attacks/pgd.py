"""PGD with a random start (own implementation: the random start draws from the run's private generator)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from advbench.api import Attack, Options, RunContext
from advbench_attacks._util import batch_salt, uniform


class PGD(Attack):
    """Projected Gradient Descent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018), untargeted or targeted, l-inf threat model.

    Starts (optionally) from a uniform random point of the l-inf ball of radius ``eps`` around x, then takes
    ``steps`` steps of size ``alpha`` along the sign of the cross-entropy gradient, each followed by a
    projection onto the ball and onto the input range [0, 1]. The same algorithm as ``torchattacks.PGD``,
    but the random start comes from ``ctx.generator`` (torchattacks draws it from the global RNG). Under a
    targeted threat model (``ctx.threat.targeted``) ``y`` holds the targets and the steps descend the
    cross-entropy toward them instead of ascending it away from the true labels.

    Options:
        eps: the l-inf budget in [0, 1] input units (default 8/255).
        alpha: the step size in [0, 1] input units (default 2/255).
        steps: the number of steps (default 10).
        random_start: start from a uniform random point in the eps-ball (default True).
    """

    name = "pgd"
    description = "Projected Gradient Descent with random start (Madry et al. 2018), l-inf"
    norm = "linf"
    supports_targeted = True
    revision = "1"
    # the random start is drawn for the whole batch from one generator salted by the batch's labels: an image's
    # start depends on which images share its batch, so with a random start the batch size is part of the key
    batch_dependent = True

    def depends_on_batch(self) -> bool:
        return bool(self.options.random_start and self.options.eps > 0)

    class Options(Options):
        eps: float = Field(8 / 255, ge=0.0, le=1.0, description="l-inf budget, in [0, 1] input units")
        alpha: float = Field(2 / 255, gt=0.0, le=1.0, description="step size, in [0, 1] input units")
        steps: int = Field(10, ge=1, le=10_000, description="number of steps")
        random_start: bool = Field(True, description="start from a uniform random point of the eps-ball")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        o = self.options
        direction = -1.0 if ctx.threat is not None and ctx.threat.targeted else 1.0  # toward y, or away from it
        adv = x.clone()
        if o.random_start and o.eps > 0:
            gen = ctx.generator("attack", self.name, "random_start", *batch_salt(y))
            adv = (adv + uniform(x.shape, -o.eps, o.eps, gen, x.device, x.dtype)).clamp_(0.0, 1.0)
        with torch.enable_grad():
            for _ in range(o.steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), y)
                (grad,) = torch.autograd.grad(loss, adv)
                adv = adv.detach() + direction * o.alpha * grad.sign()
                adv = torch.min(torch.max(adv, x - o.eps), x + o.eps).clamp_(0.0, 1.0)
        return adv.detach()
