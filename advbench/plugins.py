"""The one plugin manager: loads entry points of the ``advbench`` group once, lazily, and keeps the registry.

Containment: a plugin that cannot be loaded or registered (its module fails to import, its hook raises, it
registers something that is not a component class, a name another plugin already has, or it asks for another
plugin API) is skipped, reported once as one line on stderr, and listed by ``broken()``; everything else keeps
working. Only a lookup of one of its names fails, with a message naming it.

Fast start: a registration carries its name, aliases and description; the class itself may be given as a
``"module:Class"`` string and is imported on first use (``Registration.cls``, or ``lookup``), so listing the
plugins imports no torch.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable, Optional

import pluggy

from advbench import PLUGIN_API_VERSION, hookspecs
from advbench.errors import AdvbenchError, clip_words

ENTRY_POINT_GROUP = "advbench"
# ADVBENCH_DISABLE_PLUGINS=name1,name2 skips those plugins: entry-point names (the keys under
# [project.entry-points.advbench]) or distribution names (what pip lists), e.g. a broken third-party package.
DISABLE_ENV = "ADVBENCH_DISABLE_PLUGINS"
# set by the process that reported broken plugins, so the worker processes it starts (they inherit the
# environment and load the plugins again) do not print the same lines once more
_REPORTED_ENV = "ADVBENCH_BROKEN_PLUGINS_REPORTED"

# the component kinds, in the order of advbench.api.KINDS (kept here so that loading plugins imports no torch)
KIND_NAMES = ("dataset", "victim", "interpreter", "attack", "detector", "executor")
_HOOK_KIND = {f"register_{kind}s": kind for kind in KIND_NAMES}
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class PluginError(AdvbenchError):
    """A plugin is broken: an unknown hook, a duplicate name, a class of the wrong kind."""


class BrokenComponent(PluginError):
    """A suite names a component that a broken (skipped) plugin registered, or may have: the grid can go on
    without that component's cells."""


# ---------------------------------------------------------------------------------------------------------
# the plugin API version a plugin asks for


_CLAUSE = re.compile(r"^(==|!=|>=|<=|>|<|~=)?\s*v?(\d+(?:\.\d+)*)$")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def api_compatible(requirement: str, version: str = PLUGIN_API_VERSION) -> bool:
    """Whether ``version`` satisfies ``requirement``, a comma-separated list of clauses such as ``">=1.0,<2"``
    (operators ==, !=, >=, <=, >, <, ~=; a bare version means ==). Raises ValueError for anything else."""
    have = _version_tuple(version)
    clauses = [c.strip() for c in str(requirement).split(",")]
    if not any(clauses):
        raise ValueError("empty")
    for clause in clauses:
        match = _CLAUSE.match(clause)
        if match is None:
            raise ValueError(f"{clause!r} is not a clause like '>=1.0'")
        op, want = match.group(1) or "==", _version_tuple(match.group(2))
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        if op == "~=":  # ~=1.2 is >=1.2,<2; ~=1.2.3 is >=1.2.3,<1.3
            if len(want) < 2:
                raise ValueError(f"{clause!r}: ~= needs at least two parts")
            upper = want[:-2] + (want[-2] + 1,)
            ok = a >= b and have[:len(upper)] < upper
        else:
            ok = {"==": a == b, "!=": a != b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b}[op]
        if not ok:
            return False
    return True


def _api_problem(requirement: Any, where: str) -> Optional[str]:
    """None when ``requirement`` (a plugin's requires_api / plugin_api) accepts this advbench, else why not."""
    if requirement is None:
        return None
    try:
        if api_compatible(str(requirement)):
            return None
    except ValueError as exc:
        return (f"{where} = {str(requirement)!r} is not a version range like '>=1.0,<2' ({exc}); advbench's "
                f"plugin API is {PLUGIN_API_VERSION}")
    return f"{where} = {str(requirement)!r}, but this advbench's plugin API is {PLUGIN_API_VERSION}"


# ---------------------------------------------------------------------------------------------------------
# registrations and broken plugins


