"""Integrated Gradients (Sundararajan, Taly & Yan 2017)."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
from pydantic import Field
from torch import nn

from advbench import api
from advbench_interpreters._common import (InterpreterError, channel_max, chunked_gradient,
                                           exact_map_surrogate_gradient, normalize_per_sample, predicted_labels)


class MeanBaseline(nn.Module):
    """The state of ``integrated-gradients`` with ``baseline: mean``: the training set's per-channel mean."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))


class IntegratedGradients(api.Interpreter):
    """Integrated Gradients of Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks" (ICML 2017).

    ``(x - x') * mean_k grad f_c(x' + k/m (x - x'))`` for ``k = 1..m`` (the paper's right Riemann sum,
    ``m = steps``), with ``c = argmax f1(x)`` the victim's own predicted label and ``x'`` the baseline:
    ``black`` (all zeros) or ``mean`` (a constant image of the training set's per-channel mean; ``build`` then
    returns a small module holding it and ``fit`` computes it). The attribution's absolute value is reduced by
    the maximum over channels (masks are N x 1 x H x W) and scaled per sample into [0, 1] like ``gradient``.
    No randomness.

    How an adaptive attacker differentiates it (``ctx.differentiable``): the value is the exact attribution above;
    its gradient w.r.t. x is that of the same attribution on the victim with every ``nn.ReLU`` module replaced by a
    softplus of sharpness ``_common.SURROGATE_BETA`` (Dombrowski et al., NeurIPS 2019), through the factor
    ``x - x'`` and the path and, by double backprop, through the path's gradients (a ReLU victim's own are
    piecewise constant in x). ``F.relu`` called in a victim's ``forward`` cannot be swapped and stays piecewise
    linear.
    """

    name = "integrated-gradients"
    aliases = ("ig",)
    description = "Integrated Gradients from a black or mean baseline (Sundararajan et al. 2017), |attr|, 1 channel"
    revision = "1"

    class Options(api.Options):
        steps: int = Field(16, ge=1, le=1024, description="Riemann steps along the straight path")
        baseline: Literal["black", "mean"] = Field("black", description="zeros, or the training per-channel mean")
        percentile: float = Field(99.0, ge=50.0, le=100.0,
                                  description="per-sample clip percentile before scaling to [0, 1]; 100 = max")

    def build(self, input_shape: Sequence[int], num_classes: int) -> Optional[nn.Module]:
        return MeanBaseline(int(input_shape[0])) if self.options.baseline == "mean" else None

    def fit(self, state: Optional[nn.Module], victim: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
            ctx: api.RunContext) -> None:
        if state is None:
            return
        with torch.no_grad():
            total = torch.zeros(train_x.shape[1], dtype=torch.float64)
            for start in range(0, len(train_x), 4096):
                total += train_x[start:start + 4096].to(torch.float64).sum(dim=(0, 2, 3))
            pixels = len(train_x) * train_x.shape[2] * train_x.shape[3]
            state.mean.copy_((total / max(1, pixels)).to(state.mean.dtype))
            state.fitted.fill_(True)

    def _baseline(self, state: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
        if self.options.baseline == "black":
            return torch.zeros_like(x)
        if state is None or not bool(state.fitted):
            raise InterpreterError("integrated-gradients with baseline 'mean' needs its state fitted on the "
                                   "training set (build() then fit()) before explain()")
        return state.mean.to(x.device, x.dtype).view(1, -1, 1, 1).expand_as(x)

    def explain(self, state: Optional[nn.Module], victim: nn.Module, x: torch.Tensor,
                ctx: api.RunContext) -> torch.Tensor:
        n, m = len(x), self.options.steps
        labels = predicted_labels(victim, x)
        base = self._baseline(state, x)
        alphas = torch.arange(1, m + 1, device=x.device, dtype=x.dtype).div_(m).view(1, m, 1, 1, 1)

        def saliency(inputs: torch.Tensor, differentiable: bool) -> torch.Tensor:
            path = (base.unsqueeze(1) + alphas * (inputs - base).unsqueeze(1)).reshape(n * m, *x.shape[1:])
            grads = chunked_gradient(victim, path, labels.repeat_interleave(m), ctx.batch_size, differentiable)
            attr = (inputs - base) * grads.reshape(n, m, *x.shape[1:]).mean(dim=1)
            return normalize_per_sample(channel_max(attr.abs()), self.options.percentile)

        return exact_map_surrogate_gradient(saliency, victim, x, ctx)
