"""The embedded demo's inputs: a synthetic, learnable Kinetics-400-shaped video set and tiny
pretrained checkpoints in the exact upstream key layouts.

The video set copies the layout of the official Kinetics-400 release (REFERENCE.md §3): the
annotation CSVs `label,youtube_id,time_start,time_end,split,is_cc` (split `train` / `val`,
labels with spaces quoted, rows sorted by label) and H.264 mp4 files named
`{youtube_id}_{time_start:06d}_{time_end:06d}.mp4` in one folder per split, with 11-character
YouTube-like ids, 25 fps, yuv420p and x264's default keyframe interval (250), as the
Kinetics download scripts produce. Like every real copy, a few entries are broken: a zero-byte
file, a truncated download, an HTML error page saved as .mp4 and a listed clip whose file is
missing.

Classes: a pair of coloured squares (red or blue, side about 1/5 of the short side) over a
static grey noise background, either moving down, moving up, moving sideways or standing still:
2 x 4 = 8 classes. They are chosen to survive the real training augmentation:
- the horizontal flip (p 0.5) turns a leftward motion into a rightward one, so left and right
  are one class ("sideways", either sign), while up and down stay distinct;
- the random resized crop (scale 0.08-1) often misses a single small square: the pair moves
  together, half a frame apart on a torus (the squares wrap around the edges), which raises the
  share of training clips whose crop shows a square in at least half the frames from about 59%
  to 85% (measured at 72 x 96 with the recipe's crop);
- RandAugment keeps hue apart from Invert/Solarize, which map red and blue to other distinct
  colours (cyan, yellow), so colour stays learnable.
Start position, speed, a small perpendicular drift, square size and exact colour vary per clip.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from k400ft.io import atomic_write

log = logging.getLogger(__name__)

FPS = 25
GOP = 250  # x264's default keyint, which the Kinetics download scripts (ffmpeg -c:v libx264) use
CLIP_SECONDS = 10  # every Kinetics-400 clip is a 10 s window: time_end = time_start + 10
CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split", "is_cc")
SPLITS = ("train", "val")  # also the `split` column's values in the official lists

COLOURS: dict[str, tuple[int, int, int]] = {"blue": (40, 80, 230), "red": (225, 35, 35)}
# motion -> unit direction (dy, dx); "sideways" draws the sign of dx per clip
MOTIONS: dict[str, tuple[float, float]] = {
    "moving down": (1.0, 0.0),
    "moving sideways": (0.0, 1.0),
    "moving up": (-1.0, 0.0),
    "standing still": (0.0, 0.0),
}
SQUARE = (0.17, 0.23)  # square side, fraction of the frame's short side
SPEED = (0.007, 0.012)  # pixels per frame, fraction of the short side (~30-50 px over 64 frames)
DRIFT = 0.15  # perpendicular drift, at most this fraction of the speed
BACKGROUND = (60, 190)  # grey levels of the static noise background
COLOUR_JITTER = 20  # per-channel variation of the square's colour
DEFECTS = ("zero_byte", "truncated", "not_video")  # cycled over `demo.broken`; plus one "missing"
TRUNCATE_AT = 0.4  # a truncated download keeps this fraction of the bytes
# a failed download saved under the video's name
NOT_VIDEO = b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head></html>\n"
ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def class_names() -> list[str]:
    """The demo's label names, sorted: their order is the label index (as Kinetics-400's)."""
    return sorted(f"{colour} squares {motion}" for colour in COLOURS for motion in MOTIONS)


@dataclasses.dataclass(frozen=True)
class Clip:
    """One annotation row of the synthetic set, with what rendering it needs."""

    index: int  # position in the plan; seeds the clip's own random stream
    label: str
    youtube_id: str
    time_start: int
    split: str  # "train" | "val"
    num_frames: int
    defect: str | None = None  # None or one of DEFECTS or "missing"

    @property
    def time_end(self) -> int:
        return self.time_start + CLIP_SECONDS

    @property
    def filename(self) -> str:
        """Kinetics' file name: `{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`."""
        return f"{self.youtube_id}_{self.time_start:06d}_{self.time_end:06d}.mp4"


def _require(cfg: dict, key: str, where: str) -> Any:
    if key not in cfg:
        raise ValueError(
            f"config key {where}.{key} is missing (the workflow fills schema defaults)"
        )
    return cfg[key]


