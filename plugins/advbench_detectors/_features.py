"""Helpers shared by the built-in detectors: feature hooks, batching, thresholds, logistic regression."""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from advbench.api import RunContext

# Activations whose outputs count as "a layer" for layer-wise detectors (LID).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.PReLU)


class NotFittedError(RuntimeError):
    """``score`` was called before ``fit``."""


def require_fitted(detector: object, *attributes: str) -> None:
    for attr in attributes:
        if getattr(detector, attr, None) is None:
            raise NotFittedError(f"detector {type(detector).name!r} must be fitted before score()")


class DeviceCache:
    """Mixin: fitted CPU tensors copied once per device for ``score`` (the copies are never pickled)."""

    def on_device(self, key: str, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        if tensor.device == device:
            return tensor
        cache = self.__dict__.setdefault("_device_cache", {})
        hit = cache.get((key, str(device)))
        if hit is None or hit[0] is not tensor:
            hit = cache[(key, str(device))] = (tensor, tensor.to(device))
        return hit[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_device_cache", None)
        return state


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's classification layer: the last ``nn.Linear`` in module registration order."""
    linear = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            linear = module
    if linear is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take penultimate features from")
    return linear


@contextlib.contextmanager
def capture(modules: Sequence[nn.Module], *, inputs: bool = False) -> Iterator[list[torch.Tensor]]:
    """Record each forward call of ``modules`` (its output, or its first input) as N x D tensors, in call order.

    The tensors are flattened and cloned, so in-place activations later in the network cannot change them;
    they keep their autograd graph (detach them where no gradient is wanted).
    """
    store: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        value = args[0] if inputs else output
        store.append(value.flatten(1).clone())

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def penultimate(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits): the input to the model's last ``nn.Linear`` and the model's output for ``x``."""
    with capture([last_linear(model)], inputs=True) as store:
        logits = model(x)
    return store[-1], logits


def map_batches(fn: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]], x: torch.Tensor,
                ctx: RunContext, description: str, *, no_grad: bool = True):
    """Apply ``fn`` to ``x`` (CPU) batch by batch on ``ctx.device``; the outputs are concatenated on the CPU.

    ``fn`` returns a tensor or a tuple of tensors; the result has the same structure.
    """
    outs: list = []
    total = (len(x) + ctx.batch_size - 1) // ctx.batch_size
    for (batch,) in ctx.track(ctx.batches(x), description, total):
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            out = fn(batch)
        outs.append(tuple(t.detach().cpu() for t in out) if isinstance(out, tuple) else out.detach().cpu())
    if not outs:
        raise ValueError(f"{description}: no inputs")
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def subsample(n: int, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of at most ``limit`` of ``n`` items, drawn with ``generator`` (all of them when n <= limit)."""
    if n <= limit:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:limit].sort().values


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


def benign_threshold(benign_scores: torch.Tensor, fpr: float) -> float:
    """The (1 - fpr) quantile of benign scores, taken at a data point, so that flagging ``score > threshold``
    flags at most a share ``fpr`` of these benign inputs."""
    scores = benign_scores.detach().double().cpu().numpy()
    if scores.size == 0:
        raise ValueError("a benign-quantile threshold needs held-out benign inputs; fit() got none")
    return float(np.quantile(scores, 1.0 - fpr, method="higher"))


def fit_logistic(benign_features: torch.Tensor, adversarial_features: torch.Tensor, *,
                 c: Optional[float] = 1.0) -> Pipeline:
    """Standardize, then logistic regression (benign 0, adversarial 1). lbfgs is deterministic: no RNG used.

    ``c`` None: the inverse regularization is chosen by scikit-learn's ``LogisticRegressionCV`` (10 values on a log
    grid, 5 stratified folds taken in order, no shuffling), as Ma et al.'s and Lee et al.'s code do."""
    if len(benign_features) == 0 or len(adversarial_features) == 0:
        raise ValueError("this detector fits a logistic regression on held-out benign AND adversarial inputs; "
                         f"fit() got {len(benign_features)} benign and {len(adversarial_features)} adversarial")
    features = torch.cat([benign_features, adversarial_features]).double().cpu().numpy()
    labels = np.concatenate([np.zeros(len(benign_features)), np.ones(len(adversarial_features))])
    # scoring "accuracy": LogisticRegressionCV's default when the papers' code ran (scikit-learn 1.9 warns it will
    # change); its warning about the layout of its fitted attributes concerns attributes not read here
    regression = (LogisticRegressionCV(max_iter=1000, scoring="accuracy") if c is None
                  else LogisticRegression(C=c, max_iter=1000))
    model = make_pipeline(StandardScaler(), regression)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
        model.fit(features, labels)
    return model


def differentiable_adversarial(model: Pipeline, features: torch.Tensor) -> torch.Tensor:
    """``predict_adversarial`` as torch operations, differentiable in ``features`` (for ``attack_score``): the
    fitted standardization and the binary logistic regression, sigmoid(w . (f - mean) / scale + b), in float64.

    The value is the probability; the gradient is the logit's (straight through the sigmoid). The sigmoid's own
    gradient p(1 - p) vanishes on confidently flagged inputs (underflowing to 0 in float32 past a logit of ~100),
    which would stop an attack exactly where it has work to do: gradient masking, not robustness."""
    scaler, logistic = model[0], model[-1]
    mean, scale, weights = (torch.as_tensor(a, dtype=torch.float64, device=features.device)
                            for a in (scaler.mean_, scaler.scale_, logistic.coef_[0]))
    logit = ((features.double() - mean) / scale) @ weights + float(logistic.intercept_[0])
    probability = torch.sigmoid(logit)
    return (probability + (logit - logit.detach())).float()  # zero added: same values, the logit's gradient


def predict_adversarial(model: Pipeline, features: torch.Tensor, device: Optional[torch.device] = None
                        ) -> torch.Tensor:
    """P(adversarial) from a fitted ``fit_logistic`` model, as a float32 tensor on ``device``."""
    proba = model.predict_proba(features.detach().double().cpu().numpy())[:, 1]
    return torch.as_tensor(proba, dtype=torch.float32, device=device)
