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
from sklearn.preprocessing import MinMaxScaler

from advbench.rescore import (add_run_arguments, cached_attack_sets, paired_difference, print_result, run_script,
                              threshold_result)
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
    return threshold_result(p_benign, p_adv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, suite="suites/lid-diagnosis.yaml", limit=300, threads=1, out=HERE / "ma_protocol.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lid = Lid()
    rows = []
    for cached in cached_attack_sets(args):
        keep = cached.pred_clean == cached.y  # their protocol: correctly classified test images only
        success = cached.success[keep]
        x, x_adv = cached.x[keep], cached.x_adv[keep]
        # their noisy negatives: per-pixel Gaussian noise as large as the attack's mean per-pixel change
        noise_std = float((x_adv - x).pow(2).mean().sqrt())
        pair = []
        for source_out in (False, True):
            result = evaluate(lid, cached.victim, x, x_adv, success, noise_std, source_out, cached.seed)
            result.update(victim=cached.victim_name, attack=cached.attack, noise_std=noise_std,
                          protocol="source removed" if source_out else "theirs (source in minibatch)")
            rows.append(result)
            pair.append(result)
            print_result(result)
        # the same test inputs scored both ways: DeLong's paired test of theirs minus source removed
        paired_difference(pair[0], pair[1], "minus_source_removed", "theirs minus source removed", 19)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)
