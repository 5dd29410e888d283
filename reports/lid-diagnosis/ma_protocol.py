"""LID scored under the evaluation protocol of Ma et al.'s code and of the Aldahdooh et al. review, on this suite's
cached victims and attacks, beside the same protocol with one change: the adversarial input's own clean source
taken out of its reference minibatch.

Their protocol (lid_adversarial_subspace_detection util.py, detectors_review lid/util.py, read for this script):
the correctly classified test images are cut into minibatches of 100 in order; every benign image, its
adversarial version and a Gaussian-noisy copy get their LID at every layer against the clean activations of that
same minibatch, with the nearest distance dropped for all three (for a benign image it is itself); a logistic
regression (cross-validated) on min-max scaled features separates adversarial from benign + noisy, fitted on the
first 70% of the minibatches and tested on the rest; DR is the share of successful adversarial test inputs over
0.5, FPR the share of benign ones. The minibatch of an adversarial input holds its clean source, which no
deployed detector has: "source removed" scores each adversarial and noisy input against its minibatch less its
source, dropping nothing (a benign input still drops itself).

Run from the repository root after `advbench run suites/lid-diagnosis.yaml --limit 300 --threads 1` (it reads
that run's cache and computes nothing the suite did not), with one torch thread:
    OMP_NUM_THREADS=1 python reports/lid-diagnosis/ma_protocol.py --limit 300 --threads 1
Another suite's cached run is read with the same --suite, --limit (0: the run had none), --threads and --device
it ran with (the cache keys hold them), e.g. the GPU run of suites/baselines-strong-victim.yaml:
    python reports/lid-diagnosis/ma_protocol.py --suite suites/baselines-strong-victim.yaml --limit 0 \
        --device auto --threads 16 --out reports/baselines-strong-victim/ma_protocol.json
It prints two lines per victim and attack (AUROC with DeLong's 95% interval, DR and FPR at 0.5), the paired
DeLong difference between them, and writes ma_protocol.json beside itself (Wilson intervals on DR and FPR).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import MinMaxScaler

from advbench.cache import Cache
from advbench.devices import resolve_device
from advbench.metrics import auroc_interval, paired_auroc_test, wilson_interval
from advbench.plan import build_plan, data_node
from advbench.runner import make_executor, run_settings, with_batch_size
from advbench.stages import Worker, attack_success, images, load_classifier, load_dataset
from advbench.suite import load_suite
from advbench_detectors.lid import Lid, lid_mle

HERE = Path(__file__).resolve().parent
BATCH, K, TRAIN_SHARE = 100, 20, 0.7


def activations(lid: Lid, victim: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():  # on the victim's device (a GPU run's cache holds a CUDA victim)
        return lid._activations(victim, x.to(next(victim.parameters()).device))


def batch_lids(reference: list[torch.Tensor], queries: list[torch.Tensor], drop_nearest: bool,
               source_out: bool) -> torch.Tensor:
    """Per-layer LID of each query row against the clean minibatch's activations (query row i comes from clean
    row i)."""
    columns = []
    for ref, q in zip(reference, queries):
        d = torch.cdist(q.double(), ref.double())
        if source_out:
            d.fill_diagonal_(float("inf"))
        if drop_nearest:
            d = d.sort(dim=1).values[:, 1:]
        columns.append(lid_mle(d, min(K, d.shape[1] - 1)))
    return torch.stack(columns, dim=1).cpu()


def evaluate(lid: Lid, victim, x, x_adv, success, noise_std, source_out: bool, seed: int) -> dict:
    n = len(x) // BATCH * BATCH
    gen = torch.Generator().manual_seed(seed)
    feats = {"benign": [], "adversarial": [], "noisy": []}
    for start in range(0, n, BATCH):
        clean = x[start:start + BATCH]
        noisy = (clean + noise_std * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
        reference = activations(lid, victim, clean)  # the minibatch, and the benign queries themselves
        feats["benign"].append(batch_lids(reference, reference, True, False))
        feats["adversarial"].append(batch_lids(reference, activations(lid, victim, x_adv[start:start + BATCH]),
                                               not source_out, source_out))
        feats["noisy"].append(batch_lids(reference, activations(lid, victim, noisy), not source_out, source_out))
    f = {k: torch.cat(v).numpy() for k, v in feats.items()}
    ok = success[:n].numpy()
    cut = int(n // BATCH * TRAIN_SHARE) * BATCH  # whole minibatches on each side, as their block split
    train_x = np.concatenate([f["benign"][:cut], f["noisy"][:cut], f["adversarial"][:cut]])
    train_y = np.concatenate([np.zeros(2 * cut), np.ones(cut)])
    scaler = MinMaxScaler().fit(train_x)
    with warnings.catch_warnings():  # scikit-learn's notices of future defaults; the fit is the same
        warnings.simplefilter("ignore", FutureWarning)
        model = LogisticRegressionCV(max_iter=1000).fit(scaler.transform(train_x), train_y)
    p_benign = model.predict_proba(scaler.transform(f["benign"][cut:]))[:, 1]
    p_adv = model.predict_proba(scaler.transform(f["adversarial"][cut:][ok[cut:]]))[:, 1]
    detected, false_alarms = int((p_adv > 0.5).sum()), int((p_benign > 0.5).sum())
    return {"auroc": float(roc_auc_score(np.r_[np.zeros(len(p_benign)), np.ones(len(p_adv))],
                                         np.r_[p_benign, p_adv])),
            "auroc_ci": auroc_interval(p_benign, p_adv),
            "dr": detected / len(p_adv), "dr_ci": wilson_interval(detected, len(p_adv)),
            "fpr": false_alarms / len(p_benign), "fpr_ci": wilson_interval(false_alarms, len(p_benign)),
            "n_benign": int(len(p_benign)), "n_adversarial": int(len(p_adv)),
            "scores": (p_benign, p_adv)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/lid-diagnosis.yaml")
    parser.add_argument("--limit", type=int, default=300, help="the run's --limit (0: it had none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="the run's --device (auto, cpu or cuda)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="the run's --set overrides (they change its cache keys), repeatable")
    parser.add_argument("--out", type=Path, default=HERE / "ma_protocol.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(Path(args.suite), args.overrides)
    cache = Cache()
    settings = run_settings(suite, cache, args.device, args.threads, make_executor(suite))
    data = load_dataset(data_node(suite, settings))
    settings = with_batch_size(settings, suite, data, resolve_device(settings.device, "device"))
    plan = build_plan(suite, data, settings, args.limit or None)
    lid = Lid()
    rows = []
    for node in plan.nodes.values():
        if node.stage != "adversarial" or node.params.get("images", {}).get("set") != "eval+fit":
            continue
        worker = Worker(node)
        victim_node = node.params["victim"]
        victim = load_classifier(victim_node, worker)
        x, y = images(worker, node.params["images"])
        adv = worker.load(node.key, "x_adv", "pred_clean", "pred_adv")
        keep = adv["pred_clean"] == y  # their protocol: correctly classified test images only
        success = attack_success(adv, y)[keep]
        x, x_adv = x[keep], adv["x_adv"][keep]
        # their noisy negatives: per-pixel Gaussian noise as large as the attack's mean per-pixel change
        noise_std = float((x_adv - x).pow(2).mean().sqrt())
        attack = node.label.split(" on ")[0]
        pair = []
        for source_out in (False, True):
            result = evaluate(lid, victim, x, x_adv, success, noise_std, source_out, settings.seed)
            pair.append(result.pop("scores"))
            result.update(victim=victim_node.label.split(".")[-1], attack=attack, noise_std=noise_std,
                          protocol="source removed" if source_out else "theirs (source in minibatch)")
            rows.append(result)
            lo, hi = result["auroc_ci"] or (float("nan"), float("nan"))
            print(f"{result['victim']:9s} {attack:9s} {result['protocol']:29s} AUROC {result['auroc']:.3f} "
                  f"[{lo:.2f}, {hi:.2f}]  DR {result['dr']:.3f}  FPR {result['fpr']:.3f}  (test: "
                  f"{result['n_benign']} benign, {result['n_adversarial']} successful adversarial)", flush=True)
        # the same test inputs scored both ways: DeLong's paired test of theirs minus source removed
        rows[-2]["minus_source_removed"] = paired_auroc_test(*pair[0], *pair[1])
        test = rows[-2]["minus_source_removed"] or {"delta": float("nan"), "delta_ci": [float("nan")] * 2}
        print(f"{'':19s} theirs minus source removed: {test['delta']:+.3f} [{test['delta_ci'][0]:.2f}, "
              f"{test['delta_ci'][1]:.2f}]", flush=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
