"""Train augmentation on the training device: clip by clip against the batch, eager against
compiled, in time, aten ops and bytes read and written.

    OMP_NUM_THREADS=1 python benchmarks/augment.py                 # CPU, K400-sized frames
    python benchmarks/augment.py --device cuda --videos 12 48      # GPU: the paper batch and 4x

For a batch of `--videos` videos (2 clips each: upstream's num_sample), frames of K400's mixed
sizes (`--sizes`, cycled: 320x568, 320x426, 426x320 by default), `--frames` frames each, and
each clip's parameters drawn by the real `ClipSampler` (RandAugment rand-m7-n4-mstd0.5-inc1,
crop, flip, erasing p 0.25) from seeded item RNGs, it measures, median of `--repeats`:
- ms per clip of `ClipAugmenter.clip` per clip with the torch ops (`--per-clip`) and of
  `ClipAugmenter.batch` on the whole batch as the loader's collate delivers it (one padded
  tensor per orientation, `augment.group_frames`), frames already on the device;
- the batch eager and compiled (data.augment_compile), grouped by orientation (what the engine
  does on a GPU) and by exact size (on a CPU);
- per batch: aten ops dispatched by the eager batch (`traffic.OpCounter`; a compiled graph
  runs few kernels), and bytes read and written (`traffic.Traffic`: eager ops by their
  tensors, compiled kernels by their arguments) with the floor the issue names: each clip's
  frames read and written once per op it drew, one read of its crop, the float32 clips
  written; `--by-function` prints the bytes by library function;
- the compile: graphs and seconds, paid once per process.
The first call is a warm-up (and the compile). On CUDA each call is waited for (wall time); on
the CPU the figure is this process's CPU time, with OMP_NUM_THREADS=1 one core's. Bytes are
counted on the CPU only (the kernels a GPU runs are the same graphs, compiled by Triton).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from k400ft import augment, clipbatch, traffic, video  # noqa: E402

traffic.install_kernel_counting()  # before anything is compiled: compiled kernels are counted


def make_batch(data_cfg: dict, videos: int, frames: int, sizes: list[tuple[int, int]], device):
    """Random frames of the cycled sizes and each video's 2 clips' drawn params: the frames
    per video and as the collate delivers them (`augment.group_frames`), on `device`."""
    sampler = augment.ClipSampler(data_cfg)
    batch_frames, params = [], []
    for number in range(videos):
        height, width = sizes[number % len(sizes)]
        generator = torch.Generator().manual_seed(number)
        batch_frames.append(
            torch.randint(
                0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=generator
            )
        )
        with video.item_rngs(0, 0, number):
            params.append([sampler.draw(height, width) for _ in range(2)])
    groups, video_sizes = augment.group_frames(batch_frames)
    return (
        [f.to(device) for f in batch_frames],
        [g.to(device) for g in groups],
        video_sizes,
        params,
    )


def floor_bytes(frames: list[torch.Tensor], params, size: int) -> int:
    """What a batch's pixels need: each clip's frames read and written once per op it drew,
    its crop read once, its float32 clip written."""
    total = 0
    for video_frames, video_params in zip(frames, params, strict=True):
        t = video_frames.shape[0]
        for p in video_params:
            total += 2 * video_frames.numel() * len(p.ops) + t * 3 * p.box[2] * p.box[3]
            total += 4 * 3 * t * size * size
    return total


def per_clip_path(augmenter, frames, params) -> list[torch.Tensor]:
    return [augmenter.clip(f, p) for f, ps in zip(frames, params, strict=True) for p in ps]


def timed(function, device: torch.device, repeats: int) -> tuple[float, float]:
    """(first call's seconds, median seconds over `repeats` later calls): on CUDA wall time,
    each call waited for; on the CPU this process's CPU time (one thread: other work on a
    shared machine does not count)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    seconds = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(clock() - start)
    return seconds[0], statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--videos", type=int, nargs="+", default=[12], help="videos per batch")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sizes", default="320x568,320x426,426x320", help="HxW, cycled")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-clip", action="store_true", help="time the per-clip path too")
    parser.add_argument("--eager", choices=("yes", "no"), default="yes", help="the eager batch")
    parser.add_argument("--by-function", action="store_true", help="bytes by library function")
    args = parser.parse_args()

    data_cfg = yaml.safe_load(Path(args.config).read_text())["data"]
    device = torch.device(args.device)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    augmenters = {
        "eager": augment.ClipAugmenter(data_cfg, pil_on_cpu=False),
        "compiled": augment.ClipAugmenter(data_cfg, pil_on_cpu=False, compiled=True),
    }
    if args.eager == "no":
        augmenters.pop("eager")
    print(
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} CPU threads): "
        f"{args.frames} frames of {args.sizes}, {data_cfg['input_size']} px clips, median of "
        f"{args.repeats}; bytes counted on the CPU"
    )
    print(
        "| videos | clips | path | ms per clip | ms per batch | first call ms | aten ops "
        "| GB read + written | x floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    functions = {}
    for videos in args.videos:
        frames, groups, video_sizes, params = make_batch(
            data_cfg, videos, args.frames, sizes, device
        )
        floor = floor_bytes(frames, params, int(data_cfg["input_size"]))
        clips = 2 * videos
        paths = {}
        if args.per_clip:
            per_clip = augmenters.get("eager", augmenters["compiled"])
            paths["clip by clip (eager)"] = functools.partial(
                per_clip_path, per_clip, frames, params
            )
        for name, augmenter in augmenters.items():
            for grouping, by_size in (("by orientation", False), ("by size", True)):
                paths[f"batch, {name}, {grouping}"] = functools.partial(
                    augmenter.batch, groups, params, video_sizes, by_size=by_size
                )
        for name, function in paths.items():
            first, seconds = timed(function, device, args.repeats)
            ops = "-"
            if "compiled" not in name:
                with traffic.OpCounter() as counter:
                    function()
                ops = str(counter.count)
            moved = "-"
            if device.type == "cpu":
                with traffic.Traffic() as counted:
                    function()
                moved = f"{counted.total / 1e9:.2f} | {counted.total / floor:.1f}"
                functions[(videos, name)] = counted
            print(
                f"| {videos} | {clips} | {name} | {1e3 * seconds / clips:.2f} | "
                f"{1e3 * seconds:.1f} | {1e3 * first:.0f} | {ops} | {moved} |"
            )
        print(f"| {videos} | {clips} | floor | | | | | {floor / 1e9:.2f} | 1.0 |")
    stats = clipbatch.compile_stats()
    print(f"\ncompiled: {stats['graphs']} graphs, {stats['seconds']:.1f} s compiling (Dynamo)")
    if args.by_function:
        for (videos, name), counted in functions.items():
            print(f"\n{videos} videos, {name}: GB by function (ops or kernels)")
            for place, count in counted.bytes.most_common():
                print(f"  {place}: {count / 1e9:.3f} ({counted.ops[place]})")


if __name__ == "__main__":
    main()
