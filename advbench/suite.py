"""The suite schema and its validation.

A suite is YAML read with ``yaml.safe_load`` and checked in full before anything runs: the structure by the
pydantic models below, each component's options by its plugin's own ``Options`` model. Every failure becomes a
``SuiteError`` naming the file, the field path, what was found and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from advbench import plugins
from advbench.errors import SuiteError

# Size limits on a suite (the shipped ones: under 4 KiB, about 330 nodes, 4 levels deep). They stop a file, or
# YAML aliases that expand a small file many times over (billion laughs), from exhausting memory or the stack.
MAX_SUITE_BYTES = 256 * 1024
MAX_NODES = 20_000  # YAML nodes after every alias is expanded
MAX_DEPTH = 24  # nesting levels of mappings and sequences, aliases expanded
NAME_MAX = 100
MAX_BATCH = 65536  # the largest batch_size a suite may ask for


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ThreatModelSpec(_Strict):
    """What the attacker may do, for the run (top level) or one attack (overriding the top level field by field).

    A field left out falls back to the top level, then to the attack's own: its plugin's norm, its ``eps`` option
    where it has one (else unbounded), quantisation on, untargeted.
    """

    norm: Optional[Literal["linf", "l2", "l0"]] = Field(None, description="the norm the budget is measured in")
    eps: Any = Field(None, description="the budget: a number >= 0 ([0, 1] input units for linf and l2, at most 1 "
                     "for linf; input elements for l0), null for unbounded, or a list of numbers: one attack per "
                     "budget, named NAME@2/255 or NAME@eps=0.5")
    quantize: bool = Field(True, description="round adversarial inputs onto the data's intensity grid (8-bit)")
    targeted: bool = Field(False, description="ask for a harness-drawn target label instead of any wrong one")


class ComponentSpec(_Strict):
    """One component of the grid: which plugin, with which options. ``plugin`` defaults to the entry's key."""

    plugin: Optional[str] = None
    options: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Optional[str] = Field(None, description="victims and mask_classifier: load these weights instead of "
                                      "training (a state_dict file, loaded with weights_only=True)")
    mask_train_limit: Optional[int] = Field(None, ge=1, description="interpreters: fit the interpreter and train "
                                            "its f2 on this many training images (for slow interpreters)")
    n_mask_eval: Optional[int] = Field(None, ge=1, description="interpreters: measure f2's accuracy on this many "
                                       "test masks (overrides evaluation.n_mask_eval)")
    threat_model: Optional[ThreatModelSpec] = Field(None, description="attacks: this attack's threat model, "
                                                    "overriding the top level's fields it sets")
    match_accuracy: Optional[str] = Field(None, description="interpreters: train this interpreter's f2 only until "
                                          "it reads the calibration images as well as the named interpreter's f2 "
                                          "does (a control matched in accuracy, e.g. raw-pixels)")


class PairSpec(_Strict):
    """Adversarial inputs crafted on ``source`` are evaluated against ``target``'s detectors."""

    source: str
    target: str


class EvaluationSpec(_Strict):
    pairs: list[PairSpec] = Field(min_length=1)
    n_eval: int = Field(500, ge=1, description="test images attacked for the evaluation pairs")
    n_fit: int = Field(200, ge=0, description="further test images, disjoint, to fit detectors that learn")
    n_calibration: int = Field(200, ge=0, description="further benign test images, disjoint from both, on which "
                                                      "every detector's thresholds at 1, 5 and 10% FPR are chosen")
    n_validation: int = Field(200, ge=0, description="with a sweep: further test images, disjoint from all three, "
                                                     "attacked and scored at every sweep point; the point a "
                                                     "detector reports is chosen on them (0: no validation split)")
    filtered: bool = Field(True, description="also report rows on inputs whose benign mask f2 reads correctly")
    benign: Literal["natural", "paired"] = Field(
        "natural", description="the negatives of every detection row: natural = every evaluation image, "
                               "misclassified ones included (what a deployed detector sees); paired = only the "
                               "benign originals of the adversarial inputs the row counts")
    unseen_fit: Optional[str] = Field(
        None, description="the attack whose adversarial examples fit the 'unseen' protocol of every detector that "
                          "learns from adversarial data: that one model then scores every other attack (and the "
                          "worst case); default: the first oblivious attack listed")
    mask_train_limit: Optional[int] = Field(None, ge=1, description="default mask_train_limit of every interpreter")
    n_mask_eval: Optional[int] = Field(None, ge=1, description="test images whose benign masks measure f2's "
                                       "accuracy (default: the evaluation images); --limit does not cap it")


