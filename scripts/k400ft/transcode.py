"""Short-keyframe H.264 copies of the train/val videos (config `data.transcode`), made once.

Why: a train clip is 16 frames from a random 64-frame window, and decord decodes from the
keyframe before the window's first frame. Kinetics copies have a keyframe every ~250 frames,
so a clip decodes up to 250 frames it throws away; a copy with a keyframe every `keyint`
(8-16) frames decodes at most keyint - 1 extra. The copy keeps what the data path depends on:
the frame size, the frame count (decord's `len`, which the frame indices are computed from)
and the nominal frame rate; audio is dropped (training never reads it). Evaluation keeps the
originals (rules/evaluate.smk reads the splits stage's test.csv).

The stage, in Snakemake jobs (rules/transcode.smk):
- `run_shard` (rule `transcode`): one job per shard takes every `shards`-th row of the
  unique train + val videos (`shard_sources`, by index: no checkpoint needed), writes each
  copy atomically under <videos>/ (`copy_path`) in a pool of processes, one x264 thread
  each, skips a copy already there and valid for the same source and settings
  (`check_copy`), measures the PSNR of a sample (`measure_psnr`) and writes one JSON record
  per video, failures with their reason. A video that does not transcode is a failure of
  that video; an output that cannot be written (a read-only or full disk, a file where a
  folder should be) is the job's failure (`OutputError`, naming the path): the folders are
  tried before any video, and an I/O error on a copy stops the shard at once.
- `gather` (rule `transcode_gather`): the fine-tune's train.csv / val.csv (copies; the
  originals of the failures) and report.json (counts, failures, PSNR, seconds, core-seconds).

Measured (benchmarks/transcode_cost.py, K400-like 300-frame 320 x 568 files, keyint 16, crf
18, veryfast, fastdecode): 0.7 core-s per video, PSNR 39 dB, files x5 larger; a train item's
decode 76 -> 47 ms. A short-GOP copy has many more keyframes, which cost more bits and more
decoding each: without tune fastdecode the copy decoded no faster than its source.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm import tqdm

from k400ft.io import atomic_write, check_writable, die_with_parent
from k400ft.provenance import file_sha256
from k400ft.video import describe_error, open_video, read_frames, read_split_csv, write_split_csv

LOG = logging.getLogger("k400ft.transcode")

PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
# x264 tunes; fastdecode (no CABAC, no deblocking, no weighted prediction) makes the copy
# cheaper to decode than its source per frame, which is what the copy is for.
TUNES = ("none", "fastdecode", "film", "animation", "grain", "stillimage")
# The container tag that says which source and settings a copy was made from (resume check).
TAG = "comment"
TAG_VERSION = 2  # 1: the source's path and mtime (two clean runs gave different bytes)
# An identical frame has infinite PSNR; JSON has no infinity, so frames are capped here.
MAX_PSNR = 100.0


class TranscodeError(ValueError):
    """The stage cannot run as asked (bad shard, bad CSV, bad settings); the message says why."""


class OutputError(OSError):
    """An output of the stage cannot be written (a copy, a folder, a shard record, gather's
    CSVs): a read-only or full file system, a file where a folder should be. The job fails
    (scripts/transcode.py exits EXIT_IOERR), naming the path: every later video would fail the
    same way, so it is never reported as one video's failure. errno is the cause's."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


EXIT_IOERR = 74  # EX_IOERR (sysexits.h): scripts/transcode.py, when an OutputError ends the job
# Errors only a write raises: a shard record whose video failed with one of them was written by
# a version of the stage that counted a read-only or full disk as failed videos (`gather`).
WRITE_ONLY_ERRORS = tuple(os.strerror(code) for code in (errno.EROFS, errno.ENOSPC, errno.EDQUOT))


