"""Throughput of the video data path on real mp4 files, one core (clips or videos per second).

    OMP_NUM_THREADS=1 python benchmarks/data_throughput.py [--videos 8] [--gop 250]

Writes its own K400-like H.264 files (10 s at 30 fps = 300 frames, 320 x 568 = short side
320 at 16:9, libx264 preset medium crf 23, yuv420p, keyframe interval `--gop`: default 250,
x264's and so ffmpeg's default, which K400 copies re-encoded to short side 320 with ffmpeg
inherit (8.3 s at 30 fps: one keyframe per clip plus scene cuts; our synthetic scenes have
none, so this is the slow end); try --gop 30 or 12 for short-GOP files), then measures, in one run
and on the same files, with config.yaml's `data` section (the paper run: 16 frames, sampling
rate 4, 224 crops, RandAugment rand-m7-n4-mstd0.5-inc1, num_sample 2):

  (a) train: TrainDataset items (decode once, 2 augmented clips, augmentation in the
      worker: data.augment_on workers; benchmarks/train_data.py compares the placements)  clips/s
  (b) test:  TestDataset items (decode once, 5 x 3 views)               videos/s
      (and with uint8 views, normalised later on the device)
  (c) decode floor: decord opening the file and get_batch on the same sorted frame indices,
      nothing else (c_train for (a)'s indices, c_test for (b)'s)        videos/s
  (d) naive test: every view decoded on its own, as upstream does (each of the 15 views opens
      the video and decodes all its every-4th frames, then resizes and slices)  videos/s
  (e) unsorted decode: (c_train)'s frame indices handed to get_batch in random order
      (decord then seeks back for every out-of-order frame)             videos/s

and the ratios a/c, b/c, b/d, where the train time goes (decode, drawing the parameters, the
torch ops) and, for the splits stage, probe rates serially, with 2 threads and
with 2 processes. Files go to --dir (kept between runs: generation is the slow part).
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' mp4 writer and reference test view

from reference import naive_test_view  # noqa: E402
from videos import k400_like_frames, write_mp4  # noqa: E402

from k400ft import splits, video  # noqa: E402

DATA = yaml.safe_load((ROOT / "config.yaml").read_text())["data"]  # the paper run's data path


def make_videos(
    folder: Path, count: int, frames: int, height: int, width: int, gop: int
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"v{number:02d}_{frames}f_{height}x{width}_g{gop}.mp4"
        if not path.exists():
            write_mp4(
                path,
                k400_like_frames(frames, height, width, number),
                fps=30,
                gop=None if gop == 250 else gop,
                crf=23,
                preset="medium",
            )
        paths.append(str(path))
    return paths


def timed(function, items) -> float:
    """CPU seconds of this process per item of function(item) over items.

    CPU time, not wall time: on a shared machine wall time also counts other processes'
    turns on the core; with one torch/OMP/decord thread, CPU time is the one-core cost.
    """
    start = time.process_time()
    for item in items:
        function(item)
    return (time.process_time() - start) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=568)
    parser.add_argument(
        "--epochs",
        type=int,
        default=4,
        help="train items are measured over this many epochs of the videos "
        "(RandAugment's cost varies a lot with the ops drawn)",
    )
    parser.add_argument(
        "--gop", type=int, default=250, help="keyframe interval (250 = x264 default)"
    )
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "k400ft_bench_videos"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    started = time.perf_counter()
    paths = make_videos(Path(args.dir), args.videos, args.frames, args.height, args.width, args.gop)
    size = np.mean([os.path.getsize(p) for p in paths])
    print(
        f"{len(paths)} videos {args.frames} frames {args.height}x{args.width}, keyint "
        f"{args.gop}, {size / 1e3:.0f} kB each ({size * 8 / (args.frames / 30) / 1e3:.0f} kbit/s); "
        f"made in {time.perf_counter() - started:.1f} s; torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "split.csv"
        video.write_split_csv(csv, [(p, 0) for p in paths])
        train = video.TrainDataset(csv, DATA, "train", seed=0)
        test = video.TestDataset(csv, DATA, num_segments=5, num_crops=3)
        index = list(range(len(paths)))
        train[0], test[0]  # warm up (imports, allocator)
        items = [(epoch, i) for epoch in range(args.epochs) for i in index]

        # (a) and, with the very same random draws, its parts: the item's own steps timed
        def train_item(item):
            train.set_epoch(item[0])
            return train[item[1]]

        t_a = timed(train_item, items)
        parts = np.zeros(3)  # decode, draw x2, apply x2 (augment_on workers)
        train_indices = {}
        for epoch, i in items:
            with video.item_rngs(train.seed, epoch, i) as rng:
                t0 = time.process_time()
                reader = video.open_video(paths[i])
                train_indices[epoch, i] = video.train_frame_indices(len(reader), rng, 16, 4)
                frames = video.read_frames(reader, train_indices[epoch, i])
                del reader  # as in the dataset: a live reader keeps decoding in a thread
                t1 = time.process_time()
                params = [train.sampler.draw(*frames.shape[1:3]) for _ in range(2)]
                t2 = time.process_time()
                train.augmenter.batch([torch.from_numpy(frames)], [params])
                parts += (t1 - t0, t2 - t1, time.process_time() - t2)
        t_c_train, t_draw, t_apply = parts / len(items)

        def decode_unsorted(item):
            shuffled = np.random.default_rng(item[1]).permutation(train_indices[item])
            return video.open_video(paths[item[1]]).get_batch(shuffled.tolist()).asnumpy()

        t_e = timed(decode_unsorted, items)
        t_c_test = timed(test.load, index)
        t_b = timed(lambda i: test[i], index)
        test_uint8 = video.TestDataset(csv, DATA, num_segments=5, num_crops=3, normalized=False)
        t_b8 = timed(lambda i: test_uint8[i], index)
        t_d = timed(
            lambda i: [
                naive_test_view(paths[i], DATA, s, c, 5, 3) for s in range(5) for c in range(3)
            ],
            index,
        )

        # and the test time
        taken = [test.load(i) for i in index]
        t_resize = timed(  # as TestDataset.views: resize, then channels first
            lambda f: (
                torch.from_numpy(video.resize_short_side(f, 224)).permute(0, 3, 1, 2).contiguous()
            ),
            taken,
        )
        t_views = timed(test.views, taken)
        naive = torch.stack(
            [naive_test_view(paths[0], DATA, s, c, 5, 3) for s in range(5) for c in range(3)]
        )
        identical = torch.equal(test[0]["views"], naive)

    print("\nthroughput per core, from process CPU time (higher is better)")
    print(
        f"  (a) train        {2 / t_a:7.2f} clips/s   ({t_a * 1e3:.0f} ms/video, "
        f"{len(items)} items)"
    )
    print(
        f"  (b) test 5x3     {1 / t_b:7.2f} videos/s  ({15 / t_b:.1f} views/s, "
        f"{t_b * 1e3:.0f} ms/video)"
    )
    print(
        f"  (c) decode floor {1 / t_c_train:7.2f} videos/s  train indices "
        f"({t_c_train * 1e3:.0f} ms)"
    )
    print(
        f"                   {1 / t_c_test:7.2f} videos/s  test indices ({t_c_test * 1e3:.0f} ms)"
    )
    print(
        f"      uint8 views  {1 / t_b8:7.2f} videos/s  ({t_b8 * 1e3:.0f} ms/video; normalised on "
        "the device instead)"
    )
    print(f"  (d) naive test   {1 / t_d:7.2f} videos/s  ({t_d * 1e3:.0f} ms/video)")
    print(f"  (e) unsorted     {1 / t_e:7.2f} videos/s  train indices ({t_e * 1e3:.0f} ms)")
    print(f"  test views equal upstream-style per-view decoding (video 0, 15 views): {identical}")
    print("\nratios of throughputs (goals: b/d >= 8, a/c >= 1/1.5 = 0.67)")
    print(f"  a/c = {t_c_train / t_a:.2f}  (train takes {t_a / t_c_train:.2f}x its decode floor)")
    print(f"  b/c = {t_c_test / t_b:.2f}  (test takes {t_b / t_c_test:.2f}x its decode floor)")
    print(f"  b/d = {t_d / t_b:.1f}   (single decode vs upstream's per-view decoding)")
    print(f"  uint8 views: b/c = {t_c_test / t_b8:.2f}, b/d = {t_d / t_b8:.1f}")
    print(f"  c/e = {t_e / t_c_train:.1f}   (sorted vs unsorted get_batch, train indices)")
    print(f"\nwhere the train time goes, per video (2 clips; the same {len(items)} draws as (a))")
    for name, seconds in (
        ("decode", t_c_train),
        ("draw the parameters x2", t_draw),
        ("apply (torch ops, this CPU) x2", t_apply),
    ):
        print(f"  {name:38s} {seconds * 1e3:6.0f} ms  {100 * seconds / t_a:5.1f} %")
    total = (t_c_train + t_draw + t_apply) * 1e3
    print(f"  {'(sum, vs the measured item)':38s} {total:6.0f} ms  of {t_a * 1e3:.0f} ms")
    print(f"where the test time goes, per video ({len(index)} videos)")
    for name, seconds in (
        ("decode", t_c_test),
        ("resize (uint8)", t_resize),
        ("normalise into 15 views", t_views - t_resize),
    ):
        print(f"  {name:38s} {seconds * 1e3:6.0f} ms  {100 * seconds / t_b:5.1f} %")

    print("\nsplits probe (open + first frame), videos/s of wall time")
    with tempfile.TemporaryDirectory() as tmp:
        many = []  # 16 distinct names (symlinks) per file: the cache keys on the path
        for copy in range(16):
            for path in paths:
                many.append(os.path.join(tmp, f"{copy}_{os.path.basename(path)}"))
                os.symlink(path, many[-1])
        start = time.perf_counter()
        for path in many:
            splits.probe_video(path)
        rates = {"serial": len(many) / (time.perf_counter() - start)}
        for pool in ("thread", "process"):
            cache = os.path.join(tmp, f"cache_{pool}")
            start = time.perf_counter()
            splits.probe_videos(many, cache, 2, pool)
            rates[f"2 {pool} workers"] = len(many) / (time.perf_counter() - start)
    print("  " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s wall, "
        f"{time.process_time():.0f} s CPU of this process"
    )


if __name__ == "__main__":
    main()
