"""Joint PGD: one loss for the victim and the detector, with its weight searched per image (ADV^2 form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from advbench.api import Attack, Defence, RunContext
from advbench_attacks._util import AdaptiveLinfOptions, BestIterate, batch_salt, project_linf, uniform


def adversarial_label(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The victim's most likely label other than the true one: its label for x' once x' is misclassified, and
    the label it is heading for before (so the mask term and the cross-entropy pull the same way)."""
    return logits.detach().scatter(1, y.view(-1, 1), float("-inf")).argmax(dim=1)


class JointPGD(Attack):
    """Joint-loss PGD against a classifier and its detector, untargeted, l-inf threat model, inputs and outputs in
    [0, 1]. An adaptive attack: it reads the ``Defence``.

    Each step follows the sign of the gradient of ``CE(f1(x'), y) - lambda * D(x')``: the victim's cross-entropy
    against the true label is pushed up and the detector term D pushed down. For a detector that reads an
    interpretation (``defence.explain`` = g and ``defence.mask_classifier`` = f2 given), D is the ADV^2 term of
    Zhang, Wang, Du, Ji, Cheng and Wang, "Interpretable Deep Learning under Fire" (USENIX Security 2020), fitted
    to the contrastive rule: the cross-entropy of f2(g(x')) against the adversarial label, f1's most likely label
    for x' other than y (the mask must show the class the victim predicts once fooled), plus the per-image mean of
    (g(x') - g(x))^2 (the map stays close to the benign one). For any other detector D is the detector's score ``defence.score(x')``.
    ``lambda`` is searched per image as Carlini and Wagner search their constant: ``search_steps`` rounds, each a
    restart of ``steps`` steps from x; after a round, an image that was misclassified but always flagged has
    lambda raised (times 10 until an upper bound is known, then bisected), one never misclassified has it
    lowered (bisected towards 0), one that evaded keeps it. Every step is projected onto the l-inf ball of
    radius ``eps`` around x and onto [0, 1]. Returned per image, over all rounds: the iterate that is
    misclassified and scored at most ``defence.threshold``, the lowest-scored of those; else the lowest-scored
    misclassified iterate; else the last one.

    Options:
        eps: the l-inf budget in [0, 1] input units (default 8/255).
        alpha: the step size in [0, 1] input units (default 1/255).
        steps: steps per round (default 100).
        search_steps: rounds of the search over lambda (default 3).
        initial_lambda: lambda of the first round (default 1.0).
        random_start: start each round from a uniform random point of the eps-ball, drawn from
            ``ctx.generator`` (default False: every round starts at x).
    """

    name = "joint-pgd"
    description = "PGD on CE(f1) + lambda * detector term, ADV^2 form for interpretations (Zhang et al. 2020), l-inf"
    norm = "linf"
    knowledge = "adaptive"
    revision = "1"
    # each round's random start is drawn for the whole batch from one generator salted by the batch's labels: an image's
    # start depends on which images share its batch, so with a random start the batch size is part of the key
    batch_dependent = True

    def depends_on_batch(self) -> bool:
        return bool(self.options.random_start and self.options.eps > 0)

    class Options(AdaptiveLinfOptions):
        steps: int = Field(100, ge=1, le=10_000, description="steps per round of the lambda search")
        search_steps: int = Field(3, ge=1, le=20, description="rounds of the per-image search over lambda")
        initial_lambda: float = Field(1.0, gt=0.0, le=1e6, description="weight of the detector term, first round")
        random_start: bool = Field(False, description="start each round from a uniform random point of the ball")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext,
            defence: Defence) -> torch.Tensor:
        o = self.options
        reads_masks = defence.explain is not None and defence.mask_classifier is not None
        benign_masks = None
        if reads_masks:
            with torch.no_grad():
                benign_masks = defence.explain(x).detach()
        lam = torch.full((len(x),), o.initial_lambda, device=x.device)
        lower = torch.zeros_like(lam)
        upper = torch.full_like(lam, float("inf"))
        best = BestIterate(x)
        for round_ in range(o.search_steps):
            adv = x.clone()
            if o.random_start and o.eps > 0:
                gen = ctx.generator("attack", self.name, "random_start", round_, *batch_salt(y))
                adv = project_linf(adv + uniform(x.shape, -o.eps, o.eps, gen, x.device, x.dtype), x, o.eps)
            fooled = torch.zeros_like(y, dtype=torch.bool)
            evaded = torch.zeros_like(fooled)
            with torch.enable_grad():
                for step in range(o.steps + 1):
                    adv.requires_grad_(True)
                    logits = model(adv)
                    misclassified = logits.argmax(dim=1) != y
                    if reads_masks:
                        term = self._adv2_term(defence, adv, adversarial_label(logits, y), benign_masks)
                        with torch.no_grad():
                            score = defence.score(adv)
                    else:
                        term = score = defence.score(adv)
                    best.update(adv, misclassified, score, defence.threshold)
                    fooled |= misclassified
                    evaded |= misclassified & (score.detach() <= defence.threshold)
                    if step == o.steps:
                        break
                    loss = (F.cross_entropy(logits, y, reduction="none") - lam * term).sum()
                    (grad,) = torch.autograd.grad(loss, adv)
                    adv = project_linf(adv.detach() + o.alpha * grad.sign(), x, o.eps)
            # flagged although misclassified: the detector term needs more weight; never misclassified: less
            lower = torch.where(fooled & ~evaded, lam, lower)
            upper = torch.where(~fooled, lam, upper)
            searched = torch.where(torch.isinf(upper), lam * 10, (lower + upper) / 2)
            lam = torch.where(evaded, lam, searched)
        return best.x

    @staticmethod
    def _adv2_term(defence: Defence, adv: torch.Tensor, label: torch.Tensor,
                   benign_masks: torch.Tensor) -> torch.Tensor:
        """Per image: CE(f2(g(x')), the adversarial label) + mean (g(x') - g(x))^2."""
        masks = defence.explain(adv)
        agree = F.cross_entropy(defence.mask_classifier(masks).float(), label, reduction="none")
        return agree + (masks - benign_masks).pow(2).flatten(1).mean(dim=1)
