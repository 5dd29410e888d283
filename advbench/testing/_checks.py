"""The checks, per kind. Each takes a ``Subject`` (a plugin class, its options and a device) and raises
AssertionError saying what is wrong; ``advbench.testing`` names the check in front of the message.

Every plugin method is called as the harness calls it (``advbench.stages``): build, fit, explain, run and score
inside a global RNG forked and seeded from the context, trainable state in train mode for ``fit`` and frozen
afterwards, victims frozen and in eval mode on the device. The RNG and print checks call the methods without
that protection, to see what a plugin does to its caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from advbench import api
from advbench.testing import _toy
from advbench.testing._world import World, freeze, world

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NORMS = ("linf", "l2", "l0")
KNOWLEDGE = ("oblivious", "adaptive")
GRADIENTS = ("exact", "bpda", "eot", "bpda+eot", "")
BATCH = 8  # images per explained / attacked / scored batch: small, and not the whole test set


@dataclass(frozen=True)
class Subject:
    """The plugin under test: its class, the options every check builds it with, the device."""

    cls: type
    options: api.Options
    device: torch.device

    @property
    def label(self) -> str:
        return f"{getattr(self.cls, 'kind', '?')} {getattr(self.cls, 'name', '') or self.cls.__qualname__!r}"

    def make(self) -> Any:
        """A fresh instance, as the harness makes one per stage."""
        return self.cls(self.options)

    def ctx(self, seed: int = 7, batch_size: int = BATCH) -> api.RunContext:
        return api.RunContext(device=self.device, batch_size=batch_size, seed=seed)


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """What the harness wraps around every plugin call: a forked global RNG seeded from the context."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed % (2 ** 63))
        yield


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                              "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def _same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b


@contextlib.contextmanager
def global_rng_untouched(what: str) -> Iterator[None]:
    """Fail if the block draws from or reseeds torch's, numpy's or Python's global random generator."""
    before = _rng_states()
    yield
    after = _rng_states()
    changed = [name for name in before if not _same_state(before[name], after.get(name))]
    assert not changed, (f"{what} changed the global random state of {', '.join(changed)}: draw from "
                         f"ctx.generator(...) instead (no torch.manual_seed, no torch.rand without generator=)")


def assert_not_reseeded(call: Callable[[], Any], what: str) -> None:
    """Fail if ``call`` reseeds a global generator: the state it leaves must still depend on the one it found."""
    saved_np, saved_random = np.random.get_state(), random.getstate()
    draws = []
    try:
        for seed in (11, 12):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed)
                random.seed(seed)
                call()
                draws.append((torch.rand(4), np.random.rand(4), random.random()))
    finally:
        np.random.set_state(saved_np)
        random.setstate(saved_random)
    (t1, n1, r1), (t2, n2, r2) = draws
    reseeded = [name for name, same in (("torch", torch.equal(t1, t2)), ("numpy", np.array_equal(n1, n2)),
                                        ("random", r1 == r2)) if same]
    assert not reseeded, (f"{what} reseeds the global random generator of {', '.join(reseeded)} (e.g. "
                          f"torch.manual_seed): the harness owns seeds; use ctx.generator(...)")


@contextlib.contextmanager
def nothing_printed(what: str) -> Iterator[None]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield
    text = out.getvalue()
    assert not text, (f"{what} printed to stdout ({text.strip()[:80]!r}); use logging.getLogger('advbench.<yours>')"
                      f" or ctx.track(...) for progress")


def assert_tensor(t: Any, what: str) -> torch.Tensor:
    assert isinstance(t, torch.Tensor), f"{what} is a {type(t).__name__}, not a torch.Tensor"
    return t


def assert_float_finite(t: torch.Tensor, what: str) -> None:
    assert t.is_floating_point(), f"{what} has dtype {t.dtype}, not a floating-point dtype"
    bad = int((~torch.isfinite(t)).sum())
    assert bad == 0, f"{what} has {bad} non-finite values (NaN or inf) out of {t.numel()}"


def assert_unit_range(t: torch.Tensor, what: str) -> None:
    lo, hi = float(t.min()), float(t.max())
    assert lo >= 0.0 and hi <= 1.0, f"{what} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]"


def assert_on(t: torch.Tensor, device: torch.device, what: str) -> None:
    assert t.device.type == device.type, f"{what} is on {t.device}, not on ctx.device ({device})"


