"""A third-party plugin, end to end: the example package of CONTRIBUTING.md is extracted from that page, built
and installed with pip into a private --target folder (the virtual environment is not modified), then found
through its entry point by `advbench list-plugins` and used by a real (tiny) run of the digits suite.

The files are taken from CONTRIBUTING.md itself, so the documented example is the tested one."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from advbench import plugins
from advbench.cli import main

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "CONTRIBUTING.md"
# a caption **`advbench-edge/<path>`**, a blank line, then the fenced block holding that file
FILE_BLOCK = re.compile(r"^\*\*`(advbench-edge/[^`]+)`\*\*\n\n```[a-z]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXPECTED = {"advbench-edge/pyproject.toml", "advbench-edge/advbench_edge/__init__.py",
            "advbench-edge/advbench_edge/edge_saliency.py", "advbench-edge/tests/test_edge_saliency.py"}
SMALL = ["--set", "victims.cnn.epochs=1", "--set", "victims.cnn.width=8", "--set", "mask_classifier.epochs=1",
         "--set", "evaluation.n_eval=40", "--set", "evaluation.n_fit=20",
         "--set", "interpreters.edge.mask_train_limit=300"]


def example_files() -> dict[str, str]:
    return {path: body for path, body in FILE_BLOCK.findall(GUIDE.read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(package source folder, --target site folder, environment for subprocesses that see the plugin)."""
    root = tmp_path_factory.mktemp("third-party")
    for rel, body in example_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    source, site = root / "advbench-edge", root / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--quiet", "--target", str(site), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "ADVBENCH_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(plugins.DISABLE_ENV, None)
    return source, site, env


@pytest.fixture
def plugin_importable(installed, monkeypatch, tmp_path):
    """The --target folder on sys.path of this process, for the duration of one test; then forgotten."""
    _, site, _ = installed
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    monkeypatch.syspath_prepend(str(site))
    plugins.reset()
    try:
        yield site
    finally:
        monkeypatch.undo()
        for name in [m for m in sys.modules if m == "advbench_edge" or m.startswith("advbench_edge.")]:
            del sys.modules[name]
        plugins.reset()


def test_the_guide_holds_the_whole_example():
    files = example_files()
    assert set(files) == EXPECTED
    assert 'edge = "advbench_edge"' in files["advbench-edge/pyproject.toml"]
    assert "def register_interpreters(register):" in files["advbench-edge/advbench_edge/__init__.py"]
    assert "class Options(api.Options):" in files["advbench-edge/advbench_edge/edge_saliency.py"]


def test_the_target_install_leaves_the_environment_alone_and_exposes_the_entry_point(installed):
    _, site, _ = installed
    assert importlib.util.find_spec("advbench_edge") is None  # not in the venv
    assert "advbench-edge" not in {d.metadata["Name"] for d in importlib.metadata.distributions()}
    (dist,) = [d for d in importlib.metadata.distributions(path=[str(site)]) if d.metadata["Name"] == "advbench-edge"]
    assert dist.version == "0.1.0"
    (entry,) = [e for e in dist.entry_points if e.group == "advbench"]
    assert (entry.name, entry.value) == ("edge", "advbench_edge")


def test_the_package_tests_pass_and_the_registry_and_table_show_it(plugin_importable, installed):
    reg = plugins.lookup("interpreter", "edge-saliency")
    assert (reg.distribution, reg.version, reg.kind) == ("advbench-edge", "0.1.0", "interpreter")
    assert reg.cls.__module__ == "advbench_edge.edge_saliency"
    assert "gradient" in plugins.names("interpreter")  # the built-ins are still there

    # the example's own tests (plain functions), run against the installed plugin
    source, _, _ = installed
    spec = importlib.util.spec_from_file_location("_edge_tests", source / "tests" / "test_edge_saliency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [getattr(module, n) for n in dir(module) if n.startswith("test_")]
    assert len(tests) >= 5
    for test in tests:
        test()

    table = CliRunner().invoke(main, ["list-plugins", "--kind", "interpreter"])
    assert table.exit_code == 0, table.output
    row = next(line for line in table.stdout.splitlines() if "edge-saliency" in line)
    assert "advbench-edge" in row and "0.1.0" in row


def test_list_plugins_in_a_real_process_shows_distribution_and_version(installed):
    _, _, env = installed
    proc = subprocess.run([sys.executable, "-m", "advbench.cli", "list-plugins", "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    (edge,) = [r for r in rows if r["name"] == "edge-saliency"]
    assert edge["kind"] == "interpreter"
    assert (edge["distribution"], edge["version"]) == ("advbench-edge", "0.1.0")
    assert edge["description"].startswith("Sobel edge magnitude")
    assert {r["distribution"] for r in rows} == {"advbench", "advbench-edge"}


def test_a_digits_suite_runs_with_the_plugin(installed, tmp_path):
    _, _, env = installed
    raw = yaml.safe_load((REPO / "suites" / "digits.yaml").read_text())
    raw["interpreters"] = {"edge": {"plugin": "edge-saliency"}}
    suite = tmp_path / "digits-edge.yaml"
    suite.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "advbench.cli", "run", str(suite), "--no-report", "--out", str(out),
                           *SMALL], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    (row,) = results["interpreters"]
    assert (row["victim"], row["interpreter"], row["plugin"]) == ("cnn", "edge", "edge-saliency")
    assert row["n_train_masks"] == 300 and row["mask_channels"] == 1
    assert 0 <= row["mask_classifier_accuracy"] <= 1
    assert {"kind": "interpreter", "name": "edge-saliency", "distribution": "advbench-edge",
            "version": "0.1.0"} in results["plugins"]
    detection = [r for r in results["detection"] if r["detector"] == "contrastive"]
    assert detection and {r["interpreter"] for r in detection} == {"edge"}
    assert results["attacks"][0]["n"] == 40
