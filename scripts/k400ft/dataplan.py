"""What preparing Kinetics-400 from its archive will cost, known before the first byte of a
part is fetched (rule `plan_data`, which every fetch job waits for): the bytes to fetch, the
peak disk, the resize's core-hours, and a refusal when the disk cannot hold the peak.

- bytes to fetch: one HEAD request per part (and the replacement archive), the server's sizes;
- extracted bytes: the fetched bytes times the ratio of member bytes to compressed bytes read
  on the sample (mp4 files hardly compress: about 1);
- the resize: `resize_videos` videos taken from the start of the first val part (a streamed
  GET, stopped once they are read), each resized in this process with the configured
  settings (`encode.encode_one`): core-seconds per video times the videos the annotation
  CSVs list = the resize's core-hours; output bytes / input bytes = the resized tree's size;
- peak disk (`peak_disk`): archives + extracted + resized with `kinetics.keep_archives:
  true`; without the archives (each is deleted once extracted and checked) but for a window
  of the largest parts that can wait on disk at once (2 per connection) with `false`;
- the refusal (`fetch.SpaceError`): the file system of `kinetics.root` (its nearest existing
  folder) must have the peak free, less what the stages already hold there (a re-run).
`render_lines` gives the lines data.md and the plan's cost.md show.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from k400ft import fetch
from k400ft.encode import Settings, encode_one
from k400ft.io import atomic_write

LOG = logging.getLogger("k400ft.dataplan")

GB = 1e9
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi")


def peak_disk(
    archive_bytes: int,
    extracted_bytes: int,
    resized_bytes: int,
    keep_archives: bool,
    window_bytes: int,
) -> int:
    """The most bytes the data preparation holds on disk at once: every archive, extracted
    file and resized file with keep_archives; else the extracted and resized trees plus the
    window of parts fetched and not yet extracted (each part is deleted once its files are
    checked)."""
    if keep_archives:
        return archive_bytes + extracted_bytes + resized_bytes
    return extracted_bytes + resized_bytes + min(window_bytes, archive_bytes)


def free_bytes(path: str | os.PathLike) -> tuple[int, str]:
    """Bytes free to this user on the file system of `path` (its nearest existing folder,
    named in the second value)."""
    folder = Path(os.path.abspath(path))
    while not folder.exists():
        folder = folder.parent
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize, os.fspath(folder)


def held_bytes(folders: list[str | os.PathLike]) -> int:
    """Bytes of the files under `folders` (missing ones hold none): what an earlier run of
    the stages already has on disk."""
    total = 0
    for folder in folders:
        for directory, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(directory, name)).st_size
                except FileNotFoundError:
                    continue
    return total


def server_sizes(urls: list[str], connections: int) -> list[int | str]:
    """One HEAD per URL, `connections` at a time: the server's size of each, in the order of
    urls, or why it cannot be had (its fetch job will fail naming it; the others go on)."""
    local = threading.local()

    def size(url: str) -> int | str:
        if not hasattr(local, "http"):
            local.http = fetch.session()
        try:
            return fetch.remote_size(url, local.http)
        except fetch.FetchError as err:
            return str(err)

    with ThreadPoolExecutor(max(1, connections)) as pool:
        return list(pool.map(size, urls))


class Gunzip(io.RawIOBase):
    """A gzip stream decompressed as it is read, counting exactly the compressed bytes its
    output came from (`consumed`) and the bytes it gave (`produced`): their ratio is the
    archive's, however little of it is read."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.fed, self.produced = raw, 0, 0
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            pending = self.inflate.unconsumed_tail
            if not pending:
                pending = self.raw.read(fetch.CHUNK)
                if not pending:
                    return 0
                self.fed += len(pending)
            data = self.inflate.decompress(pending, len(buffer))
            if data:
                buffer[: len(data)] = data
                self.produced += len(data)
                return len(data)

    @property
    def consumed(self) -> int:
        return self.fed - len(self.inflate.unconsumed_tail) - len(self.inflate.unused_data)


def sample_videos(url: str, count: int, folder: str | os.PathLike) -> dict[str, Any]:
    """The first `count` videos of the part at `url`, read from the start of a streamed GET
    (stopped once they are in) into `folder` through tarfile's data filter, and the ratio of
    the bytes they decompressed to (`produced`) to the compressed bytes (`consumed`)."""
    folder = Path(folder)
    videos: list[str] = []
    with fetch.session().get(url, stream=True, timeout=fetch.TIMEOUT_S) as response:
        if response.status_code != 200:
            raise fetch.FetchError(f"{url}: HTTP {response.status_code}")
        response.raw.decode_content = False
        stream = Gunzip(response.raw)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                member = tarfile.data_filter(member, os.fspath(folder))
                if not member.isfile() or not member.name.lower().endswith(VIDEO_SUFFIXES):
                    continue
                path = folder / f"{len(videos):03d}_{Path(member.name).name}"
                path.write_bytes(tar.extractfile(member).read())
                videos.append(os.fspath(path))
                if len(videos) >= count:
                    break
    return {"videos": videos, "consumed": stream.consumed, "produced": stream.produced}


