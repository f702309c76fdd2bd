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
  copy atomically under <videos>/ (`copy_path`) through the encoder path the resize stage
  shares (k400ft.encode: a pool of processes, one x264 thread each), skips a copy already
  there and valid for the same source and settings (`encode.check_output`), measures the
  PSNR of a sample (`encode.measure_psnr`) and writes one JSON record
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

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from k400ft import encode
from k400ft.encode import EncodeError, encode_one, encode_pairs, writing
from k400ft.io import atomic_write, check_writable
from k400ft.shards import collect, shard_items, summarize, write_shard
from k400ft.video import read_split_csv, write_split_csv

LOG = logging.getLogger("k400ft.transcode")

# The stage's own errors (a bad shard, CSV or record) and the encoder's are one kind: exit 1.
TranscodeError = EncodeError


@dataclass(frozen=True)
class Settings(encode.Settings):
    """The x264 settings of the copies (config data.transcode keyint, crf, preset, tune), at
    the source's size."""

    CONFIG: ClassVar[str] = "data.transcode"


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
    """The rows of shard `shard` of `shards` (`shards.shard_items`): known from the CSV
    alone, so the shard jobs are known before the splits exist."""
    return shard_items(sources, shard, shards, "data.transcode.shards")


def transcode_one(
    source: str, dest: str, settings: Settings, psnr_frames: int = 0
) -> dict[str, Any]:
    """Make (or reuse) the copy of one video (`encode.encode_one`): never raises for a bad
    video, raises OutputError when the copy cannot be written (the job's failure)."""
    return encode_one(source, dest, settings, psnr_frames)


# --------------------------------------------------------------------------------------------
# One shard
# --------------------------------------------------------------------------------------------
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
    pairs = [(source, str(copy_path(source, videos_dir))) for source in sources]
    return encode_pairs(
        pairs, settings, workers, psnr_videos, psnr_frames, work, "transcoding videos"
    )


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
        with writing(folder):
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
    return write_shard(output, shard, shards, settings, started, records)


# --------------------------------------------------------------------------------------------
# Gather
# --------------------------------------------------------------------------------------------
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
    shards, records = collect(shard_files, "transcode")
    splits = {"train": read_split_csv(train_csv), "val": read_split_csv(val_csv)}
    for name, csv in (("train", train_csv), ("val", val_csv)):
        for source, _ in splits[name]:
            if source not in records:
                raise TranscodeError(
                    f"{csv}: {source} is in no shard record (were the shards made from "
                    "another splits run? re-run the transcode rule)"
                )
    out = Path(out_dir)
    with writing(out):
        check_writable(out)
    for name, rows in splits.items():
        with writing(out / f"{name}.csv"):
            write_split_csv(
                out / f"{name}.csv", [(records[src]["copy"] or src, label) for src, label in rows]
            )
    report = summarize(list(records.values()), shards)
    with writing(out / "report.json"), atomic_write(out / "report.json", "w") as handle:
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