class Registration:
    """One component: kind, name (what a suite writes), aliases, description, and where it comes from.

    ``cls`` is the component class, imported on first access when the plugin registered it lazily as a
    ``"module:Class"`` string; a class that cannot be imported or is not a valid component raises PluginError
    naming the distribution (and that plugin is then reported broken).
    """

    def __init__(self, kind: str, name: str, distribution: str, version: str, *, cls: Optional[type] = None,
                 target: Optional[str] = None, description: Optional[str] = None,
                 aliases: Iterable[str] = (), entry_point: str = "") -> None:
        self.kind, self.name, self.distribution, self.version = kind, name, distribution, version
        self.entry_point = entry_point
        self._cls = cls
        self.target = target if target is not None else f"{cls.__module__}:{cls.__qualname__}"
        self._description = description
        self._aliases = tuple(aliases)

    @property
    def cls(self) -> type:
        if self._cls is None:
            self._cls = _import_class(self)
        return self._cls

    @property
    def loaded(self) -> bool:
        """Whether the class is imported (always, for a plugin that registered the class itself)."""
        return self._cls is not None

    @property
    def description(self) -> str:
        return self._description if self._description is not None else str(self.cls.description)

    @property
    def aliases(self) -> tuple[str, ...]:
        return self._aliases

    @property
    def class_name(self) -> str:
        return self.target.rpartition(":")[2]

    def _identity(self) -> tuple:
        return (self.kind, self.name, self.distribution, self.version, self.target)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Registration) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return (f"Registration({self.kind!r}, {self.name!r}, {self.target!r}, distribution={self.distribution!r}, "
                f"version={self.version!r})")


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that was skipped: its distribution and version, its entry point, and what went wrong."""

    distribution: str
    version: str
    entry_point: str
    error: str
    names: tuple[tuple[str, str], ...] = ()  # (kind, name) it registered or tried to, where known

    @property
    def disable_name(self) -> str:
        # advbench's own distribution holds every built-in: name the one entry point there
        return self.entry_point if self.distribution in ("<local>", "advbench") else self.distribution

    @property
    def line(self) -> str:
        """The one line a user sees: which plugin, the error, how to turn it off."""
        return (f"advbench: plugin {self.distribution} (entry point {self.entry_point!r}) is broken and was "
                f"skipped: {self.error}; fix or uninstall it, or skip it with {DISABLE_ENV}={self.disable_name} "
                "(a distribution or entry-point name)")


def _one_line(exc: BaseException) -> str:
    """The exception as ``Type: message`` on one line, clipped (a plugin's message can be anything)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split()) if str(exc) else type(exc).__name__
    if isinstance(exc, AdvbenchError):
        text = " ".join(str(exc).split())
    text = clip_words(text)
    return text if len(text) <= 400 else text[:397] + "..."


_manager: Optional[pluggy.PluginManager] = None
_registry: Optional[dict[str, dict[str, Registration]]] = None
_origins: dict[int, tuple[object, str, str]] = {}  # id(plugin) -> (plugin, distribution, version)
_load_broken: list[BrokenPlugin] = []  # found while loading entry points
_collect_broken: list[BrokenPlugin] = []  # found while calling registration hooks (rebuilt with the registry)
_use_broken: list[BrokenPlugin] = []  # found when a lazily registered class was imported
_reported: set[str] = set()


def _report(broken: BrokenPlugin) -> None:
    """One line on stderr, once per process (and not again in the worker processes this one starts)."""
    line = broken.line
    if line in _reported or os.environ.get(_REPORTED_ENV, str(os.getpid())) != str(os.getpid()):
        _reported.add(line)
        return
    _reported.add(line)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _mark_broken(store: list[BrokenPlugin], broken: BrokenPlugin) -> None:
    store.append(broken)
    _report(broken)


def _finish_reporting() -> None:
    if _reported:
        os.environ[_REPORTED_ENV] = str(os.getpid())  # a child process has another id: it stays quiet


def broken() -> list[BrokenPlugin]:
    """Every plugin skipped so far, in the order found (loading the registry first)."""
    registry()
    return [*_load_broken, *_collect_broken, *_use_broken]


# ---------------------------------------------------------------------------------------------------------
# loading entry points


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _entry_points() -> list[tuple[str, str, metadata.EntryPoint]]:
    """(distribution, version, entry point) of the group, one per (distribution, name), advbench's own first."""
    found, seen = [], set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        name = (dist.metadata["name"] if dist is not None else None) or "<unknown distribution>"
        version = (dist.version if dist is not None else None) or "0"
        key = (_canonical(name), ep.name)
        if key in seen:
            continue
        seen.add(key)
        found.append((name, version, ep))
    found.sort(key=lambda t: (_canonical(t[0]) != "advbench", _canonical(t[0]), t[2].name))
    return found


def _load_entry_points(pm: pluggy.PluginManager, disabled: set[str]) -> None:
    skip = {_canonical(n) for n in disabled}
    for dist, version, ep in _entry_points():
        if ep.name in disabled or _canonical(dist) in skip:
            continue

        def fail(error: str) -> None:
            _mark_broken(_load_broken, BrokenPlugin(dist, version, ep.name, error))

        owner = pm.get_plugin(ep.name)
        if owner is not None:
            other = _origins.get(id(owner), (None, "another plugin", ""))[1]
            fail(f"its entry-point name {ep.name!r} is already used by {other}")
            continue
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # a third-party module can fail in any way
            fail(_one_line(exc))
            continue
        problem = _api_problem(getattr(plugin, "requires_api", None), "it requires plugin API") or \
            _api_problem(getattr(plugin, "plugin_api", None), "it requires plugin API")
        if problem:
            fail(problem)
            continue
        try:
            pm.register(plugin, name=ep.name)  # also checks known hooks' argument names
        except pluggy.PluginValidationError as exc:
            fail(_invalid_text(exc))
            continue
        except ValueError as exc:  # the same module under two entry-point names
            fail(_one_line(exc))
            continue
        try:
            pm.check_pending()  # earlier plugins passed: a failure here is this one's
        except pluggy.PluginValidationError as exc:
            pm.unregister(plugin)
            fail(_invalid_text(exc))
            continue
        _origins[id(plugin)] = (plugin, dist, version)


def get_manager() -> pluggy.PluginManager:
    """The plugin manager, with every installed entry point loaded and checked (done once)."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager("advbench")
        pm.add_hookspecs(hookspecs)
        disabled = _disabled()
        for name in disabled:
            pm.set_blocked(name)
        _load_broken.clear()
        _load_entry_points(pm, disabled)
        _manager = pm
    return _manager


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith(("register_", "report_")))


def _invalid_text(exc: pluggy.PluginValidationError) -> str:
    """What is wrong with a plugin's hook, and the hooks advbench defines (with the closest one)."""
    hooks = _hook_names()
    text = " ".join(str(exc).split())
    unknown = re.search(r"unknown hook '(\w+)'", text)
    close = difflib.get_close_matches(unknown.group(1), hooks, n=1) if unknown else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"invalid hook implementation: {text}; advbench's hooks: {', '.join(hooks)}{hint}"


def _invalid(exc: pluggy.PluginValidationError, plugin: str) -> PluginError:
    """One line naming the plugin, what is wrong with its hook, and the hooks advbench defines."""
    text = _invalid_text(exc).replace("invalid hook implementation: ", "", 1)
    return PluginError(f"plugin {plugin} has an invalid hook implementation: {text}; set {DISABLE_ENV} to skip an "
                       "installed plugin")


def _distribution_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str]:
    origin = _origins.get(id(plugin))
    if origin is not None and origin[0] is plugin:
        return origin[1], origin[2]
    return "<local>", "0"


