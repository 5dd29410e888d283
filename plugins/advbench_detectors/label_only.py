"""A control detector that sees only the victim's predicted label."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from advbench.api import Detector, DetectorEnv, DetectorOutput, Options, RunContext
from advbench_detectors._features import (differentiable_adversarial, fit_logistic, map_batches, one_hot,
                                          predict_adversarial, require_fitted)


class LabelOnlyOptions(Options):
    c: float = Field(1.0, gt=0, le=1e6, description="inverse L2 regularization strength of the logistic regression")


class LabelOnly(Detector):
    """Label-only control: logistic regression on the one-hot label f1 predicts (no interpretation at all).

    Fitted on the held-out benign vs adversarial inputs given to ``fit``; it learns P(adversarial | predicted
    class), i.e. how far the attack's label shift alone separates the two populations. Score = that
    probability; flag = probability > 0.5. Compare its AUROC with the contrastive detector of Nguyen et al.
    2017 to see how much the interpretation earns beyond the label shift.

    Adaptive attacks (``adaptive_gradient = "bpda"``): the one-hot label is piecewise constant in x, so its
    gradient is zero everywhere; ``attack_score`` keeps the one-hot forward values and passes the gradient through
    softmax(f1(x)) instead (BPDA with the softmax as the smooth stand-in), which steers an attack towards the
    labels the regression finds least suspicious.
    """

    name = "label-only"
    description = "Control: logistic regression on the victim's one-hot predicted label"
    revision = "1"
    control = True
    Options = LabelOnlyOptions
    needs_adversarial_fit = True
    adaptive_gradient = "bpda"
    scores_from_forwards = True  # the fitted regression reads f1's label alone
    attack_revision = "2"  # 2: the logistic regression passes the logit's gradient (the sigmoid's vanished)

    def __init__(self, options: Optional[Options] = None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self._model = None

    def _features(self, env: DetectorEnv, x: torch.Tensor) -> torch.Tensor:
        return one_hot(env.victim(x).argmax(dim=1), env.num_classes)

    def fit(self, env: DetectorEnv, benign_x: torch.Tensor, adversarial_x: torch.Tensor, ctx: RunContext) -> None:
        fb = map_batches(lambda b: self._features(env, b), benign_x, ctx, "label-only: benign labels")
        fa = map_batches(lambda b: self._features(env, b), adversarial_x, ctx, "label-only: adversarial labels")
        self._model = fit_logistic(fb, fa, c=self.options.c)

    def score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> DetectorOutput:
        with torch.no_grad():
            logits = env.victim(x)
        return self.score_forwards(logits, None)

    def score_forwards(self, f1_logits: torch.Tensor, f2_logits: Optional[torch.Tensor]) -> DetectorOutput:
        require_fitted(self, "_model")
        with torch.no_grad():
            features = one_hot(f1_logits.argmax(dim=1), f1_logits.shape[1])
        prob = predict_adversarial(self._model, features, f1_logits.device)
        return DetectorOutput(score=prob, flag=prob > 0.5)

    def attack_score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        require_fitted(self, "_model")
        probs = torch.softmax(env.victim(x).float(), dim=1)
        hard = one_hot(probs.argmax(dim=1), env.num_classes)
        return differentiable_adversarial(self._model, hard + (probs - probs.detach()))  # zero added: same values
