"""The embedded demo's inputs: a synthetic, learnable Kinetics-400-shaped video set and tiny
pretrained checkpoints in the exact upstream key layouts.

The video set copies the layout of the official Kinetics-400 release (REFERENCE.md §3): the
annotation CSVs `label,youtube_id,time_start,time_end,split,is_cc` (split `train` / `val`,
labels with spaces quoted, rows sorted by label) and H.264 mp4 files named
`{youtube_id}_{time_start:06d}_{time_end:06d}.mp4` in one folder per split, with 11-character
YouTube-like ids, 25 fps, yuv420p and x264's default keyframe interval (250), as the
Kinetics download scripts produce (and x264's other defaults, but for mbtree: X264_PARAMS).
Like every real copy, a few entries are broken: a zero-byte file, a truncated download, an
HTML error page saved as .mp4 and a listed clip whose file is missing.

Classes: a pair of coloured squares (red or blue, side about 1/5 of the short side) on a plain
grey background, either standing still, blinking, moving slowly or moving fast: 2 x 4 = 8
classes. Every frame of a still, slow or fast clip looks alike: telling them apart needs time,
so colour alone gives 25% Top-1 (2x chance) and anything above needs motion. The motion
classes show inside one tubelet (two frames `sampling_rate` apart): a still square is the same
in both, a blinking one is often in one of them only, a slow one moves by about a fifth of its
side, a fast one by most of it. That suits both models: CatMAE has no temporal positions and
starts from the inflated 2D kernel (w/2 on both frames, REFERENCE.md §1), so it sees sharp,
faint, slightly and much smeared squares; and the ratio of shift to side survives the random
resized crop's zoom. Further choices:
- the direction is drawn uniformly per clip, so the horizontal flip (p 0.5) keeps each class;
- the background is one plain grey for every clip: with a per-clip noise texture the model
  memorised the 20 training videos of a class instead of learning their motion (measured:
  train 100%, val near chance);
- the pair moves together, half a frame apart on a torus (the squares wrap around the edges),
  so the random resized crop (scale 0.08-1) shows a square in most frames;
- RandAugment keeps hue apart from Invert/Solarize, which map red and blue to other distinct
  colours (cyan, yellow), so colour stays learnable.
Start position, direction, speed within its class, blinking period and phase, square size and
exact colour vary per clip.

Checkpoints: the paper's are self-supervised pretrainings of hundreds of GPU-days, and a
tiny model fine-tuned from random weights under the full recipe (Mixup/CutMix, RandAugment,
crops down to 8% of the frame) learns nothing in the demo's minutes (measured: chance level).
So `pretrain_encoder` gives each tiny encoder a short supervised pretext on clips drawn fresh
from this generator (not the demo's files): predict the colour, whether it blinks and the
speed. The fine-tune then learns the eight labels, the slow/fast boundary included, from a
new head under the full recipe.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import shutil
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np

from k400ft.io import atomic_write

log = logging.getLogger(__name__)

FPS = 25
GOP = 250  # x264's default keyint, which the Kinetics download scripts (ffmpeg -c:v libx264) use
# x264's macroblock-tree ratecontrol off. With it on (libx264 core 165 as PyAV 18.1 ships it, one
# thread, AVX-512 CPU), x264 read heap memory it had not written: encoding the same frames again
# in one process gave other bytes (65 of 2,460 encodes of the demo's clips, 12 each), so did
# glibc's MALLOC_PERTURB_ (88 of 205 clips), and two clean demo runs wrote other files for a third
# of the clips. Neither happened with mbtree off, nor with x264's asm limited to AVX2.
X264_PARAMS = "mbtree=0"
CLIP_SECONDS = 10  # every Kinetics-400 clip is a 10 s window: time_end = time_start + 10
CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split", "is_cc")
SPLITS = ("train", "val")  # also the `split` column's values in the official lists

COLOURS: dict[str, tuple[int, int, int]] = {"blue": (40, 80, 230), "red": (225, 35, 35)}
# motion -> speed range (pixels per frame, fraction of the short side) and whether it blinks
MOTIONS: dict[str, tuple[tuple[float, float], bool]] = {
    "blinking": ((0.0, 0.0), True),
    "moving fast": ((0.03, 0.045), False),  # 9-13 px per tubelet at 72 px: most of a side
    "moving slowly": ((0.006, 0.01), False),  # 2-3 px per tubelet at 72 px: a fifth of a side
    "standing still": ((0.0, 0.0), False),
}
BLINK_FRAMES = (3, 6)  # a blinking square is shown, then hidden, for this many frames each
SQUARE = (0.17, 0.23)  # square side, fraction of the frame's short side
BACKGROUND = 128  # grey level of the plain background, the same in every clip
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


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one clip shows, drawn from its class by `draw_scene`."""

    side: int  # square side, pixels
    colour: np.ndarray  # RGB
    velocity: np.ndarray  # (vy, vx), pixels per frame
    blink_period: int  # frames shown, then hidden; 0: never hidden
    blink_phase: int
    start: np.ndarray  # (y, x) of the first square in frame 0


