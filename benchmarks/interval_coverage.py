"""How often the report's 95% interval holds the true accuracy: coverage by simulation.

    OMP_NUM_THREADS=1 python benchmarks/interval_coverage.py [--reps 400] [--videos 500]
        [--accuracy 0.79] [--resamples 10000]

Draws `--reps` test sets of `--videos` videos, each right with probability `--accuracy`,
computes `k400ft.stats.interval` on each (BCa, `--resamples` resamples, the report's fixed
seed) and prints the share of intervals that hold the true accuracy, their mean width, and
the CPU time per interval. tests/test_stats.py runs the same simulation with 2,000 resamples.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from k400ft import stats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--videos", type=int, default=500)
    parser.add_argument("--accuracy", type=float, default=0.79)
    parser.add_argument("--resamples", type=int, default=stats.RESAMPLES)
    parser.add_argument("--seed", type=int, default=2026, help="of the simulated test sets")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    covered, widths = 0, []
    start = time.process_time()
    for _ in range(args.reps):
        correct = rng.random(args.videos) < args.accuracy
        low, high = stats.interval(correct, resamples=args.resamples)
        covered += low <= args.accuracy <= high
        widths.append(high - low)
    cpu = (time.process_time() - start) / args.reps
    print(
        f"{args.reps} test sets of {args.videos} videos at {100 * args.accuracy:.1f}%, "
        f"{args.resamples} resamples: coverage {covered / args.reps:.4f} "
        f"({covered}/{args.reps}), mean width {100 * np.mean(widths):.2f} points, "
        f"{1e3 * cpu:.1f} ms CPU per interval"
    )


if __name__ == "__main__":
    main()