@contextlib.contextmanager
def _writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError raised in the block into an OutputError naming `path` (the output the
    block writes). PyAV's errors are OSErrors too, but a decoder's or encoder's: left as they
    are (a bad video); a write to the copy's file raises the file's own OSError through PyAV."""
    try:
        yield
    except (OutputError, av.error.FFmpegError):
        raise
    except OSError as err:
        raise OutputError(err.errno, str(err), os.fspath(path)) from err


@dataclass(frozen=True)
class Settings:
    """The x264 settings of the copies (config data.transcode keyint, crf, preset, tune)."""

    keyint: int
    crf: float
    preset: str
    tune: str = "fastdecode"

    def __post_init__(self) -> None:
        if int(self.keyint) < 1:
            raise TranscodeError(f"data.transcode.keyint must be >= 1, got {self.keyint}")
        if not 0 <= float(self.crf) <= 51:
            raise TranscodeError(f"data.transcode.crf must be in 0..51, got {self.crf}")
        if self.preset not in PRESETS:
            raise TranscodeError(
                f"data.transcode.preset {self.preset!r} is not one of {', '.join(PRESETS)}"
            )
        if self.tune not in TUNES:
            raise TranscodeError(
                f"data.transcode.tune {self.tune!r} is not one of {', '.join(TUNES)}"
            )

    def x264_options(self) -> dict[str, str]:
        """A keyframe (IDR) exactly every keyint frames: keyint_min = keyint and no scene-cut
        keyframes (sc_threshold 0), so the worst-case decode of a clip is known; mbtree off, so
        that a copy is the same bytes every time it is made. One encoder
        thread: a shard runs one encoder per core, which costs fewer core-seconds than
        x264's threading on K400's small frames."""
        options = {
            "crf": f"{float(self.crf):g}",
            "preset": self.preset,
            "g": str(self.keyint),
            "keyint_min": str(self.keyint),
            "sc_threshold": "0",
            "threads": "1",
            # no macroblock-tree ratecontrol: with it, one-threaded x264 (libx264 core 165, as
            # PyAV ships it) gave copies whose frames differed from run to run, and so did the
            # demo's numbers; without it each copy is a function of its source
            "x264-params": "mbtree=0",
        }
        if self.tune != "none":
            options["tune"] = self.tune
        return options


# --------------------------------------------------------------------------------------------
# Pure functions: where copies go, which rows a shard takes, which videos and frames are measured
# --------------------------------------------------------------------------------------------
def copy_path(source: str | os.PathLike, videos_dir: str | os.PathLike) -> Path:
    """Where the copy of `source` goes: <videos_dir>/<h[:2]>/<h[2:16]>_<stem>.mp4, h = the
    sha256 of the absolute source path; absolute, like the paths of the splits CSVs.

    Keyed by the whole path, so two classes' `a.mp4` never collide; the stem keeps a copy
    recognisable; the 256 sub-folders keep 260,000 copies out of one directory. Always .mp4:
    the copy is H.264 in mp4 whatever the source container (webm, mkv, avi)."""
    absolute = os.path.abspath(os.fspath(source))
    digest = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()
    stem = Path(absolute).stem
    return Path(os.path.abspath(videos_dir)) / digest[:2] / f"{digest[2:16]}_{stem}.mp4"


def unique_sources(*splits: Iterable[tuple[str, int]]) -> list[str]:
    """The distinct video paths of split rows, in first-seen order (train, then val)."""
    return list(dict.fromkeys(path for rows in splits for path, _ in rows))


def shard_sources(sources: Sequence[str], shard: int, shards: int) -> list[str]:
    """The rows of shard `shard` of `shards`: every index i with i % shards == shard.

    The shards partition the rows exactly (each row in one shard) from the CSV alone, so the
    shard jobs are known before the splits exist and no checkpoint rule is needed."""
    if shards < 1:
        raise TranscodeError(f"data.transcode.shards must be >= 1, got {shards}")
    if not 0 <= shard < shards:
        raise TranscodeError(f"shard {shard} is not in 0..{shards - 1} (data.transcode.shards)")
    return [path for index, path in enumerate(sources) if index % shards == shard]


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
    """The tag a copy carries: its source's sha256 and the settings. A copy whose tag differs
    (the source was replaced, crf changed) is made again, not reused. Nothing of where or
    when: the same source gives the same copy, byte for byte, in any checkout and run."""
    return json.dumps(
        {"version": TAG_VERSION, "source_sha256": file_sha256(source), **asdict(settings)},
        sort_keys=True,
    )


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------
def encode_copy(source: str | os.PathLike, dest: str | os.PathLike, settings: Settings) -> int:
    """Re-encode the first video stream of `source` into `dest` (H.264, yuv420p, mp4, the
    same size and frame count, the nominal frame rate) and return the frames written.

    Frames are passed decoded as they are (no RGB round trip), re-stamped 0, 1, 2, ... at
    the source's average rate: decord reads frames by index, which this keeps. Written
    through atomic_write: an error or a kill leaves no partial copy (stale temp files of a
    killed run are removed here first). Raises on any decode or encode error; an OutputError
    when `dest` cannot be written."""
    dest = Path(dest)
    with _writing(dest):
        for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    tag = source_tag(source, settings)
    with av.open(os.fspath(source)) as inp:
        if not inp.streams.video:
            raise TranscodeError("no video stream")
        stream = inp.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise TranscodeError("the video stream has no frame rate")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width % 2 or height % 2:
            raise TranscodeError(f"frame size {height}x{width} is odd (yuv420p needs even sides)")
        time_base = Fraction(1) / Fraction(rate)
        written = 0
        with _writing(dest), atomic_write(dest, "wb") as handle:
            # bitexact: no muxer version tag either, only what the frames and settings make
            with av.open(handle, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
                out.metadata[TAG] = tag
                video = out.add_stream(
                    "libx264", rate=Fraction(rate), options=settings.x264_options()
                )
                video.width, video.height, video.pix_fmt = width, height, "yuv420p"
                for frame in inp.decode(stream):
                    if (frame.width, frame.height) != (width, height):
                        raise TranscodeError(
                            f"frame {written} is {frame.height}x{frame.width}, the stream "
                            f"{height}x{width} (size changes mid-stream)"
                        )
                    if frame.format.name != "yuv420p":
                        frame = frame.reformat(format="yuv420p")
                    frame.pts, frame.time_base = written, time_base
                    for packet in video.encode(frame):
                        out.mux(packet)
                    written += 1
                if not written:
                    raise TranscodeError("no frame decodes")
                for packet in video.encode():
                    out.mux(packet)
    return written


def _decord_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, height, width) as the training data path sees `path` (decord)."""
    reader = open_video(os.fspath(path))
    frames = len(reader)
    height, width = reader[0].shape[:2]
    return frames, int(height), int(width)


