"""Containment: deliberately broken installed plugins, each a distribution on sys.path (a package folder and a
.dist-info folder with its entry_points.txt, found by importlib.metadata exactly as a pip-installed one).

For each way to break: exactly one line on stderr naming the distribution and entry point, `list-plugins` still
works and shows it as broken, a suite that does not use it still loads, a suite that names its component fails
with one line naming it, and ADVBENCH_DISABLE_PLUGINS takes the distribution's name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from advbench import plugins
from advbench.cli import main
from advbench.errors import SuiteError
from advbench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "suites" / "digits.yaml"

GOOD_CLASS = '''
from advbench import api


class Saliency(api.Interpreter):
    name = "zz-broken-test-saliency"
    description = "a test interpreter"
'''

# name -> (module source, what the one line must contain)
CASES = {
    "import-error": ("import advbench_no_such_module_anywhere\n",
                     "ModuleNotFoundError: No module named 'advbench_no_such_module_anywhere'"),
    "syntax-error": ("def register_interpreters(register:\n", "SyntaxError"),
    "any-exception": ("raise KeyError('no config file')\n", "KeyError: 'no config file'"),
    "hook-error": ("import advbench\n\n@advbench.hookimpl\ndef register_interpreters(register):\n"
                   "    register('zz-broken-test-saliency', 'PKG.impl:Saliency')\n"
                   "    raise RuntimeError('cannot read my weights')\n",
                   "its registration hook raised RuntimeError: cannot read my weights"),
    "duplicate-name": ("import advbench\n\n@advbench.hookimpl\ndef register_interpreters(register):\n"
                       "    register('gradient', 'PKG.impl:Saliency', description='mine')\n",
                       "two plugins register the interpreter name 'gradient': advbench (GradientSaliency) and "
                       "advbench-zz-duplicate-name (Saliency)"),
    "string-registration": ("import advbench\n\n@advbench.hookimpl\ndef register_interpreters(register):\n"
                            "    register('zz-broken-test-saliency')\n",
                            "register_interpreters got 'zz-broken-test-saliency', which is not a subclass of "
                            "advbench.api.Interpreter"),
    "wrong-base": ("import advbench\nfrom advbench import api\n\nclass Thing(api.Detector):\n    name = 'zz-thing'\n\n"
                   "@advbench.hookimpl\ndef register_interpreters(register):\n    register(Thing)\n",
                   "which is not a subclass of advbench.api.Interpreter"),
    "newer-api": ("requires_api = '>=2.0,<3'\n", "it requires plugin API = '>=2.0,<3', but this advbench's plugin API "
                  "is 1.1"),
    "unknown-hook": ("import advbench\n\n@advbench.hookimpl\ndef register_interpreter(register):\n    pass\n",
                     "did you mean 'register_interpreters'?"),
}


def install(site: Path, case: str, module: str, entry: str | None = None) -> tuple[str, str]:
    """A distribution advbench-zz-<case> with package advbench_zz_<case> (its __init__ is ``module``)."""
    dist, pkg = f"advbench-zz-{case}", f"advbench_zz_{case.replace('-', '_')}"
    (site / pkg).mkdir(parents=True)
    (site / pkg / "__init__.py").write_text(module.replace("PKG", pkg))
    (site / pkg / "impl.py").write_text(GOOD_CLASS)
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[advbench]\nzz-{case} = {entry or pkg}\n")
    return dist, pkg


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for fake distributions; their modules are forgotten afterwards."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    monkeypatch.syspath_prepend(str(folder))
    plugins.reset()
    yield folder
    for name in [m for m in sys.modules if m.startswith("advbench_zz_")]:
        del sys.modules[name]
    plugins.reset()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_distribution_is_one_line_and_skipped(site, capsys, case):
    module, expected = CASES[case]
    dist, _ = install(site, case, module)

    assert "gradient" in plugins.names("interpreter") and "fgsm" in plugins.names("attack")
    assert plugins.lookup("interpreter", "gradient").distribution == "advbench"
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"advbench: plugin {dist} (entry point 'zz-{case}') is broken and was skipped: ")
    assert expected in err and f"ADVBENCH_DISABLE_PLUGINS={dist} " in err
    [gone] = plugins.broken()
    assert (gone.distribution, gone.version, gone.entry_point) == (dist, "0.3", f"zz-{case}")

    load_suite(DIGITS)  # a suite that does not use it loads
    plugins.components()
    assert capsys.readouterr().err == ""  # reported once

    result = CliRunner().invoke(main, ["list-plugins", "--json"])
    assert result.exit_code == 0 and "Traceback" not in result.output
    rows = json.loads(result.stdout)
    [row] = [r for r in rows if r["broken"]]
    assert (row["kind"], row["name"], row["distribution"]) == ("broken", f"zz-{case}", dist)
    assert expected in row["error"]
    table = CliRunner().invoke(main, ["list-plugins"], env={"COLUMNS": "400"})
    assert table.exit_code == 0 and "broken" in table.stdout and dist in table.stdout


@pytest.mark.parametrize("case", ["import-error", "hook-error", "duplicate-name"])
def test_a_suite_naming_a_component_of_a_broken_distribution_fails_that_cell_and_runs_the_rest(site, tmp_path, case):
    """The suite still loads; the run marks the cells of that component failed (one line naming the broken
    distribution), runs what does not need it, writes results.json and the page, and exits 1."""
    import yaml

    dist, _ = install(site, case, CASES[case][0])
    raw = yaml.safe_load(DIGITS.read_text())
    if case == "duplicate-name":  # 'gradient' is still the built-in one: nothing is broken for this suite
        suite = tmp_path / "uses-it.yaml"
        suite.write_text(yaml.safe_dump(raw))
        assert load_suite(suite).component("interpreters", "gradient")[0].distribution == "advbench"
        return
    raw["interpreters"]["gradient"]["plugin"] = "zz-broken-test-saliency"
    raw["detectors"]["label-only"] = {}
    raw["victims"]["cnn"]["options"]["epochs"] = 2
    raw["evaluation"].update(n_eval=60, n_fit=40, n_calibration=40)
    suite = tmp_path / "uses-it.yaml"
    suite.write_text(yaml.safe_dump(raw))
    loaded = load_suite(suite)
    error = loaded.broken[("interpreters", "gradient")]
    assert "\n" not in error and dist in error and error.startswith("interpreters.gradient.plugin: ")

    result = CliRunner().invoke(main, ["run", str(suite), "--out", str(tmp_path / "run"), "--threads", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    failed = [line for line in result.stderr.splitlines() if line.startswith("advbench: failed: ")]
    assert len(failed) == 1 and "interpreters.gradient" in failed[0] and dist in failed[0]
    assert all("dataset.plugin" not in line for line in result.stderr.splitlines())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["complete"] is False and results["failed"][0]["label"] == "interpreters.gradient"
    assert {r["detector"] for r in results["detection"]} == {"label-only"}  # the rest of the grid ran
    assert (tmp_path / "run" / "index.html").is_file()


def test_disable_takes_the_distribution_or_the_entry_point_name(site, capsys, monkeypatch):
    dist, _ = install(site, "import-error", CASES["import-error"][0])
    for name in (dist, dist.upper().replace("-", "_"), "zz-import-error"):
        monkeypatch.setenv(plugins.DISABLE_ENV, name)
        plugins.reset()
        assert plugins.broken() == [] and "gradient" in plugins.names("interpreter")
        assert capsys.readouterr().err == ""


def test_a_lazy_class_that_cannot_be_imported_fails_at_lookup_naming_its_distribution(site, capsys):
    module = ("import advbench\n\n@advbench.hookimpl\ndef register_interpreters(register):\n"
              "    register('zz-broken-test-saliency', 'PKG.impl:Saliency', description='ok')\n"
              "    register('zz-missing', 'PKG.impl:NotThere', description='gone')\n")
    dist, pkg = install(site, "lazy", module)
    assert {"zz-broken-test-saliency", "zz-missing"} <= set(plugins.names("interpreter"))
    assert f"{pkg}.impl" not in sys.modules  # registered without importing the class
    assert plugins.lookup("interpreter", "zz-broken-test-saliency").cls.__name__ == "Saliency"
    assert capsys.readouterr().err == ""
    with pytest.raises(plugins.PluginError) as info:
        plugins.lookup("interpreter", "zz-missing")
    assert dist in str(info.value) and "AttributeError" in str(info.value)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and dist in err and f"{pkg}.impl:NotThere" in err


def test_a_broken_plugin_is_reported_once_by_the_command(site):
    """A real process: `advbench list-plugins` prints the table and exactly one line on stderr."""
    install(site, "import-error", CASES["import-error"][0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "200"}
    env.pop(plugins.DISABLE_ENV, None)
    env.pop(plugins._REPORTED_ENV, None)  # as from a shell: nothing reported yet
    proc = subprocess.run([sys.executable, "-m", "advbench.cli", "list-plugins"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and "advbench-zz-import-error" in proc.stderr
    assert "fgsm" in proc.stdout and "broken" in proc.stdout
    # a worker process the reporting one started (it inherits the marker) loads the plugins quietly
    env[plugins._REPORTED_ENV] = str(os.getpid())
    quiet = subprocess.run([sys.executable, "-m", "advbench.cli", "list-plugins", "--json"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_markup_in_a_description_is_printed_as_written(site):
    module = textwrap.dedent("""\
        import advbench

        @advbench.hookimpl
        def register_attacks(register):
            register("zz-markup", "PKG.impl:Saliency", description="[/oops] [bold]x[/bold]")
    """)
    install(site, "markup", module)
    result = CliRunner().invoke(main, ["list-plugins", "--kind", "attack"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "[/oops] [bold]x[/bold]" in result.stdout
    load_suite(DIGITS)


def test_doctor_names_a_broken_plugin(site):
    from advbench.doctor import _plugins

    dist, _ = install(site, "hook-error", CASES["hook-error"][0])
    check = _plugins()
    assert not check.ok and dist in check.message and "cannot read my weights" in check.message


BAD_MASKS = {
    "wrong-shape-masks": ("torch.rand(len(x), x.shape[1], x.shape[2] // 2, x.shape[3] // 2, device=x.device)",
                          "explain returned masks of shape"),
    "nan-masks": ("torch.full((len(x), 1, *x.shape[2:]), float('nan'), device=x.device)", "NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_an_installed_interpreter_with_broken_masks_fails_only_its_cells(site, tmp_path, case):
    """A real run with an installed plugin whose masks break the contract: one line names the plugin and its
    distribution, the run exits 1, results.json and the page are written, the good interpreter's rows are there."""
    import yaml

    expression, expected = BAD_MASKS[case]
    name = f"zz-{case}"
    module = textwrap.dedent(f"""\
        import advbench
        import torch
        from advbench import api


        class Bad(api.Interpreter):
            name = "{name}"
            description = "returns masks that break the contract"

            def explain(self, state, victim, x, ctx):
                return {expression}


        @advbench.hookimpl
        def register_interpreters(register):
            register(Bad)
        """)
    dist, _ = install(site, case, module)
    raw = yaml.safe_load(DIGITS.read_text())
    raw["victims"]["cnn"]["options"]["epochs"] = 2
    raw["mask_classifier"]["options"]["epochs"] = 2
    raw["interpreters"] = {"gradient": {}, name: {}}
    raw["evaluation"].update(n_eval=60, n_fit=40, n_calibration=40)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "ADVBENCH_CACHE": str(tmp_path / "cache")}
    env.pop(plugins.DISABLE_ENV, None)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "advbench.cli", "run", str(suite), "--out", str(out), "--threads",
                           "1"], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "failed:" in line]
    assert len(lines) == 1 and f"interpreter '{name}' ({dist} 0.3)" in lines[0] and expected in lines[0]
    results = json.loads((out / "results.json").read_text())
    assert {r["interpreter"] for r in results["detection"]} == {"gradient"}
    assert results["failed"] and results["complete"] is False
    assert (out / "index.html").is_file()
