"""The price of attacking the detector too: OPGD against alexnet + lan (contrastive) vs oblivious PGD, same steps.

    python benchmarks/bench_adaptive.py [--images 64] [--steps 100] [--threads 1]

Uses suites/adaptive.yaml's alexnet, lan and f2 through the project's own harness and cache (a cold cache trains
them first: about an hour on 2 CPU cores; run the adaptive suite, or this, once). Both attacks run at l-inf
8/255 with step 1/255 on the same CIFAR-10 test images, each chunk timed once through the attack template (the
chunk stage a run executes, not stored), one after the other in this process with ``--threads`` torch threads.
OPGD is told the contrastive detector's threshold at 5% FPR on 500 held-out benign images.
The last line reads `opgd <s> s/image on cifar10 alexnet+lan, <r>x one pgd step budget, success <a>`:
s = OPGD seconds per image, r = OPGD time / PGD time with the same number of steps (goal r <= 3), a = the share of
correctly classified images OPGD leaves misclassified and below the detector's threshold.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
EPS, ALPHA = 8 / 255, 1 / 255


def suite_file(folder: Path, images: int, steps: int) -> Path:
    """suites/adaptive.yaml cut down to alexnet, lan, the contrastive detector, PGD and OPGD at 8/255."""
    suite = yaml.safe_load((REPO / "suites" / "adaptive.yaml").read_text())
    suite["name"] = "bench-adaptive"  # the dataset path stays the suite's own (relative): it is part of every key
    suite["victims"] = {"alexnet": suite["victims"]["alexnet"]}
    suite["interpreters"] = {"lan": suite["interpreters"]["lan"]}
    suite["threat_model"] = {"norm": "linf", "eps": EPS, "quantize": True}
    suite["attacks"] = {"pgd": {"plugin": "pgd", "options": {"alpha": ALPHA, "steps": steps}},
                        "opgd": {"plugin": "opgd", "options": {"alpha": ALPHA, "steps": steps}}}
    suite["detectors"] = {"contrastive": {}}
    suite["evaluation"] = {"pairs": [{"source": "alexnet", "target": "alexnet"}], "n_eval": images, "n_fit": 0,
                           "n_calibration": 500, "n_mask_eval": 1000}
    path = folder / "bench-adaptive.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def timed_chunk(node) -> tuple[float, dict]:
    """One chunk through the attack template, as a run computes it, without storing it."""
    from advbench.stages import Worker, stage_attack_chunk

    start = time.perf_counter()
    out = stage_attack_chunk(node, Worker(node))
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="attacked test images (one chunk: at most 256)")
    parser.add_argument("--steps", type=int, default=100, help="steps of both attacks")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (part of the cache keys: 1 reuses a run of suites/adaptive.yaml "
                             "with --threads 1)")
    args = parser.parse_args()
    if not CIFAR_TAR.exists():
        sys.exit(f"bench_adaptive: the CIFAR-10 export is not at {CIFAR_TAR}")
    if not 1 <= args.images <= 256:
        sys.exit("bench_adaptive: --images must be between 1 and 256 (one chunk)")
    os.chdir(REPO)  # the suite's data path is relative to the repository root, as for `advbench run`

    from advbench.cache import Cache
    from advbench.plan import build_plan, data_node
    from advbench.runner import make_executor, run_settings, run_suite
    from advbench.stages import Worker, build_defence, images, load_classifier, load_dataset
    from advbench.suite import load_suite

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-adaptive-") as tmp:
        suite = load_suite(suite_file(Path(tmp), args.images, args.steps))
        cache = Cache()
        print(f"preparing alexnet, lan, f2 and the detector's threshold through the harness (cache {cache.root}; "
              "a cold cache trains them first) ...", flush=True)
        run_suite(suite, Path(tmp) / "run", "cpu", cache, threads=args.threads)
        settings = run_settings(suite, cache, "cpu", args.threads, make_executor(suite))
        plan = build_plan(suite, load_dataset(data_node(suite, settings)), settings)
        chunks = {n.params["attack"]: n for n in plan.nodes.values() if n.stage == "adversarial-chunk"}
        pgd, opgd = chunks["pgd"], chunks["opgd"]
        print(f"timing PGD and OPGD, {args.steps} steps, on {args.images} images, {args.threads} thread(s) ...",
              flush=True)
        pgd_seconds, _ = timed_chunk(pgd)
        opgd_seconds, out = timed_chunk(opgd)

        worker = Worker(opgd)
        victim = load_classifier(opgd.params["victim"], worker)
        defence = build_defence(worker, opgd.params["defence"])
        x, y = images(worker, opgd.params["images"])
        with torch.no_grad():
            correct = victim(x).argmax(1) == y
            adv = out["x"]
            fooled = correct & (victim(adv).argmax(1) != y) & ~defence.flagged(adv)
        success = float(fooled.sum()) / max(1, int(correct.sum()))
    print(f"pgd {pgd_seconds:.1f} s, opgd {opgd_seconds:.1f} s for {args.images} images; threshold "
          f"{defence.threshold:.4f}; {int(correct.sum())} correctly classified")
    print(f"opgd {opgd_seconds / args.images:.3f} s/image on cifar10 alexnet+lan, "
          f"{opgd_seconds / pgd_seconds:.2f}x one pgd step budget, success {success:.3f}")


if __name__ == "__main__":
    main()
