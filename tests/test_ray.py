"""The grid on a real local Ray instance: the same results as the local run, nothing recomputed when warm, and
a worker killed mid-run retried by Ray with the same final numbers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, advbench_cli, load_results
from test_plan import SECTIONS

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def _task_processes() -> list[int]:
    """Ray worker processes running a stage node right now (Ray titles them after the task function)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::_run_node" in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray-local")
    suite = "suites/digits.yaml"  # Ray's workers get one thread each: so does this local reference
    advbench_cli("run", suite, "--out", str(tmp / "run"), "--no-report", "--threads", "1", cache=tmp / "cache")
    return suite, load_results(tmp / "run")


def test_ray_executor_runs_the_grid_as_the_local_run_and_reuses_it_warm(local_run, tmp_path):
    suite, local = local_run
    cache = tmp_path / "cache"
    advbench_cli("run", suite, "--out", str(tmp_path / "ray"), "--no-report", "--threads", "1", "--executor", "ray",
                 cache=cache)
    cold = load_results(tmp_path / "ray")
    assert cold["executor"]["plugin"] == "ray" and cold["complete"]
    for section in SECTIONS:
        assert cold[section] == local[section], section
    assert sorted((s["stage"], s["label"], s["cached"]) for s in cold["stages"]) == \
        sorted((s["stage"], s["label"], s["cached"]) for s in local["stages"])
    advbench_cli("run", suite, "--out", str(tmp_path / "warm"), "--no-report", "--threads", "1", "--executor", "ray",
                 cache=cache)
    warm = load_results(tmp_path / "warm")
    assert all(s["cached"] for s in warm["stages"] if s["stage"] != "data"), warm["stages"]
    assert warm["detection"] == local["detection"]


def test_a_ray_worker_killed_mid_run_is_retried_with_the_same_results(local_run, tmp_path):
    suite, local = local_run
    out = tmp_path / "killed"
    env = {**os.environ, "ADVBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "advbench.cli", "run", suite, "--out", str(out), "--no-report",
                             "--threads", "1", "--executor", "ray"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed = None
    deadline = time.time() + 300
    try:
        while killed is None and time.time() < deadline and proc.poll() is None:
            running = _task_processes()
            if running:
                killed = running[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        assert killed is not None, "no Ray task was seen running"
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    results = load_results(out)
    assert results["complete"]
    for section in SECTIONS:
        assert results[section] == local[section], section