# ---------------------------------------------------------------------------------------------------------
# registration


def _base(kind: str) -> type:
    from advbench.api import KINDS  # imports torch: only when a class is checked

    return KINDS[kind]


def _check_class(cls: object, kind: str, dist: str, name: Optional[str] = None) -> None:
    """Raise PluginError unless ``cls`` is a named subclass of ``kind``'s base (and is called ``name``)."""
    base_name = kind.capitalize()
    if not isinstance(cls, type) or "advbench.api" not in sys.modules or not issubclass(cls, _base(kind)):
        raise PluginError(f"register_{kind}s got {cls!r}, which is not a subclass of advbench.api.{base_name} "
                          f"(give the class, or register('name', 'module:Class', description=...))")
    if not getattr(cls, "name", ""):
        raise PluginError(f"{dist}: {cls.__qualname__} has no name")
    if name is not None and cls.name != name:
        raise PluginError(f"{cls.__module__}:{cls.__qualname__} is registered as {kind} {name!r} but its name is "
                          f"{cls.name!r}")
    problem = _api_problem(getattr(cls, "plugin_api", None), f"{cls.__qualname__}.plugin_api")
    if problem:
        raise PluginError(problem)


def _import_class(reg: Registration) -> type:
    module, _, qualname = reg.target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        _check_class(obj, reg.kind, reg.distribution, reg.name)
    except (Exception, SystemExit) as exc:
        error = _one_line(exc)
        _mark_broken(_use_broken, BrokenPlugin(reg.distribution, reg.version, reg.entry_point,
                                               f"{reg.kind} {reg.name!r} ({reg.target}): {error}",
                                               ((reg.kind, reg.name),)))
        _finish_reporting()
        raise PluginError(f"{reg.kind} {reg.name!r} of plugin {reg.distribution} (entry point "
                          f"{reg.entry_point!r}) cannot be loaded from {reg.target}: {error}; fix or uninstall "
                          f"{reg.distribution}, or set {DISABLE_ENV}={reg.distribution}") from None
    return obj


