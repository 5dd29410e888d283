"""Kernel density and Bayesian uncertainty (Feinman et al. 2017)."""

from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
from pydantic import Field
from torch import nn

from advbench.api import Detector, DetectorEnv, DetectorOutput, Options, RunContext
from advbench_detectors._features import (DeviceCache, benign_threshold, differentiable_adversarial, fit_logistic,
                                          map_batches, penultimate, predict_adversarial, require_fitted, subsample)


# Feinman et al.'s bandwidths, cross-validated on their own networks (their code's BANDWIDTHS)
PAPER_CIFAR10_BANDWIDTH = 0.26


class KdBuOptions(Options):
    max_train: int = Field(5000, ge=10, le=1_000_000,
                           description="training images the class densities are fitted on (a seeded subsample)")
    bandwidth: Optional[float] = Field(
        PAPER_CIFAR10_BANDWIDTH, gt=0, le=1e6,
        description="Gaussian kernel bandwidth in feature units (default: Feinman et al.'s CIFAR-10 value, 0.26); "
                    "None = the median distance between two training features of the same class (median "
                    "heuristic), which separated worse on a measured victim (see the class docstring)")
    mc_samples: int = Field(50, ge=2, le=1000, description="stochastic forward passes for the dropout uncertainty "
                                                          "(Feinman et al.'s code: 50)")
    c: float = Field(1.0, gt=0, le=1e6, description="inverse L2 regularization of the logistic regression")
    fpr: float = Field(0.05, gt=0, lt=1, description="share of held-out benign inputs the hard decision flags: the "
                                                     "flag threshold is their (1 - fpr) score quantile")


