"""The H.264 encoder path that the transcode and resize stages share: one video decoded with
PyAV, optionally scaled, encoded with libx264 and written atomically; its check, its PSNR,
and the pools of processes that run many of them.

What a stage asks for is a `Settings`: x264's crf, preset and tune, a keyframe interval
(`keyint`: exactly every keyint frames, no scene-cut keyframes; None: x264's default of 250
with scene cuts, as the Kinetics files were made) and a short side to scale to (`short_side`:
aspect kept, even sides, as `ffmpeg -vf scale=-2:<short>` sizes it; None: the source's size).
`encode_video` decodes every frame once and passes it on as it is (no RGB round trip; its
coded type dropped, so that x264 chooses each frame's type itself, as under the ffmpeg command
line), scaled when asked by ffmpeg's own scale filter as its command line runs it (libavfilter:
swscale bicubic, the source's chroma siting; the same frames, bit for bit): each frame is kept,
re-stamped 0, 1, 2, ... at the source's average rate, since decord reads frames by index; audio
is dropped. A file already at the asked size is copied instead (`encode_one`, when no keyframe
interval is asked for).

Every output carries a tag (the container's comment: the source's path, size and mtime and the
settings), so a stage that is run again keeps what is done (`check_output`) and makes again
what was cut short, made from another source or with other settings. A video that cannot be
made is that video's failure (a record with its reason); an output that cannot be written (a
read-only or full disk, a file where a folder should be) is the job's: `OutputError`, naming
the path (scripts exit EXIT_IOERR).

`encode_all` runs many videos in a pool of spawned processes, one x264 thread each, that die
with the job (a kill -9 included); a file that kills its process is retried alone and reported.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
from tqdm import tqdm

from k400ft import io
from k400ft.decoders import describe_error, open_video, read_frames
from k400ft.io import OutputError, atomic_write, die_with_parent
from k400ft.provenance import file_sha256

LOG = logging.getLogger("k400ft.encode")

PRESETS = tuple("ultrafast superfast veryfast faster fast medium slow slower veryslow".split())
# x264 tunes; fastdecode (no CABAC, no deblocking, no weighted prediction) makes a copy
# cheaper to decode than its source per frame.
TUNES = ("none", "fastdecode", "film", "animation", "grain", "stillimage")
# The container tag that says which source and settings an output was made from (resume check).
TAG = "comment"
TAG_VERSION = 2  # 1: the source's path and mtime (two clean runs gave different bytes)
# An identical frame has infinite PSNR; JSON has no infinity, so frames are capped here.
MAX_PSNR = 100.0
SCALER = "BICUBIC"  # swscale's filter: ffmpeg's scale filter default, as peers' scripts get


class EncodeError(ValueError):
    """A video or a setting the encoder cannot take; the message says why."""


# Errors only a write raises: a video record that failed with one of them was written by a
# version of a stage that counted a read-only or full disk as failed videos.
WRITE_ONLY_ERRORS = tuple(os.strerror(code) for code in (errno.EROFS, errno.ENOSPC, errno.EDQUOT))


def writing(path: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """io.writing for an encoder's output: an OSError raised in the block is an OutputError
    naming `path`, but PyAV's errors (OSErrors too) are a decoder's or encoder's, left as
    they are (a bad video); a write to the output's file raises the file's own OSError
    through PyAV."""
    return io.writing(path, (av.error.FFmpegError,))


@dataclass(frozen=True)
class Settings:
    """What an output is made with: x264's keyint (None: x264's default), crf, preset and
    tune, and the short side it is scaled to (None: the source's size). CONFIG names the
    config section in errors (each stage's subclass sets its own)."""

    keyint: int | None
    crf: float
    preset: str
    tune: str = "fastdecode"
    short_side: int | None = None
    CONFIG: ClassVar[str] = "encoder"

    def __post_init__(self) -> None:
        where = self.CONFIG
        if self.keyint is not None and int(self.keyint) < 1:
            raise EncodeError(f"{where}.keyint must be >= 1, got {self.keyint}")
        if not 0 <= float(self.crf) <= 51:
            raise EncodeError(f"{where}.crf must be in 0..51, got {self.crf}")
        if self.preset not in PRESETS:
            raise EncodeError(f"{where}.preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        if self.tune not in TUNES:
            raise EncodeError(f"{where}.tune {self.tune!r} is not one of {', '.join(TUNES)}")
        if self.short_side is not None and (self.short_side < 2 or self.short_side % 2):
            raise EncodeError(f"{where}: the short side must be even, got {self.short_side}")

    def as_dict(self) -> dict[str, Any]:
        """The settings that are set (a copy made at the source's size has no short_side)."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def x264_options(self) -> dict[str, str]:
        """With a keyint, a keyframe (IDR) exactly every keyint frames: keyint_min = keyint
        and no scene-cut keyframes (sc_threshold 0), so the worst-case decode of a clip is
        known. mbtree off, so that an output is the same bytes every time it is made. One
        encoder thread: a job runs one encoder per core, which costs fewer core-seconds than
        x264's threading on K400's small frames."""
        options = {
            "crf": f"{float(self.crf):g}",
            "preset": self.preset,
            "threads": "1",
            # no macroblock-tree ratecontrol: with it, one-threaded x264 (libx264 core 165, as
            # PyAV ships it) gave copies whose frames differed from run to run, and so did the
            # demo's numbers; without it each copy is a function of its source
            "x264-params": "mbtree=0",
        }
        if self.keyint is not None:
            options.update(g=str(self.keyint), keyint_min=str(self.keyint), sc_threshold="0")
        if self.tune != "none":
            options["tune"] = self.tune
        return options


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------
def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) of a `width` x `height` frame with its short side scaled to
    `short_side`, aspect kept, the long side rounded to the nearest even number: what
    `ffmpeg -vf scale=-2:<short>` (landscape) or `scale=<short>:-2` (portrait) gives
    (av_rescale's round half up, then x 2). None: the size as it is."""
    if short_side is None:
        return width, height
    if width >= height:
        return 2 * ((short_side * width + height) // (2 * height)), short_side
    return short_side, 2 * ((short_side * height + width) // (2 * width))


def sample_positions(count: int, wanted: int) -> list[int]:
    """`wanted` positions spread evenly over 0..count-1 (all of them if count <= wanted),
    e.g. the videos of a shard whose PSNR is measured, or the frames of one video."""
    if count <= 0 or wanted <= 0:
        return []
    if count <= wanted:
        return list(range(count))
    return sorted({int(round(x)) for x in np.linspace(0, count - 1, wanted)})


def psnr(reference: np.ndarray, copy: np.ndarray) -> float:
    """Mean over frames of each frame's PSNR in dB (8-bit, all channels), capped at MAX_PSNR.

    Per frame, then the mean: one bad frame shows as a lower mean instead of vanishing in a
    pooled MSE. The cap keeps identical frames finite (and JSON-writable)."""
    if reference.shape != copy.shape:
        raise ValueError(f"frames of shape {reference.shape} and {copy.shape} differ")
    diff = reference.astype(np.float64) - copy.astype(np.float64)
    mse = (diff**2).reshape(len(diff), -1).mean(axis=1)
    floor = 255.0**2 / 10 ** (MAX_PSNR / 10)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, floor))))


def source_tag(source: str | os.PathLike, settings: Settings) -> str:
    """The tag an output carries: its source's sha256 and the settings. An output whose tag
    differs (the source was replaced, crf changed) is made again, not reused. Nothing of where
    or when: the same source gives the same output, byte for byte, in any checkout and run."""
    return json.dumps(
        {"version": TAG_VERSION, "source_sha256": file_sha256(source), **settings.as_dict()},
        sort_keys=True,
    )


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------
def remove_stale_temps(dest: Path) -> None:
    """Remove the temp files a killed run left beside `dest` (atomic_write's names)."""
    with writing(dest):
        for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def encode_video(source: str | os.PathLike, dest: str | os.PathLike, settings: Settings) -> int:
    """Re-encode the first video stream of `source` into `dest` (H.264, yuv420p, mp4, the
    same frame count, the nominal frame rate, scaled to settings.short_side if set) and
    return the frames written.

    Written through atomic_write: an error or a kill leaves no partial output (stale temp
    files of a killed run are removed here first). Raises on any decode or encode error; an
    OutputError when `dest` cannot be written."""
    dest = Path(dest)
    remove_stale_temps(dest)
    tag = source_tag(source, settings)
    with av.open(os.fspath(source)) as inp:
        if not inp.streams.video:
            raise EncodeError("no video stream")
        stream = inp.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise EncodeError("the video stream has no frame rate")
        width, height = stream.codec_context.width, stream.codec_context.height
        out_width, out_height = scaled_size(width, height, settings.short_side)
        if out_width % 2 or out_height % 2:
            raise EncodeError(f"frame size {height}x{width} is odd (yuv420p needs even sides)")
        scale = _scaler(stream, out_width, out_height) if settings.short_side else None
        time_base = Fraction(1) / Fraction(rate)
        written = 0
        with writing(dest), atomic_write(dest, "wb") as handle:
            # bitexact: no muxer version tag either, only what the frames and settings make
            with av.open(handle, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
                out.metadata[TAG] = tag
                video = out.add_stream(
                    "libx264", rate=Fraction(rate), options=settings.x264_options()
                )
                video.width, video.height, video.pix_fmt = out_width, out_height, "yuv420p"
                for decoded in inp.decode(stream):
                    if (decoded.width, decoded.height) != (width, height):
                        raise EncodeError(
                            f"frame {written} is {decoded.height}x{decoded.width}, the stream "
                            f"{height}x{width} (size changes mid-stream)"
                        )
                    if scale is not None:
                        scale.vpush(decoded)
                        frame = scale.vpull()  # scale and format give one frame per frame
                    elif decoded.format.name != "yuv420p":
                        frame = decoded.reformat(format="yuv420p")
                    else:
                        frame = decoded
                    frame.pts, frame.time_base = written, time_base
                    # the decoder's frame type (I, P, B as the source was coded) would force
                    # the encoder's: x264 decides each frame's type itself, as under ffmpeg
                    frame.pict_type = av.video.frame.PictureType.NONE
                    for packet in video.encode(frame):
                        out.mux(packet)
                    written += 1
                if not written:
                    raise EncodeError("no frame decodes")
                for packet in video.encode():
                    out.mux(packet)
    return written


def _scaler(stream: av.video.stream.VideoStream, width: int, height: int) -> av.filter.Graph:
    """ffmpeg's own scale filter (libavfilter, as `ffmpeg -vf scale=...` runs it: swscale
    bicubic, the source's chroma siting and range read from its frames) to width x height,
    then yuv420p: the frames the ffmpeg command line would encode, bit for bit."""
    graph = av.filter.Graph()
    graph.link_nodes(
        graph.add_buffer(template=stream),
        graph.add("scale", f"{width}:{height}:flags={SCALER.lower()}"),
        graph.add("format", "yuv420p"),
        graph.add("buffersink"),
    ).configure()
    return graph


def video_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, height, width) as the training data path sees `path` (decord)."""
    reader = open_video(os.fspath(path))
    frames = len(reader)
    height, width = reader[0].shape[:2]
    return frames, int(height), int(width)


def at_target(source: str | os.PathLike, settings: Settings) -> bool:
    """Whether `source` can be copied as it is: an mp4 already at the asked short side (even
    sides), and no keyframe interval asked for (a copy keeps the source's keyframes)."""
    if settings.keyint is not None or settings.short_side is None:
        return False
    if Path(source).suffix.lower() != ".mp4":
        return False
    _, height, width = video_shape(source)
    return scaled_size(width, height, settings.short_side) == (width, height)


def check_output(
    source: str | os.PathLike, dest: str | os.PathLike, settings: Settings
) -> str | None:
    """Why `dest` is not a usable output of `source` with `settings`, or None if it is.

    Usable: it opens, carries the tag of this source and these settings, and decord sees the
    source's frame count at the asked size and decodes its last frame. An output cut short,
    from another source or from other settings is refused (and made again)."""
    try:
        with av.open(os.fspath(dest)) as container:
            tag = container.metadata.get(TAG)
    except FileNotFoundError:
        return "missing"
    except Exception as err:  # PyAV raises InvalidDataError and friends: all mean "bad file"
        return f"unreadable: {describe_error(err)}"
    if tag != source_tag(source, settings):
        return "made from another source or with other settings"
    try:
        frames, height, width = video_shape(source)
        expected = (frames, *reversed(scaled_size(width, height, settings.short_side)))
        found = video_shape(dest)
        read_frames(open_video(os.fspath(dest)), np.array([found[0] - 1]))
    except Exception as err:
        return f"undecodable: {describe_error(err)}"
    if found != expected:
        return (
            f"decord sees {found[0]} frames of {found[1]}x{found[2]} in the output, "
            f"{expected[0]} of {expected[1]}x{expected[2]} expected from the source"
        )
    return None


def check_copied(source: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """Whether `dest` is a copy of `source` made by `copy_video` (same size and mtime)."""
    try:
        have, want = os.stat(dest), os.stat(source)
    except FileNotFoundError:
        return False
    return (have.st_size, have.st_mtime_ns) == (want.st_size, want.st_mtime_ns)


def copy_video(source: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy `source` to `dest` atomically, with the source's mtime (what `check_copied` reads)."""
    dest = Path(dest)
    remove_stale_temps(dest)
    with writing(dest):
        with open(source, "rb") as inp, atomic_write(dest, "wb") as out:
            shutil.copyfileobj(inp, out, 1 << 20)
        stat = os.stat(source)
        os.utime(dest, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def measure_psnr(source: str | os.PathLike, copy: str | os.PathLike, frames: int) -> float:
    """PSNR (dB) of the output vs the source on `frames` evenly spaced frames, both decoded by
    decord (the training reader) at the same indices; the source's frames scaled to the
    output's size first (swscale bicubic, in RGB) when they differ, so that the figure is the
    encode's loss, not the resolution's."""
    length = len(open_video(os.fspath(source)))
    indices = np.asarray(sample_positions(length, frames), dtype=np.int64)
    reference = read_frames(open_video(os.fspath(source)), indices)
    decoded = read_frames(open_video(os.fspath(copy)), indices)
    if reference.shape != decoded.shape:
        height, width = decoded.shape[1:3]
        reference = np.stack(
            [
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                .reformat(width, height, "rgb24", interpolation=SCALER)
                .to_ndarray()
                for frame in reference
            ]
        )
    return psnr(reference, decoded)


def encode_one(
    source: str, dest: str, settings: Settings, psnr_frames: int = 0, made: str = "transcoded"
) -> dict[str, Any]:
    """Make (or reuse) the output of one video; never raises for a bad video, raises
    OutputError when the output cannot be written (the job's failure, not the video's).

    Returns its record: status `made` (encoded in this run) / copied (already at the asked
    size: `at_target`) / reused / failed, the reason of a failure, the output (`copy`, None
    when failed), frames, seconds and core-seconds of this process (the encoder's threads
    included), sizes, and the PSNR when psnr_frames > 0 (not of a copy: the same bytes)."""
    wall, cpu = time.monotonic(), time.process_time()
    record: dict[str, Any] = {"source": source, "copy": None, "status": "failed", "reason": None}
    try:
        copied = at_target(source, settings)
        if copied and check_copied(source, dest):
            record["status"] = "reused"
        elif copied:
            copy_video(source, dest)
            record["status"] = "copied"
        elif check_output(source, dest, settings) is None:
            record["status"] = "reused"
        else:
            encode_video(source, dest, settings)
            problem = check_output(source, dest, settings)
            if problem is not None:
                with writing(dest):
                    os.unlink(dest)
                raise EncodeError(f"the new output is not usable: {problem}")
            record["status"] = made
        record["copy"] = dest
        record["frames"] = video_shape(dest)[0]
        record["source_bytes"] = os.path.getsize(source)
        record["copy_bytes"] = os.path.getsize(dest)
        if psnr_frames > 0 and not copied:
            record["psnr"] = measure_psnr(source, dest, psnr_frames)
    except OutputError:
        raise
    except Exception as err:
        record.update(status="failed", copy=None, reason=describe_error(err))
    record["seconds"] = time.monotonic() - wall
    record["core_seconds"] = time.process_time() - cpu
    return record


# --------------------------------------------------------------------------------------------
# Many videos
# --------------------------------------------------------------------------------------------
def _pool(workers: int) -> ProcessPoolExecutor:
    """A process pool of spawned workers (a fresh interpreter each) that die with this process.

    Not fork: forking a process that runs threads (an earlier pool's manager and feeder
    threads, tqdm's monitor) can leave the child waiting forever on a lock some thread held at
    fork time, seen here as a hang when a pool was made again after a worker died. Not the
    fork server: it and its workers (its children, not ours) outlived a kill -9 of the shard,
    re-parented to init, for good (the workers hold the server's "alive" pipe, and an idle
    worker holds both ends of its task queue); and no code of ours can run in the server on
    Python 3.11, whose preload ignores sys.path (CPython gh-117378: its workers imported torch
    and PyAV themselves, as spawned ones do). A spawned worker is the shard's own child and
    asks for SIGKILL when the shard dies (`die_with_parent`, the initializer); the resource
    tracker exits once they are all gone.

    The kernel sends that signal when the *thread* that started the worker ends: workers are
    started by `submit`, so submit from a thread that outlives the pool (the main thread)."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent)


def _run_pool(
    indices: list[int],
    tasks: list[tuple],
    workers: int,
    work: Callable[..., dict[str, Any]],
    done: Callable[[int, dict[str, Any]], None],
) -> list[int]:
    """Run work(*tasks[i]) for each i of `indices` in `workers` processes, at most 2 per
    worker in flight, calling done(i, record) as each finishes. If a process dies (a decoder
    crash), stop and return the indices in flight (the culprit is among them); else [].
    Any other error (an OutputError) is raised once the videos in flight end (at most 2 per
    worker, those the pool has handed out); no other video is started."""
    pending: dict[Future, int] = {}

    def drain(until_below: int) -> None:
        while len(pending) > until_below:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in finished:
                record = future.result()  # raises BrokenProcessPool: keep it in `pending`
                done(pending.pop(future), record)

    with _pool(workers) as executor:
        try:
            for index in indices:
                pending[executor.submit(work, *tasks[index])] = index
                drain(2 * workers - 1)
            drain(0)
        except BrokenProcessPool:
            executor.shutdown(wait=False, cancel_futures=True)
            return sorted(pending.values())
        except BaseException:
            # wait: once this raises, no worker is still writing an output
            executor.shutdown(wait=True, cancel_futures=True)
            raise
    return []


def _run_alone(task: tuple, work: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """work(*task) in a process of its own; a process death is reported as the file's crash."""
    with _pool(1) as executor:
        try:
            return executor.submit(work, *task).result()
        except BrokenProcessPool:
            return {
                "source": task[0],
                "copy": None,
                "status": "failed",
                "reason": "crashed: the decoder or encoder process died on this file",
                "seconds": 0.0,
                "core_seconds": 0.0,
            }


def encode_pairs(
    pairs: Sequence[tuple[str, str]],
    settings: Settings,
    workers: int,
    psnr_videos: int,
    psnr_frames: int,
    work: Callable[..., dict[str, Any]],
    desc: str,
) -> list[dict[str, Any]]:
    """work(source, dest, settings, PSNR frames) for each (source, dest) pair (`encode_all`),
    the PSNR measured on `psnr_frames` frames of `psnr_videos` of them, spread evenly."""
    measured = set(sample_positions(len(pairs), psnr_videos))
    tasks = [
        (source, dest, settings, psnr_frames if i in measured else 0)
        for i, (source, dest) in enumerate(pairs)
    ]
    return encode_all(tasks, workers, work, desc)


def encode_all(
    tasks: Sequence[tuple],
    workers: int,
    work: Callable[..., dict[str, Any]],
    desc: str,
) -> list[dict[str, Any]]:
    """Run work(*task) for each task (its first item the source) in `workers` processes,
    with a progress bar on stderr; the records in the order of `tasks`. A process killed by a
    file (a decoder crash) is retried with each file in flight alone, and the one that kills
    it is reported failed. An OutputError (an output cannot be written) is raised at once."""
    tasks = list(tasks)
    records: dict[int, dict[str, Any]] = {}
    bar = tqdm(
        total=len(tasks),
        desc=desc,
        unit="video",
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )

    def done(index: int, record: dict[str, Any]) -> None:
        records[index] = record
        if record["status"] == "failed":
            LOG.warning("%s: %s (the original is kept)", record["source"], record["reason"])
        bar.update(1)

    try:
        remaining = list(range(len(tasks)))
        while remaining:
            before = len(records)
            for index in _run_pool(remaining, tasks, max(1, workers), work, done):
                if index not in records:  # in flight when a process died: one by one
                    done(index, _run_alone(tasks[index], work))
            if len(records) == before:
                raise EncodeError("the worker processes die before taking any video")
            remaining = [i for i in remaining if i not in records]
    finally:
        bar.close()
    return [records[i] for i in range(len(tasks))]