class SuiteSpec(_Strict):
    name: Optional[str] = None
    description: str = ""
    seed: int = Field(0, ge=0)
    seeds: Optional[list[Any]] = Field(None, description="run the grid once per training seed (distinct integers "
                                       ">= 0) on the same images, split by the first; mean and spread reported")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: Union[int, Literal["auto"]] = Field(
        128, description="images per batch (1 to 65536), or auto: on CUDA the largest power of two up to "
                         "4096 whose forward and backward pass through the victims fits in free GPU memory, "
                         "128 on the CPU")
    executor: ComponentSpec = Field(default_factory=lambda: ComponentSpec(plugin="local"))
    dataset: ComponentSpec
    victims: dict[str, ComponentSpec] = Field(min_length=1)
    interpreters: dict[str, ComponentSpec] = Field(default_factory=dict)
    mask_classifier: ComponentSpec = Field(default_factory=lambda: ComponentSpec(plugin="lenet"))
    attacks: dict[str, ComponentSpec] = Field(min_length=1)
    detectors: dict[str, ComponentSpec] = Field(min_length=1)
    evaluation: EvaluationSpec
    threat_model: Optional[ThreatModelSpec] = Field(None, description="the threat model of every attack")
    # a grid (every combination of the values), or a list of grids run one after another (e.g. one field at a
    # time around the suite's own setting); a point two grids share runs once
    sweep: Union[dict[str, list[Any]], list[dict[str, list[Any]]]] = Field(default_factory=dict)
    paper_reference: Optional[dict[str, Any]] = Field(None, description="the paper's own numbers, shown beside ours")

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("a control character (NUL, newline or another) is not allowed; allowed: printable text, up "
                             f"to {NAME_MAX} characters")
        if len(value) > NAME_MAX:
            raise ValueError(f"{len(value)} characters; allowed: up to {NAME_MAX}")
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        if value == "auto" and isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_BATCH:
            return value
        raise ValueError(f"allowed: an integer from 1 to {MAX_BATCH}, or auto")

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep_shape(cls, value: Any) -> Any:
        grids = value if isinstance(value, list) else [value]
        for i, grid in enumerate(grids):
            where = f"sweep.{i}" if isinstance(value, list) else "sweep"
            if not isinstance(grid, dict):
                raise ValueError(f"{where}: found {_short(grid)}; allowed: a mapping of field path to a list of "
                                 "values, or a list of such mappings")
            for field, values in grid.items():
                if not isinstance(values, list):
                    raise ValueError(f"{where}.{field}: found {_short(values)}; input should be a valid list of "
                                     "values")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: Optional[list[Any]]) -> Optional[list[Any]]:
        if value is None:
            return value
        allowed = "allowed: a non-empty list of distinct integers >= 0"
        if not value:
            raise ValueError(allowed)
        for i, seed in enumerate(value):
            # a bool is an int to Python, and YAML reads yes/no as one: not a seed
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seeds.{i}: found {_short(seed)}; {allowed}")
            if seed in value[:i]:
                raise ValueError(f"seeds.{i}: {seed} is repeated; {allowed}")
        return value

    @model_validator(mode="after")
    def _one_seed_source(self) -> "SuiteSpec":
        # the first of seeds is the seed of the image split and of the first run: a different seed beside it
        # would leave unclear which one splits the images
        if self.seeds is None:
            return self
        if "seed" in self.model_fields_set and self.seed != self.seeds[0]:
            raise ValueError(f"seed: found {self.seed} beside seeds {self.seeds}; allowed: seed left out or equal "
                             f"to the first of seeds ({self.seeds[0]}), which seeds the image split")
        if self.sweep:
            raise ValueError("seeds: cannot be combined with sweep yet; allowed: seeds or sweep")
        self.seed = self.seeds[0]
        return self

    @model_validator(mode="after")
    def _pairs_name_victims(self) -> "SuiteSpec":
        for i, pair in enumerate(self.evaluation.pairs):
            for role in ("source", "target"):
                victim = getattr(pair, role)
                if victim not in self.victims:
                    raise ValueError(f"evaluation.pairs.{i}.{role}: victim {victim!r} is not in victims "
                                     f"(defined: {', '.join(self.victims)})")
        return self


