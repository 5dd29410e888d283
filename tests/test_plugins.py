"""The plugin manager: built-in registrations, hook validation, name clashes, lookup, and the hookspecs themselves.

Throwaway plugins are registered in-process with ``advbench.plugins.register_plugin`` under unique names and
always unregistered in a ``finally``; the ``clean_registry`` fixture calls ``plugins.reset()`` afterwards so no
other test sees them.
"""

from __future__ import annotations

import inspect
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

import advbench
from advbench import api, hookspecs, plugins
from advbench.api import KINDS

TESTS = Path(__file__).resolve().parent
_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}-{id(object())}"


@pytest.fixture(autouse=True)
def clean_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


class registered:
    """``with registered(plugin):`` -- register a throwaway plugin, always unregister it."""

    def __init__(self, plugin: object, name: str | None = None) -> None:
        self.plugin, self.name = plugin, name or unique("test-plugin")

    def __enter__(self):
        plugins.register_plugin(self.plugin, name=self.name)
        return self.plugin

    def __exit__(self, *exc) -> None:
        if plugins.get_manager().is_registered(self.plugin):
            plugins.unregister_plugin(self.plugin)


# ---------------------------------------------------------------------------------------------------------
# the built-in components


BUILTIN = {
    "dataset": {"digits", "cifar10"},
    "victim": {"small-cnn", "lenet", "alexnet", "vgg-like"},
    "interpreter": {"gradient", "smoothgrad", "integrated-gradients", "gradcam", "lan", "lan-per-sample", "raw-pixels"},
    "attack": {"fgsm", "bim", "pgd", "cw", "deepfool", "jsma"},
    "detector": {"contrastive", "label-only", "feature-squeezing", "kd-bu", "lid", "mahalanobis", "msp"},
    "executor": {"local"},
}


def test_every_builtin_kind_is_registered():
    rows = plugins.components()
    assert {r.kind for r in rows} == set(KINDS) == set(BUILTIN)
    for kind, expected in BUILTIN.items():
        assert expected <= set(plugins.names(kind)), kind
        assert [r.kind for r in plugins.components(kind)] == [kind] * len(plugins.components(kind))
    assert rows == sorted(rows, key=lambda r: (r.kind, r.name))
    assert len({(r.kind, r.name) for r in rows}) == len(rows)  # aliases are folded, each component once


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_builtin_registrations_are_well_formed(kind):
    for reg in plugins.components(kind):
        assert issubclass(reg.cls, KINDS[kind]) and reg.cls.kind == kind
        assert reg.name == reg.cls.name and reg.name.strip() and " " not in reg.name
        assert reg.description.strip() and "\n" not in reg.description, reg.name
        assert isinstance(reg.cls.revision, str) and reg.cls.revision
        assert reg.distribution == "advbench" and reg.version == advbench.__version__
        assert issubclass(reg.cls.Options, api.Options), reg.name
        defaults = reg.cls.Options()  # every option has a default: a suite may name just the plugin
        with pytest.raises(Exception):
            reg.cls.Options(definitely_not_an_option=1)  # extra=forbid
        reg.cls(defaults)  # constructs without touching data
        # a lazy registration carries the class's own metadata (list-plugins shows it without importing the class)
        assert (reg.description, set(reg.aliases)) == (reg.cls.description, set(reg.cls.aliases)), reg.name
        for alias in reg.aliases:
            assert plugins.lookup(kind, alias) == plugins.lookup(kind, reg.name)


# ---------------------------------------------------------------------------------------------------------
# one throwaway plugin per registration hook: each hook really adds a component


class _Dataset(api.Dataset):
    name = "zz-test-dataset"
    description = "test"


class _Victim(api.Victim):
    name = "zz-test-victim"
    description = "test"


class _Interpreter(api.Interpreter):
    name = "zz-test-interpreter"
    description = "test"
    aliases = ("zz-test-interp",)


class _Attack(api.Attack):
    name = "zz-test-attack"
    description = "test"


