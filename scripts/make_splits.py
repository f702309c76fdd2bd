"""Kinetics-400 tree -> train/val/test CSVs, labels.csv, dropped.csv, summary.json.

    python scripts/make_splits.py --kinetics '<config kinetics section as JSON>' \
        --cache results/cache/probe --threads 8 --out-dir results/splits

The logic lives in k400ft.splits; this script only parses arguments (rules/data.smk).
"""

import argparse
import sys

from k400ft.io import load_json_arg, setup_logging
from k400ft.splits import SplitError, make_splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinetics", required=True, help="config `kinetics` section (JSON)")
    parser.add_argument("--cache", required=True, help="folder of the probe cache")
    parser.add_argument("--threads", type=int, default=1, help="videos probed in parallel")
    parser.add_argument("--out-dir", required=True, help="folder for the split files")
    parser.add_argument(
        "--pool",
        choices=("process", "thread"),
        default="process",
        help="probe in processes (default; survives decoder crashes) or threads",
    )
    args = parser.parse_args(argv)
    setup_logging()
    kinetics = load_json_arg(args.kinetics, "--kinetics")
    try:
        make_splits(kinetics, args.cache, max(1, args.threads), args.out_dir, pool=args.pool)
    except SplitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
