"""The stage functions: one per stage kind, each (node, its inputs read from the cache, a worker context) -> artifact.

``run_node(node, emit)`` is the one module-level entry an executor calls, in this process or on another
machine: it builds a ``RunContext`` on the worker (the device is resolved there, threads set there), runs the
node's stage function unless the cache already holds its key, stores the artifact, and returns the stage
record as plain data. Progress goes out through ``emit`` as plain-dict events. Nothing here writes outside the
cache or keeps state beyond a small per-process memo of loaded datasets and models (an optimisation only:
every memoised object is rebuilt identically from the cache when it is not there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from advbench import plugins
from advbench.api import DataSplits, Defence, DetectorEnv, ProgressStore, RunContext, ThreatModel
from advbench.boundary import check_data, check_logits, check_masks, check_scores
from advbench.cache import Cache, make_key
from advbench.devices import resolve_device
from advbench.errors import AdvbenchError
from advbench.plan import Node, Settings
from advbench.threat import NORMS

log = logging.getLogger("advbench.run")


class InputMissing(Exception):
    """An input artifact a node needs is not in the cache (removed, or found corrupt): the driver recomputes it."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


# ---------------------------------------------------------------------- the worker's context


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Run library code that draws from torch's global RNG (weight init, dropout, third-party attacks) from a
    seed the harness derived, and give the caller's global RNG state back afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % (2 ** 63))
        yield


