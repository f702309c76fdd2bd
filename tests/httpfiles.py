"""Serving a file's bytes the way a static HTTP server does, with the faults a download meets:
shared by the fake Google Drive (tests/fakedrive.py) and the fake Kinetics-400 archive
(tests/fakearchive.py)."""

from __future__ import annotations

import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

PIECE = 16 * 1024  # what a paced response sends between its pauses


class FileHandler(BaseHTTPRequestHandler):
    """What both fake servers' handlers share: HTTP/1.1 keep-alive, no request log, and a
    client that hangs up mid-response (a resume, a kill) ends its connection quietly."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:
            self.close_connection = True


def requested_start(handler: BaseHTTPRequestHandler, etag: str) -> int:
    """The first byte a GET asks for: N of `Range: bytes=N-` when its If-Range (if any) is
    `etag`, else 0 (the whole file)."""
    wanted = handler.headers.get("Range", "")
    if (
        wanted.startswith("bytes=")
        and wanted.endswith("-")
        and handler.headers.get("If-Range", etag) == etag
    ):
        return int(wanted[len("bytes=") : -1])
    return 0


def send_bytes(
    handler: BaseHTTPRequestHandler,
    data: bytes,
    etag: str,
    headers: dict[str, str] | None = None,
    *,
    start: int = 0,
    cut: int | None = None,
    pace: float = 0.0,
) -> None:
    """Answer with data[start:] (206 and Content-Range when start > 0; 416 past the end),
    ETag, Accept-Ranges and the given headers; no body to a HEAD. cut: announce the whole
    length, send the bytes up to offset `cut` of the file, hang up. pace: a pause of this
    many seconds after each PIECE."""
    if start and start >= len(data):
        handler.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
        handler.send_header("Content-Range", f"bytes */{len(data)}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return
    body = data[start:]
    handler.send_response(HTTPStatus.PARTIAL_CONTENT if start else HTTPStatus.OK)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Accept-Ranges", "bytes")
    handler.send_header("ETag", etag)
    if start:
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    handler.end_headers()
    if handler.command == "HEAD":
        return
    sent = body if cut is None else data[start : max(start, cut)]
    for offset in range(0, len(sent), PIECE if pace else max(len(sent), 1)):
        handler.wfile.write(sent[offset : offset + (PIECE if pace else len(sent))])
        if pace:
            handler.wfile.flush()
            time.sleep(pace)
    if cut is not None:
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
