"""Pieces shared by ``lan`` and ``lan-per-sample`` (Grimm et al. 2017, "Latent Attention Networks").

Notation: A(x) in [0, 1] has x's shape (or one channel, shared across colour channels); the corrupted input is
``x~ = A(x) * eta + (1 - A(x)) * x``, so A near 1 means "this element can be replaced by noise without
changing F's output" (unimportant). The objective, minimized, is ``L_F(F(x~), F(x)) - beta * mean(A(x))``.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LossKind = Literal["ce", "kl", "mse"]
OutputKind = Literal["importance", "mask", "masked_image"]


def fidelity_loss(logits_tilde: torch.Tensor, logits: torch.Tensor, kind: str) -> torch.Tensor:
    """L_F per sample (shape N) between F(x~) and F(x); ``logits`` is F(x), computed without gradient.

    ce: cross-entropy of F(x~) against F's own predicted label argmax F(x);
    kl: KL(softmax F(x) || softmax F(x~));
    mse: mean squared difference of the logits.
    """
    if kind == "ce":
        return F.cross_entropy(logits_tilde, logits.argmax(dim=1), reduction="none")
    if kind == "kl":
        logp = F.log_softmax(logits, dim=1)
        return (logp.exp() * (logp - F.log_softmax(logits_tilde, dim=1))).sum(dim=1)
    if kind == "mse":
        return (logits_tilde - logits).pow(2).mean(dim=1)
    raise ValueError(f"unknown LAN loss {kind!r}")


def sample_mean(a: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (shape N)."""
    return a.reshape(len(a), -1).mean(dim=1)


def corrupt(x: torch.Tensor, a: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """x~ = A * eta + (1 - A) * x (A broadcasts over channels when it has one)."""
    return a * eta + (1.0 - a) * x


def make_output(a: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """What explain() returns: importance 1 - A (default), the raw mask A, or the kept image (1 - A) * x."""
    if kind == "importance":
        out = 1.0 - a
    elif kind == "mask":
        out = a
    elif kind == "masked_image":
        out = (1.0 - a) * x
    else:
        raise ValueError(f"unknown LAN output {kind!r}")
    return out.float().clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian blur (separable, edges replicated); a deterministic noise source."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class LatentAttentionNet(nn.Module):
    """The LAN mask generator A: x in [0, 1] -> A(x) in [0, 1], sigmoid output.

    ``fc``: ``depth`` linear layers in -> width -> ... -> width -> out with ReLUs (Grimm et al.'s setup: a
    fully connected network of three layers, each under 1000 units). ``conv``: ``depth`` 3x3 same-padding
    convolutions with ``conv_width`` channels and ReLUs. Inputs are standardized per channel with the ``mean``
    and ``std`` buffers (set from the training data by ``fit``), so everything the module needs is in its
    state_dict. Output: N x C x H x W, or N x 1 x H x W with ``shared_channels``.
    """

    def __init__(self, input_shape: Sequence[int], arch: str = "fc", width: int = 512, depth: int = 3,
                 conv_width: int = 32, shared_channels: bool = False) -> None:
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        self.out_shape = (1 if shared_channels else c, h, w)
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("std", torch.ones(c))
        layers: list[nn.Module] = []
        if arch == "fc":
            sizes = [c * h * w] + [width] * (depth - 1) + [self.out_shape[0] * h * w]
            layers.append(nn.Flatten())
            for i in range(depth):
                layers.append(nn.Linear(sizes[i], sizes[i + 1]))
                if i < depth - 1:
                    layers.append(nn.ReLU())
        elif arch == "conv":
            chans = [c] + [conv_width] * (depth - 1) + [self.out_shape[0]]
            for i in range(depth):
                layers.append(nn.Conv2d(chans[i], chans[i + 1], kernel_size=3, padding=1))
                if i < depth - 1:
                    layers.append(nn.ReLU())
        else:
            raise ValueError(f"unknown LAN arch {arch!r}")
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        return torch.sigmoid(self.body(z).reshape(len(x), *self.out_shape))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-draw every weight from ``generator`` (PyTorch's default uniform bound 1/sqrt(fan_in)); the last
        layer's bias starts at 0 so A starts near 0.5 everywhere."""
        params = [m for m in self.body if isinstance(m, (nn.Linear, nn.Conv2d))]
        for i, m in enumerate(params):
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            for p in (m.weight, m.bias):
                draw = torch.rand(p.shape, generator=generator, dtype=p.dtype) * (2 * bound) - bound
                p.copy_(draw.to(p.device))
            if i == len(params) - 1:
                m.bias.zero_()
