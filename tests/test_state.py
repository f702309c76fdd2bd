"""The resume state on disk (k400ft.state): checksummed state files with a loud fallback, the
random streams, and the lock that gives a state dir to one trainer: held, refused naming the
holder, taken over loudly from a dead one, and the content-only fallback on a file system
without record locks."""

import contextlib
import errno
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from faults import FullDisk

from k400ft import state

# ---------------------------------------------------------------- state files


def test_state_file_round_trip_and_corruption(tmp_path):
    saved = {
        "model": {"w": torch.randn(3, 4)},
        "progress": {"epoch": 2, "global_step": 9},
        "ranks": [state.rng_state(torch.device("cpu"))],
    }
    path = tmp_path / "s.pt"
    path.write_bytes(state.pack_state(saved))
    back = state.unpack_state(path)
    assert torch.equal(back["model"]["w"], saved["model"]["w"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="checksum mismatch"):
        state.unpack_state(path)
    flipped = bytearray(data)
    flipped[-100] ^= 1
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum mismatch"):
        state.unpack_state(path)


def test_truncated_last_falls_back_to_previous_loudly(tmp_path, caplog):
    store = state.StateStore(tmp_path)
    for step in (1, 2):
        store.save({"progress": {"epoch": 0, "global_step": step}})
    assert state.StateStore(tmp_path).load()["progress"]["global_step"] == 2
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:-10])
    store = state.StateStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="k400ft.state"):
        loaded = store.load()
    assert loaded["progress"]["global_step"] == 1
    assert "last.pt is unusable" in caplog.text and "PREVIOUS state" in caplog.text
    store.save(
        {"progress": {"epoch": 0, "global_step": 3}}
    )  # the bad `last` must not become `prev`
    assert state.unpack_state(tmp_path / "prev.pt")["progress"]["global_step"] == 1
    assert state.StateStore(tmp_path).load()["progress"]["global_step"] == 3


def test_a_full_disk_during_a_save_names_the_path_and_bytes_and_keeps_the_previous_state(
    tmp_path, monkeypatch
):
    """`OSError: [Errno 28] No space left on device` named no path and did not say that the
    previous state is kept."""
    store = state.StateStore(tmp_path)
    store.save({"progress": {"epoch": 0, "global_step": 1}})
    write = state.atomic_write

    @contextlib.contextmanager
    def on_a_full_disk(path, mode="wb"):
        with write(path, mode) as handle:
            yield FullDisk(handle)

    monkeypatch.setattr(state, "atomic_write", on_a_full_disk)
    big = {"progress": {"epoch": 0, "global_step": 2}, "model": {"w": torch.zeros(4096)}}
    with pytest.raises(state.StateNotSaved) as err:
        store.save(big)
    needed = len(state.pack_state(big))
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'last.pt'))}: no space left on device for the state "
        rf"\({needed} bytes needed, \d+ free\): the previous state is intact; free space and "
        r"rerun to resume",
        str(err.value),
    ), str(err.value)
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp"))
    assert state.StateStore(tmp_path).load()["progress"]["global_step"] == 1


