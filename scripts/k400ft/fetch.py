"""Fetch the public Kinetics-400 archive (config `kinetics.source: archive`): its list files,
annotation CSVs and parts, each resumable, retried and checked end to end.

The archive, as its own download scripts lay it out (github.com/cvdfoundation/kinetics-dataset):
per split a list file of part URLs (`train/k400_train_path.txt`: 242 `part_<i>.tar.gz`; val 20;
test 39), the annotation CSVs (`annotations/train.csv`, `val.csv`) and a replacement archive
for about 1,400 corrupted train videos. A part's URL is its list line's file name next to the
list file (`part_url`), so the base URL decides where everything comes from: a mirror, or a
`file://` copy (served by `FileAdapter`), works the same.

Why not Snakemake's http storage plugin (snakemake-storage-plugin-http 0.3): it writes the
response straight to the output path (a kill leaves a half file under the final name), has no
Range resume and no retries of its own, does not compare the size with the server's, never
reads the file, and takes http(s) URLs only. `fetch` does each of these, on `requests`:
- the part is written under a temporary name beside the output (`.<name>.part`) and renamed
  only when complete and checked, so no half part is ever read;
- an interrupted transfer (a dropped connection, a kill -9 of the job) resumes from the bytes
  on disk with a Range request, guarded by If-Range on the server's ETag / Last-Modified; a
  server that ignores Range (answers 200) or whose file changed is read again from zero;
- transient errors (connection, timeout, 5xx, 429) are retried with exponential backoff, the
  count reset whenever bytes arrive; 401/403/404/410 fail at once (`FetchError`, with the URL);
- the size is compared with the server's (Content-Length / Content-Range);
- a part is read to its end as a gzip and tar stream (`read_tar_gz`: every member's bytes, the
  gzip CRC, the tar's end-of-archive blocks) before it counts; a corrupt one is fetched again
  from zero once, and a second corrupt copy fails the job naming the URL;
- memory stays bounded: 1 MiB chunks, never a whole part in memory.
A part that cannot be had leaves a failure record (`failure_record`) that `missing_parts`
turns into the summary of what is missing (the workflow's `onerror`).
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import json
import logging
import os
import re
import sys
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
from tqdm import tqdm

from k400ft.io import atomic_write, writing

LOG = logging.getLogger("k400ft.fetch")

CHUNK = 1 << 20
PERMANENT = frozenset({401, 403, 404, 410})  # the server says the file cannot be had
TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRIES = 6  # transient errors in a row, without a byte arriving, before the job fails
BACKOFF_S = 2.0  # the first wait; doubled each retry, at most MAX_WAIT_S
MAX_WAIT_S = 120.0
TIMEOUT_S = (30.0, 120.0)  # connect, read (between bytes)


class FetchError(RuntimeError):
    """A file of the archive cannot be had (missing, forbidden, corrupt twice, retries spent);
    the message starts with its URL."""


class SpaceError(RuntimeError):
    """The file system of kinetics.root cannot hold the data preparation's peak: the fetch
    refuses before the first byte of a part (k400ft.dataplan)."""


class ArchiveError(ValueError):
    """The archive's layout disagrees with the config (a list file's length, a bad line)."""


# --------------------------------------------------------------------------------------------
# URLs and list files
# --------------------------------------------------------------------------------------------
def resolve_url(url: str) -> str:
    """`url`, with a relative `file:` URL (`file:results/demo/archive`, relative to the
    working directory) made absolute (`file:///...`); other URLs as they are."""
    if url.startswith("file:") and not url.startswith("file:/"):
        return Path(unquote(url.removeprefix("file:"))).resolve().as_uri()
    return url


def join_url(base_url: str, relative: str) -> str:
    """`relative` (a config path such as `train/k400_train_path.txt`) under `base_url`."""
    return urljoin(resolve_url(base_url).rstrip("/") + "/", relative)


def part_url(list_url: str, line: str) -> str:
    """Where a list file's line is fetched from: its file name next to the list file.

    The lists hold absolute URLs of the original host; taking only the name keeps a mirror or
    a file:// copy (config kinetics.archive.base_url) self-contained."""
    name = Path(unquote(urlsplit(line.strip()).path)).name
    if not name or not name.endswith((".tar.gz", ".tgz", ".tar")):
        raise ArchiveError(f"{line.strip()!r} does not name a .tar.gz part")
    return urljoin(list_url, name)


