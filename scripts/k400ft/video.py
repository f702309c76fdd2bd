"""The video data path of fine-tuning and evaluation: split CSVs, frame indices, crops, datasets.

Reproduces the upstream loader (VideoMAE's `kinetics.py`, copied unchanged by CatMAE) fact by
fact (REFERENCE.md sections 3 and 6); the functions that decide which pixels a model sees are
pure and tested on their own. Where we differ from upstream, the docstring says so and why.

Upstream, as we reproduce it:

- train: one temporal window per video (`train_frame_indices`), decoded once; `num_sample`
  (2) augmented clips from those frames. Per clip: RandAugment with ONE draw for all frames,
  on the full-size uint8 frames, bicubic, fill (128, 128, 128) (upstream's
  `create_random_augment` passes no `img_mean`); /255 and ImageNet normalisation; random
  resized crop (scale 0.08-1, log-uniform ratio 0.75-1.3333, 10 tries, centre fallback) resized
  bilinearly to `input_size`; horizontal flip p 0.5; random erasing p 0.25, mode pixel, one
  box at the same place in every frame with fresh N(0, 1) noise per frame (upstream's
  `RandomErasing(cube=True)`).
- validation (per epoch, one view): the same random temporal window as train, short side to
  `short_side_size` (upstream's cv2.resize, long side truncated by int(), skipped when
  already there), centre crop of `input_size` with offsets rounded by Python's round().
- test: every `sampling_rate`-th frame of the whole video (repeated to `num_frames` if
  fewer), short side to `short_side_size` (as validation), `num_segments` x `num_crops` views with
  start int(k * (T - num_frames) / (S - 1)) and crop start int(c * (long - size) / (C - 1))
  along the long side (along H for a square frame).

How we make it fast without changing a pixel: every video is opened once per item and its
distinct frame indices are decoded once, in increasing order (one seek, then a forward decode);
the test path decodes once and slices all views (upstream decodes the video once per view).
The decoder (`data.decoder`: decord, as upstream, or PyAV: `decoders.py`) and OpenCV run with
one thread per DataLoader worker. The train clips are augmented by `augment.py`.

The slow, upstream-shaped references these paths are tested and benchmarked against (the PIL
clip `ClipAugment`, one test view decoded on its own `naive_test_view`) are not library code:
they are in tests/reference.py.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import multiprocessing
import random
import re
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from k400ft import augment, clipbatch
from k400ft.decoders import DECODERS, describe_error, open_video, read_frames
from k400ft.io import atomic_write, die_with_parent
from k400ft.schedule import SpecError

LOG = logging.getLogger("k400ft.video")
cv2.setNumThreads(1)  # the resize, one thread per process: the workers are the parallelism

_LABEL = re.compile(r"[0-9]+")


def _not_a_pytest_test(obj):
    """Our test-time helpers are named test_* / Test* (the contract's names): mark them so
    pytest does not collect them when a test module imports them by name."""
    obj.__test__ = False
    return obj


# --------------------------------------------------------------------------------------------
# Split CSVs
# --------------------------------------------------------------------------------------------
def write_split_csv(path: str | Path, rows: Iterable[tuple[str, int]]) -> None:
    """Write a split CSV in upstream's format: one `<path> <label>` line per video, ONE space.

    Format (UTF-8, paths byte-exact through surrogateescape): the path, one space, the
    integer label, newline. A path may contain spaces (our `read_split_csv` splits on the
    last run of whitespace; upstream's pandas reader cannot read such lines). Refused, so
    that every file we write reads back unchanged: an empty path, a path with a line break
    or with leading/trailing whitespace, a label that is not a non-negative integer.
    """
    lines = []
    for number, (video, label) in enumerate(rows, start=1):
        video = str(video)
        if not video or video != video.strip() or "\n" in video or "\r" in video:
            raise ValueError(
                f"{path}: row {number}: path {video!r} cannot be written (empty, "
                "a line break, or leading/trailing whitespace)"
            )
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
            raise ValueError(f"{path}: row {number}: label {label!r} is not a non-negative integer")
        lines.append(f"{video} {int(label)}\n".encode("utf-8", "surrogateescape"))
    with atomic_write(path, "wb") as handle:
        handle.writelines(lines)


class SplitCSVError(ValueError):
    """A split CSV line that cannot be used (the message names the file and line)."""


def read_split_csv(
    path: str | Path, num_classes: int | None = None, min_videos: int = 0, need: str = ""
) -> list[tuple[str, int]]:
    """Read a split CSV: `<path><whitespace><label>` per line, split on the LAST whitespace run.

    So upstream's one-space lines, the seed docs' two-space example and paths containing
    spaces all parse; a UTF-8 byte-order mark (what spreadsheet tools write) is skipped. Blank
    lines are skipped; a line without a path and a non-negative integer label, or (when
    `num_classes` is given) with a label outside 0..num_classes-1, raises SplitCSVError naming
    the file and line number; so does a file of fewer than `min_videos` videos (naming the
    file and the count, then `need`: what needs more).
    """
    rows = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            line = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[0].strip() or not _LABEL.fullmatch(parts[1]):
                raise SplitCSVError(
                    f"{path}:{number}: expected '<video path> <integer label>', got {line[:200]!r}"
                )
            label = int(parts[1])
            if num_classes is not None and label >= num_classes:
                raise SplitCSVError(
                    f"{path}:{number}: label {label} is outside 0..{num_classes - 1} "
                    f"(num_classes {num_classes})"
                )
            rows.append((parts[0].strip(), label))
    if len(rows) < min_videos:
        empty = "no videos (not one '<video path> <label>' line)"
        found = f"{len(rows)} video(s)" if rows else empty
        need = need or (f"at least {min_videos} needed" if rows else "")
        raise SplitCSVError(f"{path}: {found}" + (f"; {need}" if need else ""))
    return rows


# --------------------------------------------------------------------------------------------
# Frame indices (pure)
# --------------------------------------------------------------------------------------------
def train_frame_indices(
    num_video_frames: int, rng: np.random.Generator, num_frames: int = 16, sampling_rate: int = 4
) -> np.ndarray:
    """Frame indices of one train (or per-epoch validation) clip: upstream `loadvideo_decord`.

    span = num_frames * sampling_rate (64). n > span: end = randint(span, n), n EXCLUDED (the
    last frame is never the window end; n = 65 always gives end 64), indices
    linspace(end - span, end, num_frames) clipped to end - 1, truncated to int (effective
    stride about 4.27). n <= span: linspace(0, n, n // sampling_rate) padded with n up to
    num_frames and clipped to n - 1 (so n = 1 gives zeros, n = 2..3 give n - 1: the pad
    value is n clipped to the last frame).
    """
    n = int(num_video_frames)
    if n < 1:
        raise ValueError(f"a video needs at least one frame, got {n}")
    span = num_frames * sampling_rate
    if n <= span:
        taken = n // sampling_rate
        index = np.concatenate((np.linspace(0, n, num=taken), np.ones(num_frames - taken) * n))
        return np.clip(index, 0, n - 1).astype(np.int64)
    end = int(rng.integers(span, n))
    start = end - span
    index = np.linspace(start, end, num=num_frames)
    return np.clip(index, start, end - 1).astype(np.int64)


@_not_a_pytest_test
def test_frame_indices(
    num_video_frames: int, num_frames: int = 16, sampling_rate: int = 4
) -> np.ndarray:
    """Every `sampling_rate`-th frame of the whole video (0, 4, 8, ...), the last one repeated
    until there are `num_frames`: upstream's test-mode `loadvideo_decord`."""
    n = int(num_video_frames)
    if n < 1:
        raise ValueError(f"a video needs at least one frame, got {n}")
    index = list(range(0, n, sampling_rate))
    index += [index[-1]] * (num_frames - len(index))
    return np.asarray(index, dtype=np.int64)


@_not_a_pytest_test
def test_view_starts(num_taken: int, num_frames: int = 16, num_segments: int = 5) -> list[int]:
    """Start (into the taken frames) of each temporal test view.

    Upstream: step = max((T - num_frames) / (num_segments - 1), 0), start k = int(k * step);
    short videos give overlapping views (T = 17: 0, 0, 0, 0, 1). One segment: upstream
    divides by zero; we take the centre, int((T - num_frames) / 2).
    """
    if num_taken < num_frames:
        raise ValueError(f"{num_taken} frames taken, fewer than a clip of {num_frames}")
    if num_segments == 1:
        return [int((num_taken - num_frames) / 2)]
    step = max(1.0 * (num_taken - num_frames) / (num_segments - 1), 0)
    return [int(k * step) for k in range(num_segments)]


# --------------------------------------------------------------------------------------------
# Crop boxes (pure)
# --------------------------------------------------------------------------------------------
def resized_short_side(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after upstream's `Resize(size)`: the short side becomes `size`, the long
    side int(size * long / short) (truncated); unchanged when the short side already is
    `size`. A square frame becomes size x size."""
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def center_crop_offset(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of upstream's `CenterCrop(size)`: int(round((side - size) / 2)) with
    Python's round-half-even (slack 173 gives 86)."""
    if size > height or size > width:
        raise ValueError(f"crop {size} larger than the frame {height}x{width}")
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


@_not_a_pytest_test
def test_crop_offsets(
    height: int, width: int, size: int, num_crops: int = 3
) -> list[tuple[int, int]]:
    """(top, left) of each spatial test crop of `size` on a frame already resized to short
    side `size`: start c = int(c * (long - size) / (num_crops - 1)) along the long side,
    along H when H >= W (a square frame: three identical crops, step 0). One crop: upstream
    divides by zero; we take the centre, int((long - size) / 2)."""
    if size > height or size > width:
        raise ValueError(f"crop {size} larger than the frame {height}x{width}")
    slack = max(height, width) - size
    if num_crops == 1:
        starts = [int(slack / 2)]
    else:
        step = 1.0 * slack / (num_crops - 1)
        starts = [int(c * step) for c in range(num_crops)]
    if height >= width:
        return [(start, 0) for start in starts]
    return [(0, start) for start in starts]


# --------------------------------------------------------------------------------------------
# Decoding and pixel operations
# --------------------------------------------------------------------------------------------
def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T, h, w, 3] uint8 of short side `size` (`resized_short_side`;
    `frames` itself when already there): upstream's own call, `cv2.resize(frame, (w, h),
    interpolation=cv2.INTER_LINEAR)` per frame, so upstream's bytes (OpenCV's fixed-point
    bilinear, and its INTER_AREA shortcut for an exact 2x reduction; torch's bilinear was one
    level off on about a fifth of the values, brighter on average)."""
    height, width = frames.shape[1:3]
    new_h, new_w = resized_short_side(height, width, size)
    if (new_h, new_w) == (height, width):
        return frames
    out = np.empty((len(frames), new_h, new_w, frames.shape[3]), dtype=np.uint8)
    for frame, resized in zip(frames, out, strict=True):
        cv2.resize(frame, (new_w, new_h), dst=resized, interpolation=cv2.INTER_LINEAR)
    return out


def _scale_shift(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel 1 / (255 std) and -mean / std, shaped [3, 1, 1, 1] (channel before T, H, W)."""
    return (1.0 / (255.0 * std)).view(3, 1, 1, 1), (-mean / std).view(3, 1, 1, 1)


def normalize(
    frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """[T, 3, H, W] (uint8, or float on the 0..255 scale) -> [3, T, H, W] float32 (into `out`
    if given): x * 1 / (255 std) - mean / std, which is upstream's ToTensor + Normalize,
    (x / 255 - mean) / std, up to float rounding (< 1e-6); product and sum each rounded, as
    `clipbatch.normalise` does."""
    scale, shift = _scale_shift(mean, std)
    source = frames.transpose(0, 1)
    if out is None:
        out = torch.empty(source.shape, dtype=torch.float32)
    return torch.mul(source, scale, out=out).add_(shift)


def normalize_views(
    views: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """[N, 3, T, H, W] uint8 views (from `TestDataset(normalized=False)`), on any device ->
    float32, as `normalize` does per view. Normalising on the GPU moves a quarter of the
    bytes through the DataLoader and host memory."""
    scale, shift = _scale_shift(
        torch.as_tensor(mean, dtype=torch.float32, device=views.device),
        torch.as_tensor(std, dtype=torch.float32, device=views.device),
    )
    return clipbatch.normalise(views, scale, shift)


@contextlib.contextmanager
def item_rngs(seed: int, epoch: int, index: int) -> Iterator[np.random.Generator]:
    """Seed Python's, numpy's and torch's (CPU) global RNGs from (seed, epoch, index), and
    yield a numpy Generator from the same seed; restore the previous states on exit.

    timm's RandAugment and RandomErasing use the global RNGs, so seeding them per item makes
    every augmentation a function of (seed, epoch, index) alone, whatever the number of
    workers or the order they run in; restoring keeps the caller's streams (e.g. Mixup in
    the main process when num_workers is 0) untouched. Only the CPU torch generator is
    touched (never CUDA's).
    """
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    words = np.random.SeedSequence([seed % (1 << 63), epoch, index]).generate_state(4)
    random.seed(int(words[0]))
    np.random.seed(int(words[1]))
    torch.default_generator.manual_seed(int(words[2]))
    try:
        yield np.random.default_rng(int(words[3]))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
class _SplitVideos(Dataset):
    """Paths and labels of a split CSV, held in two numpy arrays (UTF-8 bytes and int64: no
    per-row Python objects for forked workers to copy on access). A CSV without videos, and
    with `num_classes` every label, is checked at once (SplitCSVError naming the file, and the
    line), before any worker starts."""

    def __init__(
        self, csv_path: str | Path, data_cfg: dict[str, Any], num_classes: int | None = None
    ):
        rows = read_split_csv(csv_path, num_classes, min_videos=1)
        self.csv_path = str(csv_path)
        self._paths = np.array([video.encode("utf-8", "surrogateescape") for video, _ in rows])
        self.labels = np.array([label for _, label in rows], dtype=np.int64)
        self.num_frames = int(data_cfg["num_frames"])
        self.sampling_rate = int(data_cfg["sampling_rate"])
        self.short_side_size = int(data_cfg["short_side_size"])
        self.mean = torch.tensor(data_cfg["mean"], dtype=torch.float32)
        self.std = torch.tensor(data_cfg["std"], dtype=torch.float32)
        self.decoder = str(data_cfg.get("decoder", "decord"))
        if self.decoder not in DECODERS:  # a refused spec (a stage's script exits 2)
            raise SpecError(f"data.decoder: {self.decoder!r} is not one of {', '.join(DECODERS)}")

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return self._paths[index].decode("utf-8", "surrogateescape")


class TrainDataset(_SplitVideos):
    """Train clips (mode 'train') or the per-epoch validation view (mode 'validation').

    Item: (clips [num_sample, 3, T, S, S] float32, labels [num_sample] int64, index int);
    validation has num_sample 1 and S = input_size after a centre crop. Train clips are
    augmented by `augment.ClipAugmenter` from parameters that `augment.ClipSampler` draws
    here; with apply_augment=False (augmentation on the training device) a train item is
    instead (frames [T, H, W, 3] uint8, the clips' ClipParams, labels, index), batched by
    `train_collate_frames`. Augmentations are a function of (seed, epoch, index): call
    `set_epoch(epoch)` before iterating an epoch (the epoch lives in shared memory, so
    persistent workers see it). A train video that fails to decode is logged and replaced by
    the next index, at most `max_attempts` tries (then a RuntimeError names the videos); the
    returned index is the video actually used. A validation video that fails is logged and
    excluded (an item of no clip): the epoch's val_videos count those that decode.
    """

    def __init__(
        self,
        csv_path: str | Path,
        data_cfg: dict[str, Any],
        mode: str = "train",
        seed: int = 0,
        max_attempts: int = 10,
        num_classes: int | None = None,
        apply_augment: bool = True,
    ):
        if mode not in ("train", "validation"):
            raise ValueError(f"mode must be 'train' or 'validation', got {mode!r}")
        super().__init__(csv_path, data_cfg, num_classes)
        self.mode = mode
        self.seed = int(seed)
        self.max_attempts = max(1, int(max_attempts))
        self.input_size = int(data_cfg["input_size"])
        self.num_sample = int(data_cfg["augment"]["num_sample"]) if mode == "train" else 1
        self.sampler = augment.ClipSampler(data_cfg) if mode == "train" else None
        self.augmenter = (
            augment.ClipAugmenter(data_cfg) if apply_augment and mode == "train" else None
        )
        # how a loader batches these items: clips, or (augmentation on the device) frames
        self.collate = (
            train_collate_frames if self.sampler and not self.augmenter else train_collate
        )
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def load(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """The decoded frames [T, H, W, 3] uint8 of video `index`, one temporal window."""
        reader = open_video(self.path(index), self.decoder)
        if len(reader) < 1:
            raise ValueError("no frames")
        indices = train_frame_indices(len(reader), rng, self.num_frames, self.sampling_rate)
        return read_frames(reader, indices)

    def validation_clip(self, frames: np.ndarray) -> torch.Tensor:
        """Short side -> short_side_size, centre crop input_size, normalise: [3, T, S, S]."""
        x = torch.from_numpy(resize_short_side(frames, self.short_side_size)).permute(0, 3, 1, 2)
        top, left = center_crop_offset(x.shape[-2], x.shape[-1], self.input_size)
        x = x[:, :, top : top + self.input_size, left : left + self.input_size]
        return normalize(x, self.mean, self.std)

    def __getitem__(self, index: int) -> tuple:
        epoch = int(self._epoch)
        tried = []
        with item_rngs(self.seed, epoch, index) as rng:
            for attempt in range(min(self.max_attempts, len(self))):
                video = (index + attempt) % len(self)
                try:
                    frames = self.load(video, rng)
                # decord raises several exception types; a bad file must not kill a worker
                except Exception as err:
                    excluded = self.sampler is None  # validation: not replaced
                    LOG.warning(
                        "%s: cannot decode %s (%s); %s",
                        self.mode,
                        self.path(video),
                        describe_error(err),
                        "excluded" if excluded else "trying the next video",
                    )
                    if excluded:
                        shape = (0, 3, self.num_frames, self.input_size, self.input_size)
                        return torch.empty(shape), torch.empty(0, dtype=torch.int64), video
                    tried.append(self.path(video))
                    continue
                labels = torch.full((self.num_sample,), int(self.labels[video]))
                if self.sampler is None:
                    return self.validation_clip(frames).unsqueeze(0), labels, video
                height, width = frames.shape[1:3]
                params = [self.sampler.draw(height, width) for _ in range(self.num_sample)]
                frames = torch.from_numpy(frames)
                if self.augmenter is None:
                    return frames, params, labels, video
                return torch.stack([self.augmenter.clip(frames, p) for p in params]), labels, video
        raise RuntimeError(
            f"{self.csv_path}: {len(tried)} consecutive videos from index {index} "
            f"failed to decode: {tried}"
        )


@_not_a_pytest_test
class TestDataset(_SplitVideos):
    """All num_segments x num_crops test views of a video, decoded once.

    Item: dict(views [S*C, 3, T, size, size] float32 in segment-major order, label int,
    video int (row of the CSV), path str, segment [S*C] int64, crop [S*C] int64, ok bool,
    error str). A video that fails to decode gives ok=False, zero views and the decoder's
    error (the evaluation excludes and reports it; upstream silently substitutes other
    views). normalized=False: the views stay uint8 (0..255) for `normalize_views` on the
    device (4x fewer bytes per item).
    """

    def __init__(
        self,
        csv_path: str | Path,
        data_cfg: dict[str, Any],
        num_segments: int,
        num_crops: int,
        normalized: bool = True,
        num_classes: int | None = None,
    ):
        super().__init__(csv_path, data_cfg, num_classes)
        self.num_segments = int(num_segments)
        self.num_crops = int(num_crops)
        self.dtype = torch.float32 if normalized else torch.uint8
        self.segment = torch.arange(self.num_segments).repeat_interleave(self.num_crops)
        self.crop = torch.arange(self.num_crops).repeat(self.num_segments)

    def load(self, index: int) -> np.ndarray:
        """Every sampling_rate-th frame of video `index` (padded), [T, H, W, 3] uint8."""
        reader = open_video(self.path(index), self.decoder)
        if len(reader) < 1:
            raise ValueError("no frames")
        return read_frames(
            reader, test_frame_indices(len(reader), self.num_frames, self.sampling_rate)
        )

    def views(self, frames: np.ndarray) -> torch.Tensor:
        """All views of the taken frames [S*C, 3, T, s, s]: resize once (uint8), then each
        view sliced and normalised (or copied, uint8) straight into the output."""
        x = torch.from_numpy(resize_short_side(frames, self.short_side_size))
        x = x.permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]: views are runs of contiguous rows
        size, length = self.short_side_size, self.num_frames
        starts = test_view_starts(x.shape[0], length, self.num_segments)
        boxes = test_crop_offsets(x.shape[2], x.shape[3], size, self.num_crops)
        out = torch.empty((len(starts) * len(boxes), 3, length, size, size), dtype=self.dtype)
        for number, (start, (top, left)) in enumerate(
            (start, box) for start in starts for box in boxes
        ):
            view = x[start : start + length, :, top : top + size, left : left + size]
            if self.dtype == torch.uint8:
                out[number].copy_(view.transpose(0, 1))
            else:
                normalize(view, self.mean, self.std, out=out[number])
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {
            "label": int(self.labels[index]),
            "video": index,
            "path": self.path(index),
            "segment": self.segment.clone(),
            "crop": self.crop.clone(),
            "ok": True,
            "error": "",
        }
        try:
            frames = self.load(index)
        except Exception as err:  # reported by the evaluation, never a crash
            LOG.warning(
                "test: cannot decode %s (%s); excluded", self.path(index), describe_error(err)
            )
            size = self.short_side_size
            empty = torch.empty(0, dtype=torch.int64)
            item.update(
                views=torch.empty((0, 3, self.num_frames, size, size), dtype=self.dtype),
                segment=empty,
                crop=empty.clone(),
                ok=False,
                error=describe_error(err),
            )
            return item
        item["views"] = self.views(frames)
        return item


# --------------------------------------------------------------------------------------------
# DataLoader helpers
# --------------------------------------------------------------------------------------------
def worker_init_fn(worker_id: int) -> None:
    """Seed Python's and numpy's RNGs in a DataLoader worker from torch's worker seed.

    torch gives each worker base_seed + worker_id, base_seed drawn from the loader's
    generator each time workers start, so seeds differ per worker (and per epoch without
    persistent workers) and are reproducible from the loader's seed. Our datasets reseed
    per item anyway (`item_rngs`); this covers any other randomness in a worker.

    Workers ignore SIGTERM and SIGUSR1: SLURM signals every process of a job step before the
    time limit, and a worker dying on it would crash the trainer before it can save `last`;
    stopping is the trainer's decision (`close_loaders` shuts the workers down on every way
    out). And a worker dies with its trainer (SIGKILL on the parent's death, `die_with_parent`):
    one that outlived it would hold its share of memory and keep decoding for nobody.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    die_with_parent()
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % (1 << 32))


def train_collate(batch: list[tuple[torch.Tensor, torch.Tensor, int]]):
    """(clips [B*num_sample, 3, T, S, S], labels [B*num_sample], index [B*num_sample]), the
    repeated clips of a video adjacent: upstream's `multiple_samples_collate`."""
    clips, labels, index = zip(*batch, strict=False)
    counts = torch.tensor([len(c) for c in clips])
    return torch.cat(clips), torch.cat(labels), torch.tensor(index).repeat_interleave(counts)


def train_collate_frames(batch: list[tuple]):
    """TrainDataset(apply_augment=False) items -> (frames per orientation group, padded to its
    largest (`augment.group_frames`), sizes [B, 2], params [each video's ClipParams], labels
    and index [B*num_sample]), for `augment.ClipAugmenter.batch` on the training device."""
    frames, params, labels, index = zip(*batch, strict=False)
    counts = torch.tensor([len(p) for p in params])
    frames, sizes = augment.group_frames(frames)
    return (
        frames,
        sizes,
        list(params),
        torch.cat(labels),
        torch.tensor(index).repeat_interleave(counts),
    )


@_not_a_pytest_test
def test_collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Test items stay a list of dicts (view counts differ: a broken video has none)."""
    return list(batch)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
    prefetch_factor: int = 2,
) -> DataLoader:
    """A DataLoader set up for video: persistent workers (decoders and the dataset stay up
    between epochs), pinned memory when the device is CUDA, `worker_init_fn`, and a seeded
    generator (shuffling and worker seeds reproducible from `seed`)."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    workers = int(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop_last,
        worker_init_fn=worker_init_fn if workers else None,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers else None,
        generator=generator,
    )


def close_loaders(*loaders: DataLoader) -> None:
    """Shut down the persistent workers of `loaders` now, and kill any worker left.

    On every way out of a stage, an exception included: a worker ignores SIGTERM
    (`worker_init_fn`), so without this, multiprocessing's exit handler, which terminates
    (SIGTERM) then joins the workers of a process that is exiting, would wait for ever while
    the error sat in the log and the job looked alive until its time limit. The DataLoader's
    own shutdown asks each worker to stop and joins it; a worker that does not stop in time
    (stuck in a decoder) is killed, and so is any other child process still running."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # a persistent loader keeps its iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None
    for child in multiprocessing.active_children():
        LOG.warning("killing a child process left running: %s (pid %s)", child.name, child.pid)
        child.kill()
        child.join(timeout=10)
