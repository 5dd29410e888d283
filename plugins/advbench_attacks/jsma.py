"""JSMA: our own batched implementation of the Jacobian-based Saliency Map Attack."""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from pydantic import Field, field_validator
from torch import nn

from advbench.api import Attack, Options, RunContext
from advbench_attacks._util import batch_salt

# Bound on the pair-score block one search step builds (elements): rows x features x images. With ~6
# temporaries of this size alive at once this keeps a step well under 1 GiB.
PAIR_BLOCK_ELEMENTS = 1 << 24


def _pair_scores(a_rows: torch.Tensor, b_rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                 valid: torch.Tensor) -> torch.Tensor:
    """Scores of the pairs (row, q): ``(a_p + a_q) * -(b_p + b_q)`` where ``a_p + a_q > 0``, ``b_p + b_q < 0``
    and ``valid``; -inf elsewhere. a_rows/b_rows: B x R, a/b: B x n, valid: B x R x n."""
    alpha = a_rows.unsqueeze(2) + a.unsqueeze(1)
    beta = b_rows.unsqueeze(2) + b.unsqueeze(1)
    valid = valid & (alpha > 0) & (beta < 0)
    return torch.where(valid, alpha * beta.neg(), torch.full_like(alpha, -math.inf))


def best_pairs_dense(a: torch.Tensor, b: torch.Tensor, domain: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference search (cleverhans ``jsma_symbolic``): build the full n x n pair map per image.

    a, b: B x n (target-class and other-classes gradients), domain: B x n bool. Returns p, q (B, int64) and
    found (B, bool: some pair satisfies alpha > 0, beta < 0). Memory is B*n*n: use on small inputs/tests.
    """
    n = a.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    valid = domain.unsqueeze(2) & domain.unsqueeze(1) & ~eye
    scores = _pair_scores(a, b, a, b, valid).flatten(1)
    best, idx = scores.max(dim=1)
    return idx // n, idx % n, torch.isfinite(best)


def best_pairs(a: torch.Tensor, b: torch.Tensor, domain: torch.Tensor,
               block_elements: int = PAIR_BLOCK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same maximisation as ``best_pairs_dense`` (same best score), without building the n x n map.

    Branch and bound over the rows p of the pair map. For every valid pair,
    ``0 < a_p + a_q <= a_p + max_dom(a)`` and ``0 < -(b_p + b_q) <= -(b_p + min_dom(b))``, so
    ``U_p = relu(a_p + max a) * relu(-(b_p + min b))`` bounds every score in row p (exactly, also in floating
    point: rounding is monotonic). Rows are visited in decreasing U_p, a block at a time, and an image is done
    as soon as its best score so far is >= the bound of its next unvisited row. The result is the dense
    argmax up to exact ties; memory is bounded by ``block_elements`` per step.
    """
    bsz, n = a.shape
    device = a.device
    neg_inf = torch.tensor(-math.inf, device=device, dtype=a.dtype)
    a_max = torch.where(domain, a, neg_inf).amax(dim=1, keepdim=True)
    b_min = torch.where(domain, b, -neg_inf).amin(dim=1, keepdim=True)
    bound = (a + a_max).clamp_min(0) * (b + b_min).neg().clamp_min(0)
    bound = torch.where(domain, bound, neg_inf)
    bound, order = bound.sort(dim=1, descending=True, stable=True)

    best = torch.full((bsz,), -math.inf, device=device, dtype=a.dtype)
    best_p = torch.zeros(bsz, dtype=torch.long, device=device)
    best_q = torch.zeros(bsz, dtype=torch.long, device=device)
    open_ = torch.ones(bsz, dtype=torch.bool, device=device)
    arange_n = torch.arange(n, device=device)
    start, rows = 0, 1
    while start < n:
        # Closed: the next row's bound cannot beat the best found, or no valid row is left (bound <= 0).
        next_bound = bound[:, start]
        open_ &= (next_bound > best) & (next_bound > 0)
        idx = open_.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        rows = max(1, min(rows, n - start, block_elements // max(1, idx.numel() * n)))
        p = order[idx, start:start + rows]                                   # b x r
        a_i, b_i, dom_i = a[idx], b[idx], domain[idx]
        valid = (dom_i.gather(1, p).unsqueeze(2) & dom_i.unsqueeze(1)
                 & (p.unsqueeze(2) != arange_n.view(1, 1, n)))
        scores = _pair_scores(a_i.gather(1, p), b_i.gather(1, p), a_i, b_i, valid).flatten(1)
        block_best, flat = scores.max(dim=1)
        better = block_best > best[idx]
        upd = idx[better]
        best[upd] = block_best[better]
        best_p[upd] = p[better].gather(1, (flat[better] // n).unsqueeze(1)).squeeze(1)
        best_q[upd] = flat[better] % n
        start += rows
        rows *= 2  # most images close after a few rows; grow the block for the rest
    found = torch.isfinite(best)
    lo, hi = torch.minimum(best_p, best_q), torch.maximum(best_p, best_q)
    return lo, hi, found


class JSMA(Attack):
    """Jacobian-based Saliency Map Attack (Papernot, McDaniel, Jha, Fredrikson, Celik & Swami, "The
    Limitations of Deep Learning in Adversarial Settings", EuroS&P 2016), l0 threat model. Own batched
    implementation of cleverhans' ``jsma_symbolic`` (the pair variant of the paper's Algorithms 2-3).

    Features are the input elements (C*H*W of them, so a colour pixel is three features), in [0, 1].
    JSMA is a targeted attack: under a targeted threat model (``ctx.threat.targeted``) ``y`` holds the targets;
    otherwise, like cleverhans (random target) and torchattacks (next class), it is made untargeted by picking
    a target class t != y per image (``target``). Then, per image and while the
    model's prediction is not t and fewer than ``floor(gamma * n_features / 2)`` iterations were made:
    compute, on the logits Z, the gradient a = dZ_t/dx and b = d(sum_{j != t} Z_j)/dx (two backward passes
    for the whole batch), choose over the search domain the pair p != q maximising
    ``(a_p + a_q) * -(b_p + b_q)`` subject to ``a_p + a_q > 0`` and ``b_p + b_q < 0`` (signs swapped when
    theta < 0), set both features to ``clip(x + theta, 0, 1)`` and remove them from the domain. The domain
    starts as the features that are not already saturated (x < 1 for theta > 0, x > 0 for theta < 0). An
    image stops when it reaches t, when fewer than two features are left, or when no pair meets the sign
    conditions (cleverhans would then modify feature 0; we stop). So at most ``gamma * n_features`` features
    change. The pair search is exact but avoids building the n x n map (see ``best_pairs``).

    Options:
        theta: the change applied to each chosen feature, in [-1, 1] input units, non-zero (default 1.0:
            chosen features are set to 1).
        gamma: the largest share of features that may change, in (0, 1] (default 0.1).
        target: how the target class is chosen: "random" (default; uniform over the classes != y, drawn from
            ``ctx.generator``), "next" ((y + 1) mod K, torchattacks' default) or "least_likely" (the class
            with the lowest logit on the clean input, excluding y).
    """

    name = "jsma"
    description = "Jacobian-based Saliency Map Attack (Papernot et al. 2016), l0, random target; batched"
    norm = "l0"
    supports_targeted = True
    revision = "1"
    # a random target is drawn for the whole batch from one generator salted by the batch's labels: an image's
    # target depends on which images share its batch ("next" and "least_likely" do not)
    batch_dependent = True

    def depends_on_batch(self) -> bool:
        return self.options.target == "random"

    class Options(Options):
        theta: float = Field(1.0, ge=-1.0, le=1.0, description="change applied to each chosen feature")
        gamma: float = Field(0.1, gt=0.0, le=1.0, description="largest share of features that may change")
        target: Literal["random", "next", "least_likely"] = Field(
            "random", description="how the target class is chosen")

        @field_validator("theta")
        @classmethod
        def _nonzero(cls, value: float) -> float:
            if value == 0:
                raise ValueError("theta must be non-zero")
            return value

    def targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext,
                num_classes: Optional[int] = None) -> torch.Tensor:
        """The target class per image, as ``run`` chooses it (public so a benchmark can give a reference the
        same targets)."""
        how = self.options.target
        if how == "least_likely" or num_classes is None:
            with torch.no_grad():
                logits = model(x)
            num_classes = logits.shape[1]
        if how == "next":
            return (y + 1) % num_classes
        if how == "least_likely":
            logits = logits.scatter(1, y.view(-1, 1), math.inf)
            return logits.argmin(dim=1)
        gen = ctx.generator("attack", self.name, "target", *batch_salt(y))
        offset = torch.randint(0, num_classes - 1, (len(y),), generator=gen).to(y.device)
        return (y + 1 + offset) % num_classes

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext,
            target: Optional[torch.Tensor] = None) -> torch.Tensor:
        o = self.options
        if target is None:
            targeted = ctx.threat is not None and ctx.threat.targeted
            target = y if targeted else self.targets(model, x, y, ctx)
        target = target.to(x.device).long()
        bsz = x.shape[0]
        n = x[0].numel()
        max_iters = int(math.floor(n * o.gamma / 2))
        increase = o.theta > 0
        sign = 1.0 if increase else -1.0

        adv = x.reshape(bsz, n).clone()
        domain = adv < 1.0 if increase else adv > 0.0
        active = torch.ones(bsz, dtype=torch.bool, device=x.device)
        rows = torch.arange(bsz, device=x.device)
        # One host sync per iteration: compacting the images still running (``rows[active]``). It stays, since
        # it saves the finished images' forwards and keeps each batch's composition, and so its numerics, as
        # they were. The stopping test reads the size that compaction already knows; a step in which every
        # image reached its target simply finds none left at the next one (no separate ``any()`` sync).
        for _ in range(max_iters):
            active &= domain.sum(dim=1) >= 2
            idx = rows[active]
            if idx.numel() == 0:
                break
            xa = adv[idx].view(-1, *x.shape[1:]).requires_grad_(True)
            with torch.enable_grad():
                logits = model(xa)
                z_t = logits.gather(1, target[idx].view(-1, 1)).sum()
                (g_t,) = torch.autograd.grad(z_t, xa, retain_graph=True)
                (g_all,) = torch.autograd.grad(logits.sum(), xa)
            reached = logits.detach().argmax(dim=1) == target[idx]
            a = g_t.reshape(-1, n)
            b = g_all.reshape(-1, n) - a
            go = ~reached
            p, q, found = best_pairs(sign * a[go], sign * b[go], domain[idx[go]])
            done = idx[go][~found]
            active[idx[reached]] = False
            active[done] = False
            upd = idx[go][found]
            p, q = p[found], q[found]
            adv[upd, p] = (adv[upd, p] + o.theta).clamp(0.0, 1.0)
            adv[upd, q] = (adv[upd, q] + o.theta).clamp(0.0, 1.0)
            domain[upd, p] = False
            domain[upd, q] = False
        return adv.view_as(x).detach()
