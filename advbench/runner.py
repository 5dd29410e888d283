"""The driver: turns a suite into a plan of stage nodes, hands ready nodes to an executor, and writes the run folder.

The plan (advbench.plan) is a graph of pure nodes keyed by their cache keys; the stage functions
(advbench.stages) compute them; an executor (local, processes, ray, ...) runs them wherever it likes and sends
back stage records and progress events as data. This module keeps only the loop and the bookkeeping: which
nodes are ready, what is already cached, and the results tables read from the finished nodes' artifacts.
results.json is written whenever a sweep point finishes and at the end, also after an interruption or a
failure (``complete: false``), and everything computed stays cached, so the same command resumes.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import torch

import advbench
from advbench import metrics, plugins, security
from advbench.cache import Cache
from advbench.errors import AdvbenchError
from advbench.outputs import write_outputs
from advbench.plan import ADAPTIVE_FPR, Node, Plan, Point, Settings, build_plan, data_node
from advbench.devices import AUTO_BATCH_CAP, DEFAULT_BATCH, fits_forward_backward, largest_fitting, resolve_device
from advbench.seeds import seed_summary
from advbench.selection import sweep_choice
from advbench.stages import (InputMissing, attack_success, calibration_indices, expected_fields, has_fields,
                             load_dataset, run_node, subset_indices, validation_indices)
from advbench.threat import NORMS, l0_unit
from advbench.suite import Suite

log = logging.getLogger("advbench.run")


class Driver:
    """Runs a plan's nodes through an executor: each node once its inputs are in the cache."""

    def __init__(self, plan: Plan, cache: Cache, executor: Any, on_event: Callable[[dict], None]) -> None:
        self.plan = plan
        self.cache = cache
        self.executor = executor
        self.on_event = on_event
        self.records: list[dict[str, Any]] = []
        self.done: set[str] = set()
        self.failed: list[dict[str, Any]] = []  # cells whose plugin failed, with what they kept from running
        self.broken: set[str] = set()

    def check_cached(self) -> None:
        """What the cache already holds (a damaged entry is reported, removed and so recomputed)."""
        for key, node in self.plan.nodes.items():
            if not node.stored:  # read from elsewhere (a checkpoint file) by whoever needs it
                self.done.add(key)
            elif self.cache.verify(key):
                self.done.add(key)
                self.records.append({"stage": _record_stage(node), "label": node.label, "seconds": 0.0,
                                     "cached": True, "key": key, "forwards": {}})
        stored = sum(node.stored for node in self.plan.nodes.values())
        log.info("plan: %d nodes to store, %d already in the cache", stored,
                 sum(1 for r in self.records if r["cached"]))

    def _unread_intermediates(self, wanted: set[str]) -> set[str]:
        """Intermediate nodes (shared forwards) whose every reader is already in the cache: nothing would read
        them, so a cache filled before they existed is not recomputed for them."""
        from advbench.stages import INTERMEDIATE

        readers: dict[str, list[str]] = {}
        for key, node in self.plan.nodes.items():
            for i in node.inputs:
                readers.setdefault(i, []).append(key)
        return {key for key, node in self.plan.nodes.items()
                if node.stage in INTERMEDIATE and key not in self.done
                and all(r in self.done or r not in wanted for r in readers.get(key, []))}

    def run(self, targets: Optional[set[str]] = None, on_finished: Optional[Callable[[], None]] = None) -> None:
        """Compute every node of ``targets`` (default: all) not yet done, inputs first."""
        nodes = self.plan.nodes
        wanted = set(nodes) if targets is None else self._closure(targets)
        wanted -= self._unread_intermediates(wanted)
        todo = [k for k in nodes if k in wanted and k not in self.done]
        pending = {k: {i for i in nodes[k].inputs if i not in self.done} for k in todo}
        submitted: set[str] = set()
        self._progress_total(todo)
        order = {key: (self.plan.rank.get(key, 0), i) for i, key in enumerate(nodes)}
        slots = max(1, int(getattr(self.executor, "slots", 1) or 1))
        while pending:
            # no more in flight than the executor has slots, earliest sweep point first: a sweep's points finish
            # (and can be read) in order, and the executor's queue never runs ahead of what is most needed
            ready = sorted((k for k, needs in pending.items() if not needs and k not in submitted), key=order.get)
            for key in ready[:max(0, slots - len(submitted))]:
                log.info("%s %s: start (key %s)", _record_stage(nodes[key]), nodes[key].label, key[:12])
                self.executor.submit(run_node, nodes[key])
                submitted.add(key)
            if not submitted:
                missing = {i for needs in pending.values() for i in needs if i not in nodes}
                raise RuntimeError(f"plan has inputs no node computes: {sorted(missing)[:3]}")
            for node, outcome in self.executor.wait(timeout=0.5):
                submitted.discard(node.key)
                if isinstance(outcome, InputMissing) and outcome.key in nodes:
                    # an input vanished or was found corrupt: compute it again, then this node
                    lost = outcome.key
                    self.done.discard(lost)
                    self.records = [r for r in self.records if r["key"] != lost]
                    pending[lost] = {i for i in nodes[lost].inputs if i not in self.done}
                    for key, needs in pending.items():
                        if lost in nodes[key].inputs or key == node.key:
                            needs.add(lost)
                    continue
                if isinstance(outcome, BaseException):
                    if not _contained(outcome):
                        raise outcome
                    self._fail(node, outcome, pending)
                    continue
                log.info("%s %s: %.1fs%s", outcome["stage"], node.label, outcome["seconds"],
                         " (cached)" if outcome["cached"] else "")
                pending.pop(node.key, None)
                self.done.add(node.key)
                self.records.append({**{k: outcome[k] for k in ("stage", "label", "seconds", "cached", "key")},
                                     "forwards": outcome.get("forwards", {})})
                self.on_event({"type": "node", "stage": outcome["stage"]})
                for needs in pending.values():
                    needs.discard(node.key)
                if on_finished is not None:
                    on_finished()

    def _fail(self, node: Node, error: BaseException, pending: dict[str, set[str]]) -> None:
        """A cell whose plugin broke its contract (or raised): recorded, its dependents skipped, the grid goes on."""
        from advbench.boundary import PluginOutputError, who

        message = str(error) if isinstance(error, PluginOutputError) else \
            f"{who(node.plugin)}: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        skipped = self._dependents(node.key, pending)
        # run.log only: the screen gets one line per failed cell when the run ends
        log.info("%s %s failed: %s; %d node(s) that need it skipped", _record_stage(node), node.label, message,
                 len(skipped))
        self.failed.append({"stage": _record_stage(node), "label": node.label, "error": message,
                            "skipped": [self.plan.nodes[k].label for k in skipped]})
        for key in [node.key, *skipped]:
            pending.pop(key, None)
            self.broken.add(key)

    def _dependents(self, key: str, pending: dict[str, set[str]]) -> list[str]:
        found: list[str] = []
        frontier = {key}
        while frontier:
            new = [k for k in pending if k not in found and k != key and frontier & set(self.plan.nodes[k].inputs)]
            found.extend(new)
            frontier = set(new)
        return found

    def _closure(self, targets: set[str]) -> set[str]:
        found, stack = set(), list(targets)
        while stack:
            key = stack.pop()
            if key in found or key not in self.plan.nodes:
                continue
            found.add(key)
            stack.extend(self.plan.nodes[key].inputs)
        return found

    def _progress_total(self, todo: list[str]) -> None:
        counts: dict[str, int] = {}
        for key in todo:
            stage = _record_stage(self.plan.nodes[key])
            counts[stage] = counts.get(stage, 0) + 1
        self.on_event({"type": "plan", "stages": counts})

    def load(self, key: str) -> Any:
        """A finished node's artifact; a damaged one is computed again (with whatever of its inputs is lost)."""
        check = has_fields(expected_fields(self.plan.nodes[key])) if key in self.plan.nodes else None
        payload = self.cache.load(key, check=check)
        if payload is None and key in self.plan.nodes:
            self.done.discard(key)
            self.records = [r for r in self.records if r["key"] != key]
            self.run({key})
            payload = self.cache.load(key, check=check)
        if payload is None:
            raise RuntimeError(f"cache entry {key[:12]} could not be computed")
        return payload


