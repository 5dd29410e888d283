"""A suite as a plan: a graph of pure, picklable stage nodes keyed by their cache keys.

A node is plain data: which stage function runs it (``stage``), the plugin that does the work and its
options, the keys of the nodes it reads, the seed salt and everything else its function needs, and rough
resource hints for an executor. Its ``key`` is the cache key its artifact is stored under, so a node whose key
is already in the cache is done, and two nodes with one key (a stage shared by two sweep points) are one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional


@dataclass(frozen=True)
class Settings:
    """Run-wide settings every node carries, so a worker on another machine needs nothing else."""

    cache_root: str
    device: str = "auto"  # resolved on the worker: a cluster node uses its own GPU
    batch_size: int = 128
    seed: int = 0
    threads: Optional[int] = None  # torch threads on the worker; None leaves torch's default


@dataclass(frozen=True)
class Node:
    key: str
    stage: str  # the stage function that computes it (advbench.stages.STAGES)
    label: str  # what a person reads in progress bars and run.log
    settings: Settings
    inputs: tuple[str, ...] = ()  # keys of the nodes whose artifacts it reads
    plugin: Optional[dict[str, str]] = None  # kind, name, distribution, version, revision
    options: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # stage-specific plain data: salt, split, subset ...
    resources: dict[str, Any] = field(default_factory=dict)  # cpus, gpus, memory_mb: hints for an executor
    stored: bool = True  # False: computed on demand from its inputs, never written (a dataset load)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other.key == self.key


# ---------------------------------------------------------------------- building the plan

CHUNK = 256  # images per cached attack chunk: the unit a killed run resumes from and a worker runs
# The batch size an attack set's key holds when nothing in it depends on the batch (``Component.batch_dependent``):
# its images are the same in any batch, so the key names this fixed reference instead of the run's batch size. It
# is the default batch size, the one every key held before, so caches made before stay valid.
REFERENCE_BATCH = 128


@dataclass
class Point:
    """One sweep point's view of the plan: which node holds what, for the driver to read results from."""

    values: dict[str, Any]
    suite: Any
    seed: Optional[int] = None  # the training seed of a suite with ``seeds``; None without
    victims: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> victim, accuracy keys
    interpreters: list[dict[str, Any]] = field(default_factory=list)  # per (target, interpreter)
    attacks: list[dict[str, Any]] = field(default_factory=list)  # per (attack, source)
    detections: list[dict[str, Any]] = field(default_factory=list)  # per (pair, detector, interpreter, attack)
    galleries: list[str] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)  # per (attack, source, target != source)
    # adaptive cells that cannot run (no differentiable score, a transfer pair ...): reported, never skipped silently
    unavailable: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    nodes: dict[str, Node]  # key -> node, in a topological order (inputs first)
    points: list[Point]
    data: Node
    subset: dict[str, Any]  # the evaluation subset: seed, n_test, n_eval, n_fit, n_calibration, n_validation
    subset_key: str
    rank: dict[str, int] = field(default_factory=dict)  # key -> the first sweep point that needs it
    failed: list[dict[str, Any]] = field(default_factory=list)  # cells of broken plugins, failed from the start



def identity(reg: Any) -> dict[str, str]:
    """A plugin's part of a cache key: name, distribution version and revision (today's formula, unchanged)."""
    return {"name": reg.name, "distribution": reg.distribution, "version": reg.version, "revision": reg.cls.revision}


def _with_kind(reg: Any) -> dict[str, str]:
    return {**identity(reg), "kind": reg.kind}


def _options(options: Any) -> dict[str, Any]:
    """The options as they enter a cache key: every field, except a ``key_neutral`` one left at its default (an
    option added to a plugin later, whose default is the old behaviour, so that adding it recomputes nothing)."""
    dumped = options.model_dump(mode="json")
    for name, spec in type(options).model_fields.items():
        extra = spec.json_schema_extra if isinstance(spec.json_schema_extra, dict) else {}
        if extra.get("key_neutral") and getattr(options, name) == spec.default:
            dumped.pop(name)
    return dumped


def f2_on_masks(f2: Node, masks_key: str) -> list[str]:
    """The key parents that name f2 reading one interpreter's masks, for the nodes of its labels. A trained f2's
    key already names the masks it was trained on (the keys made before stay valid); a checkpoint f2 has one key
    for every interpreter, so its masks join it: else two interpreters would share one labels node."""
    return [f2.key, masks_key] if f2.stage == "checkpoint" else [f2.key]


def subset_digest(subset: dict[str, Any]) -> str:
    import torch

    from advbench.stages import subset_indices

    eval_idx, fit_idx = subset_indices(subset)
    return tensor_digest(torch.cat([eval_idx, fit_idx]))


