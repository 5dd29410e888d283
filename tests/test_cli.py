"""The `advbench` command's listing and housekeeping commands, through click's CliRunner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import advbench
import advbench.api
from advbench import plugins
from advbench.api import KINDS
from advbench.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    return result


def table_rows(text: str) -> list[list[str]]:
    """Cells of a rich table's first lines per row (the lines that start a row have a kind in column 1)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def test_list_plugins_table_shows_every_component_uncut():
    result = invoke("list-plugins")
    assert result.exit_code == 0, result.output
    rows = [r for r in table_rows(result.stdout) if r[0]]  # continuation lines have an empty kind
    shown = {(r[0], r[1]) for r in rows}
    for reg in plugins.components():
        assert (reg.kind, reg.name) in shown, reg.name  # full names, never cut with an ellipsis
    for name in ("lan", "fgsm", "contrastive", "integrated-gradients", "feature-squeezing", "small-cnn", "digits"):
        assert any(r[1] == name for r in rows), name
    assert "…" not in "".join(r[1] for r in rows)
    assert all(r[2] == "advbench" and r[3] == advbench.__version__ for r in rows)
    for column in ("kind", "name", "distribution", "version", "description"):
        assert column in result.stdout


def test_list_plugins_json_is_complete():
    result = invoke("list-plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and all(isinstance(row, dict) for row in rows)
    for row in rows:
        assert {"kind", "name", "distribution", "version"} <= set(row), row
        assert row["kind"] in KINDS and row["name"]
        assert isinstance(row["aliases"], list) and isinstance(row["description"], str)
    assert {row["kind"] for row in rows} == set(KINDS)
    assert {(row["kind"], row["name"]) for row in rows} == {(r.kind, r.name) for r in plugins.components()}
    names = {row["name"] for row in rows}
    assert {"lan", "fgsm", "contrastive", "digits", "small-cnn", "local"} <= names
    bim = next(row for row in rows if row["name"] == "bim")
    assert bim["aliases"] == list(plugins.lookup("attack", "bim").aliases)


@pytest.mark.parametrize("kind", ["attack", "detector"])
def test_list_plugins_kind_filter(kind):
    result = invoke("list-plugins", "--kind", kind, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and {row["kind"] for row in rows} == {kind}
    assert sorted(row["name"] for row in rows) == plugins.names(kind)

    table = invoke("list-plugins", "--kind", kind)
    assert table.exit_code == 0
    kinds = {r[0] for r in table_rows(table.stdout) if r[0]}
    assert kinds == {kind}
    assert ("fgsm" in table.stdout) == (kind == "attack")
    assert ("contrastive" in table.stdout) == (kind == "detector")


def test_list_plugins_rejects_an_unknown_kind():
    result = invoke("list-plugins", "--kind", "attacks")
    assert result.exit_code == 2
    assert "attacks" in result.stderr and "attack" in result.stderr


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"advbench, version {advbench.__version__}"


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "list-plugins", "report", "cache"):
        assert command in result.stdout


def test_report_of_a_folder_without_results_is_one_line_exit_2(tmp_path):
    result = invoke("report", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("advbench: error: ") and str(tmp_path) in result.stderr
    assert "results.json" in result.stderr


def test_a_broken_plugin_is_one_line_and_listed_as_broken():
    """A plugin that fails to register reaches the user as one line, not a traceback; the rest keeps working."""

    class Nameless(advbench.api.Attack):
        description = "forgot its name"

    class Broken:
        @advbench.hookimpl
        def register_attacks(register):
            register(Nameless)

    name = f"test-cli-broken-{id(Broken)}"
    plugins.register_plugin(Broken, name=name)
    try:
        result = invoke("list-plugins")
        listed = invoke("list-plugins", "--json")
    finally:
        plugins.unregister_plugin(Broken)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"advbench: plugin <local> (entry point '{name}') is broken and was skipped: ")
    assert "Nameless has no name" in result.stderr and f"ADVBENCH_DISABLE_PLUGINS={name}" in result.stderr
    assert any(r[0] == "broken" for r in table_rows(result.stdout))
    assert "fgsm" in result.stdout  # the others are still listed
    rows = json.loads(listed.stdout)
    bad = [row for row in rows if row["broken"]]
    assert [(b["name"], b["distribution"]) for b in bad] == [(name, "<local>")] and "has no name" in bad[0]["error"]
    assert all(row["broken"] is False and "error" not in row for row in rows if row is not bad[0])
    assert "broken" not in invoke("list-plugins").stdout  # fine again once it is gone


def test_markup_in_a_plugin_description_prints_as_written():
    class Markup(advbench.api.Interpreter):
        name = "zz-markup"
        description = "[/oops] [bold]not bold[/bold] [link=x]"

    class Plugin:
        @advbench.hookimpl
        def register_interpreters(register):
            register(Markup)

    plugins.register_plugin(Plugin, name=f"test-cli-markup-{id(Plugin)}")
    try:
        result = CliRunner().invoke(main, ["list-plugins", "--kind", "interpreter"], env={"COLUMNS": "300"})
    finally:
        plugins.unregister_plugin(Plugin)
    assert result.exit_code == 0, result.output
    assert "[/oops] [bold]not bold[/bold] [link=x]" in result.stdout


def test_markup_in_names_is_escaped_in_the_run_summary(capsys):
    from advbench import cli

    row = {"population": "successful", "detector": "[/d]", "interpreter": "[bold]i", "attack": "[/a]",
           "source": "s", "target": "t", "subset": "all", "n_adversarial": 3, "tpr": 0.5, "tnr": 0.5, "auroc": 0.5}
    cli._summary({"suite": "[/suite]", "detection": [row]})
    err = " ".join(capsys.readouterr().err.split())
    for text in ("[/d]", "[bold]i", "[/a]", "[/suite]"):
        assert text in err


def test_markup_in_a_cache_description_is_printed_as_written():
    from advbench.cache import Cache

    Cache().save("ab" * 32, {"x": 1}, stage="scores", description="detector [/oops] on [bold]x")
    result = CliRunner().invoke(main, ["cache", "ls"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "detector [/oops] on [bold]x" in result.stdout
