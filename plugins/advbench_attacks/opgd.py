"""Orthogonal Projected Gradient Descent: an adaptive attack on a classifier and its detector at once."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from advbench.api import Attack, Defence, RunContext
from advbench_attacks._util import AdaptiveLinfOptions, BestIterate, batch_salt, project_linf, uniform


def orthogonal(g: torch.Tensor, other: torch.Tensor, only_against: bool = False) -> torch.Tensor:
    """Each image's ``g`` minus its component along ``other``: a step along the result leaves the quantity whose
    gradient is ``other`` unchanged to first order. ``only_against``: the component is removed only where it
    points against ``other`` (where a step along ``g`` would lower that quantity)."""
    g_flat, o_flat = g.flatten(1), other.flatten(1)
    dot = (g_flat * o_flat).sum(1)
    if only_against:
        dot = dot.clamp(max=0.0)
    along = dot / (o_flat * o_flat).sum(1).clamp_min(1e-30)
    return (g_flat - along[:, None] * o_flat).view_as(g)


class OPGD(Attack):
    """Orthogonal Projected Gradient Descent (Bryniarski, Hingun, Pachuca, Wang and Carlini, "Evading Adversarial
    Example Detection Defenses with Orthogonal Projected Gradient Descent", ICLR 2022), untargeted, l-inf threat
    model, inputs and outputs in [0, 1]. An adaptive attack: it reads the ``Defence`` (the detector's
    differentiable score ``defence.score`` and its threshold at the defence's false-positive rate).

    Each step takes both gradients, of the victim's cross-entropy (pushed up) and of the detector's score (pushed
    down). While an image is still classified correctly it steps along the sign of the cross-entropy gradient;
    once misclassified it steps to lower the detector score along that score's gradient projected orthogonal to
    the cross-entropy gradient, so the step does not undo the misclassification to first order. The paper's full
    form also projects the classifier step orthogonal to the detector's gradient (``project_classifier``).
    ``projection: on-conflict`` removes a gradient's component along the other one only where it works against
    it (the detector step would raise the victim's confidence in y, the classifier step would raise the score):
    the first-order promise is the same, and a component the two attacks share is kept. That matters where they
    agree, as for the contrastive detector, whose f2(g(x)) must follow f1 to the same wrong label: on 8x8 digits
    (tests/test_adaptive.py: LAN masked images, eps 0.15, step 0.01, 40 steps, 64 images) the share misclassified
    and not flagged at 5% FPR was 0.31 with ``orthogonal`` and 0.48 with ``on-conflict``, against 0.25 for
    oblivious PGD. Each step is projected onto the l-inf ball of radius ``eps`` around x and onto [0, 1].
    Returned per image: the iterate (the start and every step's result) that is misclassified and scored at most
    the threshold, the lowest-scored of those; else the lowest-scored misclassified iterate; else the last one.
    As in the authors' code the attack starts at x itself; ``random_start`` starts from a uniform point of the
    ball instead, drawn from ``ctx.generator``.

    Options:
        eps: the l-inf budget in [0, 1] input units (default 8/255, as in the paper).
        alpha: the step size in [0, 1] input units (default 1/255, as in the paper).
        steps: the number of steps (default 100, as in the paper).
        random_start: start from a uniform random point of the eps-ball (default False, as in the paper).
        project_classifier: also project the classifier step orthogonal to the detector gradient (default False).
        projection: "orthogonal" (default, the paper's) removes the whole component along the other gradient,
            "on-conflict" only a component that works against it.
    """

    name = "opgd"
    description = "Orthogonal PGD on victim and detector (Bryniarski et al. 2022), adaptive, l-inf"
    norm = "linf"
    knowledge = "adaptive"
    revision = "1"
    # the random start is drawn for the whole batch from one generator salted by the batch's labels: an image's
    # start depends on which images share its batch, so with a random start the batch size is part of the key
    batch_dependent = True

    def depends_on_batch(self) -> bool:
        return bool(self.options.random_start and self.options.eps > 0)

    class Options(AdaptiveLinfOptions):
        steps: int = Field(100, ge=1, le=10_000, description="number of steps")
        random_start: bool = Field(False, description="start from a uniform random point of the eps-ball")
        project_classifier: bool = Field(False, description="also project the classifier step orthogonal to the "
                                                            "detector gradient (the paper's full form)")
        projection: Literal["orthogonal", "on-conflict"] = Field(
            "orthogonal", description="remove the whole component along the other gradient (the paper's), or only "
                                      "one that works against it")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext,
            defence: Defence) -> torch.Tensor:
        o = self.options
        adv = x.clone()
        if o.random_start and o.eps > 0:
            gen = ctx.generator("attack", self.name, "random_start", *batch_salt(y))
            adv = project_linf(adv + uniform(x.shape, -o.eps, o.eps, gen, x.device, x.dtype), x, o.eps)
        best = BestIterate(x)
        with torch.enable_grad():
            for step in range(o.steps + 1):
                adv.requires_grad_(True)
                logits = model(adv)
                score = defence.score(adv)
                misclassified = logits.argmax(dim=1) != y
                best.update(adv, misclassified, score, defence.threshold)
                if step == o.steps:
                    break
                # two graphs that share only adv: neither backward needs the other's graph kept
                (g_class,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), adv)
                if score.requires_grad:
                    (g_detect,) = torch.autograd.grad(score.sum(), adv)
                else:  # a score without a path to x (a constant on this batch): only the classifier steers
                    g_detect = torch.zeros_like(adv)
                # the directions the attack moves in: up the cross-entropy, down the score
                only_against = o.projection == "on-conflict"
                towards_error = orthogonal(g_class, -g_detect, only_against) if o.project_classifier else g_class
                away_from_detector = orthogonal(-g_detect, g_class, only_against)
                direction = torch.where(misclassified.view(-1, 1, 1, 1), away_from_detector, towards_error)
                adv = project_linf(adv.detach() + o.alpha * direction.sign(), x, o.eps)
        return best.x
