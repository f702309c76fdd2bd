"""Multi-view (num_segments x num_crops) evaluation of one model (rules/evaluate.smk).

Always started by torchrun, one process per GPU (or CPU process):

    torchrun --standalone --nproc-per-node=N scripts/evaluate.py --spec '<JSON>' --device cuda \\
        --test results/splits/test.csv --weights results/finetune/catmae_vits16/final.pt \\
        --out-dir results/evaluate/catmae_vits16

--spec: {"arch": {...}, "data": {...}, "evaluate": {"num_segments", "num_crops", "batch_views"},
"num_classes": 400, "weights_format": "ours" | "videomae_finetuned"}. Writes logits.npz and
metrics.json into --out-dir (rank 0, atomically). Exit codes: 0 done; 2 a refused test CSV or
spec (one line naming the file and line, or the key); other non-zero: a failure.
"""

from __future__ import annotations

import sys

from k400ft.distributed import stage_parser, stage_spec
from k400ft.evaluate import evaluate
from k400ft.io import setup_logging
from k400ft.schedule import SpecError
from k400ft.video import SplitCSVError


def main() -> None:
    parser = stage_parser(__doc__, "evaluation", "logits.npz and metrics.json")
    parser.add_argument("--test", required=True, help="test CSV: '<path> <label>' per line")
    parser.add_argument("--weights", required=True, help="fine-tuned weights (.pt / .pth)")
    args = parser.parse_args()
    setup_logging()
    try:
        evaluate(stage_spec(args), args.device, args.test, args.weights, args.out_dir)
    except (SplitCSVError, SpecError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
