"""Conformance tests for the built-in interpreters, driven by one table (ROWS), plus LAN- and Grad-CAM-specific
checks. The victim is a tiny CNN trained here for a second on sklearn's digits (8x8, tinted to 3 channels so
per-channel and one-channel masks can be told apart); it does not depend on the victim plugins."""

from __future__ import annotations

import io
import re
import typing

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from advbench.api import Interpreter, Options, RunContext
from advbench.errors import AdvbenchError
from advbench.plugins import lookup

C, H, W, K = 3, 8, 8, 10
TINT = (1.0, 0.8, 0.6)

# (interpreter, options, mask channels: 1 or "C") -- every conformance test runs over every row.
ROWS = [
    ("gradient", {}, 1),
    ("gradient", {"percentile": 100}, 1),
    ("smoothgrad", {"n_samples": 4}, 1),
    ("integrated-gradients", {"steps": 4}, 1),
    ("integrated-gradients", {"steps": 4, "baseline": "mean"}, 1),
    ("gradcam", {}, 1),
    ("gradcam", {"layer": "conv1"}, 1),
    ("lan", {"width": 64, "epochs": 1}, "C"),
    ("lan", {"width": 32, "epochs": 1, "shared_channels": True, "loss": "kl", "output": "mask"}, 1),
    ("lan", {"arch": "conv", "conv_width": 8, "epochs": 1, "noise": "uniform", "loss": "mse",
             "shared_channels": True, "output": "masked_image"}, "C"),
    ("lan-per-sample", {"steps": 8}, "C"),
    ("lan-per-sample", {"steps": 4, "noise": "blur", "shared_channels": True, "output": "mask"}, 1),
    ("lan-per-sample", {"steps": 4, "noise": "constant", "noise_value": 0.5, "loss": "kl"}, "C"),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(ROWS)]


class Normalize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TinyCNN(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.norm = Normalize(mean, std)
        self.conv0 = nn.Conv2d(C, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 4 * 4, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.conv0(self.norm(x)))
        z = nn.functional.max_pool2d(torch.relu(self.conv1(z)), 2)
        return self.head(z.flatten(1))


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x1 = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.cat([x1 * t for t in TINT], dim=1)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="module")
def victim(digits):
    train_x, train_y, test_x, test_y = digits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyCNN(train_x.mean(dim=(0, 2, 3)), train_x.std(dim=(0, 2, 3)))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
        for _ in range(40):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(train_x), train_y).backward()
            optimizer.step()
    freeze(model)
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy > 0.85, accuracy
    return model


def make_ctx(seed: int = 123, device: str = "cpu") -> RunContext:
    return RunContext(device=torch.device(device), batch_size=64, seed=seed)


@pytest.fixture(scope="module")
def prepared(digits, victim):
    """row index -> (interpreter, fitted state or None), built and fitted once."""
    train_x, train_y, _, _ = digits
    cache: dict[int, tuple[Interpreter, typing.Optional[nn.Module]]] = {}

    def get(i: int):
        if i not in cache:
            name, options, _ = ROWS[i]
            interp = lookup("interpreter", name).cls(**options)
            state = interp.build((C, H, W), K)
            if state is not None:
                interp.fit(state, victim, train_x[:512], train_y[:512], make_ctx())
            cache[i] = (interp, state)
        return cache[i]

    return get


@pytest.fixture(scope="module")
def batch(digits):
    return digits[2][:4]


@pytest.mark.parametrize("i", range(len(ROWS)), ids=IDS)
def test_shape_range_dtype(i, prepared, victim, batch):
    interp, state = prepared(i)
    masks = interp.explain(state, victim, batch, make_ctx())
    channels = C if ROWS[i][2] == "C" else 1
    assert masks.shape == (len(batch), channels, H, W)
    assert masks.dtype == torch.float32
    assert torch.isfinite(masks).all()
    assert masks.min() >= 0 and masks.max() <= 1
    assert masks.max() > 0  # not a degenerate all-zero map
    assert not masks.requires_grad


@pytest.mark.parametrize("i", range(len(ROWS)), ids=IDS)
def test_deterministic_for_a_seed(i, prepared, victim, batch):
    interp, state = prepared(i)
    first = interp.explain(state, victim, batch, make_ctx(seed=7))
    second = interp.explain(state, victim, batch, make_ctx(seed=7))
    assert torch.equal(first, second)


@pytest.mark.parametrize("i", range(len(ROWS)), ids=IDS)
def test_batch_independence(i, prepared, victim, batch):
    interp, state = prepared(i)
    together = interp.explain(state, victim, batch, make_ctx())
    alone = torch.cat([interp.explain(state, victim, batch[j:j + 1], make_ctx()) for j in range(len(batch))])
    reordered = interp.explain(state, victim, batch.flip(0), make_ctx()).flip(0)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(together, reordered, atol=1e-4, rtol=0)


@pytest.mark.parametrize("i", range(len(ROWS)), ids=IDS)
def test_global_rng_untouched_and_no_grad_ok(i, digits, victim, batch):
    name, options, _ = ROWS[i]
    before = torch.get_rng_state()
    interp = lookup("interpreter", name).cls(**options)
    state = interp.build((C, H, W), K)
    if state is not None:
        interp.fit(state, victim, digits[0][:128], digits[1][:128], make_ctx())
    with torch.no_grad():  # the harness may call explain inside no_grad
        masks = interp.explain(state, victim, batch, make_ctx())
    assert torch.equal(before, torch.get_rng_state())
    assert masks.shape[0] == len(batch)
    assert all(not p.requires_grad for p in victim.parameters())


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no cuda"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("i", range(len(ROWS)), ids=IDS)
def test_runs_on_device(i, device, digits, victim, batch):
    name, options, expected = ROWS[i]
    model = freeze(TinyCNN(torch.zeros(C), torch.ones(C)))
    model.load_state_dict(victim.state_dict())
    model.to(device)
    ctx = make_ctx(device=device)
    interp = lookup("interpreter", name).cls(**options)
    state = interp.build((C, H, W), K)
    if state is not None:
        interp.fit(state, model, digits[0][:128], digits[1][:128], ctx)
    masks = interp.explain(state, model, batch.to(device), ctx)
    assert masks.device.type == device
    assert masks.shape == (len(batch), C if expected == "C" else 1, H, W)
    assert masks.min() >= 0 and masks.max() <= 1
    assert torch.equal(masks, interp.explain(state, model, batch.to(device), ctx))


