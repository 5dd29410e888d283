"""Readers shared by the image dataset plugins (no plugin class here).

Two on-disk forms are understood:

- the official CIFAR "python version": pickled batches ``data_batch_1`` .. ``data_batch_5``, ``test_batch``
  and ``batches.meta``, each a dict with ``b"data"`` (uint8, N x 3072, row-major: 1024 R, 1024 G, 1024 B)
  and ``b"labels"``; either extracted in a folder or packed in a .tar(.gz);
- an image-folder tree ``train/<class>/<image>`` and ``test/<class>/<image>`` (optionally one folder level
  down), either on disk or packed in a .tar/.tar.gz/.tgz.

Every reader returns uint8 arrays N x C x H x W (C = 3, RGB) and int64 labels; conversion to float happens
in the plugin, after the (uint8) decode cache.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from advbench.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".webp", ".tif", ".tiff"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SPLITS = ("train", "test")
BATCH_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
BATCH_TEST = "test_batch"
BATCH_META = "batches.meta"
BATCH_FILES = BATCH_TRAIN + (BATCH_TEST,)

Track = Callable[[Iterable, str, Optional[int]], Iterable]


@dataclass
class RawSplits:
    """Decoded data as uint8 NCHW numpy arrays (what is cached)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]


def is_tar_name(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


# ----------------------------------------------------------------------------------------------------------
# python batches


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: plain containers and numpy arrays only, never arbitrary callables."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        # how Python 3 writes bytes at protocol 2 (files re-saved by users); both only build bytes
        ("_codecs", "encode"), ("builtins", "bytes"), ("__builtin__", "bytes"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        value = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure is a bad file
        raise DataError(f"{where}: not a CIFAR python batch ({exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: not a CIFAR python batch (a {type(value).__name__}, expected a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in value.items()}


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{where}: a CIFAR python batch needs the keys b'data' and b'labels' "
                        f"(found {sorted(map(str, batch))})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{where}: b'data' must be N x 3072 with N labels (got data {data.shape}, "
                        f"{len(labels)} labels)")
    if data.dtype != np.uint8:
        if data.size and (data.min() < 0 or data.max() > 255):
            raise DataError(f"{where}: b'data' values must lie in 0..255")
        data = data.astype(np.uint8)
    return data.reshape(-1, 3, 32, 32), labels


def _assemble_batches(blobs: dict[str, bytes], where: str, default_classes: Sequence[str]) -> RawSplits:
    missing = [name for name in BATCH_FILES if name not in blobs]
    if missing:
        raise DataError(f"{where}: CIFAR python batches incomplete, missing {', '.join(missing)}")
    train = [_batch_arrays(_unpickle(blobs[n], f"{where}/{n}"), f"{where}/{n}") for n in BATCH_TRAIN]
    test_x, test_y = _batch_arrays(_unpickle(blobs[BATCH_TEST], f"{where}/{BATCH_TEST}"), f"{where}/{BATCH_TEST}")
    classes = list(default_classes)
    if BATCH_META in blobs:
        meta = _unpickle(blobs[BATCH_META], f"{where}/{BATCH_META}")
        names = meta.get("label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    top = int(max(train_y.max(initial=-1), test_y.max(initial=-1)))
    if min(train_y.min(initial=0), test_y.min(initial=0)) < 0 or top >= len(classes):
        raise DataError(f"{where}: labels must lie in 0..{len(classes) - 1} (found up to {top})")
    return RawSplits(np.ascontiguousarray(train_x), train_y, np.ascontiguousarray(test_x), test_y, classes)


def read_batches_folder(folder: Path, default_classes: Sequence[str], track: Track) -> RawSplits:
    names = [n for n in BATCH_FILES + (BATCH_META,) if (folder / n).is_file()]
    blobs = {n: (folder / n).read_bytes() for n in track(names, "read cifar batches", len(names))}
    return _assemble_batches(blobs, str(folder), default_classes)


def read_batches_tar(path: Path, default_classes: Sequence[str], track: Track) -> RawSplits:
    wanted = set(BATCH_FILES + (BATCH_META,))
    blobs: dict[str, bytes] = {}
    with _open_tar(path) as tar:
        for member in track(_members(tar), "read cifar batches", None):
            base = PurePosixPath(member.name).name
            if member.isfile() and base in wanted and base not in blobs:
                blobs[base] = tar.extractfile(member).read()
    return _assemble_batches(blobs, str(path), default_classes)


def batches_folder_ok(folder: Path) -> bool:
    return all((folder / n).is_file() for n in BATCH_FILES)


# ----------------------------------------------------------------------------------------------------------
# image-folder trees


@dataclass
class TreeLayout:
    """Where each image of an image-folder tree goes: ``order[split]`` lists (name, label) in output order."""

    classes: list[str]
    order: dict[str, list[tuple[str, int]]]

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.order.values())


def _clean(name: str) -> PurePosixPath:
    while name.startswith("./"):
        name = name[2:]
    return PurePosixPath(name)


def class_order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """``preferred``'s order when the names are exactly those classes, otherwise sorted."""
    names = set(names)
    if names == set(preferred):
        return list(preferred)
    return sorted(names)


def plan_tree(names: Iterable[str], where: str, preferred: Sequence[str]) -> Optional[TreeLayout]:
    """Find a train/<class>/<img>, test/<class>/<img> tree (at the top or one level down) among relative
    posix ``names``; None when there is none.

    Output order is deterministic and independent of the listing order: within a class files are sorted by
    name, and the classes are interleaved round-robin (file 0 of every class, then file 1, ...), so any prefix
    of a split is class-balanced.
    """
    groups: dict[str, dict[str, dict[str, list[str]]]] = defaultdict(lambda: {s: defaultdict(list) for s in SPLITS})
    for name in names:
        parts = _clean(name).parts
        if len(parts) not in (3, 4) or parts[-1].startswith(".") or parts[-2].startswith("."):
            continue
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS or parts[-3] not in SPLITS:
            continue
        prefix = parts[0] if len(parts) == 4 else ""
        groups[prefix][parts[-3]][parts[-2]].append(name)
    candidates = sorted(p for p, g in groups.items() if all(g[s] for s in SPLITS))
    if not candidates:
        return None
    if "" in candidates:
        prefix = ""
    elif len(candidates) == 1:
        prefix = candidates[0]
    else:
        raise DataError(f"{where}: several image-folder trees ({', '.join(candidates)}); point "
                        f"dataset.options.path at one of them")
    tree = groups[prefix]
    if set(tree["train"]) != set(tree["test"]):
        only_train = sorted(set(tree["train"]) - set(tree["test"]))
        only_test = sorted(set(tree["test"]) - set(tree["train"]))
        raise DataError(f"{where}: train/ and test/ must hold the same class folders (only in train: "
                        f"{only_train or '-'}; only in test: {only_test or '-'})")
    classes = class_order(tree["train"], preferred)
    order: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        per_class = [sorted(tree[split][c], key=lambda n: _clean(n).name) for c in classes]
        interleaved = []
        for rank in range(max(len(files) for files in per_class)):
            for label, files in enumerate(per_class):
                if rank < len(files):
                    interleaved.append((files[rank], label))
        order[split] = interleaved
    return TreeLayout(classes, order)


class _Decoder:
    """Decodes images into preallocated uint8 NCHW arrays; every image must share the first one's size."""

    def __init__(self, layout: TreeLayout, where: str) -> None:
        self.where = where
        self.slot = {name: (split, i) for split in SPLITS for i, (name, _) in enumerate(layout.order[split])}
        self.counts = {split: len(layout.order[split]) for split in SPLITS}
        self.labels = {split: np.array([lab for _, lab in layout.order[split]], dtype=np.int64) for split in SPLITS}
        self.arrays: dict[str, np.ndarray] = {}
        self.filled = {split: np.zeros(self.counts[split], dtype=bool) for split in SPLITS}
        self.size: Optional[tuple[int, int]] = None

    def put(self, name: str, data: bytes) -> None:
        from PIL import Image

        split, index = self.slot[name]
        try:
            with Image.open(io.BytesIO(data)) as image:
                pixels = np.asarray(image.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds
            raise DataError(f"{self.where}: cannot decode image {name} ({exc})") from None
        if self.size is None:
            self.size = pixels.shape[:2]
            self.arrays = {s: np.empty((self.counts[s], 3, *self.size), dtype=np.uint8) for s in SPLITS}
        elif pixels.shape[:2] != self.size:
            raise DataError(f"{self.where}: image {name} is {pixels.shape[1]}x{pixels.shape[0]} but earlier "
                            f"images are {self.size[1]}x{self.size[0]}; all images must share one size")
        self.arrays[split][index] = pixels.transpose(2, 0, 1)
        self.filled[split][index] = True

    def result(self, classes: list[str]) -> RawSplits:
        for split in SPLITS:
            if not self.filled[split].all():
                raise DataError(f"{self.where}: {int((~self.filled[split]).sum())} {split} images could not be read")
        return RawSplits(self.arrays["train"], self.labels["train"], self.arrays["test"], self.labels["test"], classes)


def read_tree_folder(root: Path, layout: TreeLayout, track: Track, description: str) -> RawSplits:
    decoder = _Decoder(layout, str(root))
    names = [name for split in SPLITS for name, _ in layout.order[split]]
    for name in track(names, description, len(names)):
        decoder.put(name, (root / name).read_bytes())
    return decoder.result(layout.classes)


def read_tree_tar(path: Path, layout: TreeLayout, track: Track, description: str) -> RawSplits:
    decoder = _Decoder(layout, str(path))

    def images() -> Iterator[tuple[str, bytes]]:
        with _open_tar(path) as tar:
            for member in _members(tar):
                if member.isfile() and member.name in decoder.slot:
                    yield member.name, tar.extractfile(member).read()

    for name, data in track(images(), description, layout.total):
        decoder.put(name, data)
    return decoder.result(layout.classes)


def list_tree_folder(root: Path) -> list[str]:
    """Relative posix names of the files up to three levels below ``root`` (enough for a tree one level down)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        depth = len(rel.parts)
        if depth >= 3:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if depth >= 2:
            found.extend((rel / f).as_posix() for f in filenames)
    return found


def fingerprint_files(root: Path, names: Iterable[str]) -> str:
    """A digest of (name, size, mtime) of the files, for cache keys of a folder tree."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(names):
        st = (root / name).stat()
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# tar archives


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r|*")  # streaming: one pass, no seeking back
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path}: cannot open as a tar archive ({exc})") from None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{tar.name}: damaged tar archive ({exc})") from None


def list_tar(path: Path) -> list[str]:
    """Names of the regular files in a tar archive (one streaming pass)."""
    with _open_tar(path) as tar:
        return [m.name for m in _members(tar) if m.isfile()]


def tar_has_batches(names: Sequence[str]) -> bool:
    bases = {PurePosixPath(n).name for n in names}
    return all(b in bases for b in BATCH_FILES)