class _Detector(api.Detector):
    name = "zz-test-detector"
    description = "test"


class _Executor(api.Executor):
    name = "zz-test-executor"
    description = "test"


class DatasetPlugin:
    @advbench.hookimpl
    def register_datasets(register):
        register(_Dataset)


class VictimPlugin:
    @advbench.hookimpl
    def register_victims(register):
        register(_Victim)


class InterpreterPlugin:
    @advbench.hookimpl
    def register_interpreters(register):
        register(_Interpreter)


class AttackPlugin:
    @advbench.hookimpl
    def register_attacks(register):
        register(_Attack)


class DetectorPlugin:
    @advbench.hookimpl
    def register_detectors(register):
        register(_Detector)


class ExecutorPlugin:
    @advbench.hookimpl
    def register_executors(register):
        register(_Executor)


THROWAWAY = {"dataset": (DatasetPlugin, _Dataset), "victim": (VictimPlugin, _Victim),
             "interpreter": (InterpreterPlugin, _Interpreter), "attack": (AttackPlugin, _Attack),
             "detector": (DetectorPlugin, _Detector), "executor": (ExecutorPlugin, _Executor)}


@pytest.mark.parametrize("kind", sorted(THROWAWAY))
def test_each_registration_hook_adds_a_component(kind):
    plugin, cls = THROWAWAY[kind]
    assert cls.name not in plugins.names(kind)
    with registered(plugin):
        reg = plugins.lookup(kind, cls.name)
        assert reg.cls is cls and reg.kind == kind
        assert (reg.distribution, reg.version) == ("<local>", "0")  # not from an installed distribution
        assert cls.name in [r.name for r in plugins.components(kind)]
        other_kinds = [k for k in KINDS if k != kind]
        assert all(cls.name not in plugins.names(k) for k in other_kinds)
        if cls.aliases:
            assert plugins.lookup(kind, cls.aliases[0]) == reg
    assert cls.name not in plugins.names(kind)  # unregistered: gone


class SectionPlugin:
    def __init__(self) -> None:
        self.calls = []

    @advbench.hookimpl
    def report_sections(self, results, run_dir):
        self.calls.append((results["suite"], run_dir))
        return [{"title": "Extra", "html": "<p>from a plugin</p>"}]


def test_report_sections_hook_collects_every_plugins_reply():
    first, second = SectionPlugin(), SectionPlugin()
    with registered(first), registered(second):
        replies = plugins.get_manager().hook.report_sections(results={"suite": "s"}, run_dir="/tmp/run")
    assert replies == [[{"title": "Extra", "html": "<p>from a plugin</p>"}]] * 2  # one reply per plugin
    assert first.calls == second.calls == [("s", "/tmp/run")]
    assert plugins.get_manager().hook.report_sections(results={"suite": "s"}, run_dir="/tmp/run") == []


# ---------------------------------------------------------------------------------------------------------
# broken plugins


def test_misspelled_hook_is_rejected():
    class Typo:
        @advbench.hookimpl
        def register_attack(register):  # missing "s"
            register(_Attack)

    name = unique("typo")
    with pytest.raises(plugins.PluginError) as info:
        plugins.register_plugin(Typo, name=name)
    message = str(info.value)
    assert name in message and "register_attack" in message
    assert "did you mean 'register_attacks'" in message
    assert "\n" not in message
    assert not plugins.get_manager().is_registered(Typo)
    plugins.get_manager().check_pending()  # nothing left behind
    assert _Attack.name not in plugins.names("attack")


def test_hook_with_wrong_argument_name_is_a_plugin_error_not_a_pluggy_one():
    class BadArgument:
        @advbench.hookimpl
        def register_detectors(reg):  # the hookspec's argument is "register"
            reg(_Detector)

    try:
        with pytest.raises(plugins.PluginError) as info:
            plugins.register_plugin(BadArgument, name=unique("bad-argument"))
    finally:
        if plugins.get_manager().is_registered(BadArgument):
            plugins.unregister_plugin(BadArgument)
    assert not isinstance(info.value, pluggy.PluginValidationError)
    assert "register_detectors" in str(info.value) and "'reg'" in str(info.value)


