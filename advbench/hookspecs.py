"""Every hook a plugin can implement. Decorate implementations with ``advbench.hookimpl``.

Registration hooks receive a ``register`` callback; call it once per component, in either form::

    @advbench.hookimpl
    def register_interpreters(register):
        register(MyInterpreter)                                    # the class itself
        register("my-method", "my_package.my_method:MyMethod",     # or lazily: imported when a run uses it
                 description="One line for advbench list-plugins", aliases=("mm",))

The class must subclass the matching base in ``advbench.api`` and set ``name`` (what suites write),
``description`` (one line, shown by ``advbench list-plugins``) and, optionally, ``aliases`` and ``Options``.
The lazy form carries the name, description and aliases itself (give the class's own), so listing plugins and
starting the command import neither your module nor torch; the class is imported, and checked, on first use.
A registration that fails (an exception in the hook, something that is not such a class, a name another plugin
has) skips the whole plugin, with one line on stderr; docs/PLUGINS.md has the full contract.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("advbench")
hookimpl = pluggy.HookimplMarker("advbench")

# register(cls) or register(name, "module:Class", *, kind=None, description=None, aliases=())
Register = Callable[..., None]


@hookspec
def register_datasets(register: Register) -> None:
    """Register ``advbench.api.Dataset`` subclasses: sources of [0, 1] NCHW images and int64 labels."""


@hookspec
def register_victims(register: Register) -> None:
    """Register ``advbench.api.Victim`` subclasses: architectures with their training recipes."""


@hookspec
def register_interpreters(register: Register) -> None:
    """Register ``advbench.api.Interpreter`` subclasses: maps from images to attention masks in [0, 1]."""


@hookspec
def register_attacks(register: Register) -> None:
    """Register ``advbench.api.Attack`` subclasses: evasion attacks run batch by batch by the harness."""


@hookspec
def register_detectors(register: Register) -> None:
    """Register ``advbench.api.Detector`` subclasses: scores that flag adversarial inputs."""


@hookspec
def register_executors(register: Register) -> None:
    """Register ``advbench.api.Executor`` subclasses: ways to run independent cells (local, Ray, ...)."""


@hookspec
def report_sections(results: dict[str, Any], run_dir: str) -> list[dict[str, Any]] | None:
    """Sections a plugin adds to a run's HTML report; return None (or ``[]``) to add nothing.

    Called once per rendering, each plugin with its own copy of the run's results.json (``results``) and the
    run folder (``run_dir``). Return a list of dicts with these keys (only ``title`` is required)::

        {"title": "Paper vs this run",        # the heading and the navigation entry; escaped
         "id": "paper",                       # the anchor; letters, digits, - and _; default plugin-section-<n>
         "place": "after:overview",           # "before:<id>" / "after:<id>"; default "before:run"
         "lead": "One paragraph of text.",    # escaped
         "template": "...", "context": {...}, # jinja2 source rendered by the report's environment
         "tables": [table, ...]}              # drawn exactly like the report's own tables

    ``place`` names a built-in section (overview, leaderboard, roc, detection, transfer, attacks, gallery, run)
    or another plugin's section id; sections at one place keep the order they were returned in, and a place
    not on the page falls back to "before:run". An id the page already uses gets a numeric suffix.

    The body is, in this order: ``lead``; ``template`` rendered with ``context`` as its variables by the
    report's own autoescaping environment (so every value from results is escaped; ``{% from "macros.html"
    import table %}`` draws an ``advbench.report.format.Table``; pass markup you built yourself, such as an
    SVG figure, as ``markupsafe.Markup``); each of ``tables``, an ``advbench.report.format.Table`` or a plain
    ``{"title", "caption", "columns": [str], "rows": [[value]]}`` dict whose numbers print like the report's.

    The original form ``{"title": ..., "html": ...}`` still works: ``html`` is inserted as markup after the
    rest, so escape anything taken from results yourself (``markupsafe.escape``). Prefer ``template``/``tables``.
    A hook that raises, or a section that cannot be drawn, is named in the page's problems banner; the other
    plugins' sections still appear.
    """
