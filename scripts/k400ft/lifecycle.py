"""A fine-tune's life across processes and restarts: the state dir held, resumed, saved, finished.

`Checkpointer` (torchtitan's checkpointer, in spirit): rank 0 holds the state dir's lock for the
whole run (`state.StateLock`; a second trainer refuses, naming the holder); `resume` loads
`<state-dir>/last.pt` (or `prev.pt`, loudly) into the model, optimiser, scaler, progress and
each rank's random streams, and sets aside (loudly) a state written for another spec or other
inputs (`run_identity`); `save` writes it, rank 0 only, atomically (`state.StateStore`), at
every epoch's end, every `recipe.checkpoint_minutes` and when a SIGTERM / SIGUSR1 arrives:
`poll` is the one all-reduce at a step boundary by which every rank agrees to save (and stop)
at the same step.

Bit-identical resume (same world size): the data order and every random draw are functions of
(seed, rank, epoch, step) (k400ft.samplers, `video.item_rngs`); the main process's streams
(Mixup's numpy draws, drop path's torch draws) are saved per rank at the step boundary and
restored, so is each rank's running train loss of the epoch, and the train log is cut back to
its length at the save: a resumed run's log equals the uninterrupted one's. A kill between two
saves costs the steps since the last save (at most checkpoint_minutes, or one epoch).

The outputs (`OUTPUTS`: final.pt, train_log.jsonl, spec.json) are written as a set at the end
(`write_outputs`: final.pt last, so it exists only beside the other two); what an earlier,
killed finish left is removed before training (`remove_partial_outputs`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from k400ft import distributed, provenance, schedule, state
from k400ft.bookkeeping import TrainLog
from k400ft.io import atomic_write

log = logging.getLogger("k400ft.lifecycle")

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
OUTPUTS = ("final.pt", "train_log.jsonl", "spec.json")  # the out dir's files, written as a set


@dataclass
class Progress:
    """Where training stands: the resume point (saved in every state)."""

    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimiser steps done in this epoch
    global_step: int = 0  # optimiser steps done in total
    trained: bool = False  # this epoch's steps are all done, validation pending
    loss_sum: float = 0.0  # this rank's sum of step losses in this epoch (per-rank, see `ranks`)
    log_bytes: int = 0  # length of train_log.jsonl at the save


class StopRequested(Exception):
    """A signal asked all ranks to stop; the state is saved."""


def result_spec(spec: dict) -> dict:
    """The spec less the number of loader workers, which follows the CPUs a job gets and does
    not change the result: what the run's identity and final.pt record (the same bytes on any
    core count)."""
    return {**spec, "data": {k: v for k, v in spec["data"].items() if k != "num_workers"}}


def run_identity(spec: dict, inputs: dict[str, str]) -> str:
    """sha256 over the result's spec and the input files' contents: a state is resumed only by
    the run that wrote it (a changed config, split or checkpoint starts over)."""
    return provenance.json_sha256(
        {
            "spec": result_spec(spec),
            **{name: provenance.file_sha256(path) for name, path in inputs.items()},
        }
    )


class Checkpointer:
    """The resume state of one run in `state_dir`: every rank calls at the same points, rank 0
    holds the lock and writes. `parts`: the model (unwrapped), optimiser and scaler."""

    def __init__(
        self,
        state_dir: Path,
        info: distributed.DistInfo,
        identity: str,
        spec: dict,
        parts: tuple[torch.nn.Module, torch.optim.Optimizer, torch.amp.GradScaler],
        train_log: TrainLog,
        steps_per_epoch: int,
    ):
        self.state_dir, self.info, self.identity, self.spec = state_dir, info, identity, spec
        self.net, self.optimizer, self.scaler = parts
        self.train_log, self.steps_per_epoch = train_log, steps_per_epoch
        self.interval_s = 60 * spec["recipe"]["checkpoint_minutes"]
        self.store = state.StateStore(state_dir)
        self.lock = state.StateLock(state_dir)
        self.stop_signal: int | None = None
        self.last_save = time.monotonic()

    def acquire(self) -> None:
        """Rank 0 takes the state dir's lock (`state.StateLock`); when another trainer holds
        it, every rank raises StateLocked with rank 0's message."""
        refusal = None
        if self.info.is_primary:
            try:
                self.lock.acquire()
            except state.StateLocked as err:
                refusal = str(err)
        refusal = distributed.all_gather_object(refusal)[0]
        if refusal is not None:
            raise state.StateLocked(refusal)

    def release(self) -> None:
        self.lock.release()

    def resume(self) -> Progress:
        """Load the state (if any) into model, optimiser, scaler and RNG streams; returns the
        progress to continue from (a fresh one when there is no state of this run)."""
        saved = self.store.load(writer=self.info.is_primary)
        distributed.barrier()  # every rank has read the state before rank 0 may move it
        if saved is not None and saved["identity"] != self.identity:
            if self.info.is_primary:  # every rank read it and decides the same; one moves it
                self.store.set_aside("was written for another spec or other inputs")
            saved = None
        if saved is None:
            if self.info.is_primary:
                self.train_log.set_aside()
            return Progress()
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        progress = Progress(**saved["progress"])
        ranks, world_size = saved["ranks"], self.info.world_size
        if len(ranks) == world_size:
            state.set_rng_state(ranks[self.info.rank]["rng"], self.info.device)
            progress.loss_sum = ranks[self.info.rank]["loss_sum"]
        else:
            log.warning(
                "RESUME with %d processes, the state was written by %d: random streams "
                "start afresh and this epoch's order differs (results are not bit-identical "
                "to an uninterrupted run)",
                world_size,
                len(ranks),
            )
            progress.loss_sum = sum(r["loss_sum"] for r in ranks) / world_size
        if self.info.is_primary:
            self.train_log.truncate(progress.log_bytes)
            log.info(
                "RESUMED at epoch %d, step %d of %d (global step %d)%s",
                progress.epoch,
                progress.step_in_epoch,
                self.steps_per_epoch,
                progress.global_step,
                ", validation pending" if progress.trained else "",
            )
        return progress

    def save(self, reason: str, progress: Progress) -> None:
        """Every rank calls this at the same point (its step losses settled); rank 0 writes."""
        mine = {"rng": state.rng_state(self.info.device), "loss_sum": progress.loss_sum}
        ranks = distributed.all_gather_object(mine)
        if self.info.is_primary:
            progress.log_bytes = self.train_log.size()
            start = time.monotonic()
            size = self.store.save(
                {
                    "identity": self.identity,
                    "model": self.net.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "progress": asdict(progress),
                    "ranks": ranks,
                    "world_size": self.info.world_size,
                    "spec": json.dumps(self.spec, sort_keys=True),
                }
            )
            log.info(
                "saved %s (%s: epoch %d, step %d, %.0f MB in %.1f s)",
                self.store.last,
                reason,
                progress.epoch,
                progress.global_step,
                size / 1e6,
                time.monotonic() - start,
            )
        distributed.barrier()
        self.last_save = time.monotonic()

    def poll(self) -> tuple[bool, bool]:
        """At a step boundary, all ranks agree (one all-reduce) on (stop: a signal arrived on
        some rank, save: rank 0's checkpoint_minutes have passed since the last save)."""
        due = self.info.is_primary and time.monotonic() - self.last_save >= self.interval_s
        stop, save_due = distributed.any_rank([self.stop_signal is not None, due])
        return stop, save_due

    @contextlib.contextmanager
    def signals_caught(self) -> Iterator[None]:
        """SIGTERM / SIGUSR1 only note the signal while the context lasts (`poll` acts on it at
        the next step boundary); the previous handlers are put back at its end."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def stopped_by(self) -> str:
        return signal.Signals(self.stop_signal).name if self.stop_signal else "?"


def resolved_spec(spec: dict, plan: schedule.Plan, identity: str) -> dict:
    """The resolved spec (`spec.json`, in the state dir from the start and among the outputs):
    the spec, the plan derived from it, the run's identity, the torch version."""
    return {"spec": spec, "plan": asdict(plan), "identity": identity, "torch": torch.__version__}


