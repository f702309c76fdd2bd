"""Small helpers every stage shares: atomic outputs and their errors, logging, JSON arguments,
process ties."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; on success flush, fsync and rename it onto `path`.

    On any error the temp file is removed and `path` is left as it was (absent or the old
    version), so no reader ever sees a half-written output. The file gets the permissions a
    plain open() would give (0666 less the umask), not mkstemp's private 0600, so outputs on
    shared storage stay readable by the group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, plain_file_mode())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class OutputError(OSError):
    """An output cannot be written (a file, a folder, a record): a read-only or full file
    system, a file where a folder should be. The job fails (exit EXIT_IOERR), naming the
    path: every later output would fail the same way, so it is never reported as one
    input's failure. errno is the cause's."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


EXIT_IOERR = 74  # EX_IOERR (sysexits.h): the exit of a script that an OutputError ends


@contextlib.contextmanager
def writing(
    path: str | os.PathLike, passthrough: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Turn an OSError raised in the block into an OutputError naming `path` (the output the
    block writes); OSErrors of the `passthrough` types are not the disk's (a decoder's, a
    connection's) and are left as they are."""
    try:
        yield
    except (OutputError, *passthrough):
        raise
    except OSError as err:
        raise OutputError(err.errno, str(err), os.fspath(path)) from err


def check_writable(folder: str | os.PathLike) -> None:
    """Create `folder` (parents too) if it is missing, and write, fsync and delete a one-byte
    file in it: a read-only or full file system, a folder without write permission or a file
    where the folder should be raises its OSError here, before a job spends any work on
    outputs it could not keep. Concurrent callers do not collide (unique probe names)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix=".write-probe.", dir=folder) as probe:
        probe.write(b"\0")
        probe.flush()
        os.fsync(probe.fileno())


def plain_file_mode() -> int:
    """The permissions a plain open() gives a new file: 0666 less the umask (a temp file from
    mkstemp, or gdown's, is a private 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"


def setup_logging(name: str = "k400ft") -> logging.Logger:
    """Log to stderr (which each rule sends to its log file) with timestamps."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT, datefmt=LOG_DATEFMT, force=True
    )
    return logging.getLogger(name)


def load_json_arg(text: str, what: str) -> dict:
    """Parse a JSON command-line argument, naming the argument on error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: {what} is not valid JSON ({err}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"error: {what} must be a JSON object, got {type(value).__name__}")
    return value


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process when its parent dies (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing is set and False is returned).

    For processes whose parent must not leave them behind: a trainer under torchrun (torchrun
    starts each in a session of its own, so a kill -9 of torchrun would re-parent it to init
    and leave it writing beside a restart) and a DataLoader worker under its trainer. Asked
    for once the parent may already be gone: a process found re-parented to init (ppid 1)
    sends itself `sig` at once."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() == 1:
        os.kill(os.getpid(), sig)
    return True
