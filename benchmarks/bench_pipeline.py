"""How often the pipeline's evaluation forwards each model over each image set, and how fast the CLI starts.

    python benchmarks/bench_pipeline.py [--train 2000] [--test 600] [--threads 1]

Runs a small CIFAR-10 suite through the project's own harness (the real cifar10 loader on the JPEG export, a
small CNN victim, gradient and SmoothGrad as g, a LeNet f2, FGSM and PGD, the paper's contrastive detector with
its controls msp and label-only, f2's accuracy on 400 test images), in a temporary cache (ADVBENCH_CACHE), then
reads the stage records' forward counts from results.json. Counted are the passes the harness makes over an image
set: f1 (the victim), g and f2 on the evaluation, calibration, fitting and n_mask_eval images, on every
adversarial set, g on the training images; not g's own victim passes inside a gradient map, nor an attack's steps.
A few minutes on one thread.
The last line reads `pipeline evaluation <r>x the forwards it needs, duplicate forwards <k>, list-plugins <s> s`:
r = images forwarded / images needed (one pass of each model over each distinct image set), k = the (model, image
set) pairs forwarded more than once, s = wall time of `advbench list-plugins` in a fresh process.
Goals: r <= 1.3, k = 0, s <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def suite_file(folder: Path, train: int, test: int) -> Path:
    suite = {
        "name": "bench-pipeline", "seed": 0, "device": "cpu", "batch_size": 128,
        "dataset": {"plugin": "cifar10", "options": {"path": str(CIFAR_TAR), "train_limit": train,
                                                     "test_limit": test}},
        "victims": {"cnn": {"plugin": "small-cnn", "options": {"epochs": 2, "augment": False}}},
        "interpreters": {"gradient": {"plugin": "gradient"},
                         "smoothgrad": {"plugin": "smoothgrad", "options": {"n_samples": 4}}},
        "mask_classifier": {"plugin": "lenet", "options": {"epochs": 2}},
        "attacks": {"fgsm": {"plugin": "fgsm", "options": {"eps": 8 / 255}},
                    "pgd": {"plugin": "pgd", "options": {"eps": 8 / 255, "steps": 5}}},
        "detectors": {"contrastive": {}, "msp": {}, "label-only": {}},
        "evaluation": {"pairs": [{"source": "cnn", "target": "cnn"}], "n_eval": 200, "n_fit": 100,
                       "n_calibration": 100, "n_mask_eval": 400},
    }
    path = folder / "bench-pipeline.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def set_size(images: str) -> int:
    """The image count in an image set's name, ``<set>[<n>]@<digest>``."""
    return int(re.match(r"[^\[]+\[(\d+)\]@", images).group(1))


def forward_counts(results: dict) -> tuple[int, int, list[str]]:
    """(images forwarded, images needed, duplicated pairs) over the run's stage records."""
    done: Counter = Counter()
    records: Counter = Counter()
    for record in results["stages"]:
        for pair, n in (record.get("forwards") or {}).items():
            done[pair] += n
            records[pair] += 1
    needed = {pair: set_size(pair.split("|", 1)[1]) for pair in done}
    duplicated = [pair for pair in done if records[pair] > 1 or done[pair] > needed[pair]]
    return sum(done.values()), sum(needed.values()), duplicated


def list_plugins_seconds(env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "advbench.cli", "list-plugins"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000, help="CIFAR-10 training images (class-balanced)")
    parser.add_argument("--test", type=int, default=600, help="CIFAR-10 test images (class-balanced)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if not CIFAR_TAR.exists():
        sys.exit(f"bench_pipeline: the CIFAR-10 export is not at {CIFAR_TAR}")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        os.environ["ADVBENCH_CACHE"] = str(Path(tmp) / "cache")  # never the user's cache

        import torch

        from advbench.cache import Cache
        from advbench.runner import run_suite
        from advbench.suite import load_suite

        torch.set_num_threads(args.threads)
        suite = load_suite(suite_file(Path(tmp), args.train, args.test))
        print(f"running {suite.spec.name}: {args.train} training and {args.test} test images, {args.threads} "
              "thread(s), from a cold cache ...", flush=True)
        start = time.perf_counter()
        run_suite(suite, Path(tmp) / "run", "cpu", Cache(Path(tmp) / "cache"), threads=args.threads)
        seconds = time.perf_counter() - start
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
        done, needed, duplicated = forward_counts(results)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"),
                                                           os.environ.get("PYTHONPATH", "")])}
        startup = min(list_plugins_seconds(env) for _ in range(3))
    pairs = sum(1 for r in results["stages"] for _ in (r.get("forwards") or {}))
    print(f"run {seconds:.0f} s, complete {results['complete']}; {pairs} (model, image set) passes in "
          f"{len(results['stages'])} stage records: {done} images forwarded, {needed} needed")
    for pair in duplicated:
        print(f"  duplicated: {pair}")
    print(f"pipeline evaluation {done / needed:.2f}x the forwards it needs, duplicate forwards {len(duplicated)}, "
          f"list-plugins {startup:.2f} s")


if __name__ == "__main__":
    main()
