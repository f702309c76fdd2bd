"""What a loader worker spends per train clip, path by path, on the same files and draws.

    OMP_NUM_THREADS=1 python benchmarks/train_data.py [--videos 6] [--gops 250,12] [--epochs 3]

One core, process CPU time (with one torch/decord thread that is the one-core cost, whatever
else the machine runs). K400-like H.264 files (300 frames, 320 x 568, crf 23; written by
data_throughput.py's generator, kept in --dir) at each keyframe interval of --gops: 250 is
x264's default (what K400 copies have), 12 stands for the short-keyframe copy. The paper run's
`data` section (16 frames, 224 crops, rand-m7-n4-mstd0.5-inc1, num_sample 2). Per file set:

  upstream   upstream's VideoClsDataset, restated: decode the window (get_batch as drawn),
             then per clip RandAugment in PIL on the full frames, /255 and normalise the
             full frames, random resized crop, flip, erase
  pil        our previous path: one sorted decode, then the same PIL augmentation per clip
             (reference.ClipAugment in tests/, the reference the tensor ops are tested against)
  workers    data.augment_on workers: sorted decode, draw, apply (RandAugment with timm's PIL
             ops, the rest with the torch code the device runs)
  params     data.augment_on device, the worker's part: sorted decode + draw only
  device     the device's part of `params` (ClipAugmenter.batch, torch ops throughout),
             measured here on the CPU: on a GPU it is a small fraction of the step

Prints clips/s per core for each, the ratios to `pil` (today's path before this change) and,
for `params`, the cores one GPU needs at a given clips/s. The same (epoch, video) items and the
same draws for every path.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the reference PIL clip

from data_throughput import DATA, make_videos  # noqa: E402
from reference import ClipAugment  # noqa: E402

from k400ft import augment, video  # noqa: E402

GPU_CLIPS_PER_S = 300  # the compiled ViT-S step on one H200 (benchmarks/RESULTS.md)


def decode(path: str, rng: np.random.Generator, sort: bool) -> np.ndarray:
    """The train window's frames; unsorted: upstream hands get_batch the indices as drawn
    (they are increasing already, so only the reader's life differs)."""
    reader = video.open_video(path)
    indices = video.train_frame_indices(len(reader), rng, DATA["num_frames"], 4)
    if sort:
        return video.read_frames(reader, indices)
    return reader.get_batch(list(indices)).asnumpy()


def upstream_clip(pil: ClipAugment, frames: np.ndarray) -> torch.Tensor:
    """One clip in upstream's order: RandAugment (PIL), normalise full frames, crop, flip,
    erase (the draws are the reference path's: the same crop, flip and erasing)."""
    x = torch.from_numpy(pil.augment_colours(frames)).float() / 255.0
    x = ((x - pil.mean) / pil.std).permute(3, 0, 1, 2)  # [3, T, H, W]
    top, left, h, w = augment.random_resized_crop_box(*frames.shape[1:3], pil.scale, pil.ratio)
    x = torch.nn.functional.interpolate(
        x[:, :, top : top + h, left : left + w], size=(pil.size, pil.size), mode="bilinear"
    )
    if np.random.uniform() < pil.hflip:
        x = x.flip(-1)
    if pil.erase is not None:
        pil.erase(x.reshape(-1, pil.size, pil.size))
    return x


def measure(paths: list[str], epochs: int) -> dict[str, float]:
    """CPU seconds per clip of each path over the same (epoch, video) items."""
    pil = ClipAugment(DATA)
    sampler = augment.ClipSampler(DATA)
    augmenter = augment.ClipAugmenter(DATA)  # the workers' placement: PIL ops on the CPU
    torch_ops = augment.ClipAugmenter(DATA, pil_on_cpu=False)  # what a device runs
    clips = DATA["augment"]["num_sample"]
    items = [(epoch, i) for epoch in range(epochs) for i in range(len(paths))]
    seconds = dict.fromkeys(("upstream", "pil", "workers", "params", "device"), 0.0)
    seconds["apply"] = 0.0
    for epoch, i in items:
        with video.item_rngs(0, epoch, i) as rng:
            start = time.process_time()
            frames = decode(paths[i], rng, sort=False)
            for _ in range(clips):
                upstream_clip(pil, frames)
            seconds["upstream"] += time.process_time() - start
        with video.item_rngs(0, epoch, i) as rng:
            start = time.process_time()
            frames = decode(paths[i], rng, sort=True)
            for _ in range(clips):
                pil(frames)
            seconds["pil"] += time.process_time() - start
        with video.item_rngs(0, epoch, i) as rng:
            start = time.process_time()
            frames = decode(paths[i], rng, sort=True)
            params = [sampler.draw(*frames.shape[1:3]) for _ in range(clips)]
            frames = torch.from_numpy(frames)
            seconds["params"] += time.process_time() - start
            start = time.process_time()
            augmenter.batch([frames], [params])
            seconds["apply"] += time.process_time() - start
            start = time.process_time()
            torch_ops.batch([frames], [params])
            seconds["device"] += time.process_time() - start
    seconds["workers"] = seconds["params"] + seconds.pop("apply")
    return {name: total / (len(items) * clips) for name, total in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--gops", default="250,12", help="keyframe intervals, one file set each")
    parser.add_argument("--epochs", type=int, default=3, help="draws per video")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "k400ft_bench_videos"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = {}
    for gop in (int(g) for g in args.gops.split(",")):
        paths = make_videos(Path(args.dir), args.videos, 300, 320, 568, gop)
        measure(paths[:1], 1)  # warm up: imports, allocator, timm
        results[gop] = measure(paths, args.epochs)
    print(
        f"{args.videos} videos x {args.epochs} draws, 300 frames 320x568, 2 clips each; "
        f"clips/s per core from process CPU time (torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
    )
    names = ("upstream", "pil", "workers", "params", "device")
    print(f"{'keyint':>8s} " + " ".join(f"{n:>9s}" for n in names) + "   params/pil")
    for gop, per_clip in results.items():
        rates = " ".join(f"{1 / per_clip[n]:9.2f}" for n in names)
        print(f"{gop:8d} {rates}   {per_clip['pil'] / per_clip['params']:9.2f}x")
    base = results[next(iter(results))]["pil"]
    print("\nratios to `pil` at keyint " + str(next(iter(results))) + " (today's path before)")
    for gop, per_clip in results.items():
        print(
            f"  keyint {gop}: "
            + ", ".join(f"{n} {base / per_clip[n]:.2f}x" for n in names if n != "device")
        )
    for gop, per_clip in results.items():
        cores = GPU_CLIPS_PER_S * per_clip["params"]
        print(
            f"  keyint {gop}: one GPU at {GPU_CLIPS_PER_S} clips/s needs {cores:.0f} worker cores "
            f"with augment_on device (device part {per_clip['device'] * 1e3:.0f} ms/clip on "
            "this CPU)"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s wall")


if __name__ == "__main__":
    main()
