"""Tests of the built-in dataset plugins (advbench_datasets)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from advbench.api import DataSplits, RunContext
from advbench.cache import Cache
from advbench.errors import DataError
from advbench.plugins import registry
from advbench_datasets import _readers as readers
from advbench_datasets import cifar10 as cifar_module
from advbench_datasets.cifar10 import CIFAR10_CLASSES, Cifar10
from advbench_datasets.digits import Digits

CIFAR_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _check_splits(s: DataSplits) -> None:
    for x in (s.train_x, s.test_x):
        assert x.dtype == torch.float32 and x.ndim == 4
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    for y in (s.train_y, s.test_y):
        assert y.dtype == torch.int64 and y.ndim == 1
        assert int(y.min()) >= 0 and int(y.max()) < len(s.classes)
    assert len(s.train_x) == len(s.train_y) and len(s.test_x) == len(s.test_y)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Every test gets its own cache and no ambient data folders."""
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ADVBENCH_DATA", raising=False)
    monkeypatch.setattr(cifar_module, "_download_dir", lambda: tmp_path / "userdata" / "cifar10")


def test_registered():
    datasets = registry()["dataset"]
    assert datasets["cifar10"].cls is Cifar10
    assert datasets["digits"].cls is Digits
    for cls in (Cifar10, Digits):
        assert cls.description and "\n" not in cls.description and cls.revision == "1" and cls.__doc__


# ------------------------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_and_ranges():
    s = Digits().load(RunContext())
    _check_splits(s)
    assert s.classes == [str(d) for d in range(10)]
    assert s.input_shape == (1, 8, 8)
    assert len(s.train_x) + len(s.test_x) == 1797
    assert len(s.test_x) == 540  # ceil(0.3 * 1797)
    assert float(s.train_x.max()) == 1.0  # 16 / 16
    values = torch.unique(s.train_x * 16)
    assert torch.equal(values, values.round())  # grey levels 0..16 exactly


def test_digits_split_is_deterministic_and_ignores_suite_seed():
    a = Digits().load(RunContext(seed=0))
    b = Digits().load(RunContext(seed=123))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = Digits(split_seed=1).load(RunContext(seed=0))
    assert not torch.equal(a.test_y, c.test_y)
    assert torch.equal(torch.bincount(a.test_y), torch.bincount(c.test_y))  # same stratified sizes


def test_digits_stratified():
    s = Digits(test_size=0.25).load(RunContext())
    all_y = torch.cat([s.train_y, s.test_y])
    total = torch.bincount(all_y, minlength=10).double()
    test = torch.bincount(s.test_y, minlength=10).double()
    assert torch.all((test - total * len(s.test_y) / len(all_y)).abs() <= 1.0)