def measure_resize(videos: list[str], settings: Settings, folder: str | os.PathLike) -> dict:
    """Resize each video in this process (`encode.encode_one`): the core-seconds per video
    resized and the ratio of output to input bytes, over those that resize."""
    done, failed = [], []
    for number, source in enumerate(videos):
        record = encode_one(source, os.path.join(folder, f"out{number:03d}.mp4"), settings)
        (failed if record["status"] == "failed" else done).append(record)
    if not done:
        return {"videos": 0, "failed": len(failed), "core_s_per_video": None, "bytes_ratio": None}
    return {
        "videos": len(done),
        "failed": len(failed),
        "core_s_per_video": sum(r["core_seconds"] for r in done) / len(done),
        "bytes_ratio": sum(r["copy_bytes"] for r in done) / sum(r["source_bytes"] for r in done),
    }


def plan_data(spec: dict[str, Any], lists: dict[str, str], annotations: list[str]) -> dict:
    """The data preparation's figures (see the module docstring) for `spec`: {"base_url",
    "lists", "parts", "replacement", "keep_archives", "connections", "root", "folders" (where
    the stages write under root), "resize": Settings fields or null, "resize_videos"};
    `lists`: the fetched list file of each split; `annotations`: the annotation CSVs.
    Raises fetch.SpaceError, with the figures, when the file system cannot hold the peak."""
    from k400ft.splits import read_annotations  # imports torch: only here

    started = time.monotonic()
    urls = {
        split: fetch.read_list(
            lists[split],
            fetch.join_url(spec["base_url"], spec["lists"][split]),
            spec["parts"][split],
            f"kinetics.archive.parts.{split}",
        )
        for split in spec["lists"]
    }
    everything = [u for split in urls for u in urls[split]]
    everything.append(fetch.join_url(spec["base_url"], spec["replacement"]))
    answers = server_sizes(everything, spec["connections"])
    sizes = [answer for answer in answers if isinstance(answer, int)]
    unavailable = [answer for answer in answers if isinstance(answer, str)]
    for reason in unavailable:
        LOG.warning("%s (its fetch job will fail; the other parts can be fetched)", reason)
    listed = sum(len(read_annotations(Path(p), "kinetics.annotations")) for p in annotations)
    free, where = free_bytes(spec["root"])
    disk = {
        "free_bytes": free,
        "filesystem": where,
        "held_bytes": held_bytes(spec["folders"]),
        "unavailable": unavailable,
    }
    counts = {split: len(u) for split, u in urls.items()} | {"replacement": 1}
    # the archives and as many bytes extracted, the resize not counted: when even that does
    # not fit, refuse before reading a byte of a part (the sample)
    record = figures(counts, sizes, listed, 1.0, None, spec, disk)
    if not record["fits"]:
        raise fetch.SpaceError(refusal(record, spec["root"]))
    with tempfile.TemporaryDirectory() as tmp:
        known = {u for u, a in zip(everything, answers, strict=True) if isinstance(a, int)}
        first = next(u for u in urls.get("val", []) + everything if u in known)
        sample = sample_videos(first, spec["resize_videos"], tmp)
        ratio = sample["produced"] / max(sample["consumed"], 1)
        resize = None
        if spec["resize"]:
            resize = measure_resize(sample["videos"], Settings(**spec["resize"]), tmp)
            resize["settings"] = spec["resize"]
    record = figures(counts, sizes, listed, ratio, resize, spec, disk)
    record["seconds"] = round(time.monotonic() - started, 1)
    if not record["fits"]:
        raise fetch.SpaceError(refusal(record, spec["root"]))
    return record


