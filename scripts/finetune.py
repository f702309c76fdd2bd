"""Fine-tune one model on the train split, validating every epoch (rules/finetune.smk).

Always started by torchrun, one process per GPU (or CPU process):

    torchrun --standalone --nproc-per-node=4 scripts/finetune.py --spec '<JSON>' --device cuda \\
        --train results/splits/train.csv --val results/splits/val.csv \\
        --pretrained results/checkpoints/catmae_vits16_pt300.pth \\
        --state-dir results/state/catmae_vits16 --out-dir results/finetune/catmae_vits16

--spec: {"arch": {...}, "finetune": {"global_batch", "batch_per_gpu", "base_lr"}, "recipe": {...},
"data": {...}, "num_classes": 400, "pretrained_format": "catmae_pretrain" | "videomae_pretrain"}.

Resumes by itself from --state-dir. Writes final.pt, train_log.jsonl and spec.json into --out-dir
(rank 0, atomically) only when the last epoch is done. Exit codes: 0 done; 75 (EX_TEMPFAIL)
stopped by SIGTERM / SIGUSR1 after saving its state: run it again (Snakemake --retries, SLURM
requeue) and it resumes; 2 a refused spec or split CSV (e.g. a global batch that does not split,
a label outside the classes, a split without videos: one line naming the key, or the file and
line, checked before anything is written); 73 the state dir is held by another trainer (the
message names its host and pid); other non-zero: a failure (its traceback). Every way out ends
each rank's log with `rank R of N: exitcode: C (...)`. Under torchrun, any non-zero exit of a
trainer makes torchrun itself exit 1, and torchrun stopped by a signal exits 1 with a
SignalException: that line is where the trainer's code is. Rank 0 also appends its log to
<state-dir>/trainer.log (after a header per run) while it holds the state dir's lock.
"""

from __future__ import annotations

import sys

from k400ft.distributed import stage_parser, stage_spec
from k400ft.finetune import finetune
from k400ft.io import setup_logging


def main() -> None:
    parser = stage_parser(__doc__, "fine-tuning", "final.pt and train_log.jsonl")
    parser.add_argument("--train", required=True, help="train CSV: '<path> <label>' per line")
    parser.add_argument("--val", required=True, help="val CSV (validated every epoch, single view)")
    parser.add_argument("--pretrained", required=True, help="pretrained checkpoint (.pth)")
    parser.add_argument("--state-dir", required=True, help="resume state (kept across failures)")
    args = parser.parse_args()
    setup_logging()
    spec = stage_spec(args)
    sys.exit(
        finetune(
            spec, args.device, args.train, args.val, args.pretrained, args.state_dir, args.out_dir
        )
    )


if __name__ == "__main__":
    main()