def read_list(path: str | os.PathLike, list_url: str, parts: int, key: str) -> list[str]:
    """The part URLs of a list file (blank lines and # comments skipped), checked against the
    config's part count `parts` (its key `key`): ArchiveError naming both when they differ."""
    lines = [
        line.strip()
        for line in Path(path).read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(lines) != parts:
        raise ArchiveError(
            f"{path}: the list names {len(lines)} parts, config {key} says {parts} "
            "(set it to the list's count)"
        )
    urls = []
    for number, line in enumerate(lines, 1):
        try:
            urls.append(part_url(list_url, line))
        except ArchiveError as err:
            raise ArchiveError(f"{path}:{number}: {err}") from None
    return urls


# --------------------------------------------------------------------------------------------
# Transport: requests, with file:// served like a static HTTP server
# --------------------------------------------------------------------------------------------
class FileAdapter(requests.adapters.BaseAdapter):
    """file:// URLs for requests, answering as a static HTTP server does: HEAD and GET, 404
    for a missing file, 403 for an unreadable one, `Range: bytes=N-` with If-Range on an ETag
    of size and mtime (206, or 416 past the end). The body is the open file, read in chunks."""

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        response = requests.Response()
        response.url, response.request = request.url, request
        path = unquote(urlsplit(request.url).path)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - the response owns it (raw)
            stat = os.fstat(handle.fileno())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            response.status_code, response.raw = 404, _Empty()
            return response
        except PermissionError:
            response.status_code, response.raw = 403, _Empty()
            return response
        size, etag = stat.st_size, f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
        }
        start, status = 0, 200
        wanted = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if wanted and request.headers.get("If-Range", etag) == etag:
            start, status = int(wanted[1]), 206
        if start >= size and status == 206:
            handle.close()
            headers["Content-Range"] = f"bytes */{size}"
            response.status_code, response.raw = 416, _Empty()
        else:
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
            headers["Content-Length"] = str(size - start)
            handle.seek(start)
            response.status_code = status
            response.raw = handle
            if request.method == "HEAD":
                handle.close()
                response.raw = _Empty()
        response.headers = requests.structures.CaseInsensitiveDict(headers)
        return response

    def close(self) -> None:
        pass


class _Empty:
    """The body of a response without one."""

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


def session() -> requests.Session:
    """A requests session that also speaks file:// (`FileAdapter`)."""
    http = requests.Session()
    http.mount("file://", FileAdapter())
    return http


def remote_size(url: str, http: requests.Session | None = None) -> int:
    """The size in bytes the server gives for `url` (one HEAD request, redirects followed),
    or FetchError naming the URL."""
    http = http or session()
    try:
        response = http.head(url, allow_redirects=True, timeout=TIMEOUT_S)
    except requests.RequestException as err:
        raise FetchError(f"{url}: {err}") from None
    with response:
        if response.status_code != 200:
            raise FetchError(f"{url}: HTTP {response.status_code} {response.reason or ''}".strip())
        length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        raise FetchError(f"{url}: the server gives no size (no Content-Length)")
    return int(length)


# --------------------------------------------------------------------------------------------
# Checking a part end to end
# --------------------------------------------------------------------------------------------
class _Counting:
    """A file object that counts the bytes read through it."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.count = raw, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


def read_tar_gz(path: str | os.PathLike) -> dict[str, int]:
    """Read `path` to its end as a gzip stream holding a tar, in chunks: every member's
    bytes, the gzip CRC and length, and the tar's end-of-archive blocks (a tar cut between two
    members reads as complete to tarfile, not here). Returns the member count and bytes;
    ArchiveError saying what is wrong otherwise."""
    members = size = 0
    try:
        with gzip.open(path, "rb") as raw:
            stream = _Counting(raw)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    members += 1
                    if member.isfile():
                        data = tar.extractfile(member)
                        while chunk := data.read(CHUNK):
                            size += len(chunk)
                end = tar.offset
            while stream.read(CHUNK):
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ArchiveError(f"not a complete tar.gz: {err}") from None
    except OSError as err:
        if err.errno is None:  # gzip's CRC and length checks raise a bare OSError
            raise ArchiveError(f"not a complete tar.gz: {err}") from None
        raise
    if members == 0:
        raise ArchiveError("not a complete tar.gz: no member")
    if stream.count < end + 2 * tarfile.BLOCKSIZE:
        raise ArchiveError(
            f"not a complete tar.gz: the tar ends after {members} members without its "
            "end-of-archive blocks (cut short)"
        )
    return {"members": members, "bytes": size}


# --------------------------------------------------------------------------------------------
# Fetching one file
# --------------------------------------------------------------------------------------------
def temp_path(dest: str | os.PathLike) -> Path:
    """Where `dest` is written until it is complete and checked (kept across attempts)."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}.part"