def figures(
    parts: dict[str, int],
    sizes: list[int],
    listed: int,
    ratio: float,
    resize: dict | None,
    spec: dict[str, Any],
    disk: dict[str, Any],
) -> dict[str, Any]:
    """The data plan's record from the server's part `sizes`, the `listed` videos, the
    extracted-to-archive `ratio`, the `resize` measured on the sample (None: not counted) and
    the `disk` (free_bytes, filesystem, held_bytes)."""
    archive_bytes = sum(sizes)
    extracted = int(archive_bytes * ratio)
    per_video = resize["core_s_per_video"] if resize else None
    resized = int(extracted * resize["bytes_ratio"]) if per_video else 0
    window = sum(sorted(sizes, reverse=True)[: 2 * spec["connections"]])
    keep = spec["keep_archives"]
    peak = peak_disk(archive_bytes, extracted, resized, keep, window)
    return {
        "parts": parts,
        "archive_bytes": archive_bytes,
        "largest_part_bytes": max(sizes, default=0),
        "extract_ratio": round(ratio, 4),
        "extracted_bytes": extracted,
        "resized_bytes": resized,
        "listed_videos": listed,
        "resize": resize
        and {**resize, "core_hours": per_video * listed / 3600 if per_video else None},
        "measured": resize is not None or not spec["resize"],
        "keep_archives": keep,
        "peak_bytes": peak,
        "peak_other_bytes": peak_disk(archive_bytes, extracted, resized, not keep, window),
        **disk,
        "fits": disk["free_bytes"] + disk["held_bytes"] >= peak,
    }


def size(count: int) -> str:
    """Bytes as GB (10^9) from 1 GB on, else MB."""
    return f"{count / GB:.1f} GB" if count >= GB else f"{count / 1e6:.1f} MB"


def refusal(record: dict, root: str) -> str:
    """The one-paragraph refusal: what the peak is made of, what is free, what to change."""
    other = "false" if record["keep_archives"] else "true"
    held = f" (+ {size(record['held_bytes'])} the stages hold)" if record["held_bytes"] else ""
    return (
        f"kinetics.root {root} (file system of {record['filesystem']}): "
        f"{size(record['free_bytes'])} free{held}, the data preparation needs "
        + ("" if record["measured"] else "at least ")
        + f"{size(record['peak_bytes'])} at its peak ({_peak_terms(record)}"
        + ("" if record["measured"] else ", the resize's share not yet measured")
        + "). Free space, point "
        f"kinetics.root elsewhere, or set kinetics.keep_archives: {other} (peak "
        f"{size(record['peak_other_bytes'])}). Nothing was fetched."
    )


def _peak_terms(record: dict) -> str:
    waiting = record["peak_bytes"] - record["extracted_bytes"] - record["resized_bytes"]
    archives = (
        f"archives {size(record['archive_bytes'])}"
        if record["keep_archives"]
        else f"parts waiting for extraction {size(waiting)}"
    )
    keep = str(record["keep_archives"]).lower()
    return (
        f"{archives} + extracted {size(record['extracted_bytes'])} + resized "
        f"{size(record['resized_bytes'])}, keep_archives {keep}"
    )


def render_lines(record: dict) -> list[str]:
    """The data preparation's lines of data.md and of the plan's cost.md."""
    resize = record.get("resize")
    parts = ", ".join(f"{split} {count}" for split, count in record["parts"].items())
    lines = [
        "## Data preparation (Kinetics-400 from its archive)",
        "",
        f"- to fetch: {size(record['archive_bytes'])} in {sum(record['parts'].values())} parts "
        f"({parts}; the server's sizes, one HEAD each), the largest "
        f"{size(record['largest_part_bytes'])}",
        *(f"- cannot be had: {reason}" for reason in record.get("unavailable", [])),
        f"- extracted: {size(record['extracted_bytes'])} (x{record['extract_ratio']:.3f} of the "
        f"archives, measured on the sample), {record['listed_videos']} videos listed",
    ]
    if resize and resize["core_s_per_video"]:
        lines.append(
            f"- resize to short side {resize['settings']['short_side']}: "
            f"{resize['core_s_per_video']:.3f} core-s per video ({resize['videos']} sample "
            f"videos) -> {resize['core_hours']:.3g} core-hours for the {record['listed_videos']}"
            f" listed; resized tree {size(record['resized_bytes'])} "
            f"(x{resize['bytes_ratio']:.3f} of the extracted bytes)"
        )
    elif resize:
        lines.append(f"- resize: no sample video resized ({resize['failed']} failed)")
    else:
        lines.append("- resize: off (kinetics.resize_short_side null)")
    held = f" (+ {size(record['held_bytes'])} already held)" if record["held_bytes"] else ""
    lines += [
        f"- peak disk: {size(record['peak_bytes'])} ({_peak_terms(record)}); with "
        f"keep_archives {str(not record['keep_archives']).lower()}: "
        f"{size(record['peak_other_bytes'])}",
        f"- free on {record['filesystem']}: {size(record['free_bytes'])}{held}: "
        + ("fits" if record["fits"] else "does not fit (the fetch refuses)"),
        "",
    ]
    return lines


def write_plan(record: dict, out_json: str | os.PathLike, out_md: str | os.PathLike) -> None:
    """data.json and data.md, atomically."""
    with atomic_write(out_json, "w") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    with atomic_write(out_md, "w") as handle:
        handle.write("# Planned cost of the data preparation\n\n" + "\n".join(render_lines(record)))