class Forwards:
    """How many images each model forwarded, per image set, in one node: the stage record's ``forwards``, keyed
    ``"<model>|<image set>"`` (the model by its node key: a victim's or f2's, or g's by its training masks' key;
    the set as ``image_set_id`` names it). Counted are the passes the harness makes over an image set (f1, g and
    f2 on it, a detector's scoring and fitting); not the victim passes inside g (a gradient map's own) nor an
    attack's iterations."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._quiet = 0

    def add(self, model: str, images: str, n: int) -> None:
        if self._quiet == 0 and n:
            key = f"{model}|{images}"
            self.counts[key] = self.counts.get(key, 0) + int(n)

    @contextlib.contextmanager
    def quiet(self):
        """Passes made inside another model's (g's own victim passes) are not counted again."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    @contextlib.contextmanager
    def hooked(self, models: dict[str, Optional[nn.Module]], images: str):
        """Count every call of these modules (by node key) while a plugin's code runs them on ``images``."""
        handles = [module.register_forward_hook(
            lambda _m, args, _out, name=name: self.add(name, images, _batch_len(args)))
            for name, module in models.items() if isinstance(module, nn.Module)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _batch_len(args: tuple) -> int:
    return len(args[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 0


class Worker:
    """What one node's stage function sees: the cache, the device and a RunContext whose progress is events."""

    def __init__(self, node: Node, emit: Optional[Callable[[dict], None]] = None) -> None:
        self.node = node
        self.settings: Settings = node.settings
        self.cache = _cache(self.settings.cache_root)
        self.device = resolve_device(self.settings.device, "device")
        self.emit = emit
        self._tasks = 0
        self.forwards = Forwards()

    def track(self, iterable: Iterable, description: str, total: Optional[int] = None) -> Iterable:
        if self.emit is None:
            yield from iterable
            return
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self._tasks += 1
        task = f"{self.node.key[:16]}:{self._tasks}"
        self.emit({"type": "start", "id": task, "description": description, "total": total, "node": self.node.key})
        try:
            for item in iterable:
                yield item
                self.emit({"type": "advance", "id": task, "advance": 1})
        finally:
            self.emit({"type": "end", "id": task})

    def ctx(self, *salt: Any) -> RunContext:
        base = RunContext(self.device, self.settings.batch_size, self.settings.seed, self.track, self.progress)
        return base.child(*salt) if salt else base

    @property
    def progress(self) -> Optional["CacheProgress"]:
        """Training stages keep their last finished epoch in the cache, so a killed run loses at most one."""
        return CacheProgress(self.cache, self.node) if self.node.stage in TRAINING else None

    def load(self, key: str, *fields: str) -> Any:
        """An input's artifact; missing, corrupt, or without ``fields`` (stored by other code): the driver
        computes it again."""
        payload = self.cache.load(key, check=has_fields(fields))
        if payload is None:
            raise InputMissing(key)
        return payload

    def batched(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, label: str = "") -> torch.Tensor:
        """Apply ``fn`` to ``x`` batch by batch on the device; returns a CPU tensor."""
        ctx = self.ctx()
        out = []
        steps = range(0, len(x), ctx.batch_size)
        iterator = ctx.track(steps, label, len(steps)) if label else steps
        for start in iterator:
            out.append(fn(x[start:start + ctx.batch_size].to(self.device)).detach().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def predict(self, model: nn.Module, x: torch.Tensor, label: str = "",
                count: Optional[tuple[str, str]] = None) -> torch.Tensor:
        """The model's labels for ``x``; ``count``: (model key, image set id) to count the pass under."""
        if count is not None:
            self.forwards.add(count[0], count[1], len(x))
        with torch.no_grad():
            return self.batched(lambda b: model(b).argmax(1), x, label)


class CacheProgress(ProgressStore):
    """A training node's last epoch, as a cache entry of stage ``progress`` beside the node's own key."""

    def __init__(self, cache: Cache, node: Node) -> None:
        self.cache, self.node = cache, node
        self.key = progress_key(node.key)

    def save(self, state: dict[str, Any]) -> None:
        self.cache.save(self.key, state, stage="progress", description=f"{self.node.label}: after epoch "
                        f"{state.get('epoch', '?')}")

    def load(self) -> Optional[dict[str, Any]]:
        state = self.cache.load(self.key)
        if state is not None:
            log.info("%s: resuming after epoch %s (kept by an earlier, stopped run)", self.node.label,
                     state.get("epoch", "?"))
        return state


def progress_key(key: str) -> str:
    return make_key("progress", {}, [key])


TRAINING = ("victim", "mask-classifier", "interpreter")
_CACHES: dict[str, Cache] = {}


def _cache(root: str) -> Cache:
    if root not in _CACHES:
        _CACHES[root] = Cache(Path(root))
    return _CACHES[root]


# ---------------------------------------------------------------------- the per-process memo


class _Memo:
    """A few recently built objects (datasets, models, fitted detectors) per process, by cache key."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = build()
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


DATASETS = _Memo(2)
MODELS = _Memo(16)
DETECTORS = _Memo(2)


def _plugin(identity: dict[str, str]):
    return plugins.lookup(identity["kind"], identity["name"])


def _instance(identity: dict[str, str], options: dict[str, Any]):
    reg = _plugin(identity)
    return reg.cls(reg.cls.Options(**options))


def _freeze(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------- inputs: data, image sets, models


def load_dataset(node: Node) -> DataSplits:
    """The dataset a data node names (not stored in the cache: the dataset plugin keeps its own decoded copy)."""
    def build() -> DataSplits:
        worker = Worker(node)
        return check_data(node.plugin, _instance(node.plugin, node.options).load(worker.ctx("dataset")))
    return DATASETS.get(node.key, build)


def test_order(subset: dict[str, Any]) -> torch.Tensor:
    """The seeded order of the test set: evaluation images first, then detector-fitting images."""
    return torch.randperm(subset["n_test"], generator=RunContext(seed=subset["seed"]).generator("evaluation-subset"))


def subset_indices(subset: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    order = test_order(subset)
    return order[:subset["n_eval"]], order[subset["n_eval"]:subset["n_eval"] + subset["n_fit"]]


def train_split(data: DataSplits, limit: Optional[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images an interpreter fits on: all, or a seeded subset of ``limit`` for a slow one."""
    if limit is not None and limit < len(data.train_x):
        order = torch.randperm(len(data.train_x), generator=RunContext(seed=seed).generator("mask-train-subset"))[:limit]
        return data.train_x[order], data.train_y[order]
    return data.train_x, data.train_y


def calibration_indices(subset: dict[str, Any]) -> torch.Tensor:
    """The benign calibration images: after the evaluation and fitting images in the seeded test order."""
    start = subset["n_eval"] + subset["n_fit"]
    return test_order(subset)[start:start + subset.get("n_calibration", 0)]


def validation_indices(subset: dict[str, Any]) -> torch.Tensor:
    """The validation images a sweep chooses its point on: after the calibration images in the seeded test order."""
    start = subset["n_eval"] + subset["n_fit"] + subset.get("n_calibration", 0)
    return test_order(subset)[start:start + subset.get("n_validation", 0)]


def images(worker: Worker, spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """An image set a node reads, from plain data: the evaluation or fitting images, the first N of the test order,
    the whole test set, or a slice of an adversarial set (of the evaluation and fitting images, or of ``of``)."""
    if spec["set"] == "adversarial":
        adv = worker.load(spec["key"], "x_adv", "pred_clean", "pred_adv")
        _, y = images(worker, {**spec, "set": spec.get("of", "eval+fit")})
        return adv["x_adv"][spec["start"]:spec["stop"]], y[spec["start"]:spec["stop"]]
    data = load_dataset(spec["data"])
    if spec["set"] == "test":
        return data.test_x, data.test_y
    if spec["set"] == "test-order":
        idx = test_order(spec["subset"])[:spec["n"]]
        return data.test_x[idx], data.test_y[idx]
    if spec["set"] == "calibration":
        idx = calibration_indices(spec["subset"])
        return data.test_x[idx], data.test_y[idx]
    if spec["set"] == "validation":
        idx = validation_indices(spec["subset"])
        return data.test_x[idx], data.test_y[idx]
    eval_idx, fit_idx = subset_indices(spec["subset"])
    idx = {"eval": eval_idx, "fit": fit_idx, "eval+fit": torch.cat([eval_idx, fit_idx])}[spec["set"]]
    return data.test_x[idx], data.test_y[idx]


def image_set_id(spec: dict[str, Any]) -> str:
    """A short name of an image set a node reads, ``<set>[<n images>]@<digest>``: two nodes reading the same images
    name them alike (the forward counts of stage records are keyed by it)."""
    import hashlib
    import json

    which, subset = spec["set"], spec.get("subset") or {}
    if which == "adversarial":
        n, what = spec["stop"] - spec["start"], [spec["key"], spec["start"], spec["stop"]]
    else:
        n = {"test": subset.get("n_test"), "test-order": spec.get("n"), "calibration": subset.get("n_calibration"),
             "validation": subset.get("n_validation"), "eval": subset.get("n_eval"), "fit": subset.get("n_fit"),
             "eval+fit": (subset.get("n_eval") or 0) + (subset.get("n_fit") or 0)}.get(which, spec.get("n"))
        what = [spec["data"].key if isinstance(spec.get("data"), Node) else None, subset, spec.get("n"),
                spec.get("limit")]
    digest = hashlib.sha256(json.dumps([which, what], sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{which}[{n}]@{digest}"


def build_classifier(node: Node, worker: Worker) -> tuple[Any, nn.Module]:
    p = node.params
    classifier = _instance(node.plugin, node.options)
    ctx = RunContext(worker.device, node.settings.batch_size, node.settings.seed).child(*p["salt"])
    with seeded(ctx.derive_seed("build"), worker.device):
        model = classifier.build(tuple(p["input_shape"]), p["num_classes"])
    return classifier, model


def load_classifier(node: Node, worker: Worker) -> nn.Module:
    """A trained victim or mask classifier, frozen on the worker's device: from the cache or a checkpoint file."""
    def build() -> nn.Module:
        _, model = build_classifier(node, worker)
        if node.stage == "checkpoint":
            from advbench.checkpoints import load_state_dict

            state = load_state_dict(Path(node.params["path"]), node.params["field"], node.params["source"])
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError, AttributeError) as exc:
                first = (str(exc).splitlines() or ["not a state_dict"])[0]
                raise AdvbenchError(f"{node.params['source']}: {node.params['field']}: {node.params['path']!r} does "
                                    f"not fit {node.plugin['kind']} {node.plugin['name']!r}: {first}") from None
        else:
            model.load_state_dict(worker.load(node.key, "state_dict")["state_dict"])
        return _freeze(model, worker.device)
    return MODELS.get(f"{node.key}@{worker.device}", build)


class Interpretation:
    """An interpreter with its fitted state on a victim: ``explain(x)`` gives masks in [0, 1] on the device."""

    def __init__(self, spec: dict[str, Any], worker: Worker) -> None:
        self.spec = spec
        self.victim = load_classifier(spec["victim"], worker)
        self.interpreter = _instance(spec["plugin"], spec["options"])
        self.ctx = RunContext(worker.device, worker.settings.batch_size, worker.settings.seed).child(
            "interpreter", spec["target"], spec["name"])
        self.device = worker.device
        with seeded(self.ctx.derive_seed("build"), worker.device):
            self.state = self.interpreter.build(tuple(spec["input_shape"]), spec["num_classes"])
        if self.state is not None and spec.get("fitted", True):
            self.state.load_state_dict(worker.load(spec["key"], "state_dict")["state_dict"])
            _freeze(self.state, worker.device)

    def with_progress(self, worker: Worker) -> "Interpretation":
        self.ctx = RunContext(self.ctx.device, self.ctx.batch_size, self.ctx.seed, worker.track)
        return self

    def counted(self, worker: Worker, images: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """``explain`` that counts g's passes over ``images`` in the worker's record (not the victim passes
        g makes inside)."""
        def explain(x: torch.Tensor) -> torch.Tensor:
            worker.forwards.add(self.spec["masks_key"], images, len(x))
            with worker.forwards.quiet():
                return self.explain(x)
        return explain

    def explain(self, x: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """Masks for a batch; ``differentiable``: for an adaptive attack, the masks keep their graph back to x."""
        ctx = self.ctx
        if differentiable:
            ctx = RunContext(ctx.device, ctx.batch_size, ctx.seed, ctx.progress, ctx.checkpoint, differentiable=True)
        with seeded(ctx.derive_seed("explain"), self.device):
            masks = self.interpreter.explain(self.state, self.victim, x, ctx)
        return check_masks(self.spec["plugin"], masks, x).clamp(0, 1)


def load_interpretation(spec: dict[str, Any], worker: Worker) -> Interpretation:
    return MODELS.get(f"interpretation:{spec['key']}:{spec['masks_key']}@{worker.device}",
                      lambda: Interpretation(spec, worker)).with_progress(worker)


def detector_env(worker: Worker, env: dict[str, Any], differentiable: bool = False) -> DetectorEnv:
    """The detector's view of the victim; ``differentiable``: ``explain`` keeps the graph (adaptive attacks)."""
    data = load_dataset(env["data"])
    victim = load_classifier(env["victim"], worker)
    if env.get("interp") is None:
        return DetectorEnv(victim, data.train_x, data.train_y, data.num_classes)
    interp = load_interpretation(env["interp"], worker)
    f2 = load_classifier(env["f2"], worker)
    explain = (lambda x: interp.explain(x, differentiable=True)) if differentiable else interp.explain
    return DetectorEnv(victim, data.train_x, data.train_y, data.num_classes, explain=explain, mask_classifier=f2)


# ---------------------------------------------------------------------- the stage functions


def stage_classifier(node: Node, worker: Worker) -> dict[str, Any]:
    """Train a victim (on the training images) or the mask classifier (on an interpreter's training masks)."""
    p = node.params
    classifier, model = build_classifier(node, worker)
    data = load_dataset(p["data"])
    if p["section"] == "victims":
        train_x, train_y = data.train_x, data.train_y
    else:
        train_x = worker.load(p["masks"], "masks")["masks"].float()
        train_y = train_split(data, p["limit"], node.settings.seed)[1]
    ctx = worker.ctx(*p["salt"])
    matching = MatchedAccuracy(p["match"], model, worker, ctx.checkpoint) if p.get("match") else None
    if matching is not None:
        ctx = dataclasses.replace(ctx, checkpoint=matching)
    try:
        with seeded(ctx.derive_seed("fit"), worker.device):
            classifier.fit(model, train_x, train_y, ctx)
        state = {k: v.cpu().clone() for k, v in model.state_dict().items()}
    except AccuracyReached as reached:
        state = reached.state
    with torch.no_grad():  # the trained model answers the contract: N x classes finite logits
        model.load_state_dict(state)
        probe = train_x[:2].to(worker.device)
        check_logits(node.plugin, model.eval()(probe), len(probe), p["num_classes"])
    out = {"state_dict": state}
    if matching is not None:
        out["matched"] = matching.record(model)
    return out


class AccuracyReached(Exception):
    """Raised from a matched f2's epoch end: the model has reached the accuracy it is matched to."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__("matched accuracy reached")
        self.state = state


class MatchedAccuracy(ProgressStore):
    """The progress store of an f2 trained to another f2's accuracy: at each epoch's end (when the fit saves its
    progress) the model reads its own masks of the held-out calibration images; once it reads them as well as
    the other f2 reads the other interpreter's masks of the same images, training stops there. A fit that never
    saves progress, or never gets there, trains in full; ``record`` says which."""

    def __init__(self, spec: dict[str, Any], model: nn.Module, worker: Worker, inner: Optional[ProgressStore]) -> None:
        self.model, self.worker, self.inner = model, worker, inner
        x, self.y = images(worker, spec["images"])
        which = image_set_id(spec["images"])
        other = load_interpretation(spec["interp"], worker)
        other_f2 = load_classifier(spec["f2"], worker)
        worker.forwards.add(spec["f2"].key, which, len(x))
        other_explain = other.counted(worker, which)
        with torch.no_grad():
            self.target = float((worker.batched(lambda b: other_f2(other_explain(b)).argmax(1), x) == self.y)
                                .float().mean())
        own = load_interpretation(spec["own"], worker)
        self.masks = worker.batched(own.counted(worker, which), x)
        self.name, self.epochs, self.stopped = spec["name"], 0, False
        self.previous: Optional[tuple[int, float, dict[str, torch.Tensor]]] = None  # the last epoch below target

    def accuracy(self, model: nn.Module) -> float:
        with torch.no_grad():
            was = model.training
            read = self.worker.predict(model.eval(), self.masks)
            model.train(was)
        return float((read == self.y).float().mean())

    def save(self, state: dict[str, Any]) -> None:
        epoch = int(state.get("epoch", self.epochs + 1))
        accuracy = self.accuracy(self.model)
        weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if accuracy >= self.target:
            self.stopped = True
            # the epoch before may sit closer to the target from below than this one does from above
            if self.previous is not None and self.target - self.previous[1] < accuracy - self.target:
                self.epochs, weights = self.previous[0], self.previous[2]
            else:
                self.epochs = epoch
            raise AccuracyReached(weights)
        self.previous = (epoch, accuracy, weights)
        if self.inner is not None:
            self.inner.save(state)

    def load(self) -> Optional[dict[str, Any]]:
        return self.inner.load() if self.inner is not None else None

    def record(self, model: nn.Module) -> dict[str, Any]:
        return {"to": self.name, "target_accuracy": self.target, "accuracy": self.accuracy(model),
                "n_images": len(self.y), "epochs": self.epochs if self.stopped else None, "stopped": self.stopped}


def stage_accuracy(node: Node, worker: Worker) -> dict[str, Any]:
    data = load_dataset(node.params["data"])
    model = load_classifier(node.params["victim"], worker)
    predicted = worker.predict(model, data.test_x, f"accuracy {node.params['name']}",
                               count=(node.params["victim"].key, image_set_id({"set": "test", "data": node.params["data"],
                                                                              "subset": {"n_test": len(data.test_x)}})))
    return {"accuracy": float((predicted == data.test_y).float().mean())}


def stage_interpreter(node: Node, worker: Worker) -> dict[str, Any]:
    spec = node.params["interp"]
    interp = Interpretation({**spec, "fitted": False}, worker)
    data = load_dataset(spec["data"])
    train_x, train_y = train_split(data, spec["limit"], node.settings.seed)
    state = interp.state
    state.to(worker.device).train()
    ctx = worker.ctx("interpreter", spec["target"], spec["name"])
    with seeded(ctx.derive_seed("fit"), worker.device):
        interp.interpreter.fit(state, interp.victim, train_x, train_y, ctx)
    return {"state_dict": {k: v.cpu() for k, v in state.state_dict().items()}}


def stage_masks(node: Node, worker: Worker) -> dict[str, Any]:
    spec = node.params["interp"]
    interp = load_interpretation(spec, worker)
    train_x, _ = train_split(load_dataset(spec["data"]), spec["limit"], node.settings.seed)
    train = image_set_id({"set": "train", "data": spec["data"], "n": len(train_x), "limit": spec["limit"]})
    return {"masks": worker.batched(interp.counted(worker, train), train_x,
                                    f"masks {spec['name']}/{spec['target']} (train)").half()}


def stage_forwards(node: Node, worker: Worker) -> dict[str, Any]:
    """One model's logits on one image set, computed once for every reader (f2's labels, f2's accuracy, the
    detectors that score from logits, the transfer labels): the victim's (f1), or, for an interpreter, f2's on
    g's masks, with the masks' channel count. Batched as the detectors' scoring batches, with g called as a
    detector's ``score`` calls it (grad mode on) and f1 and f2 under no_grad, so every reader gets the numbers it
    computed before, bit for bit."""
    p = node.params
    if p.get("chunks"):  # an attack's images before its merge node (which reads these logits) joins them
        x = torch.cat([worker.load(key, *FIELDS["adversarial-chunk"])["x"] for key in p["chunks"]])
        x = x[p["images"]["start"]:p["images"]["stop"]]
    else:
        x, _ = images(worker, p["images"])
    which = image_set_id(p["images"])
    if p.get("interp") is None:
        model = load_classifier(p["victim"], worker)
        worker.forwards.add(p["victim"].key, which, len(x))

        def f1(batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(batch)
        logits = worker.batched(f1, x, p["progress"])
        return {"logits": logits if len(x) else torch.empty(0, p["num_classes"])}
    interp = load_interpretation(p["interp"], worker)
    f2 = load_classifier(p["f2"], worker)
    explain = interp.counted(worker, which)
    worker.forwards.add(p["f2"].key, which, len(x))
    channels: list[int] = []

    def f2_of_g(batch: torch.Tensor) -> torch.Tensor:
        masks = explain(batch)  # the interpreter may need input gradients: no no_grad around it
        channels.append(int(masks.shape[1]))
        with torch.no_grad():
            return f2(masks.detach())
    logits = worker.batched(f2_of_g, x, p["progress"])
    return {"logits": logits if len(x) else torch.empty(0, p["num_classes"]),
            "mask_channels": channels[0] if channels else None}


def _labels(logits: torch.Tensor) -> torch.Tensor:
    """argmax of stored logits: the labels ``Worker.predict`` gave when it ran the model itself."""
    return logits.argmax(1) if len(logits) else torch.empty(0)


def stage_mask_labels(node: Node, worker: Worker) -> dict[str, Any]:
    """f2's reading of the interpreter's masks of an image set: the argmax of the set's shared f2 logits."""
    forwards = worker.load(node.params["forwards"], "logits", "mask_channels")
    return {"labels": _labels(forwards["logits"]), "mask_channels": forwards["mask_channels"]}


def stage_attack_chunk(node: Node, worker: Worker) -> dict[str, Any]:
    """One chunk of an attack's images through the attack template, under the node's threat model."""
    p = node.params
    attack = _instance(node.plugin, node.options)
    model = load_classifier(p["victim"], worker)
    x, y = images(worker, p["images"])
    x, y = x[p["start"]:p["start"] + p["size"]], y[p["start"]:p["start"] + p["size"]]
    # the validation images' chunks draw their own random starts, not those of the evaluation chunk at the same start
    ctx = worker.ctx("attack", p["attack"], p["source"], p["start"], *([p["split"]] if p.get("split") else []))
    threat = ThreatModel(**p["threat"])
    if threat.targeted:
        y = draw_targets(y, p["num_classes"], ctx.generator("targets"))
    # an adaptive attack's view of the defence: built once per chunk, the detector fitted once per process
    defence = build_defence(worker, p["defence"]) if p.get("defence") else None
    results = []
    for start in range(0, len(x), ctx.batch_size):
        batch_ctx = ctx.child(start)
        with seeded(batch_ctx.seed, worker.device):
            results.append(attack(model, x[start:start + ctx.batch_size], y[start:start + ctx.batch_size],
                                  batch_ctx, threat, defence))
    # a chunk holds at least one image (the plan makes one per CHUNK images of a non-empty set)
    out: dict[str, Any] = {"x": torch.cat([r.adversarial for r in results]),
                           "success_unquantized": torch.cat([r.success_unquantized for r in results]),
                           "norms": {n: torch.cat([r.norms[n] for r in results]) for n in NORMS}}
    if threat.targeted:
        out["target"] = y
    return out


def draw_targets(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A target label per input, uniform among the classes other than its own."""
    offset = torch.randint(0, num_classes - 1, (len(y),), generator=generator)
    return (y + 1 + offset) % num_classes


def build_defence(worker: Worker, spec: dict[str, Any]) -> Defence:
    """What an adaptive attacker is told: the fitted detector's differentiable score and its threshold at
    ``spec["fpr"]`` false positives on the held-out calibration images (never the evaluation images)."""
    from advbench import metrics

    env = detector_env(worker, spec["env"])
    detector = fitted_detector(spec["plugin"], spec["options"], spec, worker, env)
    calibration = worker.load(spec["calibration"], "calibration")["calibration"]["score"]
    threshold = metrics.calibrated_threshold(calibration, spec["fpr"])
    ctx = worker.ctx("detector", spec["detector"], spec["interpreter"], spec["target"], "adaptive")
    ctx.differentiable = True
    adaptive_env = detector_env(worker, spec["env"], differentiable=True)
    return Defence(victim=env.victim, detector=spec["detector"],
                   score=lambda x: detector.attack_score(adaptive_env, x, ctx), threshold=float(threshold),
                   fpr=spec["fpr"], gradient=spec["gradient"], explain=adaptive_env.explain,
                   mask_classifier=env.mask_classifier)


def stage_attack_merge(node: Node, worker: Worker) -> dict[str, Any]:
    """An attack's chunks as one adversarial set, with the victim's labels before and after, and what the
    template recorded per image (success before quantisation, norms, targets of a targeted attack)."""
    p = node.params
    x, _ = images(worker, p["images"])
    chunks = [worker.load(key, *FIELDS["adversarial-chunk"]) for key in p["chunks"]]

    def joined(part: Callable[[dict], torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(c) for c in chunks]) if chunks else empty

    x_adv = joined(lambda c: c["x"], torch.empty_like(x))
    model = load_classifier(p["victim"], worker)
    # the victim's labels: the argmax of its shared logits where the plan made them (the clean images, which
    # every attack on the victim reads; an adaptive set's attacked images, read from its chunks), else computed
    shared = p.get("forwards") or {}
    victim = p["victim"].key
    if "clean" in shared:
        pred_clean = _labels(worker.load(shared["clean"], "logits")["logits"])
    else:
        pred_clean = worker.predict(model, x, count=(victim, image_set_id(p["images"])))
    if "adversarial" in shared:
        pred_adv = _labels(worker.load(shared["adversarial"], "logits")["logits"])
    else:
        adversarial = image_set_id({"set": "adversarial", "key": node.key, "start": 0, "stop": len(x_adv)})
        pred_adv = worker.predict(model, x_adv, count=(victim, adversarial))
    out = {"x_adv": x_adv, "pred_clean": pred_clean, "pred_adv": pred_adv,
           "success_unquantized": joined(lambda c: c["success_unquantized"], torch.zeros(0, dtype=torch.bool)),
           "norms": {n: joined(lambda c, n=n: c["norms"][n], torch.zeros(0)) for n in NORMS}}
    if chunks and "target" in chunks[0]:
        out["target"] = torch.cat([c["target"] for c in chunks])
    return out


def stage_transfer(node: Node, worker: Worker) -> dict[str, Any]:
    """The target victim's labels on the clean evaluation images and on the adversarial ones from another victim:
    the argmax of its shared logits on both sets."""
    clean = worker.load(node.params["forwards"]["clean"], "logits")["logits"]
    adversarial = worker.load(node.params["forwards"]["adversarial"], "logits")["logits"]
    return {"pred_clean": _labels(clean), "pred_adv": _labels(adversarial)}


def fitted_detector(plugin: dict[str, str], options: dict[str, Any], p: dict[str, Any], worker: Worker,
                    env: DetectorEnv):
    """A detector fitted on the held-out images (once per process and fit key): for its scores nodes and for
    the adaptive attacks crafted against it."""
    def fit():
        detector = _instance(plugin, options)
        fit_x, _ = images(worker, {**p["fit_images"]})
        if p["fit_adversarial"] is not None:
            adv = worker.load(p["fit_adversarial"], "x_adv", "pred_clean", "pred_adv")
            n_eval = p["fit_images"]["subset"]["n_eval"]
            ok = attack_success(adv, images(worker, p["eval_fit_images"])[1])[n_eval:]
            fit_adv = adv["x_adv"][n_eval:][ok]
        else:
            fit_adv = fit_x[:0]
        ctx = worker.ctx("detector", p["detector"], p["interpreter"], p["target"])
        fitting = f"detector-fit[{len(fit_x) + len(fit_adv)}]@{p['fit_key'][:12]}"  # its own benign + adversarial
        with seeded(ctx.derive_seed("fit"), worker.device), _counting(worker, p["env"], env, fitting) as fit_env:
            detector.fit(fit_env, fit_x, fit_adv, ctx)
        return detector
    return DETECTORS.get(f"{p['fit_key']}@{worker.device}", fit)


def attack_success(adv: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """An attack succeeds on an input the victim classified correctly and now misclassifies; a targeted attack
    (its set holds ``target``) only where the victim now gives the target."""
    y = y[:len(adv["pred_clean"])]  # an adaptive set covers the evaluation images only
    hit = adv["pred_adv"] == adv["target"] if "target" in adv else adv["pred_adv"] != y
    return (adv["pred_clean"] == y) & hit


@contextlib.contextmanager
def _counting(worker: Worker, spec: dict[str, Any], env: DetectorEnv, which: str):
    """``env`` with its models' passes over ``which`` counted in the worker's record (g's inner victim passes not)."""
    models = {spec["victim"].key: env.victim}
    counted = env
    if env.explain is not None and spec.get("interp") is not None:
        models[spec["f2"].key] = env.mask_classifier
        explain = env.explain

        def counted_explain(x: torch.Tensor) -> torch.Tensor:
            worker.forwards.add(spec["interp"]["masks_key"], which, len(x))
            with worker.forwards.quiet():
                return explain(x)
        counted = dataclasses.replace(env, explain=counted_explain)
    with worker.forwards.hooked(models, which):
        yield counted


def stage_scores(node: Node, worker: Worker) -> dict[str, Any]:
    """A fitted detector's scores on image sets; a detector that scores from logits (``scores_from_forwards``)
    reads each set's shared f1 and f2 logits (``forwards`` nodes) instead of running the models again."""
    p = node.params
    env = detector_env(worker, p["env"])
    detector = fitted_detector(node.plugin, node.options, p, worker, env)
    ctx = worker.ctx("detector", p["detector"], p["interpreter"], p["target"])
    out = {}
    for part in p["parts"]:
        shared = (p.get("forwards") or {}).get(part)
        if shared is not None:
            f1 = worker.load(shared["f1"], "logits")["logits"]
            f2 = worker.load(shared["f2"], "logits")["logits"] if shared.get("f2") else None
            x, which = f1, None
        else:
            x, _ = images(worker, p["images"][part])
            which = image_set_id(p["images"][part])
        scores, flags = [], []
        steps = range(0, len(x), ctx.batch_size)
        for start in ctx.track(steps, f"score {part} ({node.label})", len(steps)):
            if which is None:
                b1 = f1[start:start + ctx.batch_size].to(worker.device)
                b2 = f2[start:start + ctx.batch_size].to(worker.device) if f2 is not None else None
                with seeded(ctx.derive_seed("score", start), worker.device):
                    result = check_scores(node.plugin, detector.score_forwards(b1, b2), len(b1))
            else:
                batch = x[start:start + ctx.batch_size].to(worker.device)
                with seeded(ctx.derive_seed("score", start), worker.device), \
                        _counting(worker, p["env"], env, which) as scoring:
                    result = check_scores(node.plugin, detector.score(scoring, batch, ctx), len(batch))
            scores.append(result.score.detach().float().cpu())
            if result.flag is not None:
                flags.append(result.flag.detach().bool().cpu())
        out[part] = {"score": torch.cat(scores) if scores else torch.empty(0),
                     "flag": torch.cat(flags) if flags else None}
    return out


def stage_gallery(node: Node, worker: Worker) -> dict[str, Any]:
    """A few benign and adversarial images with their masks and both labels, for the report's gallery."""
    p = node.params
    interp = load_interpretation(p["interp"], worker)
    victim = load_classifier(p["interp"]["victim"], worker)
    f2 = load_classifier(p["f2"], worker)
    eval_x, eval_y = images(worker, p["images"])
    n_examples = min(4, len(eval_x))
    with torch.no_grad():
        per_class_idx = [int((eval_y == c).nonzero()[0]) for c in range(len(p["classes"])) if (eval_y == c).any()]
        idx = torch.tensor(per_class_idx, dtype=torch.long)

        def describe(x: torch.Tensor, which: str) -> dict[str, torch.Tensor]:
            xd = x.to(worker.device)
            which = f"gallery-{which}[{len(x)}]@{node.key[:12]}"
            masks = interp.counted(worker, which)(xd)
            for model in (p["interp"]["victim"].key, p["f2"].key):
                worker.forwards.add(model, which, len(x))
            # clone: torch.save stores a view's whole storage (the full evaluation set)
            return {"x": x.cpu().clone(), "mask": masks.cpu().float().clone(),
                    "f1": victim(xd).argmax(1).cpu(), "f2": f2(masks).argmax(1).cpu()}

        per_class = {**describe(eval_x[idx], "per-class"), "y": eval_y[idx]}
        examples = {**describe(eval_x[:n_examples], "examples"), "y": eval_y[:n_examples].clone(), "adversarial": {}}
        for aname, key in p["adversarial"].items():
            adv = worker.load(key, "x_adv", "pred_clean", "pred_adv")
            entry = describe(adv["x_adv"][:n_examples], aname)
            entry["success"] = attack_success(adv, images(worker, p["eval_fit_images"])[1])[:n_examples].clone()
            examples["adversarial"][aname] = entry
    return {"victim": p["interp"]["target"], "interpreter": p["interp"]["name"], "classes": list(p["classes"]),
            "per_class": per_class, "examples": examples}


# what each stage's artifact holds: an entry without it (written by other code) is discarded and recomputed
FIELDS = {"victim": ("state_dict",), "mask-classifier": ("state_dict",), "interpreter": ("state_dict",),
          "accuracy": ("accuracy",), "masks": ("masks",), "mask-labels": ("labels",), "forwards": ("logits",),
          "adversarial-chunk": ("x", "success_unquantized", "norms"),
          "adversarial": ("x_adv", "pred_clean", "pred_adv", "success_unquantized", "norms"),
          "gallery": ("per_class", "examples"), "transfer": ("pred_clean", "pred_adv")}


def expected_fields(node: Node) -> tuple[str, ...]:
    return tuple(node.params.get("parts", ())) if node.stage == "scores" else FIELDS.get(node.stage, ())


def has_fields(fields: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda payload: isinstance(payload, dict) and all(f in payload for f in fields)


STAGES: dict[str, Callable[[Node, Worker], Any]] = {
    "victim": stage_classifier,
    "mask-classifier": stage_classifier,
    "accuracy": stage_accuracy,
    "interpreter": stage_interpreter,
    "masks": stage_masks,
    "mask-labels": stage_mask_labels,
    "forwards": stage_forwards,
    "adversarial-chunk": stage_attack_chunk,
    "adversarial": stage_attack_merge,
    "scores": stage_scores,
    "gallery": stage_gallery,
    "transfer": stage_transfer,
}

# stages whose nodes only feed other nodes (never the results): computed only for a reader not yet cached
INTERMEDIATE = frozenset({"forwards"})

# what a node's stage is called in stage records, run.log and `cache ls`
RECORD_STAGE = {"accuracy": "metrics", "mask-labels": "masks", "adversarial-chunk": "adversarial"}


def record_stage(node: Node) -> str:
    return RECORD_STAGE.get(node.stage, node.stage)


def run_node(node: Node, emit: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """Compute one node into the cache (unless it is there already) and return its stage record.

    The executor's entry point: a module-level function of plain data, so it runs the same in this process,
    in a spawned worker or in a Ray task.
    """
    if node.settings.threads:
        torch.set_num_threads(node.settings.threads)
    worker = Worker(node, emit)
    started = time.time()
    start = time.perf_counter()
    log.debug("%s %s: start on pid %d (key %s)", record_stage(node), node.label, os.getpid(), node.key[:12])
    with worker.cache.lock(node.key):  # a second run on the same cache waits here, then reuses the entry
        cached = worker.cache.contains(node.key) and \
            worker.cache.load(node.key, check=has_fields(expected_fields(node))) is not None
        if not cached:
            payload = STAGES[node.stage](node, worker)
            worker.cache.save(node.key, payload, stage=record_stage(node), description=node.label)
        if node.stage in TRAINING:
            worker.cache.remove(progress_key(node.key))  # the finished model supersedes its last epoch
    seconds = time.perf_counter() - start
    log.debug("%s %s: %.1fs%s", record_stage(node), node.label, seconds, " (cached)" if cached else "")
    return {"stage": record_stage(node), "label": node.label, "seconds": round(seconds, 3), "cached": cached,
            "key": node.key, "pid": os.getpid(), "started": started, "forwards": dict(worker.forwards.counts)}
