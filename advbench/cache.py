"""Content-addressed, atomic artifact cache.

An entry's key is the sha256 of a canonical JSON document naming the stage, its configuration, the keys of
its inputs and the plugin (name, distribution version, revision) that made it. An entry is two files:
``<key>.pt`` (a torch.save of plain containers and tensors, loaded with ``weights_only=True``) and
``<key>.json`` (metadata with the payload's sha256). Both are written to a temporary name and renamed, the
metadata last, so a torn write is never mistaken for an entry; a payload whose hash does not match is
reported, removed and recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

log = logging.getLogger("advbench.cache")
CACHE_ENV = "ADVBENCH_CACHE"


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


class Cache:
    def __init__(self, root: Optional[Path] = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.pt", folder / f"{key}.json"

    def contains(self, key: str) -> bool:
        payload, meta = self._paths(key)
        return payload.exists() and meta.exists()

    def load(self, key: str) -> Optional[Any]:
        """The stored payload, or None when absent or corrupt (a corrupt entry is removed)."""
        payload_path, meta_path = self._paths(key)
        if not (payload_path.exists() and meta_path.exists()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data = payload_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise ValueError("sha256 mismatch")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # any damage means: do not trust, recompute
            log.warning("cache entry %s (%s) is corrupt (%s); recomputing", key[:12], meta_path.parent, exc)
            self.remove(key)
            return None

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
        payload_path, meta_path = self._paths(key)
        payload_path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()
        meta = {"key": key, "stage": stage, "description": description, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "created": time.time()}
        _atomic_write(payload_path, data)
        _atomic_write(meta_path, json.dumps(meta, indent=1).encode())

    def get_or_compute(self, key: str, compute: Callable[[], Any], stage: str = "", description: str = "") -> tuple[Any, bool]:
        """(payload, was_cached)."""
        cached = self.load(key)
        if cached is not None:
            return cached, True
        payload = compute()
        self.save(key, payload, stage=stage, description=description)
        return payload, False

    def remove(self, key: str) -> None:
        for path in self._paths(key):
            path.unlink(missing_ok=True)

    def _shards(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in sorted(self.root.iterdir()) if p.is_dir() and _is_shard(p.name)]

    def entries(self) -> list[Entry]:
        found = []
        if not self.root.exists():
            return found
        for meta_path in sorted(self.root.glob("*/*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            found.append(Entry(meta.get("key", meta_path.stem), meta.get("stage", ""), int(meta.get("size", 0)),
                               float(meta.get("created", 0)), meta.get("description", "")))
        return found

    def clear(self, stage: Optional[str] = None) -> int:
        """Remove every entry (or only one stage's); returns how many were removed."""
        if stage is None:
            count = len(self.entries())
            # only what the cache wrote (<2 hex>/<key>.pt|.json and temp files): ADVBENCH_CACHE may point at a
            # folder that holds other things, which must survive
            for folder in self._shards():
                for path in folder.iterdir():
                    if path.is_file() and (path.suffix in (".pt", ".json") or path.name.endswith(".tmp")):
                        path.unlink(missing_ok=True)
                try:
                    folder.rmdir()
                except OSError:
                    pass  # something else lives there
            return count
        count = 0
        for entry in self.entries():
            if entry.stage == stage:
                self.remove(entry.key)
                count += 1
        return count


def _is_shard(name: str) -> bool:
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