# sections whose entries are cells of the grid: one broken plugin there fails its cells, not the run
CELLS = ("interpreters", "attacks", "detectors")

# kind of plugin each section holds; mapping sections are name -> spec
SECTIONS = {
    "dataset": "dataset",
    "executor": "executor",
    "mask_classifier": "victim",
    "victims": "victim",
    "interpreters": "interpreter",
    "attacks": "attack",
    "detectors": "detector",
}


class Suite:
    """A validated suite: the raw mapping, the parsed spec and each component's plugin and options."""

    def __init__(self, source: str, raw: dict[str, Any]) -> None:
        self.source = source
        self.raw = raw
        self.spec = _parse(source, raw)
        self.name = self.spec.name or Path(source).stem
        self.components: dict[tuple[str, str], tuple[plugins.Registration, Any]] = {}
        # interpreters, attacks and detectors whose plugin is broken: the run marks their cells failed and goes on
        self.broken: dict[tuple[str, str], str] = {}
        # each attack's resolved threat model; an eps list makes one attack per budget, named after it
        self.threats: dict[str, dict[str, Any]] = {}
        attacks: dict[str, ComponentSpec] = {}
        for section, kind in SECTIONS.items():
            value = getattr(self.spec, section)
            entries = value.items() if isinstance(value, dict) else [(None, value)]
            for key, spec in entries:
                path = section if key is None else f"{section}.{key}"
                plugin_name = spec.plugin or key
                if plugin_name is None:
                    raise SuiteError(source, f"{path}.plugin", f"missing; installed {kind}s: "
                                     f"{', '.join(plugins.names(kind))}")
                try:
                    reg = plugins.lookup(kind, plugin_name)
                except plugins.BrokenComponent as exc:
                    if section not in CELLS:  # the whole grid needs it
                        raise SuiteError(source, f"{path}.plugin", str(exc)) from None
                    self.broken[(section, key or "")] = f"{path}.plugin: {exc}"
                    if section == "attacks":
                        attacks[key] = spec
                    continue
                except plugins.PluginError as exc:
                    raise SuiteError(source, f"{path}.plugin", str(exc)) from None
                if section == "attacks":
                    for name, budget, budget_at in self._budgets(key, spec, reg):
                        if name in attacks or (name != key and name in self.spec.attacks):
                            raise SuiteError(source, budget_at, f"makes attack {name!r}, which the suite already "
                                             "has; allowed: budgets that name distinct attacks")
                        attacks[name] = spec
                        self.threats[name], options = self._attack_threat(key, spec, reg, budget, budget_at)
                        self.components[(section, name)] = (reg, options)
                    continue
                options = _validate_options(source, f"{path}.options", reg, spec.options)
                self.components[(section, key or "")] = (reg, options)
        self.spec = self.spec.model_copy(update={"attacks": attacks})
        self._check_references()
        if self.spec.sweep:
            self.points()  # every point validates now, before anything runs

    def component(self, section: str, key: str = "") -> tuple[plugins.Registration, Any]:
        return self.components[(section, key)]

    def threat(self, attack: str) -> dict[str, Any]:
        """The threat model ``attack`` runs under, as plain data: norm, eps, quantize, targeted and the data's
        grid (levels)."""
        return dict(self.threats[attack])

    def _budgets(self, key: str, spec: ComponentSpec,
                 reg: plugins.Registration) -> list[tuple[str, Any, Optional[str]]]:
        """(attack name, eps, the field that set it) per budget of the attack ``key``: one entry named ``key``
        for a single budget (or none set: ``UNSET``), one per element, named after it, for an eps list."""
        budget, budget_at = self._chosen(key, spec, "eps")
        allowed = "allowed: a number >= 0, null (unbounded) or a non-empty list of numbers >= 0"
        if not isinstance(budget, list):
            if budget is not UNSET and budget is not None and not _is_budget(budget):
                raise SuiteError(self.source, budget_at, f"found {_short(budget)}; {allowed}")
            return [(key, budget, budget_at)]
        if not budget:
            raise SuiteError(self.source, budget_at, f"an empty list; {allowed}")
        norm = self._chosen(key, spec, "norm")[0]
        norm = reg.cls.norm if norm in (UNSET, None) else norm
        out = []
        for i, eps in enumerate(budget):
            if not _is_budget(eps):
                raise SuiteError(self.source, f"{budget_at}.{i}", f"found {_short(eps)}; {allowed}")
            out.append((budget_name(key, norm, eps), eps, f"{budget_at}.{i}"))
        return out

    def _chosen(self, key: str, spec: ComponentSpec, field: str) -> tuple[Any, Optional[str]]:
        """A threat model field the suite sets for attack ``key`` (null included), and where: its own block
        first, then the top level's; (UNSET, None) where neither sets it."""
        for threat, at in ((spec.threat_model, f"attacks.{key}.threat_model"),
                           (self.spec.threat_model, "threat_model")):
            if threat is not None and field in threat.model_fields_set:
                return getattr(threat, field), f"{at}.{field}"
        return UNSET, None

    def _attack_threat(self, key: str, spec: ComponentSpec, reg: plugins.Registration, budget: Any,
                       budget_at: Optional[str]) -> tuple[dict[str, Any], Any]:
        """The resolved threat model of one attack (one budget of it) and its options, the budget filled into an
        ``eps`` option the suite leaves unset; each disagreement is a SuiteError naming the field."""
        path, plugin = f"attacks.{key}", f"attack {key!r} (plugin {reg.name!r})"
        norm, norm_at = self._chosen(key, spec, "norm")
        if norm in (UNSET, None):
            norm = reg.cls.norm if reg.cls.norm in THREAT_NORMS else "linf"
        elif reg.cls.norm and norm != reg.cls.norm:
            raise SuiteError(self.source, norm_at, f"found {norm!r}, but {plugin} attacks under {reg.cls.norm}; "
                             f"allowed: {reg.cls.norm}")
        targeted, targeted_at = self._chosen(key, spec, "targeted")
        targeted = targeted is True
        if targeted and not reg.cls.supports_targeted:
            raise SuiteError(self.source, targeted_at, f"true, but {plugin} does not support targeted attacks; "
                             "allowed: false for this attack")
        quantize = self._chosen(key, spec, "quantize")[0]
        if budget_at is not None and budget is not None:
            if norm == "linf" and budget > 1:
                raise SuiteError(self.source, budget_at, f"found {budget!r} for the linf norm; allowed: a number "
                                 "in [0, 1] ([0, 1] input units)")
            if norm == "l0" and float(budget) != int(budget):
                raise SuiteError(self.source, budget_at, f"found {budget!r} for the l0 norm; allowed: a whole "
                                 "number of input elements")
        options = dict(spec.options)
        has_eps = "eps" in reg.cls.Options.model_fields
        if has_eps and budget_at is not None:
            if "eps" in options:
                own = _validate_options(self.source, f"{path}.options", reg, options).eps
                if budget is None or abs(float(own) - float(budget)) > 1e-12:
                    raise SuiteError(self.source, f"{path}.options.eps", f"found {own!r}, which disagrees with the "
                                     f"threat model's eps {budget!r} ({budget_at}); set eps in threat_model only")
            elif budget is not None:
                options["eps"] = budget  # the plugin crafts with the harness's budget
        validated = _validate_options(self.source, f"{path}.options", reg, options)
        if budget_at is None:  # no threat model sets it: the attack's own budget, if it has one
            budget = getattr(validated, "eps", None) if has_eps else None
        levels = self.component("dataset")[0].cls.levels
        return ({"norm": norm, "eps": None if budget is None else float(budget),
                 "quantize": quantize is not False, "targeted": targeted,
                 "levels": levels}, validated)

    def usable(self, section: str) -> list[str]:
        """The entries of a cells section whose plugin loaded (a broken one's cells are failed by the run)."""
        return [k for k in getattr(self.spec, section) if (section, k) not in self.broken]

    def _check_references(self) -> None:
        for section in SECTIONS:
            value = getattr(self.spec, section)
            for key, spec in (value.items() if isinstance(value, dict) else [("", value)]):
                path = f"{section}.{key}" if key else section
                if spec.checkpoint is not None and section not in ("victims", "mask_classifier"):
                    raise SuiteError(self.source, f"{path}.checkpoint", "allowed only for victims and mask_classifier")
                for field in ("mask_train_limit", "n_mask_eval"):
                    if getattr(spec, field) is not None and section != "interpreters":
                        raise SuiteError(self.source, f"{path}.{field}", "allowed only for interpreters")
                if spec.match_accuracy is not None:
                    self._check_match(path, key, spec.match_accuracy, section)
                if spec.threat_model is not None and section != "attacks":
                    raise SuiteError(self.source, f"{path}.threat_model", "allowed only for attacks (and at the "
                                     "top level)")
        fit_on = self.spec.evaluation.unseen_fit
        if fit_on is not None:
            oblivious = [k for k in self.spec.attacks if ("attacks", k) not in self.broken
                         and self.component("attacks", k)[0].cls.knowledge != "adaptive"]
            if fit_on not in oblivious:
                raise SuiteError(self.source, "evaluation.unseen_fit", f"{fit_on!r} is not an oblivious attack of "
                                 f"this suite; allowed: {', '.join(oblivious) or 'none (no oblivious attack)'}")
        detectors = [self.component("detectors", k)[0].cls for k in self.spec.detectors
                     if ("detectors", k) not in self.broken]
        if any(d.needs_interpreter for d in detectors) and not self.spec.interpreters:
            raise SuiteError(self.source, "interpreters", "empty, but a detector needs an interpreter; "
                             f"installed interpreters: {', '.join(plugins.names('interpreter'))}")

    def _check_match(self, path: str, key: str, other: str, section: str) -> None:
        at = f"{path}.match_accuracy"
        if section != "interpreters":
            raise SuiteError(self.source, at, "allowed only for interpreters")
        candidates = [k for k, s in self.spec.interpreters.items() if k != key and s.match_accuracy is None]
        if other not in candidates:
            raise SuiteError(self.source, at, f"{other!r} is not another interpreter of this suite; allowed: "
                             f"{', '.join(candidates) or 'none'} (one without match_accuracy itself)")
        if not self.spec.evaluation.n_calibration:
            raise SuiteError(self.source, at, "needs calibration images, where the accuracies are matched; "
                             "allowed with evaluation.n_calibration of 1 or more")
        if self.spec.mask_classifier.checkpoint is not None:
            raise SuiteError(self.source, at, "f2 is loaded from mask_classifier.checkpoint, not trained; allowed "
                             "only when f2 is trained")

    def with_overrides(self, overrides: list[str], origin: str = "--set") -> "Suite":
        raw = copy.deepcopy(self.raw)
        for item in overrides:
            apply_override(raw, item, f"{self.source} ({origin} {_clip(item)})")
        return Suite(self.source, raw)

    def sweep_grids(self) -> list[dict[str, list[Any]]]:
        sweep = self.spec.sweep
        return [grid for grid in (sweep if isinstance(sweep, list) else [sweep]) if grid]

    def sweep_fields(self) -> list[str]:
        """Every field any grid of the sweep varies, in order of first mention."""
        return list(dict.fromkeys(field for grid in self.sweep_grids() for field in grid))

    def value_at(self, path: str) -> Any:
        """The value this suite gives ``path`` (a plugin option left out reads as the plugin's default)."""
        parts = _expand_shorthand([p for p in path.split(".") if p])
        node: Any = self.raw
        for part in parts:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                break
        else:
            return node
        if "options" in parts and parts.index("options") == len(parts) - 2:
            section = parts[0]
            key = parts[1] if parts.index("options") == 2 else ""
            if (section, key) in self.components:
                return getattr(self.component(section, key)[1], parts[-1], None)
        return None

    def points(self) -> list[tuple[dict[str, Any], "Suite"]]:
        """The sweep's points: (swept values, suite with them applied); one point with no values without a sweep.

        Each point's values name every swept field: a field its own grid does not vary shows the suite's value.
        """
        grids = self.sweep_grids()
        if not grids:
            return [({}, self)]
        fields = self.sweep_fields()
        result: list[tuple[dict[str, Any], Suite]] = []
        seen: set[str] = set()
        for grid in grids:
            keys = list(grid)
            for values in itertools.product(*(grid[k] for k in keys)):
                raw = copy.deepcopy(self.raw)
                raw.pop("sweep", None)
                for key, value in zip(keys, values):
                    set_path(raw, key, value, f"{self.source} (sweep)")
                chosen = dict(zip(keys, values))
                try:
                    suite = Suite(self.source, raw)
                except SuiteError as exc:
                    raise SuiteError(self.source, exc.path, f"{exc.message}, at sweep point {chosen}") from None
                point = {f: chosen[f] if f in chosen else suite.value_at(f) for f in fields}
                identity = json.dumps(point, sort_keys=True, default=str)
                if identity not in seen:
                    seen.add(identity)
                    result.append((point, suite))
        return result