def _validator_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.part.json"


def _sleep_for(attempt: int, backoff: float) -> float:
    return min(backoff * 2 ** (attempt - 1), MAX_WAIT_S)


class _Transient(Exception):
    """A failure worth another try (the server may answer next time)."""


def _download(url: str, dest: Path, http: requests.Session, bar: tqdm, restarted: Callable) -> int:
    """One attempt: the rest of `url` appended to the temp file (resumed with Range when some
    bytes are there), or from zero. Returns the server's total size. Raises FetchError
    (permanent), _Transient (try again) or OutputError (the disk, naming `dest`)."""
    temp, meta = temp_path(dest), _validator_path(dest)
    have = temp.stat().st_size if temp.exists() else 0
    validator = json.loads(meta.read_text()) if have and meta.exists() else {}
    headers = {"Accept-Encoding": "identity"}
    if have and validator.get("url") == url and validator.get("tag"):
        headers.update({"Range": f"bytes={have}-", "If-Range": validator["tag"]})
    else:
        have = 0
    try:
        response = http.get(url, headers=headers, stream=True, timeout=TIMEOUT_S)
    except requests.RequestException as err:
        raise _Transient(str(err)) from None
    with response:
        status = response.status_code
        if status in PERMANENT:
            raise FetchError(f"{url}: HTTP {status} {response.reason or ''}".strip())
        if status in TRANSIENT or status >= 500:
            raise _Transient(f"HTTP {status}")
        if status == 416:  # asked past the end: the file is shorter than the bytes we have
            with writing(dest):
                temp.unlink()
            raise _Transient("the server's file is shorter than the bytes fetched: from zero")
        if status not in (200, 206):
            raise FetchError(f"{url}: unexpected HTTP {status} {response.reason or ''}".strip())
        length = int(response.headers.get("Content-Length", -1))
        if status == 206:
            asked = re.fullmatch(
                r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", "")
            )
            if not asked or int(asked[1]) != have:
                raise _Transient("the server answered another range than the one asked")
            total = int(asked[2])
        else:  # the whole file: the server ignored Range, or the file changed since
            if have:
                LOG.info("%s: the server sends the whole file: from zero", url)
                restarted()
            have, total = 0, length
            tag = response.headers.get("ETag") or response.headers.get("Last-Modified")
            with writing(dest), atomic_write(meta, "w") as handle:
                json.dump({"url": url, "tag": tag, "size": total}, handle)
        bar.reset(total=total if total >= 0 else None)
        bar.update(have)
        # a body cut short then just ends, with every byte that came kept (urllib3 would
        # raise and drop the last read): the size check below resumes from the right byte
        response.raw.enforce_content_length = False
        with writing(dest), open(temp, "ab" if have else "wb") as out:
            for chunk in _chunks(response):
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    got = temp.stat().st_size
    if total >= 0 and got < total:
        raise _Transient(f"{got} of {total} bytes arrived")
    if total >= 0 and got > total:
        with writing(dest):
            temp.unlink()
        raise _Transient(f"{got} bytes arrived where the server said {total}: from zero")
    return got


def _chunks(response: requests.Response):
    """The body in CHUNK pieces; a broken connection is _Transient (requests' errors are
    OSErrors too: they must not read as the disk's)."""
    pieces = response.iter_content(CHUNK)
    while True:
        try:
            chunk = next(pieces)
        except StopIteration:
            return
        except requests.RequestException as err:
            raise _Transient(f"the connection broke: {err}") from None
        yield chunk