def gaussian_kde_log_density(x: torch.Tensor, reference: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """log of the Gaussian kernel density of ``reference`` (n x D) at each row of ``x`` (m x D), float32:
    log (1/n) sum_i N(x; r_i, h^2 I) = logsumexp_i(-|x - r_i|^2 / 2h^2) - log n - (D/2) log(2 pi h^2), the value
    sklearn's ``KernelDensity(kernel="gaussian", bandwidth=h).score_samples`` returns (Feinman et al.'s tool)."""
    d2 = torch.cdist(x.float(), reference.float()).pow(2)
    dim = x.shape[1]
    constant = math.log(len(reference)) + 0.5 * dim * math.log(2.0 * math.pi * bandwidth ** 2)
    return torch.logsumexp(-d2 / (2.0 * bandwidth ** 2), dim=1) - constant


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


class KdBu(DeviceCache, Detector):
    """Kernel density + Bayesian uncertainty (Feinman, Curtin, Shintre and Gardner 2017, "Detecting
    Adversarial Samples from Artifacts"; authors' code: github.com/rfeinman/detecting-adversarial-samples).

    Density: a Gaussian kernel density of the last hidden layer's features (the input to the victim's last
    ``nn.Linear``; their code takes the output of the last hidden ReLU, the same tensor in eval mode), one per
    class, fitted on the victim's training data (``env.train_x``/``train_y``, true labels, a seeded subsample of
    ``max_train``) and evaluated, as the log density, under the class f1 predicts. The value is the Gaussian
    mixture's log density, log (1/n) sum_i N(z; z_i, h^2 I), exactly what sklearn's ``KernelDensity.score_samples``
    (their tool) returns.
    Bandwidth (``bandwidth``): the default is the paper's CIFAR-10 bandwidth, 0.26 (their code's cross-validated
    BANDWIDTHS: 1.20 MNIST, 0.26 CIFAR-10, 1.00 SVHN, tuned to their own networks); ``bandwidth: null`` sets h to
    the median Euclidean distance between same-class training features (median heuristic), the previous default.
    The default was decided by measurement, not taste: on the test suite's digits victim (tests/test_detectors.py,
    FGSM eps 0.3, held-out FGSM/benign), the density alone separates with AUROC 0.95 at h = 0.26 and 1.0 but 0.82
    with the median heuristic (h = 7.1) and 0.89 at h = 3; the combined detector 0.95 vs 0.83. A bandwidth well
    below the typical feature distance turns the density into a smooth nearest-training-feature distance, whose
    ranking no longer depends on h, which is why a value tuned on another network still transfers; the median
    heuristic flattens the kernel over the whole class and loses the local signal.
    Uncertainty: the population variance (1/T, as numpy's ``var``) over ``mc_samples`` passes (their code: 50)
    of the softmax with the victim's dropout modules switched on (MC dropout), averaged over classes as in their
    code; the paper's formula (1/T) sum_t y_t.y_t - E.E is the sum over classes, C times this, a constant factor
    the standardization removes. Only dropout is switched to train mode (batch norm stays in eval), and eval mode
    is restored afterwards; the dropout masks come from a seed derived from the run's seed inside
    ``torch.random.fork_rng``, so the caller's global RNG is untouched. A victim without a dropout module has
    uncertainty 0 for every input (only the density then counts).
    Combination: logistic regression on the standardized (log density, uncertainty) pair, fitted on the
    held-out benign vs adversarial inputs given to ``fit``; score = P(adversarial). Hard decision: flag = score >
    the (1 - ``fpr``) quantile of the held-out benign inputs' scores (5% by default), as the harness calibrates
    its own thresholds on benign data; it was score > 0.5, an operating point that depends on the class balance
    of the fit set and flagged few FGSM inputs.
    Departures from the paper: the negative class of the regression is the benign inputs only (the paper and
    their code add Gaussian-noised copies of the test inputs, which the harness does not make); a plain
    ``LogisticRegression(C=c)`` instead of their ``LogisticRegressionCV``; standardization statistics come from
    the fit set (theirs: from the evaluated normal, noisy and adversarial sets together); the training
    features are a seeded subsample of ``max_train`` images (theirs: the whole training set) for CPU cost.
    Paper CIFAR-10 numbers: not found in the sources this change could read (the authors' README and code give
    no table, the paper's text was not stored); not guessed here.

    Adaptive attacks (``adaptive_gradient = "eot"``, expectation over transformation, Athalye et al. 2018): the
    density, the uncertainty of one set of dropout masks and the regression are differentiable in x (the class is
    f1's predicted label, held constant); the dropout masks are random, so ``attack_score`` estimates the
    uncertainty from ``attack_mc_samples`` passes with masks seeded from ``ctx`` and the batch's content, so every
    step of an attack draws fresh masks and the steps' gradients average over them (EOT across steps, at 5 passes
    a step instead of 50 x several draws: the attack's cost stays a few victim passes a step). Other seeds than
    ``score`` uses: an attacker does not know the defender's masks.
    """

    name = "kd-bu"
    description = "Feinman et al. 2017: class kernel density + MC-dropout uncertainty, logistic regression"
    # 2: density and uncertainty in float32 (were float64): scores move by ~2e-6 (digits check: max 1.7e-6, AUROC
    # unchanged to 6 digits); float64 bought nothing here and costs 2-64x on GPUs
    # 3: the paper's bandwidth 0.26 by default (was the median heuristic), 50 MC-dropout passes (was 20), the
    # density includes the Gaussian's normalizing constant, and the flag is a 5%-FPR benign threshold (was 0.5)
    revision = "3"
    Options = KdBuOptions
    # MC dropout draws every batch's masks from one seed (an input's masks depend on its place in the batch), and
    # ``attack_score`` seeds them from the whole batch's content
    batch_dependent = True
    needs_adversarial_fit = True
    adaptive_gradient = "eot"
    # 2: the logistic regression passes the logit's gradient (the sigmoid's vanished); 3: the density's bandwidth
    attack_revision = "3"
    # MC-dropout passes ``attack_score`` estimates the uncertainty from (fresh masks each step); not an option, so
    # the detector's cache keys stay as they were
    attack_mc_samples: ClassVar[int] = 5

    def __init__(self, options: Optional[Options] = None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self._class_features: Optional[list[torch.Tensor]] = None
        self._bandwidth: Optional[float] = None
        self._model = None
        self.threshold: Optional[float] = None

    # -- features -------------------------------------------------------------------------------------------
    def _log_density(self, features: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(features), dtype=torch.float32, device=features.device)
        for c in predicted.unique().tolist():
            rows = predicted == c
            reference = self.on_device(f"class {c}", self._class_features[c], features.device)
            out[rows] = gaussian_kde_log_density(features[rows], reference, self._bandwidth)
        return out

    def _uncertainty(self, victim: nn.Module, x: torch.Tensor, seed: int, mc_samples: Optional[int] = None) -> torch.Tensor:
        modules = dropout_modules(victim)
        if not modules:
            return torch.zeros(len(x), dtype=torch.float32, device=x.device)
        cuda = x.device.type == "cuda"
        index = x.device.index if x.device.index is not None else (torch.cuda.current_device() if cuda else None)
        before = [m.training for m in modules]
        try:
            with torch.random.fork_rng(devices=[index] if cuda else []):
                torch.random.default_generator.manual_seed(seed)
                if cuda:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(seed)  # this device only; fork_rng restores it
                for m in modules:
                    m.train(True)
                probs = torch.stack([torch.softmax(victim(x).float(), dim=1)
                                     for _ in range(mc_samples or self.options.mc_samples)])
        finally:
            for m, mode in zip(modules, before):
                m.train(mode)
        return probs.var(dim=0, unbiased=False).mean(dim=1)

    def _features(self, env: DetectorEnv, x: torch.Tensor, seed: int, mc_samples: Optional[int] = None) -> torch.Tensor:
        """(log density, uncertainty) per input; ``seed`` draws the dropout masks, ``mc_samples`` passes (default:
        the option)."""
        features, logits = penultimate(env.victim, x)
        density = self._log_density(features, logits.argmax(dim=1))
        uncertainty = self._uncertainty(env.victim, x, seed, mc_samples)
        return torch.stack([density, uncertainty], dim=1)

    @staticmethod
    def _score_seed(ctx: RunContext) -> int:
        return ctx.derive_seed("kd-bu", "mc dropout")

    def draw_score(self, env: DetectorEnv, x: torch.Tensor, seed: int, mc_samples: Optional[int] = None) -> torch.Tensor:
        """The score with one MC-dropout draw seeded by ``seed``, differentiable in x."""
        return differentiable_adversarial(self._model, self._features(env, x, seed, mc_samples))

    def attack_score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        require_fitted(self, "_model")
        # the batch's content picks the masks: a new iterate, new masks (no state kept on the fitted detector)
        content = round(float(x.detach().double().sum()), 6)
        return self.draw_score(env, x, ctx.derive_seed("kd-bu", "eot", content), self.attack_mc_samples)

    # -- fit / score ----------------------------------------------------------------------------------------
    def fit(self, env: DetectorEnv, benign_x: torch.Tensor, adversarial_x: torch.Tensor, ctx: RunContext) -> None:
        o = self.options
        idx = subsample(len(env.train_x), o.max_train, ctx.generator("kd-bu", "train subsample"))
        train_features = map_batches(lambda b: penultimate(env.victim, b)[0], env.train_x[idx], ctx,
                                     "kd-bu: training features").double()
        train_y = env.train_y[idx]
        self._class_features = []
        for c in range(env.num_classes):
            members = train_features[train_y == c]
            # a class absent from the subsample falls back to every training feature (never -inf)
            self._class_features.append((members if len(members) else train_features).float())
        self._bandwidth = o.bandwidth or self._median_distance(ctx)
        seed = self._score_seed(ctx)
        fb = map_batches(lambda b: self._features(env, b, seed), benign_x, ctx, "kd-bu: benign features")
        fa = map_batches(lambda b: self._features(env, b, seed), adversarial_x, ctx, "kd-bu: adversarial features")
        self._model = fit_logistic(fb, fa, c=o.c)
        self.threshold = benign_threshold(predict_adversarial(self._model, fb), o.fpr)

    def _median_distance(self, ctx: RunContext, per_class: int = 200) -> float:
        gen = ctx.generator("kd-bu", "bandwidth")
        distances = []
        for members in self._class_features:
            if len(members) < 2:
                continue
            pick = members[subsample(len(members), per_class, gen)]
            distances.append(torch.pdist(pick.double()))
        median = torch.cat(distances).median().item() if distances else 0.0
        return median if median > 0 else 1.0

    def score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> DetectorOutput:
        require_fitted(self, "_model", "threshold")
        with torch.no_grad():
            features = self._features(env, x, self._score_seed(ctx))
        prob = predict_adversarial(self._model, features, x.device)
        return DetectorOutput(score=prob, flag=prob > self.threshold)
