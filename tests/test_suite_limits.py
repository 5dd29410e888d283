"""Size limits on suite files (issue 16, item 6): bytes, alias expansion and nesting, each one line naming the
file and the limit; plus non-UTF-8 suites and --set values that try the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from advbench import suite as suite_module
from advbench.errors import SuiteError
from advbench.suite import MAX_DEPTH, MAX_NODES, MAX_SUITE_BYTES, load_suite

REPO = Path(__file__).resolve().parents[1]
DIGITS = (REPO / "suites" / "digits.yaml").read_text()


def rejected(path: Path, *overrides: str) -> str:
    with pytest.raises(SuiteError) as info:
        load_suite(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def billion_laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_alias_expansion_is_bounded(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(DIGITS + "paper_reference:\n" + "".join("  " + line + "\n"
                                                           for line in billion_laughs(9).splitlines()))
    assert len(path.read_bytes()) < 3000  # a small file ...
    message = rejected(path)  # ... that would expand to 10**9 strings
    assert f"more than {MAX_NODES} YAML nodes" in message and "aliases" in message


def test_moderate_aliases_still_work(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text(DIGITS + "paper_reference:\n" + "".join("  " + line + "\n"
                                                           for line in billion_laughs(3).splitlines()))
    assert load_suite(path).spec.paper_reference["a2"][0][0][0] == "lol"


def test_recursive_alias_is_rejected(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(DIGITS + "paper_reference: &loop\n  self: *loop\n")
    assert "recursive" in rejected(path)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000])
def test_nesting_is_bounded(tmp_path, depth):
    path = tmp_path / "deep.yaml"
    path.write_text(DIGITS + "paper_reference: " + "[" * depth + "]" * depth + "\n")
    assert f"nested deeper than {MAX_DEPTH} levels" in rejected(path)


def test_nesting_through_aliases_is_bounded(tmp_path):
    half = MAX_DEPTH // 2 + 2
    path = tmp_path / "deep-alias.yaml"
    path.write_text(DIGITS + "paper_reference:\n  a: &a " + "[" * half + "]" * half + "\n  b: " + "[" * half
                    + "*a" + "]" * half + "\n")
    assert "nested deeper" in rejected(path)


def test_file_size_is_bounded(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(DIGITS + "# " + "x" * MAX_SUITE_BYTES + "\n")
    assert f"larger than {MAX_SUITE_BYTES // 1024} KiB" in rejected(path)


def test_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(DIGITS.encode() + b"description: caf\xe9\n")
    assert "not UTF-8" in rejected(path)


def test_a_folder_is_one_line(tmp_path):
    assert "folder" in rejected(tmp_path)


def test_set_value_with_an_alias_bomb_is_bounded():
    bomb = "[" + ", ".join(["&a [1,1,1,1,1,1,1,1,1,1]"] + ["*a"] * 20) + "]"
    flow = "{" + billion_laughs(8).strip().replace("\n", ", ") + "}"
    message = rejected(REPO / "suites" / "digits.yaml", f"paper_reference.x={flow}")
    assert "(--set paper_reference.x=" in message and f"more than {MAX_NODES} YAML nodes" in message
    load_suite(REPO / "suites" / "digits.yaml", [f"paper_reference.x={bomb}"])  # 220 nodes: fine


def test_the_shipped_suites_are_well_inside_the_limits():
    for path in sorted((REPO / "suites").glob("*.yaml")):
        assert len(path.read_bytes()) < MAX_SUITE_BYTES // 16
        suite_module.safe_load_limited(path.read_text(), str(path))


# item 5: suite names; item 7: --set that creates an entry is blamed on the --set

@pytest.mark.parametrize("name,expected", [("a\x00b", "control character"), ("x" * 300, "300 characters"),
                                           ("line\nbreak", "control character")])
def test_an_invalid_name_names_the_field(tmp_path, name, expected):
    import yaml

    raw = yaml.safe_load(DIGITS)
    raw["name"] = name
    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump(raw))
    message = rejected(path)
    assert message.startswith(f"{path}: name: ") and expected in message


def test_a_set_that_creates_an_unknown_entry_is_blamed_on_the_set():
    message = rejected(REPO / "suites" / "digits.yaml", "attacks.fgsmx.options.eps=0.1")
    assert "attacks.fgsmx" in message and message.endswith("(from --set attacks.fgsmx.options.eps=0.1)")
    message = rejected(REPO / "suites" / "digits.yaml", "detectors.nope.plugin=contrastive-x")
    assert message.endswith("(from --set detectors.nope.plugin=contrastive-x)")


def test_a_huge_value_is_quoted_cut_so_the_line_stays_readable():
    """Found by tests/test_fuzz.py: a 5000-character value came back in full, twice (value and --set item)."""
    message = rejected(REPO / "suites" / "digits.yaml", "dataset.plugin=" + "x" * 5000)
    assert len(message) < 600 and "..." in message and "installed" in message and "(from --set " in message
