"""The built-in detectors, all driven by one table, on a tiny CNN trained on scikit-learn's 8x8 digits.

The world (victim, FGSM examples, a gradient-saliency interpreter and a mask classifier) is built once per
module in a few seconds; nothing here depends on other plugins.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from advbench.api import Detector, DetectorEnv, DetectorOutput, Options, RunContext
from advbench.metrics import detection_metrics
from advbench.plugins import lookup

# (detector name, options): every test below runs over this table. Options keep the tiny world fast and
# use Xu et al.'s MNIST squeezers (1-bit, 2x2 median) for these MNIST-like digits.
ROWS = [
    ("contrastive", {}),
    ("label-only", {}),
    ("feature-squeezing", {"bits": 1, "median_size": 2, "squeezers": ["bit-depth", "median"]}),
    ("kd-bu", {"mc_samples": 8, "max_train": 800}),
    ("lid", {"k": 10, "minibatch": 100}),
    ("mahalanobis", {"max_train": 800}),
    ("dknn", {"max_train": 800}),
]
# MC dropout draws its masks per scored batch, so kd-bu's scores depend on how inputs are batched.
BATCH_DEPENDENT = {"kd-bu"}
# The paper each detector's docstring must name.
PAPER = {"contrastive": "Nguyen", "label-only": "Nguyen", "feature-squeezing": "Xu", "kd-bu": "Feinman",
         "lid": "Ma", "mahalanobis": "Lee", "dknn": "Papernot"}
# AUROC floor on FGSM. label-only sees nothing but the predicted label: in this world even a regression fitted
# on the evaluation pairs themselves reaches only ~0.63 (FGSM's labels pile up on a few classes, but not
# many), and the held-out fit lands between 0.60 and 0.66 across training seeds; its floor says "above chance".
AUROC_FLOOR = {"label-only": 0.55}
LEARNING = [row for row in ROWS if row[0] != "contrastive"]
IDS = [name for name, _ in ROWS]
EPS = 0.3


class TinyCnn(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y, reduction="sum"), x)
    return (x + EPS * grad.sign()).clamp(0, 1).detach()


def _saliency(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gradient saliency |d max-logit / dx|, scaled to [0, 1] per image."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).max(dim=1).values.sum(), x)
    sal = grad.abs()
    return sal / sal.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def world():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(x)))
    x, y = x[order], y[order]
    train, fit, ev = slice(0, 1000), slice(1000, 1350), slice(1350, None)
    with torch.random.fork_rng():  # the fixture's own seed; the global state is restored afterwards
        torch.manual_seed(0)
        victim = _train(TinyCnn(), x[train], y[train], epochs=25)
        masks = _saliency(victim, x[train])
        f2 = _train(TinyCnn(), masks, y[train], epochs=25)
    adv_fit, adv_ev = _fgsm(victim, x[fit], y[fit]), _fgsm(victim, x[ev], y[ev])
    with torch.no_grad():
        ok_fit = victim(adv_fit).argmax(1) != y[fit]
        ok_ev = victim(adv_ev).argmax(1) != y[ev]
        accuracy = (victim(x[ev]).argmax(1) == y[ev]).float().mean().item()
    env = DetectorEnv(victim=victim, train_x=x[train], train_y=y[train], num_classes=10,
                      explain=lambda b: _saliency(victim, b), mask_classifier=f2)
    return {"env": env, "accuracy": accuracy, "fit_benign": x[fit], "fit_adv": adv_fit[ok_fit],
            "ev_benign": x[ev], "ev_y": y[ev], "ev_adv": adv_ev[ok_ev]}


def _ctx(seed: int = 7, batch_size: int = 64) -> RunContext:
    return RunContext(device=torch.device("cpu"), batch_size=batch_size, seed=seed)


def _make(name: str, options: dict) -> Detector:
    cls = lookup("detector", name).cls
    return cls(cls.Options(**options))


def _fit(name: str, options: dict, world, seed: int = 7) -> Detector:
    det = _make(name, options)
    det.fit(world["env"], world["fit_benign"], world["fit_adv"], _ctx(seed))
    return det


def _score_all(det: Detector, world, x: torch.Tensor, seed: int = 7, batch_size: int = 64) -> DetectorOutput:
    ctx = _ctx(seed, batch_size)
    outs = [det.score(world["env"], b, ctx) for (b,) in ctx.batches(x)]
    flags = None if outs[0].flag is None else torch.cat([o.flag for o in outs])
    return DetectorOutput(torch.cat([o.score for o in outs]), flags)


@pytest.fixture(scope="module")
def fitted(world):
    return {name: _fit(name, options, world) for name, options in ROWS}


def test_world_is_sane(world):
    assert world["accuracy"] > 0.85
    assert len(world["fit_adv"]) > 100 and len(world["ev_adv"]) > 150


@pytest.mark.parametrize("name,options", ROWS, ids=IDS)
def test_registered_with_metadata(name, options):
    cls = lookup("detector", name).cls
    # kd-bu 2: float32 density and uncertainty (scores moved by ~2e-6); 3: the paper's bandwidth and 50 passes;
    # feature-squeezing 2: non-local means among the default squeezers; lid 2, mahalanobis 2: the papers' layers
    # and regressions (issue 13)
    revisions = {"kd-bu": "3", "feature-squeezing": "2", "lid": "2", "mahalanobis": "2"}
    assert issubclass(cls, Detector) and cls.name == name and cls.revision == revisions.get(name, "1")
    assert cls.description and "\n" not in cls.description
    assert issubclass(cls.Options, Options) and cls.__doc__ and PAPER[name] in cls.__doc__
    assert cls.needs_interpreter == (name == "contrastive")
    assert cls.needs_adversarial_fit == (name in {"label-only", "kd-bu", "lid", "mahalanobis"})
    with pytest.raises(Exception):
        cls.Options(no_such_option=1)


@pytest.mark.parametrize("name,options", ROWS, ids=IDS)
def test_output_contract(name, options, world, fitted):
    det = fitted[name]
    x = world["ev_benign"][:37]
    out = det.score(world["env"], x, _ctx())
    assert isinstance(out, DetectorOutput)
    assert out.score.shape == (37,) and out.score.dtype.is_floating_point and torch.isfinite(out.score).all()
    assert out.flag is not None and out.flag.shape == (37,) and out.flag.dtype == torch.bool
    assert not any(m.training for m in world["env"].victim.modules())  # eval mode restored (kd-bu's dropout)


@pytest.mark.parametrize("name,options", ROWS, ids=IDS)
def test_deterministic_and_global_rng_untouched(name, options, world, fitted):
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    det = _fit(name, options, world)  # a second, fresh fit under the same seed
    again = det.score(world["env"], world["ev_adv"][:50], _ctx())
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    first = fitted[name].score(world["env"], world["ev_adv"][:50], _ctx())
    assert torch.equal(first.score, again.score) and torch.equal(first.flag, again.flag)


@pytest.mark.parametrize("name,options", ROWS, ids=IDS)
def test_batches(name, options, world, fitted):
    det, x = fitted[name], world["ev_benign"]
    small = _score_all(det, world, x, batch_size=33)
    assert small.score.shape == (len(x),) and small.flag.shape == (len(x),)
    if name not in BATCH_DEPENDENT:
        whole = det.score(world["env"], x, _ctx())
        torch.testing.assert_close(small.score, whole.score, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,options", ROWS, ids=IDS)
def test_fitted_detector_pickles(name, options, world, fitted):
    det = fitted[name]
    x = world["ev_adv"][:20]
    copy = pickle.loads(pickle.dumps(det))  # an executor may ship a fitted detector to another process
    torch.testing.assert_close(copy.score(world["env"], x, _ctx()).score, det.score(world["env"], x, _ctx()).score)


@pytest.mark.parametrize("name,options", LEARNING, ids=[n for n, _ in LEARNING])
def test_detects_fgsm(name, options, world, fitted):
    det = fitted[name]
    benign = _score_all(det, world, world["ev_benign"])
    adversarial = _score_all(det, world, world["ev_adv"])
    m = detection_metrics(benign.score, adversarial.score, benign.flag, adversarial.flag)
    assert m["auroc"] > AUROC_FLOOR.get(name, 0.6), m
    if name in {"feature-squeezing", "mahalanobis", "kd-bu", "dknn"}:  # benign-quantile threshold at fpr 0.05
        assert m["tnr"] > 0.85, m


def test_contrastive_follows_the_papers_rule(world, fitted):
    env, det = world["env"], fitted["contrastive"]
    x = torch.cat([world["ev_benign"], world["ev_adv"]])
    out = _score_all(det, world, x)
    with torch.no_grad():
        f1 = env.victim(x).argmax(1)
        f2 = env.mask_classifier(_saliency(env.victim, x)).argmax(1)
    assert torch.equal(out.flag, f2 != f1)
    assert out.flag.any() and (~out.flag).any()
    assert (out.score >= 0).all() and (out.score <= 1).all()
    assert (out.score[out.flag] > 0).all()  # disagreement means f2 does not put all its mass on f1's label


def test_contrastive_needs_an_interpreter(world):
    env = world["env"]
    bare = DetectorEnv(env.victim, env.train_x, env.train_y, env.num_classes)
    with pytest.raises(ValueError, match="interpreter"):
        _make("contrastive", {}).score(bare, world["ev_benign"][:4], _ctx())


@pytest.mark.parametrize("name,options", [r for r in ROWS if r[0] != "contrastive"], ids=IDS[1:])
def test_score_before_fit_raises(name, options, world):
    with pytest.raises(RuntimeError, match="fitted"):
        _make(name, options).score(world["env"], world["ev_benign"][:4], _ctx())


def test_median_smoothing_matches_scipy():
    from scipy import ndimage

    from advbench_detectors.feature_squeezing import median_smooth

    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    for size in (2, 3):
        expected = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
        assert np.array_equal(median_smooth(x, size).numpy(), expected)


def test_kd_bu_without_dropout_has_zero_uncertainty(world):
    from advbench_detectors.kd_bu import KdBu

    victim = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    unc = KdBu()._uncertainty(victim, world["ev_benign"][:5], seed=1)
    assert torch.equal(unc, torch.zeros(5, dtype=torch.float64))


def test_mahalanobis_input_preprocessing(world):
    det = _fit("mahalanobis", {"max_train": 800, "noise": 0.01, "layers": "penultimate"}, world)
    x = world["ev_adv"][:30]
    out = det.score(world["env"], x, _ctx())
    assert torch.isfinite(out.score).all()
    # the step moves toward the closest class, so distances shrink on the whole
    plain = _fit("mahalanobis", {"max_train": 800, "layers": "penultimate"}, world).score(world["env"], x, _ctx())
    assert out.score.mean() < plain.score.mean()


def test_lid_takes_every_layer_or_the_deepest(world):
    x = world["ev_benign"][:5]
    det = _fit("lid", {"k": 10, "minibatch": 50, "pool": 80, "max_layers": 1}, world)
    assert [a.shape for a in det._activations(world["env"].victim, x)] == [(5, 10)]  # the logits only
    assert det._lids(world["env"].victim, x).shape == (5, 1)
    det = _fit("lid", {"k": 10, "minibatch": 50, "pool": 80}, world)
    # the input, then Conv, ReLU, MaxPool, Linear, ReLU, Linear (Flatten and Dropout repeat their input: skipped)
    widths = [a.shape[1] for a in det._activations(world["env"].victim, x)]
    assert widths == [64, 16 * 8 * 8, 16 * 8 * 8, 16 * 4 * 4, 64, 64, 10]
    assert det._lids(world["env"].victim, x).shape == (5, 7)
