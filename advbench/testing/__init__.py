"""advbench.testing: the conformance kit every plugin runs, built-in or third-party.

In the shape of scikit-learn's ``parametrize_with_checks``::

    from advbench.testing import parametrize_plugin_checks
    from advbench_mine.occlusion import Occlusion

    @parametrize_plugin_checks(Occlusion, Occlusion(patch=2))
    def test_conformance(plugin, check):
        check()

or, outside pytest, ``check_plugin(Occlusion)``, which runs every check for the class's kind and raises an
AssertionError naming the plugin, the check and what was wrong. A plugin is given as its class (checked with
its default options) or as an instance (checked with that instance's options: keep slow plugins small).

The checks run on a tiny world the kit generates, seeded, in about a second: 3 x 16 x 16 images in [0, 1] of
four classes, a small CNN victim trained on them (normalization inside, a dropout layer, frozen, eval mode), a
mask classifier on its gradient saliency, and iterative-FGSM images that fool it. Methods are called as the
harness calls them (build and fit under a forked, seeded global RNG; models frozen on ``ctx.device``). Per kind:

- every kind: ``registration`` (name, aliases, one-line description, revision string; attack norm and
  knowledge, detector flags and adaptive_gradient, interpreter explain_options and differentiable), ``options`` (Options subclass advbench.api.Options, every field has a
  default, unknown keys rejected, frozen);
- interpreter: ``masks`` (N x C' x H x W with C' in {1, C}, float, finite, in [0, 1], on ctx.device),
  ``deterministic``, ``batch-independent``, ``no-grad`` (same masks inside torch.no_grad, victim untouched),
  ``global-rng`` (explain leaves the global RNGs alone; nothing reseeds them), ``silent`` (nothing printed);
- attack: ``output`` (same shape as the input, float, finite, on ctx.device, model untouched; [0, 1] and the
  threat model are the attack template's to enforce), ``deterministic``, ``batch-independent`` (unless it declares
  ``batch_dependent``: each image's result alone equals its result in a batch), ``global-rng`` (no reseeding),
  ``silent``;
  an adaptive attack's ``run`` also gets a ``Defence`` whose score is the victim's lack of confidence
  (1 - max softmax);
- detector: ``output`` (DetectorOutput: score 1-D float finite, one per input; flag None or bool), ``deterministic``,
  ``global-rng``, ``silent``;
- victim: ``build`` (an nn.Module mapping [0, 1] N x C x H x W to N x classes finite logits), ``fit`` (trains:
  weights change, same parameter names), ``deterministic``, ``global-rng`` (no reseeding), ``silent``;
- dataset: ``splits`` (DataSplits: float32 N x C x H x W in [0, 1] on the CPU, int64 labels in range, class
  names), ``deterministic``, ``global-rng``, ``silent``;
- executor: ``slots``, ``runs-nodes`` (open, submit a module-level toy function over toy nodes, wait: each node
  comes back once with its record or, where the function raised, its exception; progress reaches on_event).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import torch

from advbench import api
from advbench.testing import _checks
from advbench.testing._checks import Subject
from advbench.testing._world import World, world

__all__ = ["CHECKS", "check_plugin", "plugin_checks", "parametrize_plugin_checks", "plugin_id", "world", "World"]

Check = Callable[[Subject], None]

_COMMON: list[tuple[str, Check]] = [("registration", _checks.check_registration), ("options", _checks.check_options)]

CHECKS: dict[str, list[tuple[str, Check]]] = {
    "interpreter": _COMMON + [
        ("masks", _checks.check_interpreter_masks),
        ("deterministic", _checks.check_interpreter_deterministic),
        ("batch-independent", _checks.check_interpreter_batch_independent),
        ("no-grad", _checks.check_interpreter_no_grad),
        ("global-rng", _checks.check_interpreter_global_rng),
        ("silent", _checks.check_interpreter_silent),
    ],
    "attack": _COMMON + [
        ("output", _checks.check_attack_output),
        ("deterministic", _checks.check_attack_deterministic),
        ("batch-independent", _checks.check_attack_batch_independent),
        ("global-rng", _checks.check_attack_global_rng),
        ("silent", _checks.check_attack_silent),
    ],
    "detector": _COMMON + [
        ("output", _checks.check_detector_output),
        ("deterministic", _checks.check_detector_deterministic),
        ("global-rng", _checks.check_detector_global_rng),
        ("silent", _checks.check_detector_silent),
    ],
    "victim": _COMMON + [
        ("build", _checks.check_victim_build),
        ("fit", _checks.check_victim_fit),
        ("deterministic", _checks.check_victim_deterministic),
        ("global-rng", _checks.check_victim_global_rng),
        ("silent", _checks.check_victim_silent),
    ],
    "dataset": _COMMON + [
        ("splits", _checks.check_dataset_splits),
        ("deterministic", _checks.check_dataset_deterministic),
        ("global-rng", _checks.check_dataset_global_rng),
        ("silent", _checks.check_dataset_silent),
    ],
    "executor": _COMMON + [
        ("slots", _checks.check_executor_slots),
        ("runs-nodes", _checks.check_executor_runs_nodes),
    ],
}
"""kind -> [(check name, check function)], in the order they run."""

Plugin = Union[type, api.Component]


def _subject(plugin: Plugin, device: Optional[Union[str, torch.device]] = None) -> Subject:
    if isinstance(plugin, api.Component):
        cls, options = type(plugin), plugin.options
    elif isinstance(plugin, type) and issubclass(plugin, api.Component):
        cls, options = plugin, None
    else:
        raise TypeError(f"advbench.testing: {plugin!r} is neither a plugin class (a subclass of one of "
                        f"advbench.api's bases) nor an instance of one")
    if cls.kind not in CHECKS:
        raise TypeError(f"advbench.testing: {cls.__qualname__} has kind {cls.kind!r}; subclass one of "
                        f"advbench.api.{', advbench.api.'.join(b.__name__ for b in api.KINDS.values())}")
    if options is None:
        try:
            options = cls.Options()
        except Exception:  # noqa: BLE001 - the options check reports it; the others get the bare base
            options = api.Options()
    return Subject(cls, options, torch.device(device) if device is not None else torch.device("cpu"))


def plugin_id(plugin: Plugin) -> str:
    """``kind:name``, the plugin part of a test id."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return f"{getattr(cls, 'kind', '?')}:{getattr(cls, 'name', '') or cls.__qualname__}"


