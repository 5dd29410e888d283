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
    ("victim", "alexnet"): {"epochs": 1},
    ("victim", "vgg-like"): {"epochs": 1},
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
