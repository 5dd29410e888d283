"""``advbench new-plugin KIND NAME``: an installable package with one plugin of that kind, a test that runs the
conformance kit (advbench.testing) and a README. The generated package installs and passes its tests as is."""

from __future__ import annotations

import re
from pathlib import Path

from advbench import __version__
from advbench.api import KINDS
from advbench.errors import AdvbenchError

NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "advbench-{name}"
version = "0.1.0"
description = "{summary}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["advbench>={version}", "torch"]

[project.optional-dependencies]
test = ["pytest>=7"]

# the one line that makes it a plugin: advbench loads this module and calls its hook
[project.entry-points.advbench]
{name} = "{package}"

[tool.setuptools]
packages = ["{package}"]
'''

INIT = '''\
"""advbench-{name}: registers the {kind} {name!r} with advbench."""

import advbench

from {package}.{module} import {cls}

__all__ = ["{cls}"]


@advbench.hookimpl
def register_{kind}s(register):
    register({cls})
'''

HEADER = '''\
"""{summary}."""

from __future__ import annotations

'''

BODIES = {
    "interpreter": '''\
import torch
from pydantic import Field

from advbench import api


class {cls}(api.Interpreter):
    """Input-gradient saliency: |d max logit / d x|, the channel maximum, scaled to [0, 1] per image.

    Replace ``explain`` with your method. Masks are N x C' x H x W, C' being 1 or the input's channel count,
    float in [0, 1], on ``ctx.device``. A method with trainable state returns it from ``build`` and trains it in
    ``fit``. Randomness comes from ``ctx.generator(...)``, never the global RNG; nothing is printed.
    """

    name = "{name}"
    description = "Input-gradient saliency |d max logit / dx|, channel max, scaled per image, 1 channel"
    revision = "1"  # bump when a change alters the masks (part of every cache key)

    class Options(api.Options):
        gamma: float = Field(1.0, gt=0.0, le=4.0, description="exponent applied to the scaled map")

    def explain(self, state, victim, x, ctx):
        with torch.enable_grad():  # the harness may call explain inside torch.no_grad()
            x = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(victim(x).max(dim=1).values.sum(), x)
        saliency = grad.abs().amax(dim=1, keepdim=True)
        top = saliency.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (saliency / top).pow(self.options.gamma).clamp(0.0, 1.0).detach()
''',
    "attack": '''\
import torch
import torch.nn.functional as F
from pydantic import Field

from advbench import api


class {cls}(api.Attack):
    """One signed-gradient step of size ``eps`` in l-inf (FGSM-like); replace ``run`` with your attack.

    ``run`` gets one batch on ``ctx.device`` (detached, contiguous, gradients enabled) and returns adversarial
    images of the same shape; the attack template clips them to [0, 1], projects them onto the threat model's
    ball (``ctx.threat``), rounds them onto the data's grid and decides which succeeded.
    """

    name = "{name}"
    description = "One signed-gradient l-inf step of size eps"
    revision = "1"
    norm = "linf"

    class Options(api.Options):
        eps: float = Field(8 / 255, gt=0.0, le=1.0)

    def run(self, model, x, y, ctx):
        x_adv = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        return (x + self.options.eps * grad.sign()).detach()
''',
    "detector": '''\
import torch
from pydantic import Field

from advbench import api


class {cls}(api.Detector):
    """One minus the victim's softmax confidence (a baseline); replace ``score`` (and ``fit``) with yours.

    ``score`` returns a DetectorOutput: one float score per input, higher = more likely adversarial, and
    optionally a bool flag per input.
    """

    name = "{name}"
    description = "One minus the victim's top softmax probability (confidence baseline)"
    revision = "1"

    class Options(api.Options):
        temperature: float = Field(1.0, gt=0.0, le=100.0)

    def score(self, env, x, ctx):
        with torch.no_grad():
            probs = torch.softmax(env.victim(x) / self.options.temperature, dim=1)
        return api.DetectorOutput(score=1.0 - probs.amax(dim=1))
''',
    "victim": '''\
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from advbench import api