def _run(check: Check, check_name: str, subject: Subject) -> None:
    where = f"{subject.label} failed check {check_name!r}"
    try:
        check(subject)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a plugin that raises fails the check, named
        last = (str(exc).strip().splitlines() or [""])[-1]
        raise AssertionError(f"{where}: it raised {type(exc).__name__}: {last}") from exc


def plugin_checks(plugin: Plugin, device: Optional[Union[str, torch.device]] = None
                  ) -> Iterator[tuple[str, Callable[[], None]]]:
    """Yield ``(check name, check)`` for every check of the plugin's kind; calling ``check()`` runs it and
    raises an AssertionError naming the plugin, the check and what was wrong."""
    subject = _subject(plugin, device)
    for name, check in CHECKS[subject.cls.kind]:
        yield name, functools.partial(_run, check, name, subject)


def check_plugin(plugin: Plugin, device: Optional[Union[str, torch.device]] = None,
                 skip: Iterable[str] = ()) -> None:
    """Run every check for the plugin's kind (except those named in ``skip``); the first failure raises."""
    skipped = set(skip)
    for name, check in plugin_checks(plugin, device):
        if name not in skipped:
            check()


def parametrize_plugin_checks(*plugins: Plugin, device: Optional[Union[str, torch.device]] = None,
                              skip: Optional[Mapping[str, str]] = None) -> Any:
    """A ``pytest.mark.parametrize("plugin, check", ...)`` decorator: one test per (plugin, check).

    Ids read ``kind:name:check`` (``interpreter:gradient:masks``). ``skip`` maps such an id, or ``kind:name``,
    or a check name, to the reason it is skipped. The decorated test receives the plugin and the check
    (a callable without arguments) and should just call ``check()``.
    """
    import pytest

    skip = dict(skip or {})
    params = []
    for plugin in plugins:
        pid = plugin_id(plugin)
        for name, check in plugin_checks(plugin, device):
            test_id = f"{pid}:{name}"
            reason = skip.get(test_id) or skip.get(pid) or skip.get(name)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(plugin, check, id=test_id, marks=marks))
    return pytest.mark.parametrize("plugin, check", params)
