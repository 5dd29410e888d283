"""The base classes a plugin subclasses, and the run context the harness hands to every method.

Conventions every component follows (the harness relies on them):
- images are float tensors in [0, 1], shape N x C x H x W; labels are int64 tensors of shape N;
- a victim model takes such images and normalizes them itself;
- the harness owns the device, the batch size and the seeds: a method asks ``ctx`` for them and never
  touches the global random state;
- options are a pydantic model (``Options``) declared on the class, validated before anything runs.

What a plugin may use is listed in ``__all__`` below (and ``advbench.hookimpl``, ``advbench.PLUGIN_API_VERSION``,
``advbench.errors.AdvbenchError``/``DataError``); those names keep their meaning within a major version of the
plugin API (``PLUGIN_API_VERSION``: MINOR adds, MAJOR breaks). Anything else in advbench is the harness's own and
may change in any release. docs/PLUGINS.md states each hook's contract: shapes, dtypes, ranges, device, seeds,
and what the harness checks at the boundary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from advbench import PLUGIN_API_VERSION

__all__ = [
    "PLUGIN_API_VERSION",
    # bases a plugin subclasses, one per kind, and the options model
    "Component", "Dataset", "Victim", "Interpreter", "Attack", "Detector", "Executor", "Options",
    # what the harness hands to methods and what they return
    "RunContext", "ProgressStore", "DataSplits", "DetectorEnv", "DetectorOutput",
    # the attacker's side: the threat model an attack runs under, what it returns, and what an adaptive
    # attacker knows of the defence
    "ThreatModel", "AttackResult", "Defence",
    "KINDS",
]


class Options(BaseModel):
    """Base of every plugin's options: unknown keys are rejected, so a typo in a suite fails before a run.

    Every option is part of the cache keys of what the plugin computes. An option added to a released plugin
    whose default keeps the old behaviour may say so with ``Field(default, json_schema_extra={"key_neutral":
    True})``: at its default it is left out of the keys, so the caches made before it existed stay valid.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    """Common part of every plugin class.

    ``name`` is what a suite writes; ``revision`` is bumped whenever a change alters results, so cached
    artifacts made by the older code are not reused (the distribution's version is part of the key too).
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    revision: ClassVar[str] = "1"
    Options: ClassVar[type[Options]] = Options
    # whether what the component computes depends on the run's batch size (``ctx.batch_size``): through which inputs
    # share a batch (statistics, an early stop or a search over the whole batch, random numbers drawn per batch,
    # say from ``ctx.generator`` salted by the batch, or from the global RNG the harness seeds per batch), or by
    # training with that batch size. False: each input's result is the same in any batch (up to float rounding),
    # so the batch size is left out of the cache keys of what it computes and raising it recomputes nothing.
    # True: those keys hold the run's batch size. ``depends_on_batch`` may refine it from the options.
    batch_dependent: ClassVar[bool] = False

    def __init__(self, options: Optional[Options] = None, **kwargs: Any) -> None:
        self.options = options if options is not None else type(self).Options(**kwargs)

    def depends_on_batch(self) -> bool:
        """Whether this component, with its options, depends on the run's batch size: ``batch_dependent`` unless
        a subclass whose options decide it overrides this (PGD depends on it only with a random start)."""
        return type(self).batch_dependent

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


@dataclass
class RunContext:
    """What the harness gives a method: device, batch size, a seed, and a progress reporter."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 128
    seed: int = 0
    progress: Optional[Callable[[Iterable, str, Optional[int]], Iterable]] = None
    # where a long fit keeps its state between epochs (the harness stores it in the cache beside the stage's
    # entry): a killed run resumes from the last finished epoch instead of the first
    checkpoint: Optional["ProgressStore"] = None
    # True while an adaptive attacker differentiates through an interpreter or detector: methods that take input
    # gradients keep the graph (``create_graph=True``) and nothing may run under ``torch.no_grad()``
    differentiable: bool = False
    # the threat model an attack runs under, set by the attack template before it calls ``run``: an attack that
    # supports targeted attacks reads ``threat.targeted`` to know that ``y`` holds target labels
    threat: Optional["ThreatModel"] = None

    def derive_seed(self, *salt: Any) -> int:
        """A seed for one purpose, stable across runs: the suite seed hashed with the salt."""
        text = repr((self.seed,) + tuple(salt)).encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF

    def generator(self, *salt: Any, device: Optional[torch.device] = None) -> torch.Generator:
        """A private torch.Generator seeded for ``salt``; use it instead of the global RNG."""
        gen = torch.Generator(device=device or "cpu")
        gen.manual_seed(self.derive_seed(*salt))
        return gen

    def child(self, *salt: Any) -> "RunContext":
        """The same context with a seed derived for a sub-task."""
        return RunContext(self.device, self.batch_size, self.derive_seed(*salt), self.progress, self.checkpoint,
                          self.differentiable, self.threat)

    def save_progress(self, state: dict[str, Any]) -> None:
        """Keep a fit's state after an epoch (plain containers and tensors: model, optimizer, RNG states, epoch)."""
        if self.checkpoint is not None:
            self.checkpoint.save(state)

    def restore_progress(self) -> Optional[dict[str, Any]]:
        """The state a killed run saved last, or None: a fit that gets one continues from it."""
        return self.checkpoint.load() if self.checkpoint is not None else None

    def track(self, iterable: Iterable, description: str, total: Optional[int] = None) -> Iterable:
        """Wrap a long loop so the user sees a progress bar (a no-op when none is attached)."""
        if self.progress is None:
            return iterable
        return self.progress(iterable, description, total)

    def batches(self, *tensors: torch.Tensor, shuffle: bool = False, generator: Optional[torch.Generator] = None,
                batch_size: Optional[int] = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield aligned slices of ``tensors`` moved to the device, optionally in a seeded random order."""
        n = len(tensors[0])
        size = batch_size or self.batch_size
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, size):
            idx = order[start:start + size]
            yield tuple(t[idx].to(self.device, non_blocking=True) for t in tensors)


class ProgressStore:
    """Where ``RunContext.save_progress`` keeps a fit's last epoch; the harness gives one to each training stage."""

    def save(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def load(self) -> Optional[dict[str, Any]]:
        raise NotImplementedError


@dataclass
class DataSplits:
    """A dataset as the harness sees it: CPU tensors, images in [0, 1] NCHW float32, labels int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Dataset(Component):
    """A source of labelled images."""

    kind = "dataset"
    # the grid the stored images sit on: intensities are multiples of 1 / levels (255 for 8-bit images, 16 for
    # scikit-learn's digits). The threat model quantises adversarial inputs to it, since an attacker must submit
    # an image; None: continuous data, nothing to quantise
    levels: ClassVar[Optional[int]] = None

    def load(self, ctx: RunContext) -> DataSplits:
        raise NotImplementedError


class Victim(Component):
    """A classifier architecture with its training recipe. Also used for the mask classifier f2.

    ``build`` returns an untrained ``nn.Module`` that takes [0, 1] inputs and normalizes them itself;
    ``fit`` trains it in place on CPU tensors (the recipe: optimizer, schedule, augmentation, epochs).
    """

    kind = "victim"

    def build(self, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        raise NotImplementedError

    def fit(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, ctx: RunContext) -> None:
        raise NotImplementedError


class Interpreter(Component):
    """An interpretation method g: maps a batch of images to attention masks in [0, 1].

    ``build`` returns the trainable state (e.g. a LAN's mask generator) or None for methods with no
    training; ``fit`` trains that state against the frozen victim; ``explain`` maps a batch on the device
    to masks of shape N x C' x H x W with C' either 1 or the input's channel count. With
    ``ctx.differentiable`` set, ``explain`` keeps the autograd graph from x to the masks (same values as
    without it); an interpreter that cannot do that sets ``differentiable = False``.
    """

    kind = "interpreter"
    # options that change only ``explain``, never ``fit``: the fitted state's cache key leaves them out, so
    # sweeping one (a LAN's output map, say) reuses the trained state and recomputes only the masks onward
    explain_options: ClassVar[tuple[str, ...]] = ()
    # whether ``explain`` is a differentiable function of x when ``ctx.differentiable`` is set (gradient methods by
    # double backprop, a LAN as a forward pass); False for methods that cannot be differentiated (an optimisation
    # per image): adaptive attacks through such an interpreter are not run, and their rows say so
    differentiable: ClassVar[bool] = True
    # a control, not a method: a stand-in that interprets nothing (raw-pixels), which an interpretation must beat
    control: ClassVar[bool] = False

    def build(self, input_shape: Sequence[int], num_classes: int) -> Optional[nn.Module]:
        return None

    def fit(self, state: Optional[nn.Module], victim: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
            ctx: RunContext) -> None:
        return None

    def explain(self, state: Optional[nn.Module], victim: nn.Module, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker may do, fixed by the harness (the suite's ``threat_model``), not by the attack.

    ``norm`` is "linf", "l2" or "l0"; ``eps`` the budget in that norm ([0, 1] input units for linf/l2, input
    elements for l0), None for an unbounded (minimal-perturbation) attack; ``levels`` the data's intensity grid
    (``Dataset.levels``): with ``quantize`` the outputs are rounded onto it; ``targeted`` asks for a given label
    instead of any wrong one.
    """

    norm: str = "linf"
    eps: Optional[float] = None
    quantize: bool = True
    levels: Optional[int] = None
    targeted: bool = False


@dataclass
class AttackResult:
    """What ``Attack.__call__`` returns for one batch (CPU tensors, one entry per input).

    ``adversarial`` lies in the threat model's ball around x, in [0, 1] and (when quantised) on the data's grid;
    ``success`` is judged on that final image; ``success_unquantized`` on the plugin's raw output, so
    quantisation that undid an attack is counted, not hidden; ``norms`` holds each image's "linf", "l2" and "l0"
    distance to x.
    """

    adversarial: torch.Tensor
    success: torch.Tensor
    success_unquantized: torch.Tensor
    norms: dict[str, torch.Tensor]


@dataclass
class Defence:
    """What an adaptive attacker knows: the victim, the detector under evaluation and its operating point.

    ``score(x)`` is the detector's score as a differentiable function of a batch on the device (higher = more
    adversarial); where the detector has non-differentiable or random parts it is already the surrogate the
    detector declares (``gradient``: "exact", "bpda" = a smooth or identity stand-in on the backward pass,
    "eot" = an average over random draws). ``threshold`` is the detector's threshold at ``fpr`` false positives,
    chosen on held-out benign images (never on the evaluation images): an input is flagged when its score
    exceeds it. For detectors that read an interpretation, ``explain`` (g, differentiable) and
    ``mask_classifier`` (f2) are given too, so an attack can target the masks themselves.
    """

    victim: nn.Module
    detector: str
    score: Callable[[torch.Tensor], torch.Tensor]
    threshold: float
    fpr: float = 0.05
    gradient: str = "exact"
    explain: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    mask_classifier: Optional[nn.Module] = None

    def flagged(self, x: torch.Tensor) -> torch.Tensor:
        """Which inputs of a batch the detector flags at the defence's threshold."""
        with torch.no_grad():
            return self.score(x) > self.threshold


class Attack(Component):
    """An evasion attack. ``run`` gets one batch on the device and returns adversarial images in [0, 1].

    The harness calls the attack through ``__call__``, the template every attack goes through (foolbox 3's
    shape): it moves the batch to the device once, runs the plugin's ``run``, then enforces the threat model
    (projection onto the norm ball and [0, 1], quantisation onto the data's grid), judges success (untargeted:
    the victim's label differs from ``y``; targeted: it equals the target) on the final image and records
    per-image norms. A plugin's ``run`` need not clip or project: the template does it for every attack.
    ``norm`` names the norm the attack optimises ("linf", "l2" or "l0"); ``knowledge`` is "oblivious" (crafted
    on the victim alone) or "adaptive" (``run`` also gets the ``Defence`` as its fifth argument).
    ``supports_targeted`` says ``run`` reads ``y`` as target labels when the threat model is targeted
    (``ctx.threat.targeted``; the harness draws the targets and validates a suite asking for them).
    """

    kind = "attack"
    norm: ClassVar[str] = ""
    knowledge: ClassVar[str] = "oblivious"
    supports_targeted: ClassVar[bool] = False

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext,
                 threat: ThreatModel, defence: Optional[Defence] = None) -> AttackResult:
        from advbench.threat import run_attack  # the harness's template; kept out of the API module

        return run_attack(self, model, x, y, ctx, threat, defence)


@dataclass
class DetectorEnv:
    """Everything a detector may use about the protected (target) victim.

    ``explain(x)`` returns the interpreter's masks for a batch on the device and ``mask_classifier`` is f2;
    both are None for a detector run without an interpreter. ``train_x``/``train_y`` is the victim's
    training data (CPU), for detectors that fit class statistics on it.
    """

    victim: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    num_classes: int
    explain: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    mask_classifier: Optional[nn.Module] = None


@dataclass
class DetectorOutput:
    """Per-input scores (higher = more likely adversarial) and, where the detector has one, its hard decision."""

    score: torch.Tensor
    flag: Optional[torch.Tensor] = None


class Detector(Component):
    """An adversarial-input detector.

    ``fit`` sees held-out benign and adversarial images (CPU tensors, disjoint from the evaluation pairs);
    detectors with nothing to learn ignore them. ``score`` gets one batch on the device.
    ``needs_interpreter`` says the detector runs once per interpreter (with ``env.explain`` and
    ``env.mask_classifier`` set); ``needs_adversarial_fit`` says ``fit`` needs adversarial examples, so it is
    fitted per attack.
    """

    kind = "detector"
    # one line saying what the score measures (higher = more adversarial), shown in the report's score table;
    # empty: the description is shown instead
    score_definition: ClassVar[str] = ""
    needs_interpreter: ClassVar[bool] = False
    needs_adversarial_fit: ClassVar[bool] = False
    # a control, not a method (label-only, msp): results compare every interpretation-based detector against it
    control: ClassVar[bool] = False
    # the score is a pure function of the victim's logits f1(x) and, for ``needs_interpreter``, of f2's logits on
    # g(x)'s masks: the harness then computes those logits once per image set (shared with every other reader)
    # and calls ``score_forwards`` instead of ``score``; both must give the same numbers bit for bit
    scores_from_forwards: ClassVar[bool] = False

    def fit(self, env: DetectorEnv, benign_x: torch.Tensor, adversarial_x: torch.Tensor, ctx: RunContext) -> None:
        return None

    def score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> DetectorOutput:
        raise NotImplementedError

    def score_forwards(self, f1_logits: torch.Tensor, f2_logits: Optional[torch.Tensor]) -> DetectorOutput:
        """``score`` from the logits the harness computed once: ``f1_logits`` the victim's on one batch,
        ``f2_logits`` the mask classifier's on the interpreter's masks of the same batch (None without an
        interpreter), both on the device. Only called when ``scores_from_forwards`` is set, on the fitted
        detector, for the same batches ``score`` would get; the result must equal ``score``'s exactly."""
        raise NotImplementedError(f"detector {self.name!r} does not score from logits")

    # how ``attack_score`` is differentiated: "exact", "bpda" (a stand-in for non-differentiable parts on the
    # backward pass), "eot" (random parts averaged over draws), "bpda+eot"; "" = no differentiable score, so an
    # adaptive attack cannot run against this detector and its adaptive rows say so
    adaptive_gradient: ClassVar[str] = ""
    # bumped when ``attack_score`` changes what an adaptive attack crafts while ``score`` stays as it was: part
    # of the adaptive sets' cache keys only (fits and oblivious rows keep theirs)
    attack_revision: ClassVar[str] = "1"

    def attack_score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """``score(...).score`` as a differentiable function of ``x`` (a batch on the device), for adaptive
        attacks: same forward values wherever the detector is deterministic and differentiable. Called with
        ``ctx.differentiable`` set; the detector is already fitted."""
        raise NotImplementedError(f"detector {self.name!r} has no differentiable score")


class Executor(Component):
    """Runs stage nodes of a run's plan, possibly many at once, possibly on other machines.

    The driver (advbench.runner) hands over one ready node at a time with ``submit(fn, node)``: ``node`` is
    plain, picklable data (``advbench.plan.Node``) and ``fn`` a module-level function, so both can travel to
    another process. The executor calls ``fn(node, emit)`` wherever it likes; ``emit`` is a picklable
    callable the executor provides that carries progress events (plain dicts) back to the driver, and
    ``fn`` returns the node's stage record (a plain dict). ``wait`` blocks until at least one submitted node
    has finished (or ``timeout`` seconds pass) and returns ``(node, record)`` pairs in any order; a node whose
    ``fn`` raised comes back as ``(node, exception)``. Progress events reach the driver through the
    ``on_event`` callback given to ``open``, called in the driver's process (from ``wait`` at the latest).

    ``slots`` is how many nodes may run at once; the driver divides the cores among them.
    Inputs and outputs travel through the cache folder, never through the executor.
    """

    kind = "executor"

    @property
    def slots(self) -> int:
        return 1

    def open(self, on_event: Callable[[dict], None]) -> None:
        """Start workers or connect to a cluster; called once before the first ``submit``."""

    def submit(self, fn: Callable[[Any, Callable[[dict], None]], dict], node: Any) -> None:
        raise NotImplementedError

    def wait(self, timeout: Optional[float] = None) -> list[tuple[Any, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what ``open`` started; called once, also after an interruption."""


KINDS: dict[str, type[Component]] = {
    "dataset": Dataset,
    "victim": Victim,
    "interpreter": Interpreter,
    "attack": Attack,
    "detector": Detector,
    "executor": Executor,
}
