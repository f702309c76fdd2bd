"""Train augmentation on the training device: the per-clip path against the batched one.

    OMP_NUM_THREADS=1 python benchmarks/augment.py                 # CPU, K400-sized frames
    python benchmarks/augment.py --device cuda --videos 12 48      # GPU: the paper batch and 4x

For a batch of `--videos` videos (2 clips each: upstream's num_sample), frames of K400's mixed
sizes (`--sizes`, cycled: 320x568, 320x426, 426x320 by default), `--frames` frames each, and
each clip's parameters drawn by the real `ClipSampler` (RandAugment rand-m7-n4-mstd0.5-inc1,
crop, flip, erasing p 0.25) from seeded item RNGs, it measures, median of `--repeats`:
- ms per clip of `ClipAugmenter.clip` per clip with the torch ops (the per-clip path as it was
  before the batched one) and of `ClipAugmenter.batch` on the whole batch, frames already on
  the device (the loader's copy is not part of it);
- the batched path on the batch padded to its largest frame (what the engine does on a GPU)
  against one call per frame size (`by_size`, what it does on a CPU: no padding);
- aten ops dispatched per batch by each (`traffic.OpCounter`), for every `--videos` value.
The first call is a warm-up. On CUDA each call is waited for (wall time); on the CPU the figure
is this process's CPU time, with OMP_NUM_THREADS=1 one core's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from k400ft import augment, traffic, video  # noqa: E402


def make_batch(data_cfg: dict, videos: int, frames: int, sizes: list[tuple[int, int]], device):
    """Random frames of the cycled sizes on `device` and each video's 2 clips' drawn params."""
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
    padded, video_sizes = augment.pad_frames(batch_frames)
    return [f.to(device) for f in batch_frames], padded.to(device), video_sizes, params


def timed(function, device: torch.device, repeats: int) -> float:
    """Median seconds of function() over `repeats` calls after one warm-up: on CUDA wall time,
    each call waited for; on the CPU this process's CPU time (one thread: other work on a
    shared machine does not count)."""
    function()
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(clock() - start)
    return statistics.median(seconds)


def count(function) -> int:
    with traffic.OpCounter() as counter:
        function()
    return counter.count


def ways(augmenter, frames, padded, video_sizes, params) -> dict:
    """The three ways of making one batch's clips, as callables."""
    groups = {tuple(size) for size in video_sizes.tolist()}

    def per_clip():
        return [augmenter.clip(f, p) for f, ps in zip(frames, params, strict=True) for p in ps]

    def batched():
        return augmenter.batch(padded, params, video_sizes, by_size=False)

    def grouped():  # one call per size: no padding, a call per distinct size
        return augmenter.batch(padded, params, video_sizes, by_size=True)

    return {
        "per clip": per_clip,
        "batched (padded)": batched,
        f"batched ({len(groups)} size groups)": grouped,
    }


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
    parser.add_argument("--no-per-clip", action="store_true", help="skip the slow per-clip path")
    args = parser.parse_args()

    data_cfg = yaml.safe_load(Path(args.config).read_text())["data"]
    device = torch.device(args.device)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    augmenter = augment.ClipAugmenter(data_cfg, pil_on_cpu=False)
    print(
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} CPU threads): "
        f"{args.frames} frames of {args.sizes}, {data_cfg['input_size']} px clips, median of "
        f"{args.repeats}"
    )
    print("| videos | clips | path | ms per clip | ms per batch | aten ops per batch |")
    print("|---|---|---|---|---|---|")
    for videos in args.videos:
        frames, padded, video_sizes, params = make_batch(
            data_cfg, videos, args.frames, sizes, device
        )
        clips = 2 * videos
        paths = ways(augmenter, frames, padded, video_sizes, params)
        if args.no_per_clip:
            paths.pop("per clip")
        for name, function in paths.items():
            seconds = timed(function, device, args.repeats)
            print(
                f"| {videos} | {clips} | {name} | {1e3 * seconds / clips:.2f} | "
                f"{1e3 * seconds:.1f} | {count(function)} |"
            )


if __name__ == "__main__":
    main()
