"""`advbench doctor`: a clean bill on this checkout, and the problem named when the data or the cache is not there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from advbench import plugins
from advbench.cli import main

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    plugins.reset()
    yield
    plugins.reset()


def doctor(*args: str):
    result = CliRunner().invoke(main, ["doctor", *args])
    assert "Traceback" not in result.output
    lines = result.stdout.splitlines()
    assert all(line.startswith(("ok ", "PROBLEM ")) for line in lines[:-1]), lines
    return result, lines


@pytest.mark.skipif(not CIFAR_TAR.is_file(), reason="the CIFAR-10 tarball the shipped suites name is not here")
def test_clean_on_this_checkout(tmp_path):
    result, lines = doctor()
    assert result.exit_code == 0, result.stdout
    assert lines[-1] == "all checks passed"
    for name in ("torch:", "torchvision:", "cuda:", "cache:", "plugins:", "data suites/quick.yaml:"):
        assert any(name in line for line in lines), name
    assert not (tmp_path / "cache").exists()  # a check creates nothing


def test_names_a_missing_data_path(tmp_path):
    raw = yaml.safe_load((REPO / "suites" / "quick.yaml").read_text())
    raw["dataset"]["options"]["path"] = "../shared/data/not-there.tar.gz"
    suite = tmp_path / "quick-copy.yaml"
    suite.write_text(yaml.safe_dump(raw))
    result, lines = doctor("--suite", str(suite))
    assert result.exit_code == 1
    (problem,) = [line for line in lines if line.startswith("PROBLEM")]
    assert str(suite) in problem and "dataset.options.path ../shared/data/not-there.tar.gz missing" in problem
    assert lines[-1] == "1 problem(s) to fix"


def test_names_an_unwritable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("ADVBENCH_CACHE", str(blocker / "cache"))  # root ignores chmod: a file in the way instead
    result, lines = doctor("--suite", str(REPO / "suites" / "digits.yaml"))
    assert result.exit_code == 1
    (problem,) = [line for line in lines if line.startswith("PROBLEM")]
    assert problem.startswith("PROBLEM cache: ") and "not writable" in problem and "ADVBENCH_CACHE" in problem


def test_names_a_permission_problem(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", denied)
    result, lines = doctor("--suite", str(REPO / "suites" / "digits.yaml"))
    assert result.exit_code == 1 and any("Permission denied" in line for line in lines)