def _only_broken(capsys) -> plugins.BrokenPlugin:
    """The one broken plugin, after checking it was reported as exactly one line on stderr."""
    gone = plugins.broken()
    assert len(gone) == 1, gone
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip() == gone[0].line, err
    assert gone[0].entry_point in err and plugins.DISABLE_ENV in err
    return gone[0]


def test_registering_a_class_of_the_wrong_kind_skips_that_plugin(capsys):
    class WrongKind:
        @advbench.hookimpl
        def register_attacks(register):
            register(_Detector)

    with registered(WrongKind):
        assert "fgsm" in plugins.names("attack")  # everything else still works
        gone = _only_broken(capsys)
        assert re.search(r"register_attacks got .*not a subclass of advbench.api.Attack", gone.error)
        assert _Detector.name not in plugins.names("attack") + plugins.names("detector")


@pytest.mark.parametrize("thing", ["zz-just-a-string", 42, None])
def test_registering_something_that_is_not_a_class_skips_that_plugin(capsys, thing):
    class NotAClass:
        @advbench.hookimpl
        def register_interpreters(register):
            register(_Interpreter)
            register(thing)

    with registered(NotAClass):
        gone = _only_broken(capsys)
        assert f"register_interpreters got {thing!r}" in gone.error
        assert _Interpreter.name not in plugins.names("interpreter")  # all of that plugin or none of it
        assert gone.names == (("interpreter", _Interpreter.name),)
        with pytest.raises(plugins.PluginError, match="broken and was skipped"):
            plugins.lookup("interpreter", _Interpreter.name)


def test_registering_a_class_without_a_name_skips_that_plugin(capsys):
    class Nameless(api.Attack):
        description = "no name"

    class NamelessPlugin:
        @advbench.hookimpl
        def register_attacks(register):
            register(Nameless)

    with registered(NamelessPlugin):
        assert plugins.components()
        assert "has no name" in _only_broken(capsys).error


def test_a_registration_hook_that_raises_skips_that_plugin(capsys):
    class Raises:
        @advbench.hookimpl
        def register_detectors(register):
            raise RuntimeError("boom\nsecond line")

    with registered(Raises):
        assert "contrastive" in plugins.names("detector")
        gone = _only_broken(capsys)
        assert gone.error == "its registration hook raised RuntimeError: boom second line"
    plugins.registry()
    assert capsys.readouterr().err == ""  # once unregistered: nothing to report


def test_clash_with_a_builtin_name_names_both_distributions_and_keeps_the_builtin(capsys):
    class FakeFgsm(api.Attack):
        name = "fgsm"
        description = "a clash"

    class Clash:
        @advbench.hookimpl
        def register_attacks(register):
            register(FakeFgsm)

    with registered(Clash):
        assert plugins.lookup("attack", "fgsm").distribution == "advbench"
        message = _only_broken(capsys).error
    assert "'fgsm'" in message and "advbench (FGSM)" in message and "<local>" in message
    assert "FakeFgsm" in message and plugins.DISABLE_ENV in message
    assert plugins.lookup("attack", "fgsm").distribution == "advbench"


