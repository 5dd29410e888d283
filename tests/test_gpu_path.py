"""The GPU path of the built-in plugins (issue 15, item 4), checked on the CPU.

Two kinds of test: the CPU path is the reference and must not move (the plugin against the code it replaced,
compared with ``torch.equal``), and each accelerator-only code path is forced on the CPU (tensor ops give the
same integers on any device) to show it keeps the properties the CPU path has.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from advbench.api import RunContext
from advbench.plugins import lookup
from advbench_interpreters._common import SampleNoise, device_digests, mix32, per_sample_noise, sample_generators

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def images():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x1 = torch.tensor(digits.images[:96], dtype=torch.float32).unsqueeze(1) / 16.0
    return torch.cat([x1, 0.8 * x1, 0.6 * x1], dim=1), torch.tensor(digits.target[:96])


@pytest.fixture(scope="module")
def victim(images):
    x, y = images
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(8 * 16, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(30):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def ctx(seed: int = 5) -> RunContext:
    return RunContext(device=torch.device("cpu"), batch_size=32, seed=seed)


# ---------------------------------------------------------------------- per-sample noise


def test_cpu_noise_is_the_per_sample_generators_bit_for_bit(images):
    x = images[0][:8]
    noise = SampleNoise(ctx(), x, "salt")
    gens = sample_generators(ctx(), x, "salt")
    for shape, kind in [((3, 8, 8), "uniform"), ((3, 8, 8), "uniform"), ((2, 3, 8, 8), "normal")]:
        assert torch.equal(noise.draw(shape, kind), per_sample_noise(gens, shape, kind, x.device))


def test_mix32_is_a_32_bit_bijection_on_a_sample():
    values = torch.randint(0, 1 << 32, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    mixed = mix32(values)
    assert int(mixed.min()) >= 0 and int(mixed.max()) < (1 << 32)
    assert len(mixed.unique()) == len(values.unique())
    # the reference lowbias32, in plain Python integers
    def ref(v: int) -> int:
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)
    assert mixed[:64].tolist() == [ref(v) for v in values[:64].tolist()]


def test_device_digests_see_content_and_position_not_the_batch(images):
    x = images[0][:16]
    d = device_digests(x)
    assert torch.equal(d[3], device_digests(x[3:4])[0])
    assert torch.equal(d, device_digests(x.flip(0)).flip(0))
    assert len({tuple(row) for row in d.tolist()}) == len({tuple(s.flatten().tolist()) for s in x})
    swapped = x[0].clone()
    flat = swapped.view(-1)
    i, j = int(flat.argmax()), int(flat.argmin())
    flat[i], flat[j] = flat[j].clone(), flat[i].clone()
    assert not torch.equal(device_digests(swapped[None])[0], d[0])


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_device_noise_is_seeded_per_sample_and_per_draw(images, kind):
    x = images[0][:12]
    a, b = SampleNoise(ctx(), x, "s", on_device=True), SampleNoise(ctx(), x, "s", on_device=True)
    first = a.draw((3, 8, 8), kind)
    assert torch.equal(first, b.draw((3, 8, 8), kind))                       # same seed, same draws
    assert not torch.equal(first, a.draw((3, 8, 8), kind))                   # the next draw is new
    alone = SampleNoise(ctx(), x[5:6], "s", on_device=True).draw((3, 8, 8), kind)
    assert torch.equal(alone[0], first[5])                                   # batch independent
    assert not torch.equal(first, SampleNoise(ctx(6), x, "s", on_device=True).draw((3, 8, 8), kind))
    assert not torch.equal(first, SampleNoise(ctx(), x, "t", on_device=True).draw((3, 8, 8), kind))
    assert first.dtype == torch.float32 and first.shape == (12, 3, 8, 8)


def test_device_noise_has_the_right_distribution(images):
    x = images[0][:32]
    u = SampleNoise(ctx(), x, "u", on_device=True).draw((64, 64), "uniform")
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    z = SampleNoise(ctx(), x, "z", on_device=True).draw((64, 64), "normal")
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1.0) < 0.01
    assert torch.isfinite(z).all()
    # neighbouring elements and samples are not correlated
    flat = u.reshape(32, -1) - 0.5
    assert abs(float((flat[:, 1:] * flat[:, :-1]).mean())) < 0.002
    assert abs(float((flat[1:] * flat[:-1]).mean())) < 0.002


@pytest.mark.parametrize("name,options", [("lan-per-sample", {"steps": 4}), ("smoothgrad", {"n_samples": 4})])
def test_device_noise_path_keeps_explain_batch_independent(name, options, images, victim, monkeypatch):
    module = __import__(f"advbench_interpreters.{name.replace('-', '_')}", fromlist=["SampleNoise"])
    monkeypatch.setattr(module, "SampleNoise", functools.partial(SampleNoise, on_device=True))
    interp = lookup("interpreter", name).cls(**options)
    x = images[0][:8]
    masks = interp.explain(None, victim, x, ctx())
    assert torch.equal(masks, interp.explain(None, victim, x, ctx()))
    # alone, the convolutions round differently in the last bits (as on the CPU path); the noise is the same
    torch.testing.assert_close(masks[2:3], interp.explain(None, victim, x[2:3], ctx()), atol=1e-4, rtol=0)
    other_seed = interp.explain(None, victim, x, ctx(6))
    assert (masks - other_seed).abs().max() > 1e-2
    monkeypatch.undo()
    assert (masks - interp.explain(None, victim, x, ctx())).abs().max() > 1e-2  # the CPU path has its own numbers


# ---------------------------------------------------------------------- victim training


def _augment_reference(x: torch.Tensor, generator: torch.Generator, flip: bool = True, pad: int = 4) -> torch.Tensor:
    """The per-image loop augment_batch replaced (host lists of offsets), kept as the CPU reference."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        out[mirror] = out[mirror].flip(-1)
    return out