def test_digits_upsample():
    base = Digits().load(RunContext())
    up = Digits(upsample=2).load(RunContext())
    assert up.input_shape == (1, 16, 16)
    assert torch.equal(up.train_x, base.train_x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    bil = Digits(upsample=4, interpolation="bilinear").load(RunContext())
    assert bil.input_shape == (1, 32, 32)
    _check_splits(bil)


@pytest.mark.parametrize("options", [{"test_size": 0}, {"test_size": 1.0}, {"upsample": 5}, {"upsample": 0},
                                     {"colour": True}])
def test_digits_rejects_bad_options(options):
    with pytest.raises(ValidationError):
        Digits(**options)


# ------------------------------------------------------------------------------------------------------------
# cifar10: the real JPEG export (decoded once per session)


@pytest.fixture(scope="session")
def real_cifar(tmp_path_factory):
    if not CIFAR_TAR.is_file():
        pytest.skip(f"the CIFAR-10 JPEG export is not at {CIFAR_TAR} (shared/ beside the repository)")
    cache_root = tmp_path_factory.mktemp("cifar-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADVBENCH_CACHE", str(cache_root))
        splits = Cifar10(path=str(CIFAR_TAR), train_limit=200, test_limit=100).load(RunContext(seed=0))
    return splits, cache_root


def test_cifar10_real_export(real_cifar):
    s, _ = real_cifar
    _check_splits(s)
    assert s.classes == CIFAR10_CLASSES
    assert s.input_shape == (3, 32, 32)
    assert len(s.train_x) == 200 and len(s.test_x) == 100
    assert torch.bincount(s.train_y, minlength=10).tolist() == [20] * 10
    assert torch.bincount(s.test_y, minlength=10).tolist() == [10] * 10
    assert float(s.train_x.std()) > 0.1  # real pictures, not blank


def test_cifar10_real_export_cached_and_seeded(real_cifar, monkeypatch):
    s, cache_root = real_cifar
    monkeypatch.setenv("ADVBENCH_CACHE", str(cache_root))
    assert [e.stage for e in Cache(cache_root).entries()] == ["dataset-decode"]

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(readers, "read_tree_tar", no_decode)
    again = Cifar10(path=str(CIFAR_TAR), train_limit=200, test_limit=100).load(RunContext(seed=0))
    assert torch.equal(again.train_x, s.train_x) and torch.equal(again.test_y, s.test_y)
    other = Cifar10(path=str(CIFAR_TAR), train_limit=200, test_limit=100).load(RunContext(seed=1))
    assert not torch.equal(other.train_x, s.train_x)
    assert torch.bincount(other.train_y, minlength=10).tolist() == [20] * 10
    full = Cifar10(path=str(CIFAR_TAR)).load(RunContext())
    assert len(full.train_x) == 50000 and len(full.test_x) == 10000
    assert torch.bincount(full.test_y).tolist() == [1000] * 10


# ------------------------------------------------------------------------------------------------------------
# cifar10: the python batches (a small fake file in the official format)

FAKE_SIZES = {**{f"data_batch_{i}": 3 for i in range(1, 6)}, "test_batch": 4}
FAKE_CLASSES = [f"c{i}" for i in range(10)]


def _fake_batches(folder: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    written = {}
    for name, n in FAKE_SIZES.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(folder / name, "wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, handle, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [c.encode() for c in FAKE_CLASSES], b"num_vis": 3072}, handle, protocol=2)
    return written


def _check_fake(s: DataSplits, written) -> None:
    _check_splits(s)
    assert s.classes == FAKE_CLASSES
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert s.train_y.tolist() == train_labels and s.test_y.tolist() == written["test_batch"][1]
    assert s.train_x.shape == (15, 3, 32, 32) and s.test_x.shape == (4, 3, 32, 32)
    # CIFAR rows are row-major planes: 1024 red, then 1024 green, then 1024 blue
    row = train_data[4]
    assert s.train_x[4, 0, 0, 0] == row[0] / 255.0
    assert s.train_x[4, 1, 0, 0] == row[1024] / 255.0
    assert s.train_x[4, 2, 0, 0] == row[2048] / 255.0
    assert s.train_x[4, 0, 1, 0] == row[32] / 255.0  # second row, first column
    assert s.train_x[4, 0, 0, 1] == row[1] / 255.0
    assert s.train_x[4, 2, 31, 31] == row[3071] / 255.0
    assert torch.equal(s.train_x, torch.from_numpy(train_data.reshape(-1, 3, 32, 32)).float() / 255.0)
    assert torch.equal(s.test_x, torch.from_numpy(written["test_batch"][0].reshape(-1, 3, 32, 32)).float() / 255.0)


def test_cifar10_python_batches_folder(tmp_path):
    written = _fake_batches(tmp_path / "cifar-10-batches-py")
    _check_fake(Cifar10(path=str(tmp_path / "cifar-10-batches-py")).load(RunContext()), written)
    _check_fake(Cifar10(path=str(tmp_path)).load(RunContext()), written)  # the folder that holds it


def test_cifar10_python_batches_tar_gz(tmp_path):
    written = _fake_batches(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check_fake(Cifar10(path=str(archive)).load(RunContext()), written)


def test_cifar10_found_under_advbench_data(tmp_path, monkeypatch):
    written = _fake_batches(tmp_path / "data" / "cifar10" / "cifar-10-batches-py")
    monkeypatch.setenv("ADVBENCH_DATA", str(tmp_path / "data"))
    _check_fake(Cifar10().load(RunContext()), written)


def test_cifar10_batches_refuse_foreign_pickles(tmp_path):
    _fake_batches(tmp_path / "b")
    with open(tmp_path / "b" / "test_batch", "wb") as handle:
        pickle.dump({b"data": os.system, b"labels": []}, handle)
    with pytest.raises(DataError, match="not a CIFAR python batch"):
        Cifar10(path=str(tmp_path / "b")).load(RunContext())


def test_cifar10_train_limit_balanced(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    data = np.arange(12 * 3072, dtype=np.int64).reshape(12, 3072) % 256
    for name in FAKE_SIZES:
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data.astype(np.uint8), b"labels": [i % 3 for i in range(12)]}, handle, protocol=2)
    s = Cifar10(path=str(folder), train_limit=7, test_limit=6).load(RunContext())
    assert s.classes == CIFAR10_CLASSES  # no batches.meta: CIFAR's names
    assert torch.bincount(s.train_y).tolist() == [3, 2, 2]
    assert torch.bincount(s.test_y).tolist() == [2, 2, 2]
    again = Cifar10(path=str(folder), train_limit=7, test_limit=6).load(RunContext())
    assert torch.equal(s.train_x, again.train_x)


# ------------------------------------------------------------------------------------------------------------
# cifar10: image-folder trees


def _png_tree(root: Path, classes=("zebra", "apple", "mango"), per_split={"train": 3, "test": 2}) -> dict:
    pixels = {}
    rng = np.random.default_rng(3)
    for split, n in per_split.items():
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)  # H=6, W=5
                Image.fromarray(image).save(root / split / cls / f"{i:04d}.png")
                pixels[(split, cls, i)] = image
    return pixels


def _check_tree(s: DataSplits, pixels) -> None:
    _check_splits(s)
    assert s.classes == ["apple", "mango", "zebra"]  # not CIFAR's names: sorted
    assert s.input_shape == (3, 6, 5)
    assert s.train_y.tolist() == [0, 1, 2] * 3 and s.test_y.tolist() == [0, 1, 2] * 2  # round-robin
    for split, x in (("train", s.train_x), ("test", s.test_x)):
        for index in range(len(x)):
            cls = s.classes[index % 3]
            expected = torch.from_numpy(pixels[(split, cls, index // 3)]).permute(2, 0, 1).float() / 255.0
            assert torch.equal(x[index], expected)


def test_cifar10_image_folder(tmp_path):
    pixels = _png_tree(tmp_path / "tree")
    _check_tree(Cifar10(path=str(tmp_path / "tree")).load(RunContext()), pixels)
    _check_tree(Cifar10(path=str(tmp_path)).load(RunContext()), pixels)  # one level down


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_cifar10_image_folder_tar(tmp_path, suffix, mode):
    pixels = _png_tree(tmp_path / "export")
    archive = tmp_path / f"export{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(tmp_path / "export", arcname="export")
    _check_tree(Cifar10(path=str(archive)).load(RunContext()), pixels)


def test_cifar10_decode_cache(tmp_path, monkeypatch):
    cache_root = tmp_path / "my-cache"
    monkeypatch.setenv("ADVBENCH_CACHE", str(cache_root))
    pixels = _png_tree(tmp_path / "export")
    archive = tmp_path / "export.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "export", arcname=".")
    first = Cifar10(path=str(archive)).load(RunContext())
    entries = Cache(cache_root).entries()
    assert [e.stage for e in entries] == ["dataset-decode"]
    stored = Cache(cache_root).load(entries[0].key)
    assert stored["train_x"].dtype == torch.uint8  # cached as bytes, not floats

    calls = []
    real_read = readers.read_tree_tar
    monkeypatch.setattr(readers, "read_tree_tar", lambda *a, **k: calls.append(1) or real_read(*a, **k))
    second = Cifar10(path=str(archive)).load(RunContext())
    assert calls == [] and torch.equal(first.train_x, second.train_x)
    _check_tree(second, pixels)

    # a changed archive (new mtime) is decoded again
    stamp = time.time() + 10
    os.utime(archive, (stamp, stamp))
    Cifar10(path=str(archive)).load(RunContext())
    assert calls == [1]

    # a folder tree is keyed by its files: touching one image decodes again
    tree_calls = []
    real_folder = readers.read_tree_folder
    monkeypatch.setattr(readers, "read_tree_folder", lambda *a, **k: tree_calls.append(1) or real_folder(*a, **k))
    Cifar10(path=str(tmp_path / "export")).load(RunContext())
    Cifar10(path=str(tmp_path / "export")).load(RunContext())
    assert tree_calls == [1]
    os.utime(tmp_path / "export" / "train" / "apple" / "0000.png", (stamp, stamp))
    Cifar10(path=str(tmp_path / "export")).load(RunContext())
    assert tree_calls == [1, 1]


def test_cifar10_progress_reported(tmp_path):
    _png_tree(tmp_path / "t")
    seen = []

    def progress(iterable, description, total):
        seen.append((description, total))
        return iterable

    Cifar10(path=str(tmp_path / "t")).load(RunContext(progress=progress))
    assert seen == [("decode cifar10", 15)]


# ------------------------------------------------------------------------------------------------------------
# cifar10: errors


def test_cifar10_missing_path(tmp_path):
    missing = tmp_path / "nowhere" / "cifar.tar.gz"
    with pytest.raises(DataError) as info:
        Cifar10(path=str(missing)).load(RunContext())
    message = str(info.value)
    assert "dataset.options.path" in message and str(missing) in message and "\n" not in message


def test_cifar10_nothing_found():
    with pytest.raises(DataError) as info:
        Cifar10().load(RunContext())
    message = str(info.value)
    assert "dataset.options.path" in message and "download: true" in message
    assert "ADVBENCH_DATA" in message and "cifar-10-batches-py" in message and "\n" not in message


def test_cifar10_unusable_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="dataset.options.path"):
        Cifar10(path=str(tmp_path / "notes.txt")).load(RunContext())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither CIFAR python batches nor"):
        Cifar10(path=str(tmp_path / "empty")).load(RunContext())
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="bad.tar.gz"):
        Cifar10(path=str(bad)).load(RunContext())
    _png_tree(tmp_path / "odd", per_split={"train": 1})
    (tmp_path / "odd" / "test" / "other").mkdir(parents=True)
    Image.new("RGB", (6, 5)).save(tmp_path / "odd" / "test" / "other" / "0.png")
    with pytest.raises(DataError, match="same class folders"):
        Cifar10(path=str(tmp_path / "odd")).load(RunContext())


def test_cifar10_mixed_image_sizes(tmp_path):
    _png_tree(tmp_path / "t")
    Image.new("RGB", (9, 9)).save(tmp_path / "t" / "test" / "zebra" / "0001.png")
    with pytest.raises(DataError, match="one size"):
        Cifar10(path=str(tmp_path / "t")).load(RunContext())


def test_cifar10_rejects_bad_options():
    with pytest.raises(ValidationError):
        Cifar10(train_limit=0)
    with pytest.raises(ValidationError):
        Cifar10(pth="x")


# ------------------------------------------------------------------------------------------------------------
# cifar10: download (offline: urlopen is replaced)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_cifar10_download(tmp_path, monkeypatch):
    written = _fake_batches(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "src.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    payload = archive.read_bytes()
    urls = []
    monkeypatch.setattr(cifar_module.urllib.request, "urlopen",
                        lambda url, timeout=None: urls.append(url) or _FakeResponse(payload))

    with pytest.raises(DataError, match="damaged"):  # md5 differs from the official release's
        Cifar10(download=True).load(RunContext())
    assert not (tmp_path / "userdata" / "cifar10" / "cifar-10-python.tar.gz").exists()

    monkeypatch.setattr(cifar_module, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    _check_fake(Cifar10(download=True).load(RunContext()), written)
    assert urls == [cifar_module.CIFAR10_URL] * 2
    assert (tmp_path / "userdata" / "cifar10" / "cifar-10-python.tar.gz").is_file()
    _check_fake(Cifar10().load(RunContext()), written)  # found again without downloading
    assert len(urls) == 2
