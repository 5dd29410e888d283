"""KD+BU scored under the evaluation protocol of the Aldahdooh et al. review's code, on a suite's cached victim and
attacks, with and without the one element of it no deployed detector can have: batch norm on batch statistics.

Their protocol (detectors_review kd_bu/detect_kd_bu.py and kd_bu/detect/util.py, read for this script): only the
test images the victim classifies correctly; each gets an adversarial version and a Gaussian-noisy copy (std
0.03125 for their FGSM(8), clipped to [0, 1]). Density: a Gaussian kernel density (bandwidth 0.26) of the features
before the last linear layer, one per class over all 50,000 training images by true label, read under the
predicted class. Uncertainty: 50 passes with Keras' learning phase 1, the mean over classes of the softmax's
variance; learning phase 1 switches dropout on and also puts every batch-norm layer on the statistics of its batch
of 256, and each batch holds one set only (all clean, all noisy or all adversarial). Each feature is z-scored
over every row before the split; a cross-validated logistic regression is fitted on the first 70% (adversarial,
failed ones included, against clean + noisy) and tested on the rest: DR is the share of successful adversarial
test inputs over 0.5, FPR the share of clean test inputs over 0.5.

"theirs" runs that protocol; "theirs, batch norm on running statistics" changes only the uncertainty's batch
norm to inference mode (what the harness's kd-bu does: a deployed detector scores one input at a time, and an
input's score must not depend on which other inputs share its batch).

Run from the repository root after `advbench run suites/baselines-fit-size.yaml --limit 1000 --threads 1` (it
reads that run's cache; it computes the features itself), with the same --limit and --threads:
    OMP_NUM_THREADS=2 python reports/baselines/kd_protocol.py --suite suites/baselines-fit-size.yaml \\
        --limit 1000 --threads 1 --torch-threads 2
It prints one line per attack and variant (AUROC with DeLong's 95% interval, DR and FPR at 0.5) and the paired
DeLong difference, and writes kd_protocol.json beside itself (Wilson intervals on DR and FPR). A GPU run's cache
is read with its --device and --limit 0, as reports/baselines-strong-victim/gpu_run.sh does.
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler
from torch import nn

from advbench.rescore import (add_run_arguments, cached_attack_sets, paired_difference, print_result, run_script,
                              threshold_result)
from advbench_detectors._features import penultimate
from advbench_detectors.kd_bu import PAPER_CIFAR10_BANDWIDTH, dropout_modules, gaussian_kde_log_density

HERE = Path(__file__).resolve().parent
MC_PASSES, MC_BATCH, NOISE_STD, BLOCK, TRAIN_SHARE = 50, 256, 0.03125, 100, 0.7
VARIANTS = {"theirs": True, "theirs, batch norm on running statistics": False}


def uncertainty(victim: nn.Module, x: torch.Tensor, seed: int, batch_stats: bool) -> torch.Tensor:
    """Mean over classes of the softmax variance across MC_PASSES dropout passes, in batches of MC_BATCH rows of
    one set; with ``batch_stats`` every batch-norm layer normalizes by its batch (a copy: running stats stay)."""
    model = copy.deepcopy(victim).eval()
    for m in dropout_modules(model):
        m.train(True)
    if batch_stats:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train(True)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, len(x), MC_BATCH):
            xb = x[start:start + MC_BATCH].to(device)
            probs = torch.stack([torch.softmax(model(xb), dim=1) for _ in range(MC_PASSES)])
            out.append(probs.var(dim=0, unbiased=False).mean(dim=1).cpu())
    return torch.cat(out)


def class_densities(victim: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor) -> list[torch.Tensor]:
    device = next(victim.parameters()).device  # the victim's device: a GPU run's cache holds a CUDA victim
    with torch.no_grad():
        feats = torch.cat([penultimate(victim, train_x[s:s + 1000].to(device))[0]
                           for s in range(0, len(train_x), 1000)])
    return [feats[train_y.to(device) == c] for c in range(int(train_y.max()) + 1)]


def log_density(victim: nn.Module, classes: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    device = next(victim.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(x), 1000):
            feats, logits = penultimate(victim, x[start:start + 1000].to(device))
            predicted = logits.argmax(dim=1)
            part = torch.empty(len(feats), device=device)
            for c in predicted.unique().tolist():
                rows = predicted == c
                part[rows] = gaussian_kde_log_density(feats[rows], classes[c], PAPER_CIFAR10_BANDWIDTH)
            out.append(part.cpu())
    return torch.cat(out)


def evaluate(features: dict[str, np.ndarray], success: np.ndarray) -> dict:
    n = len(success) // BLOCK * BLOCK
    cut = int(n // BLOCK * TRAIN_SHARE) * BLOCK  # whole blocks on each side, as their indx_start
    f = {k: v[:n] for k, v in features.items()}
    ok = success[:n]
    # z-scored over every row of the three sets before the split, as their normalize_std
    scaler = StandardScaler().fit(np.concatenate([f["clean"], f["adversarial"], f["noisy"]]))
    z = {k: scaler.transform(v) for k, v in f.items()}
    train_x = np.concatenate([z["clean"][:cut], z["noisy"][:cut], z["adversarial"][:cut]])
    train_y = np.concatenate([np.zeros(2 * cut), np.ones(cut)])
    with warnings.catch_warnings():  # scikit-learn's notices of future defaults; the fit is the same
        warnings.simplefilter("ignore", FutureWarning)
        model = LogisticRegressionCV(max_iter=1000).fit(train_x, train_y)
    p_clean = model.predict_proba(z["clean"][cut:])[:, 1]
    p_adv = model.predict_proba(z["adversarial"][cut:][ok[cut:]])[:, 1]
    return threshold_result(p_clean, p_adv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, suite="suites/baselines-fit-size.yaml", limit=1000, threads=1,
                      out=HERE / "kd_protocol.json")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads for this script")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads or args.threads)
    rows, shared = [], {}
    for cached in cached_attack_sets(args):
        keep = cached.pred_clean == cached.y  # their inds_correct
        success = cached.success[keep].numpy()
        x, x_adv, victim, seed = cached.x[keep], cached.x_adv[keep], cached.victim, cached.seed
        if "clean" not in shared:  # the clean and noisy sets are the same for every attack on these images
            gen = torch.Generator().manual_seed(seed)
            noisy = (x + NOISE_STD * torch.randn(x.shape, generator=gen)).clamp(0, 1)
            classes = class_densities(victim, cached.data.train_x, cached.data.train_y)
            shared.update(classes=classes, noisy=noisy, density={k: log_density(victim, classes, v) for k, v in
                                                                (("clean", x), ("noisy", noisy))})
        density = dict(shared["density"], adversarial=log_density(victim, shared["classes"], x_adv))
        pair = []
        for name, batch_stats in VARIANTS.items():
            key = ("uncertainty", batch_stats)
            if key not in shared:
                shared[key] = {k: uncertainty(victim, v, seed, batch_stats)
                               for k, v in (("clean", x), ("noisy", shared["noisy"]))}
            unc = dict(shared[key], adversarial=uncertainty(victim, x_adv, seed, batch_stats))
            features = {k: torch.stack([density[k], unc[k]], dim=1).double().numpy() for k in unc}
            result = evaluate(features, success)
            result.update(victim=cached.victim_name, attack=cached.attack, protocol=name)
            rows.append(result)
            pair.append(result)
            print_result(result, widths=(9, 6, 41))
        paired_difference(pair[0], pair[1], "minus_running_statistics", "batch statistics minus running statistics", 16)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)
