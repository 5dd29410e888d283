"""Re-scoring a finished run's cached attack sets under another evaluation protocol.

The scripts beside the reference reports that score a detector as a published codebase does
(``reports/lid-diagnosis/ma_protocol.py``, ``reports/baselines/kd_protocol.py``) share this: they name the run
they read (suite, ``--limit``, ``--threads``, ``--device``, ``--set``: the cache keys hold all five), walk its
cached adversarial sets of the evaluation + fitting images, and report each protocol's AUROC and its detection
and false-positive rates at a fixed threshold, with intervals. Nothing here computes a stage: a set missing
from the cache is an error, not a recomputation.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from advbench.cache import Cache
from advbench.devices import resolve_device
from advbench.errors import AdvbenchError
from advbench.metrics import auroc_interval, paired_auroc_test, wilson_interval
from advbench.plan import build_plan, data_node
from advbench.runner import make_executor, run_settings, with_batch_size
from advbench.stages import InputMissing, Worker, attack_success, images, load_classifier, load_dataset
from advbench.suite import load_suite


@dataclass
class CachedSet:
    """One cached attack on the evaluation + fitting images of a run: eval images first, then fit images."""

    victim_name: str
    attack: str
    victim: nn.Module  # on the run's device, in eval mode
    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor
    pred_clean: torch.Tensor
    success: torch.Tensor  # misclassified after the attack (bool, per image)
    seed: int
    data: Any  # the run's dataset (train_x, train_y, ...)


def add_run_arguments(parser: argparse.ArgumentParser, suite: str, limit: int, threads: int, out: Path) -> None:
    """The options that name the run a script reads, and where it writes its JSON."""
    parser.add_argument("--suite", default=suite)
    parser.add_argument("--limit", type=int, default=limit, help="the run's --limit (0: it had none)")
    parser.add_argument("--threads", type=int, default=threads, help="the run's --threads (its cache keys hold it)")
    parser.add_argument("--device", default="cpu", help="the run's --device (auto, cpu or cuda)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="the run's --set overrides (they change its cache keys), repeatable")
    parser.add_argument("--out", type=Path, default=out)


def cached_attack_sets(args: argparse.Namespace, cache: Optional[Cache] = None) -> Iterator[CachedSet]:
    """Every adversarial set of the evaluation + fitting images that the run named by ``args`` (see
    ``add_run_arguments``) cached, in plan order."""
    suite = load_suite(Path(args.suite), list(args.overrides))
    settings = run_settings(suite, cache or Cache(), args.device, args.threads, make_executor(suite))
    try:
        data = load_dataset(data_node(suite, settings))
    except InputMissing:
        raise AdvbenchError(f"{args.suite}: its dataset is not in the cache {settings.cache_root}: run the suite "
                            "first") from None
    settings = with_batch_size(settings, suite, data, resolve_device(settings.device, "device"))
    plan = build_plan(suite, data, settings, args.limit or None)
    for node in plan.nodes.values():
        if node.stage != "adversarial" or node.params.get("images", {}).get("set") != "eval+fit":
            continue
        worker = Worker(node)
        victim_node = node.params["victim"]
        try:
            victim = load_classifier(victim_node, worker).eval()
            x, y = images(worker, node.params["images"])
            adv = worker.load(node.key, "x_adv", "pred_clean", "pred_adv")
        except InputMissing:
            raise AdvbenchError(f"{args.suite}: {node.label} is not in the cache {settings.cache_root}: run the "
                                f"suite first with the same --limit, --threads, --device and --set") from None
        yield CachedSet(victim_name=victim_node.label.split(".")[-1], attack=node.label.split(" on ")[0],
                        victim=victim, x=x, y=y, x_adv=adv["x_adv"], pred_clean=adv["pred_clean"],
                        success=attack_success(adv, y), seed=settings.seed, data=data)


def threshold_result(p_benign: np.ndarray, p_adversarial: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """AUROC (DeLong's 95% interval), and the detection rate and false-positive rate of ``score > threshold``
    (Wilson's intervals); ``scores`` keeps both arrays for a paired test."""
    detected, false_alarms = int((p_adversarial > threshold).sum()), int((p_benign > threshold).sum())
    labels = np.r_[np.zeros(len(p_benign)), np.ones(len(p_adversarial))]
    return {"auroc": float(roc_auc_score(labels, np.r_[p_benign, p_adversarial])),
            "auroc_ci": auroc_interval(p_benign, p_adversarial),
            "dr": detected / len(p_adversarial), "dr_ci": wilson_interval(detected, len(p_adversarial)),
            "fpr": false_alarms / len(p_benign), "fpr_ci": wilson_interval(false_alarms, len(p_benign)),
            "n_benign": int(len(p_benign)), "n_adversarial": int(len(p_adversarial)),
            "scores": (p_benign, p_adversarial)}


def print_result(result: dict[str, Any], widths: Sequence[int] = (9, 9, 29)) -> None:
    lo, hi = result["auroc_ci"] or (float("nan"), float("nan"))
    print(f"{result['victim']:{widths[0]}s} {result['attack']:{widths[1]}s} {result['protocol']:{widths[2]}s} "
          f"AUROC {result['auroc']:.3f} [{lo:.2f}, {hi:.2f}]  DR {result['dr']:.3f}  FPR {result['fpr']:.3f}  "
          f"(test: {result['n_benign']} benign, {result['n_adversarial']} successful adversarial)", flush=True)


def paired_difference(first: dict[str, Any], second: dict[str, Any], field: str, label: str, indent: int) -> None:
    """DeLong's paired test of ``first`` minus ``second`` (the same test inputs scored two ways), stored in
    ``first[field]`` and printed; both results lose their ``scores``."""
    first[field] = paired_auroc_test(*first.pop("scores"), *second.pop("scores"))
    test = first[field] or {"delta": float("nan"), "delta_ci": [float("nan")] * 2}
    print(f"{'':{indent}s} {label}: {test['delta']:+.3f} [{test['delta_ci'][0]:.2f}, {test['delta_ci'][1]:.2f}]",
          flush=True)


def run_script(main: Callable[[], None]) -> None:
    """A protocol script's entry: a bad suite, option or missing run is one line on stderr and exit status 2,
    as the advbench command gives it."""
    from advbench.cli import fail

    try:
        main()
    except AdvbenchError as exc:
        fail(str(exc))
