"""Deep k-nearest neighbours (Papernot and McDaniel 2018): credibility of the prediction from per-layer kNN."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field
from torch import nn

from advbench.api import Detector, DetectorEnv, DetectorOutput, Options, RunContext
from advbench_detectors._features import (ACTIVATIONS, DeviceCache, benign_threshold, capture, last_linear,
                                          map_batches, require_fitted, subsample)


class DeepKnnOptions(Options):
    k: int = Field(75, ge=1, le=10_000, description="nearest training neighbours per layer (Papernot and McDaniel: "
                                                    "75)")
    max_train: int = Field(5000, ge=10, le=1_000_000,
                           description="training images the neighbours are searched among (a seeded subsample of "
                                       "env.train_x, for CPU cost; the paper: the whole training set)")
    max_layers: int = Field(3, ge=1, le=1000, description="keep the deepest this many hooked layers (activation "
                                                          "outputs and the logits; the paper: every layer)")
    candidate: Literal["dknn", "victim"] = Field(
        "dknn", description="whose label the credibility is of: the DkNN's own prediction (the label of least "
                            "non-conformity, as in the paper) or the victim's predicted label")
    fpr: float = Field(0.05, gt=0, lt=1, description="share of held-out benign inputs flagged: the threshold is "
                                                     "their (1 - fpr) score quantile")


class DeepKnn(DeviceCache, Detector):
    """Deep k-nearest neighbours (Papernot and McDaniel 2018, "Deep k-Nearest Neighbors: Towards Confident,
    Interpretable and Robust Deep Learning").

    Layers: the outputs of the victim's activation modules (``nn.ReLU`` and the like) and of its last
    ``nn.Linear`` (the logits), in call order, of which the deepest ``max_layers`` are kept. At fit time their
    features are stored for a seeded subsample of ``max_train`` training images (``env.train_x``/``train_y``, true
    labels). For an input x and a label j the non-conformity is alpha(x, j) = the number of x's ``k`` nearest
    training neighbours (Euclidean, exact, in each kept layer) whose label is not j, summed over layers.
    Calibration (inductive conformal prediction): alpha of each held-out benign input given to ``fit`` under its
    candidate label. The empirical p-value of label j is the share of calibration values >= alpha(x, j); the
    credibility of x is the p-value of its candidate label, the DkNN's own prediction (argmin_j alpha(x, j), whose
    p-value is the largest: the paper's credibility) or, with ``candidate: victim``, f1's predicted label.
    Score = 1 - credibility (higher = more adversarial), in [0, 1]; flag = score > the (1 - ``fpr``) quantile of
    the calibration inputs' scores (5% by default). No adversarial example is needed.

    Why this detector: a widely used post-2018 baseline that needs no adversarial examples and no retraining,
    reported as a detection and out-of-distribution baseline and attacked as a kNN defence in its own right
    (e.g. Sitawarin and Wagner 2019, "On the Robustness of Deep K-Nearest Neighbors"; "Minimum-Norm Adversarial
    Examples on KNN and KNN-Based Models", 2020); it probes every layer, where kd-bu and Mahalanobis look at the
    last one.

    Departures from the paper: the calibration inputs carry no true label in this harness, so their
    non-conformity is taken under the candidate label (the paper: under the true label of a labelled
    calibration set of 750 inputs); the kNN is exact on a seeded subsample of ``max_train`` training images and
    the deepest ``max_layers`` layers (the paper: every layer, the whole training set, locality-sensitive
    hashing with FALCONN); the hard decision's threshold is taken on the same benign inputs that calibrate the
    p-values (their p-values are then those of the calibration points themselves).
    Paper CIFAR-10 numbers: none; the paper evaluates MNIST, SVHN and GTSRB, not CIFAR-10.

    Adaptive attacks: unsupported (``adaptive_gradient = ""``). The score counts neighbour labels and ranks the
    count among calibration values: piecewise constant in x, its gradient is zero almost everywhere, and any
    differentiable stand-in (a soft kNN, as Sitawarin and Wagner build to attack it) is a different detector, not
    an honest gradient of this one. The harness reports its adaptive rows as unsupported.
    """

    name = "dknn"
    aliases = ("deep-knn",)
    description = "Papernot & McDaniel 2018: 1 - conformal credibility from per-layer kNN label agreement"
    revision = "1"
    Options = DeepKnnOptions
    needs_adversarial_fit = False
    adaptive_gradient = ""

    def __init__(self, options: Optional[Options] = None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self._reference: Optional[list[torch.Tensor]] = None
        self._reference_y: Optional[torch.Tensor] = None
        self._calibration: Optional[torch.Tensor] = None
        self.threshold: Optional[float] = None
        self._num_classes = 0

    @staticmethod
    def _hooked(victim: nn.Module) -> list[nn.Module]:
        return [m for m in victim.modules() if isinstance(m, ACTIVATIONS)] + [last_linear(victim)]

    def _layers(self, victim: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        with capture(self._hooked(victim)) as store:
            logits = victim(x)
        return [a.detach() for a in store[-self.options.max_layers:]], logits.detach()

    def _counts(self, victim: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N x C neighbour label counts summed over layers, the victim's predicted labels)."""
        acts, logits = self._layers(victim, x)
        if len(acts) != len(self._reference):
            raise RuntimeError(f"dknn: the victim produced {len(acts)} hooked layers, {len(self._reference)} at fit")
        labels = self.on_device("labels", self._reference_y, x.device)
        k = min(self.options.k, len(labels))
        counts = torch.zeros(len(x), self._num_classes, dtype=torch.float32, device=x.device)
        for i, (a, ref) in enumerate(zip(acts, self._reference)):
            d = torch.cdist(a.float(), self.on_device(f"layer {i}", ref, x.device))
            nearest = d.topk(k, dim=1, largest=False).indices
            counts += nn.functional.one_hot(labels[nearest], self._num_classes).sum(dim=1).float()
        return counts, logits.argmax(dim=1)

    def _nonconformity(self, victim: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """alpha(x, candidate label) per input."""
        counts, predicted = self._counts(victim, x)
        total = counts.sum(dim=1)  # = layers x k
        candidate = counts.argmax(dim=1) if self.options.candidate == "dknn" else predicted
        return total - counts.gather(1, candidate[:, None])[:, 0]

    def p_values(self, env: DetectorEnv, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Empirical p-value of each input's ``labels``: share of calibration non-conformities >= alpha(x, label)."""
        require_fitted(self, "_calibration")
        counts, _ = self._counts(env.victim, x)
        alpha = counts.sum(dim=1) - counts.gather(1, labels.to(x.device).long()[:, None])[:, 0]
        return self._p_value(alpha)

    def _p_value(self, alpha: torch.Tensor) -> torch.Tensor:
        calibration = self.on_device("calibration", self._calibration, alpha.device)  # ascending
        at_least = len(calibration) - torch.searchsorted(calibration, alpha, right=False)
        return at_least.float() / len(calibration)

    def fit(self, env: DetectorEnv, benign_x: torch.Tensor, adversarial_x: torch.Tensor, ctx: RunContext) -> None:
        idx = subsample(len(env.train_x), self.options.max_train, ctx.generator("dknn", "train subsample"))
        if len(benign_x) == 0:
            raise ValueError("dknn calibrates its p-values on held-out benign inputs; fit() got none")
        self._num_classes = env.num_classes
        self._reference = list(map_batches(lambda b: tuple(a.float() for a in self._layers(env.victim, b)[0]),
                                           env.train_x[idx], ctx, "dknn: training features"))
        self._reference_y = env.train_y[idx].long()
        self._calibration = map_batches(lambda b: self._nonconformity(env.victim, b), benign_x, ctx,
                                        "dknn: calibration").sort().values
        self.threshold = benign_threshold(1.0 - self._p_value(self._calibration), self.options.fpr)

    def score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> DetectorOutput:
        require_fitted(self, "_calibration", "threshold")
        with torch.no_grad():
            score = 1.0 - self._p_value(self._nonconformity(env.victim, x))
        return DetectorOutput(score=score, flag=score > self.threshold)
