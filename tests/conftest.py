"""Shared fixtures: real end-to-end runs of the digits suite, made once per test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# two cores are shared by the test process and the runs it starts
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def advbench_cli(*args: str, cache: Path, timeout: float = 900, check: bool = True,
                 env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``advbench`` command as a user would, with a private cache."""
    env = {**os.environ, "ADVBENCH_CACHE": str(cache), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "advbench.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"advbench {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits-cache")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, digits_cache) -> Path:
    """The run folder of ``advbench run suites/digits.yaml`` from a cold cache (report included)."""
    out = tmp_path_factory.mktemp("digits-run") / "run"
    advbench_cli("run", "suites/digits.yaml", "--out", str(out), cache=digits_cache)
    return out


def load_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def one_thread():
    """The suite's machines are small and shared: one intra-op thread avoids oversubscription stalls."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