def check_copy(
    source: str | os.PathLike, dest: str | os.PathLike, settings: Settings
) -> str | None:
    """Why `dest` is not a usable copy of `source` with `settings`, or None if it is.

    Usable: it opens, carries the tag of this source and these settings, and decord sees the
    source's frame count and size and decodes its last frame. A copy cut short, from another
    source or from other settings is refused (and made again)."""
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
        expected = _decord_shape(source)
        found = _decord_shape(dest)
        read_frames(open_video(os.fspath(dest)), np.array([found[0] - 1]))
    except Exception as err:
        return f"undecodable: {describe_error(err)}"
    if found != expected:
        return (
            f"decord sees {found[0]} frames of {found[1]}x{found[2]} in the copy, "
            f"{expected[0]} of {expected[1]}x{expected[2]} in the source"
        )
    return None


def measure_psnr(source: str | os.PathLike, copy: str | os.PathLike, frames: int) -> float:
    """PSNR (dB) of the copy vs the source on `frames` evenly spaced frames, both decoded by
    decord (the training reader) at the same indices."""
    length = len(open_video(os.fspath(source)))
    indices = np.asarray(sample_positions(length, frames), dtype=np.int64)
    reference = read_frames(open_video(os.fspath(source)), indices)
    decoded = read_frames(open_video(os.fspath(copy)), indices)
    return psnr(reference, decoded)


def transcode_one(
    source: str, dest: str, settings: Settings, psnr_frames: int = 0
) -> dict[str, Any]:
    """Make (or reuse) the copy of one video; never raises for a bad video, raises
    OutputError when the copy cannot be written (the job's failure, not the video's).

    Returns its record: status transcoded / reused / failed, the reason of a failure, the
    copy (None when failed: the fine-tune keeps the original), frames, seconds and
    core-seconds of this process (the encoder's threads included), sizes, and the PSNR
    when psnr_frames > 0."""
    wall, cpu = time.monotonic(), time.process_time()
    record: dict[str, Any] = {"source": source, "copy": None, "status": "failed", "reason": None}
    try:
        if check_copy(source, dest, settings) is None:
            record["status"] = "reused"
        else:
            encode_copy(source, dest, settings)
            problem = check_copy(source, dest, settings)
            if problem is not None:
                with _writing(dest):
                    os.unlink(dest)
                raise TranscodeError(f"the new copy is not usable: {problem}")
            record["status"] = "transcoded"
        record["copy"] = dest
        record["frames"] = _decord_shape(dest)[0]
        record["source_bytes"] = os.path.getsize(source)
        record["copy_bytes"] = os.path.getsize(dest)
        if psnr_frames > 0:
            record["psnr"] = measure_psnr(source, dest, psnr_frames)
    except OutputError:
        raise
    except Exception as err:
        record.update(status="failed", copy=None, reason=describe_error(err))
    record["seconds"] = time.monotonic() - wall
    record["core_seconds"] = time.process_time() - cpu
    return record