UNSET = object()  # no threat model block sets eps: the attack's own eps option, if any, is the budget
THREAT_NORMS = ("linf", "l2", "l0")


def _is_budget(value: Any) -> bool:
    """A finite number >= 0 (not a bool: YAML's yes/no would read as 1/0)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


def budget_name(attack: str, norm: str, eps: float) -> str:
    """The name of one budget of an attack with an eps list: ``pgd@2/255`` for linf and l2 budgets on the
    8-bit grid (whole multiples of 1/255, to 1e-9), ``pgd@eps=0.5`` otherwise."""
    steps = round(eps * 255)
    if norm in ("linf", "l2") and abs(eps - steps / 255) <= 1e-9:
        return f"{attack}@{steps}/255"
    return f"{attack}@eps={int(eps) if float(eps).is_integer() else float(eps)!r}"


def load_suite(path: str | Path, overrides: Optional[list[str]] = None) -> Suite:
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SUITE_BYTES + 1)
    except FileNotFoundError:
        raise SuiteError(source, "", "no such suite file") from None
    except IsADirectoryError:
        raise SuiteError(source, "", "a folder, not a suite file") from None
    except OSError as exc:
        raise SuiteError(source, "", f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_SUITE_BYTES:
        raise SuiteError(source, "", f"larger than {MAX_SUITE_BYTES // 1024} KiB; allowed: a suite up to "
                         f"{MAX_SUITE_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(source, "", f"not UTF-8 text (byte {exc.start}); save the suite as UTF-8") from None
    raw = safe_load_limited(text, source)
    if not isinstance(raw, dict):
        raise SuiteError(source, "", f"a suite must be a mapping of fields, found {type(raw).__name__}")
    created: list[tuple[str, str]] = []  # (--set item, the field path it wrote or the entry it created)
    for item in overrides or []:
        created.append((item, _new_entry(raw, item)))
        apply_override(raw, item, f"{source} (--set {_clip(item)})")
    try:
        return Suite(source, raw)
    except SuiteError as exc:
        culprit = _override_for(exc.path, overrides or [], created)
        if culprit is None:
            raise
        raise SuiteError(source, exc.path, f"{exc.message} (from --set {_clip(culprit)})") from None


def _clip(item: str, limit: int = 80) -> str:
    """A --set item as messages quote it: long values cut, so an error stays one readable line."""
    return item if len(item) <= limit else item[: limit - 3] + "..."


def safe_load_limited(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` within the size limits: nesting (checked on the event stream, before anything
    recursive runs), and the node count and depth with aliases expanded (counted on the composed graph, where an
    alias is a shared node, so a billion-laughs file is measured without being expanded). One SuiteError line."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark else "?"
                    raise SuiteError(source, "", f"nested deeper than {MAX_DEPTH} levels (line {line}); allowed: "
                                     f"at most {MAX_DEPTH}")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node, source)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(source, "", f"malformed YAML: {where}{problem}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a timestamp out of range
        raise SuiteError(source, "", f"malformed YAML: {type(exc).__name__}: {' '.join(str(exc).split())[:100]}") \
            from None


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Count nodes and depth of ``root`` as if every alias were expanded, in time linear in the composed graph."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return []

    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        ident = id(node)
        if done:
            kids = children(node)
            size[ident] = 1 + sum(size[id(k)] for k in kids)
            depth[ident] = (1 if kids or not isinstance(node, yaml.ScalarNode) else 0) + max(
                (depth[id(k)] for k in kids), default=0)
            active.discard(ident)
            if size[ident] > MAX_NODES:
                raise SuiteError(source, "", f"expands to more than {MAX_NODES} YAML nodes (aliases expanded); "
                                 f"allowed: at most {MAX_NODES}")
            if depth[ident] > MAX_DEPTH:
                raise SuiteError(source, "", f"nested deeper than {MAX_DEPTH} levels once aliases are expanded; "
                                 f"allowed: at most {MAX_DEPTH}")
            continue
        if ident in size:
            continue
        if ident in active:
            raise SuiteError(source, "", "a YAML alias refers to a node that contains it (recursive); not allowed")
        active.add(ident)
        stack.append((node, True))
        stack.extend((k, False) for k in children(node) if id(k) not in size)


def _new_entry(raw: dict[str, Any], item: str) -> str:
    """The field path an override will write, cut after the first part the suite does not have yet: an error
    anywhere in an entry the override created (``attacks.fgsmx``) is that override's fault."""
    parts = _expand_shorthand([p for p in item.partition("=")[0].strip().split(".") if p])
    node: Any = raw
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return ".".join(parts[: i + 1])
    return ".".join(parts)


