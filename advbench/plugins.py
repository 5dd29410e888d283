"""The one plugin manager: loads entry points of the ``advbench`` group once, lazily, and keeps the registry."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Optional

import pluggy

from advbench import hookspecs
from advbench.api import KINDS, Component
from advbench.errors import AdvbenchError

ENTRY_POINT_GROUP = "advbench"
# ADVBENCH_DISABLE_PLUGINS=name1,name2 skips those entry points (e.g. a broken third-party plugin).
DISABLE_ENV = "ADVBENCH_DISABLE_PLUGINS"


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    cls: type[Component]
    distribution: str
    version: str

    @property
    def description(self) -> str:
        return self.cls.description

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self.cls.aliases)


class PluginError(AdvbenchError):
    """A plugin is broken: an unknown hook, a duplicate name, a class of the wrong kind."""


_manager: Optional[pluggy.PluginManager] = None
_registry: Optional[dict[str, dict[str, Registration]]] = None
_HOOK_KIND = {f"register_{kind}s": kind for kind in KINDS}


def get_manager() -> pluggy.PluginManager:
    """The plugin manager, with every installed entry point loaded and checked (done once)."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager("advbench")
        pm.add_hookspecs(hookspecs)
        disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        for name in disabled:
            pm.set_blocked(name)
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)  # also checks known hooks' argument names
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise _invalid(exc, repr(pm.get_name(exc.plugin) or exc.plugin)) from None
        _manager = pm
    return _manager


def _invalid(exc: pluggy.PluginValidationError, plugin: str) -> PluginError:
    """One line naming the plugin, what is wrong with its hook, and the hooks advbench defines."""
    hooks = sorted(n for n in dir(hookspecs) if n.startswith(("register_", "report_")))
    text = " ".join(str(exc).split())
    unknown = re.search(r"unknown hook '(\w+)'", text)
    close = difflib.get_close_matches(unknown.group(1), hooks, n=1) if unknown else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return PluginError(f"plugin {plugin} has an invalid hook implementation: {text}; advbench's hooks: "
                       f"{', '.join(hooks)}{hint}; set {DISABLE_ENV} to skip an installed plugin")


def _distribution_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str]:
    for plug, dist in pm.list_plugin_distinfo():
        if plug is plugin:
            return dist.metadata["name"], dist.version
    return "<local>", "0"


def _collect(pm: pluggy.PluginManager) -> dict[str, dict[str, Registration]]:
    registry: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
    for hook_name, kind in _HOOK_KIND.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            dist, version = _distribution_of(pm, impl.plugin)

            def register(cls: type, _kind: str = kind, _dist: str = dist, _version: str = version) -> None:
                base = KINDS[_kind]
                if not (isinstance(cls, type) and issubclass(cls, base)):
                    raise PluginError(f"{_dist}: register_{_kind}s got {cls!r}, which is not a subclass of "
                                      f"advbench.api.{base.__name__}")
                if not cls.name:
                    raise PluginError(f"{_dist}: {cls.__qualname__} has no name")
                for label in (cls.name, *cls.aliases):
                    previous = registry[_kind].get(label)
                    if previous is not None and previous.cls is not cls:
                        raise PluginError(f"two plugins register the {_kind} name {label!r}: "
                                          f"{previous.distribution} ({previous.cls.__qualname__}) and "
                                          f"{_dist} ({cls.__qualname__}); uninstall one or set "
                                          f"{DISABLE_ENV}")
                    registry[_kind][label] = Registration(_kind, cls.name, cls, _dist, _version)

            impl.function(register=register)
    return registry


def registry() -> dict[str, dict[str, Registration]]:
    """kind -> name (and alias) -> Registration, built once."""
    global _registry
    if _registry is None:
        _registry = _collect(get_manager())
    return _registry


def reset() -> None:
    """Forget the loaded plugins (tests that register a throwaway plugin call this afterwards)."""
    global _manager, _registry
    _manager = None
    _registry = None


def register_plugin(plugin: object, name: Optional[str] = None) -> None:
    """Register an in-process plugin object (a module or class with hookimpls) and rebuild the registry."""
    global _registry
    pm = get_manager()
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
    """The registration of ``name``; an unknown name raises with the installed ones and the closest match."""
    entries = registry()[kind]
    if name in entries:
        return entries[name]
    installed = names(kind)
    close = difflib.get_close_matches(name, list(entries), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise PluginError(f"unknown {kind} {name!r}; installed: {', '.join(installed) or 'none'}{hint}")
