"""What a fine-tune tells while it runs (rank 0): train_log.jsonl, TensorBoard, the bar, log lines.

`TrainLog`: `<state-dir>/train_log.jsonl`, one JSON record a line (step lines: mean loss, lr,
clips/s, data-wait share, GPU memory, every `log_every` steps; epoch lines: train loss, val
top-1/top-5, times), each numeric field also a TensorBoard scalar in `<state-dir>/tensorboard`;
cut back to its length at a save when a run resumes, set aside when a run starts afresh.
`Bookkeeper`: the run's start line, one summary line per epoch, and an `EpochMeter` per epoch:
a tqdm bar with ETA on stderr, the step lines, and, once per process after the first steps, a
projection of the whole run's wall time and GPU-hours (`schedule.project_cost`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from k400ft import distributed, schedule

log = logging.getLogger("k400ft.bookkeeping")

PROJECT_AFTER_STEPS = 20  # log the cost projection after this many steps (or the first epoch)


class TrainLog:
    """`<state-dir>/train_log.jsonl` and its TensorBoard scalars, written by rank 0 only."""

    def __init__(self, state_dir: Path, primary: bool):
        self.log_path = state_dir / "train_log.jsonl"
        self.tensorboard = state_dir / "tensorboard"
        self.primary = primary
        self.writer: SummaryWriter | None = None

    def write_log(self, record: dict) -> None:
        if not self.primary:
            return
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = record["type"]
            for key, value in record.items():
                if key not in ("type", "epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def open_tensorboard(self, global_step: int) -> None:
        """TensorBoard from `global_step` on (the events past it, from before a resume, purged)."""
        self.writer = SummaryWriter(str(self.tensorboard), purge_step=global_step or None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def truncate(self, size: int) -> None:
        """Drop log lines written after the state was saved (they are redone)."""
        if not self.log_path.exists():
            if size:
                log.warning("RESUME: %s is missing; the log restarts here", self.log_path)
            return
        if self.log_path.stat().st_size < size:
            log.warning("RESUME: %s is shorter than at the save", self.log_path)
            return
        with open(self.log_path, "r+b") as handle:
            handle.truncate(size)

    def set_aside(self) -> None:
        """A run starting afresh keeps an earlier log as `train_log.jsonl.old-<time>`."""
        if self.log_path.exists():
            os.replace(
                self.log_path, self.log_path.with_name(f"train_log.jsonl.old-{int(time.time())}")
            )


class Bookkeeper:
    """The run's log lines and records, for one process (only rank 0 writes or logs)."""

    def __init__(
        self, plan: schedule.Plan, info: distributed.DistInfo, device: torch.device, state_dir
    ):
        self.plan, self.info, self.device = plan, info, device
        self.train_log = TrainLog(Path(state_dir), info.is_primary)
        self.projected = not info.is_primary  # the cost projection is logged once per process

    def started(self, patchify: str, global_step: int) -> None:
        """TensorBoard opened, and one line saying what runs and how."""
        if not self.info.is_primary:
            return
        plan = self.plan
        self.train_log.open_tensorboard(global_step)
        log.info(
            "%s on %d process(es) (%s, %s): %d train / %d val videos, global batch %d = %d "
            "per process x %d x %d accumulation, %d steps/epoch x %d epochs, lr %.3g -> %.3g",
            patchify,
            plan.world_size,
            plan.device,
            plan.precision,
            plan.train_videos,
            plan.val_videos,
            plan.global_batch,
            plan.batch_per_gpu,
            plan.world_size,
            plan.accumulation,
            plan.steps_per_epoch,
            plan.epochs,
            plan.lr,
            plan.min_lr,
        )

    def epoch(self, epoch: int, start_step: int) -> EpochMeter:
        return EpochMeter(self, epoch, start_step)

    def epoch_done(self, record: dict) -> None:
        """The epoch's record in the train log, and its summary line."""
        self.train_log.write_log(record)
        if self.info.is_primary:
            log.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, top-1 %.2f%%, top-5 %.2f%% "
                "(%d videos); train %.0f s, val %.0f s",
                record["epoch"] + 1,
                self.plan.epochs,
                record["loss"],
                record["val_loss"],
                record["val_top1"],
                record["val_top5"],
                record["val_videos"],
                record["train_time_s"],
                record["val_time_s"],
            )

    def project(self, step_seconds: float) -> None:
        """Log the whole run's cost at `step_seconds` per optimiser step (once per process)."""
        self.projected = True
        projection = schedule.project_cost(
            step_seconds,
            self.plan.train_videos,
            self.plan.global_batch,
            self.plan.epochs,
            self.info.world_size,
            unit="GPU" if self.device.type == "cuda" else "CPU-process",
        )
        log.info(
            "projection for the whole run (validation not included): %s", projection.describe()
        )


class EpochMeter:
    """One epoch's steps as they are told: the bar, the window of steps since the last step
    line (loss sum, steps, loader wait, start), and the clock of the cost projection (its first
    step, which pays for start-up, left out)."""

    def __init__(self, books: Bookkeeper, epoch: int, start_step: int):
        plan = books.plan
        self.books, self.epoch = books, epoch
        self.bar = tqdm(
            total=plan.steps_per_epoch,
            initial=start_step,
            desc=f"epoch {epoch + 1}/{plan.epochs}",
            disable=not books.info.is_primary,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        self.window = {"loss": 0.0, "steps": 0, "wait": 0.0, "start": time.perf_counter()}
        self.clips_per_step = plan.global_batch * plan.num_sample
        self.timed_steps, self.timed_start = 0, 0.0

    def add_loss(self, value: float) -> None:
        self.window["loss"] += value

    def stepped(self) -> None:
        self.window["steps"] += 1
        self.bar.update(1)

    def line_due(self, step_in_epoch: int) -> bool:
        plan = self.books.plan
        return step_in_epoch % plan.log_every == 0 or step_in_epoch == plan.steps_per_epoch

    def log_steps(self, global_step: int, lr: float, wait: float) -> None:
        """The step line: means over the window (its losses settled), then a new window."""
        window = self.window
        window["wait"] += wait
        elapsed = time.perf_counter() - window["start"]
        record = {
            "type": "step",
            "epoch": self.epoch,
            "step": global_step,
            "loss": window["loss"] / window["steps"],
            "lr": lr,
            "clips_per_s": window["steps"] * self.clips_per_step / elapsed,
            "data_wait": window["wait"] / elapsed,
            "steps": window["steps"],
        }
        device = self.books.device
        if device.type == "cuda":
            record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        self.books.train_log.write_log(record)
        self.window = {"loss": 0.0, "steps": 0, "wait": 0.0, "start": time.perf_counter()}

    def timed(self, last_step: bool) -> None:
        """After each step: the projection once PROJECT_AFTER_STEPS steps are timed (or at the
        epoch's last step), unless this process has logged it."""
        self.timed_steps += 1
        if self.timed_steps == 1:
            self.timed_start = time.perf_counter()  # the first step pays for start-up
        if (
            self.timed_steps == PROJECT_AFTER_STEPS + 1 or (last_step and self.timed_steps > 1)
        ) and not self.books.projected:
            self.books.project((time.perf_counter() - self.timed_start) / (self.timed_steps - 1))

    def close(self) -> None:
        self.bar.close()
