"""The quick suite on CUDA, with the GPU's utilisation sampled, and the same suite on the CPU.

    python benchmarks/bench_gpu.py                 # suites/quick.yaml, whole (the CPU half alone ~10 min on 2 cores)
    python benchmarks/bench_gpu.py --limit 20      # the same grid, evaluation and fitting images capped at 20 each
    python benchmarks/bench_gpu.py --quick         # a much smaller copy of the suite: a smoke run (171 s on 2 shared CPU cores, 1 thread)

Each half is `advbench run SUITE --device cuda|cpu --no-report` in a subprocess of its own with a fresh, empty
cache folder (ADVBENCH_CACHE), so both start cold: the dataset's decode, every model's training and every stage
are computed in each, and neither reads the other's results. `--limit N` is passed to both runs (it caps the
evaluation and detector-fitting images at N each, as `advbench run --limit`; training sets stay as the suite
has them). `--quick` runs a shortened copy of the suite instead (1,000 training and 256 test images, two epochs
per victim, one for f2, small interpreter budgets, the FGSM attack alone, 48 + 48 evaluation and fitting images; written to
the temporary folder): it checks the benchmark works, its figures mean little.

While the CUDA half runs, a thread samples the GPU's utilisation every 0.5 s, through pynvml when it imports,
else `nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits`; the mean over the run is printed.
The last line reads `gpu quick suite <s> s, <u>% mean utilisation, <r>x cpu`, where <s> is the CUDA run's wall
time and <r> the CPU run's wall time over it (how many times faster than the CPU the CUDA run was). Where CUDA
is absent only the CPU half runs and the last line says so:
`gpu quick suite: CUDA absent on this machine; cpu quick suite <s> s`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import yaml

REPO = Path(__file__).resolve().parents[1]


def quick_copy(suite_path: Path, folder: Path) -> Path:
    """A much smaller copy of the suite (same plugins and pairs, tiny data and budgets) for a smoke run."""
    suite = yaml.safe_load(suite_path.read_text())
    data = suite["dataset"].setdefault("options", {})
    if "path" in data and not Path(data["path"]).is_absolute():
        data["path"] = str((REPO / data["path"]).resolve())  # suites name it from the repository root
    data.update({"train_limit": 1000, "test_limit": 256})
    for victim in suite.get("victims", {}).values():
        victim.setdefault("options", {}).update({"epochs": 2})
    suite.get("mask_classifier", {}).setdefault("options", {}).update({"epochs": 1})
    budgets = {"lan": {"epochs": 1, "width": 64}, "smoothgrad": {"n_samples": 2},
               "integrated-gradients": {"steps": 2}, "lan-per-sample": {"steps": 2}}
    # one attack that succeeds on a two-epoch victim: the detectors that learn need adversarial fitting images
    # (a C&W or JSMA cut to a smoke budget may find none and stop the run)
    suite["attacks"] = {name: entry for name, entry in suite["attacks"].items()
                        if (entry or {}).get("plugin", name) == "fgsm"}
    for section in ("interpreters",):
        for name, entry in (suite.get(section) or {}).items():
            entry = entry if entry is not None else {}
            suite[section][name] = entry
            plugin = entry.get("plugin", name)
            if plugin in budgets:
                entry.setdefault("options", {}).update(budgets[plugin])
            if section == "interpreters":
                entry["mask_train_limit"] = 128
    suite["evaluation"].update({"n_eval": 48, "n_fit": 48})
    suite["evaluation"].pop("n_mask_eval", None)
    suite["name"] = f"{suite.get('name', 'suite')}-smoke"
    path = folder / "quick-smoke.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


class Utilisation:
    """Samples the GPU's utilisation (percent) every ``interval`` seconds in a thread, between start and stop."""

    def __init__(self, index: int = 0, interval: float = 0.5) -> None:
        self.index, self.interval = index, interval
        self.samples: list[float] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._read = self._reader()

    def _reader(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "pynvml"
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # not installed, or no NVML: try the command line tool
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                       "-i", str(self.index)]

            def read() -> Optional[float]:
                out = subprocess.run(command, capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 and out.stdout.strip() else None
            return read
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                value = self._read()
            except Exception:
                value = None
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> "Utilisation":
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.samples) if self.samples else None


def run_suite(suite: Path, device: str, folder: Path, limit: Optional[int], threads: Optional[int]) -> float:
    """Wall seconds of one cold `advbench run` of ``suite`` on ``device``, with its own empty cache."""
    cache = folder / f"cache-{device}"
    cache.mkdir()
    command = [sys.executable, "-m", "advbench.cli", "run", str(suite), "--device", device, "--no-report",
               "--out", str(folder / f"run-{device}")]
    if limit is not None:
        command += ["--limit", str(limit)]
    if threads is not None:
        command += ["--threads", str(threads)]
    env = {**os.environ, "ADVBENCH_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"advbench run --device {device} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=REPO / "suites" / "quick.yaml")
    parser.add_argument("--limit", type=int, default=None, help="cap evaluation and fitting images at N each")
    parser.add_argument("--quick", action="store_true", help="a much smaller copy of the suite (smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (advbench's default)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (caches and runs)")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    folder = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        suite = quick_copy(args.suite, folder) if args.quick else args.suite.resolve()
        what = f"{suite.name}" + (f", --limit {args.limit}" if args.limit else "")
        gpu_seconds = utilisation = None
        if cuda:
            with Utilisation() as sampler:
                gpu_seconds = run_suite(suite, "cuda", folder, args.limit, args.threads)
            utilisation = sampler.mean
            print(f"cuda ({torch.cuda.get_device_name(0)}): {what}: {gpu_seconds:.1f} s, utilisation "
                  f"{'n/a' if utilisation is None else f'{utilisation:.0f}%'} over {len(sampler.samples)} samples "
                  f"({sampler.source})", flush=True)
        cpu_seconds = run_suite(suite, "cpu", folder, args.limit, args.threads)
        print(f"cpu ({os.cpu_count()} cores): {what}: {cpu_seconds:.1f} s", flush=True)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if gpu_seconds is None:
        print(f"gpu quick suite: CUDA absent on this machine; cpu quick suite {cpu_seconds:.1f} s")
    else:
        shown = "n/a" if utilisation is None else f"{utilisation:.0f}%"
        print(f"gpu quick suite {gpu_seconds:.1f} s, {shown} mean utilisation, {cpu_seconds / gpu_seconds:.2f}x cpu")


if __name__ == "__main__":
    main()
