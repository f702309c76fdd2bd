"""A local stand-in for Google Drive that the real, unmodified gdown downloads from.

gdown treats only drive.google.com / docs.google.com URLs as Drive (that is where it
parses confirm pages), so the fake must answer under those names over HTTPS. It is an
HTTP proxy on 127.0.0.1 that accepts CONNECT for Google's hosts only, terminates TLS
itself with a certificate from a throw-away `trustme` CA, and answers the tunnelled
requests the way Drive does:

- drive.google.com/uc?id=ID  -> 303 to drive.usercontent.google.com/download?id=ID&export=download
- /download of a small file  -> the bytes, `Content-Disposition: attachment`, range requests
- /download of a large file  -> Drive's "can't scan this file for viruses" page, whose
  `download-form` (hidden id / export / confirm / uuid) leads to the bytes
- a file over its quota      -> the "Too many users have viewed or downloaded" page
- a private file             -> 302 to the accounts.google.com sign-in page
- an unknown id              -> 404 "file does not exist" page
- "truncated"                -> announces the full Content-Length, sends half, hangs up
  (every response); "flaky" does that once, then serves ranges properly

`offline = True` makes the proxy refuse every tunnel (502), as a machine without a route
to Google sees it. Clients pass `proxy=drive.proxy_url, verify=drive.ca_bundle` (or set
HTTPS_PROXY / REQUESTS_CA_BUNDLE); nothing leaves the loopback interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, quote, urlsplit

import trustme
from httpfiles import FileHandler, requested_start, send_bytes

HOSTS = (
    "drive.google.com",
    "drive.usercontent.google.com",
    "docs.google.com",
    "accounts.google.com",
)
BEHAVIOURS = ("direct", "confirm", "quota", "private", "truncated", "flaky")
_USERCONTENT = "https://drive.usercontent.google.com/download"
_TIMEOUT_S = 5.0  # no test connection may outlive this idle

_VIRUS_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>"
    '<meta http-equiv="content-type" content="text/html; charset=utf-8"/></head><body>'
    '<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive '
    'can\'t scan this file for viruses.</p><p class="uc-warning-subcaption"><span '
    'class="uc-name-size"><a href="/open?id={id}">{name}</a> ({size})</span> is too large '
    "for Google to scan for viruses. Would you still like to download this file?</p>"
    '<form id="download-form" action="https://drive.usercontent.google.com/download" '
    'method="get"><input type="submit" id="uc-download-link" class="goog-inline-block '
    'jfk-button jfk-button-action" value="Download anyway"/><input type="hidden" name="id" '
    'value="{id}"><input type="hidden" name="export" value="download"><input type="hidden" '
    'name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}"></form></div>'
    '</div><div class="uc-footer"><hr class="uc-footer-divider"></div></body></html>\n'
)
_QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>"
    '<meta http-equiv="content-type" content="text/html; charset=utf-8"/></head><body>'
    '<div class="uc-main"><div id="uc-text"><p class="uc-error-caption">Sorry, you can&#39;t '
    'view or download this file at this time.</p><p class="uc-error-subcaption">Too many '
    "users have viewed or downloaded this file recently. Please try accessing the file "
    "again later. If the file you are trying to access is particularly large or is shared "
    "with many people, it may take up to 24 hours to be able to view or download the file. "
    "If you still can't access a file after 24 hours, contact your domain administrator."
    "</p></div></div></body></html>\n"
)
_NOT_FOUND_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Page Not Found</title></head><body>"
    "<p>Sorry, the file you have requested does not exist.</p><p>Make sure that you have "
    "the correct URL and the file exists.</p></body></html>\n"
)
_SIGN_IN_PAGE = (
    "<!DOCTYPE html><html><head><title>Sign in - Google Accounts</title></head><body>"
    '<form id="identifier" action="/v3/signin/_/AccountsSignInUi" method="post">'
    '<input type="email" name="identifier"></form></body></html>\n'
)


@dataclass
class DriveFile:
    """A file the fake Drive serves under its id."""

    data: bytes
    name: str
    behaviour: str = "direct"
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    served: int = 0  # full (non-range) responses sent, for "flaky"

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha1(self.data).hexdigest()[:16] + '"'


class Request(NamedTuple):
    """One request the fake Drive received through the tunnel."""

    host: str
    path: str
    query: dict[str, str]
    range: str | None


class FakeDrive:
    """Drive-like HTTPS hosts behind a CONNECT proxy on 127.0.0.1; use as a context manager."""

    def __init__(self, ca_bundle: str | Path) -> None:
        self.files: dict[str, DriveFile] = {}
        self.requests: list[Request] = []
        self.offline = False
        self._lock = threading.Lock()
        self._tunnels: set[ssl.SSLSocket] = set()
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(ca_bundle))
        self.ca_bundle = str(ca_bundle)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*HOSTS).configure_cert(self.tls)
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.drive = self
        self.proxy_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def add(self, file_id: str, data: bytes, name: str, behaviour: str = "direct") -> DriveFile:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour {behaviour!r} not in {BEHAVIOURS}")
        self.files[file_id] = DriveFile(data, name, behaviour)
        return self.files[file_id]

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def tunnel_opened(self, tunnel: ssl.SSLSocket) -> None:
        with self._lock:
            self._tunnels.add(tunnel)

    def tunnel_closed(self, tunnel: ssl.SSLSocket) -> None:
        with self._lock:
            self._tunnels.discard(tunnel)

    def __enter__(self) -> FakeDrive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        with self._lock:  # wake connection threads waiting on an idle keep-alive tunnel
            for tunnel in self._tunnels:
                with contextlib.suppress(OSError):
                    tunnel.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins every connection thread
        self._thread.join()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    drive: FakeDrive


class _ProxyHandler(BaseHTTPRequestHandler):
    """Answers CONNECT for Google's hosts by serving the fake Drive inside TLS."""

    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        drive = self.server.drive
        self.close_connection = True
        if drive.offline or host not in HOSTS or port != "443":
            self.send_error(HTTPStatus.BAD_GATEWAY, f"no route to {self.path}")
            return
        self.send_response(HTTPStatus.OK, "Connection established")
        self.end_headers()
        self.connection.settimeout(_TIMEOUT_S)
        try:
            tunnel = drive.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            return
        drive.tunnel_opened(tunnel)
        try:
            with tunnel:
                _DriveHandler(tunnel, self.client_address, self.server)
        finally:
            drive.tunnel_closed(tunnel)


