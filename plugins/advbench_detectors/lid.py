"""Local intrinsic dimensionality of each layer's activations (Ma et al. 2018)."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn

from advbench.api import Detector, DetectorEnv, DetectorOutput, Options, RunContext
from advbench_detectors._features import (ACTIVATIONS, DeviceCache, capture, differentiable_adversarial,
                                          fit_logistic, last_linear, map_batches, predict_adversarial,
                                          require_fitted, subsample)


class LidOptions(Options):
    k: int = Field(20, ge=2, le=1000, description="nearest neighbours in the LID estimate (Ma et al.: 20 for CIFAR-10)")
    minibatch: int = Field(100, ge=3, le=100_000, description="benign reference images drawn from the training data "
                                                              "(Ma et al.'s minibatch: 100)")
    max_layers: int = Field(10, ge=1, le=1000, description="keep the deepest this many hooked layers")
    c: float = Field(1.0, gt=0, le=1e6, description="inverse L2 regularization of the logistic regression")


def lid_mle(distances: torch.Tensor, k: int) -> torch.Tensor:
    """Maximum-likelihood LID from each row's ``k`` smallest distances: -(1/k sum_i log(r_i / r_k))^-1."""
    r = distances.topk(k, dim=1, largest=False).values.clamp_min(1e-12)  # ascending
    log_ratio = torch.log(r / r[:, -1:]).sum(dim=1)  # <= 0
    return k / (-log_ratio).clamp_min(1e-12)


class Lid(DeviceCache, Detector):
    """Local intrinsic dimensionality (Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle and Bailey
    2018, "Characterizing Adversarial Subspaces Using Local Intrinsic Dimensionality").

    Layers: the outputs of every activation module (``nn.ReLU`` and the like) and of the final ``nn.Linear``
    (the logits), in call order, of which the deepest ``max_layers`` are kept. At each such layer the input's
    LID is the maximum-likelihood estimate from its ``k`` nearest neighbours (Euclidean) among a benign
    reference minibatch of ``minibatch`` training images (``env.train_x``), drawn once at fit time with the
    run's seeded generator. (Ma et al. redraw the reference per minibatch of the evaluated data; a fixed
    reference makes an input's score independent of how the harness batches it.)
    Logistic regression on the standardized per-layer LID vector, fitted on the held-out benign vs
    adversarial inputs given to ``fit``; score = P(adversarial), flag = score > 0.5.

    Adaptive attacks (``adaptive_gradient = "exact"``): with the reference minibatch fixed at fit time, each
    layer's LID is a differentiable function of x almost everywhere (the k nearest neighbours are chosen by a
    piecewise-constant selection, the distances to them are smooth), and so is the logistic regression on top;
    ``attack_score`` keeps the graph through all of it.
    """

    name = "lid"
    description = "Ma et al. 2018: per-layer local intrinsic dimensionality, logistic regression"
    revision = "1"
    Options = LidOptions
    needs_adversarial_fit = True
    adaptive_gradient = "exact"
    attack_revision = "2"  # 2: the logistic regression passes the logit's gradient (the sigmoid's vanished)

    def __init__(self, options: Optional[Options] = None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self._reference: Optional[list[torch.Tensor]] = None
        self._model = None

    @staticmethod
    def _hooked(victim: nn.Module) -> list[nn.Module]:
        return [m for m in victim.modules() if isinstance(m, ACTIVATIONS)] + [last_linear(victim)]

    def _activations(self, victim: nn.Module, x: torch.Tensor, keep_graph: bool = False) -> list[torch.Tensor]:
        with capture(self._hooked(victim)) as store:
            victim(x)
        kept = store[-self.options.max_layers:]
        return kept if keep_graph else [a.detach() for a in kept]

    def _lids(self, victim: nn.Module, x: torch.Tensor, keep_graph: bool = False) -> torch.Tensor:
        acts = self._activations(victim, x, keep_graph)
        if len(acts) != len(self._reference):
            raise RuntimeError(f"lid: the victim produced {len(acts)} hooked layers, {len(self._reference)} at fit")
        k = min(self.options.k, len(self._reference[0]))
        # float64 kept: cdist on wide layers (tens of thousands of features) goes through |a|^2 + |b|^2 - 2ab, which
        # in float32 cancels for the near neighbours LID is made of, and the estimate is a log of their ratios
        # (float32 measured 3e-5 off on 8x8 digits, where layers are narrow; wider layers would be worse)
        columns = [lid_mle(torch.cdist(a.double(), self.on_device(f"layer {i}", ref, a.device).double()), k)
                   for i, (a, ref) in enumerate(zip(acts, self._reference))]
        return torch.stack(columns, dim=1)

    def fit(self, env: DetectorEnv, benign_x: torch.Tensor, adversarial_x: torch.Tensor, ctx: RunContext) -> None:
        idx = subsample(len(env.train_x), self.options.minibatch, ctx.generator("lid", "reference"))
        if len(idx) < 2:
            raise ValueError("lid needs at least 2 training images for its reference minibatch")
        with torch.no_grad():
            acts = [[a.float().cpu() for a in self._activations(env.victim, b)]
                    for (b,) in ctx.batches(env.train_x[idx])]
        self._reference = [torch.cat(parts) for parts in zip(*acts)]
        fb = map_batches(lambda b: self._lids(env.victim, b), benign_x, ctx, "lid: benign LID")
        fa = map_batches(lambda b: self._lids(env.victim, b), adversarial_x, ctx, "lid: adversarial LID")
        self._model = fit_logistic(fb, fa, c=self.options.c)

    def score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> DetectorOutput:
        require_fitted(self, "_model")
        with torch.no_grad():
            features = self._lids(env.victim, x)
        prob = predict_adversarial(self._model, features, x.device)
        return DetectorOutput(score=prob, flag=prob > 0.5)

    def attack_score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        require_fitted(self, "_model")
        return differentiable_adversarial(self._model, self._lids(env.victim, x, keep_graph=True))
