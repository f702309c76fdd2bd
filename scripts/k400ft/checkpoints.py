"""The checkpoint stage: fetch one pretrained checkpoint, verify it, publish it atomically.

A checkpoint comes from exactly one source (config `checkpoints.<name>`):
- `gdrive_id`: downloaded with gdown by Google Drive file id. gdown does the Drive work:
  the redirect to drive.usercontent.google.com, the "can't scan this file for viruses"
  confirm form of large files, retries with HTTP range resume inside one run (`retries`),
  resume of a partial `.part` file left by an earlier run (`resume=True`), the sha256
  computed while the bytes arrive (`hasher`) and a progress callback (`progress`).
- `path`: a file already on disk (the demo's checkpoints, or one placed by hand when this
  machine cannot reach Drive). It is hard-linked (or copied) beside the output.

Either way the bytes land in a hidden staging file beside the output and are verified
before `os.replace` puts them at the output path, so a reader never sees a half or
unverified file there:
1. sha256: against the pinned `sha256` of the config entry; where none is pinned, against
   the hash recorded by the first successful run in the lock file (trust on first use).
2. layout: the file must load as a checkpoint (`layouts.read_state_dict`, weights_only)
   whose encoder keys match the entry's `format` (`layouts.check_layout`).

Network settings follow `requests`: with the defaults (`proxy=None`, `verify=True`) the
standard variables HTTPS_PROXY / NO_PROXY and REQUESTS_CA_BUNDLE apply; `DriveOptions`
passes an explicit proxy or CA bundle to gdown instead (tests/fakedrive.py, a local fake
Drive). Note that requests lets a set HTTPS_PROXY override an explicit `proxy`.
Drive's cookies file (gdown's default ~/.cache/gdown/cookies.txt) is used when present,
which lets a signed-in session get past the "too many users" quota page.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gdown
import requests

from k400ft import layouts
from k400ft.io import atomic_write, plain_file_mode
from k400ft.provenance import file_sha256

log = logging.getLogger(__name__)

FORMATS = tuple(layouts.LAYOUT_FORMATS)  # catmae_pretrain, videomae_pretrain, videomae_finetuned
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PROGRESS_STEP_BYTES = 64 * 2**20  # log every 64 MiB when Drive announces no size


class CheckpointError(Exception):
    """A checkpoint could not be fetched or verified; the message says what to do."""


@dataclass(frozen=True)
class CheckpointSpec:
    """One `checkpoints.<name>` entry of the config (schemas/config.schema.yaml)."""

    name: str
    format: str
    gdrive_id: str | None = None
    path: Path | None = None
    sha256: str | None = None

    @classmethod
    def from_dict(cls, name: str, spec: dict) -> CheckpointSpec:
        """Validate a config entry: exactly one of gdrive_id / path, a known format."""
        where = f"checkpoints.{name}"
        unknown = set(spec) - {"gdrive_id", "path", "sha256", "format"}
        if unknown:
            raise CheckpointError(f"{where}: unknown keys {sorted(unknown)}")
        if ("gdrive_id" in spec) == ("path" in spec):
            raise CheckpointError(f"{where}: give exactly one of gdrive_id or path")
        if spec.get("format") not in FORMATS:
            raise CheckpointError(
                f"{where}: format must be one of {list(FORMATS)}, got {spec.get('format')!r}"
            )
        sha256 = spec.get("sha256")
        if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
            raise CheckpointError(f"{where}: sha256 must be 64 lowercase hex digits or null")
        return cls(
            name=name,
            format=spec["format"],
            gdrive_id=spec.get("gdrive_id"),
            path=Path(spec["path"]) if "path" in spec else None,
            sha256=sha256,
        )

    @property
    def source(self) -> str:
        """Where the bytes come from, as error messages and the lock file name it."""
        return f"gdrive:{self.gdrive_id}" if self.gdrive_id else str(self.path)


@dataclass(frozen=True)
class DriveOptions:
    """How gdown reaches Drive. None / True defer to requests' environment variables."""

    proxy: str | None = None  # e.g. "http://proxy:3128"; None: HTTPS_PROXY if set
    verify: bool | str = True  # CA bundle path; True: REQUESTS_CA_BUNDLE or certifi
    retries: int = 3  # extra attempts per run, each resuming the transfer
    timeout: float | tuple[float, float] = (30.0, 300.0)  # (connect, between bytes) s
    cookies_file: str | None = None  # None: gdown's ~/.cache/gdown/cookies.txt