def draw_scene(clip: Clip, height: int, width: int, seed: int) -> Scene:
    """The random draw of `clip`'s scene, deterministic from (seed, clip.index)."""
    rng = np.random.default_rng([seed, clip.index])
    colour_name, _, motion = clip.label.partition(" squares ")
    short = min(height, width)
    side = max(2, round(short * rng.uniform(*SQUARE)))
    colour = np.clip(
        np.array(COLOURS[colour_name]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255
    )
    speeds, blinks = MOTIONS[motion]
    angle = rng.uniform(0, 2 * np.pi)
    velocity = short * rng.uniform(*speeds) * np.array([np.sin(angle), np.cos(angle)])
    period = int(rng.integers(BLINK_FRAMES[0], BLINK_FRAMES[1] + 1))
    phase = int(rng.integers(2 * period))
    start = rng.uniform(0, [height, width])
    return Scene(side, colour, velocity, period if blinks else 0, phase, start)


def render_clip(
    clip: Clip, height: int, width: int, seed: int, times: Sequence[int] | None = None
) -> np.ndarray:
    """The frames [T, H, W, 3] uint8 of `clip` (or only those at `times`): two coloured squares,
    half a frame apart in both directions, moving (or blinking) together on a plain grey
    background.

    The squares wrap around the frame edges (a torus), so they never leave the frame.
    Deterministic from (seed, clip.index).
    """
    times = range(clip.num_frames) if times is None else times
    return render_scene(draw_scene(clip, height, width, seed), height, width, times)


def render_scene(scene: Scene, height: int, width: int, times: Sequence[int]) -> np.ndarray:
    """The frames [len(times), H, W, 3] uint8 of `scene` at frame indices `times`."""
    frames = np.full((len(times), height, width, 3), BACKGROUND, dtype=np.uint8)
    offsets = np.arange(scene.side)
    for i, t in enumerate(times):
        if scene.blink_period and (t + scene.blink_phase) // scene.blink_period % 2:
            continue
        for pair in (0.0, 0.5):
            y, x = np.rint(scene.start + scene.velocity * t + pair * np.array([height, width]))
            rows, cols = (y.astype(int) + offsets) % height, (x.astype(int) + offsets) % width
            frames[i][np.ix_(rows, cols)] = scene.colour
    return frames


def encode_h264(frames: np.ndarray) -> bytes:
    """An mp4 (H.264, yuv420p, 25 fps, keyint 250, one thread, mbtree off) of frames: the same
    bytes on every call (X264_PARAMS)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"x264-params": X264_PARAMS})
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


ARCHIVE_HOST = "https://s3.amazonaws.com/kinetics/400"  # the host the real list files name
ARCHIVE_MTIME = 1_577_836_800  # the members' mtime (2020-01-01): the same bytes every time
REPLACEMENT_FOLDER = "replacement_for_corrupted_k400"  # the replacement archive's one folder
REPLACED = 1  # good train clips that are corrupt in their part and whole in the replacement


def tar_gz(files: Sequence[tuple[str, bytes]]) -> bytes:
    """A tar.gz of (name, bytes) regular files, the same bytes for the same files (fixed
    mtimes, root-owned, mode 0644, no name or time in the gzip header)."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, ARCHIVE_MTIME
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def write_archive(demo: dict, kinetics: dict, folder: str | Path) -> dict[str, Any]:
    """The demo's tree (`write_videos`) packed at `folder` as a miniature of the public
    Kinetics-400 archive, in its layout (config `kinetics.archive`): per split a list file
    naming `part_<i>.tar.gz` on the original host, the parts beside it (the split's files,
    broken ones included, dealt out by name over `archive.parts[split]` parts), the
    annotation CSVs, and the replacement archive: the first REPLACED good train clips (by
    name) are cut short in their part, and whole in the replacement, in its folder
    `replacement_for_corrupted_k400/` as in the real one. Every file is written atomically;
    returns a summary."""
    archive = _require(kinetics, "archive", "kinetics")
    folder = Path(folder)
    staging = folder / ".tree"
    shutil.rmtree(staging, ignore_errors=True)
    tree = write_videos(demo, {**kinetics, "root": str(staging)})
    clips = plan_clips(demo)
    good = sorted(c.filename for c in clips if c.split == "train" and c.defect is None)
    replaced = good[:REPLACED]
    counts = {}
    for split in SPLITS:
        source = staging / kinetics["video_dirs"][split]
        files = [(p.name, p.read_bytes()) for p in sorted(source.iterdir())]
        files = [
            (name, data[: int(len(data) * TRUNCATE_AT)] if name in replaced else data)
            for name, data in files
        ]
        parts = int(_require(archive["parts"], split, "kinetics.archive.parts"))
        listing = folder / archive["lists"][split]
        lines = []
        for number in range(parts):
            name = f"part_{number}.tar.gz"
            with atomic_write(listing.parent / name) as handle:
                handle.write(tar_gz(files[number::parts]))
            lines.append(f"{ARCHIVE_HOST}/{split}/{name}\n")
        with atomic_write(listing, "w") as handle:
            handle.write("".join(lines))
        with atomic_write(folder / archive["annotations"][split], "wb") as handle:
            handle.write((staging / kinetics["annotations"][split]).read_bytes())
        counts[split] = {"parts": parts, "files": len(files)}
    whole = staging / kinetics["video_dirs"]["train"]
    with atomic_write(folder / archive["replacement"]) as handle:
        handle.write(
            tar_gz([(f"{REPLACEMENT_FOLDER}/{n}", (whole / n).read_bytes()) for n in replaced])
        )
    shutil.rmtree(staging)
    broken = [{**b, "path": Path(b["path"]).name} for b in tree["broken"]]
    summary = {
        "archive": str(folder),
        "splits": counts,
        "replaced": replaced,
        **{key: tree[key] for key in ("classes", "videos", "frames", "bytes")},
        "broken": broken,
    }
    log.info("demo archive: %s", summary)
    return summary


PRETEXT_TARGETS = ("red", "blinks", "speed")  # what the pretext head predicts, per clip


def pretext_batch(
    rng: np.random.Generator, count: int, arch: dict, pretrain: dict
) -> tuple[np.ndarray, np.ndarray]:
    """`count` fresh clips from the demo's generator at the model's input size, normalised as
    the loader does, and their pretext targets (is red, blinks, speed / fastest speed).

    Each clip is rendered square at `img_size` with `num_frames x sampling_rate` frames and
    sampled every `sampling_rate` frames, as a training clip; it is not one of the demo's files.
    """
    size, frames, rate = arch["img_size"], arch["num_frames"], pretrain["sampling_rate"]
    mean, std = np.array(pretrain["mean"]) * 255, np.array(pretrain["std"]) * 255
    names = class_names()
    fastest = max(high for (_, high), _ in MOTIONS.values())  # of the short side, per frame
    clips, targets = [], []
    for label in rng.choice(names, count):
        clip = Clip(int(rng.integers(2**31)), str(label), "", 0, "train", frames * rate)
        scene = draw_scene(clip, size, size, seed=int(pretrain["seed"]))
        video = render_scene(scene, size, size, range(0, frames * rate, rate))
        clips.append(((video - mean) / std).transpose(3, 0, 1, 2))  # [3, T, H, W]
        speed = np.linalg.norm(scene.velocity) / size / fastest
        targets.append((clip.label.startswith("red"), scene.blink_period > 0, speed))
    return np.stack(clips).astype(np.float32), np.array(targets, dtype=np.float32)


def pretrain_encoder(spec: dict):
    """Pretrain the encoder of `spec.arch` briefly on a supervised pretext, return the model.

    A stand-in for the paper checkpoints' self-supervised pretraining (hundreds of GPU-days):
    `spec.pretrain.steps` AdamW steps on fresh generated clips (`pretext_batch`) with a
    3-output head (colour, blinking: binary cross entropy; speed: squared error). The
    fine-tune then learns the eight labels, the slow/fast boundary included, on the demo's
    files under the full recipe, from a new head. A "2d" (CatMAE) model trains with its
    stem's two temporal slices kept equal, as the inflated 2D kernel it will be saved as, and
    with its spatial-only positions: the checkpoint is a 2D model, as upstream's.
    """
    import torch
    import torch.nn.functional as F

    from k400ft.models import build_model

    arch, pretrain = _require(spec, "arch", "spec"), _require(spec, "pretrain", "spec")
    for key in ("steps", "batch", "clips", "lr", "seed", "sampling_rate", "mean", "std"):
        _require(pretrain, key, "spec.pretrain")
    if int(pretrain["batch"]) > int(pretrain["clips"]):
        raise ValueError(
            f"config key demo.pretrain.batch ({pretrain['batch']}) exceeds demo.pretrain.clips "
            f"({pretrain['clips']}): a batch draws distinct clips"
        )
    torch.manual_seed(int(pretrain["seed"]))
    rng = np.random.default_rng(int(pretrain["seed"]))
    model = build_model({**arch, "drop_path": 0.0}, num_classes=len(PRETEXT_TARGETS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(pretrain["lr"]), weight_decay=0.05)
    stem = model.patch_embed.proj.weight
    steps, batch = int(pretrain["steps"]), int(pretrain["batch"])
    began = time.perf_counter()
    clips, targets = pretext_batch(rng, int(pretrain["clips"]), arch, pretrain)
    pool = [torch.from_numpy(clips).half(), torch.from_numpy(targets)]  # half: 2 bytes a value
    log.info("pretext: %d clips drawn in %.0f s", len(pool[0]), time.perf_counter() - began)
    for step in range(steps):
        pick = torch.from_numpy(rng.choice(len(pool[0]), batch, replace=False))
        clips, targets = pool[0][pick].float(), pool[1][pick]
        out = model(clips)
        loss = F.binary_cross_entropy_with_logits(out[:, :2], targets[:, :2]) + F.mse_loss(
            out[:, 2], targets[:, 2] * 4
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:  # cosine from lr to 0
            group["lr"] = float(pretrain["lr"]) * 0.5 * (1 + np.cos(np.pi * step / steps))
        optimizer.step()
        if arch["patchify"] == "2d":
            with torch.no_grad():
                stem.copy_(stem.mean(2, keepdim=True).expand_as(stem))
        if step % 50 == 0 or step == steps - 1:
            log.info(
                "pretext step %d/%d loss %.4f (%.0f s)",
                step + 1,
                steps,
                loss.item(),
                time.perf_counter() - began,
            )
    return model


def write_checkpoint(spec: dict, output: str | Path) -> None:
    """Save a tiny pretrained checkpoint in the exact upstream layout of `spec.format`
    (catmae_pretrain | videomae_pretrain), sized by `spec.arch`, atomically: the encoder
    from `pretrain_encoder` (`layouts.place_encoder`), the pretraining-only tensors (decoder,
    mask token, final norm) random, as `layouts.upstream_state_dict` lays them out."""
    fmt = _require(spec, "format", "spec")
    if fmt not in ("catmae_pretrain", "videomae_pretrain"):
        raise ValueError(f"spec.format must be catmae_pretrain or videomae_pretrain, got {fmt!r}")
    import torch  # here, not at the top: the videos command does not need it

    from k400ft.layouts import place_encoder, upstream_state_dict

    arch = _require(spec, "arch", "spec")
    model = pretrain_encoder(spec)  # first: a bad spec fails before anything is written
    checkpoint = upstream_state_dict(arch, fmt, seed=0)
    place_encoder(checkpoint, fmt, model.state_dict())
    with atomic_write(output) as handle:
        torch.save(checkpoint, handle)
    log.info("demo checkpoint %s (%s) written to %s", fmt, arch, output)
