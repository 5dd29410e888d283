"""Content-addressed, atomic artifact cache.

An entry's key is the sha256 of a canonical JSON document naming the stage, its configuration, the keys of
its inputs and the plugin (name, distribution version, revision) that made it. An entry is two files:
``<key>.pt`` (a torch.save of plain containers and tensors, loaded with ``weights_only=True``) and
``<key>.json`` (metadata with the payload's sha256). Both are written to a temporary name and renamed, the
metadata last, so a torn write is never mistaken for an entry; a payload whose hash does not match is
reported, removed and recomputed.

A caller that finds a loaded payload unusable (a sound file with the wrong content, e.g. a field missing after a
change of format) says so with ``Cache.load(key, check=...)`` or ``Cache.discard(key, why)``: one warning, the entry
is removed and recomputed. Concurrent processes on one cache compute a key once: ``get_or_compute`` holds a
per-key lock (``fcntl.flock`` on ``<key>.lock`` beside the entry) while it re-checks, computes and saves, and
``Cache.lock(key)`` gives callers the same lock around any other compute. Files are created readable by the group
and others as the umask allows (0o644 under the usual umask), so a cache can be shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no cross-process lock, the cache stays correct
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("advbench.cache")
CACHE_ENV = "ADVBENCH_CACHE"
# the stages the runner and the built-in plugins write (a third-party plugin may add its own)
STAGES = ("dataset-decode", "victim", "mask-classifier", "metrics", "interpreter", "masks", "adversarial", "scores",
          "gallery", "progress", "transfer")
META_FIELDS = {"key": str, "stage": str, "description": str, "size": int, "sha256": str, "created": (int, float)}


def default_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("advbench"))


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def make_key(stage: str, config: Any, inputs: list[str], plugin: Optional[dict[str, str]] = None) -> str:
    document = {"stage": stage, "config": config, "inputs": list(inputs), "plugin": plugin or {}}
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


@dataclass
class Entry:
    key: str
    stage: str
    size: int
    created: float
    description: str
    problem: Optional[str] = None  # set for a damaged entry (metadata unreadable, payload missing): clear removes it


class CorruptEntry(ValueError):
    """Why an entry cannot be trusted, in a few words (never a library's whole text)."""


class Cache:
    def __init__(self, root: Optional[Path] = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.pt", folder / f"{key}.json"

    def contains(self, key: str) -> bool:
        payload, meta = self._paths(key)
        return payload.exists() and meta.exists()

    def load(self, key: str, check: Optional[Callable[[Any], Any]] = None) -> Optional[Any]:
        """The stored payload, or None when absent, corrupt or unusable (such an entry is removed).

        ``check(payload)`` (optional) says whether a payload whose file is sound can be used: a false result or an
        exception (e.g. the KeyError of a missing field) discards the entry with one warning, so it is recomputed.
        """
        payload_path, meta_path = self._paths(key)
        if not (payload_path.exists() and meta_path.exists()):
            return None
        try:
            payload = self._read(payload_path, meta_path)
        except CorruptEntry as exc:  # any damage means: do not trust, recompute
            self.discard(key, str(exc), verb="is corrupt")
            return None
        if check is not None:
            try:
                usable = check(payload)
                why = "rejected by its reader"
            except Exception as exc:  # noqa: BLE001 - whatever the reader tripped on
                usable, why = False, _one_line(exc)
            if not usable:
                self.discard(key, why)
                return None
        return payload

    @staticmethod
    def _read(payload_path: Path, meta_path: Path) -> Any:
        import torch

        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptEntry(f"metadata unreadable: {type(exc).__name__}") from None
        problem = _meta_problem(meta)
        if problem:
            raise CorruptEntry(problem)
        try:
            data = payload_path.read_bytes()
        except OSError as exc:
            raise CorruptEntry(f"payload unreadable: {exc.strerror or type(exc).__name__}") from None
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise CorruptEntry("sha256 mismatch")
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch's text suggests weights_only=False: keep only the type
            raise CorruptEntry(f"payload not loadable: {type(exc).__name__}") from None

    def discard(self, key: str, why: str, verb: str = "is unusable") -> None:
        """Remove entry ``key`` because a caller cannot use it (``why``, a few words); one warning, no raise."""
        log.warning("cache entry %s (%s) %s (%s); removed, it will be recomputed", key[:12], self._paths(key)[0].parent,
                    verb, " ".join(str(why).split())[:200])
        self.remove(key)

    def verify(self, key: str) -> bool:
        """Whether the entry is there and intact (its payload's sha256 matches), without unpickling it; a damaged
        entry is reported and removed, so it is recomputed."""
        payload_path, meta_path = self._paths(key)
        if not (payload_path.exists() and meta_path.exists()):
            return False
        try:
            meta = json.loads(meta_path.read_text())
            digest = hashlib.sha256()
            with open(payload_path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            if not isinstance(meta, dict) or digest.hexdigest() != meta.get("sha256"):
                raise ValueError("sha256 mismatch")
            return True
        except (OSError, ValueError) as exc:
            log.warning("cache entry %s (%s) is corrupt (%s); recomputing", key[:12], meta_path.parent, exc)
            self.remove(key)
            return False

    def save(self, key: str, payload: Any, stage: str = "", description: str = "") -> None:
        import torch

        payload_path, meta_path = self._paths(key)
        payload_path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()
        meta = {"key": key, "stage": stage, "description": description, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "created": time.time()}
        _atomic_write(payload_path, data)
        _atomic_write(meta_path, json.dumps(meta, indent=1).encode())

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-key lock: another process (or thread) asking for the same key waits until it is released.

        Re-entrant within one thread, so a caller may hold it around ``get_or_compute`` of the same key. Where
        the lock file cannot be made (a read-only cache) or there is no ``fcntl``, it holds nothing.
        """
        path = self._paths(key)[0].with_suffix(".lock")
        ident = (str(path), threading.get_ident())
        if ident in _HELD:
            _HELD[ident] += 1
            try:
                yield
            finally:
                _HELD[ident] -= 1
            return
        fd = None
        if fcntl is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                log.debug("cache lock %s not taken (%s)", path, exc)
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            _HELD[ident] = 1
            yield
        finally:
            _HELD.pop(ident, None)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def get_or_compute(self, key: str, compute: Callable[[], Any], stage: str = "", description: str = "",
                       check: Optional[Callable[[Any], Any]] = None) -> tuple[Any, bool]:
        """(payload, was_cached). Computes under the key's lock, so concurrent callers compute it once."""
        cached = self.load(key, check)
        if cached is not None:
            return cached, True
        with self.lock(key):
            cached = self.load(key, check)  # another process may have made it while this one waited
            if cached is not None:
                return cached, True
            payload = compute()
            self.save(key, payload, stage=stage, description=description)
        return payload, False

    def remove(self, key: str) -> None:
        for path in self._paths(key):
            path.unlink(missing_ok=True)

    def _shards(self) -> list[Path]:
        try:
            return [p for p in sorted(self.root.iterdir()) if p.is_dir() and _is_shard(p.name)]
        except OSError:  # absent, not a folder, unreadable
            return []

    def entries(self) -> list[Entry]:
        """Every entry, damaged ones included (``problem`` says what is wrong); never raises on damage."""
        found: list[Entry] = []
        seen: set[str] = set()
        for folder in self._shards():
            try:
                files = sorted(folder.iterdir())
            except OSError:
                continue
            for meta_path in (p for p in files if p.suffix == ".json" and not p.name.startswith(".")):
                seen.add(meta_path.stem)
                payload_path = meta_path.with_suffix(".pt")
                try:
                    meta = json.loads(meta_path.read_text())
                    problem = _meta_problem(meta)
                except (OSError, ValueError) as exc:
                    meta, problem = {}, f"metadata unreadable: {type(exc).__name__}"
                if problem is None and not payload_path.exists():
                    problem = "payload missing"
                if problem is None:
                    found.append(Entry(meta_path.stem, meta["stage"], meta["size"], float(meta["created"]),
                                       meta["description"]))
                else:
                    found.append(Entry(meta_path.stem, "", _size_of(payload_path), _mtime(meta_path), "", problem))
            for payload_path in (p for p in files if p.suffix == ".pt" and not p.name.startswith(".")):
                if payload_path.stem not in seen:  # a write killed between payload and metadata
                    found.append(Entry(payload_path.stem, "", _size_of(payload_path), _mtime(payload_path), "",
                                       "metadata missing"))
        return found

    def clear(self, stage: Optional[str] = None) -> int:
        """Remove every entry (or only one stage's, and every damaged one); returns how many were removed."""
        if stage is None:
            count = len(self.entries())
            # only what the cache wrote (<2 hex>/<key>.pt|.json|.lock and temp files): ADVBENCH_CACHE may point at
            # a folder that holds other things, which must survive
            for folder in self._shards():
                for path in folder.iterdir():
                    if path.is_file() and (path.suffix in (".pt", ".json", ".lock") or path.name.endswith(".tmp")):
                        path.unlink(missing_ok=True)
                try:
                    folder.rmdir()
                except OSError:
                    pass  # something else lives there
            return count
        count = 0
        for entry in self.entries():
            if entry.stage == stage or entry.problem:
                self.remove(entry.key)
                count += 1
        return count


_HELD: dict[tuple[str, int], int] = {}  # locks this process holds: (lock path, thread) -> depth


def _meta_problem(meta: Any) -> Optional[str]:
    """What is wrong with an entry's metadata document, or None."""
    if not isinstance(meta, dict):
        return f"metadata is a {type(meta).__name__}, not a mapping"
    for name, kind in META_FIELDS.items():
        if name not in meta:
            return f"metadata lacks {name!r}"
        if not isinstance(meta[name], kind) or isinstance(meta[name], bool):
            return f"metadata field {name!r} has the wrong type"
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_shard(name: str) -> bool:
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: a cache shared by a group must be readable
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
