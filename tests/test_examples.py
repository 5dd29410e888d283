"""The outside author's path, in CI: `advbench new-plugin` output installs and passes its own tests as generated,
and the example third-party package under examples/ installs, shows in list-plugins under its own distribution
and passes its own tests (advbench.testing's checks). Both are real pip installs; both are slow (pip, pytest
in a subprocess), hence marked slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from advbench import plugins

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "advbench-occlusion"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def _env(tmp_path: Path, site: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "ADVBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.pop(plugins.DISABLE_ENV, None)
    return env


def _pytest(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_scaffolded_plugin_installs_editable_and_passes_its_own_tests(tmp_path):
    made = subprocess.run([sys.executable, "-m", "advbench.cli", "new-plugin", "interpreter", "my-method", "--dir",
                           str(tmp_path)], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "advbench-my-method"
    assert (package / "advbench_my_method" / "my_method.py").is_file()
    install = subprocess.run([*PIP, "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-e",
                              str(package)], capture_output=True, text=True, timeout=300)
    try:
        assert install.returncode == 0, install.stdout + install.stderr
        run = _pytest(package, _env(tmp_path))
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        assert " passed" in run.stdout and "failed" not in run.stdout
    finally:
        subprocess.run([*PIP, "uninstall", "--quiet", "-y", "advbench-my-method"], capture_output=True, timeout=300)
    listed = subprocess.run([*PIP, "show", "advbench-my-method"], capture_output=True, text=True, timeout=120)
    assert listed.returncode != 0  # uninstalled: the environment is as before


@pytest.mark.slow
def test_the_example_package_installs_shows_its_distribution_and_passes_its_tests(tmp_path):
    source = tmp_path / "advbench-occlusion"  # a copy, so the build leaves no egg-info or build/ in the repo
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    site = tmp_path / "site"  # installed into a --target folder, as tests/test_third_party.py does: the venv
    install = subprocess.run([*PIP, "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",  # is
                              "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr  # untouched; removing the folder uninstalls
    env = _env(tmp_path, site)
    listed = subprocess.run([sys.executable, "-m", "advbench.cli", "list-plugins", "--kind", "interpreter", "--json"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout) if r["name"] == "occlusion"]
    assert (row["distribution"], row["version"]) == ("advbench-occlusion", "0.1.0")
    assert "occlusion" not in plugins.names("interpreter")  # not a built-in, not in this environment
    run = _pytest(source, env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
    shutil.rmtree(site)