@pytest.mark.parametrize("flip", [True, False])
def test_augment_batch_is_the_old_loop_bit_for_bit(images, flip):
    from advbench_victims._training import augment_batch

    x = images[0][:40]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):  # the generator advances the same way too
        assert torch.equal(augment_batch(x, g1, flip=flip), _augment_reference(x, g2, flip=flip))
    assert torch.equal(g1.get_state(), g2.get_state())


class MemoryStore:
    def __init__(self, state=None, stop_after=None):
        self.state, self.saved, self.stop_after = state, [], stop_after

    def save(self, state):
        self.saved.append({k: v for k, v in state.items()})
        if self.stop_after is not None and state["epoch"] >= self.stop_after:
            raise KeyboardInterrupt

    def load(self):
        return self.state


def _fit(images, store=None, **options):
    victim = lookup("victim", "small-cnn").cls(epochs=3, width=8, augment=True, **options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = victim.build((3, 8, 8), 10)
        ctx = RunContext(device=torch.device("cpu"), batch_size=32, seed=2, checkpoint=store)
        victim.fit(model, images[0], images[1], ctx)
    return model.state_dict()


def test_amp_is_ignored_on_the_cpu_and_left_out_of_the_key_when_off(images, caplog):
    options = lookup("victim", "small-cnn").cls.Options
    assert "amp" not in options().model_dump(mode="json")
    assert options(amp="bf16").model_dump(mode="json")["amp"] == "bf16"
    plain = _fit(images)
    with caplog.at_level("INFO", logger="advbench.victims"):
        amp = _fit(images, amp="bf16")
    assert all(torch.equal(plain[k], amp[k]) for k in plain)
    assert sum("CUDA only" in r.getMessage() for r in caplog.records) <= 1


def test_training_resumes_from_a_saved_epoch_to_the_same_weights(images):
    full = _fit(images)
    store = MemoryStore(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        _fit(images, store)
    resumed = _fit(images, MemoryStore(state=store.saved[-1]))
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_normalize_keeps_the_cpu_layout(images):
    from advbench_victims._training import Normalize

    out = Normalize(3)(images[0][:4])
    assert out.is_contiguous() and torch.equal(out, images[0][:4])


# ---------------------------------------------------------------------- JSMA's stopping test


def test_jsma_stops_when_every_image_reached_its_target(images, victim):
    x = images[0][:16]
    with torch.no_grad():
        predicted = victim(x).argmax(1)
    attack = lookup("attack", "jsma").cls()
    out = attack.run(victim, x, (predicted + 1) % 10, ctx(), target=predicted)
    assert torch.equal(out, x)
