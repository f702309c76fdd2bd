"""Multi-view (num_segments x num_crops) evaluation of one model (rules/evaluate.smk).

Always started by torchrun, one process per GPU (or CPU process):

    torchrun --standalone --nproc-per-node=N scripts/evaluate.py --spec '<JSON>' --device cuda \\
        --test results/splits/test.csv --weights results/finetune/catmae_vits16/final.pt \\
        --out-dir results/evaluate/catmae_vits16

--spec: {"arch": {...}, "data": {...}, "evaluate": {"num_segments", "num_crops", "batch_views"},
"num_classes": 400, "weights_format": "ours" | "videomae_finetuned"}. Writes logits.npz and
metrics.json into --out-dir (rank 0, atomically).
"""

from __future__ import annotations

import argparse

from k400ft.distributed import loader_workers
from k400ft.evaluate import evaluate
from k400ft.io import load_json_arg, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", required=True, help="evaluation spec as JSON (see above)")
    parser.add_argument("--test", required=True, help="test CSV: '<path> <label>' per line")
    parser.add_argument("--weights", required=True, help="fine-tuned weights (.pt / .pth)")
    parser.add_argument("--device", required=True, choices=("cuda", "cpu"))
    parser.add_argument("--out-dir", required=True, help="folder for logits.npz and metrics.json")
    parser.add_argument("--threads", type=int, default=1, help="CPUs of the job on this node")
    args = parser.parse_args()
    setup_logging()
    spec = load_json_arg(args.spec, "--spec")
    spec["data"]["num_workers"] = loader_workers(args.threads)
    evaluate(spec, args.device, args.test, args.weights, args.out_dir)


if __name__ == "__main__":
    main()
