"""Kinetics-400 tree -> train/val/test split CSVs, class labels and a dropped-video report.

REFERENCE.md section 3: upstream reads `<absolute path> <label>` CSVs (test = val) with labels
indexing the class names sorted alphabetically. Every copy of Kinetics-400 has missing and
corrupt videos; upstream meets them at train time and silently swaps in other videos (which
changes the test denominator). We probe every listed video once here, drop the bad ones and
say which and why, so training and evaluation only see videos that decode.

Layouts (config `kinetics.layout`):
- annotations: the official CSVs (`label,youtube_id,time_start,time_end,split[,is_cc]`);
  video `{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>` in the split's video folder,
  directly or in a sub-folder (some copies add class folders). Classes = the sorted unique
  labels of the train CSV.
- class_folders: `<split video folder>/<class name>/*.<ext>`; classes = the train folders.
Class names sort with '_' read as ' ', so a copy whose folders say `air_drumming` gets the
same label indices as the official names (and as released fine-tuned heads).

Outputs (all written only after everything is known, each atomically): train.csv, val.csv,
test.csv (k400ft.video.write_split_csv), labels.csv (index,name), dropped.csv
(split,path,reason), summary.json (per split: counts, frames, sizes, and how many kept videos
decord misnumbers after a seek or PyAV cannot open: README, "Video decoders").
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from k400ft.decoders import BrokenVideoError, PyAVVideo
from k400ft.io import atomic_write
from k400ft.video import describe_error, open_video, read_frames, write_split_csv

LOG = logging.getLogger("k400ft.splits")

SPLITS = ("train", "val")
# upstream's train window: 16 frames x sampling rate 4; shorter videos are padded (kept).
TRAIN_SPAN = 64
# upstream's loader treats files under 1 KiB as unreadable ("avoid hanging issue") and
# swaps in another video, so it never trains or tests on them: we drop them here.
MIN_BYTES = 1024
ANNOTATION_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
CACHE_VERSION = 3  # 2: + decord_misnumbers; 3: truncated mp4 files decord opens are dropped
CACHE_SAVE_SECONDS = 60.0


class SplitError(ValueError):
    """The Kinetics tree or config cannot give valid splits; the message says what to fix."""


@dataclass(frozen=True)
class Listed:
    """A video a split lists: its file (may not exist) and class name."""

    path: str
    label: str
    reason: str | None = None  # set when dropped before probing (missing, duplicate)


@dataclass(frozen=True)
class Probe:
    """What decoding a file found: reason None = usable ("code: detail" otherwise)."""

    reason: str | None
    frames: int = 0
    height: int = 0
    width: int = 0
    # of a usable file, from PyAV's scan of its packets (k400ft.decoders): True = decord can
    # return a neighbouring frame after a seek in it (open GOPs); None = PyAV cannot open it
    decord_misnumbers: bool | None = False


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------
def class_order(names: Iterable[str]) -> list[str]:
    """Class names sorted alphabetically, '_' read as ' ' (so folder names with underscores
    get the official names' order); ties broken by the raw name."""
    return sorted(set(names), key=lambda name: (name.replace("_", " "), name))


def _resolve(root: Path, value: str) -> Path:
    return root / value  # an absolute value replaces root


def _require(kinetics: dict[str, Any], key: str) -> Any:
    if key not in kinetics:
        raise SplitError(f"config kinetics.{key} is missing")
    return kinetics[key]


def _folder(root: Path, kinetics: dict[str, Any], split: str) -> Path:
    folder = _resolve(root, _require(kinetics, "video_dirs")[split])
    if not folder.is_dir():
        raise SplitError(f"kinetics.video_dirs.{split}: video folder {folder} does not exist")
    return folder


def _extension(name: str, extensions: list[str]) -> str | None:
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem and ext.lower() in extensions else None


def index_videos(folder: Path, extensions: list[str]) -> dict[str, list[str]]:
    """stem -> video files under `folder` (any depth), best first: extension order of the
    config, then shallower, then path."""
    found: dict[str, list[tuple[int, int, str]]] = {}
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        depth = len(Path(directory).relative_to(folder).parts)
        for name in files:
            ext = _extension(name, extensions)
            if ext is not None:
                stem = name[: -len(ext) - 1]
                found.setdefault(stem, []).append(
                    (extensions.index(ext), depth, os.path.join(directory, name))
                )
    return {stem: [path for *_, path in sorted(hits)] for stem, hits in found.items()}


def read_annotations(path: Path, key: str) -> list[tuple[int, str, str]]:
    """(line number, class name, file stem) of each row of an official annotation CSV."""
    if not path.is_file():
        raise SplitError(
            f"layout annotations: {key} {path} not found (official Kinetics CSV "
            "label,youtube_id,time_start,time_end,split[,is_cc]); for "
            "<split>/<class>/*.mp4 trees set kinetics.layout: class_folders"
        )
    rows = []
    # utf-8-sig: a byte-order mark (what spreadsheet tools write) is skipped, not read into
    # the first column's name
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        lacking = [c for c in ANNOTATION_COLUMNS if c not in columns]
        if lacking:
            raise SplitError(
                f"{path}: header {columns} lacks {lacking} (expected "
                "label,youtube_id,time_start,time_end,split[,is_cc])"
            )
        reader.fieldnames = columns
        for row in reader:
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
                label, youtube_id = row["label"].strip(), row["youtube_id"].strip()
            except (TypeError, ValueError, AttributeError):
                raise SplitError(
                    f"{path}:{reader.line_num}: cannot read label, youtube_id, "
                    f"time_start, time_end from {row}"
                ) from None
            if not label or not youtube_id:
                raise SplitError(f"{path}:{reader.line_num}: empty label or youtube_id")
            rows.append((reader.line_num, label, f"{youtube_id}_{start:06d}_{end:06d}"))
    if not rows:
        raise SplitError(f"{path}: no videos listed")
    return rows


def list_annotations(kinetics: dict[str, Any]) -> tuple[list[str], dict[str, list[Listed]]]:
    """Classes and listed videos of the official-CSV layout (see the module docstring)."""
    root = Path(_require(kinetics, "root"))
    extensions = [e.lower().lstrip(".") for e in _require(kinetics, "extensions")]
    annotations = _require(kinetics, "annotations")
    rows = {
        split: read_annotations(_resolve(root, annotations[split]), f"kinetics.annotations.{split}")
        for split in SPLITS
    }
    classes = class_order(label for _, label, _ in rows["train"])
    known = set(classes)
    listed: dict[str, list[Listed]] = {}
    for split in SPLITS:
        folder = _folder(root, kinetics, split)
        index = index_videos(folder, extensions)
        csv_path = _resolve(root, annotations[split])
        seen: dict[str, int] = {}
        entries = []
        for line, label, stem in rows[split]:
            if label not in known:
                raise SplitError(
                    f"{csv_path}:{line}: class {label!r} is not in the train "
                    f"annotations ({_resolve(root, annotations['train'])})"
                )
            files = index.get(stem)
            path = files[0] if files else str(folder / f"{stem}.{extensions[0]}")
            reason = None if files else "missing"
            if stem in seen:
                reason = f"duplicate: {csv_path.name} line {line} repeats line {seen[stem]}"
            seen.setdefault(stem, line)
            entries.append(Listed(os.path.abspath(path), label, reason))
        found = sum(e.reason is None for e in entries)
        if not found:
            raise SplitError(
                f"layout annotations: none of the {len(entries)} videos listed in {csv_path} "
                f"were found under {folder} as {{youtube_id}}_{{time_start:06d}}_"
                f"{{time_end:06d}}.{{{','.join(extensions)}}} (directly or in sub-folders); "
                "for <split>/<class>/*.mp4 trees set kinetics.layout: class_folders"
            )
        listed[split] = entries
    return classes, listed


def list_class_folders(kinetics: dict[str, Any]) -> tuple[list[str], dict[str, list[Listed]]]:
    """Classes and listed videos of the one-folder-per-class layout."""
    root = Path(_require(kinetics, "root"))
    extensions = [e.lower().lstrip(".") for e in _require(kinetics, "extensions")]
    pattern = f"<class name>/*.{{{','.join(extensions)}}}"
    listed: dict[str, list[Listed]] = {}
    classes: list[str] = []
    for split in SPLITS:
        folder = _folder(root, kinetics, split)
        subdirs = sorted(
            d.name for d in os.scandir(folder) if d.is_dir() and not d.name.startswith(".")
        )
        loose = [n for n in os.listdir(folder) if _extension(n, extensions)]
        if not subdirs:
            hint = ""
            if loose:
                hint = (
                    f"; it holds {len(loose)} video files directly: set kinetics.layout: "
                    "annotations if the official CSVs list them"
                )
            raise SplitError(
                f"layout class_folders: no class folders in {folder} (expected "
                f"{folder}/{pattern}){hint}"
            )
        if loose:
            LOG.warning("%s: %d video files outside class folders are ignored", folder, len(loose))
        if split == "train":
            classes = class_order(subdirs)
        else:
            unknown = sorted(set(subdirs) - set(classes))
            if unknown:
                raise SplitError(
                    f"{folder}: class folders {unknown[:5]} are not train classes "
                    f"(train folders in {_folder(root, kinetics, 'train')})"
                )
        entries = []
        for name in class_order(subdirs):
            for file in sorted(os.listdir(folder / name)):
                if _extension(file, extensions):
                    entries.append(Listed(os.path.abspath(folder / name / file), name))
        if not entries:
            raise SplitError(f"layout class_folders: no {pattern} files under {folder}")
        listed[split] = entries
    return classes, listed


LAYOUTS: dict[str, Callable[[dict[str, Any]], tuple[list[str], dict[str, list[Listed]]]]] = {
    "annotations": list_annotations,
    "class_folders": list_class_folders,
}


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------
def probe_video(path: str) -> Probe:
    """Open `path` with decord (one thread) and decode its first frame; then scan its packets
    with PyAV (`PyAVVideo`: decord_misnumbers, and the same truncation check as the data
    path's, so a file is kept or dropped whichever `data.decoder` will read it).

    Reasons (the code before ':' is what summary.json counts): missing, unreadable, empty,
    under_1KiB (upstream skips these), undecodable (cannot open, the first frame fails
    through the training code path, or it is not H x W x 3: also truncated files, whose
    index is incomplete or lists frames the file lacks, and "<path>: no video stream"),
    no_frames.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return Probe("missing")
    except OSError as err:
        return Probe(f"unreadable: {err}")
    if size == 0:
        return Probe("empty")
    if size < MIN_BYTES:
        return Probe(f"under_1KiB: {size} bytes")
    try:
        reader = open_video(path)
        frames = len(reader)
        if frames < 1:
            return Probe("no_frames")
        first = read_frames(reader, np.zeros(1, dtype=np.int64))  # the training code path
    except Exception as err:  # decord raises RuntimeError, DECORDError, ...: all mean "bad file"
        return Probe(f"undecodable: {describe_error(err)}")
    if first.ndim != 4 or first.shape[-1] != 3:
        return Probe(
            f"undecodable: decord returns frames of shape {first.shape[1:]}, not H x W x 3"
        )
    try:
        scan = PyAVVideo(path)
        misnumbers = scan.decord_misnumbers
        scan.close()
    except BrokenVideoError as err:  # truncated (decord opens a file cut between packets)
        return Probe(f"undecodable: {describe_error(err)}")
    except Exception:  # a file only decord opens: counted, it stays in the splits
        misnumbers = None
    return Probe(None, frames, int(first.shape[1]), int(first.shape[2]), misnumbers)


def _load_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        LOG.warning("probe cache %s unreadable (%s); probing everything again", path, err)
        return {}
    return data.get("entries", {}) if data.get("version") == CACHE_VERSION else {}


def _save_cache(path: Path, entries: dict[str, list]) -> None:
    with atomic_write(path, "w") as handle:
        json.dump({"version": CACHE_VERSION, "entries": entries}, handle)


def _executor(kind: str, workers: int) -> Executor:
    if kind == "process":
        return ProcessPoolExecutor(max_workers=workers)
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers)
    raise ValueError(f"pool must be 'process' or 'thread', got {kind!r}")


def probe_videos(
    paths: list[str],
    cache_dir: str | Path,
    threads: int,
    pool: str = "process",
    probe: Callable[[str], Probe] | None = None,
) -> dict[str, Probe]:
    """Probe each path once, `threads` at a time, with a progress bar on stderr.

    Results are cached in <cache_dir>/probe.json keyed by (path, size, mtime): a re-run on
    an unchanged tree probes nothing; the cache is saved every minute while probing, so an
    interrupted run resumes. pool 'process' (default: a decoder crash cannot take the stage
    down; a file whose probe kills its process is retried alone and dropped as 'crashed')
    or 'thread' (decord releases the GIL while decoding). probe: default `probe_video`.
    """
    probe = probe or probe_video
    cache_file = Path(cache_dir) / "probe.json"
    cache = _load_cache(cache_file)
    results: dict[str, Probe] = {}
    keys: dict[str, list[int]] = {}
    for path in dict.fromkeys(paths):
        try:
            stat = os.stat(path)
        except OSError:
            results[path] = probe(path)
            continue
        keys[path] = [stat.st_size, stat.st_mtime_ns]
        hit = cache.get(path)
        if hit is not None and hit[:2] == keys[path]:
            results[path] = Probe(*hit[2:])
    todo = [path for path in keys if path not in results]
    LOG.info(
        "%d videos: %d known from the probe cache, %d to probe (%s pool of %d)",
        len(keys),
        len(keys) - len(todo),
        len(todo),
        pool,
        threads,
    )

    def remember() -> None:
        entries = {
            path: keys[path] + [p.reason, p.frames, p.height, p.width, p.decord_misnumbers]
            for path, p in results.items()
            if path in keys
        }
        _save_cache(cache_file, entries)

    if todo:
        started = time.monotonic()
        bar = tqdm(
            total=len(todo),
            desc="probing videos",
            unit="video",
            file=sys.stderr,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )
        last_save = [time.monotonic()]

        def progress(done: int) -> None:
            bar.update(done)
            if time.monotonic() - last_save[0] > CACHE_SAVE_SECONDS:
                remember()
                last_save[0] = time.monotonic()

        remaining = list(todo)
        try:
            while remaining:
                in_flight = _probe_batch(remaining, threads, pool, probe, results, progress)
                for path in in_flight:  # the pool broke: one of these crashed it
                    results[path] = _probe_alone(path, probe)
                    progress(1)
                remaining = [path for path in remaining if path not in results]
        finally:
            bar.close()
            remember()  # keep what was probed, even on error
        LOG.info("probed %d videos in %.1f s", len(todo), time.monotonic() - started)
    else:
        remember()
    return {path: results[path] for path in paths}


def _probe_batch(
    paths: list[str],
    workers: int,
    pool: str,
    probe: Callable[[str], Probe],
    results: dict[str, Probe],
    progress: Callable[[int], None],
) -> list[str]:
    """Probe `paths` in a pool, at most 4 per worker in flight, calling progress(n) as n
    finish. If a worker process dies (BrokenProcessPool), stop and return the paths that
    were in flight (the culprit is among them); else return []."""
    pending: dict[Future, str] = {}

    def drain(until: str) -> None:
        done, _ = wait(list(pending), return_when=until)
        for future in done:
            results[pending[future]] = future.result()
            del pending[future]
        progress(len(done))

    with _executor(pool, workers) as executor:
        try:
            for path in paths:
                pending[executor.submit(probe, path)] = path
                if len(pending) >= 4 * workers:
                    drain(FIRST_COMPLETED)
            drain(ALL_COMPLETED)
        except BrokenProcessPool:
            executor.shutdown(wait=False, cancel_futures=True)
            in_flight = [path for path in pending.values() if path not in results]
            LOG.warning(
                "a probe process died; probing the %d videos in flight one by one", len(in_flight)
            )
            return in_flight
    return []


def _probe_alone(path: str, probe: Callable[[str], Probe]) -> Probe:
    """Probe one file in its own process; a process death means the decoder crashes on it."""
    with ProcessPoolExecutor(max_workers=1) as executor:
        try:
            return executor.submit(probe, path).result()
        except BrokenProcessPool:
            LOG.warning("%s: the decoder crashed the probe process", path)
            return Probe("crashed: the decoder process died on this file")


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
def _split_summary(entries: list[Listed], probes: dict[str, Probe], kept: list[Listed]) -> dict:
    dropped = Counter(
        (e.reason or probes[e.path].reason or "").split(":")[0] for e in entries if e not in kept
    )
    frames = [probes[e.path].frames for e in kept]
    sizes = Counter(f"{probes[e.path].height}x{probes[e.path].width}" for e in kept)
    return {
        "listed": len(entries),
        "kept": len(kept),
        "dropped": dict(sorted(dropped.items())),
        "dropped_total": sum(dropped.values()),
        "short_kept": sum(f <= TRAIN_SPAN for f in frames),
        "frames": {"min": min(frames), "median": statistics.median(frames), "max": max(frames)},
        "sizes_hxw": dict(sizes.most_common(5)),
        # README "Video decoders": kept videos decord misnumbers after a seek / PyAV cannot open
        "decord_misnumbers": sum(probes[e.path].decord_misnumbers is True for e in kept),
        "pyav_cannot_open": sum(probes[e.path].decord_misnumbers is None for e in kept),
    }


def make_splits(
    kinetics: dict[str, Any],
    cache_dir: str | Path,
    threads: int,
    out_dir: str | Path,
    pool: str = "process",
) -> dict[str, Any]:
    """The splits stage: list, probe, check, then write all outputs. Returns the summary."""
    layout = _require(kinetics, "layout")
    if layout not in LAYOUTS:
        raise SplitError(f"kinetics.layout {layout!r} is not one of {sorted(LAYOUTS)}")
    root = Path(_require(kinetics, "root"))
    if not root.is_dir():
        raise SplitError(f"kinetics.root {root} does not exist (set it to your Kinetics-400 copy)")
    classes, listed = LAYOUTS[layout](kinetics)
    expected = int(_require(kinetics, "num_classes"))
    if len(classes) != expected:
        raise SplitError(
            f"kinetics.num_classes is {expected} but the train split of {root} "
            f"({layout}) has {len(classes)} classes: {classes[:5]}"
            f"{' ...' if len(classes) > 5 else ''}"
        )
    index = {name: number for number, name in enumerate(classes)}

    to_probe = [e.path for split in SPLITS for e in listed[split] if e.reason is None]
    probes = probe_videos(to_probe, cache_dir, threads, pool)

    rows: dict[str, list[tuple[str, int]]] = {}
    dropped_rows: list[tuple[str, str, str]] = []
    summary: dict[str, Any] = {
        "layout": layout,
        "root": str(root.resolve()),
        "num_classes": len(classes),
        "splits": {},
    }
    for split in SPLITS:
        kept = [e for e in listed[split] if e.reason is None and probes[e.path].reason is None]
        if not kept:
            raise SplitError(
                f"{split}: none of the {len(listed[split])} listed videos decode "
                f"(see the probe log)"
            )
        kept_set = set(kept)
        for e in listed[split]:
            if e not in kept_set:
                dropped_rows.append((split, e.path, e.reason or probes[e.path].reason or ""))
        rows[split] = [(e.path, index[e.label]) for e in kept]
        summary["splits"][split] = _split_summary(listed[split], probes, kept_set)
    summary["splits"]["test"] = dict(summary["splits"]["val"], same_as="val")
    empty = sorted(
        set(classes)
        - {e.label for e in listed["train"] if e.reason is None and probes[e.path].reason is None}
    )
    summary["classes_without_train_videos"] = empty
    if empty:
        LOG.warning("%d classes have no usable train video: %s", len(empty), empty[:10])
    misnumbered = sum(summary["splits"][split]["decord_misnumbers"] for split in SPLITS)
    if misnumbered:
        LOG.warning(
            "%d train/val videos have open GOPs (or B-frames before their keyframes): decord "
            "returns a neighbouring frame after a seek in them; data.decoder: pyav reads them "
            "right (README, Video decoders)",
            misnumbered,
        )
    for split in SPLITS:
        s = summary["splits"][split]
        LOG.info(
            "%s: %d listed, %d kept, %d dropped %s, %d short (<= %d frames) kept",
            split,
            s["listed"],
            s["kept"],
            s["dropped_total"],
            s["dropped"],
            s["short_kept"],
            TRAIN_SPAN,
        )

    out = Path(out_dir)
    write_split_csv(out / "train.csv", rows["train"])
    write_split_csv(out / "val.csv", rows["val"])
    write_split_csv(out / "test.csv", rows["val"])
    _write_csv(out / "labels.csv", ("index", "name"), enumerate(classes))
    _write_csv(out / "dropped.csv", ("split", "path", "reason"), dropped_rows)
    with atomic_write(out / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    return summary


def _write_csv(path: Path, header: tuple[str, ...], rows: Iterable[tuple]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_write(path, "wb") as handle:
        handle.write(text.getvalue().encode("utf-8", "surrogateescape"))