@pytest.mark.parametrize("clash", ["name", "alias"])
def test_two_distributions_registering_the_same_name_is_an_error_naming_both(monkeypatch, capsys, clash):
    label = unique("zz-dup")

    class First(api.Interpreter):
        name = label
        description = "first"

    class Second(api.Interpreter):
        name = label if clash == "name" else unique("zz-other")
        aliases = () if clash == "name" else (label,)
        description = "second"

    class PluginA:
        @advbench.hookimpl
        def register_interpreters(register):
            register(First)

    class PluginB:
        @advbench.hookimpl
        def register_interpreters(register):
            register(Second)

    fake = {PluginA: ("advbench-first", "1.2"), PluginB: ("advbench-second", "3.4")}
    real = plugins._distribution_of
    monkeypatch.setattr(plugins, "_distribution_of", lambda pm, plugin: fake.get(plugin) or real(pm, plugin))
    with registered(PluginA), registered(PluginB):
        assert plugins.lookup("interpreter", label).cls is First  # the first one registered keeps the name
        gone = _only_broken(capsys)
    assert gone.distribution == "advbench-second"
    assert "advbench-first" in gone.error and "advbench-second" in gone.error
    assert f"interpreter name {label!r}" in gone.error
    assert "First" in gone.error and "Second" in gone.error
    assert "ADVBENCH_DISABLE_PLUGINS=advbench-second " in gone.line  # a distribution name disables it


def test_disable_env_skips_an_entry_point(monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_ENV, "attacks, executors")
    plugins.reset()
    assert plugins.names("attack") == [] and plugins.names("executor") == []
    assert "digits" in plugins.names("dataset")
    with pytest.raises(plugins.PluginError, match="installed: none"):
        plugins.lookup("attack", "fgsm")


# ---------------------------------------------------------------------------------------------------------
# lookup


def test_lookup_of_an_unknown_name_lists_installed_names_and_the_closest_match():
    with pytest.raises(plugins.PluginError) as info:
        plugins.lookup("attack", "fgsn")
    message = str(info.value)
    assert "unknown attack 'fgsn'" in message
    assert f"installed: {', '.join(plugins.names('attack'))}" in message
    assert message.endswith("did you mean 'fgsm'?")

    with pytest.raises(plugins.PluginError) as info:
        plugins.lookup("detector", "contrastiv")
    assert "did you mean 'contrastive'?" in str(info.value)

    with pytest.raises(plugins.PluginError) as info:
        plugins.lookup("interpreter", "qqqqqqqqqqqq")
    assert "did you mean" not in str(info.value)
    assert "gradient" in str(info.value) and "lan-per-sample" in str(info.value)


def test_lookup_accepts_aliases():
    reg = plugins.lookup("attack", "bim")
    for alias in reg.aliases:
        assert plugins.lookup("attack", alias) == reg


# ---------------------------------------------------------------------------------------------------------
# the hookspecs themselves (datasette-style meta-test)


def _hookspecs() -> list[str]:
    return sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                  if hasattr(fn, "advbench_spec"))


def test_hookspecs_are_the_registration_hooks_and_report_sections():
    assert set(_hookspecs()) == {f"register_{kind}s" for kind in KINDS} | {"report_sections"}


