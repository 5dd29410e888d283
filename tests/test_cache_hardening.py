"""A damaged cache stays usable (issue 16, items 4, 12, 13): damaged metadata is listed and cleared, a payload a
reader cannot use is discarded and recomputed, warnings are one line, files are group-readable, and two
processes computing one key compute it once."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from advbench.cache import CACHE_ENV, Cache, make_key
from advbench.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


def two_entries() -> tuple[Cache, str, str]:
    cache = Cache()
    good = make_key("victim", {"n": 1}, [])
    bad = make_key("adversarial", {"n": 2}, [])
    cache.save(good, {"x": torch.ones(3)}, stage="victim", description="victims.cnn")
    cache.save(bad, {"x": torch.ones(3)}, stage="adversarial", description="fgsm on cnn")
    return cache, good, bad


DAMAGE = {
    "a JSON list": "[1, 2]",
    "truncated JSON": '{"key": "abc", "stage": "vic',
    "missing fields": '{"key": "abc"}',
    "wrong types": '{"key": 1, "stage": [], "description": "", "size": "big", "sha256": "", "created": "now"}',
    "not UTF-8": b"\xff\xfe\x00garbage",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_metadata_is_listed_and_cleared(private_cache, damage):
    cache, good, bad = two_entries()
    meta = private_cache / bad[:2] / f"{bad}.json"
    value = DAMAGE[damage]
    meta.write_bytes(value if isinstance(value, bytes) else value.encode())

    entries = {e.key: e for e in cache.entries()}
    assert set(entries) == {good, bad}
    assert entries[good].problem is None and entries[bad].problem

    runner = CliRunner()
    result = runner.invoke(main, ["cache", "ls"])
    assert result.exit_code == 0, result.output
    assert "DAMAGED" in result.stdout and "1 damaged" in result.stdout and "2 entries" in result.stdout
    listed = json.loads(runner.invoke(main, ["cache", "ls", "--json"]).stdout)
    assert {e["key"]: e["problem"] for e in listed}[bad]

    assert cache.load(bad) is None  # never trusted

    cache.save(bad, {"x": torch.ones(3)}, stage="adversarial")
    meta.write_bytes(value if isinstance(value, bytes) else value.encode())
    result = runner.invoke(main, ["cache", "clear", "--stage", "victim", "--yes"])  # takes the damaged one too
    assert result.exit_code == 0, result.output
    assert "removed 2 entries (1 damaged)" in result.stdout
    assert cache.entries() == []


def test_clear_all_works_on_a_damaged_cache(private_cache):
    cache, good, bad = two_entries()
    (private_cache / bad[:2] / f"{bad}.json").write_text("[1, 2]")
    result = CliRunner().invoke(main, ["cache", "clear", "--yes"])
    assert result.exit_code == 0, result.output
    assert "removed 2 entries" in result.stdout and cache.entries() == []


def test_a_payload_its_reader_cannot_use_is_discarded_and_recomputed(private_cache, caplog):
    """A sound file with the wrong content (KeyError: 'accuracy' before) is reported once and recomputed."""
    cache = Cache()
    key = make_key("metrics", {"n": 1}, [])
    cache.save(key, {"wrong": 1.0}, stage="metrics")
    calls = []
    with caplog.at_level(logging.WARNING, logger="advbench.cache"):
        value, cached = cache.get_or_compute(key, lambda: calls.append(1) or {"accuracy": 0.9}, stage="metrics",
                                             check=lambda p: p["accuracy"] is not None)
    assert not cached and calls == [1] and value == {"accuracy": 0.9}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "unusable" in warnings[0] and "accuracy" in warnings[0]
    assert "\n" not in warnings[0]
    assert cache.load(key, check=lambda p: "accuracy" in p) == {"accuracy": 0.9}

    cache.discard(key, "the caller says so")
    assert not cache.contains(key)


def test_a_corrupt_payload_warning_is_one_line_without_torchs_text(private_cache, caplog):
    import hashlib

    cache = Cache()
    key = make_key("victim", {"n": 3}, [])
    cache.save(key, {"x": torch.ones(3)}, stage="victim")
    payload, meta_path = private_cache / key[:2] / f"{key}.pt", private_cache / key[:2] / f"{key}.json"
    junk = os.urandom(300)
    payload.write_bytes(junk)  # a valid hash over junk: torch itself must reject it
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(junk).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="advbench.cache"):
        assert cache.load(key) is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in message and "weights_only" not in message and "corrupt" in message


def test_files_are_group_readable(private_cache):
    old = os.umask(0o022)
    try:
        cache, good, _ = two_entries()
        with cache.lock(good):
            pass
    finally:
        os.umask(old)
    for path in private_cache.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_lock_is_reentrant_in_one_thread(private_cache):
    cache = Cache()
    key = make_key("s", {}, [])
    with cache.lock(key):
        with cache.lock(key):
            value, cached = cache.get_or_compute(key, lambda: {"v": torch.ones(1)})
    assert not cached and cache.load(key) is not None


WORKER = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from advbench.cache import Cache, make_key
    log = Path(sys.argv[1])
    def compute():
        with open(log, "a") as handle:
            handle.write("computed\\n")
        time.sleep(1.5)  # long enough for the other process to ask for the same key meanwhile
        return {"v": torch.arange(4)}
    value, cached = Cache().get_or_compute(make_key("victim", {"shared": 1}, []), compute, stage="victim")
    assert torch.equal(value["v"], torch.arange(4))
    print("cached" if cached else "computed")
""")


def test_two_processes_compute_one_key_once(private_cache, tmp_path):
    log = tmp_path / "calls.log"
    env = {**os.environ, CACHE_ENV: str(private_cache), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(log)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    assert log.read_text().splitlines() == ["computed"]  # once overall
    assert sorted(o[0].strip() for o in outputs) == ["cached", "computed"]  # the second waited and reused