def _register_callback(hook_kind: str, dist: str, version: str, entry_point: str, out: list[Registration]):
    """The ``register`` a registration hook receives: ``register(cls)`` or ``register(name, "module:Class", ...)``."""

    def register(component: Any, target: Optional[str] = None, *, kind: Optional[str] = None,
                 description: Optional[str] = None, aliases: Iterable[str] = ()) -> None:
        hook = f"register_{hook_kind}s"
        if isinstance(component, str) and target is not None:
            if not component.strip():
                raise PluginError(f"{hook}: an empty name")
            if not isinstance(target, str) or not _TARGET.match(target):
                raise PluginError(f"{hook}({component!r}, {target!r}): the class must be given as 'module:Class'")
            if kind is not None and kind != hook_kind:
                raise PluginError(f"{hook}({component!r}, kind={kind!r}): this hook registers {hook_kind}s")
            if description is not None and not isinstance(description, str):
                raise PluginError(f"{hook}({component!r}): description must be a string")
            if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
                raise PluginError(f"{hook}({component!r}): aliases must be a list of names, not {aliases!r}")
            out.append(Registration(hook_kind, component, dist, version, target=target, description=description,
                                    aliases=tuple(aliases), entry_point=entry_point))
            return
        if target is not None or kind not in (None, hook_kind):
            raise PluginError(f"{hook}({component!r}, ...): give a class alone, or a name and 'module:Class'")
        _check_class(component, hook_kind, dist)
        out.append(Registration(hook_kind, component.name, dist, version, cls=component,
                                aliases=tuple(component.aliases), entry_point=entry_point))

    return register


def _clash(registry: dict[str, dict[str, Registration]], regs: list[Registration]) -> Optional[str]:
    """Why ``regs`` (one plugin's) cannot join ``registry``: a name or alias taken by another component."""
    own: dict[tuple[str, str], Registration] = {}
    for reg in regs:
        for label in (reg.name, *reg.aliases):
            previous = registry[reg.kind].get(label) or own.get((reg.kind, label))
            if previous is not None and previous.target != reg.target:
                return (f"two plugins register the {reg.kind} name {label!r}: {previous.distribution} "
                        f"({previous.class_name}) and {reg.distribution} ({reg.class_name}); uninstall one or set "
                        f"{DISABLE_ENV}")
            own[(reg.kind, label)] = reg
    return None


