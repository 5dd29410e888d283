"""Signals reaching `advbench run` (issue 16, item 11): SIGTERM is handled like Ctrl-C, Ctrl-C before any result
exists is one line and exit 130, a double Ctrl-C exits 130. Each child restores the default SIGINT disposition
itself, so these pass whether pytest runs in the foreground or as a background job (which inherits SIG_IGN)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the real CLI, with one slow spot patched in so the signal arrives at a known moment
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    marker, where = Path(sys.argv[1]), sys.argv[2]

    def slow(*args, **kwargs):
        marker.write_text("ready")
        time.sleep(120)

    if where == "run_suite":  # before run_suite wrote anything (just after the banner)
        import advbench.runner
        advbench.runner.run_suite = slow
    else:  # inside the run: the dataset is loading
        from advbench_datasets.digits import Digits
        Digits.load = slow
    from advbench.cli import main
    main(sys.argv[3:], prog_name="advbench")
""")


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job inherits SIG_IGN: undo it in the child


def start(tmp_path: Path, where: str, *args: str) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "ready"
    env = {**os.environ, "ADVBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # launch as a background job would
    try:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), where, "run", "suites/digits.yaml", *args],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_sigint)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    return proc, marker


def test_ctrl_c_before_any_result_is_one_line_exit_130(tmp_path):
    out = tmp_path / "run"
    proc, _ = start(tmp_path, "run_suite", "--out", str(out))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1
    assert stderr.startswith("advbench: interrupted")


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_run_keeps_partial_results_and_the_page(tmp_path, signum, status):
    out = tmp_path / "run"
    proc, _ = start(tmp_path, "load", "--out", str(out))
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr[-2000:]
    assert "Traceback" not in stderr
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False and results["missing"]
    assert (out / "index.html").is_file()
    if signum == signal.SIGTERM:
        assert "SIGTERM" in (out / "run.log").read_text()
    assert "detection (" not in stderr  # no empty table before the 'interrupted' line


def test_a_double_ctrl_c_exits_130(tmp_path):
    out = tmp_path / "run"
    proc, _ = start(tmp_path, "load", "--out", str(out))
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
