"""A fine-tune's resume state on disk: the checksummed state files, the random streams, and
the lock that gives a state dir to one trainer at a time.

`StateStore`: `last.pt` and the previous good one, `prev.pt`; every file carries a sha256 of
its payload (`pack_state` / `unpack_state`), so a truncated or corrupt `last` is found and
`prev` used, loudly. `rng_state` / `set_rng_state`: a process's random streams (python, numpy,
torch, CUDA) in a form `torch.load(weights_only=True)` reads back.

`StateLock`: an exclusive lock on `<state-dir>/trainer.lock`, taken by the process that writes
the state (rank 0) before it touches anything there and held until the run ends. It is a POSIX
record lock (fcntl), which the kernel drops when its holder dies, however it dies, and which
NFS (v3 through lockd, v4), GPFS, BeeGFS and Lustre mounted with `flock` keep across nodes. The
file names the holder (host, pid, SLURM job, start time), so a second trainer, on any node,
refuses at once and says who holds it. A file still naming a holder that the lock shows is gone
(a kill -9, a lost node) is taken over, loudly. On a file system without record locks the file
alone decides: a live holder on this host, or any holder on another host, refuses; a dead
holder on this host is taken over loudly.

`trainer_log`: while the lock is held, the holder's log records (the job log's) are also
appended to `<state-dir>/trainer.log`, each run after a header naming it. The job log is the
workflow's file and can be lost beside a running trainer (Snakemake deletes a job's log before
it starts the job, a second job on the same state dir included); `trainer.log` is written only
by the lock holder and never truncated, so it keeps what every trainer of the state dir did.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import random
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from k400ft.io import LOG_DATEFMT, LOG_FORMAT, atomic_write

log = logging.getLogger("k400ft.state")

STATE_MAGIC = b"k400ft-state-v1\n"  # a state file: magic, sha256 hex of the payload, "\n", payload
LOCK_NAME = "trainer.lock"
LOG_NAME = "trainer.log"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a file system without record locks


def pack_state(state: dict) -> bytes:
    """torch.save `state` behind a header carrying the payload's sha256."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return STATE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def unpack_state(path: Path) -> dict:
    """Read a file written by `pack_state`; ValueError when it is truncated or corrupt."""
    data = path.read_bytes()
    head = len(STATE_MAGIC) + 65
    if not data.startswith(STATE_MAGIC) or len(data) < head:
        raise ValueError(f"{path}: not a k400ft state file (or truncated in its header)")
    digest, payload = data[len(STATE_MAGIC) : head - 1].decode("ascii", "replace"), data[head:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != digest:
        raise ValueError(
            f"{path}: checksum mismatch ({len(payload)} payload bytes, sha256 {actual[:12]}..., "
            f"header says {digest[:12]}...): truncated or corrupt"
        )
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


class StateNotSaved(RuntimeError):
    """A save found no space (the message names the file, the bytes, and what to do)."""


class StateStore:
    """`last.pt` and the previous good one, `prev.pt`, in the state dir.

    save(): the verified `last` becomes `prev`, then the new state is written atomically as
    `last`. load(): `last` if it verifies, else `prev` with a loud warning, else None."""

    def __init__(self, state_dir: Path):
        self.last = state_dir / "last.pt"
        self.prev = state_dir / "prev.pt"
        self.last_is_good = False  # only a verified `last` may replace `prev`

    def load(self, writer: bool = True) -> dict | None:
        """writer: this process owns the files (rank 0): it removes what a killed save left."""
        for tmp in self.last.parent.glob(f".{self.last.name}.*.tmp") if writer else ():
            log.warning("removing %s, left by a save that did not finish", tmp)
            tmp.unlink()
        for path in (self.last, self.prev):
            if not path.exists():
                if path is self.last and self.prev.exists():
                    log.warning(
                        "RESUME: %s is missing but %s exists: using the previous state",
                        self.last,
                        self.prev,
                    )
                continue
            try:
                state = unpack_state(path)
            except Exception as err:  # noqa: BLE001 - any unreadable state falls back loudly
                log.error(
                    "RESUME: %s is unusable (%s)%s",
                    path,
                    err,
                    f"; falling back to {self.prev}" if path is self.last else "",
                )
                continue
            self.last_is_good = path is self.last
            if path is self.prev:
                log.warning(
                    "RESUME: resuming from the PREVIOUS state %s (epoch %d, step %d): the "
                    "steps after it are redone",
                    path,
                    state["progress"]["epoch"],
                    state["progress"]["global_step"],
                )
            return state
        return None

    def save(self, state: dict) -> int:
        """Write `state`; returns its size in bytes. A full disk (or quota) is StateNotSaved,
        naming the file and the bytes: the previous good state is kept whole (the temp file
        is removed, `prev` or an untouched `last` is what a rerun resumes from)."""
        blob = pack_state(state)
        if self.last_is_good and self.last.exists():
            os.replace(self.last, self.prev)
        try:
            with atomic_write(self.last, "wb") as handle:
                handle.write(blob)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            free = shutil.disk_usage(self.last.parent).free
            raise StateNotSaved(
                f"{self.last}: {os.strerror(err.errno).lower()} for the state ({len(blob)} "
                f"bytes needed, {free} free): the previous state is intact; free space and "
                "rerun to resume"
            ) from err
        self.last_is_good = True
        return len(blob)

    def set_aside(self, reason: str) -> None:
        """Move an incompatible state out of the way (kept, never deleted)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for path in (self.last, self.prev):
            if path.exists():
                target = path.with_name(f"{path.name}.stale-{stamp}")
                os.replace(path, target)
                log.warning(
                    "state %s %s: moved to %s and starting from scratch", path, reason, target
                )
        self.last_is_good = False


def rng_state(device: torch.device) -> dict:
    """This process's random streams (python, numpy, torch CPU, CUDA), weights_only-loadable."""
    np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_gauss),
            "cached": float(np_cached),
            "kind": np_kind,
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class StateLocked(RuntimeError):
    """Another trainer holds the state dir (the message names its host and pid)."""


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "a trainer that has not yet written its name"
    job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"host {holder.get('host')} pid {holder.get('pid')}{job}, since {holder.get('started')}"


