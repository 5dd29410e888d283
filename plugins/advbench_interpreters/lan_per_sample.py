"""Per-image Latent Attention mask (the per-sample variant of Grimm et al. 2017)."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field
from torch import nn

from advbench import api
from advbench_interpreters._common import SampleNoise
from advbench_interpreters._lan import (LossKind, OutputKind, corrupt, fidelity_loss, gaussian_blur, make_output,
                                        sample_mean)


class LANPerSample(api.Interpreter):
    """The per-image variant of Grimm, Arumugam, Karamcheti, Abel, Wong & Littman, "Latent Attention Networks"
    (arXiv 1706.00536, 2017): instead of a network A(x), each input's mask A = sigmoid(m) is optimized
    directly, with Adam for ``steps`` steps from ``m = init_logit``, to minimize the LAN objective
    ``L_F(F(x~), F(x)) - beta * mean(A)`` with ``x~ = A * eta + (1 - A) * x`` and F = f1 frozen
    (``L_F`` and ``beta`` as in ``lan``: cross-entropy against F's own predicted label by default).

    There is no training set at explain time, so bootstrapped noise is unavailable: ``eta`` is U[0, 1] pixels
    redrawn at every step (default), a Gaussian blur of x (``blur``, width ``blur_sigma``), or ``noise_value``
    (``constant``). The batch is optimized at once but the loss is a sum of per-sample terms and Adam is
    element-wise, so samples stay independent; uniform noise comes from a generator per sample seeded by the
    run seed and the sample's content, so a mask does not depend on the rest of the batch (on CUDA the noise is
    drawn on the device instead, counter-based: other numbers than on the CPU, see ``_common.SampleNoise``).

    Nothing is trained ahead (``build`` returns None). Output as ``lan``: ``importance`` = 1 - A (DEFAULT),
    ``mask`` = A, ``masked_image`` = (1 - A) * x; C channels, or 1 with ``shared_channels``.
    Not differentiable (``differentiable = False``): adaptive attacks through it are not run.
    """

    name = "lan-per-sample"
    description = "Latent-attention mask optimized directly for each input (Grimm et al. 2017, per-image variant)"
    revision = "1"
    # the mask is the end of an optimisation per image, with x detached: there is no gradient of it to follow
    differentiable = False

    class Options(api.Options):
        steps: int = Field(50, ge=1, le=5000, description="Adam steps per batch")
        lr: float = Field(0.1, gt=0.0, le=10.0, description="Adam learning rate on the mask logits")
        init_logit: float = Field(0.0, ge=-10.0, le=10.0, description="starting logit; 0 = A of 0.5")
        beta: float = Field(2.0, ge=0.0, le=100.0, description="weight of the mean-mask reward")
        loss: LossKind = Field("ce", description="L_F: ce against F's label, kl of softmaxes, mse of logits")
        noise: Literal["uniform", "blur", "constant"] = Field(
            "uniform", description="eta: U[0,1] pixels per step, a blurred x, or a constant")
        noise_value: float = Field(0.0, ge=0.0, le=1.0, description="eta's value for noise: constant")
        blur_sigma: float = Field(2.0, ge=0.1, le=32.0, description="Gaussian width in pixels for noise: blur")
        shared_channels: bool = Field(False, description="one mask value per pixel, shared by all channels")
        output: OutputKind = Field("importance", description="importance = 1 - A (default), mask = A, "
                                                             "masked_image = (1 - A) * x")

    def explain(self, state: Optional[nn.Module], victim: nn.Module, x: torch.Tensor,
                ctx: api.RunContext) -> torch.Tensor:
        opt = self.options
        x = x.detach()
        n, c, h, w = x.shape
        with torch.no_grad():
            logits = victim(x)
        noise = SampleNoise(ctx, x, "lan-per-sample") if opt.noise == "uniform" else None
        if opt.noise == "blur":
            fixed_eta = gaussian_blur(x, opt.blur_sigma)
        elif opt.noise == "constant":
            fixed_eta = torch.full_like(x, opt.noise_value)
        else:
            fixed_eta = None
        m = torch.full((n, 1 if opt.shared_channels else c, h, w), opt.init_logit, device=x.device,
                       dtype=x.dtype, requires_grad=True)
        optimizer = torch.optim.Adam([m], lr=opt.lr)
        with torch.enable_grad():
            for _ in range(opt.steps):
                eta = fixed_eta if noise is None else noise.draw((c, h, w), "uniform")
                a = torch.sigmoid(m)
                per_sample = fidelity_loss(victim(corrupt(x, a, eta)), logits, opt.loss) - opt.beta * sample_mean(a)
                optimizer.zero_grad(set_to_none=True)
                per_sample.sum().backward()
                optimizer.step()
        with torch.no_grad():
            return make_output(torch.sigmoid(m), x, opt.output)
