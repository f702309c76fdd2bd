"""Extract the fetched Kinetics-400 parts into the split folders, safely, and count the result
against the annotation CSVs (config `kinetics.source: archive`; rules/extract.smk).

- `extract_part` (rule `kinetics_extract`, one job per part): every member header is first
  read through tarfile's `data` filter (no absolute path, nothing that lands outside the
  folder, no link pointing out, no device or FIFO): a part with one hostile member is refused
  whole, before anything is written (`ExtractError`, naming the part and the member). Then
  each regular file is written atomically (temp file, fsync, rename; the member's mtime kept)
  and its size on disk compared with the member's; the part's manifest (files and bytes) is
  written last, and it is what counts the part as extracted. The replacement archive's files
  go into train by their file name (its members sit in a folder of their own), over the
  corrupted ones, once every train part is in. With `kinetics.keep_archives: false` the rule
  declares the part temporary: Snakemake deletes it once this job, that verified its files,
  has succeeded.
- `count_split` (rule `kinetics_verify`, one job per split): the files in the split's folder
  against its annotation CSV: present, missing (listed, no file), unexpected (a file no row
  lists), and the replacements applied; the present videos are what the resize stage reads.
An output that cannot be written (a full or read-only disk) raises encode.OutputError naming
the path; nothing is counted done then (no manifest).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from k400ft.io import atomic_write, check_writable, writing

LOG = logging.getLogger("k400ft.extract")

CHUNK = 1 << 20


class ExtractError(ValueError):
    """A part or split that cannot be extracted or counted as asked; the message names it."""


def member_target(name: str, flatten: bool) -> str:
    """Where a member goes, relative to the split folder: its path in the tar, or (flatten,
    the replacement archive) its file name alone."""
    return Path(name).name if flatten else name


def safe_members(path: str | os.PathLike, dest: str | os.PathLike) -> list[tarfile.TarInfo]:
    """Every member of the tar.gz at `path`, each through tarfile's `data` filter for a
    destination `dest`; ExtractError naming the part and the first member it refuses."""
    members = []
    with tarfile.open(path, "r|gz") as tar:
        for member in tar:
            try:
                members.append(tarfile.data_filter(member, os.fspath(dest)))
            except tarfile.FilterError as err:
                raise ExtractError(
                    f"{path}: member {member.name!r} refused ({type(err).__name__}: {err}); "
                    "nothing of this part was extracted"
                ) from None
    return members


def extract_part(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    manifest: str | os.PathLike,
    flatten: bool = False,
) -> dict[str, Any]:
    """Extract the regular files of `archive` (a tar.gz) into `dest` (see the module
    docstring), check each one's size on disk, then write `manifest` (JSON: the part, the
    folder, [relative path, bytes] per file, the total). Returns the manifest."""
    started = time.monotonic()
    dest = Path(dest)
    with writing(dest):
        check_writable(dest)
    safe = safe_members(archive, dest)  # the same members, in the same order, filtered
    written: dict[str, int] = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member, clean in zip(tar, safe, strict=True):
            if not clean.isfile():
                continue  # a folder (made with its files), or a link inside the folder
            target = dest / member_target(clean.name, flatten)
            source = tar.extractfile(member)
            with writing(target), atomic_write(target, "wb") as out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
            with writing(target):
                os.utime(target, (clean.mtime, clean.mtime))
            relative = os.fspath(target.relative_to(dest))
            if os.path.getsize(target) != clean.size:
                raise ExtractError(
                    f"{archive}: {relative} has {os.path.getsize(target)} bytes on disk, "
                    f"the part says {clean.size}"
                )
            written[relative] = clean.size
    record = {
        "part": os.path.abspath(archive),
        "folder": os.path.abspath(dest),
        "files": [[name, count] for name, count in sorted(written.items())],
        "bytes": sum(written.values()),
        "seconds": round(time.monotonic() - started, 3),
    }
    with writing(manifest), atomic_write(manifest, "w") as handle:
        json.dump(record, handle, indent=1)
        handle.write("\n")
    LOG.info(
        "%s: %d files, %.1f MB into %s in %.1f s",
        Path(archive).name,
        len(written),
        record["bytes"] / 1e6,
        dest,
        record["seconds"],
    )
    return record


def count_split(
    split: str,
    annotations: str | os.PathLike,
    folder: str | os.PathLike,
    extensions: Sequence[str],
    manifests: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    replacement: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The files of `folder` against the rows of `annotations`, written to `output` (JSON):
    listed, present, missing and unexpected (counts and names), the files and bytes the
    parts' `manifests` hold, the replacements applied (`replacement`'s manifest), and
    `videos`: the present listed videos, relative to `folder` (what the resize reads)."""
    from k400ft.splits import SplitError, index_videos, read_annotations  # torch: not for parts

    try:
        rows = read_annotations(Path(annotations), f"kinetics.annotations.{split}")
    except SplitError as err:
        raise ExtractError(str(err)) from None
    extensions = [e.lower().lstrip(".") for e in extensions]
    index = index_videos(Path(folder), extensions)
    listed = list(dict.fromkeys(stem for _, _, stem in rows))
    present = [stem for stem in listed if stem in index]
    unexpected = sorted(set(index) - set(listed))
    parts = [json.loads(Path(path).read_text()) for path in manifests]
    replaced = json.loads(Path(replacement).read_text())["files"] if replacement else []
    summary = {
        "split": split,
        "folder": os.path.abspath(folder),
        "listed": len(listed),
        "present": len(present),
        "missing": len(listed) - len(present),
        "unexpected": len(unexpected),
        "parts": len(parts),
        "part_files": sum(len(p["files"]) for p in parts),
        "part_bytes": sum(p["bytes"] for p in parts),
        "replaced": len(replaced),
        "missing_videos": [stem for stem in listed if stem not in index],
        "unexpected_videos": unexpected,
        "videos": [os.path.relpath(index[stem][0], folder) for stem in present],
    }
    with writing(output), atomic_write(output, "w") as handle:
        json.dump(summary, handle, indent=1)
        handle.write("\n")
    LOG.info(
        "%s: %d listed, %d present, %d missing, %d unexpected files; %d parts, %d replaced",
        split,
        summary["listed"],
        summary["present"],
        summary["missing"],
        summary["unexpected"],
        summary["parts"],
        summary["replaced"],
    )
    return summary