def plan_clips(demo: dict) -> list[Clip]:
    """Every row of both annotation CSVs, deterministic from `demo.seed`.

    Each class gets `train_per_class` and `val_per_class` clips; `demo.broken` of them (spread
    over splits and classes) get a defect cycling through DEFECTS, and when `broken` > 0 one
    more listed clip has no file at all.
    """
    seed = int(_require(demo, "seed", "demo"))
    if seed < 0:
        raise ValueError(f"config key demo.seed must be >= 0, got {seed}")
    lo, hi = (int(v) for v in _require(demo, "frames", "demo"))
    if not 1 <= lo <= hi:
        raise ValueError(
            f"config key demo.frames must be [lo, hi] with 1 <= lo <= hi, got {[lo, hi]}"
        )
    per_split = {s: int(_require(demo, f"{s}_per_class", "demo")) for s in SPLITS}
    broken = int(_require(demo, "broken", "demo"))
    rng = np.random.default_rng(seed)
    names = class_names()
    total = len(names) * sum(per_split.values())
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < total:
        candidate = "".join(rng.choice(ID_ALPHABET, 11))
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    clips = []
    for split, count in per_split.items():
        for label in names:
            for _ in range(count):
                i = len(clips)
                start, frames = int(rng.integers(0, 300)), int(rng.integers(lo, hi + 1))
                clips.append(Clip(i, label, ids[i], start, split, frames))
    defects = [DEFECTS[i % len(DEFECTS)] for i in range(broken)] + (["missing"] if broken else [])
    used: dict[str, int] = dict.fromkeys(names, 0)
    for i, defect in enumerate(defects):
        split = SPLITS[i % 2]
        free = [c for c in clips if c.split == split and c.defect is None]
        if not free:
            free = [c for c in clips if c.defect is None]
        if not free:
            raise ValueError(
                f"config key demo.broken = {broken} exceeds the number of clips ({total})"
            )
        fewest = min(used[c.label] for c in free)
        pool = [c for c in free if used[c.label] == fewest]
        pick = pool[int(rng.integers(len(pool)))]
        used[pick.label] += 1
        clips[pick.index] = dataclasses.replace(pick, defect=defect)
    return clips