def _override_for(path: str, overrides: list[str], created: Optional[list[tuple[str, str]]] = None) -> Optional[str]:
    """The --set item that wrote ``path`` (or a field above or below it, or created the entry that holds it), so
    an error points at it, not the file."""
    for item in reversed(overrides):
        target = ".".join(_expand_shorthand([p for p in item.partition("=")[0].strip().split(".") if p]))
        if path and target and (path == target or path.startswith(target + ".") or target.startswith(path + ".")):
            return item
    for item, new in reversed(created or []):
        if path and new and (path == new or path.startswith(new + ".")):
            return item
    return None


def apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    if "=" not in item:
        raise SuiteError(source, "", "an override must read path.to.field=value")
    path, _, text = item.partition("=")
    try:
        value = safe_load_limited(text, source) if text.strip() else ""
    except SuiteError as exc:
        if not exc.message.startswith("malformed YAML"):
            raise  # a size limit: not something to take as a plain string
        value = text
    set_path(raw, path.strip(), value, source)


def set_path(raw: dict[str, Any], path: str, value: Any, source: str) -> None:
    parts = _expand_shorthand([p for p in path.split(".") if p])
    if not parts:
        raise SuiteError(source, path, "empty field path")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_index(node, part, source, ".".join(parts[: i + 1]))]
            continue
        if not isinstance(node, dict):
            raise SuiteError(source, ".".join(parts[: i + 1]), f"cannot set a field inside a {type(node).__name__}")
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        index = _index(node, last, source, path)
        node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SuiteError(source, path, f"cannot set a field inside a {type(node).__name__}")