def test_rng_state_survives_the_state_file(tmp_path):
    device = torch.device("cpu")
    path = tmp_path / "s.pt"
    path.write_bytes(state.pack_state({"rng": state.rng_state(device)}))  # weights_only-loadable
    expected = (random.random(), np.random.rand(), np.random.normal(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state.set_rng_state(state.unpack_state(path)["rng"], device)
    assert (random.random(), np.random.rand(), np.random.normal(), torch.rand(1).item()) == expected


# ---------------------------------------------------------------- the state dir's lock


def holder_of(tmp_path) -> dict:
    return json.loads((tmp_path / state.LOCK_NAME).read_text())


def test_the_lock_names_its_holder_while_held_and_is_empty_after(tmp_path):
    lock = state.StateLock(tmp_path)
    lock.acquire()
    holder = holder_of(tmp_path)
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    lock.release()
    assert (tmp_path / state.LOCK_NAME).read_text() == ""
    again = state.StateLock(tmp_path)  # released: the next trainer takes it without a word
    again.acquire()
    again.release()


HOLD = """
import fcntl, json, os, socket, sys, time
handle = open(sys.argv[1], "a+")
fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.truncate(0)
handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": "4242",
                         "started": "then"}))
handle.flush()
print("held", flush=True)
time.sleep(60)
"""


def test_a_lock_held_by_another_process_is_refused_naming_host_pid_and_job(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / state.LOCK_NAME)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(state.StateLocked) as err:
            state.StateLock(tmp_path).acquire()
        assert time.monotonic() - start < 1  # refused at once, not after a wait
        message = str(err.value)
        assert f"host {socket.gethostname()} pid {holder.pid}, SLURM job 4242" in message
        assert str(tmp_path) in message and "in use by another trainer" in message
        assert holder_of(tmp_path)["pid"] == holder.pid  # the holder's file is untouched
    finally:
        holder.kill()
        holder.wait()
    state.StateLock(tmp_path).acquire()  # its holder is dead: the kernel dropped the lock


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_holder(tmp_path, host: str, pid: int) -> None:
    record = {"host": host, "pid": pid, "slurm_job": None, "started": "earlier"}
    (tmp_path / state.LOCK_NAME).write_text(json.dumps(record))


def test_a_stale_lock_of_a_dead_process_is_taken_over_loudly(tmp_path, caplog):
    pid = dead_pid()
    write_holder(tmp_path, socket.gethostname(), pid)  # a trainer killed -9: its file remains
    with caplog.at_level(logging.WARNING, logger="k400ft.state"):
        lock = state.StateLock(tmp_path)
        lock.acquire()
    lock_file = tmp_path / state.LOCK_NAME
    assert f"taking over {lock_file} from host {socket.gethostname()} pid {pid}" in caplog.text
    assert holder_of(tmp_path)["pid"] == os.getpid()
    lock.release()


@pytest.fixture
def no_record_locks(monkeypatch):
    """A file system without record locks (NFS without lockd, Lustre without `flock`)."""

    def lockf(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(state.fcntl, "lockf", lockf)


def test_without_record_locks_the_file_alone_decides(tmp_path, caplog, no_record_locks):
    here = socket.gethostname()
    write_holder(tmp_path, here, os.getppid())  # a live process of this host
    with pytest.raises(state.StateLocked, match=f"host {here} pid {os.getppid()}.*remove the file"):
        state.StateLock(tmp_path).acquire()
    write_holder(tmp_path, "other-node", 12345)  # another host: cannot tell, refuse
    with pytest.raises(state.StateLocked, match="host other-node pid 12345"):
        state.StateLock(tmp_path).acquire()
    write_holder(tmp_path, here, dead_pid())  # a dead process of this host: taken over
    with caplog.at_level(logging.WARNING, logger="k400ft.state"):
        lock = state.StateLock(tmp_path)
        lock.acquire()
    assert "does not support record locks" in caplog.text and "taking over" in caplog.text
    lock.release()
    state.StateLock(tmp_path).acquire()  # a clean release leaves nothing to refuse


# ---------------------------------------------------------------- the state dir's log


def test_the_trainer_log_appends_each_run_after_a_header(tmp_path, monkeypatch):
    """Records reach `<state-dir>/trainer.log` in the job log's format while the context lasts,
    after a header naming the run; a second run appends (the first one's lines are kept)."""
    log = logging.getLogger("k400ft.test_state")
    log.setLevel(logging.INFO)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setattr(sys, "orig_argv", ["python", "scripts/finetune.py", "--spec", "{}"])
    log.info("before the lock")
    with state.trainer_log(tmp_path, 0, 2) as path:
        log.warning("first run: epoch 1")
    log.info("after the first run")
    with state.trainer_log(tmp_path, 0, 2):
        log.info("second run")
    lines = path.read_text().splitlines()
    assert path == tmp_path / "trainer.log"
    header = f"======== trainer host {socket.gethostname()} pid {os.getpid()}, SLURM job 4242, "
    assert lines[0].startswith(header) and lines[0].endswith("; rank 0 of 2")
    assert lines[1] == "command: python scripts/finetune.py --spec '{}'"
    assert lines[2].endswith(" WARNING k400ft.test_state: first run: epoch 1")
    assert lines[3].startswith(header) and lines[4].startswith("command: ")
    assert lines[5].endswith(" INFO k400ft.test_state: second run") and len(lines) == 6
    assert not any(  # the handler is gone with the context
        getattr(h, "baseFilename", None) == str(path) for h in logging.getLogger().handlers
    )
