"""Every built-in plugin of every kind through advbench.testing, the kit a third-party plugin runs too; and
deliberately broken plugins, to show the kit fails each of them with a message naming the check.

Slow plugins are checked with small options (an instance carries them), so the whole file stays well under a
minute on one core; cifar10 reads a tiny image-folder tree made here."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from advbench import api, plugins
from advbench.testing import CHECKS, check_plugin, parametrize_plugin_checks, plugin_checks

# options that keep the slow built-ins to a fraction of a second each; every other class runs with its defaults
SMALL = {
    ("interpreter", "lan"): {"epochs": 1, "width": 64},
    ("interpreter", "lan-per-sample"): {"steps": 4},
    ("attack", "cw"): {"binary_search_steps": 1, "steps": 5},
    ("attack", "opgd"): {"steps": 10},
    ("attack", "joint-pgd"): {"steps": 10, "search_steps": 2},
    ("victim", "alexnet"): {"epochs": 1},
    ("victim", "vgg-like"): {"epochs": 1},
    ("victim", "review-cnn"): {"epochs": 1},
    ("victim", "small-cnn"): {"epochs": 2},
    ("victim", "lenet"): {"epochs": 2},
    ("executor", "processes"): {"workers": 2},
    ("executor", "ray"): {"num_cpus": 1, "warm_workers": False},
}
# cifar10's path must be known when the tests are collected; the module fixture writes the tree and removes it
CIFAR_TREE = Path(tempfile.gettempdir()) / f"advbench-conformance-cifar10-{os.getpid()}"


def _builtin(reg: plugins.Registration):
    if reg.kind == "dataset" and reg.name == "cifar10":
        return reg.cls(path=str(CIFAR_TREE))
    options = SMALL.get((reg.kind, reg.name))
    return reg.cls(**options) if options is not None else reg.cls


BUILTINS = [_builtin(reg) for reg in plugins.components() if reg.distribution == "advbench"]
SKIP = {} if importlib.util.find_spec("ray") else {"executor:ray:runs-nodes": "ray is not installed"}


def _write_cifar_tree(root: Path) -> None:
    """train/<class>/*.png and test/<class>/*.png: three classes, 32 x 32 RGB, a few seeded images each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for name in ("airplane", "bird", "cat"):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """A private cache (cifar10 keeps its decoded copy there), the tiny cifar tree, one torch thread."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ADVBENCH_CACHE", str(tmp_path_factory.mktemp("conformance-cache")))
    _write_cifar_tree(CIFAR_TREE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        mp.undo()
        shutil.rmtree(CIFAR_TREE, ignore_errors=True)


@parametrize_plugin_checks(*BUILTINS, skip=SKIP)
def test_builtin_plugin_conforms(plugin, check):
    check()


def test_every_kind_and_every_builtin_is_covered():
    kinds = {plugin.kind for plugin in BUILTINS}
    assert kinds == set(api.KINDS) == set(CHECKS)
    names = {(p.kind, p.name) for p in BUILTINS}
    assert names == {(r.kind, r.name) for r in plugins.components() if r.distribution == "advbench"}


# ------------------------------------------------------------------------------- broken plugins fail the kit


class _Gray(api.Interpreter):
    """A sound baseline the broken interpreters below spoil one way each: the channel mean as the mask."""

    name = "kit-broken"
    description = "a deliberately broken interpreter"

    def explain(self, state, victim, x, ctx):
        return x.mean(dim=1, keepdim=True)


class WrongShape(_Gray):
    def explain(self, state, victim, x, ctx):
        return torch.zeros(len(x), 3, 4, 4)  # N x 3 x 4 x 4 for a 16 x 16 input


class NanMasks(_Gray):
    def explain(self, state, victim, x, ctx):
        masks = super().explain(state, victim, x, ctx).clone()
        masks[:, :, 0, 0] = float("nan")
        return masks


class OutOfRange(_Gray):
    def explain(self, state, victim, x, ctx):
        return super().explain(state, victim, x, ctx) * 3 - 1


class TouchesGlobalRng(_Gray):
    def explain(self, state, victim, x, ctx):
        return (super().explain(state, victim, x, ctx) + 0.01 * torch.rand(x.shape[0], 1, 1, 1)).clamp(0, 1)


class Reseeds(_Gray):
    def build(self, input_shape, num_classes):
        return nn.Linear(1, 1)

    def fit(self, state, victim, train_x, train_y, ctx):
        torch.manual_seed(0)  # hidden in fit, where the harness's forked RNG would mask it


class Prints(_Gray):
    def explain(self, state, victim, x, ctx):
        print("explaining", len(x), "images")
        return super().explain(state, victim, x, ctx)


class Nondeterministic(_Gray):
    calls = [0]

    def explain(self, state, victim, x, ctx):
        self.calls[0] += 1
        return super().explain(state, victim, x, ctx) * (0.5 if self.calls[0] % 2 else 1.0)


class BatchDependent(_Gray):
    def explain(self, state, victim, x, ctx):
        masks = super().explain(state, victim, x, ctx)
        return masks / masks.amax().clamp_min(1e-12)  # scaled over the whole batch, not per image


class MultiLine(_Gray):
    description = "two\nlines"


class LooseOptions(_Gray):
    class Options(api.Options):
        model_config = {"extra": "ignore", "frozen": True}
        gamma: float = 1.0


class NoDefault(_Gray):
    class Options(api.Options):
        gamma: float


class ShrinkingAttack(api.Attack):
    name = "kit-shrinks"
    description = "a deliberately broken attack"
    norm = "linf"

    def run(self, model, x, y, ctx):
        return x[:, :, ::2, ::2]


class NanAttack(ShrinkingAttack):
    def run(self, model, x, y, ctx):
        return x * float("nan")


class UnclippedAttack(ShrinkingAttack):
    """Returns images outside [0, 1]: allowed, the attack template clips and projects every attack's output."""

    def run(self, model, x, y, ctx):
        assert ctx.threat is not None and ctx.threat.norm == "linf"  # run sees the threat model it runs under
        return x + 0.5


class PerBatchNoiseAttack(ShrinkingAttack):
    """Noise drawn for the whole batch from one generator: an image's draw depends on its place in the batch."""

    def run(self, model, x, y, ctx):
        return x + 0.05 * torch.randn(x.shape, generator=ctx.generator("noise")).to(x.device)


class DeclaredPerBatchNoiseAttack(PerBatchNoiseAttack):
    batch_dependent = True


class NoNorm(ShrinkingAttack):
    norm = "l3"

    def run(self, model, x, y, ctx):
        return x


class TwoDScores(api.Detector):
    name = "kit-2d"
    description = "a deliberately broken detector"

    def score(self, env, x, ctx):
        return api.DetectorOutput(score=torch.zeros(len(x), 2))


class IntFlags(TwoDScores):
    def score(self, env, x, ctx):
        return api.DetectorOutput(score=torch.zeros(len(x)), flag=torch.zeros(len(x), dtype=torch.int64))


class TrainsTheVictim(TwoDScores):
    def score(self, env, x, ctx):
        env.victim.train()
        return api.DetectorOutput(score=torch.zeros(len(x)))


class WrongLogits(api.Victim):
    name = "kit-logits"
    description = "a deliberately broken victim"

    def build(self, input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes + 1))

    def fit(self, model, train_x, train_y, ctx):
        pass


class UnscaledData(api.Dataset):
    name = "kit-0-255"
    description = "a deliberately broken dataset"

    def load(self, ctx):
        x = torch.full((4, 1, 8, 8), 255.0)
        y = torch.zeros(4, dtype=torch.int64)
        return api.DataSplits(x, y, x, y, ["zero"])


class DropsNodes(api.Executor):
    name = "kit-drops"
    description = "a deliberately broken executor"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.queue = []

    def submit(self, fn, node):
        self.queue.append((fn, node))

    def wait(self, timeout=None):
        out = []
        for fn, node in self.queue:
            try:
                out.append((node, fn(node, lambda event: None)))
            except Exception as exc:  # noqa: BLE001
                out.append((node, exc))
        self.queue = self.queue[:1]  # the first node comes back again and again
        return out


BROKEN = [
    (WrongShape, "masks", "masks have shape (8, 3, 4, 4) for input (8, 3, 16, 16)"),
    (NanMasks, "masks", "non-finite values"),
    (OutOfRange, "masks", "outside [0, 1]"),
    (TouchesGlobalRng, "global-rng", "changed the global random state of torch"),
    (Reseeds, "global-rng", "reseeds the global random generator of torch"),
    (Prints, "silent", "printed to stdout ('explaining 4 images')"),
    (Nondeterministic, "deterministic", "differ between two runs with the same seed"),
    (BatchDependent, "batch-independent", "depends on the batch it comes in"),
    (MultiLine, "registration", "description must be one line"),
    (LooseOptions, "options", "accepts an unknown key"),
    (NoDefault, "options", "every option needs a default"),
    (ShrinkingAttack, "output", "run returned shape (8, 3, 8, 8) for input (8, 3, 16, 16)"),
    (NanAttack, "output", "non-finite values"),
    (PerBatchNoiseAttack, "batch-independent", "declare batch_dependent = True"),
    (NoNorm, "registration", "attack norm 'l3'"),
    (TwoDScores, "output", "score has shape (8, 2) for 8 inputs; expected a 1-D tensor"),
    (IntFlags, "output", "flag has dtype torch.int64"),
    (TrainsTheVictim, "output", "train/eval mode"),
    (WrongLogits, "build", "expected N x classes = 8 x 4 logits"),
    (UnscaledData, "splits", "outside [0, 1]"),
    (DropsNodes, "runs-nodes", "more results after every node came back"),
]


@pytest.mark.parametrize("cls, check_name, fragment", BROKEN, ids=[c.__name__ for c, _, _ in BROKEN])
def test_the_kit_fails_a_broken_plugin_naming_the_check(cls, check_name, fragment):
    (check,) = [check for name, check in plugin_checks(cls) if name == check_name]
    with pytest.raises(AssertionError) as failure:
        check()
    message = str(failure.value)
    assert f"failed check {check_name!r}" in message, message
    assert fragment in message, message
    assert f"{cls.kind} {cls.name!r}" in message
    with pytest.raises(AssertionError, match="failed check"):
        check_plugin(cls)  # the whole kit stops at the first failing check


def test_an_attack_that_declares_it_may_depend_on_its_batch():
    (check,) = [check for name, check in plugin_checks(DeclaredPerBatchNoiseAttack) if name == "batch-independent"]
    check()


def test_an_attack_need_not_clip_its_output():
    (check,) = [check for name, check in plugin_checks(UnclippedAttack) if name == "output"]
    check()


def test_plugin_checks_yields_the_kind_s_checks_and_each_names_itself():
    names = [name for name, _ in plugin_checks(WrongShape)]
    assert names == [name for name, _ in CHECKS["interpreter"]]
    results = {}
    for name, check in plugin_checks(WrongShape):
        try:
            check()
            results[name] = "ok"
        except AssertionError as exc:
            results[name] = str(exc)
    assert results["registration"] == results["options"] == results["deterministic"] == "ok"
    assert "failed check 'masks'" in results["masks"]


def test_a_plugin_that_raises_fails_the_check_with_the_exception_named():
    class Raises(_Gray):
        def explain(self, state, victim, x, ctx):
            raise ValueError("no gradients here")

    with pytest.raises(AssertionError, match=r"failed check 'masks': it raised ValueError: no gradients here"):
        check_plugin(Raises)


def test_the_kit_refuses_what_is_not_a_plugin():
    with pytest.raises(TypeError, match="neither a plugin class"):
        check_plugin(object)