def render_clip(clip: Clip, height: int, width: int, seed: int) -> np.ndarray:
    """The frames [T, H, W, 3] uint8 of `clip`: two coloured squares, half a frame apart in
    both directions, moving together over static noise.

    The squares wrap around the frame edges (a torus), so they never leave the frame.
    Deterministic from (seed, clip.index).
    """
    rng = np.random.default_rng([seed, clip.index])
    colour_name, _, motion = clip.label.partition(" squares ")
    short = min(height, width)
    side = max(2, round(short * rng.uniform(*SQUARE)))
    colour = np.clip(
        np.array(COLOURS[colour_name]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255
    )
    dy, dx = MOTIONS[motion]
    if motion == "moving sideways":
        dx = float(rng.choice([-1.0, 1.0]))
    speed = short * rng.uniform(*SPEED)
    drift = speed * rng.uniform(-DRIFT, DRIFT) if (dy or dx) else 0.0
    velocity = np.array([dy * speed + dx * drift, dx * speed + dy * drift])  # (vy, vx) px/frame
    start = rng.uniform(0, [height, width])
    grey = rng.integers(BACKGROUND[0], BACKGROUND[1] + 1, (height, width), dtype=np.uint8)
    frames = np.repeat(np.repeat(grey[None, :, :, None], 3, axis=3), clip.num_frames, axis=0)
    offsets = np.arange(side)
    for t in range(clip.num_frames):
        for pair in (0.0, 0.5):
            y, x = np.rint(start + velocity * t + pair * np.array([height, width])).astype(int)
            frames[t][np.ix_((y + offsets) % height, (x + offsets) % width)] = colour
    return frames


def encode_h264(frames: np.ndarray) -> bytes:
    """An mp4 (H.264, yuv420p, 25 fps, keyint 250, single-threaded: byte-reproducible) of frames."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.codec_context.thread_count = 1
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def clip_bytes(clip: Clip, height: int, width: int, seed: int) -> bytes | None:
    """The file content of `clip` (None: the file must not exist)."""
    if clip.defect == "missing":
        return None
    if clip.defect == "zero_byte":
        return b""
    if clip.defect == "not_video":
        return NOT_VIDEO
    data = encode_h264(render_clip(clip, height, width, seed))
    if clip.defect == "truncated":
        return data[: int(len(data) * TRUNCATE_AT)]
    return data


def _csv_field(value: str | int) -> str:
    """Official-CSV quoting: labels containing spaces or commas are double-quoted."""
    text = str(value)
    if any(ch in text for ch in ' ,"'):
        return '"' + text.replace('"', '""') + '"'
    return text


def annotation_csv(clips: list[Clip]) -> str:
    """The text of an official-style annotation CSV for `clips`, rows sorted by label then id."""
    lines = [",".join(CSV_COLUMNS)]
    for c in sorted(clips, key=lambda c: (c.label, c.youtube_id)):
        row = (c.label, c.youtube_id, c.time_start, c.time_end, c.split, 0)
        lines.append(",".join(_csv_field(v) for v in row))
    return "\n".join(lines) + "\n"


def _split_paths(kinetics: dict, key: str) -> dict[str, Path]:
    """Config `kinetics.<key>` per split: relative to `kinetics.root`, or absolute as given."""
    root = Path(_require(kinetics, "root", "kinetics"))
    paths = _require(kinetics, key, "kinetics")
    return {split: root / _require(paths, split, f"kinetics.{key}") for split in SPLITS}


def write_videos(demo: dict, kinetics: dict) -> dict[str, Any]:
    """Write the synthetic Kinetics-400 tree at `kinetics.root`; the annotation CSVs last.

    Every file is written atomically; the CSVs (the rule's declared outputs) mark the tree
    complete. Returns a summary: counts, bytes, seconds and the broken entries.
    """
    began = time.perf_counter()
    if kinetics.get("layout") != "annotations":
        raise ValueError(
            "config key kinetics.layout must be 'annotations' for the demo, "
            f"got {kinetics.get('layout')!r}"
        )
    names = class_names()
    if int(kinetics.get("num_classes", len(names))) != len(names):
        raise ValueError(
            f"config key kinetics.num_classes must be {len(names)} for the demo, "
            f"got {kinetics['num_classes']}"
        )
    if "mp4" not in kinetics.get("extensions", ["mp4"]):
        raise ValueError("config key kinetics.extensions must include 'mp4' for the demo")
    height, width = int(_require(demo, "height", "demo")), int(_require(demo, "width", "demo"))
    if height % 2 or width % 2:
        raise ValueError(
            f"config keys demo.height/demo.width must be even (yuv420p), got {height}x{width}"
        )
    seed = int(demo["seed"])
    dirs, csvs = _split_paths(kinetics, "video_dirs"), _split_paths(kinetics, "annotations")
    clips = plan_clips(demo)
    for csv in csvs.values():  # the tree is incomplete until both are written again
        csv.unlink(missing_ok=True)
    total_bytes = 0
    broken = []
    for clip in clips:
        path = dirs[clip.split] / clip.filename
        data = clip_bytes(clip, height, width, seed)
        if data is None:
            path.unlink(missing_ok=True)
        else:
            with atomic_write(path) as handle:
                handle.write(data)
            total_bytes += len(data)
        if clip.defect:
            broken.append({"split": clip.split, "path": str(path), "defect": clip.defect})
    for split in ("val", "train"):  # train.csv last: both are outputs, train is the first one
        with atomic_write(csvs[split], "w") as handle:
            handle.write(annotation_csv([c for c in clips if c.split == split]))
    summary = {
        "root": kinetics["root"],
        "classes": len(names),
        "videos": {s: sum(c.split == s for c in clips) for s in SPLITS},
        "frames": int(sum(c.num_frames for c in clips if c.defect is None)),
        "bytes": total_bytes,
        "broken": broken,
        "seconds": round(time.perf_counter() - began, 2),
    }
    log.info("demo videos: %s", summary)
    return summary


def write_checkpoint(spec: dict, output: str | Path) -> None:
    """Save a randomly initialised pretrained checkpoint in the exact upstream layout of
    `spec.format` (catmae_pretrain | videomae_pretrain), sized by `spec.arch`, atomically."""
    fmt = _require(spec, "format", "spec")
    if fmt not in ("catmae_pretrain", "videomae_pretrain"):
        raise ValueError(f"spec.format must be catmae_pretrain or videomae_pretrain, got {fmt!r}")
    import torch  # here, not at the top: the videos command does not need it

    from k400ft.models import upstream_state_dict

    checkpoint = upstream_state_dict(_require(spec, "arch", "spec"), fmt, seed=0)
    with atomic_write(output) as handle:
        torch.save(checkpoint, handle)
    log.info("demo checkpoint %s (%s) written to %s", fmt, spec["arch"], output)