@pytest.mark.parametrize("hook", _hookspecs())
def test_every_hookspec_is_documented_and_exercised_by_a_test(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert doc and len(doc) > 20, f"hookspec {hook} has no docstring"
    implementations = [path.name for path in sorted(TESTS.glob("test_*.py"))
                       if f"def {hook}(" in path.read_text(encoding="utf-8")]
    assert implementations, f"no test implements the hook {hook} (def {hook}(...) in tests/test_*.py)"


def test_registry_is_built_once_and_reset_rebuilds_it():
    first = plugins.registry()
    assert plugins.registry() is first
    plugins.reset()
    second = plugins.registry()
    assert second is not first and second.keys() == first.keys()
    assert {k: set(v) for k, v in second.items()} == {k: set(v) for k, v in first.items()}



# ---------------------------------------------------------------------------------------------------------
# the declared plugin API, lazy registration, fast start


def test_the_public_api_is_declared_and_versioned():
    assert all(hasattr(api, name) for name in api.__all__)
    assert api.PLUGIN_API_VERSION == advbench.PLUGIN_API_VERSION and "PLUGIN_API_VERSION" in advbench.__all__
    assert re.fullmatch(r"\d+\.\d+", advbench.PLUGIN_API_VERSION)
    assert tuple(KINDS) == plugins.KIND_NAMES  # the registry knows the kinds without importing torch
    for base in KINDS.values():
        assert base.__name__ in api.__all__


@pytest.mark.parametrize("requirement, ok", [
    (">=1.0,<2", True), (">=1", True), ("~=1.0", True), ("1.0", True), ("==1.0", True), ("<1.0", False),
    (">=1.1", False), (">=2.0,<3", False), ("!=1.0", False), ("~=0.9", False), ("  >= 1.0 , < 2 ", True)])
def test_api_requirements(requirement, ok):
    assert plugins.api_compatible(requirement, "1.0") is ok


@pytest.mark.parametrize("requirement", ["", "latest", ">=1.x", "~=1"])
def test_an_unreadable_api_requirement_is_an_error(requirement):
    with pytest.raises(ValueError):
        plugins.api_compatible(requirement, "1.0")


def test_a_class_asking_for_another_plugin_api_skips_its_plugin(capsys):
    class Future(api.Attack):
        name = "zz-future"
        description = "needs a newer advbench"
        plugin_api = ">=2"

    class Now(api.Attack):
        name = "zz-now"
        description = "fine"
        plugin_api = ">=1.0,<2"

    class FuturePlugin:
        @advbench.hookimpl
        def register_attacks(register):
            register(Future)

    class NowPlugin:
        requires_api = ">=1.0,<2"

        @advbench.hookimpl
        def register_attacks(register):
            register(Now)

    with registered(FuturePlugin), registered(NowPlugin):
        assert "zz-now" in plugins.names("attack") and "zz-future" not in plugins.names("attack")
        assert f"Future.plugin_api = '>=2', but this advbench's plugin API is {advbench.PLUGIN_API_VERSION}" in _only_broken(capsys).error


def test_lazy_registration_imports_the_class_on_first_use(tmp_path, monkeypatch):
    package = tmp_path / "zz_lazy_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "method.py").write_text("from advbench import api\n\n\nclass Method(api.Interpreter):\n"
                                       "    name = 'zz-lazy'\n    description = 'lazy'\n    aliases = ('zz-l',)\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class LazyPlugin:
        @advbench.hookimpl
        def register_interpreters(register):
            register("zz-lazy", "zz_lazy_pkg.method:Method", kind="interpreter", description="lazy",
                     aliases=("zz-l",))

    try:
        with registered(LazyPlugin):
            [reg] = [r for r in plugins.components("interpreter") if r.name == "zz-lazy"]
            assert (reg.description, reg.aliases, reg.loaded) == ("lazy", ("zz-l",), False)
            assert "zz_lazy_pkg.method" not in sys.modules  # listed without importing it
            found = plugins.lookup("interpreter", "zz-l")
            assert found is reg and reg.loaded and reg.cls.__name__ == "Method"
            assert "zz_lazy_pkg.method" in sys.modules
    finally:
        for name in [m for m in sys.modules if m.startswith("zz_lazy_pkg")]:
            del sys.modules[name]


@pytest.mark.parametrize("call, message", [
    ("register('zz-x', 'no colon here')", "must be given as 'module:Class'"),
    ("register('zz-x', 'a.b:C', kind='attack')", "this hook registers interpreters"),
    ("register('zz-x', 'a.b:C', aliases='zz-y')", "aliases must be a list of names"),
    ("register('zz-x', 'a.b:C', description=3)", "description must be a string"),
    ("register('', 'a.b:C')", "an empty name"),
])
def test_a_malformed_lazy_registration_skips_its_plugin(capsys, call, message):
    class Malformed:
        @advbench.hookimpl
        def register_interpreters(register):
            eval(call, {"register": register})

    with registered(Malformed):
        assert message in _only_broken(capsys).error


def test_starting_the_command_and_listing_plugins_imports_no_torch():
    code = ("import sys, advbench.cli\nfrom advbench import plugins\nrows = plugins.components()\n"
            "assert len(rows) > 20 and not plugins.broken()\n"
            "heavy = sorted(m for m in ('torch', 'sklearn', 'scipy', 'torchattacks', 'foolbox') if m in sys.modules)\n"
            "print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
