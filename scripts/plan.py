"""Measure what the fine-tunes and evaluations will cost on this node (rules/plan.smk).

    python scripts/plan.py --spec '<JSON>' --device cuda --train results/splits/train.csv \\
        --test results/splits/test.csv --threads 40 --out-dir results/plan

--spec: {"models": {<name>: {"arch", "finetune"}}, "recipe", "data", "evaluate", "num_classes",
"launch": {"finetune", "evaluate"}, "plan": {"videos", "test_videos", "steps", "warmup"},
"transcode": bool}. Runs the fine-tuning engine's step fed by the real loader on a sample of
--train (spread over the classes) and the evaluation's loop on a sample of --test, one process
with the loader workers one fine-tune process gets from --threads; writes cost.json and cost.md
into --out-dir (atomically), with the lines of --data (the data plan, when Kinetics-400 came
from its archive). Both CSVs are read and checked before anything is measured. Exit
codes: 0 done; 2 a refused spec or split CSV (one line naming the key or the user's file: a bad
line or label, fewer train videos than a batch, fewer than 2 test videos); other non-zero: a
failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from k400ft.io import load_json_arg, setup_logging
from k400ft.plan import plan
from k400ft.schedule import SpecError
from k400ft.video import SplitCSVError


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", required=True, help="plan spec as JSON (see above)")
    parser.add_argument("--device", required=True, choices=("cuda", "cpu"))
    parser.add_argument("--train", required=True, help="the fine-tune's train CSV")
    parser.add_argument("--test", required=True, help="the evaluation's test CSV")
    parser.add_argument(
        "--data", default="", help="the data plan's data.json (Kinetics-400 from its archive)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPUs of the job on this node")
    parser.add_argument("--out-dir", required=True, help="folder for cost.json and cost.md")
    args = parser.parse_args()
    log = setup_logging()
    try:
        record = plan(
            load_json_arg(args.spec, "--spec"),
            args.device,
            args.train,
            args.test,
            args.threads,
            args.out_dir,
            json.loads(Path(args.data).read_text()) if args.data else None,
        )
    except (SpecError, SplitCSVError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for name, model in record["models"].items():
        log.info("%s: %s", name, model["projection"]["describe"])
        for advice in model["advice"]:
            log.info("%s: %s", name, advice)


if __name__ == "__main__":
    main()