def _expand_shorthand(parts: list[str]) -> list[str]:
    """``attacks.fgsm.eps`` means ``attacks.fgsm.options.eps`` (and ``dataset.path``, ``dataset.options.path``)."""
    spec_fields = set(ComponentSpec.model_fields)
    if parts and parts[0] in SECTIONS:
        head = 1 if parts[0] in ("dataset", "executor", "mask_classifier") else 2
        if len(parts) > head and parts[head] not in spec_fields:
            return parts[:head] + ["options"] + parts[head:]
    return parts


def _index(node: list, part: str, source: str, path: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise SuiteError(source, path, f"found index {part!r}, allowed 0..{len(node) - 1}")
    return int(part)


def _location(loc: tuple) -> str:
    # pydantic names the union member it tried ("dict[str,list[any]]"): not a field a user can write
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and "[" in p))


def _describe(error: dict[str, Any], model: type[BaseModel], prefix: str = "") -> tuple[str, str]:
    """(field path, message) for one pydantic error, with what was found and what is allowed."""
    loc = error["loc"]
    path = ".".join(x for x in (prefix, _location(loc)) if x)
    found = error.get("input")
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return path, f"unknown key; allowed: {', '.join(allowed) or 'none'}{hint}"
    if error["type"] == "missing":
        return path, "required field is missing"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
        # a validator that names its own field path ("sweep.0: ..."; a whole-suite check's "seed: ...")
        named = message.split(": ", 1)[0] if ": " in message else ""
        if named and (named.count(".") >= 1 or not loc) and " " not in named and not prefix:
            inner_path, message = message.split(": ", 1)
            return inner_path, message
    return path, f"found {_short(found)}; {message[0].lower() + message[1:]}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at ``loc``, following dict values and list items."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            continue  # a dict key or list index: stay on the value type below
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _parse(source: str, raw: dict[str, Any]) -> SuiteSpec:
    try:
        return SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        path, message = _describe(exc.errors()[0], SuiteSpec)
        raise SuiteError(source, path, message) from None


def _validate_options(source: str, path: str, reg: plugins.Registration, options: dict[str, Any]) -> Any:
    model = reg.cls.Options
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        field_path, message = _describe(exc.errors()[0], model, prefix=path)
        raise SuiteError(source, field_path, f"{message} (plugin {reg.kind} {reg.name!r})") from None