def _contained(error: BaseException) -> bool:
    """A plugin's broken output or its own exception fails one cell; a user's configuration error, an
    interruption or an exit stops the run."""
    from advbench.boundary import PluginOutputError

    if isinstance(error, PluginOutputError):
        return True
    return isinstance(error, Exception) and not isinstance(error, AdvbenchError)


def _record_stage(node: Node) -> str:
    from advbench.stages import record_stage

    return record_stage(node)


# ---------------------------------------------------------------------- results from finished nodes


class Assembler:
    """Reads a point's rows from its nodes' artifacts; a row whose nodes are not all done is left out."""

    def __init__(self, driver: Driver, data: Any, eval_y: torch.Tensor, eval_x: torch.Tensor, fit_y: torch.Tensor,
                 spec_filtered: bool, sweep_base: dict[str, Any], benign: str = "natural",
                 validation_y: Optional[torch.Tensor] = None) -> None:
        self.driver = driver
        self.data = data
        self.eval_x, self.eval_y, self.fit_y = eval_x, eval_y, fit_y
        self.validation_y = validation_y
        self.filtered = spec_filtered
        self.benign = benign
        self.sweep_base = sweep_base
        self.logged: set[tuple[int, str]] = set()

    def ready(self, *keys: Optional[str]) -> bool:
        return all(k is None or k in self.driver.done or k not in self.driver.plan.nodes for k in keys)

    def point(self, point: Point) -> dict[str, Any]:
        # what every row of this point carries: its sweep point and its training seed, where there are several
        tags = {**({"sweep": dict(point.values)} if point.values else {}),
                **({"seed": point.seed} if point.seed is not None else {})}
        out: dict[str, Any] = {"victims": {}, "interpreters": [], "attacks": [], "detection": [], "unseen": [],
                               "controls": [], "worst_case": [], "security": [], "comparisons": [], "validation": [], "warnings": [],
                               "_sweep": point.values, "_seed": point.seed}
        load = self.driver.load
        for name, entry in point.victims.items():
            if self.ready(entry["accuracy"]):
                out["victims"][name] = {"plugin": entry["plugin"],
                                        "clean_accuracy": load(entry["accuracy"])["accuracy"]}
        for entry in point.interpreters:
            if not self.ready(entry["accuracy_labels"], entry["eval_labels"]):
                continue
            read = load(entry["accuracy_labels"])["labels"]
            truth = self.eval_y if entry["accuracy_set"] == "eval" else \
                self.data.test_y[_test_order_idx(self.driver.plan, entry["n_mask_eval"])]
            accuracy = float((read == truth).float().mean()) if len(truth) else None
            if accuracy is not None and (id(point), entry["accuracy_labels"]) not in self.logged:
                self.logged.add((id(point), entry["accuracy_labels"]))  # once, though snapshots re-read the point
                log.info("f2 (%s on %s masks of %s) reads %.4f of %d clean test masks%s", entry["mask_classifier"],
                         entry["interpreter"], entry["target"], accuracy, len(truth), self.where(point))
            counts = torch.bincount(read, minlength=self.data.num_classes)
            out["interpreters"].append({
                "victim": entry["target"], "interpreter": entry["interpreter"], "plugin": entry["plugin"],
                "mask_classifier": entry["mask_classifier"], "mask_classifier_accuracy": accuracy,
                "majority_class_share": float(counts.max() / max(1, len(read))) if len(read) else None,
                "n_accuracy_masks": len(read), "n_train_masks": entry["n_train_masks"],
                "mask_channels": self.mask_channels(entry), **tags})
            if entry.get("matched_to") and self.ready(entry["f2"].key):
                out["interpreters"][-1]["accuracy_match"] = load(entry["f2"].key).get("matched")
        attacks = {}
        for entry in point.attacks:
            if not self.ready(entry["key"]):
                continue
            adv = load(entry["key"])
            attacks[entry["key"]] = adv
            row = self.attack_row(entry, adv, tags)
            for t in point.transfers:
                if (t["attack"], t["source"]) == (entry["attack"], entry["source"]) and self.ready(t["key"]):
                    row.setdefault("transfer", {})[t["target"]] = self.transfer(adv, self.driver.load(t["key"]))
            out["attacks"].append(row)
        self.detection(point, attacks, out, tags)
        for cell in point.unavailable:  # adaptive cells that could not run say why, in the same table
            out["security"].append({**security.unavailable_row(**cell), **tags})
        return out

    def mask_channels(self, entry: dict[str, Any]) -> Optional[int]:
        """The masks' channel count (stored beside f2's labels of the evaluation masks)."""
        channels = self.driver.load(entry["eval_labels"]).get("mask_channels")
        if channels is None:  # an entry made before the count was stored: read the training masks
            channels = int(self.driver.load(entry["interp"]["masks_key"])["masks"].shape[1])
        return channels

    def attack_row(self, entry: dict[str, Any], adv: dict[str, Any], tags: dict[str, Any]) -> dict[str, Any]:
        n_eval = len(self.eval_x)
        y = torch.cat([self.eval_y, self.fit_y])[:len(adv["pred_clean"])]  # adaptive sets: evaluation images only
        # an attack succeeds on an input the victim classified correctly and now misclassifies (a targeted one:
        # now gives the target)
        ok = attack_success(adv, y)[:n_eval]
        correct = adv["pred_clean"][:n_eval] == y[:n_eval]
        # successes on the attack's raw output that rounding onto the data's grid undid: counted, not hidden
        undone = correct & adv["success_unquantized"][:n_eval] & ~ok
        norms = {name: values[:n_eval][ok] for name, values in adv["norms"].items()}
        threat = entry["threat_model"]
        against = {"detector": entry["detector"], "interpreter": entry["interpreter"]} \
            if entry.get("knowledge") == "adaptive" else {}

        def summary(how: str, name: str) -> Optional[float]:
            values = norms[name]
            if not len(values):
                return None
            return float(values.mean() if how == "mean" else values.median())

        return {"attack": entry["attack"], "plugin": entry["plugin"], "norm": entry["norm"], "source": entry["source"],
                "knowledge": entry.get("knowledge", "oblivious"), **against, "steps": entry.get("steps"),
                "threat_model": {k: threat[k] for k in ("norm", "eps", "quantize", "targeted", "levels")},
                "eps": threat["eps"], "n": n_eval, "n_success": int(ok.sum()),
                "success_rate": float(ok.float().mean()) if n_eval else None,
                "n_correct": int(correct.sum()),
                # the field's convention: of the inputs the victim classified correctly, the share it now gets wrong
                "success_rate_correct": float(ok.sum() / max(1, int(correct.sum()))) if n_eval else None,
                "quantization_undone": int(undone.sum()),
                **{f"{how}_{name}": summary(how, name) for how in ("mean", "median") for name in NORMS},
                "l0_unit": l0_unit(threat["levels"]), **tags}

    def transfer(self, adv: dict[str, Any], target: dict[str, torch.Tensor]) -> dict[str, Any]:
        """How the source's adversarial inputs fare against another victim (the evaluation images)."""
        n_eval = len(self.eval_x)
        y = self.eval_y
        fools_source = attack_success(adv, torch.cat([y, self.fit_y]))[:n_eval]
        target_correct = target["pred_clean"] == y
        fools_target = target_correct & (target["pred_adv"] != y)
        both = fools_source & target_correct
        return {"n_target_correct": int(target_correct.sum()), "n_fools_target": int(fools_target.sum()),
                "fools_target_rate": float(fools_target.sum() / max(1, int(target_correct.sum()))),
                # of the inputs that fool the source (and the target classified right), the share fooling it too
                "transfer_rate": float((both & fools_target).sum() / max(1, int(both.sum())))
                if both.any() else None}

    def detection(self, point: Point, attacks: dict, out: dict[str, Any], tags: dict[str, Any]) -> None:
        n_eval = len(self.eval_x)
        y = torch.cat([self.eval_y, self.fit_y])
        groups: dict[tuple, dict[str, Any]] = {}
        # per (attack set, pair, subset, population): every detector's scores on the same inputs, for paired tests
        same_inputs: dict[tuple, dict[str, tuple]] = {}
        for d in point.detections:
            if d["attack_key"] not in attacks or not self.ready(d["benign"], d["adversarial"], d["labels"],
                                                                d["benign_labels"], d.get("calibration"),
                                                                d.get("transfer")):
                continue
            adv = attacks[d["attack_key"]]
            success = attack_success(adv, y)[:n_eval]
            benign = self.driver.load(d["benign"])["benign"]
            scores = {"benign": benign, "adversarial": self.driver.load(d["adversarial"])["adversarial"]}
            calibration = self.driver.load(d["calibration"])["calibration"]["score"] if d.get("calibration") else None
            labels = self.driver.load(d["labels"])["labels"] if d["labels"] else None
            benign_labels = self.driver.load(d["benign_labels"])["labels"] if d["benign_labels"] else None
            # the target victim's own labels of a transferred set: its rows and its security row judge by them
            target = self.driver.load(d["transfer"]) if d.get("transfer") else None
            # one fitted model's scores: a detector fitted per attack has one model per fit attack
            group = groups.setdefault((d["detector"], d["interpreter"], d["source"], d["target"], d.get("fit_attack")),
                                      {})
            group[d["attack"]] = (scores, success)
            unseen = d.get("protocol") == "unseen"
            if calibration is not None and not unseen:
                judged_by = adv if target is None else target
                out["security"].append(self.security(d, adv, judged_by, scores["adversarial"]["score"], calibration,
                                                     tags))
            subsets = ("all", "filtered") if (labels is not None and self.filtered) else ("all",)
            for subset in subsets:
                keep = torch.ones(n_eval, dtype=torch.bool)
                if subset == "filtered":
                    keep = benign_labels == self.eval_y
                populations = {"successful": keep & success, "attacked": keep}
                if target is not None:  # transfer rows: positives that fool the target, whatever the source did
                    populations["fools-target"] = keep & (target["pred_clean"] == self.eval_y) & \
                        (target["pred_adv"] != self.eval_y)
                for population, chosen in populations.items():
                    # negatives: every evaluation image of the subset (natural), or only the chosen ones' originals
                    negatives = keep if self.benign == "natural" else chosen
                    row = {"detector": d["detector"], "interpreter": d["interpreter"], "attack": d["attack"],
                           "knowledge": d.get("knowledge", "oblivious"), "protocol": d.get("protocol"),
                           "fit_attack": d.get("fit_attack"),
                           "source": d["source"], "target": d["target"], "subset": subset, "population": population,
                           "benign_population": self.benign, "n_benign": int(negatives.sum()),
                           "score_definition": d["score_definition"], **tags}
                    row.update(_metrics(scores, negatives, chosen))
                    if not unseen:
                        same_inputs.setdefault((d["attack_key"], d["attack"], d["source"], d["target"], subset, population),
                                               {})[_label(d)] = (scores["benign"]["score"][negatives],
                                                                 scores["adversarial"]["score"][chosen], row["auroc"],
                                                                 d.get("role"))
                    if calibration is not None:  # thresholds from held-out benign images, the same for every row
                        row["calibrated"] = metrics.calibrated_metrics(
                            calibration, scores["benign"]["score"][negatives], scores["adversarial"]["score"][chosen])
                        for name, reading in row["calibrated"].items():
                            row[f"tpr_cal_{name[4:]}"] = reading["tpr"] if reading else None
                            row[f"fpr_cal_{name[4:]}"] = reading["fpr"] if reading else None
                    if labels is not None:
                        adv_labels = labels[chosen]
                        row["mask_invariance"] = metrics.mask_invariance(benign_labels[chosen], adv_labels) \
                            if chosen.any() else None
                        row["recovery_rate"] = metrics.recovery_rate(adv_labels, self.eval_y[chosen]) \
                            if chosen.any() else None
                    else:
                        row["mask_invariance"] = row["recovery_rate"] = None
                    out["unseen" if unseen else "detection"].append(row)
            if not unseen:
                out["validation"].extend(self.validation(d, tags))
        out["comparisons"].extend(_comparisons(same_inputs, tags))
        out["controls"].extend(_against_controls(same_inputs, tags))
        # a detector fitted per attack: its worst case reads the model of the unseen protocol (evaluation.unseen_fit)
        unseen_model = {(d["detector"], d["interpreter"], d["source"], d["target"]): d["fit_attack"]
                        for d in point.detections if d.get("protocol") == "unseen"}
        for (dname, iname, source, target, fit_attack), per in groups.items():
            model = unseen_model.get((dname, iname, source, target), fit_attack)
            if len(per) > 1 and fit_attack == model:  # one model scored every attack: one set of benign scores
                first = next(iter(per.values()))[0]
                summary = metrics.worst_case({a: (s["adversarial"]["score"], s["adversarial"]["flag"], ok)
                                              for a, (s, ok) in per.items()},
                                             first["benign"]["score"], first["benign"]["flag"])
                out["worst_case"].append({"detector": dname, "interpreter": iname, "source": source, "target": target,
                                          "subset": "all", "fit_attack": fit_attack, **summary, **tags})

    def validation(self, d: dict[str, Any], tags: dict[str, Any]) -> list[dict[str, Any]]:
        """One detection cell's rows on the validation images (every image, successful or attacked inputs, all
        benign validation images as negatives): what a sweep's point is chosen on."""
        keys = d.get("validation")
        if not keys or not self.ready(keys["attack_key"], keys["benign"], keys["adversarial"]):
            return []
        adv = self.driver.load(keys["attack_key"])
        scores = {"benign": self.driver.load(keys["benign"])["validation"],
                  "adversarial": self.driver.load(keys["adversarial"])["validation_adversarial"]}
        every = torch.ones(len(self.validation_y), dtype=torch.bool)
        rows = []
        for population, chosen in (("successful", attack_success(adv, self.validation_y)), ("attacked", every)):
            row = {"detector": d["detector"], "interpreter": d["interpreter"], "attack": d["attack"],
                   "knowledge": d.get("knowledge", "oblivious"), "source": d["source"], "target": d["target"],
                   "subset": "all", "population": population, "benign_population": "natural",
                   "score_definition": d["score_definition"], **tags}
            row.update(_metrics(scores, every, chosen))
            rows.append(row)
        return rows

    def security(self, d: dict[str, Any], adv: dict[str, Any], labels: dict[str, Any],
                 adversarial_scores: torch.Tensor, calibration: torch.Tensor, sweep: dict[str, Any]) -> dict[str, Any]:
        """Attack success under detection for one (detector, attack) cell, at the threshold an adaptive attacker
        is told: ``ADAPTIVE_FPR`` false positives on the calibration images. Success is judged by the target
        victim: ``labels`` are its predictions (on a transfer pair its own, not the source's)."""
        n_eval = len(self.eval_y)
        threshold = metrics.calibrated_threshold(calibration, ADAPTIVE_FPR)
        targets = adv["target"][:n_eval] if "target" in adv else None
        row = security.security_row(
            detector=d["detector"], interpreter=d["interpreter"], target=d["target"], source=d["source"],
            attack=d["attack"], attack_plugin=d.get("attack_plugin"), knowledge=d.get("knowledge", "oblivious"),
            threat_model=d.get("threat_model") or {}, steps=d.get("steps"), gradient=d.get("gradient"),
            fit_attack=d.get("fit_attack"), y=self.eval_y, pred_clean=labels["pred_clean"][:n_eval],
            pred_adv=labels["pred_adv"][:n_eval], adversarial_scores=adversarial_scores, threshold=threshold,
            fpr=ADAPTIVE_FPR, targets=targets)
        return {**row, **sweep}

    def where(self, point: Point) -> str:
        seed = f" [seed {point.seed}]" if point.seed is not None else ""
        if not point.values:
            return seed
        changed = {k: v for k, v in point.values.items() if k not in self.sweep_base or self.sweep_base[k] != v}
        where = ", ".join(f"{k}={v}" for k, v in changed.items()) or "the suite's own setting"
        return f" [sweep point {where}]{seed}"

    def warnings(self, point: Point, results: dict[str, Any]) -> list[str]:
        found = []
        suffix = self.where(point)
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


