"""The records of the sharded encoding stages (transcode, resize): one JSON record per shard
job (`write_shard`), read back and checked together by the gather job (`collect`), and the
stage's report (`summarize`).

A shard takes every `shards`-th item (`shard_items`, by index: the jobs are known before the
items are), so the shards partition the items exactly and no checkpoint rule is needed.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from k400ft.encode import WRITE_ONLY_ERRORS, EncodeError, Settings, writing
from k400ft.io import atomic_write

LOG = logging.getLogger("k400ft.shards")


def shard_items(items: Sequence[Any], shard: int, shards: int, key: str) -> list[Any]:
    """The items of shard `shard` of `shards`: every index i with i % shards == shard.
    `key` is the config key of `shards` (named in errors)."""
    if shards < 1:
        raise EncodeError(f"{key} must be >= 1, got {shards}")
    if not 0 <= shard < shards:
        raise EncodeError(f"shard {shard} is not in 0..{shards - 1} ({key})")
    return [item for index, item in enumerate(items) if index % shards == shard]


def write_shard(
    output: str | os.PathLike,
    shard: int,
    shards: int,
    settings: Settings,
    started: float,
    records: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write a shard job's record to `output` (JSON: the shard, the settings, its wall seconds
    since `started` (time.monotonic) and core-seconds, one record per video) and return it."""
    result = {
        "shard": shard,
        "shards": shards,
        "settings": settings.as_dict(),
        "seconds": time.monotonic() - started,
        "core_seconds": sum(r["core_seconds"] for r in records),
        "records": records,
    }
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    LOG.info("shard %d: %s in %.1f s", shard, counts, result["seconds"])
    with writing(output), atomic_write(output, "w") as handle:
        json.dump(result, handle, indent=1)
        handle.write("\n")
    return result


def read_record(path: str | os.PathLike, stage: str) -> dict[str, Any]:
    """A shard's JSON record (a dict with a 'records' list), or EncodeError naming the file."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise EncodeError(f"{path}: cannot read the shard record ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise EncodeError(f"{path}: not a {stage} shard record (no 'records' list)")
    return data


def collect(
    shard_files: Sequence[str | os.PathLike], stage: str
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The shard records of `stage` and their video records by source. EncodeError names the
    record that is missing or unreadable, made with other settings than the others, repeats a
    video, or lists a video failed by a read-only or full disk (the outputs could not be
    written, not the video: an older version of the stage recorded those as failed videos)."""
    shards = [read_record(path, stage) for path in shard_files]
    settings = {json.dumps(s["settings"], sort_keys=True) for s in shards}
    if len(settings) > 1:
        raise EncodeError(f"the shard records were made with different settings: {settings}")
    records: dict[str, dict[str, Any]] = {}
    for path, data in zip(shard_files, shards, strict=True):
        for record in data["records"]:
            if record["source"] in records:
                raise EncodeError(f"{path}: {record['source']} is in two shards")
            reason = record.get("reason") or ""
            if record["status"] == "failed" and any(e in reason for e in WRITE_ONLY_ERRORS):
                raise EncodeError(
                    f"{path}: {record['source']} failed writing its copy ({reason}): the "
                    "shard's outputs could not be written, not the video; make room or fix "
                    f"the folder and re-run the {stage} rule"
                )
            records[record["source"]] = record
    return shards, records


def summarize(
    records: list[dict[str, Any]], shards: list[dict[str, Any]], made: str = "transcoded"
) -> dict[str, Any]:
    """report.json: counts (`made` in these runs, copied, reused, failed), failures with
    reasons, the PSNR sample, the cost and the bytes of sources and outputs.

    Cost: `seconds` = wall seconds of the shard jobs summed; `core_seconds` = CPU seconds
    spent on the videos (decode, encode, checks, PSNR) in the worker processes; per video
    made in these runs, and the core-hours that gives per 1,000 such videos. A job's start-up
    (imports, worker processes) is not in them: see the rule's benchmark files."""
    encoded = [r for r in records if r["status"] == made]
    kept = [r for r in records if r["copy"] is not None]
    measured = [r["psnr"] for r in records if r.get("psnr") is not None]
    core_per_video = statistics.fmean(r["core_seconds"] for r in encoded) if encoded else None
    return {
        "settings": shards[0]["settings"] if shards else None,
        "shards": len(shards),
        "videos": len(records),
        made: len(encoded),
        "copied": sum(r["status"] == "copied" for r in records),
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
        "core_seconds_per_video": round(core_per_video, 4) if encoded else None,
        "core_hours_per_1000_videos": round(core_per_video * 1000 / 3600, 3) if encoded else None,
        "source_bytes": sum(r["source_bytes"] for r in kept),
        "copy_bytes": sum(r["copy_bytes"] for r in kept),
    }