def drive_url(file_id: str) -> str:
    """The Drive download URL gdown starts from for a file id."""
    return f"https://drive.google.com/uc?id={file_id}"


def read_lock(lock: str | os.PathLike) -> str | None:
    """The sha256 recorded by the first successful run, or None if none is recorded yet."""
    lock = Path(lock)
    try:
        record = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"lock file {lock} is unreadable ({err}); delete it to record the hash again"
        ) from None
    sha256 = record.get("sha256") if isinstance(record, dict) else None
    if not (isinstance(sha256, str) and _SHA256.match(sha256)):
        raise CheckpointError(
            f"lock file {lock} holds no sha256 (64 hex digits); delete it to record the hash again"
        )
    return sha256


def write_lock(lock: str | os.PathLike, spec: CheckpointSpec, sha256: str, size: int) -> None:
    """Record a verified file's hash (atomically) for later runs to check against."""
    record = {
        "name": spec.name,
        "sha256": sha256,
        "bytes": size,
        "source": spec.source,
        "format": spec.format,
    }
    with atomic_write(lock, "w") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")


def verify_layout(path: str | os.PathLike, spec: CheckpointSpec, output: Path) -> None:
    """The file at `path` loads as a checkpoint (weights_only) whose keys match `spec.format`."""
    what = f"checkpoint {spec.name}: the file from {spec.source} (for {output})"
    try:
        state_dict = layouts.read_state_dict(path)
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{what} is not a loadable checkpoint: {err}") from err
    try:
        layouts.check_layout(state_dict, spec.format)
    except ValueError as err:
        raise CheckpointError(
            f"{what} does not have the {spec.format} key layout that `format:` in the "
            f"config asks for: {err}"
        ) from err


