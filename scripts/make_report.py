"""The Top-1/Top-5 table, plots and provenance (rules/report.smk).

    python scripts/make_report.py --spec '<JSON>' --metrics results/evaluate/*/metrics.json \\
        --logits results/evaluate/*/logits.npz --train-logs results/finetune/*/train_log.jsonl \\
        --labels results/splits/labels.csv --benchmarks results/benchmarks \\
        --out-dir results/report [--plan results/plan/cost.json]

--spec: {"rows": {<row>: {"name", "pretrain_epochs", "published": {"top1", "top5"},
"finetuned", "runs": {<run>: <seed or null>}}}, "num_frames": 16, "evaluate": {...}}: a row is
a model (one run per fine-tuning seed) or released weights (one run, seed null). Each input
file belongs to the run named by its parent folder.
"""

from __future__ import annotations

import argparse

from k400ft.io import load_json_arg, setup_logging
from k400ft.report import make_report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", required=True, help="report spec as JSON (see above)")
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every run")
    parser.add_argument("--logits", nargs="+", required=True, help="logits.npz of every run")
    parser.add_argument(
        "--train-logs", nargs="*", default=[], help="train_log.jsonl of every fine-tuned run"
    )
    parser.add_argument("--labels", required=True, help="labels.csv (index,name)")
    parser.add_argument(
        "--benchmarks", required=True, help="Snakemake benchmark folder (may not exist)"
    )
    parser.add_argument(
        "--out-dir", required=True, help="folder for the table, plots and provenance"
    )
    parser.add_argument(
        "--plan", default=None, help="the plan stage's cost.json (included when it exists)"
    )
    args = parser.parse_args()
    setup_logging()
    make_report(
        load_json_arg(args.spec, "--spec"),
        args.metrics,
        args.logits,
        args.train_logs,
        args.labels,
        args.benchmarks,
        args.out_dir,
        args.plan,
    )


if __name__ == "__main__":
    main()
