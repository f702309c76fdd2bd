"""Training-step throughput, model FLOPs utilisation, data-wait share and the full run's cost.

    OMP_NUM_THREADS=2 python benchmarks/train_step.py --config demo/config.yaml  # CPU, demo size
    OMP_NUM_THREADS=2 python benchmarks/train_step.py --batch 1 --steps 2 --warmup 1  # CPU, ViT-S
    python benchmarks/train_step.py --device cuda          # one GPU, the paper's per-GPU batch
    python benchmarks/train_step.py --device cuda --suite  # the one-shot GPU check (minutes)

The measuring code is the timing harness k400ft.measure, which the workflow's `plan` stage runs
on the user's own data (one piece of code called two ways); the projection is k400ft.plan's. One
train step = what the fine-tuning engine does per micro-step (k400ft.finetune): Mixup/CutMix on
the clips, autocast forward (bf16 where the GPU has it, fp16 + GradScaler otherwise, fp32 on
CPU), soft-target cross entropy, backward, AdamW with the layer-decay groups. The model and the
batch come from the config (`models.<model>.arch`, `finetune.batch_per_gpu` videos, each giving
`data.augment.num_sample` clips); weights are random (speed does not depend on them).

Measured and printed:
- step time and clips/s on synthetic clips (the model alone), after `--warmup` steps;
- MFU = achieved model FLOP/s / peak. Model FLOPs are counted by torch's FlopCounterMode over one
  forward + backward of one clip on the meta device: every matmul, convolution and attention
  product at 2 FLOPs per multiply-add; the backward costs twice the forward except the stem's
  input gradient (ViT-S/16 at 16 x 224 x 224: 113.8 GFLOPs forward, 339.4 GFLOPs forward +
  backward). Peak: the GPU's dense bf16/fp16 tensor-core figure from its data sheet (table
  below); on CPU, or a GPU not in the table, the FLOP/s this process measures on a large
  matmul in the step's dtype ("MFU vs measured GEMM", a different and kinder yardstick);
- peak GPU memory;
- with the real loader (TrainDataset, augmentation where `data.augment_on` puts it,
  `--workers` processes, on K400-like mp4 files written here or a split CSV given with
  --train-csv): the loader's own clips/s, and the engine's fed loop (the next batch made on
  the device while a step runs, the loss read a step late): clips/s and the share of step
  time spent waiting for data, both over a steady-state window (after workers x
  prefetch_factor batches, over at least 3 batches of every worker); and the fed step taken
  apart, each part waited for: loader wait, host-to-device copy, augmentation, model step;
- "model alone" runs on clips already on the device (no copy), and on CUDA without
  --compile the compiled model alone too;
- forward-only clips/s (the per-epoch single-view validation);
- the projection of the full run (k400ft.schedule.project_cost): optimiser steps of the
  config's global batch over `--train-videos` for `recipe.epochs`, each taking accumulation x
  the measured micro-step (the loader-fed one when measured), on the configured GPU count,
  assuming data-parallel scaling without loss (NCCL all-reduce of 22M parameters once per
  optimiser step is small next to a step), plus validation.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from data_throughput import make_videos  # noqa: E402  (K400-like mp4 files, the data benchmark's)

from k400ft import plan, video  # noqa: E402
from k400ft.measure import measure_model  # noqa: E402

K400_TRAIN_VIDEOS = (
    240_000  # order of magnitude of a K400 copy's train split (yours: --train-videos)
)
K400_VAL_VIDEOS = 19_800


def write_video(job: tuple) -> str:
    folder, frames, height, width, gop = job
    return make_videos(Path(folder), 1, frames, height, width, gop)[0]


def k400_like_csv(
    folder: Path,
    count: int,
    frames: int,
    height: int,
    width: int,
    gop: int,
    num_classes: int,
    rows: int = 0,
) -> Path:
    """A split CSV over `count` K400-like mp4 files (written in parallel, kept between runs),
    listing them round-robin over at least `rows` rows: the DataLoader hands each worker whole
    batches, so an epoch of fewer than workers x batch videos leaves workers idle and
    understates the loader (24 files, batch 12 and 10 workers: 2 busy workers)."""
    jobs = [
        (str(folder / f"{n:03d}"), frames, height, width, gop) for n in range(count)
    ]  # one file per folder
    with ProcessPoolExecutor(max_workers=min(count, os.cpu_count() or 1)) as pool:
        paths = list(pool.map(write_video, jobs))
    total = max(rows, count)
    csv = folder / f"train_{count}x{total}_{frames}f_{height}x{width}_g{gop}.csv"
    video.write_split_csv(csv, [(paths[n % count], n % num_classes) for n in range(total)])
    return csv


def measure(
    cfg: dict,
    args: argparse.Namespace,
    model_name: str,
    compile_model: bool,
    channels_last: bool,
    csv: Path | None,
) -> dict:
    """All figures for one model / setting (k400ft.measure.measure_model, as the plan stage)."""
    device = torch.device(args.device)
    spec = {
        "arch": cfg["models"][model_name]["arch"],
        "recipe": cfg["recipe"],
        "data": cfg["data"],
        "num_classes": cfg["kinetics"]["num_classes"],
    }
    result = measure_model(
        spec,
        device,
        args.precision,
        batch=args.batch or cfg["models"][model_name]["finetune"]["batch_per_gpu"],
        steps=args.steps,
        warmup=args.warmup,
        compile_model=compile_model,
        channels_last=channels_last,
        csv=csv,
        workers=args.workers,
        loader_batches=args.loader_batches,
    )
    result["model"] = model_name
    launch = cfg["launch"]["finetune"]
    gpus = args.gpus or launch["nodes"] * launch["procs_per_node"]
    result["projection"] = plan.project_run(
        result,
        cfg["models"][model_name]["finetune"]["global_batch"],
        cfg["recipe"]["epochs"],
        gpus,
        args.train_videos,
        args.val_videos,
        unit="GPU" if args.device == "cuda" else "CPU-process",
    )
    return result


def report(r: dict, cfg: dict, args: argparse.Namespace) -> None:
    """Print the figures of one `measure` result."""
    launch = cfg["launch"]["finetune"]
    gpus = args.gpus or launch["nodes"] * launch["procs_per_node"]
    print(
        f"\n== {r['model']} on {r['device']}: {r['precision']}, compile {r['compile']}, "
        f"channels_last_3d {r['channels_last_3d']}, {r['batch_videos']} videos = "
        f"{r['clips_per_step']} clips per step"
    )
    print(
        f"  model FLOPs per clip: forward {r['forward_gflops_per_clip']:.4g} G, forward+backward "
        f"{r['train_gflops_per_clip']:.4g} G (FlopCounterMode, 2 per multiply-add)"
    )
    print(
        f"  synthetic clips: step {r['step_s'] * 1e3:.1f} ms, {r['clips_per_s']:.2f} clips/s, "
        f"MFU {100 * r['mfu']:.1f}%  [{r['peak_source']}]"
    )
    if "peak_mem_gib" in r:
        print(f"  peak GPU memory {r['peak_mem_gib']:.2f} GiB")
    print(f"  forward only (validation): {r['val_clips_per_s']:.2f} clips/s")
    if "compiled_clips_per_s" in r:
        print(f"  compiled model alone: {r['compiled_clips_per_s']:.2f} clips/s")
    if "loader_clips_per_s" in r:
        window = r["fed_window"]
        print(
            f"  real loader, {args.workers} workers: {r['loader_clips_per_s']:.2f} clips/s alone; "
            f"the engine's fed loop: {r['fed_clips_per_s']:.2f} clips/s "
            f"({100 * r['fed_clips_per_s'] / r['clips_per_s']:.0f}% of the model alone), "
            f"waiting for data {100 * r['data_wait']:.0f}% of the step time (after "
            f"{window['warmup_batches']} batches, over {window['timed_batches']})"
        )
        parts = r["fed_parts"]
        print(
            "  fed step taken apart (median ms, each part waited for): "
            + ", ".join(f"{name[:-3]} {value:.1f}" for name, value in parts.items())
        )
    unit = "GPU" if args.device == "cuda" else "CPU-process"
    print(
        f"  projection, {cfg['recipe']['epochs']} epochs of {args.train_videos} videos, global "
        f"batch {cfg['models'][r['model']]['finetune']['global_batch']}, {gpus} {unit}(s), "
        f"validation {args.val_videos} videos/epoch: {r['projection']['describe']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=str(ROOT / "config.yaml"), help="workflow config (model, batch, recipe)"
    )
    parser.add_argument(
        "--model", action="append", help="models.<name> (default: every model of the config)"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default=None, help="default: the config's recipe.precision")
    parser.add_argument(
        "--batch", type=int, default=None, help="videos per step (default: finetune.batch_per_gpu)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (compile happens here)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument(
        "--channels-last", action="store_true", help="channels_last_3d stem and input"
    )
    parser.add_argument(
        "--suite",
        action="store_true",
        help="GPU check: every model eager and compiled, channels_last_3d on/off, loader fed",
    )
    loader_options = {  # the real-loader measurements
        "--workers": dict(
            type=int, default=None, help="loader workers (default: data.num_workers)"
        ),
        "--loader-batches": dict(type=int, default=10, help="batches timed for the loader alone"),
        "--no-loader": dict(action="store_true", help="skip the real-loader measurements"),
        "--train-csv": dict(type=Path, help="a split CSV for the loader (else generated)"),
        "--videos": dict(type=int, default=16, help="K400-like files to generate for the loader"),
        "--video-shape": dict(default="300x320x568", help="frames x height x width of the files"),
        "--dir": dict(type=Path, default=Path(tempfile.gettempdir()) / "k400ft_bench_videos"),
    }
    loader = parser.add_argument_group("real loader")
    for flag, kwargs in loader_options.items():
        loader.add_argument(flag, **kwargs)
    parser.add_argument(
        "--gpus", type=int, default=None, help="GPUs of the projected run (default: config launch)"
    )
    parser.add_argument("--train-videos", type=int, default=K400_TRAIN_VIDEOS)
    parser.add_argument("--val-videos", type=int, default=K400_VAL_VIDEOS)
    args = parser.parse_args()

    cfg = yaml.safe_load(Path(args.config).read_text())
    args.precision = args.precision or cfg["recipe"]["precision"]
    args.workers = cfg["data"]["num_workers"] if args.workers is None else args.workers
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if (args.compile or args.suite) and args.device == "cpu":
        print(
            "torch.compile is a CUDA option here (the engine never compiles on CPU): not compiled"
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}")
    models = args.model or list(cfg["models"])
    csv = None
    if not args.no_loader:
        csv = args.train_csv
        if csv is None:
            frames, height, width = (int(v) for v in args.video_shape.split("x"))
            start = time.perf_counter()
            batches = [args.batch or cfg["models"][m]["finetune"]["batch_per_gpu"] for m in models]
            csv = k400_like_csv(
                args.dir,
                args.videos,
                frames,
                height,
                width,
                250,
                cfg["kinetics"]["num_classes"],
                rows=2 * max(batches) * max(1, args.workers),
            )
            print(
                f"loader files: {args.videos} x {args.video_shape} H.264 in {args.dir} "
                f"({time.perf_counter() - start:.0f} s to write or find)"
            )
    settings = [(args.compile and args.device == "cuda", args.channels_last)]
    if args.suite and args.device == "cuda":
        settings = [(False, False), (False, True), (True, False), (True, True)]
    for compile_model, channels_last in settings:  # every model at one setting before the next
        for model_name in models:
            report(measure(cfg, args, model_name, compile_model, channels_last, csv), cfg, args)
            if args.device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
