"""Feature squeezing (Xu, Evans and Qi 2018): compare the prediction on x with predictions on squeezed x."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from advbench.api import Detector, DetectorEnv, DetectorOutput, Options, RunContext
from advbench_detectors._features import benign_threshold, map_batches, require_fitted


class FeatureSqueezingOptions(Options):
    bits: int = Field(5, ge=1, le=8, description="bit depth of the bit-depth-reduction squeezer (Xu et al.: 5 "
                                                 "for CIFAR-10, 1 for MNIST); 8 leaves 8-bit images unchanged")
    median_size: int = Field(2, ge=1, le=7, description="window of the median-smoothing squeezer (Xu et al.: "
                                                        "2x2 for CIFAR-10 and MNIST); 1 switches it off")
    fpr: float = Field(0.05, gt=0, lt=1, description="share of held-out benign inputs flagged: the threshold is "
                                                     "their (1 - fpr) quantile (Xu et al.: 5%)")


def reduce_bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round [0, 1] intensities to ``2**bits`` levels: round(x * (2^b - 1)) / (2^b - 1)."""
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


class _StraightThroughBitDepth(torch.autograd.Function):
    """``reduce_bit_depth`` forward, the identity backward (BPDA: rounding has zero gradient almost everywhere)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:
        return reduce_bit_depth(x, bits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def reduce_bit_depth_bpda(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``reduce_bit_depth`` with the same values and the identity as its gradient."""
    return _StraightThroughBitDepth.apply(x, bits)


def median_smooth(x: torch.Tensor, size: int) -> torch.Tensor:
    """Per-channel ``size`` x ``size`` median filter, as Xu et al.'s code does it (scipy.ndimage.median_filter,
    mode="reflect").

    Matching scipy: the window of output pixel i covers inputs i - size//2 .. i - size//2 + size - 1 (for size
    2: the pixel and its upper/left neighbour), the border is padded by half-sample symmetric reflection
    (d c b a | a b c d), and for an even window the median is the upper of the two middle values (rank
    size*size // 2 of the sorted window).
    """
    if size <= 1:
        return x
    before, after = size // 2, size - 1 - size // 2
    padded = _symmetric_pad(_symmetric_pad(x, before, after, dim=-1), before, after, dim=-2)
    n, c, h, w = x.shape
    windows = F.unfold(padded.reshape(n * c, 1, *padded.shape[-2:]), kernel_size=size)  # (N*C) x k^2 x (H*W)
    median = windows.sort(dim=1).values[:, (size * size) // 2, :]
    return median.reshape(n, c, h, w)


def _symmetric_pad(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Half-sample symmetric padding along ``dim`` (scipy's "reflect"): the edge sample is repeated."""
    length = x.shape[dim]
    if max(before, after) > length:
        raise ValueError(f"median window {before + after + 1} is too large for an image side of {length}")
    parts = [x.narrow(dim, 0, before).flip(dim)] if before else []
    parts.append(x)
    if after:
        parts.append(x.narrow(dim, length - after, after).flip(dim))
    return torch.cat(parts, dim=dim)


class FeatureSqueezing(Detector):
    """Feature squeezing (Xu, Evans and Qi 2018, "Feature Squeezing: Detecting Adversarial Examples in Deep
    Neural Networks").

    Two squeezers, bit-depth reduction (``bits``) and ``median_size`` x ``median_size`` median smoothing;
    score = max over squeezers of the L1 distance between softmax(f1(x)) and softmax(f1(squeeze(x))), in
    [0, 2]. Defaults follow the paper's CIFAR-10 configuration (5-bit, 2x2 median; its third squeezer,
    non-local means, is left out). Fitted on the held-out BENIGN inputs only: the threshold is their
    (1 - ``fpr``) quantile, so no adversarial example is needed; flag = score > threshold.

    Adaptive attacks (``adaptive_gradient = "bpda"``, Athalye, Carlini and Wagner 2018): ``attack_score`` has the
    same values as the score; the bit-depth rounding, whose gradient is zero almost everywhere, passes the
    gradient through unchanged (straight-through identity). The median filter is used as is: a sort-based median
    is differentiable almost everywhere, its gradient going to the pixel that is the median (as max-pooling's
    goes to the maximum), which is an honest gradient, not a masked one; the max over squeezers likewise.
    """

    name = "feature-squeezing"
    description = "Xu et al. 2018: L1 change of the softmax under bit-depth reduction and median smoothing"
    revision = "1"
    Options = FeatureSqueezingOptions
    needs_adversarial_fit = False
    adaptive_gradient = "bpda"

    def __init__(self, options: Optional[Options] = None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self.threshold: Optional[float] = None

    def _scores(self, env: DetectorEnv, x: torch.Tensor, bpda: bool = False) -> torch.Tensor:
        o = self.options
        squeezed = [reduce_bit_depth_bpda(x, o.bits) if bpda else reduce_bit_depth(x, o.bits)]
        if o.median_size > 1:
            squeezed.append(median_smooth(x, o.median_size))
        n = len(x)
        probs = torch.softmax(env.victim(torch.cat([x, *squeezed])).float(), dim=1)
        original, others = probs[:n], probs[n:].view(len(squeezed), n, -1)
        return (others - original).abs().sum(dim=2).max(dim=0).values

    def fit(self, env: DetectorEnv, benign_x: torch.Tensor, adversarial_x: torch.Tensor, ctx: RunContext) -> None:
        scores = map_batches(lambda b: self._scores(env, b), benign_x, ctx, "feature squeezing: benign threshold")
        self.threshold = benign_threshold(scores, self.options.fpr)

    def score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> DetectorOutput:
        require_fitted(self, "threshold")
        with torch.no_grad():
            scores = self._scores(env, x)
        return DetectorOutput(score=scores, flag=scores > self.threshold)

    def attack_score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        require_fitted(self, "threshold")
        return self._scores(env, x, bpda=True)
