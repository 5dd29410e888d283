"""Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman 2014)."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn

from advbench import api
from advbench_interpreters._common import (channel_max, exact_map_surrogate_gradient, input_gradient,
                                           normalize_per_sample, predicted_labels)


class GradientSaliency(api.Interpreter):
    """Vanilla saliency of Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps" (ICLR workshop 2014).

    The mask is ``|d logit_c / dx|`` for the victim's own predicted label ``c = argmax f1(x)``, reduced to one
    channel by the maximum over colour channels (as in the paper), so masks are N x 1 x H x W. Each sample's
    map is then scaled into [0, 1] on its own: values above its ``percentile``-th percentile are clipped to it
    and the map is divided by that value (default 99, SmoothGrad's visualization recipe: robust to the few
    extreme pixels a raw gradient often has); ``percentile: 100`` divides by the plain maximum.
    No training, no randomness.

    How an adaptive attacker differentiates it (``ctx.differentiable``): the value is the exact map above; its
    gradient w.r.t. x is, by double backprop, that of the same map on the victim with every ``nn.ReLU`` module
    replaced by a softplus of sharpness ``_common.SURROGATE_BETA`` (Dombrowski et al., NeurIPS 2019). A ReLU
    victim's own map is piecewise constant in x (zero gradient almost everywhere: gradient masking);
    ``F.relu`` called in a victim's ``forward`` cannot be swapped and stays piecewise linear.
    """

    name = "gradient"
    description = "Vanilla gradient saliency |d logit_pred / dx| (Simonyan et al. 2014), channel max, 1 channel"
    revision = "1"

    class Options(api.Options):
        percentile: float = Field(99.0, ge=50.0, le=100.0,
                                  description="per-sample clip percentile before scaling to [0, 1]; 100 = max")

    def explain(self, state: Optional[nn.Module], victim: nn.Module, x: torch.Tensor,
                ctx: api.RunContext) -> torch.Tensor:
        labels = predicted_labels(victim, x)

        def saliency(inputs: torch.Tensor, differentiable: bool) -> torch.Tensor:
            grad = input_gradient(victim, inputs, labels, create_graph=differentiable)
            return normalize_per_sample(channel_max(grad.abs()), self.options.percentile)

        return exact_map_surrogate_gradient(saliency, victim, x, ctx)