def remove_partial_outputs(out_dir: Path) -> None:
    """Outputs of an earlier finish of this run (all of them, or a part that a kill inside
    `write_outputs` left) are removed before training: they are written anew at the end."""
    for path in [out_dir / name for name in OUTPUTS] + list(out_dir.glob(".*.tmp")):
        if path.exists():
            log.info("removing %s, from an earlier finish (written anew at the end)", path)
            path.unlink()


def write_outputs(
    out_dir: Path, net: torch.nn.Module, last_epoch: dict, resolved: dict, train_log: Path
) -> None:
    """The declared outputs as a set (rank 0): final.pt (the weights, what they are, the last
    epoch's validation), the train log and the resolved spec, each to a temp file, then all
    renamed into place, final.pt last, so final.pt exists only beside the other two."""
    spec = resolved["spec"]
    final = {
        "model": net.state_dict(),
        "arch": spec["arch"],
        "num_classes": spec["num_classes"],
        "epoch": resolved["plan"]["epochs"] - 1,
        "epochs": resolved["plan"]["epochs"],
        "val_top1": last_epoch["val_top1"],
        "val_top5": last_epoch["val_top5"],
        "spec": json.dumps(result_spec(spec), sort_keys=True),
    }
    weights_path, log_path, spec_path = (out_dir / name for name in OUTPUTS)
    # the contexts exit (rename) in reverse order: spec.json, train_log.jsonl, final.pt
    with (
        atomic_write(weights_path, "wb") as weights,
        atomic_write(log_path, "wb") as log_copy,
        atomic_write(spec_path, "w") as spec_file,
        open(train_log, "rb") as src,
    ):
        json.dump(resolved, spec_file, indent=2)
        shutil.copyfileobj(src, log_copy)
        torch.save(final, weights)
    log.info(
        "done: %s (val top-1 %.2f%%, top-5 %.2f%%)",
        weights_path,
        last_epoch["val_top1"],
        last_epoch["val_top5"],
    )
