"""results.json's git_commit: the commit of the checkout the code comes from, or None, never another repo's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from advbench.runner import _git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "advbench").mkdir(parents=True)
    (root / "advbench" / "runner.py").write_text("# tracked\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "first")
    return root


def test_a_tracked_checkout_gives_its_commit_and_says_dirty(repo):
    source = repo / "advbench" / "runner.py"
    head = git(repo, "rev-parse", "HEAD")
    assert _git_commit(source=source) == head
    source.write_text("# changed\n")
    assert _git_commit(source=source) == head + "+dirty"
    # a change inside the run folder is the run's own output, not a dirty checkout
    source.write_text("# tracked\n")
    (repo / "out").mkdir()
    (repo / "out" / "results.json").write_text("{}")
    git(repo, "add", "out")
    git(repo, "commit", "-qm", "a run folder")
    (repo / "out" / "results.json").write_text('{"new": 1}')
    assert _git_commit(run_dir=repo / "out", source=source) == git(repo, "rev-parse", "HEAD")


def test_an_installed_copy_inside_another_repository_claims_no_commit(repo):
    # pip install --target (or a venv's site-packages) under some project's checkout: the code is not that
    # project's tracked file, so its commit says nothing about what ran
    installed = repo / "site" / "advbench" / "runner.py"
    installed.parent.mkdir(parents=True)
    installed.write_text("# installed copy\n")
    assert _git_commit(source=installed) is None


def test_outside_any_repository_there_is_no_commit(tmp_path):
    loose = tmp_path / "loose" / "advbench" / "runner.py"
    loose.parent.mkdir(parents=True)
    loose.write_text("# no git here\n")
    assert _git_commit(source=loose) is None