def _collect(pm: pluggy.PluginManager) -> dict[str, dict[str, Registration]]:
    registry: dict[str, dict[str, Registration]] = {kind: {} for kind in KIND_NAMES}
    _collect_broken.clear()
    order = [plugin for _, plugin in pm.list_name_plugin() if plugin is not None]
    origin = {id(plugin): _distribution_of(pm, plugin) for plugin in order}
    order.sort(key=lambda plugin: _canonical(origin[id(plugin)][0]) != "advbench")  # stable: the harness's first
    for plugin in order:
        dist, version = origin[id(plugin)]
        entry_point = pm.get_name(plugin) or repr(plugin)
        regs: list[Registration] = []
        try:
            for hook_name, kind in _HOOK_KIND.items():
                for impl in getattr(pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=_register_callback(kind, dist, version, entry_point, regs))
        except (Exception, SystemExit) as exc:
            where = "" if isinstance(exc, PluginError) else "its registration hook raised "
            _mark_broken(_collect_broken, BrokenPlugin(dist, version, entry_point, where + _one_line(exc),
                                                       tuple((r.kind, r.name) for r in regs)))
            continue
        problem = _clash(registry, regs)
        if problem:
            _mark_broken(_collect_broken, BrokenPlugin(dist, version, entry_point, problem,
                                                       tuple((r.kind, r.name) for r in regs)))
            continue
        for reg in regs:
            for label in (reg.name, *reg.aliases):
                registry[reg.kind][label] = reg
    return registry


def registry() -> dict[str, dict[str, Registration]]:
    """kind -> name (and alias) -> Registration, built once. Broken plugins are left out (see ``broken()``)."""
    global _registry
    if _registry is None:
        _registry = _collect(get_manager())
        _finish_reporting()
    return _registry


def reset() -> None:
    """Forget the loaded plugins (tests that register a throwaway plugin call this afterwards)."""
    global _manager, _registry
    _manager = None
    _registry = None
    _origins.clear()
    _load_broken.clear()
    _collect_broken.clear()
    _use_broken.clear()
    _reported.clear()
    if os.environ.get(_REPORTED_ENV) == str(os.getpid()):
        del os.environ[_REPORTED_ENV]


def register_plugin(plugin: object, name: Optional[str] = None) -> None:
    """Register an in-process plugin object (a module or class with hookimpls) and rebuild the registry.

    An invalid hook raises PluginError; a plugin whose registration hook fails is skipped like an installed
    one (``broken()`` lists it).
    """
    global _registry
    pm = get_manager()
    problem = _api_problem(getattr(plugin, "requires_api", None), "it requires plugin API")
    if problem:
        raise PluginError(f"plugin {name or plugin!r}: {problem}")
    try:
        pm.register(plugin, name=name)  # raises for a known hook with wrong argument names
    except pluggy.PluginValidationError as exc:
        raise _invalid(exc, repr(name or plugin)) from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise _invalid(exc, repr(name or plugin)) from None
    _registry = None


def unregister_plugin(plugin: object) -> None:
    global _registry
    get_manager().unregister(plugin)
    _registry = None


def components(kind: Optional[str] = None) -> list[Registration]:
    """Every registration (aliases folded), sorted by kind and name."""
    seen = []
    for k, entries in registry().items():
        if kind is not None and k != kind:
            continue
        for label, reg in entries.items():
            if label == reg.name:
                seen.append(reg)
    return sorted(seen, key=lambda r: (r.kind, r.name))


def names(kind: str) -> list[str]:
    return sorted({r.name for r in registry()[kind].values()})


def lookup(kind: str, name: str) -> Registration:
    """The registration of ``name``, its class imported; an unknown name raises with the installed ones and the
    closest match, and names a broken plugin that registered it (or might have)."""
    entries = registry()[kind]
    if name in entries:
        reg = entries[name]
        reg.cls  # noqa: B018 - import it now: a class that cannot load fails here, naming its plugin
        return reg
    gone = broken()
    for b in gone:
        if (kind, name) in b.names:
            raise BrokenComponent(f"{kind} {name!r} comes from plugin {b.distribution} (entry point "
                                  f"{b.entry_point!r}), which is broken and was skipped: {b.error}")
    installed = names(kind)
    close = difflib.get_close_matches(name, list(entries), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    unknown = [b for b in gone if not b.names]
    if unknown:  # a plugin that could not even be imported may be the one that provides it
        raise BrokenComponent(f"unknown {kind} {name!r}; it may come from a broken plugin that was skipped: "
                              + ", ".join(f"{b.distribution} ({b.error})" for b in unknown)
                              + f"; installed: {', '.join(installed) or 'none'}{hint}")
    raise PluginError(f"unknown {kind} {name!r}; installed: {', '.join(installed) or 'none'}{hint}")