def assert_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape and torch.equal(a, b), (
        f"{what} differ between two runs with the same seed and context "
        f"(max difference {float((a.double() - b.double()).abs().max()) if a.shape == b.shape else 'shape'}): "
        f"draw randomness from ctx.generator(...), never from the clock or an unseeded source")


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "training": [m.training for m in model.modules()],
            "grad": [p.requires_grad for p in model.parameters()]}


def assert_model_untouched(model: nn.Module, before: dict[str, Any], what: str) -> None:
    after = model_fingerprint(model)
    changed = [k for k, v in before["state"].items() if not torch.equal(v, after["state"][k].to(v.device))]
    assert not changed, f"{what} changed the model it was given ({', '.join(changed[:3])})"
    assert before["training"] == after["training"], f"{what} left the model it was given in another train/eval mode"
    assert before["grad"] == after["grad"], f"{what} changed requires_grad of the model's parameters"


# ---------------------------------------------------------------------------------------------- every kind


def check_registration(subject: Subject) -> None:
    cls = subject.cls
    kind = getattr(cls, "kind", "")
    assert kind in api.KINDS, f"kind {kind!r} is not one of {', '.join(api.KINDS)}"
    base = api.KINDS[kind]
    assert isinstance(cls, type) and issubclass(cls, base), f"{cls!r} does not subclass advbench.api.{base.__name__}"
    assert isinstance(cls.name, str) and NAME.match(cls.name), (
        f"name {cls.name!r} must be a non-empty string of letters, digits, '.', '_' and '-' (what a suite writes)")
    assert isinstance(cls.aliases, tuple) and all(isinstance(a, str) and NAME.match(a) for a in cls.aliases), (
        f"aliases {cls.aliases!r} must be a tuple of names like the name")
    assert cls.name not in cls.aliases, f"name {cls.name!r} is also among its aliases"
    description = cls.description
    assert isinstance(description, str) and description.strip(), "description is empty (list-plugins shows it)"
    assert "\n" not in description, "description must be one line (list-plugins shows it)"
    assert isinstance(cls.revision, str) and cls.revision.strip(), (
        f"revision {cls.revision!r} must be a non-empty string (part of every cache key; bump it when results change)")
    if kind == "attack":
        assert cls.norm in NORMS, f"attack norm {cls.norm!r} is not one of {', '.join(NORMS)}"
        assert cls.knowledge in KNOWLEDGE, f"attack knowledge {cls.knowledge!r} is not one of {', '.join(KNOWLEDGE)}"
    if kind == "detector":
        assert isinstance(cls.needs_interpreter, bool) and isinstance(cls.needs_adversarial_fit, bool), (
            "needs_interpreter and needs_adversarial_fit must be bools")
        assert cls.adaptive_gradient in GRADIENTS, (
            f"adaptive_gradient {cls.adaptive_gradient!r} is not one of {', '.join(map(repr, GRADIENTS))}")
    if kind == "interpreter":
        assert isinstance(cls.differentiable, bool), "differentiable must be a bool"
        fields = set(cls.Options.model_fields)
        unknown = [o for o in cls.explain_options if o not in fields]
        assert not unknown, f"explain_options names {unknown}, which are not fields of its Options"


def check_options(subject: Subject) -> None:
    cls = subject.cls
    assert isinstance(cls.Options, type) and issubclass(cls.Options, api.Options), (
        "Options must subclass advbench.api.Options")
    try:
        defaults = cls.Options()
    except ValidationError as exc:
        missing = [".".join(map(str, e["loc"])) for e in exc.errors()]
        raise AssertionError(f"Options() fails without arguments: every option needs a default ({missing})") from None
    instance = cls(defaults)
    assert instance.options == defaults, "the instance does not keep the Options it was given as .options"
    assert cls(**defaults.model_dump()).options == defaults, "keyword options do not build the same Options"
    try:
        cls.Options(no_such_option_xyz=1)
    except ValidationError:
        pass
    else:
        raise AssertionError("Options accepts an unknown key (no_such_option_xyz): a typo in a suite would be "
                             "silently ignored; subclass advbench.api.Options (extra='forbid')")
    fields = list(cls.Options.model_fields)
    if fields:
        try:
            setattr(defaults, fields[0], getattr(defaults, fields[0]))
        except (ValidationError, TypeError, AttributeError):
            pass
        else:
            raise AssertionError("Options are mutable: they are part of cache keys, keep advbench.api.Options' "
                                 "frozen=True")


