"""The fine-tuning engine: upstream's recipe (REFERENCE.md §2), data parallel, preemption-safe.

Recipe (every number from the spec, i.e. config.yaml; the numbers in k400ft.schedule, the parts
in k400ft.components): AdamW (betas, eps) with weight decay on matrices only (no decay on 1-D
parameters, biases, `pos_embed`, `cls_token`); layer-wise lr decay (scale =
layer_decay^(num_layers - 1 - layer_id), 0.75^(13 - id) for ViT-S); lr and min_lr scaled by
global_batch / 256; a per-step schedule of linear warmup from 0 then cosine to min_lr
(upstream's `cosine_scheduler`, reproduced value for value); Mixup / CutMix with label smoothing
and soft-target cross entropy (timm); repeated augmentation (each video gives `num_sample`
clips, all in the batch); bf16 autocast on GPUs that have it, fp16 + GradScaler on those that do
not, fp32 on CPU; no gradient clipping, no EMA; seed + rank.

The global batch (videos per optimiser step) is a config number kept whatever the process count:
accumulation = global_batch / (batch_per_gpu x world_size) micro-steps, gradients all-reduced on
the last one only (DDP `no_sync` on the others). A global batch that does not split exactly is
refused with the numbers to change.

Resume state: `<state-dir>/last.pt` (and the previous good one, `prev.pt`), written by rank 0
atomically (temp file, fsync, rename) after every epoch's training (before validation), every
`recipe.checkpoint_minutes`, and when a SIGTERM / SIGUSR1 arrives (all ranks agree, through an
all-reduce at every step boundary, to save at the same step and then exit with EXIT_REQUEUE = 75,
EX_TEMPFAIL: a non-zero code, so Snakemake's `--retries` / the SLURM requeue start the job again
and it resumes). Every state file carries a sha256 of its payload; a corrupt or truncated `last`
is reported loudly and `prev` is used. A start finds the state and resumes by itself. A state
written for a different spec or different inputs is moved aside (loudly), never resumed.

Bit-identical resume (same world size): the data order and every random draw are functions of
(seed, rank, epoch, step) (k400ft.samplers). The sampler's permutation is DistributedSampler's
(seed + epoch); a resumed epoch skips the index positions already trained on (no decoding of
skipped videos); augmentation draws are a function of (seed, epoch, video index)
(`video.item_rngs`), whatever worker runs them; the loaders own their generators, so starting
them never draws from the main process's random streams; those streams (Mixup's numpy draws,
drop path's torch draws) are saved per rank at the step boundary and restored. The epoch's
running train loss is saved per rank too, and the log is cut back to its length at the save, so
the log of a resumed run equals the uninterrupted one. A kill between two saves costs the steps
since the last save (at most checkpoint_minutes, or one epoch).

Failures and ownership: any exception ends the run at once: `run()` shuts the loaders' workers
down on every way out (`video.close_loaders`), so the process exits with the error last in its
log instead of waiting for ever on workers that ignore SIGTERM. The state dir belongs to one
trainer for the whole run: rank 0 holds its lock (`state.StateLock`) and a second trainer refuses
(EXIT_LOCKED = 73) naming the holder. The resume state itself (files, random streams, the lock)
is `k400ft.state`. Every way out of `finetune()` ends the rank's log with the reason and an
`exitcode: N` line (`report_exit`): torchrun reports a trainer's code only when the trainer
ends first, not when torchrun itself is signalled.

Logs (rank 0): the log records go to the job's log (stderr) and, while the lock is held, are
appended to `<state-dir>/trainer.log` after a header naming the run (`state.trainer_log`): the
job log can be deleted beside a running trainer (Snakemake removes it before a second job on the
same state dir starts); `trainer.log` keeps every run of the state dir.

Observability (rank 0): per-step JSONL lines (mean loss, lr, clips/s, data-wait share, GPU
memory) every `log_every` steps, an epoch line (train loss, val top-1/top-5, times), both in
`<state-dir>/train_log.jsonl` during training; TensorBoard scalars in `<state-dir>/tensorboard`;
a tqdm bar with ETA on stderr; one summary line per epoch. After the first steps, a projection
of the whole run's wall time and GPU-hours is logged. The declared outputs (`final.pt`,
`train_log.jsonl`, plus `spec.json`, the resolved spec) appear in the out dir only when the
last epoch is done.

One process:      torchrun --standalone --nproc-per-node=1 scripts/finetune.py --device cpu ...
One node, 4 GPUs: torchrun --standalone --nproc-per-node=4 scripts/finetune.py --device cuda ...
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from k400ft import (
    augment,
    components,
    distributed,
    feed,
    models,
    provenance,
    samplers,
    schedule,
    state,
    video,
)
from k400ft.io import atomic_write
from k400ft.schedule import SpecError

log = logging.getLogger("k400ft.finetune")

EXIT_REQUEUE = 75  # EX_TEMPFAIL (sysexits.h): saved on a signal, run me again to resume
EXIT_LOCKED = 73  # EX_CANTCREAT: another trainer holds the state dir
EXIT_REFUSED = 2  # a refused spec or split CSV (the message names the key, or the file and line)
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a Ctrl-C
EXIT_MEANINGS = {
    0: "done",
    EXIT_REQUEUE: "stopped by a signal, state saved: run again to resume",
    EXIT_REFUSED: "a refused spec or split CSV",
    EXIT_LOCKED: "the state dir is in use by another trainer",
    EXIT_INTERRUPTED: "interrupted",
}
PROJECT_AFTER_STEPS = 20  # log the cost projection after this many steps (or the first epoch)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
OUTPUTS = ("final.pt", "train_log.jsonl", "spec.json")  # the out dir's files, written as a set


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class Progress:
    """Where training stands: the resume point (saved in every state)."""

    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimiser steps done in this epoch
    global_step: int = 0  # optimiser steps done in total
    trained: bool = False  # this epoch's steps are all done, validation pending
    loss_sum: float = 0.0  # this rank's sum of step losses in this epoch (per-rank, see `ranks`)
    log_bytes: int = 0  # length of train_log.jsonl at the save


def run_identity(spec: dict, inputs: dict[str, str]) -> str:
    """sha256 over the spec and the input files' contents: a state is resumed only by the run
    that wrote it (a changed config, split or checkpoint starts over). The number of loader
    workers is not part of it: it follows the CPUs a job gets and does not change the result."""
    data = {k: v for k, v in spec["data"].items() if k != "num_workers"}
    return provenance.json_sha256(
        {
            "spec": {**spec, "data": data},
            **{name: provenance.file_sha256(path) for name, path in inputs.items()},
        }
    )


class StopRequested(Exception):
    """A signal asked all ranks to stop; the state is saved."""


class Finetune:
    """One fine-tuning run. `run()` returns the process exit code."""

    def __init__(
        self,
        spec: dict,
        info: distributed.DistInfo,
        train_csv: str,
        val_csv: str,
        pretrained: str,
        state_dir: str,
        out_dir: str,
    ):
        self.spec, self.info = spec, info
        self.state_dir, self.out_dir = Path(state_dir), Path(out_dir)
        self.device = info.device
        self.recipe, self.data_cfg = spec["recipe"], spec["data"]
        self.seed = self.recipe["seed"] + info.rank  # upstream: seed + rank
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True

        # augmentation draws are a function of (recipe seed, epoch, video index) (video.item_rngs)
        seed, classes = self.recipe["seed"], spec["num_classes"]
        placement = schedule.augment_placement(self.data_cfg.get("augment_on", "auto"), self.device)
        self.train_set = video.TrainDataset(
            train_csv,
            self.data_cfg,
            "train",
            seed=seed,
            num_classes=classes,
            apply_augment=placement == "workers",
        )
        # augment_on device: the workers draw the parameters, the clips are made here
        self.augmenter = augment.ClipAugmenter(self.data_cfg) if placement == "device" else None
        self.val_set = video.TrainDataset(
            val_csv, self.data_cfg, "validation", seed=seed, num_classes=classes
        )
        self.plan = schedule.make_plan(
            spec, info.world_size, len(self.train_set), len(self.val_set), self.device
        )
        self.identity = run_identity(
            spec, {"train": train_csv, "val": val_csv, "pretrained": pretrained}
        )

        self.net = models.build_model(spec["arch"], spec["num_classes"])
        report = models.load_pretrained(self.net, pretrained, spec["pretrained_format"])
        if info.is_primary:
            log.info("pretrained %s (%s): %s", pretrained, spec["pretrained_format"], report)
        self.net.to(self.device)
        self.optimizer = components.make_optimizer(self.net, self.recipe, self.plan.lr, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.plan.precision == "fp16")
        self.mixup = components.make_mixup(self.recipe, spec["num_classes"])
        self.criterion = components.make_criterion(self.recipe, self.mixup)
        self.sampler, self.train_loader, self.val_loader = samplers.make_loaders(
            self.train_set, self.val_set, self.plan, info, seed, self.data_cfg["num_workers"]
        )
        self.store = state.StateStore(self.state_dir)
        self.lock = state.StateLock(self.state_dir)
        self.progress = Progress()
        self.stop_signal: int | None = None
        self.projected = False  # the cost projection is logged once per process
        self.last_save = time.monotonic()
        self.log_path = self.state_dir / "train_log.jsonl"
        self.writer: SummaryWriter | None = None
        self.model: nn.Module = self.net  # what forward runs: maybe compiled, DDP-wrapped
        self.pending_loss: feed.LateLoss | None = None  # the last step's, read back late
        self.window: dict = {}  # the steps since the last log line

    # -- set-up ----------------------------------------------------------------------------------

    def resume(self) -> None:
        """Load the state (if any) into model, optimiser, scaler, progress and RNG streams."""
        saved = self.store.load(writer=self.info.is_primary)
        distributed.barrier()  # every rank has read the state before rank 0 may move it
        if saved is not None and saved["identity"] != self.identity:
            if self.info.is_primary:  # every rank read it and decides the same; one moves it
                self.store.set_aside("was written for another spec or other inputs")
            saved = None
        if saved is None:
            if self.info.is_primary and self.log_path.exists():
                os.replace(
                    self.log_path,
                    self.log_path.with_name(f"train_log.jsonl.old-{int(time.time())}"),
                )
            return
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        self.progress = Progress(**saved["progress"])
        ranks = saved["ranks"]
        if len(ranks) == self.info.world_size:
            state.set_rng_state(ranks[self.info.rank]["rng"], self.device)
            self.progress.loss_sum = ranks[self.info.rank]["loss_sum"]
        else:
            log.warning(
                "RESUME with %d processes, the state was written by %d: random streams "
                "start afresh and this epoch's order differs (results are not bit-identical "
                "to an uninterrupted run)",
                self.info.world_size,
                len(ranks),
            )
            self.progress.loss_sum = sum(r["loss_sum"] for r in ranks) / self.info.world_size
        if self.info.is_primary:
            self._truncate_log(self.progress.log_bytes)
            log.info(
                "RESUMED at epoch %d, step %d of %d (global step %d)%s",
                self.progress.epoch,
                self.progress.step_in_epoch,
                self.plan.steps_per_epoch,
                self.progress.global_step,
                ", validation pending" if self.progress.trained else "",
            )

    def _truncate_log(self, size: int) -> None:
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

    def wrap(self) -> None:
        """compile (CUDA, if asked), then DDP when more than one process."""
        model: nn.Module = self.net
        if self.plan.compile:
            model = torch.compile(model)
        if distributed.active():
            model = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
                gradient_as_bucket_view=True,
            )
        self.model = model

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    # -- state -----------------------------------------------------------------------------------

    def save(self, reason: str) -> None:
        """Every rank calls this at the same point; rank 0 writes the state."""
        self.settle_loss()
        mine = {"rng": state.rng_state(self.device), "loss_sum": self.progress.loss_sum}
        ranks = distributed.all_gather_object(mine)
        if self.info.is_primary:
            self.progress.log_bytes = self.log_path.stat().st_size if self.log_path.exists() else 0
            start = time.monotonic()
            size = self.store.save(
                {
                    "identity": self.identity,
                    "model": self.net.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "progress": asdict(self.progress),
                    "ranks": ranks,
                    "world_size": self.info.world_size,
                    "spec": json.dumps(self.spec, sort_keys=True),
                }
            )
            log.info(
                "saved %s (%s: epoch %d, step %d, %.0f MB in %.1f s)",
                self.store.last,
                reason,
                self.progress.epoch,
                self.progress.global_step,
                size / 1e6,
                time.monotonic() - start,
            )
        distributed.barrier()
        self.last_save = time.monotonic()

    def check_stop(self) -> None:
        """At a step boundary: all ranks agree on a signal / a due timed save (one all-reduce)."""
        due = (
            self.info.is_primary
            and time.monotonic() - self.last_save >= 60 * self.recipe["checkpoint_minutes"]
        )
        stop, save_due = distributed.any_rank([self.stop_signal is not None, due])
        if stop:
            self.save("signal")
            raise StopRequested
        if save_due:
            self.save("timer")

    # -- logging ---------------------------------------------------------------------------------

    def write_log(self, record: dict) -> None:
        if not self.info.is_primary:
            return
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = record["type"]
            for key, value in record.items():
                if key not in ("type", "epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    # -- training --------------------------------------------------------------------------------

    def autocast(self) -> torch.autocast:
        return components.autocast(self.device, self.plan.precision)

    def train_one_epoch(self, epoch: int) -> None:
        """Optimiser steps from progress.step_in_epoch to the end of the epoch. The host never
        waits for the step it issues: the next batch is made ahead (`feed.Feeder`) and each
        step's loss is read back one step late (`feed.LateLoss`, settled before every log and
        save)."""
        plan, progress = self.plan, self.progress
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(progress.step_in_epoch * plan.accumulation * plan.batch_per_gpu)
        self.train_set.set_epoch(epoch)
        self.model.train()
        bar = tqdm(
            total=plan.steps_per_epoch,
            initial=progress.step_in_epoch,
            desc=f"epoch {epoch + 1}/{plan.epochs}",
            disable=not self.info.is_primary,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        self.window = {"loss": 0.0, "steps": 0, "wait": 0.0, "start": time.perf_counter()}
        clips_per_step = plan.global_batch * plan.num_sample
        timed_steps, timed_start = 0, None
        feeder = feed.Feeder(
            iter(self.train_loader),
            functools.partial(feed.prepare, device=self.device, augmenter=self.augmenter),
            self.device,
            (plan.steps_per_epoch - progress.step_in_epoch) * plan.accumulation,
        )
        while progress.step_in_epoch < plan.steps_per_epoch:
            lr = schedule.lr_at_step(
                progress.global_step, plan.lr, plan.min_lr, plan.warmup_steps, plan.total_steps
            )
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            step_loss = torch.zeros((), device=self.device)
            for micro in range(plan.accumulation):
                clips, labels = feeder.take()
                if self.mixup is not None:
                    clips, targets = components.mix_clips(self.mixup, clips, labels)
                else:
                    targets = labels
                last = micro == plan.accumulation - 1
                sync = (
                    contextlib.nullcontext()
                    if last or not distributed.active()
                    else self.model.no_sync()
                )
                with sync:
                    with self.autocast():
                        loss = self.criterion(self.model(clips), targets)
                    self.scaler.scale(loss / plan.accumulation).backward()
                feeder.fetch()  # the next batch, made while this step runs on the device
                step_loss += loss.detach() / plan.accumulation
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            where = f"epoch {epoch}, step {progress.step_in_epoch} (global {progress.global_step})"
            self.settle_loss()  # the previous step's: its work is done or nearly
            self.pending_loss = feed.LateLoss(step_loss, where)
            progress.step_in_epoch += 1
            progress.global_step += 1
            self.window["steps"] += 1
            bar.update(1)
            if (
                progress.step_in_epoch % plan.log_every == 0
                or progress.step_in_epoch == plan.steps_per_epoch
            ):
                self.settle_loss()
                self.window["wait"] += feeder.pop_wait()
                self.log_steps(epoch, lr, self.window, clips_per_step, bar)
                self.window = {"loss": 0.0, "steps": 0, "wait": 0.0, "start": time.perf_counter()}
            timed_steps += 1
            if timed_steps == 1:
                timed_start = time.perf_counter()  # the first step pays for start-up
            last_step = progress.step_in_epoch == plan.steps_per_epoch
            if (timed_steps == PROJECT_AFTER_STEPS + 1 or (last_step and timed_steps > 1)) and (
                self.info.is_primary and not self.projected
            ):
                self.log_projection((time.perf_counter() - timed_start) / (timed_steps - 1))
                self.projected = True
            if progress.step_in_epoch < plan.steps_per_epoch:
                self.check_stop()
        self.settle_loss()
        bar.close()

    def settle_loss(self) -> None:
        """Account the step loss read back late (if one is pending) into the epoch's sum and
        the log window; a non-finite loss raises here, naming its epoch and step. Called
        before every log and save, so neither ever sees a step whose loss is unread."""
        if self.pending_loss is None:
            return
        value = self.pending_loss.value()
        self.pending_loss = None
        self.progress.loss_sum += value
        self.window["loss"] += value

    def log_steps(
        self, epoch: int, lr: float, window: dict, clips_per_step: int, bar: tqdm
    ) -> None:
        elapsed = time.perf_counter() - window["start"]
        record = {
            "type": "step",
            "epoch": epoch,
            "step": self.progress.global_step,
            "loss": window["loss"] / window["steps"],
            "lr": lr,
            "clips_per_s": window["steps"] * clips_per_step / elapsed,
            "data_wait": window["wait"] / elapsed,
            "steps": window["steps"],
        }
        if self.device.type == "cuda":
            record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        self.write_log(record)

    def log_projection(self, step_seconds: float) -> None:
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

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        """Single-view top-1/top-5 and CE loss over the whole val split (sums over ranks)."""
        self.val_set.set_epoch(epoch)
        self.net.eval()
        totals = torch.zeros(
            4, dtype=torch.float64, device=self.device
        )  # loss sum, top1, top5, count
        for clips, labels, _ in self.val_loader:
            clips, labels = (
                clips.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )
            with self.autocast():
                logits = self.net(clips)
            logits = logits.float()
            top1, top5 = components.topk_correct(logits, labels, (1, 5))
            loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
            totals += torch.tensor(
                [loss.item(), top1, top5, len(labels)], dtype=torch.float64, device=self.device
            )
        distributed.all_reduce_sum(totals)
        loss_sum, top1, top5, count = totals.tolist()
        return {
            "val_loss": loss_sum / count,
            "val_top1": 100 * top1 / count,
            "val_top5": 100 * top5 / count,
            "val_videos": int(count),
        }

    def train_loss(self) -> float:
        """Mean step loss of the epoch over all ranks."""
        total = torch.tensor([self.progress.loss_sum], dtype=torch.float64, device=self.device)
        distributed.all_reduce_sum(total)
        return total.item() / (self.info.world_size * self.plan.steps_per_epoch)

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        """Lock the state dir, log into it (rank 0), train (resuming), write the outputs;
        returns the exit code, whatever happens (an exception is reported, not raised).

        On every way out, an exception on this rank included, the loaders' workers are shut
        down (`video.close_loaders`), the reason and the exit code logged (`report_exit`; on
        rank 0 into `<state-dir>/trainer.log` too, from the moment it holds the lock), then
        the lock released: the process ends at once with the error last in its log; torchrun
        then ends the other ranks. A trainer refused the lock writes nothing into the state
        dir's log."""
        code, error = 1, None
        with contextlib.ExitStack() as held:
            held.callback(self.lock.release)  # last: after the exit line reached trainer.log
            try:
                self.lock_state_dir()
                if self.info.is_primary:
                    held.enter_context(
                        state.trainer_log(self.state_dir, self.info.rank, self.info.world_size)
                    )
                code = self.loop()
            except BaseException as err:  # noqa: BLE001 - every way out is reported
                error = err
            finally:
                video.close_loaders(self.train_loader, self.val_loader)
            return report_exit(code, error)

    def lock_state_dir(self) -> None:
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

    def loop(self) -> int:
        plan = self.plan
        if self.info.is_primary:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.remove_partial_outputs()
            with atomic_write(self.state_dir / "spec.json", "w") as handle:
                json.dump(self.resolved(), handle, indent=2)
        distributed.barrier()
        self.resume()
        self.wrap()
        if self.info.is_primary:
            self.writer = SummaryWriter(
                str(self.state_dir / "tensorboard"), purge_step=self.progress.global_step or None
            )
            log.info(
                "%s on %d process(es) (%s, %s): %d train / %d val videos, global batch %d = %d "
                "per process x %d x %d accumulation, %d steps/epoch x %d epochs, lr %.3g -> %.3g",
                self.spec["arch"]["patchify"],
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
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        try:
            while self.progress.epoch < plan.epochs:
                epoch, epoch_start = self.progress.epoch, time.perf_counter()
                if not self.progress.trained:
                    self.train_one_epoch(epoch)
                    self.progress.trained = True
                    self.save("epoch")
                val_start = time.perf_counter()
                metrics = self.validate(epoch)
                record = {
                    "type": "epoch",
                    "epoch": epoch,
                    "step": self.progress.global_step,
                    "loss": self.train_loss(),
                    "lr": schedule.lr_at_step(
                        self.progress.global_step - 1,
                        plan.lr,
                        plan.min_lr,
                        plan.warmup_steps,
                        plan.total_steps,
                    ),
                    **metrics,
                    "train_time_s": val_start - epoch_start,
                    "val_time_s": time.perf_counter() - val_start,
                }
                self.write_log(record)
                if self.info.is_primary:
                    log.info(
                        "epoch %d/%d: train loss %.4f, val loss %.4f, top-1 %.2f%%, top-5 %.2f%% "
                        "(%d videos); train %.0f s, val %.0f s",
                        epoch + 1,
                        plan.epochs,
                        record["loss"],
                        metrics["val_loss"],
                        metrics["val_top1"],
                        metrics["val_top5"],
                        metrics["val_videos"],
                        record["train_time_s"],
                        record["val_time_s"],
                    )
                self.progress = Progress(epoch=epoch + 1, global_step=self.progress.global_step)
                if self.progress.epoch < plan.epochs:
                    self.check_stop()
            self.finish(record)
            return 0
        except StopRequested:
            if self.info.is_primary:
                log.warning(
                    "stopped by signal %s; state saved in %s: run again to resume (exit %d)",
                    signal.Signals(self.stop_signal).name if self.stop_signal else "?",
                    self.state_dir,
                    EXIT_REQUEUE,
                )
            return EXIT_REQUEUE
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.writer is not None:
                self.writer.close()

    def resolved(self) -> dict:
        return {
            "spec": self.spec,
            "plan": asdict(self.plan),
            "identity": self.identity,
            "torch": torch.__version__,
        }

    def remove_partial_outputs(self) -> None:
        """Outputs of an earlier finish of this run (all of them, or a part that a kill inside
        `finish` left) are removed before training: they are written anew at the end."""
        for path in [self.out_dir / name for name in OUTPUTS] + list(self.out_dir.glob(".*.tmp")):
            if path.exists():
                log.info("removing %s, from an earlier finish (written anew at the end)", path)
                path.unlink()

    def finish(self, last_epoch: dict) -> None:
        """Write the declared outputs (rank 0) as a set: each to a temp file, then all renamed
        into place, final.pt last, so final.pt exists only beside the other two."""
        if self.info.is_primary:
            final = {
                "model": self.net.state_dict(),
                "arch": self.spec["arch"],
                "num_classes": self.spec["num_classes"],
                "epoch": self.plan.epochs - 1,
                "epochs": self.plan.epochs,
                "val_top1": last_epoch["val_top1"],
                "val_top5": last_epoch["val_top5"],
                "spec": json.dumps(self.spec, sort_keys=True),
            }
            weights_path, log_path, spec_path = (self.out_dir / name for name in OUTPUTS)
            # the contexts exit (rename) in reverse order: spec.json, train_log.jsonl, final.pt
            with (
                atomic_write(weights_path, "wb") as weights,
                atomic_write(log_path, "wb") as log_copy,
                atomic_write(spec_path, "w") as spec_file,
                open(self.log_path, "rb") as src,
            ):
                json.dump(self.resolved(), spec_file, indent=2)
                shutil.copyfileobj(src, log_copy)
                torch.save(final, weights)
            log.info(
                "done: %s (val top-1 %.2f%%, top-5 %.2f%%)",
                weights_path,
                last_epoch["val_top1"],
                last_epoch["val_top5"],
            )
        distributed.barrier()


def finetune(
    spec: dict,
    device: str,
    train_csv: str,
    val_csv: str,
    pretrained: str,
    state_dir: str,
    out_dir: str,
) -> int:
    """Fine-tune one model (rules/finetune.smk); returns the process's exit code, whatever
    happens: 0 done, EXIT_REQUEUE, EXIT_REFUSED, EXIT_LOCKED, 1 a failure (`report_exit`).
    The split CSVs, the spec and the checkpoint are checked before anything is written."""
    try:
        try:
            trainer = Finetune(
                spec, distributed.init(device), train_csv, val_csv, pretrained, state_dir, out_dir
            )
        except BaseException as err:  # noqa: BLE001 - a refusal or a failure, reported
            return report_exit(1, err)
        return trainer.run()
    finally:
        distributed.cleanup()


def report_exit(code: int, error: BaseException | None) -> int:
    """Log why this rank stops and then `rank R of N: exitcode: C (meaning)`; returns C.

    error: the exception that ended the run (None: `code` is what the run returned). A refused
    spec or split CSV (EXIT_REFUSED) and a state dir held by another trainer (EXIT_LOCKED) are
    one line; a Ctrl-C is EXIT_INTERRUPTED; anything else is logged with its traceback and is
    1. The exit line is the rank's own record of its code: torchrun prints a trainer's code
    only when the trainer ends first, not when torchrun itself gets the signal (SLURM's
    SIGTERM before the time limit), which it reports as a SignalException and exit 1."""
    if isinstance(error, (SpecError, video.SplitCSVError)):
        code = EXIT_REFUSED
        log.error("%s", error)
    elif isinstance(error, state.StateLocked):
        code = EXIT_LOCKED
        log.error("%s", error)
    elif isinstance(error, KeyboardInterrupt):
        code = EXIT_INTERRUPTED
        log.error("interrupted (SIGINT)")
    elif error is not None:
        code = 1
        log.error("the fine-tune failed", exc_info=error)
    rank, world_size = distributed.launch_rank()
    log.log(
        logging.INFO if code == 0 else logging.WARNING if code == EXIT_REQUEUE else logging.ERROR,
        "rank %d of %d: exitcode: %d (%s)",
        rank,
        world_size,
        code,
        EXIT_MEANINGS.get(code, "failed"),
    )
    return code
