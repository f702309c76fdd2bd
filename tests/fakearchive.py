"""A local stand-in for the public Kinetics-400 archive: a real HTTP server on 127.0.0.1 that
serves a folder (the miniature archive `k400ft.demo.write_archive` packs) as a static file
server does (tests/httpfiles.py: GET and HEAD, ETag, Range with If-Range), with faults per
file:

  drop_once      the first full response announces the whole length, sends half, hangs up
  drop_always    every response hangs up there (no byte past the middle ever arrives)
  ignore_range   Range is ignored: every GET gets 200 and the whole file
  corrupt_once   the first full response has one byte flipped in its middle
  corrupt        every response has that byte flipped
  missing        404
  forbidden      403
  slow           a pause after each 16 KiB (a kill -9 can land mid-part)

Every request is recorded (method, path, Range). Use as a context manager; `url` is the base
URL of the folder.
"""

from __future__ import annotations

import hashlib
import threading
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from httpfiles import FileHandler, requested_start, send_bytes

FAULTS = (
    "drop_once",
    "drop_always",
    "ignore_range",
    "corrupt_once",
    "corrupt",
    "missing",
    "forbidden",
    "slow",
)
PACE_S = 0.05


class Request(NamedTuple):
    method: str
    path: str  # relative to the served folder
    range: str | None


class FakeArchive:
    """The files under `root`, served on 127.0.0.1 with the faults set in `faults`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.faults: dict[str, set[str]] = {}
        self.requests: list[Request] = []
        self.full_responses: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.archive = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def fault(self, path: str, *faults: str) -> None:
        """Give the file at `path` (relative to the folder) these faults."""
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {unknown}: {FAULTS}")
        self.faults.setdefault(path, set()).update(faults)

    def gets(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path == path]

    def __enter__(self) -> FakeArchive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _Handler(FileHandler):
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        archive: FakeArchive = self.server.archive
        path = unquote(urlsplit(self.path).path).lstrip("/")
        with archive._lock:
            archive.requests.append(Request(self.command, path, self.headers.get("Range")))
        faults = archive.faults.get(path, set())
        file = archive.root / path
        if "forbidden" in faults:
            return self._status(HTTPStatus.FORBIDDEN)
        if "missing" in faults or not file.is_file():
            return self._status(HTTPStatus.NOT_FOUND)
        data = file.read_bytes()
        etag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        start = 0 if "ignore_range" in faults else requested_start(self, etag)
        first = False
        if start == 0 and self.command == "GET":
            with archive._lock:
                first = archive.full_responses.get(path, 0) == 0
                archive.full_responses[path] = archive.full_responses.get(path, 0) + 1
        if "corrupt" in faults or ("corrupt_once" in faults and first):
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        dropped = "drop_always" in faults or ("drop_once" in faults and first)
        cut = len(data) // 2 if dropped and self.command == "GET" else None
        pace = PACE_S if "slow" in faults else 0.0
        send_bytes(self, data, etag, start=start, cut=cut, pace=pace)

    def _status(self, status: HTTPStatus) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