# ---------------------------------------------------------------------------------------------- interpreters


def _interpreter_state(subject: Subject, w: World, victim: nn.Module, ctx: api.RunContext,
                       protect: bool = True) -> tuple[Any, Optional[nn.Module]]:
    interp = subject.make()
    guard = (lambda name: seeded(ctx.derive_seed(name), subject.device)) if protect else (
        lambda name: contextlib.nullcontext())
    with guard("build"):
        state = interp.build(w.input_shape, w.num_classes)
    if state is not None:
        assert isinstance(state, nn.Module), f"build returned a {type(state).__name__}, not an nn.Module or None"
        state.to(subject.device).train()
        with guard("fit"):
            interp.fit(state, victim, w.train_x, w.train_y, ctx)
        freeze(state).to(subject.device)
    return interp, state


def _explain(subject: Subject, interp: Any, state: Any, victim: nn.Module, x: torch.Tensor,
             ctx: api.RunContext) -> torch.Tensor:
    with seeded(ctx.derive_seed("explain"), subject.device):
        return interp.explain(state, victim, x.to(subject.device), ctx)


def check_interpreter_masks(subject: Subject) -> None:
    w = world()
    victim, ctx = w.fresh_victim(subject.device), subject.ctx()
    interp, state = _interpreter_state(subject, w, victim, ctx)
    x = w.test_x[:BATCH]
    masks = assert_tensor(_explain(subject, interp, state, victim, x, ctx), "explain's output")
    n, c, h, wd = x.shape
    assert masks.dim() == 4 and masks.shape[0] == n and masks.shape[2:] == (h, wd) and masks.shape[1] in (1, c), (
        f"masks have shape {tuple(masks.shape)} for input {tuple(x.shape)}; expected N x C' x H x W = "
        f"{n} x (1 or {c}) x {h} x {wd}")
    assert_float_finite(masks, "the masks")
    assert_unit_range(masks, "the masks")
    assert_on(masks, subject.device, "the masks")


def check_interpreter_deterministic(subject: Subject) -> None:
    w = world()
    x = w.test_x[:BATCH]
    runs = []
    for _ in range(2):
        victim, ctx = w.fresh_victim(subject.device), subject.ctx(seed=3)
        interp, state = _interpreter_state(subject, w, victim, ctx)
        runs.append(_explain(subject, interp, state, victim, x, ctx).detach().cpu())
    assert_equal(runs[0], runs[1], "masks (build, fit and explain run twice)")


def check_interpreter_batch_independent(subject: Subject) -> None:
    w = world()
    victim, ctx = w.fresh_victim(subject.device), subject.ctx()
    interp, state = _interpreter_state(subject, w, victim, ctx)
    x = w.test_x[:4]
    together = _explain(subject, interp, state, victim, x, ctx).detach().cpu()
    alone = torch.cat([_explain(subject, interp, state, victim, x[i:i + 1], ctx).detach().cpu()
                       for i in range(len(x))])
    assert together.shape == alone.shape, "masks of one image at a time have another shape than of a batch"
    diff = float((together - alone).abs().max())
    assert diff <= 1e-4, (f"an image's mask depends on the batch it comes in (max difference {diff:.3g}); "
                          f"the harness batches images by ctx.batch_size")


def check_interpreter_no_grad(subject: Subject) -> None:
    w = world()
    victim, ctx = w.fresh_victim(subject.device), subject.ctx()
    interp, state = _interpreter_state(subject, w, victim, ctx)
    before = model_fingerprint(victim)
    x = w.test_x[:4]
    plain = _explain(subject, interp, state, victim, x, ctx).detach().cpu()
    with torch.no_grad():
        inside = _explain(subject, interp, state, victim, x, ctx).detach().cpu()
    assert_equal(plain, inside, "masks inside and outside torch.no_grad()")
    assert_model_untouched(victim, before, "explain")


def check_interpreter_global_rng(subject: Subject) -> None:
    w = world()
    victim, ctx = w.fresh_victim(subject.device), subject.ctx()
    interp, state = _interpreter_state(subject, w, victim, ctx)
    with global_rng_untouched("explain"):
        interp.explain(state, victim, w.test_x[:4].to(subject.device), ctx)

    def everything() -> None:
        i, s = _interpreter_state(subject, w, w.fresh_victim(subject.device), ctx, protect=False)
        i.explain(s, victim, w.test_x[:2].to(subject.device), ctx)
    assert_not_reseeded(everything, "build, fit or explain")