class _DriveHandler(FileHandler):
    """drive.google.com, drive.usercontent.google.com and accounts.google.com."""

    server: _ProxyServer

    def do_GET(self) -> None:
        drive = self.server.drive
        url = urlsplit(self.path)
        host = (self.headers.get("Host") or "").split(":")[0]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        drive.record(Request(host, url.path, query, self.headers.get("Range")))
        file = drive.files.get(query.get("id", ""))
        if host == "drive.google.com" and url.path == "/uc":
            target = f"{_USERCONTENT}?id={quote(query.get('id', ''))}&export=download"
            self._redirect(HTTPStatus.SEE_OTHER, target)
        elif host == "accounts.google.com":
            self._page(HTTPStatus.OK, _SIGN_IN_PAGE)
        elif host != "drive.usercontent.google.com" or url.path != "/download" or file is None:
            self._page(HTTPStatus.NOT_FOUND, _NOT_FOUND_PAGE)
        elif file.behaviour == "quota":
            self._page(HTTPStatus.FORBIDDEN, _QUOTA_PAGE)
        elif file.behaviour == "private":
            back = quote(f"{_USERCONTENT}?id={query['id']}", safe="")
            self._redirect(
                HTTPStatus.FOUND, f"https://accounts.google.com/ServiceLogin?continue={back}"
            )
        elif file.behaviour == "confirm" and not self._confirmed(query, file):
            size = f"{len(file.data) / 2**20:.0f}M"
            page = _VIRUS_PAGE.format(
                id=html.escape(query["id"]), name=html.escape(file.name), size=size, uuid=file.uuid
            )
            self._page(HTTPStatus.OK, page)
        else:
            self._file(file)

    @staticmethod
    def _confirmed(query: dict[str, str], file: DriveFile) -> bool:
        """The request carries the warning form's answer: confirm=t and the page's uuid."""
        return query.get("confirm") == "t" and query.get("uuid") == file.uuid

    def _redirect(self, status: HTTPStatus, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Type", "text/html; charset=UTF-8")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _page(self, status: HTTPStatus, page: str) -> None:
        body = page.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, file: DriveFile) -> None:
        """The bytes, honouring `Range: bytes=N-` (with If-Range) like Drive does."""
        start = requested_start(self, file.etag)
        cut = None  # "truncated" and a "flaky" file's first time: half of what is asked
        if file.behaviour == "truncated" or (file.behaviour == "flaky" and file.served == 0):
            cut = start + (len(file.data) - start) // 2
        if start == 0:
            file.served += 1
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{file.name}"',
        }
        send_bytes(self, file.data, file.etag, headers, start=start, cut=cut)