def fetch_checkpoint(
    spec: CheckpointSpec,
    output: str | os.PathLike,
    lock: str | os.PathLike,
    drive: DriveOptions | None = None,
) -> str:
    """Fetch `spec` to `output` verified (sha256 and key layout); return its sha256.

    Any existing `output` is removed first, so every failure leaves nothing there. The
    lock file records the hash of the verified file; where the config pins no sha256 the
    recorded one is what later runs must match (trust on first use).
    """
    output = Path(output)
    if spec.path is not None and spec.path.resolve() == output.resolve():
        raise CheckpointError(
            f"checkpoint {spec.name}: `path: {spec.path}` is the output itself; place the file "
            "elsewhere (e.g. a manual/ folder) and point `path:` there"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    staging = output.with_name(f".{output.name}.download")
    staging.unlink(missing_ok=True)  # a stale, never verified copy
    recorded = read_lock(lock)
    expected = spec.sha256 or recorded
    if spec.sha256:
        pinned_by, accept = "pinned in the config", "update `sha256:` in the config"
    else:
        pinned_by, accept = f"recorded on first use in {lock}", f"delete {lock}"

    with _removed_on_error(staging):
        if spec.gdrive_id:
            sha256 = _download(spec, staging, output, expected, drive or DriveOptions())
            os.chmod(staging, plain_file_mode())  # gdown's temp file is 0600: honour the umask
        else:
            _stage_local(spec, staging)
            sha256 = file_sha256(staging)
        if expected and sha256 != expected:
            raise CheckpointError(
                f"checkpoint {spec.name}: sha256 mismatch for the file from {spec.source}:\n"
                f"  expected {expected} ({pinned_by})\n"
                f"  got      {sha256}\n"
                f"Nothing was written to {output}. If the file was replaced on purpose, "
                f"{accept}."
            )
        verify_layout(staging, spec, output)
        if recorded != sha256:
            write_lock(lock, spec, sha256, staging.stat().st_size)
            log.info("recorded sha256 %s of %s in %s", sha256, spec.name, lock)
        os.replace(staging, output)
    log.info(
        "%s: %s verified (sha256 %s, %s layout) -> %s",
        spec.name,
        spec.source,
        sha256,
        spec.format,
        output,
    )
    return sha256


@contextlib.contextmanager
def _removed_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _stage_local(spec: CheckpointSpec, staging: Path) -> None:
    """Hard-link the source file beside the output (a copy across file systems)."""
    assert spec.path is not None
    if not spec.path.is_file():
        raise CheckpointError(
            f"checkpoint {spec.name}: {spec.path} (`path:` in the config) is not a file"
        )
    try:
        os.link(spec.path, staging)
    except OSError:
        shutil.copyfile(spec.path, staging)


class _ProgressLog:
    """gdown progress callback: one log line per 10 % (or per 64 MiB if size unknown)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.next_mark = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            if done / total >= self.next_mark:
                log.info("%s: %3.0f%% of %.1f MiB", self.label, 100 * done / total, total / 2**20)
                self.next_mark = int(done / total * 10 + 1) / 10
        elif done >= self.next_mark:
            log.info("%s: %.1f MiB", self.label, done / 2**20)
            self.next_mark = done + _PROGRESS_STEP_BYTES


def _download(
    spec: CheckpointSpec, staging: Path, output: Path, expected: str | None, drive: DriveOptions
) -> str:
    """gdown the Drive file to `staging`; return the sha256 gdown computed on the way."""
    assert spec.gdrive_id is not None
    hasher = hashlib.sha256()
    log.info("%s: downloading %s", spec.name, drive_url(spec.gdrive_id))
    try:
        gdown.download(
            id=spec.gdrive_id,
            output=str(staging),
            quiet=True,
            proxy=drive.proxy,
            verify=drive.verify,
            resume=True,
            retries=drive.retries,
            timeout=drive.timeout,
            cookies_file=drive.cookies_file,
            progress=_ProgressLog(spec.name),
            hasher=hasher,
        )
    except (gdown.exceptions.DownloadError, requests.exceptions.RequestException) as err:
        raise CheckpointError(drive_failure_message(err, spec, output, expected)) from err
    return hasher.hexdigest()


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def drive_failure_message(
    err: BaseException, spec: CheckpointSpec, output: Path, expected: str | None
) -> str:
    """Explain a gdown failure (quota page, permission/404 page, network, truncation)."""
    assert spec.gdrive_id is not None
    url = drive_url(spec.gdrive_id)
    manual_path = output.parent / "manual" / output.name
    manual = (
        f"To use a copy fetched some other way (a browser, or gdown on a machine with "
        f"internet), place the file at {manual_path} and replace `gdrive_id: "
        f"{spec.gdrive_id}` by `path: {manual_path}` under checkpoints.{spec.name} in the "
        f"config; it is verified the same way (sha256 "
        f"{expected or 'recorded on first use'}, {spec.format} layout)."
    )
    text = str(err)
    head = f"checkpoint {spec.name}: cannot download {url}"
    chain = list(_chain(err))
    if isinstance(err, gdown.exceptions.FileURLRetrievalError):
        if "too many users" in text.lower():
            return (
                f"{head}: Google Drive's download quota for this file is exhausted "
                '("Too many users have viewed or downloaded this file recently"). '
                "Retry later (Drive says up to 24 hours), or download as a signed-in "
                f"user: `gdown --cookies-from-browser firefox -O {manual_path} "
                f"{spec.gdrive_id}` (this also saves the session to gdown's cookies file, "
                f"which later runs of this step use).\n{manual}"
            )
        return (
            f"{head}: Drive did not offer the file for download (no such file, or it "
            "is not shared as 'Anyone with the link'). Check the id in the config and "
            f"open {url} in a browser.\n{manual}"
        )
    if any(isinstance(e, requests.exceptions.SSLError) for e in chain):
        return (
            f"{head}: TLS verification failed ({err}). Behind a proxy that re-signs "
            f"HTTPS, point REQUESTS_CA_BUNDLE at its CA certificate.\n{manual}"
        )
    if isinstance(err, gdown.exceptions.DownloadError) and "incomplete" in text:
        # gdown's own advice ("--continue on the command line") is for its command line
        kept = sorted(output.parent.glob(f".{output.name}.download*.part"))
        where = f" are kept in {kept[0]}" if kept else ""
        return (
            f"{head}: the transfer kept ending early and the retries are spent "
            f"({text.splitlines()[0].rstrip('.')}).\nThe bytes received{where}: run the same "
            f"snakemake command again and the download resumes from them.\n{manual}"
        )
    if any(isinstance(e, (requests.ConnectionError, requests.Timeout)) for e in chain):
        return (
            f"{head}: Google Drive is unreachable from this machine ({err}). Compute "
            "nodes often have no internet: this rule runs on the submit host "
            "(localrules); check HTTPS_PROXY if a proxy is required.\n" + manual
        )
    return f"{head}: {err}\n{manual}"