def check_interpreter_silent(subject: Subject) -> None:
    w = world()
    with nothing_printed("build, fit or explain"):
        victim, ctx = w.fresh_victim(subject.device), subject.ctx()
        interp, state = _interpreter_state(subject, w, victim, ctx)
        _explain(subject, interp, state, victim, w.test_x[:4], ctx)


# ---------------------------------------------------------------------------------------------- attacks


def _kit_defence(victim: nn.Module, w: World) -> api.Defence:
    """What an adaptive attack is given in the kit: the victim's lack of confidence (1 - max softmax) as the
    detector score, thresholded at 5% false positives on the world's training images."""
    def score(x: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.softmax(victim(x).float(), dim=1).amax(dim=1)

    device = next(victim.parameters()).device
    with torch.no_grad():
        benign = score(w.train_x.to(device))
    threshold = float(torch.quantile(benign.double(), 0.95, interpolation="higher"))
    return api.Defence(victim, "kit-confidence", score, threshold)


def _run_attack(subject: Subject, attack: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                ctx: api.RunContext) -> torch.Tensor:
    """``run`` as the harness calls it: an adaptive attack also gets a defence."""
    if getattr(subject.cls, "knowledge", "oblivious") == "adaptive":
        return attack.run(model, x, y, ctx, _kit_defence(model, world()))
    return attack.run(model, x, y, ctx)


def _attack(subject: Subject, attack: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            ctx: api.RunContext, protect: bool = True) -> torch.Tensor:
    """``run`` as the attack template calls it: detached, contiguous inputs on the device, the threat model in the
    context (the attack's own norm and eps option), gradients on. Its output is checked raw: clipping and
    projection are the template's job, not the plugin's."""
    norm = attack.norm if attack.norm in NORMS else "linf"
    ctx = dataclasses.replace(ctx, threat=api.ThreatModel(norm=norm, eps=getattr(attack.options, "eps", None)))
    x = x.detach().to(subject.device).contiguous()
    y = y.detach().to(subject.device).contiguous()
    with seeded(ctx.seed, subject.device) if protect else contextlib.nullcontext(), torch.enable_grad():
        return _run_attack(subject, attack, model, x, y, ctx)


def check_attack_output(subject: Subject) -> None:
    w = world()
    model, ctx = w.fresh_victim(subject.device), subject.ctx()
    before = model_fingerprint(model)
    x, y = w.test_x[:BATCH], w.test_y[:BATCH]
    adv = assert_tensor(_attack(subject, subject.make(), model, x, y, ctx), "run's output")
    assert adv.shape == x.shape, f"run returned shape {tuple(adv.shape)} for input {tuple(x.shape)}; expected the same"
    assert_float_finite(adv, "the adversarial images")
    assert_on(adv, subject.device, "the adversarial images")
    assert_model_untouched(model, before, "run")


def check_attack_deterministic(subject: Subject) -> None:
    w = world()
    x, y = w.test_x[:BATCH], w.test_y[:BATCH]
    runs = [_attack(subject, subject.make(), w.fresh_victim(subject.device), x, y, subject.ctx(seed=3)).detach().cpu()
            for _ in range(2)]
    assert_equal(runs[0], runs[1], "adversarial images")


def check_attack_batch_independent(subject: Subject) -> None:
    """An attack that does not declare ``batch_dependent`` (for its options: ``depends_on_batch()``) gives each
    image the same result alone as in a batch: the harness leaves the batch size out of its cache keys."""
    attack = subject.make()
    if attack.depends_on_batch():
        return  # declared: its keys hold the run's batch size
    w = world()
    x, y = w.test_x[:4], w.test_y[:4]
    model, ctx = w.fresh_victim(subject.device), subject.ctx(seed=3)
    together = _attack(subject, attack, model, x, y, ctx).detach().cpu()
    alone = torch.cat([_attack(subject, subject.make(), model, x[i:i + 1], y[i:i + 1], ctx).detach().cpu()
                       for i in range(len(x))])
    diff = float((together - alone).abs().max())
    assert diff <= 1e-4, (f"an image's adversarial depends on the batch it comes in (max difference {diff:.3g}); "
                          "declare batch_dependent = True (or depends_on_batch()) so the run's batch size stays "
                          "in its cache keys")


def check_attack_global_rng(subject: Subject) -> None:
    w = world()
    x, y = w.test_x[:4], w.test_y[:4]
    model, ctx = w.fresh_victim(subject.device), subject.ctx()
    assert_not_reseeded(lambda: _attack(subject, subject.make(), model, x, y, ctx, protect=False), "run")


def check_attack_silent(subject: Subject) -> None:
    w = world()
    with nothing_printed("run"):
        _attack(subject, subject.make(), w.fresh_victim(subject.device), w.test_x[:4], w.test_y[:4], subject.ctx())


# ---------------------------------------------------------------------------------------------- detectors


def _detector_env(subject: Subject, w: World) -> api.DetectorEnv:
    victim = w.fresh_victim(subject.device)
    if not subject.cls.needs_interpreter:
        return api.DetectorEnv(victim, w.train_x, w.train_y, w.num_classes)
    from advbench.testing._world import saliency

    return api.DetectorEnv(victim, w.train_x, w.train_y, w.num_classes, explain=lambda b: saliency(victim, b),
                           mask_classifier=w.fresh_mask_classifier(subject.device))


def _fit_split(w: World) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(benign fit images, adversarial fit images, evaluation images): held-out fit pairs, as the harness does."""
    half = len(w.test_x) // 2
    return w.test_x[half:], w.adversarial_x[half:], torch.cat([w.test_x[:4], w.adversarial_x[:4]])


def _fitted_detector(subject: Subject, w: World, env: api.DetectorEnv, ctx: api.RunContext,
                     protect: bool = True) -> Any:
    detector = subject.make()
    benign, adversarial, _ = _fit_split(w)
    if not subject.cls.needs_adversarial_fit:
        adversarial = benign[:0]
    with seeded(ctx.derive_seed("fit"), subject.device) if protect else contextlib.nullcontext():
        detector.fit(env, benign, adversarial, ctx)
    return detector


def _score(subject: Subject, detector: Any, env: api.DetectorEnv, x: torch.Tensor, ctx: api.RunContext) -> Any:
    with seeded(ctx.derive_seed("score", 0), subject.device):
        return detector.score(env, x.to(subject.device), ctx)


def check_detector_output(subject: Subject) -> None:
    w = world()
    env, ctx = _detector_env(subject, w), subject.ctx()
    before = model_fingerprint(env.victim)
    detector = _fitted_detector(subject, w, env, ctx)
    x = _fit_split(w)[2]
    out = _score(subject, detector, env, x, ctx)
    assert isinstance(out, api.DetectorOutput), f"score returned a {type(out).__name__}, not a DetectorOutput"
    score = assert_tensor(out.score, "DetectorOutput.score")
    assert score.shape == (len(x),), (f"score has shape {tuple(score.shape)} for {len(x)} inputs; expected a 1-D "
                                      f"tensor of {len(x)} scores")
    assert_float_finite(score, "the scores")
    assert_on(score, subject.device, "the scores")
    if out.flag is not None:
        flag = assert_tensor(out.flag, "DetectorOutput.flag")
        assert flag.dtype == torch.bool, f"flag has dtype {flag.dtype}, not torch.bool (or leave it None)"
        assert flag.shape == (len(x),), f"flag has shape {tuple(flag.shape)}; expected ({len(x)},)"
    assert_model_untouched(env.victim, before, "fit or score")


def check_detector_deterministic(subject: Subject) -> None:
    w = world()
    runs = []
    for _ in range(2):
        env, ctx = _detector_env(subject, w), subject.ctx(seed=3)
        detector = _fitted_detector(subject, w, env, ctx)
        out = _score(subject, detector, env, _fit_split(w)[2], ctx)
        runs.append(out)
    assert_equal(runs[0].score.detach().cpu(), runs[1].score.detach().cpu(), "scores (fit and score run twice)")
    if runs[0].flag is not None and runs[1].flag is not None:
        assert_equal(runs[0].flag.cpu(), runs[1].flag.cpu(), "flags (fit and score run twice)")


def check_detector_global_rng(subject: Subject) -> None:
    w = world()
    env, ctx = _detector_env(subject, w), subject.ctx()
    detector = _fitted_detector(subject, w, env, ctx)
    x = _fit_split(w)[2].to(subject.device)
    with global_rng_untouched("score"):
        detector.score(env, x, ctx)

    def everything() -> None:
        d = _fitted_detector(subject, w, env, ctx, protect=False)
        d.score(env, x, ctx)
    assert_not_reseeded(everything, "fit or score")


def check_detector_silent(subject: Subject) -> None:
    w = world()
    with nothing_printed("fit or score"):
        env, ctx = _detector_env(subject, w), subject.ctx()
        detector = _fitted_detector(subject, w, env, ctx)
        _score(subject, detector, env, _fit_split(w)[2], ctx)


# ---------------------------------------------------------------------------------------------- victims


def _victim(subject: Subject, w: World, ctx: api.RunContext, fit: bool = True) -> tuple[Any, nn.Module]:
    victim = subject.make()
    with seeded(ctx.derive_seed("build"), subject.device):
        model = victim.build(w.input_shape, w.num_classes)
    assert isinstance(model, nn.Module), f"build returned a {type(model).__name__}, not an nn.Module"
    if fit:
        with seeded(ctx.derive_seed("fit"), subject.device):
            victim.fit(model, w.train_x, w.train_y, ctx)
    return victim, model


def _logits(subject: Subject, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    freeze(model).to(subject.device)
    with torch.no_grad():
        return model(x.to(subject.device))


def check_victim_build(subject: Subject) -> None:
    w = world()
    _, model = _victim(subject, w, subject.ctx(), fit=False)
    x = w.test_x[:BATCH]
    logits = assert_tensor(_logits(subject, model, x), "the model's output")
    assert logits.shape == (len(x), w.num_classes), (
        f"the built model maps {tuple(x.shape)} to {tuple(logits.shape)}; expected N x classes = "
        f"{len(x)} x {w.num_classes} logits")
    assert_float_finite(logits, "the logits")
    assert_on(logits, subject.device, "the logits")


def check_victim_fit(subject: Subject) -> None:
    w = world()
    ctx = subject.ctx()
    victim, model = _victim(subject, w, ctx, fit=False)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with seeded(ctx.derive_seed("fit"), subject.device):
        victim.fit(model, w.train_x, w.train_y, ctx)
    after = model.state_dict()
    assert set(after) == set(before), "fit changed the model's parameter names (a checkpoint would not load)"
    assert any(not torch.equal(v, after[k].to(v.device)) for k, v in before.items()), "fit left every weight as it was"
    logits = _logits(subject, model, w.test_x)
    assert_float_finite(logits, "the trained model's logits")
    assert logits.shape == (len(w.test_x), w.num_classes), f"the trained model returns {tuple(logits.shape)}"


def check_victim_deterministic(subject: Subject) -> None:
    w = world()
    states = [_victim(subject, w, subject.ctx(seed=3))[1].state_dict() for _ in range(2)]
    for k, v in states[0].items():
        assert_equal(v.detach().cpu(), states[1][k].detach().cpu(), f"trained weights ({k})")


def check_victim_global_rng(subject: Subject) -> None:
    w = world()
    ctx = subject.ctx()

    def everything() -> None:
        victim = subject.make()
        model = victim.build(w.input_shape, w.num_classes)
        victim.fit(model, w.train_x, w.train_y, ctx)
    assert_not_reseeded(everything, "build or fit")


def check_victim_silent(subject: Subject) -> None:
    with nothing_printed("build or fit"):
        _victim(subject, world(), subject.ctx())


# ---------------------------------------------------------------------------------------------- datasets


def check_dataset_splits(subject: Subject) -> None:
    data = subject.make().load(subject.ctx())
    assert isinstance(data, api.DataSplits), f"load returned a {type(data).__name__}, not a DataSplits"
    assert isinstance(data.classes, list) and data.classes and all(isinstance(c, str) for c in data.classes), (
        "classes must be a non-empty list of class names (str)")
    shapes = []
    for split in ("train", "test"):
        x = assert_tensor(getattr(data, f"{split}_x"), f"{split}_x")
        y = assert_tensor(getattr(data, f"{split}_y"), f"{split}_y")
        assert x.dim() == 4 and len(x) > 0, f"{split}_x has shape {tuple(x.shape)}; expected N x C x H x W, N > 0"
        assert x.dtype == torch.float32, f"{split}_x has dtype {x.dtype}, not torch.float32"
        assert_float_finite(x, f"{split}_x")
        assert_unit_range(x, f"{split}_x")
        assert x.device.type == "cpu", f"{split}_x is on {x.device}: a dataset returns CPU tensors"
        assert y.dtype == torch.int64, f"{split}_y has dtype {y.dtype}, not torch.int64"
        assert y.shape == (len(x),), f"{split}_y has shape {tuple(y.shape)} for {len(x)} images"
        assert y.device.type == "cpu", f"{split}_y is on {y.device}: a dataset returns CPU tensors"
        lo, hi = int(y.min()), int(y.max())
        assert 0 <= lo and hi < len(data.classes), (
            f"{split}_y has labels in [{lo}, {hi}], outside [0, {len(data.classes) - 1}] (one per class name)")
        shapes.append(tuple(x.shape[1:]))
    assert shapes[0] == shapes[1], f"train images are {shapes[0]} but test images are {shapes[1]}"


def check_dataset_deterministic(subject: Subject) -> None:
    first, second = (subject.make().load(subject.ctx(seed=3)) for _ in range(2))
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert_equal(getattr(first, field), getattr(second, field), f"{field} of two loads")
    assert first.classes == second.classes, "class names differ between two loads"


def check_dataset_global_rng(subject: Subject) -> None:
    with global_rng_untouched("load"):
        subject.make().load(subject.ctx())


def check_dataset_silent(subject: Subject) -> None:
    with nothing_printed("load"):
        subject.make().load(subject.ctx())


# ---------------------------------------------------------------------------------------------- executors


def check_executor_slots(subject: Subject) -> None:
    slots = subject.make().slots
    assert isinstance(slots, int) and not isinstance(slots, bool) and slots >= 1, (
        f"slots is {slots!r}; expected a positive int (how many nodes may run at once)")


def check_executor_runs_nodes(subject: Subject, timeout: float = 120.0) -> None:
    import tempfile
    import time

    from advbench.plan import Node, Settings

    events: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="advbench-kit-") as cache:
        settings = Settings(cache_root=cache)
        nodes = [Node(key=f"kit-{i}", stage="toy", label=f"toy {i}", settings=settings,
                      params={"values": list(range(i + 2)), "fail": i == 2}, resources={"cpus": 1})
                 for i in range(4)]
        executor = subject.make()
        executor.open(events.append)
        back: dict[str, Any] = {}
        try:
            for node in nodes:
                executor.submit(_toy.sometimes_failing_stage, node)
            deadline = time.monotonic() + timeout
            while len(back) < len(nodes):
                assert time.monotonic() < deadline, (f"only {sorted(back)} of {len(nodes)} nodes came back within "
                                                     f"{timeout:.0f} s")
                finished = executor.wait(1.0)
                assert isinstance(finished, list), f"wait returned a {type(finished).__name__}, not a list"
                for item in finished:
                    assert isinstance(item, tuple) and len(item) == 2, f"wait returned {item!r}, not (node, record)"
                    node, out = item
                    assert getattr(node, "key", None) in {n.key for n in nodes}, f"wait returned an unknown node {node!r}"
                    assert node.key not in back, f"node {node.key} came back twice"
                    back[node.key] = out
            rest = executor.wait(0)
            assert rest == [], f"wait returned {len(rest)} more results after every node came back"
        finally:
            executor.close()
    for i, node in enumerate(nodes):
        out = back[node.key]
        if node.params["fail"]:
            assert isinstance(out, Exception), (f"a node whose function raised came back as {out!r}, not as "
                                                f"(node, exception)")
            assert "toy failure" in str(out) or "ToyStageError" in repr(out) or isinstance(out.__cause__, Exception), (
                f"the exception that came back ({out!r}) is not the one the function raised")
        else:
            assert isinstance(out, dict), f"node {node.key} came back as {out!r}, not its record (a dict)"
            assert out.get("key") == node.key and out.get("value") == sum(node.params["values"]), (
                f"node {node.key}'s record is {out!r}: not what the function returned for that node")
            seen = {e.get("event") for e in events if isinstance(e, dict) and e.get("node") == node.key}
            assert {"start", "end"} <= seen, (f"node {node.key}'s progress events did not reach on_event "
                                             f"(saw {sorted(seen)})")
