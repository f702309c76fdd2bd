"""The test views' pixels against upstream's, on K400-like mp4 files (uint8 values compared).

    OMP_NUM_THREADS=1 python benchmarks/view_pixels.py [--videos 2] [--sizes 320x568,568x320]

For each size, `--videos` K400-like H.264 files (data_throughput.py's: 300 frames, crf 23,
keyframe interval 250) are decoded once (every 4th frame, the test indices); the 5 x 3 test
views are then made twice from the same frames: by `video.TestDataset` (uint8, before
normalisation) and upstream's way, `cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)`
per frame (tests/reference.py `upstream_resize`, upstream's `resize_clip`) and the same crops.
Prints, per size and over all views: the share of values that differ, the largest difference
and the bias (mean of ours minus upstream's, in uint8 levels), the range over views, and how
many views and validation clips are identical. The paper config's data section (224 px).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))  # upstream's resize, as the tests use it
sys.path.insert(0, str(ROOT / "benchmarks"))

from data_throughput import make_videos  # noqa: E402
from reference import upstream_resize  # noqa: E402

from k400ft import video  # noqa: E402

DATA = yaml.safe_load((ROOT / "config.yaml").read_text())["data"]


def upstream_views(frames: np.ndarray, size: int, length: int) -> torch.Tensor:
    """The 5 x 3 uint8 views [15, 3, T, s, s] of upstream's resize and crops."""
    resized = torch.from_numpy(upstream_resize(frames, size)).permute(3, 0, 1, 2)
    return torch.stack(
        [
            resized[:, start : start + length, top : top + size, left : left + size]
            for start in video.test_view_starts(frames.shape[0], length, 5)
            for top, left in video.test_crop_offsets(*resized.shape[2:], size, 3)
        ]
    )


def upstream_validation(frames: np.ndarray, size: int, crop: int) -> torch.Tensor:
    resized = upstream_resize(frames, size)
    top, left = video.center_crop_offset(*resized.shape[1:3], crop)
    x = torch.from_numpy(resized[:, top : top + crop, left : left + crop]).permute(0, 3, 1, 2)
    return video.normalize(x, torch.tensor(DATA["mean"]), torch.tensor(DATA["std"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2, help="files per size")
    parser.add_argument("--sizes", default="320x568,320x426,568x320", help="HxW,...")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "k400ft_bench_videos"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    size, length = int(DATA["short_side_size"]), int(DATA["num_frames"])
    rows, every = [], []
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "split.csv"
        video.write_split_csv(csv, [("never decoded.mp4", 0)])
        test = video.TestDataset(csv, DATA, 5, 3, normalized=False)
        validation = video.TrainDataset(csv, DATA, "validation")
        for spec in args.sizes.split(","):
            height, width = map(int, spec.split("x"))
            paths = make_videos(Path(args.dir), args.videos, 300, height, width, 250)
            diffs, same_clips = [], 0
            for path in paths:
                reader = video.open_video(path)
                frames = video.read_frames(reader, video.test_frame_indices(len(reader), length, 4))
                ours = test.views(frames).int()
                diffs += list(ours - upstream_views(frames, size, length).int())
                window = frames[:length]  # a validation clip's frames (any 16 will do)
                same_clips += torch.equal(
                    validation.validation_clip(window),
                    upstream_validation(window, size, int(DATA["input_size"])),
                )
            rows.append((spec, diffs, same_clips, len(paths)))
            every += diffs

    def describe(name: str, diffs: list[torch.Tensor], same_clips: int, clips: int) -> str:
        share = [float((d != 0).float().mean()) for d in diffs]
        bias = [float(d.float().mean()) for d in diffs]
        whole = torch.stack(diffs)
        return (
            f"{name:>10s} {len(diffs):5d} {100 * float((whole != 0).float().mean()):8.2f} "
            f"{100 * min(share):6.2f}-{100 * max(share):<6.2f} {int(whole.abs().max()):4d} "
            f"{float(whole.float().mean()):+8.4f} {min(bias):+7.4f}..{max(bias):+.4f} "
            f"{sum(s == 0 for s in share):5d} {same_clips:4d}/{clips}"
        )

    print(
        f"{'size':>10s} {'views':>5s} {'differ%':>8s} {'per view %':>13s} {'max':>4s} "
        f"{'bias':>8s} {'bias per view':>16s} {'same':>5s} {'val same':>8s}"
    )
    for spec, diffs, same_clips, clips in rows:
        print(describe(spec, diffs, same_clips, clips))
    total_same = sum(r[2] for r in rows)
    print(describe("all", every, total_same, sum(r[3] for r in rows)))
    print(
        "(bias: mean of ours - upstream's, uint8 levels; same: views / validation clips identical)"
    )


if __name__ == "__main__":
    main()
