"""The grid as a line of cached stages:

data -> victims -> interpreters -> masks -> mask classifiers -> adversarial sets -> detection scores
-> metrics -> report.

Each stage's artifact is stored in the cache under a key made of its canonical configuration, its inputs'
keys and its plugin's name, distribution version and revision, so a second run reuses everything and a
changed field recomputes only what depends on it. Long stages (attacks, scores) are cached per chunk, so a
killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

import advbench
from advbench import metrics, plugins
from advbench.api import DataSplits, DetectorEnv, RunContext
from advbench.cache import Cache, make_key
from advbench.errors import AdvbenchError
from advbench.outputs import write_outputs, CSV_TABLES, _atomic_text, _finite
from advbench.suite import Suite

log = logging.getLogger("advbench.run")
CHUNK = 256  # images per cached attack / score chunk: the unit a killed run resumes from


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise AdvbenchError("--device cuda: CUDA is not available on this machine; allowed here: auto, cpu")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def plugin_identity(reg: plugins.Registration) -> dict[str, str]:
    return {"name": reg.name, "distribution": reg.distribution, "version": reg.version, "revision": reg.cls.revision}


def _options_dict(options: Any) -> dict[str, Any]:
    return options.model_dump(mode="json")


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def _freeze(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Run library code that draws from torch's global RNG (weight init, dropout, third-party attacks) from a
    seed the harness derived, and give the caller's global RNG state back afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % (2 ** 63))
        yield


@dataclass
class StageRecord:
    stage: str
    label: str
    seconds: float
    cached: bool


@dataclass
class Runner:
    """Runs one suite (one sweep point) and returns its results dict. ``progress`` drives rich bars."""

    suite: Suite
    run_dir: Path
    device: torch.device
    cache: Cache
    limit: Optional[int] = None
    progress: Optional[Callable[[Iterable, str, Optional[int]], Iterable]] = None
    sweep_values: dict[str, Any] = field(default_factory=dict)
    records: list[StageRecord] = field(default_factory=list)
    sweep_base: dict[str, Any] = field(default_factory=dict)  # the suite's own values: messages name what differs

    # ------------------------------------------------------------------ helpers
    @property
    def spec(self):
        return self.suite.spec

    def ctx(self, *salt: Any) -> RunContext:
        base = RunContext(self.device, self.spec.batch_size, self.spec.seed, self.progress)
        return base.child(*salt) if salt else base

    def stage(self, stage: str, label: str, key: str, compute: Callable[[], Any]) -> Any:
        log.info("%s %s: start (key %s)", stage, label, key[:12])
        start = time.perf_counter()
        payload, cached = self.cache.get_or_compute(key, compute, stage=stage, description=label)
        seconds = time.perf_counter() - start
        self.records.append(StageRecord(stage, label, round(seconds, 3), cached))
        log.info("%s %s: %.1fs%s", stage, label, seconds, " (cached)" if cached else "")
        return payload

    def batched(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, label: str = "",
                ctx: Optional[RunContext] = None) -> torch.Tensor:
        """Apply ``fn`` to ``x`` batch by batch on the device; returns a CPU tensor."""
        ctx = ctx or self.ctx()
        out = []
        steps = range(0, len(x), ctx.batch_size)
        iterator = ctx.track(steps, label, len(steps)) if label else steps
        for start in iterator:
            out.append(fn(x[start:start + ctx.batch_size].to(self.device)).detach().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def predict(self, model: nn.Module, x: torch.Tensor, label: str = "") -> torch.Tensor:
        with torch.no_grad():
            return self.batched(lambda b: model(b).argmax(1), x, label)

    # ------------------------------------------------------------------ stages
    def load_data(self) -> tuple[DataSplits, str]:
        reg, options = self.suite.component("dataset")
        key = make_key("dataset", {"options": _options_dict(options)}, [], plugin_identity(reg))
        start = time.perf_counter()
        data = reg.cls(options).load(self.ctx("dataset"))
        self.records.append(StageRecord("data", reg.name, round(time.perf_counter() - start, 3), False))
        return data, key

    def evaluation_indices(self, data: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed, seeded subset of the test set: evaluation images, then disjoint detector-fitting images."""
        ev = self.spec.evaluation
        n_eval, n_fit = ev.n_eval, ev.n_fit
        if self.limit is not None:
            n_eval, n_fit = min(n_eval, self.limit), min(n_fit, self.limit)
        n_test = len(data.test_x)
        n_eval = min(n_eval, n_test)
        n_fit = min(n_fit, n_test - n_eval)
        order = self.test_order(data)
        return order[:n_eval], order[n_eval:n_eval + n_fit]

    def test_order(self, data: DataSplits) -> torch.Tensor:
        """The seeded order of the test set: evaluation images first, then detector-fitting images. f2's
        accuracy (n_mask_eval) reads its first N, a superset of the evaluation images when N >= n_eval."""
        return torch.randperm(len(data.test_x), generator=self.ctx().generator("evaluation-subset"))

    def train_classifier(self, section: str, name: str, inputs_key: str, train_x: torch.Tensor,
                         train_y: torch.Tensor, num_classes: int, checkpoint: Optional[str], label: str,
                         salt: tuple) -> tuple[nn.Module, str]:
        """Build and train (or load from ``checkpoint``) a victim-kind component: a victim or the mask classifier."""
        reg, options = self.suite.component(section, name)
        field_path = f"{section}.{name}" if name else section
        classifier = reg.cls(options)
        input_shape = tuple(train_x.shape[1:])
        ctx = self.ctx(*salt)
        with seeded(ctx.derive_seed("build"), self.device):
            model = classifier.build(input_shape, num_classes)
        if checkpoint:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise AdvbenchError(f"{self.suite.source}: {field_path}.checkpoint: no such file {str(path)!r}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError, AttributeError) as exc:
                first = (str(exc).splitlines() or ["not a state_dict"])[0]
                raise AdvbenchError(f"{self.suite.source}: {field_path}.checkpoint: {str(path)!r} does not fit "
                                    f"{reg.kind} {reg.name!r}: {first}") from None
            key = make_key("checkpoint", {"sha256": _file_digest(path)}, [], plugin_identity(reg))
            return _freeze(model, self.device), key
        # the salt seeds the training, so it is part of the key: two victims with one recipe are two models
        config = {"options": _options_dict(options), "seed": self.spec.seed, "input_shape": list(input_shape),
                  "num_classes": num_classes, "salt": list(salt)}
        key = make_key(section, config, [inputs_key], plugin_identity(reg))

        def compute() -> dict[str, Any]:
            with seeded(ctx.derive_seed("fit"), self.device):
                classifier.fit(model, train_x, train_y, ctx)
            return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}

        payload = self.stage("victim" if section == "victims" else "mask-classifier", label, key, compute)
        model.load_state_dict(payload["state_dict"])
        return _freeze(model, self.device), key

    def run(self) -> dict[str, Any]:
        spec = self.spec
        results: dict[str, Any] = {"victims": {}, "interpreters": [], "attacks": [], "detection": [],
                                   "worst_case": [], "warnings": []}
        self.partial = results  # what an interrupted run still reports
        data, data_key = self.load_data()
        results["dataset"] = {"plugin": self.suite.component("dataset")[0].name, "classes": data.classes,
                              "n_train": len(data.train_x), "n_test": len(data.test_x)}
        eval_idx, fit_idx = self.evaluation_indices(data)
        results["evaluation"] = {"n_eval": len(eval_idx), "n_fit": len(fit_idx),
                                 "benign_pairing": "the benign originals of the adversarial inputs counted"}
        eval_x, eval_y = data.test_x[eval_idx], data.test_y[eval_idx]
        fit_x, fit_y = data.test_x[fit_idx], data.test_y[fit_idx]
        subset_key = _tensor_digest(torch.cat([eval_idx, fit_idx]))
        self.subset_key = subset_key  # every stage computed on the evaluation images keys on it

        # victims train when first needed (targets' interpreters, then attack sources), so a run can go on
        # with one victim while another is still being trained elsewhere into the same cache
        victims: dict[str, nn.Module] = {}
        victim_keys: dict[str, str] = {}

        def need(name: str) -> nn.Module:
            if name not in victims:
                vspec = spec.victims[name]
                model, key = self.train_classifier("victims", name, data_key, data.train_x, data.train_y,
                                                   data.num_classes, vspec.checkpoint, f"victims.{name}",
                                                   ("victim", name))
                victims[name], victim_keys[name] = model, key
                accuracy = self.stage("metrics", f"clean accuracy {name}", make_key("accuracy", {}, [key, data_key]),
                                      lambda: {"accuracy": float((self.predict(model, data.test_x, f"accuracy {name}")
                                                                  == data.test_y).float().mean())})
                results["victims"][name] = {"plugin": self.suite.component("victims", name)[0].name,
                                            "clean_accuracy": accuracy["accuracy"]}
            return victims[name]

        targets = list(dict.fromkeys(p.target for p in spec.evaluation.pairs))
        sources = list(dict.fromkeys(p.source for p in spec.evaluation.pairs))

        # interpreters and mask classifiers, per target victim
        detectors_env: dict[tuple[str, Optional[str]], DetectorEnv] = {}
        env_keys: dict[tuple[str, Optional[str]], str] = {}
        mask_labels: dict[tuple[str, str], Callable[[torch.Tensor, str], torch.Tensor]] = {}
        for target in targets:
            detectors_env[(target, None)] = DetectorEnv(need(target), data.train_x, data.train_y, data.num_classes)
            env_keys[(target, None)] = victim_keys[target]
            for iname in spec.interpreters:
                env, env_key, row, labeler = self.interpretation(target, iname, victims[target], victim_keys[target],
                                                                 data, eval_x, eval_y, fit_x)
                detectors_env[(target, iname)] = env
                env_keys[(target, iname)] = env_key
                mask_labels[(target, iname)] = labeler
                results["interpreters"].append(row)

        # adversarial sets, per (attack, source)
        adversarial: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        for aname in spec.attacks:
            for source in sources:
                adv = self.attack(aname, source, need(source), victim_keys[source], eval_x, eval_y, fit_x, fit_y,
                                  subset_key)
                adversarial[(aname, source)] = adv
                results["attacks"].append(adv["row"])

        # detection
        for pair in spec.evaluation.pairs:
            for dname in spec.detectors:
                dreg, _ = self.suite.component("detectors", dname)
                interps: list[Optional[str]] = list(spec.interpreters) if dreg.cls.needs_interpreter else [None]
                for iname in interps:
                    rows, worst = self.detect(dname, iname, pair.source, pair.target, detectors_env[(pair.target, iname)],
                                              env_keys[(pair.target, iname)], adversarial, eval_x, eval_y, fit_x,
                                              mask_labels.get((pair.target, iname)), subset_key)
                    results["detection"].extend(rows)
                    results["worst_case"].extend(worst)

        for name in spec.victims:
            need(name)
        results["warnings"].extend(self.warnings(results))
        self.gallery = self.build_gallery(targets, detectors_env, mask_labels, adversarial, eval_x, eval_y, data.classes,
                                          victims)
        return results

    # ------------------------------------------------------------------ interpretation
    def interpretation(self, target: str, iname: str, victim: nn.Module, victim_key: str, data: DataSplits,
                       eval_x: torch.Tensor, eval_y: torch.Tensor, fit_x: torch.Tensor):
        spec = self.spec
        ireg, ioptions = self.suite.component("interpreters", iname)
        interpreter = ireg.cls(ioptions)
        ctx = self.ctx("interpreter", target, iname)
        with seeded(ctx.derive_seed("build"), self.device):
            state = interpreter.build(data.input_shape, data.num_classes)
        # a slow interpreter may fit and feed f2 on a seeded subset of the training set
        limit = spec.interpreters[iname].mask_train_limit or spec.evaluation.mask_train_limit
        train_x, train_y = data.train_x, data.train_y
        if limit is not None and limit < len(train_x):
            order = torch.randperm(len(train_x), generator=self.ctx().generator("mask-train-subset"))[:limit]
            train_x, train_y = train_x[order], train_y[order]
        options = _options_dict(ioptions)
        fit_options = {k: v for k, v in options.items() if k not in ireg.cls.explain_options}
        iconfig = {"options": fit_options, "seed": spec.seed, "salt": ["interpreter", target, iname]}
        if limit is not None:
            iconfig["train_limit"] = limit
        ikey = make_key("interpreter", iconfig, [victim_key], plugin_identity(ireg))
        if state is not None:
            def fit_state() -> dict[str, Any]:
                state.to(self.device).train()
                with seeded(ctx.derive_seed("fit"), self.device):
                    interpreter.fit(state, victim, train_x, train_y, ctx)
                return {"state_dict": {k: v.cpu() for k, v in state.state_dict().items()}}

            payload = self.stage("interpreter", f"{iname} on {target}", ikey, fit_state)
            state.load_state_dict(payload["state_dict"])
            _freeze(state, self.device)

        def explain(x: torch.Tensor) -> torch.Tensor:
            with seeded(ctx.derive_seed("explain"), self.device):
                return interpreter.explain(state, victim, x, ctx).clamp(0, 1)

        mkey = make_key("masks", {"split": "train", "limit": limit, "options": options}, [ikey])
        masks = self.stage("masks", f"{iname} on {target}: training masks", mkey, lambda: {
            "masks": self.batched(explain, train_x, f"masks {iname}/{target} (train)").half()})["masks"]

        creg = self.suite.component("mask_classifier")[0]
        f2, ckey = self.train_classifier("mask_classifier", "", mkey, masks.float(), train_y, data.num_classes,
                                         spec.mask_classifier.checkpoint, f"{creg.name} on {iname}/{target} masks",
                                         ("mask-classifier", target, iname))

        def f2_labels(x: torch.Tensor, label: str) -> torch.Tensor:
            return self.predict(nn.Sequential(_Explain(explain), f2), x, label)

        # f2 accuracy on the benign evaluation masks
        bkey = make_key("mask-labels", {"set": "eval", "subset": self.subset_key}, [ckey])
        benign_f2 = self.stage("masks", f"{iname} on {target}: evaluation mask labels", bkey,
                               lambda: {"labels": f2_labels(eval_x, f"f2 labels {iname}/{target}")})["labels"]
        read, truth = benign_f2, eval_y
        n_mask_eval = spec.interpreters[iname].n_mask_eval or spec.evaluation.n_mask_eval
        if n_mask_eval is not None:
            # f2's accuracy on more test images than are attacked: a 300-image estimate is +-5 points
            idx = self.test_order(data)[:n_mask_eval]
            akey = make_key("mask-labels", {"set": "accuracy", "subset": _tensor_digest(idx)}, [ckey])
            read = self.stage("masks", f"{iname} on {target}: f2 accuracy on {len(idx)} test masks", akey,
                              lambda: {"labels": f2_labels(data.test_x[idx], f"f2 accuracy {iname}/{target}")}
                              )["labels"]
            truth = data.test_y[idx]
        accuracy = float((read == truth).float().mean()) if len(truth) else None
        if accuracy is not None:
            log.info("f2 (%s on %s masks of %s) reads %.4f of %d clean test masks%s", creg.name, iname, target,
                     accuracy, len(truth), self._where())
        counts = torch.bincount(read, minlength=data.num_classes)
        majority = float(counts.max() / max(1, len(read))) if len(read) else None
        row = {"victim": target, "interpreter": iname, "plugin": ireg.name, "mask_classifier": creg.name,
               "mask_classifier_accuracy": accuracy, "majority_class_share": majority, "n_accuracy_masks": len(read),
               "n_train_masks": len(masks), "mask_channels": int(masks.shape[1]), **self._sweep()}
        env = DetectorEnv(victim, data.train_x, data.train_y, data.num_classes, explain=explain, mask_classifier=f2)
        return env, ckey, row, f2_labels

    # ------------------------------------------------------------------ attacks
    def attack(self, aname: str, source: str, model: nn.Module, victim_key: str, eval_x, eval_y, fit_x, fit_y,
               subset_key: str) -> dict[str, Any]:
        areg, aoptions = self.suite.component("attacks", aname)
        attack = areg.cls(aoptions)
        x = torch.cat([eval_x, fit_x])
        y = torch.cat([eval_y, fit_y])
        config = {"options": _options_dict(aoptions), "seed": self.spec.seed, "batch_size": self.spec.batch_size,
                  "salt": ["attack", aname, source],
                  "subset": subset_key}
        base_key = make_key("adversarial", config, [victim_key], plugin_identity(areg))
        chunks = []
        starts = list(range(0, len(x), CHUNK))
        label = f"{aname} on {source}"
        start_time = time.perf_counter()
        cached_all = True
        for start in self.ctx().track(starts, f"attack {label}", len(starts)):
            chunk_key = make_key("adversarial-chunk", {"start": start, "size": CHUNK}, [base_key])
            payload = self.cache.load(chunk_key)
            if payload is None:
                cached_all = False
                xs, ys = x[start:start + CHUNK], y[start:start + CHUNK]
                payload = {"x": self._run_attack(attack, model, xs, ys, self.ctx("attack", aname, source, start))}
                self.cache.save(chunk_key, payload, stage="adversarial", description=f"{label} [{start}:]")
            chunks.append(payload["x"])
        self.records.append(StageRecord("adversarial", label, round(time.perf_counter() - start_time, 3), cached_all))
        x_adv = torch.cat(chunks) if chunks else torch.empty_like(x)
        pred_clean = self.predict(model, x)
        pred_adv = self.predict(model, x_adv)
        # an attack succeeds on an input the victim classified correctly and now misclassifies
        success = (pred_clean == y) & (pred_adv != y)
        delta = (x_adv - x).flatten(1)
        n_eval = len(eval_x)
        ok = success[:n_eval]
        d = delta[:n_eval][ok]
        row = {"attack": aname, "plugin": areg.name, "norm": areg.cls.norm, "source": source, "n": n_eval,
               "n_success": int(ok.sum()),
               "success_rate": float(ok.float().mean()) if n_eval else None,
               "n_correct": int((pred_clean[:n_eval] == y[:n_eval]).sum()),
               "mean_linf": float(d.abs().amax(1).mean()) if len(d) else None,
               "mean_l2": float(d.norm(dim=1).mean()) if len(d) else None,
               "mean_l0": float((d.abs() > 1e-6).float().sum(1).mean()) if len(d) else None,
               "l0_unit": "input elements (C x H x W) changed by more than 1e-6",
               **self._sweep()}
        return {"x_adv": x_adv, "success": success, "pred_adv": pred_adv, "key": base_key, "row": row}

    def _run_attack(self, attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        out = []
        for start in range(0, len(x), ctx.batch_size):
            xb = x[start:start + ctx.batch_size].to(self.device)
            yb = y[start:start + ctx.batch_size].to(self.device)
            batch_ctx = ctx.child(start)
            with seeded(batch_ctx.seed, self.device):
                adv = attack.run(model, xb, yb, batch_ctx).detach()
            if adv.shape != xb.shape:
                raise AdvbenchError(f"attack {attack.name!r} returned shape {tuple(adv.shape)} for input "
                                    f"{tuple(xb.shape)}")
            out.append(adv.clamp(0, 1).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ detection
    def detect(self, dname: str, iname: Optional[str], source: str, target: str, env: DetectorEnv, env_key: str,
               adversarial, eval_x, eval_y, fit_x, f2_labels, subset_key: str):
        dreg, doptions = self.suite.component("detectors", dname)
        rows, worst_inputs = [], {}
        n_eval = len(eval_x)
        benign_cache: dict[str, Any] = {}
        adversarial_fit = dreg.cls.needs_adversarial_fit
        ctx = self.ctx("detector", dname, iname, target)
        fitted: dict[str, Any] = {}  # key -> detector fitted on it, fitted only when a stage must compute
        name = f"{dname}{'/' + iname if iname else ''} on {target}"
        for aname in self.spec.attacks:
            adv = adversarial[(aname, source)]
            fit_success = adv["success"][n_eval:]
            fit_adv = adv["x_adv"][n_eval:][fit_success] if adversarial_fit else fit_x[:0]
            fit_on = [env_key, subset_key] + ([adv["key"]] if adversarial_fit else [])
            key = make_key("scores", {"options": _options_dict(doptions), "seed": self.spec.seed,
                                      "salt": ["detector", dname, iname, target]}, fit_on,
                           plugin_identity(dreg))
            label = f"{name}, {aname} from {source}"

            def detector(key: str = key, fit_adv: torch.Tensor = fit_adv):
                if key not in fitted:
                    fitted.clear()
                    fitted[key] = dreg.cls(doptions)
                    with seeded(ctx.derive_seed("fit"), self.device):
                        fitted[key].fit(env, fit_x, fit_adv, ctx)
                return fitted[key]

            def score_adversarial(label: str = label, adv: dict = adv) -> dict[str, Any]:
                return {"adversarial": self._score(detector(), env, adv["x_adv"][:n_eval], ctx,
                                                   f"score adversarial ({label})")}

            if adversarial_fit:  # fitted per attack: its benign scores belong to this attack
                scores = self.stage("scores", label, make_key("scores-for", {}, [key, adv["key"]]), lambda: {
                    "benign": self._score(detector(), env, eval_x, ctx, f"score benign ({label})"),
                    **score_adversarial()})
            else:  # fitted on benign data alone: one benign scoring serves every attack
                benign = self.stage("scores", f"{name}, benign", make_key("scores-benign", {}, [key]), lambda: {
                    "benign": self._score(detector(), env, eval_x, ctx, f"score benign ({name})")})["benign"]
                scores = {"benign": benign, **self.stage("scores", label, make_key("scores-adversarial", {},
                                                                                   [key, adv["key"]]),
                                                         score_adversarial)}
            labels = None
            if f2_labels is not None:
                lkey = make_key("mask-labels", {"set": "adversarial"}, [env_key, adv["key"]])
                labels = self.stage("masks", f"f2 labels {iname}/{target} on {aname} from {source}", lkey, lambda: {
                    "labels": f2_labels(adv["x_adv"][:n_eval], f"f2 labels {aname}/{source}")})["labels"]
                if "benign" not in benign_cache:
                    bkey = make_key("mask-labels", {"set": "eval", "subset": subset_key}, [env_key])
                    benign_cache["benign"] = self.stage("masks", f"f2 labels {iname}/{target} benign", bkey, lambda: {
                        "labels": f2_labels(eval_x, f"f2 labels benign {iname}/{target}")})["labels"]
            success = adv["success"][:n_eval]
            worst_inputs[aname] = (scores, success)
            for subset in ("all", "filtered") if (labels is not None and self.spec.evaluation.filtered) else ("all",):
                keep = torch.ones(n_eval, dtype=torch.bool)
                if subset == "filtered":
                    keep = benign_cache["benign"] == eval_y
                for population in ("successful", "attacked"):
                    chosen = keep & success if population == "successful" else keep
                    row = {"detector": dname, "interpreter": iname, "attack": aname, "source": source, "target": target,
                           "subset": subset, "population": population,
                           "score_definition": dreg.cls.score_definition if hasattr(dreg.cls, "score_definition")
                           else dreg.cls.description, **self._sweep()}
                    row.update(self._metrics(scores, chosen))
                    if labels is not None:
                        adv_labels = labels[chosen]
                        row["mask_invariance"] = metrics.mask_invariance(benign_cache["benign"][chosen], adv_labels) \
                            if chosen.any() else None
                        row["recovery_rate"] = metrics.recovery_rate(adv_labels, eval_y[chosen]) if chosen.any() else None
                    else:
                        row["mask_invariance"] = row["recovery_rate"] = None
                    rows.append(row)
        worst = []
        if len(worst_inputs) > 1:
            per_attack = {a: (s["adversarial"]["score"], s["adversarial"]["flag"], ok) for a, (s, ok) in worst_inputs.items()}
            first = next(iter(worst_inputs.values()))[0]
            summary = metrics.worst_case(per_attack, first["benign"]["score"], first["benign"]["flag"])
            worst.append({"detector": dname, "interpreter": iname, "source": source, "target": target, "subset": "all",
                          **summary, **self._sweep()})
        return rows, worst

    def _score(self, detector, env: DetectorEnv, x: torch.Tensor, ctx: RunContext, label: str) -> dict[str, Any]:
        scores, flags = [], []
        steps = range(0, len(x), ctx.batch_size)
        for start in ctx.track(steps, label, len(steps)):
            with seeded(ctx.derive_seed("score", start), self.device):
                out = detector.score(env, x[start:start + ctx.batch_size].to(self.device), ctx)
            scores.append(out.score.detach().float().cpu())
            if out.flag is not None:
                flags.append(out.flag.detach().bool().cpu())
        return {"score": torch.cat(scores) if scores else torch.empty(0),
                "flag": torch.cat(flags) if flags else None}

    def _metrics(self, scores: dict[str, Any], chosen: torch.Tensor) -> dict[str, Any]:
        benign, adv = scores["benign"], scores["adversarial"]
        bf = benign["flag"][chosen] if benign["flag"] is not None else None
        af = adv["flag"][chosen] if adv["flag"] is not None else None
        return metrics.detection_metrics(benign["score"][chosen], adv["score"][chosen], bf, af)

    def _sweep(self) -> dict[str, Any]:
        return {"sweep": dict(self.sweep_values)} if self.sweep_values else {}

    def _where(self) -> str:
        if not self.sweep_values:
            return ""
        changed = {k: v for k, v in self.sweep_values.items() if k not in self.sweep_base or self.sweep_base[k] != v}
        where = ", ".join(f"{k}={v}" for k, v in changed.items()) or "the suite's own setting"
        return f" [sweep point {where}]"

    # ------------------------------------------------------------------ warnings and gallery
    def warnings(self, results: dict[str, Any]) -> list[str]:
        found = []
        suffix = self._where()
        for row in results["interpreters"]:
            share = row.get("majority_class_share")
            if share is not None and share > 0.5:
                found.append(f"mask classifier on {row['interpreter']}/{row['victim']} predicts one class for "
                             f"{share:.0%} of benign masks: its detections mostly reflect label shift{suffix}")
        baseline = {(r["attack"], r["source"], r["target"], r["subset"], r["population"]): r["auroc"]
                    for r in results["detection"] if r["detector"] == "label-only"}
        for r in results["detection"]:
            ref = baseline.get((r["attack"], r["source"], r["target"], r["subset"], r["population"]))
            if r["detector"] != "label-only" and ref is not None and r["auroc"] is not None \
                    and r["population"] == "successful" and abs(r["auroc"] - ref) <= 0.05:
                found.append(f"{r['detector']}{'/' + r['interpreter'] if r['interpreter'] else ''} on {r['attack']} "
                             f"({r['source']}->{r['target']}, {r['subset']}): AUROC {r['auroc']:.3f} is within 0.05 of "
                             f"label-only's {ref:.3f}{suffix}")
        return found

    def build_gallery(self, targets, envs, mask_labels, adversarial, eval_x, eval_y, classes, victims) -> list[dict]:
        gallery = []
        n_examples = min(4, len(eval_x))
        for (target, iname), env in envs.items():
            if iname is None or env.explain is None:
                continue
            with torch.no_grad():
                per_class_idx = [int((eval_y == c).nonzero()[0]) for c in range(len(classes)) if (eval_y == c).any()]
                idx = torch.tensor(per_class_idx, dtype=torch.long)

                def describe(x: torch.Tensor) -> dict[str, torch.Tensor]:
                    xd = x.to(self.device)
                    masks = env.explain(xd)
                    # clone: torch.save stores a view's whole storage (the full evaluation set)
                    return {"x": x.cpu().clone(), "mask": masks.cpu().float().clone(),
                            "f1": victims[target](xd).argmax(1).cpu(), "f2": env.mask_classifier(masks).argmax(1).cpu()}

                per_class = {**describe(eval_x[idx]), "y": eval_y[idx]}
                examples = {**describe(eval_x[:n_examples]), "y": eval_y[:n_examples].clone(), "adversarial": {}}
                for (aname, source), adv in adversarial.items():
                    if source != target:
                        continue
                    entry = describe(adv["x_adv"][:n_examples])
                    entry["success"] = adv["success"][:n_examples].clone()
                    examples["adversarial"][aname] = entry
            gallery.append({"victim": target, "interpreter": iname, "classes": list(classes), "per_class": per_class,
                            "examples": examples})
        return gallery


class _Explain(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- the whole run

def run_suite(suite: Suite, run_dir: Path, device: torch.device, cache: Cache, limit: Optional[int] = None,
              progress=None, command: str = "") -> dict[str, Any]:
    """Run every sweep point of ``suite`` and write results.json, CSV tables and gallery.pt into ``run_dir``.

    On an interruption (Ctrl-C) or a failure the results computed so far are written with ``complete: false``
    before the exception propagates; everything cached stays cached.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "suite": suite.name, "suite_file": suite.source, "command": command, "advbench_version": advbench.__version__,
        "seed": suite.spec.seed, "device": str(device), "torch_version": torch.__version__,
        "python_version": platform.python_version(), "started": started.isoformat(timespec="seconds"),
        "git_commit": _git_commit(run_dir), "host": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                              "cuda_device": torch.cuda.get_device_name(0) if device.type == "cuda"
                                              else None},
        "limit": limit, "complete": False, "missing": [],
        "plugins": [{"kind": r.kind, "name": r.name, "distribution": r.distribution, "version": r.version}
                    for r in plugins.components()],
        "sweep_fields": suite.sweep_fields(), "sweep_base": {f: suite.value_at(f) for f in suite.sweep_fields()},
        "paper_reference": suite.spec.paper_reference,
        "victims": {}, "interpreters": [], "attacks": [], "detection": [], "worst_case": [], "warnings": [],
        "stages": [],
    }
    gallery: list = []
    points = suite.points()
    ereg, eoptions = suite.component("executor")
    executor = ereg.cls(eoptions)
    runners: list[Runner] = []
    finished: list[dict[str, Any]] = []

    def stage_records() -> list[dict[str, Any]]:
        return [vars(record) for runner in runners for record in runner.records]

    def run_point(point) -> dict[str, Any]:
        values, point_suite = point
        runner = Runner(point_suite, run_dir, device, cache, limit, progress, values,
                        sweep_base=results["sweep_base"])
        runners.append(runner)
        out = runner.run()
        out["_gallery"] = runner.gallery
        out["_sweep"] = values
        finished.append(out)
        if len(finished) < len(points):  # a long sweep's finished points can be read while the rest run
            snapshot = copy.deepcopy({k: v for k, v in results.items() if k != "stages"})
            for done in finished:
                _merge(snapshot, done)
            snapshot["missing"].append(f"in progress: {len(finished)} of {len(points)} sweep points finished")
            snapshot["stages"] = stage_records()
            write_outputs(run_dir, snapshot, finished[0]["_gallery"])
        return out

    error: Optional[BaseException] = None
    try:
        for out in executor.map(run_point, points):
            _merge(results, out)
            if not gallery:
                gallery = out["_gallery"]
        results["complete"] = True
    except BaseException as exc:  # record what was computed, then re-raise
        error = exc
        for runner in runners:
            _merge(results, {**getattr(runner, "partial", {}), "_sweep": runner.sweep_values})
        done = sum(len(r.records) for r in runners)
        results["missing"].append(f"stopped by {type(exc).__name__} after {done} stages; run the same command "
                                  "again to resume from the cache")
        for section in ("victims", "interpreters", "attacks", "detection"):
            if not results[section]:
                results["missing"].append(f"{section}: not computed")
    finally:
        results["stages"] = stage_records()
        results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results["wall_seconds"] = round(time.perf_counter() - t0, 2)
        write_outputs(run_dir, results, gallery)
    if error is not None:
        raise error
    return results


def _git_commit(run_dir: Optional[Path] = None) -> Optional[str]:
    """The checkout's commit (with '+dirty' for uncommitted changes outside the run folder, which the run itself
    writes), for the run's provenance; None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        if run_dir is not None:
            status += ["--", ".", f":(exclude){Path(os.path.abspath(run_dir))}"]
        dirty = subprocess.run(status, cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _merge(results: dict[str, Any], out: dict[str, Any]) -> None:
    for key in ("interpreters", "attacks", "detection", "worst_case", "warnings"):
        results[key].extend(out.get(key, []))
    results["victims"].update(out.get("victims", {}))
    if out.get("_sweep"):  # a swept field may change a victim: keep every point's
        results.setdefault("points", []).append({"sweep": out["_sweep"], "victims": out.get("victims", {})})
    results.setdefault("dataset", out.get("dataset"))
    results.setdefault("evaluation", out.get("evaluation"))