def _pid_alive(pid) -> bool:
    """Whether process `pid` of this host runs (an unreadable pid counts as running)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class StateLock:
    """One trainer per state dir, for the whole run (see the module's docstring)."""

    def __init__(self, state_dir: str | os.PathLike):
        self.path = Path(state_dir) / LOCK_NAME
        self._handle: io.TextIOWrapper | None = None

    def _read(self, handle) -> dict | None:
        handle.seek(0)
        text = handle.read()
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return {"host": "?", "pid": "?", "started": f"unreadable lock file {text[:80]!r}"}

    def acquire(self) -> None:
        """Take the lock or raise StateLocked naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666), "r+")  # noqa: SIM115
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locks = True
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                holder = self._read(handle)
                handle.close()
                raise StateLocked(
                    f"{self.path.parent} is in use by another trainer ({describe_holder(holder)}):"
                    " two trainers on one state dir would overwrite each other's checkpoints and "
                    "log. Wait for it to end, or stop it, then run again"
                ) from None
            locks = False
            log.warning(
                "LOCK: %s does not support record locks (%s): only the lock file's contents "
                "guard the state dir",
                self.path.parent,
                os.strerror(err.errno),
            )
        previous = self._read(handle)
        if previous:
            mine = previous.get("host") == socket.gethostname()
            if not locks and not (mine and not _pid_alive(previous.get("pid"))):
                handle.close()
                raise StateLocked(
                    f"{self.path} names a trainer ({describe_holder(previous)}) and this file "
                    "system cannot tell whether it still runs: if it is gone, remove the file "
                    "and run again"
                )
            log.warning(
                "LOCK: taking over %s from %s, which is no longer running (killed, or its "
                "node was lost)",
                self.path,
                describe_holder(previous),
            )
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder()) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        self._handle = handle

    def release(self) -> None:
        """Empty the file (a clean end leaves no holder behind) and drop the lock."""
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.flush()
        self._handle.close()  # closing drops the record lock
        self._handle = None


@contextlib.contextmanager
def trainer_log(state_dir: str | os.PathLike, rank: int, world_size: int) -> Iterator[Path]:
    """Append this process's log records to `<state-dir>/trainer.log` while the context lasts.

    For the holder of the state dir's `StateLock` only (rank 0, after `acquire`), so one
    trainer writes at a time and a refused one never does. The file is opened in append mode
    and never truncated; each run starts with a header: host, pid, SLURM job, start time,
    rank and world size, the command line. The records are the root logger's, in the job
    log's format (`io.setup_logging`); loader workers forked meanwhile write theirs too."""
    path = Path(state_dir) / LOG_NAME
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    handler.stream.write(
        f"======== trainer {describe_holder(_holder())}; rank {rank} of {world_size}\n"
        f"command: {shlex.join(sys.orig_argv)}\n"
    )
    handler.flush()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
