"""How long the command takes to start: `advbench list-plugins`, `advbench --help`, and `import torch` for scale.

    python benchmarks/bench_startup.py [--runs 5]

Each is a fresh subprocess of this interpreter (no warm imports), run --runs times; the median wall time is
printed. `advbench` is run as `python -m advbench.cli`, so the script measures the checkout it sits in with the
interpreter that runs it. Goal (issue 15): list-plugins and --help under 1 s on the project's 2-core machine;
`import torch` alone is ~1.5-2 s there, so neither may import it. The last line reads
`list-plugins <s> s, --help <s> s, import torch <s> s`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def median_seconds(args: list[str], runs: int) -> float:
    env = {**os.environ, "COLUMNS": "120"}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(args)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="subprocesses per measurement (the median is printed)")
    runs = parser.parse_args().runs
    listing = median_seconds(["-m", "advbench.cli", "list-plugins"], runs)
    help_ = median_seconds(["-m", "advbench.cli", "--help"], runs)
    torch = median_seconds(["-c", "import torch"], runs)
    print(f"list-plugins {listing:.2f} s, --help {help_:.2f} s, import torch {torch:.2f} s")


if __name__ == "__main__":
    main()
