"""Resize the extracted Kinetics-400 videos to short side 320 (config
`kinetics.resize_short_side`), as VideoMAE's DATASET.md prepares the data (rules/resize.smk).

Each present video of the extract stage's count (train and val) is decoded once, scaled with
its aspect kept and even sides (`encode.scaled_size`: what `ffmpeg -vf scale=-2:320` gives)
and encoded with libx264 through the encoder path the transcode stage uses (k400ft.encode),
into the split's folder under `kinetics.root`, the tree the splits stage reads, at the same
relative path (.mp4). Audio is dropped. A video already at the target size is copied, not
encoded again. With `data.transcode` on, the same single encode also puts a keyframe every
`keyint` frames (and its tune): the fine-tune then reads these files, and no second encode
is made (README, "Getting Kinetics-400").

- `run_shard` (rule `kinetics_resize`, one job per shard: every `shards`-th video) writes
  each output atomically in a pool of processes, keeps what a killed or earlier run made
  (`encode.check_output`), measures the PSNR of a sample and records each video; a video
  that cannot be resized is recorded with its reason and its original file is put in the
  tree as it is (the splits stage then probes it and says why it drops it, or keeps it).
- `gather` (rule `kinetics_resize_gather`): report.json, the counts, failures, PSNR sample,
  core-seconds and bytes (`shards.summarize`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from k400ft import encode
from k400ft.encode import copy_video, encode_one, encode_pairs, writing
from k400ft.io import atomic_write, check_writable
from k400ft.shards import collect, shard_items, summarize, write_shard

LOG = logging.getLogger("k400ft.resize")


@dataclass(frozen=True)
class Settings(encode.Settings):
    """The resize's encoder settings: kinetics.resize_short_side and kinetics.resize (crf,
    preset, tune); with data.transcode on, its keyint and tune."""

    CONFIG: ClassVar[str] = "kinetics.resize"


def output_path(relative: str, target: str | os.PathLike) -> Path:
    """Where the resized video of `relative` (a path in the extracted split folder) goes:
    the same path in `target`, as .mp4 (the output is H.264 in mp4)."""
    return Path(target) / Path(relative).with_suffix(".mp4")


def resize_sources(verified: Sequence[dict], targets: Sequence[str]) -> list[tuple[str, str]]:
    """(source, output) of every present video the extract stage's counts list, split after
    split: the order the shards are cut from."""
    pairs = []
    for count, target in zip(verified, targets, strict=True):
        for relative in count["videos"]:
            source = os.path.join(count["folder"], relative)
            pairs.append((source, os.fspath(output_path(relative, target))))
    return pairs


def resize_one(source: str, dest: str, settings: Settings, psnr_frames: int = 0) -> dict[str, Any]:
    """Resize (or copy, or reuse) one video (`encode.encode_one`); a video that fails keeps
    its original in the tree (`kept`: where), so the splits stage sees it. OutputError when
    the disk refuses."""
    record = encode_one(source, dest, settings, psnr_frames, made="resized")
    if record["status"] == "failed" and os.path.exists(source):
        kept = Path(dest).with_suffix(Path(source).suffix)
        copy_video(source, kept)
        record["kept"] = os.fspath(kept)
    return record


def run_shard(
    verified: Sequence[str | os.PathLike],
    targets: Sequence[str],
    shard: int,
    shards: int,
    settings: Settings,
    output: str | os.PathLike,
    workers: int = 1,
    psnr_videos: int = 0,
    psnr_frames: int = 8,
    work: Callable[..., dict[str, Any]] = resize_one,
) -> dict[str, Any]:
    """The `kinetics_resize` job of one shard: resize its videos of the counts `verified`
    (one per split, the extract stage's) into `targets` (the split folders, same order), then
    write <output> (`shards.write_shard`). The output folders are tried first: one that
    cannot be written raises OutputError before any video is encoded."""
    started = time.monotonic()
    counts = [json.loads(Path(path).read_text()) for path in verified]
    pairs = resize_sources(counts, targets)
    mine = shard_items(pairs, shard, shards, "kinetics.resize.shards")
    for folder in (*targets, Path(output).parent):
        with writing(folder):
            check_writable(folder)
    LOG.info(
        "shard %d of %d: %d of %d videos to short side %s, %d workers, crf %g preset %s%s",
        shard,
        shards,
        len(mine),
        len(pairs),
        settings.short_side,
        workers,
        settings.crf,
        settings.preset,
        f", a keyframe every {settings.keyint} frames" if settings.keyint else "",
    )
    records = encode_pairs(
        mine, settings, workers, psnr_videos, psnr_frames, work, "resizing videos"
    )
    return write_shard(output, shard, shards, settings, started, records)


def gather(
    verified: Sequence[str | os.PathLike],
    shard_files: Sequence[str | os.PathLike],
    report_path: str | os.PathLike,
) -> dict[str, Any]:
    """The `kinetics_resize_gather` job: every present video in exactly one shard record
    (else EncodeError names the first one missing), then report.json (`shards.summarize`
    plus the videos per split) at `report_path`."""
    shards, records = collect(shard_files, "kinetics_resize")
    counts = [json.loads(Path(path).read_text()) for path in verified]
    per_split = {}
    for path, count in zip(verified, counts, strict=True):
        for relative in count["videos"]:
            source = os.path.join(count["folder"], relative)
            if source not in records:
                raise encode.EncodeError(
                    f"{path}: {source} is in no shard record (were the shards made from "
                    "another extraction? re-run the kinetics_resize rule)"
                )
        per_split[count["split"]] = len(count["videos"])
    report = {**summarize(list(records.values()), shards, made="resized"), "splits": per_split}
    with writing(report_path), atomic_write(report_path, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    LOG.info(
        "%d videos: %d resized, %d copied, %d reused, %d failed (originals kept); PSNR %s dB;"
        " %.1f core-s per video",
        report["videos"],
        report["resized"],
        report["copied"],
        report["reused"],
        report["failed"],
        report["psnr"]["mean"],
        report["core_seconds_per_video"] or 0.0,
    )
    return report
