"""The content-addressed cache: round trip, atomic writes, corruption, torn entries, keys, and `advbench cache`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from advbench.cache import CACHE_ENV, Cache, default_root, make_key
from advbench.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


def payload() -> dict:
    return {"state_dict": {"w": torch.arange(12, dtype=torch.float32).view(3, 4), "b": torch.zeros(3)},
            "labels": torch.tensor([1, 2, 3]), "meta": {"epochs": 3, "names": ["a", "b"]}, "score": 0.5}


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def every_file(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_default_root_follows_the_environment(private_cache):
    assert default_root() == private_cache
    assert Cache().root == private_cache


def test_round_trip(private_cache):
    cache = Cache()
    key = make_key("victim", {"epochs": 3}, [], {"name": "x", "version": "1", "revision": "1"})
    assert cache.load(key) is None and not cache.contains(key)
    cache.save(key, payload(), stage="victim", description="victims.cnn")
    assert cache.contains(key)
    assert_same(cache.load(key), payload())
    # a fresh Cache object on the same root (another process) sees it too
    assert_same(Cache(private_cache).load(key), payload())
    (entry,) = cache.entries()
    assert (entry.key, entry.stage, entry.description) == (key, "victim", "victims.cnn")
    assert entry.size == (private_cache / key[:2] / f"{key}.pt").stat().st_size
    meta = json.loads((private_cache / key[:2] / f"{key}.json").read_text())
    assert meta["key"] == key and len(meta["sha256"]) == 64


def test_get_or_compute_computes_once(private_cache):
    cache = Cache()
    calls = []

    def compute():
        calls.append(1)
        return payload()

    first, cached = cache.get_or_compute("ab" * 32, compute, stage="scores")
    assert not cached and len(calls) == 1
    second, cached = cache.get_or_compute("ab" * 32, compute, stage="scores")
    assert cached and len(calls) == 1
    assert_same(first, second)


def test_atomic_write_leaves_no_temporary_files(private_cache):
    cache = Cache()
    for i in range(3):
        cache.save(make_key("s", {"i": i}, []), payload(), stage="s")
    names = [p.name for p in every_file(private_cache)]
    assert len(names) == 6
    assert all(n.endswith((".pt", ".json")) and not n.startswith(".") for n in names), names


def test_a_failed_write_leaves_neither_an_entry_nor_a_temporary_file(private_cache, monkeypatch):
    cache = Cache()
    key = make_key("s", {}, [])

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        cache.save(key, payload())
    monkeypatch.undo()
    assert every_file(private_cache) == []
    assert cache.load(key) is None and cache.entries() == []


def test_metadata_is_written_last(private_cache, monkeypatch):
    """Killed between the two renames: the payload is there, the metadata is not, and nothing is trusted."""
    import advbench.cache as cache_module

    cache = Cache()
    key = make_key("s", {}, [])
    real = cache_module._atomic_write
    written = []

    def dies_before_metadata(path, data):
        if path.suffix == ".json":
            raise KeyboardInterrupt
        written.append(path.suffix)
        real(path, data)

    monkeypatch.setattr(cache_module, "_atomic_write", dies_before_metadata)
    with pytest.raises(KeyboardInterrupt):
        cache.save(key, payload())
    monkeypatch.undo()
    assert written == [".pt"]
    assert not cache.contains(key) and cache.load(key) is None


def test_a_torn_entry_is_not_trusted_and_is_recomputed(private_cache):
    cache = Cache()
    key = make_key("s", {"torn": True}, [])
    cache.save(key, {"x": torch.ones(2)})
    (private_cache / key[:2] / f"{key}.json").unlink()  # payload without its metadata
    assert not cache.contains(key)
    assert cache.load(key) is None
    # listed only as damaged (so `cache clear` removes it), never as a usable entry
    assert [e.problem for e in cache.entries() if e.key == key] == ["metadata missing"]
    value, cached = cache.get_or_compute(key, lambda: {"x": torch.zeros(2)})
    assert not cached and torch.equal(value["x"], torch.zeros(2))
    assert torch.equal(cache.load(key)["x"], torch.zeros(2))  # the recomputed value replaced the torn one


def test_a_corrupted_payload_is_reported_removed_and_recomputed(private_cache, caplog):
    cache = Cache()
    key = make_key("victim", {"corrupt": True}, [])
    cache.save(key, payload(), stage="victim")
    path = private_cache / key[:2] / f"{key}.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # flip one bit in the middle
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="advbench.cache"):
        assert cache.load(key) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "advbench.cache"]
    assert len(warnings) == 1 and key[:12] in warnings[0].getMessage()
    assert "corrupt" in warnings[0].getMessage() and "sha256" in warnings[0].getMessage()
    assert not path.exists() and not cache.contains(key)  # removed

    calls = []
    value, cached = cache.get_or_compute(key, lambda: calls.append(1) or payload(), stage="victim")
    assert not cached and calls == [1]
    assert_same(value, payload())
    assert_same(cache.load(key), payload())


def test_damaged_metadata_is_reported_and_not_trusted(private_cache, caplog):
    cache = Cache()
    key = make_key("s", {"meta": "damaged"}, [])
    cache.save(key, payload())
    (private_cache / key[:2] / f"{key}.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="advbench.cache"):
        assert cache.load(key) is None
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert not cache.contains(key)


def test_make_key_is_stable_and_changes_with_config_inputs_and_plugin():
    plugin = {"name": "fgsm", "distribution": "advbench", "version": "0.1.0", "revision": "1"}
    base = make_key("adversarial", {"options": {"eps": 0.1}, "seed": 0}, ["k1", "k2"], plugin)
    assert len(base) == 64 and int(base, 16) >= 0
    # stable: the same document, dict order does not matter
    assert base == make_key("adversarial", {"seed": 0, "options": {"eps": 0.1}}, ["k1", "k2"], dict(plugin))
    changed = [
        make_key("scores", {"options": {"eps": 0.1}, "seed": 0}, ["k1", "k2"], plugin),
        make_key("adversarial", {"options": {"eps": 0.2}, "seed": 0}, ["k1", "k2"], plugin),
        make_key("adversarial", {"options": {"eps": 0.1}, "seed": 1}, ["k1", "k2"], plugin),
        make_key("adversarial", {"options": {"eps": 0.1}, "seed": 0}, ["k1", "k3"], plugin),
        make_key("adversarial", {"options": {"eps": 0.1}, "seed": 0}, ["k2", "k1"], plugin),  # input order matters
        make_key("adversarial", {"options": {"eps": 0.1}, "seed": 0}, ["k1"], plugin),
        make_key("adversarial", {"options": {"eps": 0.1}, "seed": 0}, ["k1", "k2"], {**plugin, "revision": "2"}),
        make_key("adversarial", {"options": {"eps": 0.1}, "seed": 0}, ["k1", "k2"], {**plugin, "version": "0.2.0"}),
        make_key("adversarial", {"options": {"eps": 0.1}, "seed": 0}, ["k1", "k2"], {**plugin, "name": "bim"}),
        make_key("adversarial", {"options": {"eps": 0.1}, "seed": 0}, ["k1", "k2"], None),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_clear_by_stage_and_all(private_cache):
    cache = Cache()
    keys = {stage: make_key(stage, {}, []) for stage in ("victim", "adversarial", "scores")}
    for stage, key in keys.items():
        cache.save(key, {"x": torch.ones(1)}, stage=stage)
    assert cache.clear("adversarial") == 1
    assert sorted(e.stage for e in cache.entries()) == ["scores", "victim"]
    assert cache.clear() == 2
    assert cache.entries() == [] and every_file(private_cache) == []


def test_clear_all_removes_only_what_the_cache_wrote(private_cache):
    """ADVBENCH_CACHE may point at a folder holding other things: clearing must not delete them."""
    cache = Cache()
    cache.save(make_key("s", {}, []), {"x": torch.ones(1)}, stage="s")
    (private_cache / "notes.txt").write_text("mine")
    (private_cache / "project").mkdir()
    (private_cache / "project" / "data.pt").write_bytes(b"mine")
    assert cache.clear() == 1
    assert (private_cache / "notes.txt").read_text() == "mine"
    assert (private_cache / "project" / "data.pt").read_bytes() == b"mine"
    assert cache.entries() == []


# ---------------------------------------------------------------------------------------------------------
# advbench cache ls / clear


def test_cache_ls_and_clear_commands(private_cache):
    cache = Cache()
    victim = make_key("victim", {"n": 1}, [])
    adversarial = make_key("adversarial", {"n": 2}, [])
    cache.save(victim, {"x": torch.ones(10)}, stage="victim", description="victims.cnn")
    cache.save(adversarial, {"x": torch.ones(10)}, stage="adversarial", description="fgsm on cnn")
    runner = CliRunner()

    result = runner.invoke(main, ["cache", "ls"])
    assert result.exit_code == 0, result.output
    assert victim[:12] in result.stdout and adversarial[:12] in result.stdout
    assert "victims.cnn" in result.stdout and "fgsm on cnn" in result.stdout
    assert "2 entries" in result.stdout

    result = runner.invoke(main, ["cache", "ls", "--json"])
    assert result.exit_code == 0, result.output
    listed = {e["key"]: e for e in json.loads(result.stdout)}
    assert set(listed) == {victim, adversarial}
    assert listed[victim]["stage"] == "victim" and listed[victim]["size"] > 0

    result = runner.invoke(main, ["cache", "clear", "--stage", "adversarial", "--yes"])
    assert result.exit_code == 0 and "removed 1 entries" in result.stdout
    assert [e.key for e in cache.entries()] == [victim]

    result = runner.invoke(main, ["cache", "clear"], input="n\n")  # asks first; "no" keeps everything
    assert result.exit_code == 0 and [e.key for e in cache.entries()] == [victim]

    result = runner.invoke(main, ["cache", "clear", "--yes"])
    assert result.exit_code == 0 and "removed 1 entries" in result.stdout
    assert cache.entries() == []
    result = runner.invoke(main, ["cache", "ls"])
    assert result.exit_code == 0 and "0 entries" in result.stdout
