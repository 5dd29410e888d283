"""SmoothGrad (Smilkov et al. 2017)."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn

from advbench import api
from advbench_interpreters._common import (SampleNoise, channel_max, chunked_gradient, exact_map_surrogate_gradient,
                                           normalize_per_sample, predicted_labels)


class SmoothGrad(api.Interpreter):
    """SmoothGrad of Smilkov, Thorat, Kim, Viegas & Wattenberg, "SmoothGrad: removing noise by adding noise"
    (arXiv 1706.03825, 2017).

    The gradient of the logit of the victim's own predicted label ``c = argmax f1(x)`` (taken on the clean x) is
    averaged over ``n_samples`` copies ``x + N(0, sigma^2)`` with ``sigma = noise_level * (max(x) - min(x))``
    per sample, as the paper defines the noise level; the noisy copies are not clipped to [0, 1]. As in the
    authors' reference code, the absolute value is taken after averaging, then the maximum over channels
    (masks are N x 1 x H x W), then the per-sample percentile clip and scaling of ``gradient``.

    The noise comes from a generator per sample seeded by the run seed and the sample's content, so masks are
    deterministic for a seed and do not depend on the rest of the batch (on CUDA it is drawn on the device,
    counter-based: other numbers than on the CPU, see ``_common.SampleNoise``).

    How an adaptive attacker differentiates it (``ctx.differentiable``): the noise is held fixed (its sigma still
    follows x); the value is the exact map above, and its gradient w.r.t. x is, by double backprop, that of the
    same map on the victim with every ``nn.ReLU`` module replaced by a softplus of sharpness
    ``_common.SURROGATE_BETA`` (Dombrowski et al., NeurIPS 2019): a ReLU victim's own gradients are piecewise
    constant in x, so their average would give the attacker nothing. ``F.relu`` called in a victim's ``forward``
    cannot be swapped and stays piecewise linear.
    """

    name = "smoothgrad"
    description = "SmoothGrad: gradient saliency averaged over Gaussian-noised copies (Smilkov et al. 2017), 1 channel"
    revision = "1"

    class Options(api.Options):
        n_samples: int = Field(16, ge=1, le=1024, description="noisy copies per input")
        noise_level: float = Field(0.15, ge=0.0, le=1.0, description="sigma as a fraction of the input's range")
        percentile: float = Field(99.0, ge=50.0, le=100.0,
                                  description="per-sample clip percentile before scaling to [0, 1]; 100 = max")

    def explain(self, state: Optional[nn.Module], victim: nn.Module, x: torch.Tensor,
                ctx: api.RunContext) -> torch.Tensor:
        opt = self.options
        n, s = len(x), opt.n_samples
        labels = predicted_labels(victim, x)
        noise = SampleNoise(ctx, x, "smoothgrad").draw((s, *x.shape[1:]), "normal")  # N x S x C x H x W

        def saliency(inputs: torch.Tensor, differentiable: bool) -> torch.Tensor:
            flat = inputs.reshape(n, -1)
            sigma = (opt.noise_level * (flat.amax(1) - flat.amin(1))).view(n, 1, 1, 1, 1)
            noisy = (inputs.unsqueeze(1) + sigma * noise).reshape(n * s, *x.shape[1:])
            grads = chunked_gradient(victim, noisy, labels.repeat_interleave(s), ctx.batch_size, differentiable)
            mean = grads.reshape(n, s, *x.shape[1:]).mean(dim=1)
            return normalize_per_sample(channel_max(mean.abs()), opt.percentile)

        return exact_map_surrogate_gradient(saliency, victim, x, ctx)
