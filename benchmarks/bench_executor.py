"""One CIFAR-10 attack stage (PGD on alexnet, several 256-image chunks) run by the local executor and by Ray.

    python benchmarks/bench_executor.py [--images 1024] [--steps 100]

The victim is trained once (a small alexnet on 2,000 training images of the CIFAR-10 JPEG export, read
through the project's own loader) into a private cache; then the attack's chunk nodes are computed from cold
three times: by `local` with every core on one node at a time (the timing baseline), by `ray` with one task
per node and one thread each (as many at once as there are cores), and by `local` with one thread per node,
the same settings as Ray's tasks, to check Ray computes exactly what a local run computes. (A node run with
another thread count sums floats in another order, so its pixels may differ: the thread count is one of the
settings a node carries.) Ray's start-up is timed apart: the ratio is what the same work costs under Ray.
The last line reads `executor ray/local wall <r>x, max concurrent tasks <k>, identical <yes|no>`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def suite_file(folder: Path, images: int, steps: int) -> Path:
    suite = {
        "name": "bench-executor", "seed": 0, "batch_size": 128,
        "dataset": {"plugin": "cifar10", "options": {"path": str(CIFAR_TAR), "train_limit": 2000,
                                                     "test_limit": max(1000, images)}},
        "victims": {"alexnet": {"plugin": "alexnet", "options": {"epochs": 1, "width": 16}}},
        "attacks": {"pgd": {"plugin": "pgd", "options": {"eps": 8 / 255, "alpha": 2 / 255, "steps": steps}}},
        "detectors": {"label-only": {}},
        "evaluation": {"pairs": [{"source": "alexnet", "target": "alexnet"}], "n_eval": images // 2,
                       "n_fit": images - images // 2},
    }
    path = folder / "bench-executor.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def run_nodes(executor, nodes) -> tuple[float, list[dict]]:
    from advbench.stages import run_node

    records: list[dict] = []
    start = time.perf_counter()
    for node in nodes:
        executor.submit(run_node, node)
    while len(records) < len(nodes):
        for node, outcome in executor.wait(timeout=0.5):
            if isinstance(outcome, BaseException):
                raise outcome
            records.append(outcome)
    return time.perf_counter() - start, records


def max_concurrent(records: list[dict]) -> int:
    edges = sorted([(r["started"], 1) for r in records] + [(r["started"] + r["seconds"], -1) for r in records])
    best = running = 0
    for _, step in edges:
        running += step
        best = max(best, running)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="attacked images (256 per chunk node)")
    parser.add_argument("--steps", type=int, default=100, help="PGD steps")
    args = parser.parse_args()
    if not CIFAR_TAR.exists():
        sys.exit(f"bench_executor: the CIFAR-10 export is not at {CIFAR_TAR}")

    from advbench.cache import Cache
    from advbench.plan import Settings, build_plan, data_node
    from advbench.runner import default_threads
    from advbench.stages import load_dataset, run_node
    from advbench.suite import load_suite
    from advbench_executors.local import LocalExecutor
    from advbench_executors.ray_executor import RayExecutor

    cores = default_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench-executor-"))
    try:
        suite = load_suite(suite_file(folder, args.images, args.steps))
        cache = Cache(folder / "cache")
        cache.root.mkdir(parents=True)

        def plan_for(threads: int):
            settings = Settings(cache_root=str(cache.root), device="cpu", batch_size=suite.spec.batch_size,
                                seed=suite.spec.seed, threads=threads)
            return build_plan(suite, load_dataset(data_node(suite, settings)), settings)

        torch.set_num_threads(cores)
        plan = plan_for(cores)
        victim = next(n for n in plan.nodes.values() if n.stage == "victim")
        print(f"training the victim (alexnet width 16, 1 epoch on 2,000 images, {cores} threads) ...", flush=True)
        run_node(victim)

        def chunks(threads: int):
            return [n for n in plan_for(threads).nodes.values() if n.stage == "adversarial-chunk"]

        def local_pass(threads: int) -> tuple[float, list[torch.Tensor]]:
            nodes = chunks(threads)
            print(f"local: {len(nodes)} chunk nodes, one at a time with {threads} thread(s) ...", flush=True)
            local = LocalExecutor()
            local.open(lambda event: None)
            wall, _ = run_nodes(local, nodes)
            local.close()
            out = [cache.load(n.key)["x"] for n in nodes]
            for node in nodes:
                cache.remove(node.key)
            torch.set_num_threads(cores)
            return wall, out

        local_wall, _ = local_pass(cores)
        ray_nodes = chunks(1)
        ray = RayExecutor(RayExecutor.Options(num_cpus=cores))
        start = time.perf_counter()
        ray.open(lambda event: None)
        started = time.perf_counter() - start
        print(f"ray: started in {started:.1f} s; {len(ray_nodes)} chunk nodes as tasks, 1 thread each ...", flush=True)
        try:
            ray_wall, ray_records = run_nodes(ray, ray_nodes)
        finally:
            ray.close()
        ray_x = [cache.load(n.key)["x"] for n in ray_nodes]
        for node in ray_nodes:
            cache.remove(node.key)
        one_wall, one_x = local_pass(1)
        same = len(one_x) == len(ray_x) and all(torch.equal(a, b) for a, b in zip(one_x, ray_x))
        print(f"local ({cores} threads) {local_wall:.2f} s, ray ({len(ray_nodes)} tasks, 1 thread each) {ray_wall:.2f} s "
              f"+ {started:.1f} s to start Ray, local (1 thread) {one_wall:.2f} s")
        ratio = ray_wall / local_wall
        print(f"executor ray/local wall {ratio:.2f}x, max concurrent tasks {max_concurrent(ray_records)}, "
              f"identical {'yes' if same else 'no'}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