class Normalize(nn.Module):
    """Standardization inside the model, so it takes [0, 1] images; ``fit`` sets it from the training data."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class {cls}(api.Victim):
    """A one-hidden-layer perceptron trained with Adam; replace ``build`` and ``fit`` with your classifier."""

    name = "{name}"
    description = "One-hidden-layer perceptron with normalization inside, Adam"
    revision = "1"

    class Options(api.Options):
        hidden: int = Field(64, ge=1, le=4096)
        epochs: int = Field(5, ge=1, le=500)
        lr: float = Field(1e-2, gt=0.0, le=1.0)

    def build(self, input_shape, num_classes):
        c, h, w = input_shape
        return nn.Sequential(Normalize(c), nn.Flatten(), nn.Linear(c * h * w, self.options.hidden), nn.ReLU(),
                             nn.Linear(self.options.hidden, num_classes))

    def fit(self, model, train_x, train_y, ctx):
        model[0].mean.copy_(train_x.mean(dim=(0, 2, 3), keepdim=True))
        model[0].std.copy_(train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))
        model.to(ctx.device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.options.lr)
        generator = ctx.generator("{name}", "shuffle")
        for _ in ctx.track(range(self.options.epochs), "train {name}", self.options.epochs):
            for xb, yb in ctx.batches(train_x, train_y, shuffle=True, generator=generator):
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
        model.eval()
''',
    "dataset": '''\
import torch
from pydantic import Field

from advbench import api


class {cls}(api.Dataset):
    """Synthetic bars: class k is a bright horizontal bar in row band k on seeded noise; replace ``load``.

    ``load`` returns CPU tensors: images float32 N x C x H x W in [0, 1], labels int64, and the class names.
    """

    name = "{name}"
    description = "Synthetic horizontal bars on seeded noise (1 x 16 x 16, 4 classes)"
    revision = "1"

    class Options(api.Options):
        n_train: int = Field(256, ge=4, le=100000)
        n_test: int = Field(64, ge=4, le=100000)
        seed: int = Field(0, ge=0)

    def load(self, ctx):
        generator = torch.Generator().manual_seed(self.options.seed)  # a private generator, not the global one

        def split(n):
            y = torch.randint(0, 4, (n,), generator=generator)
            x = 0.3 * torch.rand(n, 1, 16, 16, generator=generator)
            for i, label in enumerate(y.tolist()):
                x[i, 0, 4 * label + 1:4 * label + 3, :] += 0.7
            return x.clamp(0.0, 1.0), y.to(torch.int64)

        train_x, train_y = split(self.options.n_train)
        test_x, test_y = split(self.options.n_test)
        return api.DataSplits(train_x, train_y, test_x, test_y, ["top", "upper", "lower", "bottom"])
''',
    "executor": '''\
from collections import deque

from advbench import api


class {cls}(api.Executor):
    """Runs nodes one at a time in this process, newest first; replace with your engine.

    ``submit(fn, node)`` hands over a module-level function and a picklable node; ``wait`` returns finished
    ``(node, record)`` pairs, or ``(node, exception)`` where ``fn`` raised; each node comes back once.
    """

    name = "{name}"
    description = "Runs nodes one at a time in this process, last submitted first"
    revision = "1"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._queue = deque()
        self._on_event = lambda event: None

    def open(self, on_event):
        self._on_event = on_event

    def submit(self, fn, node):
        self._queue.append((fn, node))

    def wait(self, timeout=None):
        if not self._queue:
            return []
        fn, node = self._queue.pop()
        try:
            return [(node, fn(node, self._on_event))]
        except Exception as exc:  # noqa: BLE001 - the driver decides what a failure means
            return [(node, exc)]

    def close(self):
        self._queue.clear()
''',
}

SUMMARIES = {
    "interpreter": "An input-gradient saliency interpreter for advbench",
    "attack": "A one-step signed-gradient attack for advbench",
    "detector": "A softmax-confidence detector for advbench",
    "victim": "A small perceptron victim for advbench",
    "dataset": "A synthetic bars dataset for advbench",
    "executor": "A last-in-first-out in-process executor for advbench",
}

TEST = '''\
"""advbench's conformance kit on {cls}, and its registration through the installed entry point."""

import pytest

from advbench import plugins
from advbench.testing import check_plugin, parametrize_plugin_checks
from {package}.{module} import {cls}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))


# one test per check of the kit; add instances with other options: @parametrize_plugin_checks({cls}, {cls}(...))
@parametrize_plugin_checks({cls})
def test_conformance(plugin, check):
    check()


def test_registered_through_its_entry_point():
    plugins.reset()
    registration = plugins.lookup("{kind}", "{name}")
    assert registration.cls is {cls}
    assert registration.distribution == "advbench-{name}"


def test_check_plugin_runs_the_whole_kit_at_once():
    check_plugin({cls})
'''

README = '''\
# advbench-{name}

{summary}: a `{kind}` plugin named `{name}`.

Made with `advbench new-plugin {kind} {name}`. Write the method in `{package}/{module}.py`, then:

```bash
pip install -e .                      # registers the entry point `{name}` in the advbench group
python -m pytest -q tests/            # advbench.testing's conformance checks, one test per check
advbench list-plugins --kind {kind}   # shows `{name}` under the distribution advbench-{name}
```

Use it in a suite as `plugin: {name}`. See advbench's CONTRIBUTING.md for the whole path (write, check,
publish) and docs/PLUGINS.md for the contract of each hook.
'''


def package_name(name: str) -> str:
    return "advbench_" + name.replace("-", "_")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def scaffold(kind: str, name: str, directory: Path) -> Path:
    """Write ``directory/advbench-NAME`` and return it; AdvbenchError (one line) for a bad kind, name or folder."""
    if kind not in KINDS:
        raise AdvbenchError(f"new-plugin: unknown kind {kind!r}; one of {', '.join(KINDS)}")
    if not NAME.match(name):
        raise AdvbenchError(f"new-plugin: bad name {name!r}: lowercase letters and digits, words joined by single "
                            f"hyphens, starting with a letter (e.g. my-method)")
    root = directory / f"advbench-{name}"
    if root.exists():
        raise AdvbenchError(f"new-plugin: {root} already exists; choose another --dir or name")
    if not directory.is_dir():
        raise AdvbenchError(f"new-plugin: --dir {directory} is not a folder")
    package, module, cls = package_name(name), name.replace("-", "_"), class_name(name)
    fields = {"name": name, "kind": kind, "package": package, "module": module, "cls": cls,
              "summary": SUMMARIES[kind], "version": __version__}
    files = {
        "pyproject.toml": PYPROJECT.format(**fields),
        f"{package}/__init__.py": INIT.format(**fields),
        f"{package}/{module}.py": HEADER.format(**fields) + BODIES[kind].format(**fields),
        f"tests/test_{module}.py": TEST.format(**fields),
        "README.md": README.format(**fields),
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
