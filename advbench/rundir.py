"""Run folders: a safe folder name from a suite name, a fresh folder per run, and a writable --out."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from advbench.errors import AdvbenchError

NAME_MAX = 64  # characters of the suite name kept in a run folder's name


def folder_name(name: str) -> str:
    """``name`` as one path component: no separators, no ``..``, no control characters, at most NAME_MAX long.

    Letters (any script), digits and ``._+-`` are kept; every other run of characters becomes one ``-``; leading
    dots and dashes go (no hidden folder, no option-like name). An empty result reads ``suite``.
    """
    text = re.sub(r"[^\w.+-]+", "-", name)
    text = re.sub(r"\.{2,}", ".", text)
    text = text.strip(".-")[:NAME_MAX].rstrip(".-")
    return text or "suite"


def new_run_dir(root: Path, name: str, stamp: str) -> Path:
    """A new, empty folder ``<root>/<name>-<stamp>`` (``-2``, ``-3``, ... when taken), created exclusively so two
    runs started in the same second never share one."""
    base = f"{folder_name(name)}-{stamp}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10000):
            candidate = root / (base if n == 1 else f"{base}-{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return candidate
    except OSError as exc:
        raise AdvbenchError(f"{root}: cannot create a run folder here ({_reason(exc)}); give --out a folder you can "
                            "write to") from None
    raise AdvbenchError(f"{root}: 10000 run folders named {base}-*; give --out")


def writable_out(path: Path) -> Path:
    """``path`` (the --out folder) created if needed and checked writable, or one AdvbenchError line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise AdvbenchError(f"--out {path}: a file is in the way; give a folder") from None
    except OSError as exc:
        raise AdvbenchError(f"--out {path}: cannot write a run folder there ({_reason(exc)}); give a folder you can "
                            "write to") from None
    return path


def _reason(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    if exc.filename and str(exc.filename) not in reason:
        reason += f": {exc.filename}"
    return reason