# --------------------------------------------------------------------------------------------
# One shard
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
            # wait: once this raises, no worker is still writing a copy
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


def transcode_sources(
    sources: Sequence[str],
    videos_dir: str | os.PathLike,
    settings: Settings,
    workers: int = 1,
    psnr_videos: int = 0,
    psnr_frames: int = 8,
    work: Callable[..., dict[str, Any]] = transcode_one,
) -> list[dict[str, Any]]:
    """Copy each source (`transcode_one`) in `workers` processes, with a progress bar on
    stderr; the PSNR of `psnr_videos` of them (spread evenly) is measured. Returns the
    records in the order of `sources`. A process killed by a file (a decoder crash) is
    retried with each file in flight alone, and the one that kills it is reported failed.
    An OutputError (a copy cannot be written) is raised at once."""
    measured = set(sample_positions(len(sources), psnr_videos))
    tasks = [
        (source, str(copy_path(source, videos_dir)), settings, psnr_frames if i in measured else 0)
        for i, source in enumerate(sources)
    ]
    records: dict[int, dict[str, Any]] = {}
    bar = tqdm(
        total=len(tasks),
        desc="transcoding videos",
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
                raise TranscodeError("the worker processes die before taking any video")
            remaining = [i for i in remaining if i not in records]
    finally:
        bar.close()
    return [records[i] for i in range(len(tasks))]


def run_shard(
    train_csv: str | os.PathLike,
    val_csv: str | os.PathLike,
    shard: int,
    shards: int,
    videos_dir: str | os.PathLike,
    settings: Settings,
    output: str | os.PathLike,
    workers: int = 1,
    psnr_videos: int = 0,
    psnr_frames: int = 8,
) -> dict[str, Any]:
    """The `transcode` job of one shard: copy its rows, write <output> (JSON: the settings,
    the shard, its wall seconds and core-seconds, one record per video). Returns it.

    The folders of the copies and of <output> are tried first (`check_writable`): one that
    cannot be written raises OutputError before any video is encoded."""
    started = time.monotonic()
    sources = unique_sources(read_split_csv(train_csv), read_split_csv(val_csv))
    mine = shard_sources(sources, shard, shards)
    for folder in (videos_dir, Path(output).parent):
        with _writing(folder):
            check_writable(folder)
    LOG.info(
        "shard %d of %d: %d of %d videos, %d workers, keyint %d crf %g preset %s",
        shard,
        shards,
        len(mine),
        len(sources),
        workers,
        settings.keyint,
        settings.crf,
        settings.preset,
    )
    records = transcode_sources(mine, videos_dir, settings, workers, psnr_videos, psnr_frames)
    result = {
        "shard": shard,
        "shards": shards,
        "settings": asdict(settings),
        "seconds": time.monotonic() - started,
        "core_seconds": sum(r["core_seconds"] for r in records),
        "records": records,
    }
    counts = {s: sum(r["status"] == s for r in records) for s in ("transcoded", "reused", "failed")}
    LOG.info("shard %d: %s in %.1f s", shard, counts, result["seconds"])
    with _writing(output), atomic_write(output, "w") as handle:
        json.dump(result, handle, indent=1)
        handle.write("\n")
    return result


# --------------------------------------------------------------------------------------------
# Gather
# --------------------------------------------------------------------------------------------
def _read_shard(path: str | os.PathLike) -> dict[str, Any]:
    """A shard's JSON record, or TranscodeError naming the file."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise TranscodeError(f"{path}: cannot read the shard record ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise TranscodeError(f"{path}: not a transcode shard record (no 'records' list)")
    return data


def gather(
    train_csv: str | os.PathLike,
    val_csv: str | os.PathLike,
    shard_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """The `transcode_gather` job: <out_dir>/train.csv and val.csv (the splits' rows, each
    path replaced by its copy, the original kept where the copy failed) and report.json.

    Every video of the splits must be in exactly one shard record with the same settings,
    else TranscodeError names the first one missing (the shards and the CSVs disagree); a
    shard record that is missing, or lists a video failed by a read-only or full disk (as
    the stage did before such errors failed the shard), raises TranscodeError naming it.
    An output that cannot be written raises OutputError, before any is written."""
    shards = [_read_shard(path) for path in shard_files]
    settings = {json.dumps(s["settings"], sort_keys=True) for s in shards}
    if len(settings) > 1:
        raise TranscodeError(f"the shard records were made with different settings: {settings}")
    records: dict[str, dict[str, Any]] = {}
    for path, data in zip(shard_files, shards, strict=True):
        for record in data["records"]:
            if record["source"] in records:
                raise TranscodeError(f"{path}: {record['source']} is in two shards")
            reason = record.get("reason") or ""
            if record["status"] == "failed" and any(e in reason for e in WRITE_ONLY_ERRORS):
                raise TranscodeError(
                    f"{path}: {record['source']} failed writing its copy ({reason}): the "
                    "shard's outputs could not be written, not the video; make room or fix "
                    "the folder and re-run the transcode rule"
                )
            records[record["source"]] = record
    splits = {"train": read_split_csv(train_csv), "val": read_split_csv(val_csv)}
    for name, csv in (("train", train_csv), ("val", val_csv)):
        for source, _ in splits[name]:
            if source not in records:
                raise TranscodeError(
                    f"{csv}: {source} is in no shard record (were the shards made from "
                    "another splits run? re-run the transcode rule)"
                )
    out = Path(out_dir)
    with _writing(out):
        check_writable(out)
    for name, rows in splits.items():
        with _writing(out / f"{name}.csv"):
            write_split_csv(
                out / f"{name}.csv", [(records[src]["copy"] or src, label) for src, label in rows]
            )
    report = summarize(list(records.values()), shards)
    with _writing(out / "report.json"), atomic_write(out / "report.json", "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    LOG.info(
        "%d videos: %d transcoded, %d reused, %d failed; PSNR %s dB",
        report["videos"],
        report["transcoded"],
        report["reused"],
        report["failed"],
        report["psnr"]["mean"],
    )
    return report


def summarize(records: list[dict[str, Any]], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """report.json: counts, failures with reasons, the PSNR sample, the cost and the bytes of
    sources and copies.

    Cost: `seconds` = wall seconds of the shard jobs summed; `core_seconds` = CPU seconds
    spent on the videos (decode, encode, checks, PSNR) in the worker processes; per video
    transcoded in these runs, and the core-hours that gives per 1,000 such videos. A job's
    start-up (imports, worker processes) is not in them: see the rule's benchmark files."""
    made = [r for r in records if r["status"] == "transcoded"]
    copied = [r for r in records if r["copy"] is not None]
    measured = [r["psnr"] for r in records if r.get("psnr") is not None]
    core_per_video = statistics.fmean(r["core_seconds"] for r in made) if made else None
    return {
        "settings": shards[0]["settings"] if shards else None,
        "shards": len(shards),
        "videos": len(records),
        "transcoded": len(made),
        "reused": sum(r["status"] == "reused" for r in records),
        "failed": sum(r["status"] == "failed" for r in records),
        "failures": [
            {"source": r["source"], "reason": r["reason"]}
            for r in records
            if r["status"] == "failed"
        ],
        "psnr": {
            "videos": len(measured),
            "mean": round(statistics.fmean(measured), 2) if measured else None,
            "min": round(min(measured), 2) if measured else None,
        },
        "seconds": round(sum(s["seconds"] for s in shards), 2),
        "core_seconds": round(sum(s["core_seconds"] for s in shards), 2),
        "core_seconds_per_video": round(core_per_video, 4) if made else None,
        "core_hours_per_1000_videos": round(core_per_video * 1000 / 3600, 3) if made else None,
        "source_bytes": sum(r["source_bytes"] for r in copied),
        "copy_bytes": sum(r["copy_bytes"] for r in copied),
    }