def _bounded(annotation: object, field: object) -> bool:
    metadata = getattr(field, "metadata", [])
    keys = {type(m).__name__ for m in metadata}
    return bool(keys & {"Ge", "Gt", "Interval"}) and bool(keys & {"Le", "Lt", "Interval"})


@pytest.mark.parametrize("name", sorted({row[0] for row in ROWS}))
def test_metadata_and_bounded_options(name):
    cls = lookup("interpreter", name).cls
    assert issubclass(cls, Interpreter) and cls.name == name
    assert cls.description and "\n" not in cls.description
    assert cls.revision == "1"
    assert issubclass(cls.Options, Options) and cls.Options is not Options
    assert cls.__doc__ and re.search(r"\b20[01]\d\b", cls.__doc__) and '"' in cls.__doc__  # names the paper
    for field_name, field in cls.Options.model_fields.items():
        base = typing.get_origin(field.annotation)
        args = typing.get_args(field.annotation)
        numeric = field.annotation in (int, float) or (base is typing.Union and (int in args or float in args))
        if numeric:
            assert _bounded(field.annotation, field), f"{name}.{field_name} has no ge/le bounds"
    with pytest.raises(ValidationError):
        cls.Options(no_such_option=1)


def test_option_bounds_are_enforced():
    lan = lookup("interpreter", "lan").cls
    for bad in ({"width": 8}, {"width": 5000}, {"depth": 1}, {"depth": 7}, {"arch": "rnn"}, {"output": "x"}):
        with pytest.raises(ValidationError):
            lan.Options(**bad)
    assert lan.Options().output == "importance" and lan.Options().noise == "bootstrap"
    assert lookup("interpreter", "lan-per-sample").cls.Options().noise == "uniform"


def test_lan_learns_and_masks_cluster_by_class(digits, victim):
    train_x, train_y, test_x, test_y = digits
    interp = lookup("interpreter", "lan").cls(width=128, epochs=3, batch_size=64)
    state = interp.build((C, H, W), K)
    interp.fit(state, victim, train_x, train_y, make_ctx())
    assert len(interp.history) == 3 and interp.history[-1] < interp.history[0], interp.history

    masks = interp.explain(state, victim, test_x, make_ctx()).flatten(1)
    assert masks.std(dim=0).mean() > 1e-3  # not the same mask for every input
    dist = torch.cdist(masks, masks)
    same = test_y.view(-1, 1) == test_y.view(1, -1)
    off_diagonal = ~torch.eye(len(test_y), dtype=torch.bool)
    intra = dist[same & off_diagonal].mean()
    inter = dist[~same].mean()
    assert intra < 0.9 * inter, (intra.item(), inter.item())


def test_lan_state_dict_roundtrip(prepared, victim, batch):
    i = next(j for j, row in enumerate(ROWS) if row[0] == "lan")
    interp, state = prepared(i)
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    fresh = interp.build((C, H, W), K)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(interp.explain(state, victim, batch, make_ctx()),
                       interp.explain(fresh, victim, batch, make_ctx(seed=999)))


def test_lan_explain_is_differentiable_in_x(prepared, victim, batch):
    i = next(j for j, row in enumerate(ROWS) if row[0] == "lan")
    interp, state = prepared(i)
    x = batch.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(interp.explain(state, victim, x, make_ctx()).sum(), x)
    assert grad.abs().sum() > 0


def test_lan_fit_is_deterministic(digits, victim):
    train_x, train_y = digits[0][:200], digits[1][:200]
    interp = lookup("interpreter", "lan").cls(width=32, epochs=1)
    states = []
    for _ in range(2):
        state = interp.build((C, H, W), K)
        interp.fit(state, victim, train_x, train_y, make_ctx(seed=5))
        states.append(state.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_lan_reports_progress(digits, victim):
    seen = []

    def progress(iterable, description, total):
        seen.append((description, total))
        return iterable

    interp = lookup("interpreter", "lan").cls(width=16, epochs=2, batch_size=50)
    state = interp.build((C, H, W), K)
    ctx = RunContext(batch_size=64, seed=0, progress=progress)
    interp.fit(state, victim, digits[0][:100], digits[1][:100], ctx)
    assert seen == [("train lan", 4)]


def test_gradcam_without_conv_raises(victim, batch):
    mlp = freeze(nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K)))
    gradcam = lookup("interpreter", "gradcam").cls()
    with pytest.raises(AdvbenchError, match="no nn.Conv2d"):
        gradcam.explain(None, mlp, batch, make_ctx())
    with pytest.raises(AdvbenchError, match="no module named 'nope'"):
        lookup("interpreter", "gradcam").cls(layer="nope").explain(None, victim, batch, make_ctx())


def test_integrated_gradients_mean_baseline_needs_fit(victim, batch):
    ig = lookup("interpreter", "integrated-gradients").cls(baseline="mean")
    state = ig.build((C, H, W), K)
    with pytest.raises(AdvbenchError, match="fitted"):
        ig.explain(state, victim, batch, make_ctx())
