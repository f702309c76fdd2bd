"""One-off cost and payback of the short-keyframe copies (config data.transcode), one core.

    OMP_NUM_THREADS=1 python benchmarks/transcode_cost.py [--videos 4] [--windows 8]

On data_throughput.py's K400-like files (300 frames, 320 x 568, keyframe interval 250, crf 23
medium; kept in --dir between runs) and with config.yaml's data.transcode settings (or
--keyint / --crf / --preset / --tune), measures in this process (CPU time: one encoder thread):

  - the cost: core-seconds per video of k400ft.transcode.transcode_one (decode the source,
    encode with libx264, check the copy), and the core-hours that gives per 1,000 videos;
  - the quality: PSNR of each copy vs its source, both decoded by decord at the same
    psnr_frames evenly spaced frames (k400ft.encode.measure_psnr), and the size ratio;
  - the payback: decord's cost of one train item's decode (open + the 16 frames of a random
    64-frame window, video.train_frame_indices, as TrainDataset does) on the source and on
    the copy, over --windows windows per video, and the epochs after which the copy has paid
    for itself (a fine-tune decodes every train video once per epoch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from data_throughput import make_videos  # noqa: E402

from k400ft import encode, transcode, video  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())["data"]


def train_decode_seconds(path: str, windows: int, seed: int) -> float:
    """CPU seconds of one train item's decode (decord, one thread), mean over `windows`."""
    rng = np.random.default_rng(seed)
    start = time.process_time()
    for _ in range(windows):
        reader = video.open_video(path)
        indices = video.train_frame_indices(
            len(reader), rng, CONFIG["num_frames"], CONFIG["sampling_rate"]
        )
        video.read_frames(reader, indices)
        del reader  # a live reader keeps decoding ahead in its thread
    return (time.process_time() - start) / windows


def main() -> None:
    defaults = CONFIG.get("transcode", {})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=568)
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the sources")
    parser.add_argument("--keyint", type=int, default=defaults.get("keyint", 12))
    parser.add_argument("--crf", type=float, default=defaults.get("crf", 18))
    parser.add_argument("--preset", default=defaults.get("preset", "veryfast"))
    parser.add_argument("--tune", default=defaults.get("tune", "fastdecode"))
    parser.add_argument("--psnr-frames", type=int, default=defaults.get("psnr_frames", 8))
    parser.add_argument("--windows", type=int, default=8, help="train windows per video")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "k400ft_bench_videos"))
    args = parser.parse_args()

    started = time.perf_counter()
    sources = make_videos(
        Path(args.dir), args.videos, args.frames, args.height, args.width, args.gop
    )
    print(
        f"{len(sources)} sources: {args.frames} frames {args.height}x{args.width}, keyint "
        f"{args.gop} (ready in {time.perf_counter() - started:.1f} s); copies: keyint "
        f"{args.keyint}, crf {args.crf:g}, preset {args.preset}, tune {args.tune}, one encoder "
        "thread"
    )
    settings = transcode.Settings(args.keyint, args.crf, args.preset, args.tune)
    cost, quality, ratio, before, after = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for number, source in enumerate(sources):
            dest = str(transcode.copy_path(source, tmp))
            record = transcode.transcode_one(source, dest, settings)
            if record["status"] != "transcoded":
                raise SystemExit(f"{source}: {record['status']}: {record['reason']}")
            cost.append(record["core_seconds"])
            quality.append(encode.measure_psnr(source, dest, args.psnr_frames))
            ratio.append(record["copy_bytes"] / record["source_bytes"])
            before.append(train_decode_seconds(source, args.windows, number))
            after.append(train_decode_seconds(dest, args.windows, number))
            print(
                f"  {Path(source).name}: {cost[-1]:.2f} core-s, PSNR {quality[-1]:.2f} dB, "
                f"size x{ratio[-1]:.2f}, train decode {before[-1] * 1e3:.0f} -> "
                f"{after[-1] * 1e3:.0f} ms"
            )
    per_video = statistics.fmean(cost)
    saved = statistics.fmean(before) - statistics.fmean(after)
    print("\none-off cost, from process CPU time")
    print(f"  {per_video:.2f} core-s per video = {per_video * 1000 / 3600:.2f} core-h per 1,000")
    print(f"  PSNR copy vs source: mean {statistics.fmean(quality):.2f} dB, min {min(quality):.2f}")
    print(f"  copy size: x{statistics.fmean(ratio):.2f} the source's")
    print("payback (decord, one thread, one train item = one decode of a 64-frame window)")
    print(
        f"  train decode {statistics.fmean(before) * 1e3:.0f} ms on the source, "
        f"{statistics.fmean(after) * 1e3:.0f} ms on the copy: {saved * 1e3:.0f} ms saved"
    )
    if saved > 0:
        print(f"  the copy pays for itself after {per_video / saved:.1f} epochs")


if __name__ == "__main__":
    main()
