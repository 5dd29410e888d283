"""``advbench doctor``: check the environment a run needs, one line per check, each problem with what to fix."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]  # a checkout: the shipped suites' relative data paths start here


@dataclass
class Check:
    name: str
    ok: bool
    message: str  # what was found; for a problem, also what to fix


def run_checks(suite_files: Optional[list[Path]] = None) -> list[Check]:
    """Every check, in order; ``suite_files`` defaults to the checkout's suites/*.yaml."""
    checks = [*_versions(), _cuda(), *_cache(), _plugins()]
    checks += _data_paths(suite_files if suite_files is not None else sorted((REPO / "suites").glob("*.yaml")))
    return checks


def _versions() -> list[Check]:
    found = []
    for module in ("torch", "torchvision"):
        try:
            version = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001 - a broken install raises anything
            found.append(Check(module, False, f"not importable ({type(exc).__name__}: {_short(exc)}); "
                               "reinstall with: pip install -e '.[test]'"))
        else:
            found.append(Check(module, True, version))
    return found


def _cuda() -> Check:
    try:
        import torch

        if torch.cuda.is_available():
            return Check("cuda", True, f"visible: {torch.cuda.device_count()} device(s), {torch.cuda.get_device_name(0)}")
        return Check("cuda", True, "not visible: runs use the CPU (--device cuda would fail)")
    except Exception as exc:  # noqa: BLE001
        return Check("cuda", False, f"cannot query CUDA ({_short(exc)}); check the torch install or the driver")


def _cache() -> list[Check]:
    from advbench.cache import CACHE_ENV, Cache, default_root

    root = default_root()
    origin = f"from {CACHE_ENV}" if os.environ.get(CACHE_ENV) else f"default; set {CACHE_ENV} to move it"
    # a cache not made yet is fine where it can be made: check the nearest folder that exists, create nothing
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root) else ""
        return [Check("cache", False, f"{root} ({origin}) is not writable: {exc.strerror or type(exc).__name__}"
                      f"{where}; set {CACHE_ENV} to a folder you can write to")]
    if not root.exists():
        return [Check("cache", True, f"{root} ({origin}) not made yet, can be created; empty")]
    entries = Cache(root).entries()
    size = sum(e.size for e in entries)
    checks = [Check("cache", True, f"{root} ({origin}) writable; {len(entries)} entries, {size / 2 ** 20:.1f} MiB")]
    damaged = sum(1 for e in entries if e.problem)
    if damaged:
        checks.append(Check("cache entries", False, f"{damaged} damaged entries (they would be recomputed); "
                            "remove them with: advbench cache clear --stage <any stage> --yes"))
    return checks


def _plugins() -> Check:
    from advbench import plugins

    try:
        found = plugins.components()
        for reg in found:  # import every class now (a run imports only those its suite names)
            try:
                reg.cls  # noqa: B018
            except plugins.PluginError:
                pass  # listed by broken() below
    except Exception as exc:  # noqa: BLE001 - a third-party plugin can fail in any way
        return Check("plugins", False, f"{_short(exc)}; fix or uninstall that plugin, or skip it with "
                     f"{plugins.DISABLE_ENV}=<name>")
    broken = plugins.broken()
    if broken:
        return Check("plugins", False, "broken, skipped: " + "; ".join(
            f"{b.distribution} (entry point {b.entry_point!r}): {b.error}" for b in broken)
            + f"; fix or uninstall them, or skip them with {plugins.DISABLE_ENV}=<distribution or entry-point name>")
    kinds = sorted({r.kind for r in found})
    return Check("plugins", True, f"{len(found)} components importable ({', '.join(kinds)})")


def _data_paths(suite_files: list[Path]) -> list[Check]:
    from advbench.errors import AdvbenchError
    from advbench.suite import safe_load_limited

    checks = []
    for suite_file in suite_files:
        shown = _shown(suite_file)
        try:
            raw = safe_load_limited(suite_file.read_text(), shown)
        except (OSError, UnicodeDecodeError, AdvbenchError) as exc:
            checks.append(Check(f"data {shown}", False, f"cannot read the suite ({_short(exc)})"))
            continue
        dataset = raw.get("dataset") if isinstance(raw, dict) else None
        options = dataset.get("options") if isinstance(dataset, dict) else None
        path = options.get("path") if isinstance(options, dict) else None
        if not path:
            continue  # no data file (digits, a download)
        resolved = Path(str(path)).expanduser()
        if not resolved.is_absolute():
            resolved = REPO / resolved
        if resolved.exists():
            checks.append(Check(f"data {shown}", True, f"dataset.options.path {path} present"))
        else:
            checks.append(Check(f"data {shown}", False, f"dataset.options.path {path} missing (looked for "
                                f"{os.path.normpath(resolved)}, relative paths from {REPO}); put the dataset "
                                "there or change the path"))
    return checks


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."