def _test_order_idx(plan: Plan, n: int) -> torch.Tensor:
    from advbench.stages import test_order

    return test_order(plan.subset)[:n]


def _label(d: dict[str, Any]) -> str:
    return f"{d['detector']}/{d['interpreter']}" if d.get("interpreter") else d["detector"]


def _comparisons(same_inputs: dict[tuple, dict[str, tuple]], sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """For every set of inputs read by two or more detectors: the best by AUROC against each other one, with
    DeLong's paired test, so "best" is said only where it is beyond noise."""
    rows = []
    for (_, attack, source, target, subset, population), detectors in same_inputs.items():
        ranked = sorted(((auroc, name) for name, (_, _, auroc, _) in detectors.items() if auroc is not None),
                        reverse=True)
        if len(ranked) < 2:
            continue
        best = ranked[0][1]
        for _, other in ranked[1:]:
            test = metrics.paired_auroc_test(detectors[best][0], detectors[best][1], detectors[other][0],
                                             detectors[other][1])
            if test is not None:
                rows.append({"attack": attack, "source": source, "target": target, "subset": subset,
                             "population": population, "best": best, "other": other,
                             "auroc_best": detectors[best][2], "auroc_other": detectors[other][2], **test, **sweep})
    return rows


def _against_controls(same_inputs: dict[tuple, dict[str, tuple]], sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every interpretation-based detector against every control read on the same inputs (DeLong's paired test):
    an interpretation earns its place only where it beats them all beyond noise."""
    rows = []
    for (_, attack, source, target, subset, population), detectors in same_inputs.items():
        controls = [name for name, entry in detectors.items() if entry[3] == "control"]
        for name, (benign, adversarial, auroc, role) in detectors.items():
            if role != "interpretation":
                continue
            for control in controls:
                test = metrics.paired_auroc_test(benign, adversarial, detectors[control][0], detectors[control][1])
                if test is None:
                    continue
                verdict = "within noise" if not test["significant"] else ("beats" if test["delta"] > 0 else "worse")
                rows.append({"attack": attack, "source": source, "target": target, "subset": subset,
                             "population": population, "detector": name, "control": control, "auroc": auroc,
                             "auroc_control": detectors[control][2], **test, "verdict": verdict, **sweep})
    return rows


BENIGN_POPULATIONS = {
    "natural": "every evaluation image (misclassified ones included), whatever the attack did to it",
    "paired": "the benign originals of the adversarial inputs counted"}


def _metrics(scores: dict[str, Any], negatives: torch.Tensor, positives: torch.Tensor) -> dict[str, Any]:
    benign, adv = scores["benign"], scores["adversarial"]
    bf = benign["flag"][negatives] if benign["flag"] is not None else None
    af = adv["flag"][positives] if adv["flag"] is not None else None
    return metrics.detection_metrics(benign["score"][negatives], adv["score"][positives], bf, af)


# ---------------------------------------------------------------------- the whole run


def default_threads(slots: int) -> int:
    """Torch threads per worker: the cores this process may use (OMP_NUM_THREADS honoured), shared by the slots."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        cores = int(os.environ["OMP_NUM_THREADS"])
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
    return max(1, cores // max(1, slots))


def make_executor(suite: Suite) -> Any:
    ereg, eoptions = suite.component("executor")
    return ereg.cls(eoptions)


def run_settings(suite: Suite, cache: Cache, device: str, threads: Optional[int], executor: Any) -> Settings:
    """What every node of a run carries: the cache, the device asked for, batch size, seed, and the torch threads
    per worker (``threads``, else this process's cores shared by the executor's slots). ``batch_size: auto`` is
    the default here until ``with_batch_size`` resolves it, which needs the data's shape."""
    slots = max(1, int(getattr(executor, "slots", 1) or 1))
    batch = DEFAULT_BATCH if suite.spec.batch_size == "auto" else suite.spec.batch_size
    return Settings(cache_root=str(cache.root), device=device, batch_size=batch,
                    seed=suite.spec.seed, threads=threads or default_threads(slots))


def with_batch_size(settings: Settings, suite: Suite, data: Any, device: torch.device) -> Settings:
    """``settings`` with the suite's batch size, ``auto`` resolved once for the run on ``device`` (the driver's):
    on CUDA the largest power of two up to ``AUTO_BATCH_CAP`` whose forward and backward pass through every
    victim of the suite (untrained: memory does not depend on the weights) fits in free GPU memory; on the CPU
    ``DEFAULT_BATCH``."""
    if suite.spec.batch_size != "auto":
        return settings
    if device.type != "cuda":
        log.info("batch_size: auto resolves to %d on the %s (auto sizes batches to GPU memory only)",
                 DEFAULT_BATCH, device.type)
        return replace(settings, batch_size=DEFAULT_BATCH)
    sizes: dict[str, int] = {}
    for name in suite.spec.victims:
        reg, options = suite.component("victims", name)
        with torch.random.fork_rng(devices=[]):  # the weights' draw must not move the global RNG
            model = reg.cls(options).build(data.input_shape, data.num_classes)
        model = model.to(device).eval()
        sizes[name] = largest_fitting(fits_forward_backward(model, data.input_shape, device))
        del model
        torch.cuda.empty_cache()
    name = min(sizes, key=lambda n: sizes[n])
    if sizes[name] == 0:
        raise AdvbenchError(f"{suite.source}: batch_size: auto: not even one image's forward and backward pass "
                            f"through victim {name!r} fits in free GPU memory; allowed: a number, or device cpu")
    log.info("batch_size: auto resolves to %d on %s (the largest power of two up to %d whose forward and "
             "backward pass through victim %s fits in free GPU memory)", sizes[name], device, AUTO_BATCH_CAP, name)
    return replace(settings, batch_size=sizes[name])


def run_suite(suite: Suite, run_dir: Path, device: Any, cache: Cache, limit: Optional[int] = None,
              on_event: Optional[Callable[[dict], None]] = None, command: str = "",
              threads: Optional[int] = None, executor: Any = None) -> dict[str, Any]:
    """Run every sweep point of ``suite`` and write results.json, CSV tables and gallery.pt into ``run_dir``.

    ``device`` is what the user asked for ("auto", "cpu", "cuda" or a torch.device); each worker resolves it.
    On an interruption (Ctrl-C) or a failure the results computed so far are written with ``complete: false``
    before the exception propagates; everything cached stays cached.
    """
    on_event = on_event or (lambda event: None)
    run_dir.mkdir(parents=True, exist_ok=True)
    requested = device.type if isinstance(device, torch.device) else str(device)
    local_device = resolve_device(requested, "device")
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    executor = executor or make_executor(suite)
    slots = max(1, int(getattr(executor, "slots", 1) or 1))
    settings = run_settings(suite, cache, requested, threads, executor)
    threads = settings.threads
    if command and "--threads" not in command.split():  # the thread count is part of what repeats the run
        command = f"{command} --threads {threads}"
    results: dict[str, Any] = {
        "suite": suite.name, "suite_file": suite.source, "description": suite.spec.description or None,
        "command": command, "advbench_version": advbench.__version__,
        "seed": suite.spec.seed, **({"seeds": suite.spec.seeds} if suite.spec.seeds else {}),
        "device": str(local_device), "torch_version": torch.__version__,
        "python_version": platform.python_version(), "started": started.isoformat(timespec="seconds"),
        "git_commit": _git_commit(run_dir), "host": {"cpus": os.cpu_count(), "torch_threads": threads,
                                              "cuda_device": torch.cuda.get_device_name(0)
                                              if local_device.type == "cuda" else None},
        "executor": {"plugin": getattr(executor, "name", type(executor).__name__), "slots": slots},
        "limit": limit, "complete": False, "missing": [],
        "plugins": [{"kind": r.kind, "name": r.name, "distribution": r.distribution, "version": r.version}
                    for r in plugins.components()],
        "sweep_fields": suite.sweep_fields(), "sweep_base": {f: suite.value_at(f) for f in suite.sweep_fields()},
        "paper_reference": suite.spec.paper_reference,
        "victims": {}, "interpreters": [], "attacks": [], "detection": [], "worst_case": [], "security": [],
        "comparisons": [],
        # a plugin installed but skipped as broken is part of what this run could and could not use
        "warnings": [f"plugin {b.distribution} (entry point {b.entry_point!r}) is broken and was skipped: {b.error}"
                     for b in plugins.broken()],
        "stages": [],
    }
    gallery: list = []
    driver: Optional[Driver] = None
    assembler: Optional[Assembler] = None
    finished_points: list[int] = []
    error: Optional[BaseException] = None
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dnode = data_node(suite, settings)
        start = time.perf_counter()
        log.info("data %s: loading (a first load decodes and caches the images)", dnode.label)
        data = load_dataset(dnode)
        log.info("data %s: %d training and %d test images, %.1fs", dnode.label, len(data.train_x),
                 len(data.test_x), time.perf_counter() - start)
        data_record = {"stage": "data", "label": dnode.label, "seconds": round(time.perf_counter() - start, 3),
                       "cached": False, "key": dnode.key}
        settings = with_batch_size(settings, suite, data, local_device)
        results["host"]["batch_size"] = settings.batch_size
        if suite.spec.batch_size == "auto":  # the number auto picked is what repeats the run
            results["host"]["batch_size_requested"] = "auto"
            if results["command"]:
                results["command"] += f" --set batch_size={settings.batch_size}"
        plan = build_plan(suite, data, settings, limit)
        eval_idx, fit_idx = subset_indices(plan.subset)
        split = {"eval": eval_idx, "fit": fit_idx, "calibration": calibration_indices(plan.subset),
                 "validation": validation_indices(plan.subset)}
        results["dataset"] = {"plugin": dnode.label, "classes": data.classes, "n_train": len(data.train_x),
                              "n_test": len(data.test_x)}
        results["evaluation"] = {"n_eval": len(eval_idx), "n_fit": len(fit_idx),
                                 "n_calibration": plan.subset["n_calibration"],
                                 "n_validation": plan.subset["n_validation"],
                                 "benign": suite.spec.evaluation.benign,
                                 "benign_pairing": BENIGN_POPULATIONS[suite.spec.evaluation.benign],
                                 # which test images each split holds: every seed and sweep point reads these
                                 "split_seed": plan.subset["seed"],
                                 "indices": {name: idx.tolist() for name, idx in split.items()}}
        driver = Driver(plan, cache, executor, on_event)
        driver.failed.extend(plan.failed)
        for failure in plan.failed:
            log.info("%s failed before running: %s", failure["label"], failure["error"])
        driver.records.append(data_record)
        assembler = Assembler(driver, data, data.test_y[eval_idx], data.test_x[eval_idx], data.test_y[fit_idx],
                              suite.spec.evaluation.filtered, results["sweep_base"], suite.spec.evaluation.benign,
                              data.test_y[split["validation"]])
        driver.check_cached()
        cache.root.mkdir(parents=True, exist_ok=True)  # a remote worker checks it can see this folder
        executor.open(on_event)

        def point_done(index: int) -> bool:
            point = plan.points[index]
            keys = [k for k in _point_keys(point) if k in plan.nodes]
            return all(k in driver.done for k in keys)

        def snapshot() -> None:
            newly = [i for i in range(len(plan.points)) if i not in finished_points and point_done(i)]
            if not newly or len(plan.points) == 1:
                return
            finished_points.extend(newly)
            if len(finished_points) < len(plan.points):  # a long sweep's finished points can be read meanwhile
                partial = {**results, "victims": {}, "interpreters": [], "attacks": [], "detection": [],
                           "worst_case": [], "security": [], "comparisons": [], "warnings": [],
                           "missing": list(results["missing"])}
                for i in sorted(finished_points):
                    _merge(partial, _assemble(assembler, plan.points[i]))
                unit = "seeds" if suite.spec.seeds else "sweep points"
                partial["missing"].append(f"in progress: {len(finished_points)} of {len(plan.points)} {unit} finished")
                partial["stages"] = _stage_records(driver)
                _summarise(partial)
                write_outputs(run_dir, partial, gallery)

        driver.run(on_finished=snapshot)
        for point in plan.points:
            _merge(results, _assemble(assembler, point))
        _sanity(results)
        gallery = [driver.load(key) for key in plan.points[0].galleries if key not in driver.broken]
        results["failed"] = driver.failed
        results["complete"] = not driver.failed
        for failure in driver.failed:
            results["missing"].append(f"failed: {failure['label']}: {failure['error']}"
                                      + (f" ({len(failure['skipped'])} dependent stages skipped)"
                                         if failure["skipped"] else ""))
    except BaseException as exc:  # record what was computed, then re-raise
        error = exc
        if driver is not None and assembler is not None:
            for point in driver.plan.points:
                try:
                    _merge(results, _assemble(assembler, point))
                except BaseException:  # a second interruption or a broken artifact: keep what is merged
                    break
        done = len([r for r in driver.records if not r["cached"]]) if driver is not None else 0
        results["missing"].append(f"stopped by {type(exc).__name__} after {done} stages; run the same command "
                                  "again to resume from the cache")
        for section in ("victims", "interpreters", "attacks", "detection"):
            if not results[section]:
                results["missing"].append(f"{section}: not computed")
    finally:
        try:
            executor.close()
        finally:
            torch.set_num_threads(previous_threads)
            results["stages"] = _stage_records(driver)
            if driver is not None:
                results["failed"] = driver.failed
            results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            results["wall_seconds"] = round(time.perf_counter() - t0, 2)
            _summarise(results)
            write_outputs(run_dir, results, gallery)
    if error is not None:
        raise error
    return results


def _stage_records(driver: Optional[Driver]) -> list[dict[str, Any]]:
    if driver is None:
        return []
    return [{k: v for k, v in record.items() if k != "key"} for record in driver.records]


def _point_keys(point: Point) -> list[str]:
    keys = [v for entry in point.victims.values() for v in (entry["victim"], entry["accuracy"])]
    for entry in point.interpreters:
        keys += [entry["eval_labels"], entry["accuracy_labels"], entry["f2"].key]
    keys += [entry["key"] for entry in point.attacks]
    for d in point.detections:
        keys += [k for k in (d["benign"], d["adversarial"], d["labels"], d["benign_labels"]) if k]
        keys += list((d.get("validation") or {}).values())
    return keys


def _assemble(assembler: Assembler, point: Point) -> dict[str, Any]:
    out = assembler.point(point)
    out["warnings"] = out["warnings"] + assembler.warnings(point, out)
    return out


def _summarise(results: dict[str, Any]) -> None:
    """The sections read across rows: mean and spread across seeds, and each sweep's point chosen on validation."""
    if results.get("seeds"):
        results["seed_summary"] = seed_summary(results)
    if results.get("validation"):
        results["sweep_choice"] = sweep_choice(results["validation"], results["detection"])


def _sanity(results: dict[str, Any]) -> None:
    """The checks that catch a broken evaluation (Carlini et al. 2019), run over the security rows; a failed one
    is a warning in the log and on the page."""
    results["sanity_checks"] = security.sanity_checks(results.get("security", []))
    for warning in security.sanity_warnings(results["sanity_checks"]):
        log.warning("%s", warning)
        results["warnings"].append(warning)


def _merge(results: dict[str, Any], out: dict[str, Any]) -> None:
    for key in ("interpreters", "attacks", "detection", "unseen", "controls", "worst_case", "security",
                "comparisons", "validation", "warnings"):
        if out.get(key) or key in results:  # a run without a sweep has no validation section at all
            results.setdefault(key, []).extend(out.get(key, []))
    seed = out.get("_seed")
    if seed is None or seed == results["seed"]:  # victims: the first seed's, the one a one-seed run trains
        results["victims"].update(out.get("victims", {}))
    if out.get("_sweep") or seed is not None:  # a swept field or a seed changes a victim: keep every point's
        results.setdefault("points", []).append({"sweep": out.get("_sweep") or {},
                                                 **({"seed": seed} if seed is not None else {}),
                                                 "victims": out.get("victims", {})})
    results.setdefault("dataset", out.get("dataset"))
    results.setdefault("evaluation", out.get("evaluation"))


def _git_commit(run_dir: Optional[Path] = None, source: Optional[Path] = None) -> Optional[str]:
    """The commit of the checkout advbench runs from (with '+dirty' for uncommitted changes outside the run
    folder, which the run itself writes), for the run's provenance; None where the code is not a tracked file of
    a git checkout: an installed copy (site-packages, a ``pip install --target`` folder) inside some other
    repository must not claim that repository's commit. ``source`` is this module's file (a test moves it)."""
    source = Path(source or __file__).resolve()
    root = source.parents[1]
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(source)], cwd=root,
                                 capture_output=True, text=True, timeout=10)
        if tracked.returncode != 0:
            return None
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
