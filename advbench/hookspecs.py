"""Every hook a plugin can implement. Decorate implementations with ``advbench.hookimpl``.

Registration hooks receive a ``register`` callback; call it once per component class::

    @advbench.hookimpl
    def register_interpreters(register):
        register(MyInterpreter)

The class must subclass the matching base in ``advbench.api`` and set ``name`` (what suites write),
``description`` (one line, shown by ``advbench list-plugins``) and, optionally, ``aliases`` and ``Options``.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("advbench")
hookimpl = pluggy.HookimplMarker("advbench")

Register = Callable[[type], None]


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
def report_sections(results: dict[str, Any], run_dir: str) -> list[dict[str, str]] | None:
    """Extra sections for a run's HTML report.

    Return a list of ``{"title": ..., "html": ...}`` dicts. ``results`` is the run's results.json as a dict;
    ``html`` is inserted as markup, so escape anything taken from user input (``markupsafe.escape``).
    Called once per rendering; return None to add nothing.
    """