def fetch(
    url: str,
    dest: str | os.PathLike,
    check: Callable[[Path], Any] | None = None,
    http: requests.Session | None = None,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    desc: str | None = None,
) -> dict[str, Any]:
    """Fetch `url` to `dest`: resumable, retried, size-checked, then `check(temp file)` (e.g.
    `read_tar_gz`; it raises ArchiveError when the bytes are bad) before the rename onto
    `dest`. Returns a record (url, bytes, seconds, attempts, restarts, resumed_from, check).

    FetchError names the URL when it cannot be had; OutputError names the path when the disk
    refuses (full, read-only): the temp file is kept, so a re-run resumes."""
    dest = Path(dest)
    http = http or session()
    temp = temp_path(dest)
    with writing(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    record: dict[str, Any] = {"url": url, "attempts": 0, "restarts": 0, "corrupt": 0}
    record["resumed_from"] = temp.stat().st_size if temp.exists() else 0
    bar = tqdm(
        desc=desc or dest.name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )

    def restarted() -> None:
        record["restarts"] += 1

    failures = 0
    try:
        while True:
            record["attempts"] += 1
            before = temp.stat().st_size if temp.exists() else 0
            try:
                size = _download(url, dest, http, bar, restarted)
            except _Transient as err:
                after = temp.stat().st_size if temp.exists() else 0
                failures = 1 if after > before else failures + 1
                if failures > retries:
                    raise FetchError(f"{url}: {err} ({retries} retries spent)") from None
                wait_s = _sleep_for(failures, backoff)
                LOG.warning("%s: %s; again in %.0f s (%d/%d)", url, err, wait_s, failures, retries)
                bar.reset()
                time.sleep(wait_s)
                continue
            try:
                record["check"] = check(temp) if check else None
            except ArchiveError as err:
                record["corrupt"] += 1
                with writing(dest):
                    temp.unlink()
                    _validator_path(dest).unlink(missing_ok=True)
                if record["corrupt"] >= 2:
                    raise FetchError(f"{url}: corrupt twice: {err}") from None
                LOG.warning("%s: %s; fetched again from zero", url, err)
                bar.reset()
                continue
            break
        with writing(dest):
            os.replace(temp, dest)
            with contextlib.suppress(FileNotFoundError):
                _validator_path(dest).unlink()
    finally:
        bar.close()
    record["bytes"] = size
    record["seconds"] = round(time.monotonic() - started, 3)
    LOG.info(
        "%s: %.1f MB in %.1f s (%.1f MB/s)%s%s",
        dest.name,
        size / 1e6,
        record["seconds"],
        size / 1e6 / max(record["seconds"], 1e-9),
        f", resumed from {record['resumed_from'] / 1e6:.1f} MB" if record["resumed_from"] else "",
        f", {record['attempts'] - 1} retries" if record["attempts"] > 1 else "",
    )
    return record


# --------------------------------------------------------------------------------------------
# A part of the archive, and what is missing
# --------------------------------------------------------------------------------------------
def fetch_part(
    url: str,
    dest: str | os.PathLike,
    failures: str | os.PathLike,
    http: requests.Session | None = None,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
) -> dict[str, Any]:
    """`fetch` of a part with its tar.gz check. A part that cannot be had leaves its failure
    record at `failures` (the URL and why: what `missing_parts` reads) and raises FetchError;
    a fetched one removes an old record."""
    try:
        record = fetch(url, dest, read_tar_gz, http, retries, backoff)
    except FetchError as err:
        with writing(failures), atomic_write(failures, "w") as handle:
            json.dump({"url": url, "file": os.fspath(dest), "reason": str(err)}, handle)
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(failures)
    return record


def missing_parts(
    expected: dict[str, list[str]], done: Callable[[str], bool], failures_dir: str | os.PathLike
) -> list[dict[str, str]]:
    """The parts not done (`done(part)` False), each with the reason its failure record gives
    (`fetch_part`) or "not fetched" when it has none. `expected`: split -> part names."""
    missing = []
    for split, parts in expected.items():
        for part in parts:
            if done(f"{split}/{part}"):
                continue
            record_path = Path(failures_dir) / split / f"{part}.json"
            try:
                failure = json.loads(record_path.read_text())
            except (OSError, ValueError):
                failure = {"url": "", "reason": "not fetched (the run stopped before it)"}
            missing.append({"part": f"{split}/{part}", **failure})
    return missing
