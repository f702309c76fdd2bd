"""Run a stage script with one injected fault (tests/test_failfast.py).

    python tests/faults.py FAULT scripts/finetune.py --spec ... (the script's own arguments)

The fault is installed by patching the library before the script runs as __main__; DataLoader
workers are forked, so a patch made here is in them too. Each fault raises once the loader
workers are up, where a real error (a bad clip, a read-only file system, a broken model) would:

  train_step  the training step raises (main process, 2nd batch)
  worker      drawing a clip's augmentation raises inside a DataLoader worker
  write_log   writing train_log.jsonl fails with EROFS (the first record)
  disk_full   the second save of the state finds the disk full (ENOSPC after its first KiB)
  evaluate    the evaluation raises after the first test video
  none        no fault (the control)

With FAULT_RANK=r in the environment, only the process of that torchrun rank gets the fault.
"""

from __future__ import annotations

import contextlib
import errno
import os
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import torch  # noqa: E402

from k400ft import augment, bookkeeping, components, evaluate, state  # noqa: E402


def InjectedFault(message: str) -> RuntimeError:  # noqa: N802 - reads as an exception class
    """A RuntimeError (a class of this __main__ would not pickle back from a worker)."""
    return RuntimeError(f"InjectedFault: {message}")


def _train_step() -> None:
    original, calls = components.mix_clips, []

    def mix_clips(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise InjectedFault("injected: the training step failed")
        return original(*args, **kwargs)

    components.mix_clips = mix_clips


def _worker() -> None:
    def draw(self, height, width):
        if torch.utils.data.get_worker_info() is None:
            raise AssertionError("the worker fault ran outside a DataLoader worker")
        raise InjectedFault("injected: the augmentation failed in a loader worker")

    augment.ClipSampler.draw = draw


def _write_log() -> None:
    def write_log(self, record):
        raise OSError(errno.EROFS, "Read-only file system", str(self.log_path))

    bookkeeping.TrainLog.write_log = write_log


class FullDisk:
    """A file handle on a full disk: the first KiB of a write lands, then ENOSPC."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data: bytes) -> int:
        self.handle.write(data[:1024])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _disk_full() -> None:
    original, saves = state.atomic_write, []

    @contextlib.contextmanager
    def atomic_write(path, mode="wb"):
        with original(path, mode) as handle:
            saves.append(path)
            yield FullDisk(handle) if len(saves) == 2 else handle

    state.atomic_write = atomic_write


def _evaluate() -> None:
    original = evaluate.iter_view_batches

    def iter_view_batches(items, batch_views, broken):
        for number, batch in enumerate(original(items, batch_views, broken)):
            if number == 1:
                raise InjectedFault("injected: the evaluation failed")
            yield batch

    evaluate.iter_view_batches = iter_view_batches


FAULTS = {
    "train_step": _train_step,
    "worker": _worker,
    "write_log": _write_log,
    "disk_full": _disk_full,
    "evaluate": _evaluate,
    "none": lambda: None,
}

if __name__ == "__main__":
    fault, script, *args = sys.argv[1:]
    if os.environ.get("FAULT_RANK", os.environ.get("RANK", "0")) == os.environ.get("RANK", "0"):
        FAULTS[fault]()
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