def tensor_digest(t: Any) -> str:
    import hashlib

    return hashlib.sha256(t.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def file_digest(path: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def numerics(settings: Settings) -> dict[str, Any]:
    """What changes a computed number without changing any option: the device type, the torch thread count (it
    orders float sums, so trained weights and attack steps differ) and the torch version. Part of every
    computing node's key, so a cache filled under other numerics is not read as this run's."""
    import torch

    from advbench.devices import resolve_device

    return {"device": resolve_device(settings.device, "device").type, "threads": settings.threads,
            "torch": torch.__version__}


def data_node(suite: Any, settings: Settings) -> Node:
    from advbench.cache import make_key

    reg, options = suite.component("dataset")
    key = make_key("dataset", {"options": _options(options)}, [], identity(reg))
    return Node(key, "data", reg.name, settings, plugin=_with_kind(reg), options=_options(options), stored=False)


def build_plan(suite: Any, data: Any, settings: Settings, limit: Optional[int] = None) -> Plan:
    """Every sweep point's nodes in one graph, once per seed of ``seeds``; a node two points share (same key) is
    one node.

    Every seed reads the images ``settings.seed`` (the first of ``seeds``) split, so seeds differ only in what
    they train and draw; the first seed's nodes are those of a run with that one ``seed``.
    """
    builder = _Builder(suite, data, settings, limit)
    for seed in suite.spec.seeds or [None]:
        builder.settings = settings if seed is None else replace(settings, seed=seed)
        for values, point_suite in suite.points():
            builder.point(values, point_suite, seed)
    return Plan(builder.nodes, builder.points, builder.data, builder.subset, builder.subset_key, builder.rank,
                builder.failed)


class _Builder:
    def __init__(self, suite: Any, data: Any, settings: Settings, limit: Optional[int]) -> None:
        self.settings = settings
        self.data = data_node(suite, settings)
        self.shape = tuple(data.input_shape)
        self.num_classes = data.num_classes
        self.classes = list(data.classes)
        self.n_train = len(data.train_x)
        ev = suite.spec.evaluation
        n_eval, n_fit, n_cal = ev.n_eval, ev.n_fit, ev.n_calibration
        if limit is not None:
            n_eval, n_fit, n_cal = min(n_eval, limit), min(n_fit, limit), min(n_cal, limit)
        n_test = len(data.test_x)
        n_eval = min(n_eval, n_test)
        n_fit = min(n_fit, n_test - n_eval)
        n_cal = min(n_cal, n_test - n_eval - n_fit)
        # validation images only where there is a point to choose: without a sweep, no node reads them
        n_val = min(ev.n_validation, n_test - n_eval - n_fit - n_cal) if suite.spec.sweep else 0
        if limit is not None:
            n_val = min(n_val, limit)
        self.subset = {"seed": settings.seed, "n_test": n_test, "n_eval": n_eval, "n_fit": n_fit,
                       "n_calibration": n_cal, "n_validation": n_val}
        self.subset_key = subset_digest(self.subset)  # evaluation and fitting images: keys as before
        from advbench.stages import calibration_indices, validation_indices

        self.calibration_key = tensor_digest(calibration_indices(self.subset))
        self.validation_key = tensor_digest(validation_indices(self.subset)) if n_val else None
        self.numerics = numerics(settings)
        self.nodes: dict[str, Node] = {}
        self.points: list[Point] = []
        self.rank: dict[str, int] = {}
        self.failed: list[dict[str, Any]] = []  # components of broken plugins: failed before anything runs

    def add(self, node: Node) -> Node:
        self.rank.setdefault(node.key, len(self.points))
        return self.nodes.setdefault(node.key, node)

    def images(self, which: str, **extra: Any) -> dict[str, Any]:
        return {"set": which, "data": self.data, "subset": self.subset, **extra}

    def key_batch(self, *components: tuple[Any, Any]) -> int:
        """The batch size an attack set's key holds: the run's own where one of ``components`` ((registration,
        options) pairs) depends on it, else ``REFERENCE_BATCH``: results do not depend on it there, and caches
        made before (at the default 128) stay valid."""
        dependent = any(_depends_on_batch(reg, options) for reg, options in components)
        return self.settings.batch_size if dependent else REFERENCE_BATCH

    def fit_batch(self, reg: Any, options: Any) -> dict[str, int]:
        """The batch size a fitted state's key (an interpreter's, a detector's) holds: none where the component
        does not depend on it or the run uses ``REFERENCE_BATCH`` (those keys never held it, and keep their form),
        the run's own otherwise."""
        if self.settings.batch_size != REFERENCE_BATCH and _depends_on_batch(reg, options):
            return {"batch_size": self.settings.batch_size}
        return {}

    # ------------------------------------------------------------------ shared forwards
    def set_key(self, images: dict[str, Any]) -> list[Any]:
        """What identifies an image set in a forwards node's key."""
        which = images["set"]
        if which == "adversarial":
            return [which, images["key"], images["start"], images["stop"], images.get("of", "eval+fit")]
        if which == "test-order":
            from advbench.stages import test_order

            return [which, tensor_digest(test_order(self.subset)[:images["n"]])]
        digest = {"calibration": self.calibration_key, "validation": self.validation_key}.get(which, self.subset_key)
        return [which, digest]

    def forwards(self, images: dict[str, Any], victim: Optional[Node] = None,
                 interp: Optional[dict[str, Any]] = None, chunks: tuple[str, ...] = ()) -> str:
        """The node holding one model's logits on one image set, computed once for all its readers: the victim's
        (f1), or, given an interpretation entry, f2's on the interpreter's masks (g then f2)."""
        from advbench.cache import make_key

        config = {"set": self.set_key(images), "numerics": self.numerics}
        adversarial = (images["key"],) if images["set"] == "adversarial" else ()
        if interp is None:
            assert victim is not None
            key = make_key("forwards", {**config, "model": "f1"}, [victim.key])
            label = f"f1 logits of {victim.label.removeprefix('victims.')} on {images['set']}"
            params = {"victim": victim, "images": images, "num_classes": self.num_classes, "progress": label}
            inputs = _stored(victim) + adversarial
        else:
            spec, f2 = interp["interp"], interp["f2"]
            key = make_key("forwards", {**config, "model": "f2"}, [f2.key, spec["masks_key"]])
            label = f"f2 logits of {spec['name']}/{spec['target']} masks on {images['set']}"
            params = {"interp": spec, "f2": f2, "images": images, "num_classes": self.num_classes, "progress": label}
            inputs = interp["reads"] + adversarial
        if images["set"] == "adversarial":
            label += f" {images['key'][:8]}"
        if chunks:  # the adversarial images read from the attack's chunks, before they are merged
            inputs = _stored(victim) + chunks
            params["chunks"] = list(chunks)
        self.add(Node(key, "forwards", label, self.settings, inputs=inputs, params=params))
        return key

    def add_scores(self, key: str, label: str, inputs: tuple[str, ...], params: dict[str, Any],
                   common: dict[str, Any], shared: Optional[dict[str, Any]]) -> None:
        """A scores node; ``shared`` (for a detector that scores from logits: its victim node and interpretation
        entry) routes each part through the image set's forwards nodes, which it then reads as inputs too."""
        if shared is not None:
            forwards = {}
            for part in params["parts"]:
                images = params["images"][part]
                forwards[part] = {"f1": self.forwards(images, victim=shared["victim"]),
                                  "f2": self.forwards(images, interp=shared["interp"]) if shared["interp"] else None}
            inputs = inputs + tuple(k for f in forwards.values() for k in f.values() if k)
            params = {**params, "forwards": forwards}
        self.add(Node(key, "scores", label, self.settings, inputs=tuple(dict.fromkeys(inputs)), params=params,
                      **common))

    # ------------------------------------------------------------------ classifiers
    def classifier(self, suite: Any, section: str, name: str, inputs_key: str, checkpoint: Optional[str], label: str,
                   salt: tuple, masks: Optional[str] = None, limit: Optional[int] = None,
                   match: Optional[dict[str, Any]] = None) -> Node:
        from pathlib import Path

        from advbench.cache import make_key
        from advbench.errors import AdvbenchError

        reg, options = suite.component(section, name)
        field_path = f"{section}.{name}" if name else section
        params = {"section": section, "name": name, "salt": list(salt), "input_shape": list(self.shape),
                  "num_classes": self.num_classes, "data": self.data, "masks": masks, "limit": limit}
        if checkpoint:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise AdvbenchError(f"{suite.source}: {field_path}.checkpoint: no such file {str(path)!r}")
            key = make_key("checkpoint", {"sha256": file_digest(path)}, [], identity(reg))
            return self.add(Node(key, "checkpoint", label, self.settings, plugin=_with_kind(reg),
                                 options=_options(options), stored=False,
                                 params={**params, "path": str(path), "field": f"{field_path}.checkpoint",
                                         "source": suite.source}))
        # the salt seeds the training, so it is part of the key: two victims with one recipe are two models
        config = {"options": _options(options), "seed": self.settings.seed, "input_shape": list(self.shape),
                  "num_classes": self.num_classes, "salt": list(salt), "numerics": self.numerics}
        inputs = (masks,) if masks else ()
        if match is not None:  # trained until it reads the calibration images as well as another f2 does
            config["match"] = {"subset": self.calibration_key, "f2": match["f2"].key}
            params["match"] = {"interp": match["interp"], "f2": match["f2"], "name": match["interpreter"],
                               "own": match["own"], "images": self.images("calibration")}
            inputs += match["reads"] + match["own_reads"]
        key = make_key(section, config, [inputs_key], identity(reg))
        stage = "victim" if section == "victims" else "mask-classifier"
        return self.add(Node(key, stage, label, self.settings, inputs=tuple(dict.fromkeys(inputs)),
                             plugin=_with_kind(reg), options=_options(options), params=params,
                             resources={"cpus": 1, "gpus": 0, "memory_mb": 4096}))

    def victim(self, suite: Any, point: Point, name: str) -> Node:
        from advbench.cache import make_key

        node = self.classifier(suite, "victims", name, self.data.key, suite.spec.victims[name].checkpoint,
                               f"victims.{name}", ("victim", name))
        accuracy = self.add(Node(make_key("accuracy", {"numerics": self.numerics}, [node.key, self.data.key]), "accuracy",
                                 f"clean accuracy {name}", self.settings, inputs=_stored(node),
                                 params={"victim": node, "data": self.data, "name": name}))
        point.victims.setdefault(name, {"victim": node.key, "accuracy": accuracy.key,
                                        "plugin": suite.component("victims", name)[0].name})
        return node

    # ------------------------------------------------------------------ interpretation
    def interpretation(self, suite: Any, point: Point, target: str, victim: Node, iname: str,
                       matched: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        from advbench.cache import make_key

        spec = suite.spec
        ireg, ioptions = suite.component("interpreters", iname)
        limit = spec.interpreters[iname].mask_train_limit or spec.evaluation.mask_train_limit
        limit = limit if limit is not None and limit < self.n_train else None
        options = _options(ioptions)
        fit_options = {k: v for k, v in options.items() if k not in ireg.cls.explain_options}
        iconfig = {"options": fit_options, "seed": self.settings.seed, "salt": ["interpreter", target, iname],
                   "numerics": self.numerics, **self.fit_batch(ireg, ioptions)}
        raw_limit = spec.interpreters[iname].mask_train_limit or spec.evaluation.mask_train_limit
        if raw_limit is not None:
            iconfig["train_limit"] = raw_limit
        ikey = make_key("interpreter", iconfig, [victim.key], identity(ireg))
        mkey = make_key("masks", {"split": "train", "limit": raw_limit, "options": options,
                                  "numerics": self.numerics}, [ikey])
        interp = {"plugin": _with_kind(ireg), "options": options, "target": target, "name": iname, "key": ikey,
                  "masks_key": mkey, "victim": victim, "data": self.data, "limit": limit,
                  "input_shape": list(self.shape), "num_classes": self.num_classes}
        inputs = _stored(victim)
        if _stateful(ireg, ioptions, self.shape, self.num_classes):
            self.add(Node(ikey, "interpreter", f"{iname} on {target}", self.settings, inputs=inputs,
                          plugin=_with_kind(ireg), options=options, params={"interp": interp},
                          resources={"cpus": 1, "gpus": 0, "memory_mb": 4096}))
            inputs = (ikey,) + inputs
        else:
            interp["fitted"] = False
        self.add(Node(mkey, "masks", f"{iname} on {target}: training masks", self.settings, inputs=inputs,
                      plugin=_with_kind(ireg), options=options, params={"interp": interp}))
        creg = suite.component("mask_classifier")[0]
        match = None
        if matched is not None:
            match = {**matched, "own": interp, "own_reads": inputs}
        f2 = self.classifier(suite, "mask_classifier", "", mkey, spec.mask_classifier.checkpoint,
                             f"{creg.name} on {iname}/{target} masks", ("mask-classifier", target, iname),
                             masks=mkey, limit=limit, match=match)
        reads = inputs + _stored(f2)
        shared = {"interp": interp, "f2": f2, "reads": reads}
        bkey = make_key("mask-labels", {"set": "eval", "subset": self.subset_key, "numerics": self.numerics},
                        f2_on_masks(f2, mkey))
        forwards = self.forwards(self.images("eval"), interp=shared)
        self.add(Node(bkey, "mask-labels", f"{iname} on {target}: evaluation mask labels", self.settings,
                      inputs=(forwards,), params={"forwards": forwards}))
        accuracy_key, n_accuracy = bkey, self.subset["n_eval"]
        n_mask_eval = spec.interpreters[iname].n_mask_eval or spec.evaluation.n_mask_eval
        if n_mask_eval is not None:
            # f2's accuracy on more test images than are attacked: a 300-image estimate is +-5 points
            from advbench.stages import test_order

            idx = test_order(self.subset)[:n_mask_eval]
            n_accuracy = len(idx)
            accuracy_key = make_key("mask-labels", {"set": "accuracy", "subset": tensor_digest(idx),
                                                    "numerics": self.numerics}, f2_on_masks(f2, mkey))
            forwards = self.forwards(self.images("test-order", n=n_mask_eval), interp=shared)
            self.add(Node(accuracy_key, "mask-labels", f"{iname} on {target}: f2 accuracy on {len(idx)} test masks",
                          self.settings, inputs=(forwards,), params={"forwards": forwards}))
        entry = {"target": target, "interpreter": iname, "plugin": ireg.name, "mask_classifier": creg.name,
                 "eval_labels": bkey, "accuracy_labels": accuracy_key, "n_accuracy": n_accuracy,
                 "accuracy_set": "eval" if n_mask_eval is None else "test-order", "n_mask_eval": n_mask_eval,
                 "n_train_masks": limit if limit is not None else self.n_train, "interp": interp, "f2": f2,
                 "reads": reads, "matched_to": matched["interpreter"] if matched else None}
        point.interpreters.append(entry)
        return entry

    # ------------------------------------------------------------------ attacks
    def attack(self, suite: Any, point: Point, aname: str, source: str, victim: Node) -> dict[str, Any]:
        from advbench.cache import make_key
        from advbench.threat import TEMPLATE_REVISION

        areg, aoptions = suite.component("attacks", aname)
        threat = suite.threat(aname)
        # the threat model and the template that enforces it decide the stored images as much as the options do
        # the batch size: the run's own only for an attack whose images depend on it (REFERENCE_BATCH otherwise)
        config = {"options": _options(aoptions), "seed": self.settings.seed,
                  "batch_size": self.key_batch((areg, aoptions)), "salt": ["attack", aname, source],
                  "subset": self.subset_key, "numerics": self.numerics, "threat": threat, "template": TEMPLATE_REVISION}
        base_key = make_key("adversarial", config, [victim.key], identity(areg))
        n = self.subset["n_eval"] + self.subset["n_fit"]
        chunks = []
        for start in range(0, n, CHUNK):
            chunk_key = make_key("adversarial-chunk", {"start": start, "size": CHUNK}, [base_key])
            chunks.append(self.add(Node(
                chunk_key, "adversarial-chunk", f"{aname} on {source} [{start}:]", self.settings,
                inputs=_stored(victim), plugin=_with_kind(areg), options=_options(aoptions),
                params={"attack": aname, "source": source, "victim": victim, "start": start, "size": CHUNK,
                        "images": self.images("eval+fit"), "threat": threat, "num_classes": self.num_classes},
                resources={"cpus": 1, "gpus": 0, "memory_mb": 2048})).key)
        clean = self.forwards(self.images("eval+fit"), victim=victim)  # one pass for every attack on the source
        self.add(Node(base_key, "adversarial", f"{aname} on {source}", self.settings,
                      inputs=tuple(chunks) + _stored(victim) + (clean,),
                      params={"chunks": chunks, "victim": victim, "images": self.images("eval+fit"),
                              "forwards": {"clean": clean}}))
        entry = {"attack": aname, "plugin": areg.name, "norm": threat["norm"], "source": source, "key": base_key,
                 "knowledge": "oblivious", "threat_model": threat, "steps": _steps(aoptions)}
        if self.validation_key is not None:
            entry["validation_key"] = self.validation_attack(suite, aname, source, victim, config)
        point.attacks.append(entry)
        return entry

    def validation_attack(self, suite: Any, aname: str, source: str, victim: Node, config: dict[str, Any]) -> str:
        """The attack on the validation images: its own set, so the evaluation and fitting images' set (and its
        key) stay as they are without a sweep."""
        from advbench.cache import make_key

        areg, aoptions = suite.component("attacks", aname)
        key = make_key("adversarial", {**config, "subset": self.validation_key, "split": "validation"},
                       [victim.key], identity(areg))
        chunks = []
        for start in range(0, self.subset["n_validation"], CHUNK):
            chunk_key = make_key("adversarial-chunk", {"start": start, "size": CHUNK}, [key])
            chunks.append(self.add(Node(
                chunk_key, "adversarial-chunk", f"{aname} on {source}, validation [{start}:]", self.settings,
                inputs=_stored(victim), plugin=_with_kind(areg), options=_options(aoptions),
                params={"attack": aname, "source": source, "victim": victim, "start": start, "size": CHUNK,
                        "images": self.images("validation"), "threat": config["threat"],
                        "num_classes": self.num_classes, "split": "validation"},
                resources={"cpus": 1, "gpus": 0, "memory_mb": 2048})).key)
        clean = self.forwards(self.images("validation"), victim=victim)
        self.add(Node(key, "adversarial", f"{aname} on {source}, validation", self.settings,
                      inputs=tuple(chunks) + _stored(victim) + (clean,),
                      params={"chunks": chunks, "victim": victim, "images": self.images("validation"),
                              "forwards": {"clean": clean}}))
        return key

    # ------------------------------------------------------------------ detection
    def detection(self, suite: Any, point: Point, dname: str, iname: Optional[str], source: str, target: str,
                  victim: Node, interp: Optional[dict[str, Any]], attacks: dict[tuple[str, str], dict[str, Any]]) -> None:
        from advbench.cache import make_key

        dreg, doptions = suite.component("detectors", dname)
        env_key = interp["f2"].key if interp else victim.key
        labels_on = f2_on_masks(interp["f2"], interp["interp"]["masks_key"]) if interp else []
        env = {"victim": victim, "data": self.data, "interp": interp["interp"] if interp else None,
               "f2": interp["f2"] if interp else None}
        env_inputs = interp["reads"] if interp else _stored(victim)
        adversarial_fit = dreg.cls.needs_adversarial_fit
        # what the row is: an interpretation-based detector, a control it must beat, or another method
        control = dreg.cls.control or (iname is not None and suite.component("interpreters", iname)[0].cls.control)
        role = "control" if control else ("interpretation" if iname else "method")
        name = f"{dname}{'/' + iname if iname else ''} on {target}"
        n_eval = self.subset["n_eval"]
        common = dict(plugin=_with_kind(dreg), options=_options(doptions),
                      resources={"cpus": 1, "gpus": 0, "memory_mb": 4096})
        # a detector whose score is a function of f1's and f2's logits reads them from the shared forwards nodes
        shared = {"victim": victim, "interp": interp} if dreg.cls.scores_from_forwards else None
        seen: dict[str, dict[str, Any]] = {}  # attack -> the detection entry of the model fitted on it
        for aname in suite.usable("attacks"):
            if _adaptive(suite, aname):
                continue
            adv = attacks[(aname, source)]
            fit_on = [env_key, self.subset_key] + ([adv["key"]] if adversarial_fit else [])
            fit_key = make_key("scores", {"options": _options(doptions), "seed": self.settings.seed,
                                          "salt": ["detector", dname, iname, target], "numerics": self.numerics,
                                          **self.fit_batch(dreg, doptions)},
                               fit_on, identity(dreg))
            label = f"{name}, {aname} from {source}"
            params = {"detector": dname, "interpreter": iname, "target": target, "env": env, "fit_key": fit_key,
                      "fit_images": self.images("fit"), "eval_fit_images": self.images("eval+fit"),
                      "fit_adversarial": adv["key"] if adversarial_fit else None,
                      "images": {"benign": self.images("eval"), "calibration": self.images("calibration"),
                                 "adversarial": self.images("adversarial", key=adv["key"], start=0, stop=n_eval)}}
            reads = env_inputs + (adv["key"],)
            if adversarial_fit:  # fitted per attack: its benign scores belong to this attack
                key = make_key("scores-for", {}, [fit_key, adv["key"]])
                self.add_scores(key, label, reads, {**params, "parts": ["benign", "adversarial"]}, common, shared)
                benign_key = adversarial_key = key
            else:  # fitted on benign data alone: one benign scoring serves every attack
                benign_key = make_key("scores-benign", {}, [fit_key])
                self.add_scores(benign_key, f"{name}, benign", env_inputs, {**params, "parts": ["benign"]}, common,
                                shared)
                adversarial_key = make_key("scores-adversarial", {}, [fit_key, adv["key"]])
                self.add_scores(adversarial_key, label, reads, {**params, "parts": ["adversarial"]}, common, shared)
            # held-out benign images, scored by the same fitted model: its thresholds at fixed FPRs come from here
            calibration_key = None
            if self.subset["n_calibration"]:
                calibration_key = make_key("scores-calibration", {"subset": self.calibration_key}, [fit_key])
                self.add_scores(calibration_key, f"{name}, calibration" + (f" ({aname})" if adversarial_fit else ""),
                                reads if adversarial_fit else env_inputs, {**params, "parts": ["calibration"]},
                                common, shared)
            validation = self.validation_scores(name, aname, params, fit_key, adv, adversarial_fit,
                                                reads if adversarial_fit else env_inputs, common, shared)
            transfer_key = None
            if source != target:  # does the input crafted on the source fool the target too? (its own labels)
                transfer_key = make_key("transfer", {"subset": self.subset_key, "numerics": self.numerics},
                                        [victim.key, adv["key"]])
                clean = self.forwards(self.images("eval"), victim=victim)
                crafted = self.forwards(self.images("adversarial", key=adv["key"], start=0, stop=n_eval), victim=victim)
                self.add(Node(transfer_key, "transfer", f"{aname} from {source} against {target}", self.settings,
                              inputs=_stored(victim) + (adv["key"], clean, crafted),
                              params={"victim": victim, "forwards": {"clean": clean, "adversarial": crafted}}))
                if not any(t["key"] == transfer_key for t in point.transfers):
                    point.transfers.append({"attack": aname, "source": source, "target": target,
                                            "key": transfer_key})
            labels_key = benign_labels = None
            if interp is not None:
                labels_key = make_key("mask-labels", {"set": "adversarial", "numerics": self.numerics},
                                      [*labels_on, adv["key"]])
                forwards = self.forwards(self.images("adversarial", key=adv["key"], start=0, stop=n_eval),
                                         interp=interp)
                self.add(Node(labels_key, "mask-labels", f"f2 labels {iname}/{target} on {aname} from {source}",
                              self.settings, inputs=(forwards,),
                              params={"forwards": forwards}))
                benign_labels = interp["eval_labels"]
            entry = {
                "detector": dname, "interpreter": iname, "attack": aname, "source": source, "target": target,
                "score_definition": getattr(dreg.cls, "score_definition", None) or dreg.cls.description,
                "adversarial_fit": adversarial_fit, "knowledge": "oblivious", "attack_plugin": adv["plugin"],
                "threat_model": adv.get("threat_model"), "steps": adv.get("steps"),
                "gradient": dreg.cls.adaptive_gradient or None, "fit_attack": aname if adversarial_fit else None,
                "protocol": "seen" if adversarial_fit else None, "role": role,
                "benign": benign_key, "adversarial": adversarial_key, "attack_key": adv["key"],
                "calibration": calibration_key, "transfer": transfer_key,
                "labels": labels_key, "benign_labels": benign_labels, "validation": validation}
            point.detections.append(entry)
            if adversarial_fit:
                seen[aname] = {**entry, "params": params, "reads": reads}
        if len(seen) > 1:
            self.unseen(suite, point, name, seen, common, shared)
        for aname in suite.usable("attacks"):
            if _adaptive(suite, aname):
                self.adaptive(suite, point, aname, dname, iname, source, target, victim, interp, attacks,
                              {"env": env, "env_key": env_key, "labels_on": labels_on, "env_inputs": env_inputs,
                               "common": common, "shared": shared})

    def unseen(self, suite: Any, point: Point, name: str, seen: dict[str, dict[str, Any]], common: dict[str, Any],
               shared: Optional[dict[str, Any]]) -> None:
        """The "unseen" protocol of a detector that learns from adversarial examples: the model fitted on one
        attack (``evaluation.unseen_fit``) scores every other attack's inputs, so each row says how it does on
        an attack it never saw, and the worst case over attacks reads this one model's scores throughout."""
        from advbench.cache import make_key

        fit_attack = suite.spec.evaluation.unseen_fit or next(iter(seen))
        if fit_attack not in seen:
            return
        fitted = seen[fit_attack]
        n_eval = self.subset["n_eval"]
        for aname, other in seen.items():
            if aname == fit_attack:
                continue
            key = make_key("scores-adversarial", {}, [fitted["params"]["fit_key"], other["attack_key"]])
            images = {**fitted["params"]["images"],
                      "adversarial": self.images("adversarial", key=other["attack_key"], start=0, stop=n_eval)}
            self.add_scores(key, f"{name}, {aname} from {other['source']} (fitted on {fit_attack})",
                            fitted["reads"] + (other["attack_key"],),
                            {**fitted["params"], "images": images, "parts": ["adversarial"]}, common, shared)
            point.detections.append({**{k: v for k, v in other.items() if k not in ("params", "reads")},
                                     "fit_attack": fit_attack, "protocol": "unseen", "benign": fitted["benign"],
                                     "adversarial": key, "calibration": fitted["calibration"], "validation": None})

    def validation_scores(self, name: str, aname: str, params: dict[str, Any], fit_key: str, adv: dict[str, Any],
                          per_attack: bool, fitted_from: tuple[str, ...], common: dict[str, Any],
                          shared: Optional[dict[str, Any]] = None) -> Optional[dict[str, str]]:
        """The fitted detector's scores on the validation images and on their attacked versions: what a sweep
        chooses its point on, so the evaluation images are read only to report the chosen point."""
        from advbench.cache import make_key

        if "validation_key" not in adv:
            return None
        images = {**params["images"], "validation": self.images("validation"),
                  "validation_adversarial": self.images("adversarial", key=adv["validation_key"], start=0,
                                                        stop=self.subset["n_validation"], of="validation")}
        benign = make_key("scores-validation", {"subset": self.validation_key}, [fit_key])
        self.add_scores(benign, f"{name}, benign validation images" + (f" ({aname})" if per_attack else ""),
                        fitted_from, {**params, "images": images, "parts": ["validation"]}, common, shared)
        adversarial = make_key("scores-validation-adversarial", {}, [fit_key, adv["validation_key"]])
        self.add_scores(adversarial, f"{name}, {aname} on validation", fitted_from + (adv["validation_key"],),
                        {**params, "images": images, "parts": ["validation_adversarial"]}, common, shared)
        return {"benign": benign, "adversarial": adversarial, "attack_key": adv["validation_key"]}

    # ------------------------------------------------------------------ adaptive attacks
    def adaptive(self, suite: Any, point: Point, aname: str, dname: str, iname: Optional[str], source: str,
                 target: str, victim: Node, interp: Optional[dict[str, Any]],
                 attacks: dict[tuple[str, str], dict[str, Any]], defence: dict[str, Any]) -> None:
        """An attack that knows the detector: crafted against (victim, detector fitted as for its oblivious rows,
        its threshold at ``ADAPTIVE_FPR`` on the calibration images), then scored like any other attack."""
        from advbench.cache import make_key
        from advbench.threat import TEMPLATE_REVISION

        areg, aoptions = suite.component("attacks", aname)
        dreg, doptions = suite.component("detectors", dname)
        threat = suite.threat(aname)
        cell = {"detector": dname, "interpreter": iname, "attack": aname, "attack_plugin": areg.name,
                "knowledge": "adaptive", "source": source, "target": target, "threat_model": threat,
                "steps": _steps(aoptions), "gradient": dreg.cls.adaptive_gradient or None, "fit_attack": None}
        ireg = suite.component("interpreters", iname)[0] if iname else None
        reason, status = None, "unsupported"
        if source != target:
            status = "not-applicable"
            reason = "transfer pair: adaptive attacks run white-box against the target's own detector only"
        elif not dreg.cls.adaptive_gradient:
            reason = f"detector {dname} has no differentiable score (it declares no adaptive_gradient)"
        elif ireg is not None and not getattr(ireg.cls, "differentiable", True):
            reason = f"interpreter {iname} ({ireg.name}) is not differentiable"
        elif not self.subset["n_calibration"]:
            reason = "no calibration images (evaluation.n_calibration is 0): no held-out threshold to attack"
        fit_adv = None
        if reason is None and dreg.cls.needs_adversarial_fit:
            # fitted as its oblivious rows are: on the oblivious attack of the same threat model, else the first
            oblivious = [e for (a, src), e in attacks.items() if src == source]
            same = [e for e in oblivious if e.get("threat_model") and threat and
                    (e["threat_model"].get("norm"), e["threat_model"].get("eps")) == (threat.get("norm"), threat.get("eps"))]
            fit_adv = (same or oblivious or [None])[0]
            if fit_adv is None:
                reason = f"detector {dname} fits on adversarial examples and the suite has no oblivious attack to fit on"
            else:
                cell["fit_attack"] = fit_adv["attack"]
        if reason is not None:
            point.unavailable.append({**cell, "status": status, "reason": reason})
            return
        env_key = defence["env_key"]
        fit_on = [env_key, self.subset_key] + ([fit_adv["key"]] if fit_adv else [])
        fit_key = make_key("scores", {"options": _options(doptions), "seed": self.settings.seed,
                                      "salt": ["detector", dname, iname, target], "numerics": self.numerics,
                                      **self.fit_batch(dreg, doptions)},
                           fit_on, identity(dreg))
        calibration_key = make_key("scores-calibration", {"subset": self.calibration_key}, [fit_key])
        n_eval = self.subset["n_eval"]
        # crafted through the detector's score and the interpreter's masks: the batch counts if any of them needs it
        batch = self.key_batch((areg, aoptions), (dreg, doptions),
                               *([suite.component("interpreters", iname)] if iname else []))
        config = {"options": _options(aoptions), "seed": self.settings.seed, "batch_size": batch,
                  "salt": ["adaptive", aname, dname, iname, target], "subset": self.subset_key,
                  "numerics": self.numerics, "threat": threat, "template": TEMPLATE_REVISION,
                  "fpr": ADAPTIVE_FPR, "gradient": dreg.cls.adaptive_gradient}
        if dreg.cls.attack_revision != "1":  # the first revision leaves the key as it was made before the field
            config["attack_revision"] = dreg.cls.attack_revision
        base_key = make_key("adversarial", config, [victim.key, fit_key, calibration_key], identity(areg))
        reads = defence["env_inputs"] + (calibration_key,) + ((fit_adv["key"],) if fit_adv else ())
        detector = {"plugin": _with_kind(dreg), "options": _options(doptions), "detector": dname,
                    "interpreter": iname, "target": target, "env": defence["env"], "fit_key": fit_key,
                    "fit_images": self.images("fit"), "eval_fit_images": self.images("eval+fit"),
                    "fit_adversarial": fit_adv["key"] if fit_adv else None, "calibration": calibration_key,
                    "fpr": ADAPTIVE_FPR, "gradient": dreg.cls.adaptive_gradient}
        label = f"{aname} against {dname}{'/' + iname if iname else ''} on {target}"
        chunks = []
        for start in range(0, n_eval, CHUNK):
            chunk_key = make_key("adversarial-chunk", {"start": start, "size": CHUNK}, [base_key])
            chunks.append(self.add(Node(
                chunk_key, "adversarial-chunk", f"{label} [{start}:]", self.settings, inputs=reads,
                plugin=_with_kind(areg), options=_options(aoptions),
                params={"attack": aname, "source": target, "victim": victim, "start": start, "size": CHUNK,
                        "images": self.images("eval"), "threat": threat, "num_classes": self.num_classes,
                        "defence": detector},
                resources={"cpus": 1, "gpus": 0, "memory_mb": 4096})).key)
        adv_set = self.images("adversarial", key=base_key, start=0, stop=n_eval)
        # the set covers the evaluation images only, as the detectors read them: the victim's labels before and
        # after are the argmax of its shared logits (those on the attacked images read from the chunks, since
        # the merged set is what this node makes)
        clean = self.forwards(self.images("eval"), victim=victim)
        crafted = self.forwards(adv_set, victim=victim, chunks=tuple(chunks))
        self.add(Node(base_key, "adversarial", label, self.settings,
                      inputs=tuple(chunks) + _stored(victim) + (clean, crafted),
                      params={"chunks": chunks, "victim": victim, "images": self.images("eval"),
                              "forwards": {"clean": clean, "adversarial": crafted}}))
        params = {"detector": dname, "interpreter": iname, "target": target, "env": defence["env"], "fit_key": fit_key,
                  "fit_images": self.images("fit"), "eval_fit_images": self.images("eval+fit"),
                  "fit_adversarial": fit_adv["key"] if fit_adv else None,
                  "images": {"benign": self.images("eval"), "calibration": self.images("calibration"),
                             "adversarial": adv_set}}
        scores_key = make_key("scores-adversarial", {}, [fit_key, base_key])
        shared = defence["shared"]
        self.add_scores(scores_key, f"{dname}{'/' + iname if iname else ''} on {target}, {aname} (adaptive)",
                        reads + (base_key,), {**params, "parts": ["adversarial"]}, defence["common"], shared)
        # benign and calibration scores of the same fitted model: the oblivious rows' nodes (same keys), added
        # here too so a suite whose only attacks are adaptive still computes them
        if fit_adv:
            benign_key = make_key("scores-for", {}, [fit_key, fit_adv["key"]])
            benign_parts, benign_reads = ["benign", "adversarial"], defence["env_inputs"] + (fit_adv["key"],)
        else:
            benign_key = make_key("scores-benign", {}, [fit_key])
            benign_parts, benign_reads = ["benign"], defence["env_inputs"]
        fit_params = {**params, "images": {**params["images"], "adversarial": self.images(
            "adversarial", key=fit_adv["key"], start=0, stop=n_eval) if fit_adv else adv_set}}
        self.add_scores(benign_key, f"{dname}{'/' + iname if iname else ''} on {target}, benign", benign_reads,
                        {**fit_params, "parts": benign_parts}, defence["common"], shared)
        self.add_scores(calibration_key, f"{dname}{'/' + iname if iname else ''} on {target}, calibration",
                        benign_reads, {**fit_params, "parts": ["calibration"]}, defence["common"], shared)
        labels_key = benign_labels = None
        if interp is not None:
            labels_key = make_key("mask-labels", {"set": "adversarial", "numerics": self.numerics},
                                  [*defence["labels_on"], base_key])
            forwards = self.forwards(adv_set, interp=interp)
            self.add(Node(labels_key, "mask-labels", f"f2 labels {iname}/{target} on {aname} against {dname}",
                          self.settings, inputs=(forwards,), params={"forwards": forwards}))
            benign_labels = interp["eval_labels"]
        point.attacks.append({"attack": aname, "plugin": areg.name, "norm": threat["norm"], "source": target,
                              "key": base_key, "knowledge": "adaptive", "detector": dname, "interpreter": iname,
                              "threat_model": threat, "steps": _steps(aoptions)})
        point.detections.append({
            **cell, "score_definition": getattr(dreg.cls, "score_definition", None) or dreg.cls.description,
            "adversarial_fit": dreg.cls.needs_adversarial_fit, "benign": benign_key, "adversarial": scores_key,
            "attack_key": base_key, "calibration": calibration_key, "transfer": None, "labels": labels_key,
            "benign_labels": benign_labels})

    def gallery(self, point: Point, target: str, victim: Node, interp: dict[str, Any],
                attacks: dict[tuple[str, str], dict[str, Any]], classes: list[str]) -> None:
        from advbench.cache import make_key

        adversarial = {a: entry["key"] for (a, source), entry in attacks.items() if source == target}
        key = make_key("gallery", {"examples": 4, "subset": self.subset_key, "attacks": adversarial,
                                   "numerics": self.numerics},
                       [interp["f2"].key, interp["interp"]["masks_key"]])
        self.add(Node(key, "gallery", f"gallery {interp['interpreter']} on {target}", self.settings,
                      inputs=interp["reads"] + tuple(adversarial.values()),
                      params={"interp": interp["interp"], "f2": interp["f2"], "images": self.images("eval"),
                              "eval_fit_images": self.images("eval+fit"), "adversarial": adversarial,
                              "classes": list(classes)}))
        point.galleries.append(key)

    # ------------------------------------------------------------------ one point
    def point(self, values: dict[str, Any], suite: Any, seed: Optional[int] = None) -> Point:
        point = Point(values, suite, seed)
        spec = suite.spec
        victims: dict[str, Node] = {}

        def need(name: str) -> Node:
            if name not in victims:
                victims[name] = self.victim(suite, point, name)
            return victims[name]

        targets = list(dict.fromkeys(p.target for p in spec.evaluation.pairs))
        sources = list(dict.fromkeys(p.source for p in spec.evaluation.pairs))
        interps: dict[tuple[str, str], dict[str, Any]] = {}
        for target in targets:
            usable = suite.usable("interpreters")
            # an f2 matched to another's accuracy is planned after that one (it reads its result)
            for iname in sorted(usable, key=lambda i: spec.interpreters[i].match_accuracy is not None):
                other = spec.interpreters[iname].match_accuracy
                if other is not None and (target, other) not in interps:  # the one to match is broken
                    suite.broken[("interpreters", iname)] = (f"interpreters.{iname}.match_accuracy: interpreter "
                                                             f"{other!r} did not load")
                    continue
                interps[(target, iname)] = self.interpretation(
                    suite, point, target, need(target), iname, interps[(target, other)] if other else None)
        attacks: dict[tuple[str, str], dict[str, Any]] = {}
        for aname in suite.usable("attacks"):
            if _adaptive(suite, aname):  # crafted against one detector at a time: made in detection()
                continue
            for source in sources:
                attacks[(aname, source)] = self.attack(suite, point, aname, source, need(source))
        for pair in spec.evaluation.pairs:
            for dname in suite.usable("detectors"):
                dreg = suite.component("detectors", dname)[0]
                for iname in (suite.usable("interpreters") if dreg.cls.needs_interpreter else [None]):
                    self.detection(suite, point, dname, iname, pair.source, pair.target, victims[pair.target],
                                   interps.get((pair.target, iname)) if iname else None, attacks)
        for name in spec.victims:
            need(name)
        for (section, key), error in suite.broken.items():  # their cells fail; the rest of the grid runs
            if not any(f["label"] == f"{section}.{key}" for f in self.failed):
                self.failed.append({"stage": section, "label": f"{section}.{key}", "error": error, "skipped": []})
        if not self.points:  # the page's gallery shows the first point
            for (target, _), interp in interps.items():
                self.gallery(point, target, victims[target], interp, attacks, self.classes)
        self.points.append(point)
        return point


ADAPTIVE_FPR = 0.05  # the operating point an adaptive attacker is told: 5% false positives on held-out benign images


def _adaptive(suite: Any, aname: str) -> bool:
    return suite.component("attacks", aname)[0].cls.knowledge == "adaptive"


def _steps(options: Any) -> Optional[int]:
    """An attack's iteration budget where its options name one (the sanity checks compare step counts): steps,
    times the rounds of a search that restarts them (joint PGD's lambda search)."""
    value = getattr(options, "steps", None)
    rounds = getattr(options, "search_steps", 1)
    return int(value) * int(rounds) if isinstance(value, int) and isinstance(rounds, int) else None


def _depends_on_batch(reg: Any, options: Any) -> bool:
    """Whether a component with these options depends on the run's batch size (``Component.depends_on_batch``)."""
    return bool(reg.cls(options).depends_on_batch())


def _stored(node: Node) -> tuple[str, ...]:
    return (node.key,) if node.stored else ()


def _stateful(reg: Any, options: Any, shape: tuple, num_classes: int) -> bool:
    """Whether an interpreter has a fitted state (its build returns a module); built with a private RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return reg.cls(options).build(shape, num_classes) is not None
