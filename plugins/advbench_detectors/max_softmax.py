"""The maximum-softmax-probability baseline (Hendrycks & Gimpel, ICLR 2017)."""

from __future__ import annotations

from typing import Optional

import torch

from advbench.api import Detector, DetectorEnv, DetectorOutput, Options, RunContext


class MaxSoftmaxOptions(Options):
    """No options: the score is a fixed function of the victim's logits."""


class MaxSoftmax(Detector):
    """Maximum softmax probability of Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks" (ICLR 2017).

    Score: ``1 - max_k softmax(f1(x))_k``, the victim's own lack of confidence (in [0, 1]); nothing is fitted
    and there is no hard decision of its own (no flag: its operating points come from thresholds). A control
    that asks how far an interpretation-based detector beats what the victim's confidence alone tells.
    Adaptive attacks differentiate the same expression exactly (``adaptive_gradient = "exact"``).
    """

    name = "msp"
    aliases = ("max-softmax",)
    description = "Hendrycks & Gimpel 2017: 1 - the victim's maximum softmax probability (a control)"
    revision = "1"
    control = True
    Options = MaxSoftmaxOptions
    adaptive_gradient = "exact"

    scores_from_forwards = True  # a function of f1's logits alone

    def score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> DetectorOutput:
        with torch.no_grad():
            return DetectorOutput(score=self.attack_score(env, x, ctx))

    def score_forwards(self, f1_logits: torch.Tensor, f2_logits: Optional[torch.Tensor]) -> DetectorOutput:
        with torch.no_grad():
            return DetectorOutput(score=_lack_of_confidence(f1_logits))

    def attack_score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        return _lack_of_confidence(env.victim(x))


def _lack_of_confidence(logits: torch.Tensor) -> torch.Tensor:
    confidence = torch.softmax(logits.float(), dim=1).amax(dim=1)
    return (1.0 - confidence).clamp(0.0, 1.0)
