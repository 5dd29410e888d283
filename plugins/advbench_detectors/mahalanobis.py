"""Mahalanobis distance to the closest class-conditional Gaussian (Lee et al. 2018)."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from advbench.api import Detector, DetectorEnv, DetectorOutput, Options, RunContext
from advbench_detectors._features import (DeviceCache, benign_threshold, map_batches, penultimate,
                                          require_fitted, subsample)


class MahalanobisOptions(Options):
    max_train: int = Field(5000, ge=10, le=1_000_000,
                           description="training images the class means and covariance are fitted on (seeded "
                                       "subsample)")
    noise: float = Field(0.0, ge=0, le=1, description="input-preprocessing step in [0, 1] pixel units, moving x to "
                                                      "raise its confidence (Lee et al.'s epsilon); 0 switches it off")
    fpr: float = Field(0.05, gt=0, lt=1, description="share of held-out benign inputs flagged: the threshold is "
                                                     "their (1 - fpr) quantile")


class Mahalanobis(DeviceCache, Detector):
    """Mahalanobis confidence score (Lee, Lee, Lee and Shin 2018, "A Simple Unified Framework for Detecting
    Out-of-Distribution Samples and Adversarial Attacks"), single-layer form.

    Class-conditional Gaussians with one shared (tied) covariance on the penultimate features (the input to the
    victim's last ``nn.Linear``), fitted on the victim's training data (``env.train_x``/``train_y``, true
    labels, seeded subsample of ``max_train``): class means and the pooled within-class covariance, inverted
    with a pseudo-inverse. Score = -max_c M_c(x) = min_c (f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c), the squared
    Mahalanobis distance to the closest class (higher = more adversarial).
    ``noise`` > 0 applies their input preprocessing first: x <- clip(x - noise * sign(grad_x of that minimum
    distance), 0, 1), a step that raises the confidence (Lee et al. tune it on validation data; off by
    default, since tuning it needs adversarial or OOD examples). Their multi-layer variant with a logistic
    regression over layers is not implemented here.
    The threshold is fitted on the held-out BENIGN inputs only, at their (1 - ``fpr``) quantile; flag =
    score > threshold. No adversarial example is needed.

    Adaptive attacks (``adaptive_gradient = "exact"``): given the fitted means and precision the score is a
    differentiable function of x almost everywhere (the minimum over classes routes the gradient to the closest
    one); ``attack_score`` keeps the graph through the penultimate features. The preprocessing step's sign is
    piecewise constant, so its derivative is zero almost everywhere and x - noise * sign(...) is differentiated
    as a shift of x.
    """

    name = "mahalanobis"
    description = "Lee et al. 2018: Mahalanobis distance to the closest class Gaussian on penultimate features"
    revision = "1"
    Options = MahalanobisOptions
    needs_adversarial_fit = False
    adaptive_gradient = "exact"

    def __init__(self, options: Optional[Options] = None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self._means: Optional[torch.Tensor] = None       # C x D float64, NaN rows for classes never seen
        self._precision: Optional[torch.Tensor] = None   # D x D float64
        self.threshold: Optional[float] = None

    def _distances(self, features: torch.Tensor) -> torch.Tensor:
        """N x C squared Mahalanobis distances (inf for classes with no training data)."""
        means = self.on_device("means", self._means, features.device)
        precision = self.on_device("precision", self._precision, features.device)
        # float64 kept: the precision is a pseudo-inverse of a covariance that is often ill-conditioned, and the
        # expansion f'Pf - 2 f'P mu + mu'P mu cancels badly in float32 for an input near a class mean
        f = features.double()
        valid = ~torch.isnan(means[:, 0])
        mu = torch.where(valid[:, None], means, torch.zeros_like(means))
        fp = f @ precision
        d2 = (fp * f).sum(1, keepdim=True) - 2 * fp @ mu.T + ((mu @ precision) * mu).sum(1)[None, :]
        return torch.where(valid[None, :], d2.clamp_min(0), torch.full_like(d2, float("inf")))

    def _closest(self, env: DetectorEnv, x: torch.Tensor) -> torch.Tensor:
        return self._distances(penultimate(env.victim, x)[0]).min(dim=1).values

    def _preprocess(self, env: DetectorEnv, x: torch.Tensor) -> torch.Tensor:
        """Lee et al.'s input preprocessing (a no-op with ``noise`` 0); the step's sign is a constant of x."""
        if self.options.noise == 0:
            return x
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._closest(env, x_in).sum(), x_in)
        return (x - self.options.noise * grad.sign()).clamp(0.0, 1.0)

    def _scores(self, env: DetectorEnv, x: torch.Tensor) -> torch.Tensor:
        x = self._preprocess(env, x)
        with torch.no_grad():
            return self._closest(env, x).float()

    def fit(self, env: DetectorEnv, benign_x: torch.Tensor, adversarial_x: torch.Tensor, ctx: RunContext) -> None:
        idx = subsample(len(env.train_x), self.options.max_train, ctx.generator("mahalanobis", "train subsample"))
        features = map_batches(lambda b: penultimate(env.victim, b)[0], env.train_x[idx], ctx,
                               "mahalanobis: training features").double()
        labels = env.train_y[idx]
        means = torch.full((env.num_classes, features.shape[1]), float("nan"), dtype=torch.float64)
        centered = torch.empty_like(features)
        for c in range(env.num_classes):
            rows = labels == c
            if rows.any():
                means[c] = features[rows].mean(0)
                centered[rows] = features[rows] - means[c]
        covariance = centered.T @ centered / len(features)
        self._means = means
        self._precision = torch.linalg.pinv(covariance, hermitian=True)
        scores = map_batches(lambda b: self._scores(env, b), benign_x, ctx, "mahalanobis: benign threshold",
                             no_grad=False)
        self.threshold = benign_threshold(scores, self.options.fpr)

    def score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> DetectorOutput:
        require_fitted(self, "threshold")
        scores = self._scores(env, x)
        return DetectorOutput(score=scores, flag=scores > self.threshold)

    def attack_score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        require_fitted(self, "threshold")
        return self._closest(env, self._preprocess(env, x)).float()
