"""Property-based fuzzers (issue 16): mutated shipped suites, --set strings and damaged cache files.

Each property: the input is accepted, or refused with one AdvbenchError line naming the file; nothing else
escapes (no KeyError, TypeError, RecursionError, traceback). Examples are bounded so that the whole file runs in
well under two minutes on two cores; a failing example is printed by hypothesis and can be pinned with
@example. The CLI is exercised through a real subprocess for a few refused suites: exit 2, one stderr line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from advbench.cache import Cache, make_key
from advbench.errors import AdvbenchError
from advbench.rundir import NAME_MAX, folder_name
from advbench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
SUITES = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((REPO / "suites").glob("*.yaml"))}
# CI: 300 examples per property (each takes milliseconds) from a fixed seed (repeatable). ADVBENCH_FUZZ_EXAMPLES=2000 searches longer, with
# fresh random examples each run.
EXAMPLES = int(os.environ.get("ADVBENCH_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 300, deadline=None, derandomize=not EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ODD_STRINGS = ["", " ", "\x00", "a\x00b", "x" * 5000, "../../etc", "/abs/path", "ünïcødé", "\n\n", "'\"{}[]",
               "${HOME}", "*alias", "&anchor", "nan", "-1e309", "%s%n", "<script>", "C:\\windows"]
ODD_VALUES = [None, True, False, 0, -1, -(10 ** 30), 10 ** 30, 2 ** 63, 1e308, -1e-308, float("inf"), float("nan"),
              [], {}, [1, "a", None], {"unknown": 1}, {"plugin": "nope"}, *ODD_STRINGS]


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a YAML document (mapping keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, prefix + (i,))
    return found


def mutate(raw: dict, path: tuple, how: str, value: Any) -> Any:
    raw = copy.deepcopy(raw)
    if how == "whole":
        return value
    parent = raw
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "unknown-key" and isinstance(parent[last], dict):
        parent[last][value if isinstance(value, str) else "unknown_key"] = value
    elif how == "scale" and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
        parent[last] = parent[last] * value if isinstance(value, (int, float)) else value
    else:
        parent[last] = value
    return raw


@st.composite
def mutated_suites(draw) -> tuple[str, Any]:
    name = draw(st.sampled_from(sorted(SUITES)))
    raw = SUITES[name]
    how = draw(st.sampled_from(["replace", "delete", "unknown-key", "scale", "whole"]))
    value = draw(st.one_of(st.sampled_from(ODD_VALUES), st.integers(), st.text(max_size=30),
                           st.floats(allow_nan=True, allow_infinity=True)))
    if how in ("scale",):
        value = draw(st.sampled_from([-1, 0, -(10 ** 12), 10 ** 12, 1e300, -0.5]))
    path = draw(st.sampled_from(paths(raw)))
    return name, mutate(raw, path, how, value)


def assert_refused_well(exc: BaseException, source: str) -> None:
    assert isinstance(exc, AdvbenchError), f"{type(exc).__name__}: {exc}"
    message = " ".join(str(exc).split())
    assert message.startswith(source), message
    assert len(message) < 2000


def load_or_refuse(text: str, overrides: list[str] | None = None):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.yaml"
        path.write_text(text)
        try:
            suite = load_suite(path, overrides)
        except Exception as exc:  # noqa: BLE001 - the property is about what escapes
            assert_refused_well(exc, str(path))
            return None
        assert "/" not in folder_name(suite.name) and len(folder_name(suite.name)) <= NAME_MAX
        return suite


LONG = "x" * 5000


@FUZZ
@given(mutated_suites())
# found by a long run (ADVBENCH_FUZZ_EXAMPLES=1000): a 5000-character value quoted back in full made a 5 KB line
@example(("digits", mutate(SUITES["digits"], ("evaluation", "pairs", 0, "source"), "replace", LONG)))
@example(("digits", mutate(SUITES["digits"], ("name",), "replace", "a\x00b")))
def test_mutated_shipped_suites_load_or_are_refused_in_one_line(case):
    name, raw = case
    load_or_refuse(yaml.safe_dump(raw, allow_unicode=True))


@FUZZ
@given(st.sampled_from(sorted(SUITES)), st.binary(max_size=40), st.integers(min_value=0, max_value=4000))
def test_raw_byte_damage_to_a_suite_file_is_refused_in_one_line(name, junk, offset):
    data = (REPO / "suites" / f"{name}.yaml").read_bytes()
    offset = min(offset, len(data))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.yaml"
        path.write_bytes(data[:offset] + junk + data[offset + len(junk):])
        try:
            load_suite(path)
        except Exception as exc:  # noqa: BLE001
            assert_refused_well(exc, str(path))


FIELDS = [p for p in paths(SUITES["digits"])] + [("attacks", "fgsmx", "options", "eps"), ("victims", "cnn", "eps"),
                                                 ("sweep",), ("evaluation", "pairs", "7", "source"), ("seed",)]


@st.composite
def set_strings(draw) -> str:
    kind = draw(st.sampled_from(["known", "shorthand", "random"]))
    if kind == "random":
        return draw(st.text(max_size=60))
    path = ".".join(str(p) for p in draw(st.sampled_from(FIELDS)))
    if kind == "shorthand":
        path = path.replace(".options", "")
    value = draw(st.one_of(st.sampled_from([repr(v) if not isinstance(v, str) else v for v in ODD_VALUES]),
                           st.text(max_size=30), st.integers().map(str),
                           st.sampled_from(["[1, [2, [3]]]", "{a: 1}", "&a [*a]", "!!python/object:os.system x",
                                            "[", "{", "'unterminated", "0.2", "-0.2", "1e999"])))
    separator = draw(st.sampled_from(["=", "=", "==", " = ", ""]))
    return f"{path}{separator}{value}"


@FUZZ
@given(st.lists(set_strings(), min_size=1, max_size=3))
@example([f"dataset.plugin={LONG}"])  # found by a long run: the --set item and the value were quoted in full
@example([f"name={LONG}"])
def test_set_strings_apply_or_are_refused_in_one_line(items):
    source = str(REPO / "suites" / "digits.yaml")
    try:
        load_suite(source, items)
    except Exception as exc:  # noqa: BLE001
        assert_refused_well(exc, source)


# ---------------------------------------------------------------- damaged cache files

PAYLOAD = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "accuracy": 0.5, "names": ["a", "b"]}
JSON_DAMAGE = st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={"key": st.one_of(st.text(max_size=5), st.integers()),
                                        "stage": st.one_of(st.text(max_size=5), st.none()),
                                        "description": st.text(max_size=5), "size": st.integers(),
                                        "sha256": st.text(max_size=64), "created": st.floats()})
    .map(lambda d: json.dumps(d).encode()),
)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@FUZZ
@given(target=st.sampled_from(["pt", "json", "both", "pt-with-valid-hash"]), meta=JSON_DAMAGE,
       junk=st.binary(max_size=300), offset=st.integers(min_value=0, max_value=2000))
def test_damaged_cache_files_never_escape(target, meta, junk, offset):
    with tempfile.TemporaryDirectory() as folder:
        cache = Cache(Path(folder))
        key = make_key("victim", {"fuzz": 1}, [])
        cache.save(key, PAYLOAD, stage="victim", description="fuzzed")
        payload_path, meta_path = cache._paths(key)
        if target in ("pt", "both", "pt-with-valid-hash"):
            data = payload_path.read_bytes()
            offset = min(offset, len(data))
            damaged = data[:offset] + junk + data[offset + len(junk):]
            payload_path.write_bytes(damaged)
            if target == "pt-with-valid-hash":  # the hash agrees: torch itself must refuse the bytes
                document = json.loads(meta_path.read_text())
                document["sha256"] = hashlib.sha256(damaged).hexdigest()
                meta_path.write_text(json.dumps(document))
        if target in ("json", "both"):
            meta_path.write_bytes(meta)
        loaded = cache.load(key)
        if target != "pt-with-valid-hash":
            assert loaded is None or same(loaded, PAYLOAD)
        # with the hash rewritten to agree, a changed number loads as that number: only a caller's check can
        # refuse it (Cache.load(key, check=...)); the property there is that nothing escapes
        cache.save(key, PAYLOAD, stage="victim")
        (meta_path if target != "json" else payload_path).write_bytes(junk)  # damage once more, for ls / clear
        listed = cache.entries()
        assert all(isinstance(e.key, str) and isinstance(e.size, int) for e in listed)
        assert cache.clear("victim") >= 0 and cache.clear() >= 0
        assert cache.entries() == []


# ---------------------------------------------------------------- a few refused suites through the real CLI

def refused_mutations(count: int) -> list[str]:
    """Deterministic mutations that load_suite refuses, found by drawing from a seeded generator."""
    rng = random.Random(16)
    found: list[str] = []
    while len(found) < count:
        name = rng.choice(sorted(SUITES))
        raw = SUITES[name]
        text = yaml.safe_dump(mutate(raw, rng.choice(paths(raw)), rng.choice(["replace", "delete", "unknown-key"]),
                                     rng.choice(ODD_VALUES)), allow_unicode=True)
        if load_or_refuse(text) is None:
            found.append(text)
    return found


@pytest.mark.parametrize("index", range(4))
def test_refused_suites_through_the_cli_are_one_line_exit_2(index, tmp_path):
    suite = tmp_path / "fuzzed.yaml"
    suite.write_text(refused_mutations(4)[index])
    env = {**os.environ, "ADVBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "advbench.cli", "run", str(suite), "--out", str(tmp_path / "run")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"advbench: error: {suite}")
