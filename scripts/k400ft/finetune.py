"""The fine-tuning engine, read as its loop: upstream's recipe, data parallel, preemption-safe.

REFERENCE.md §2.

Recipe (every number from the spec, i.e. config.yaml; the parts in k400ft.components): AdamW (betas,
eps) with weight decay on matrices only (no decay on 1-D parameters, biases, `pos_embed`,
`cls_token`); layer-wise lr decay (scale = layer_decay^(num_layers - 1 - layer_id), 0.75^(13 - id)
for ViT-S); lr and min_lr scaled by global_batch / 256; a per-step schedule of linear warmup from
0 then cosine to min_lr (upstream's `cosine_scheduler`, reproduced value for value:
k400ft.schedule); Mixup / CutMix with label smoothing and soft-target cross entropy (timm);
repeated augmentation (each video gives `num_sample` clips, all in the batch); bf16 autocast on
GPUs that have it, fp16 + GradScaler on those that do not, fp32 on CPU; no gradient clipping,
no EMA; seed + rank.

The global batch (videos per optimiser step) is a config number kept whatever the process count:
accumulation = global_batch / (batch_per_gpu x world_size) micro-steps, gradients all-reduced on
the last one only (DDP `no_sync` on the others). A global batch that does not split exactly is
refused with the numbers to change.

The loop, top-down in `Finetune`: `run` (the state dir held, every way out reported) -> `train`
(resume, then per epoch: train, save, validate, log, stop check; then the outputs) ->
`train_one_epoch` (optimiser steps; after each: the late loss, the logging hook, the stop check)
-> `self.step` (one optimiser step, `components.OptimiserStep`, which the plan times too:
micro-batches made on the device a step ahead by `feed.Feeder`, Mixup/CutMix, forward,
backward, AdamW). Around it, one job each:
k400ft.lifecycle (lock, resume, saves on epoch / timer / signal, the outputs), k400ft.bookkeeping
(train_log.jsonl, TensorBoard, the bar, log lines, the cost projection), k400ft.samplers (the
data order), k400ft.feed (the next batch a step ahead, the loss read a step late).

Failures and ownership: any exception ends the run at once: `run()` shuts the loaders' workers
down on every way out (`video.close_loaders`), so the process exits with the error last in its
log instead of waiting for ever on workers that ignore SIGTERM. The state dir belongs to one
trainer for the whole run: rank 0 holds its lock and a second trainer refuses (EXIT_LOCKED = 73)
naming the holder. A signal (SIGTERM / SIGUSR1) saves the state at the next step boundary on all
ranks and exits EXIT_REQUEUE = 75 (EX_TEMPFAIL: Snakemake's `--retries` / the SLURM requeue start
the job again and it resumes). Every way out of `finetune()` ends the rank's log with the reason
and an `exitcode: N` line (`report_exit`): torchrun reports a trainer's code only when the
trainer ends first, not when torchrun itself is signalled.

Logs (rank 0): the log records go to the job's log (stderr) and, while the lock is held, are
appended to `<state-dir>/trainer.log` after a header naming the run (`state.trainer_log`): the
job log can be deleted beside a running trainer (Snakemake removes it before a second job on the
same state dir starts); `trainer.log` keeps every run of the state dir. The declared outputs
(`final.pt`, `train_log.jsonl`, plus `spec.json`, the resolved spec) appear in the out dir only
when the last epoch is done.

One process:      torchrun --standalone --nproc-per-node=1 scripts/finetune.py --device cpu ...
One node, 4 GPUs: torchrun --standalone --nproc-per-node=4 scripts/finetune.py --device cuda ...
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from k400ft import (
    augment,
    components,
    distributed,
    feed,
    lifecycle,
    models,
    samplers,
    schedule,
    state,
    video,
)
from k400ft.bookkeeping import Bookkeeper
from k400ft.distributed import (
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_MEANINGS,
    EXIT_REFUSED,
    EXIT_REQUEUE,
)
from k400ft.io import atomic_write
from k400ft.lifecycle import Progress, StopRequested
from k400ft.schedule import SpecError

log = logging.getLogger("k400ft.finetune")

# the exit codes (EXIT_*, EXIT_MEANINGS) are k400ft.distributed's: the launcher reads them too


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
        self.spec, self.info, self.device = spec, info, info.device
        self.state_dir, self.out_dir = Path(state_dir), Path(out_dir)
        self.recipe, data = spec["recipe"], spec["data"]
        seed, classes = self.recipe["seed"], spec["num_classes"]
        torch.manual_seed(seed + info.rank)  # upstream: seed + rank
        np.random.seed(seed + info.rank)
        random.seed(seed + info.rank)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True

        # augmentation draws are a function of (recipe seed, epoch, video index) (video.item_rngs)
        placement = schedule.augment_placement(data.get("augment_on", "auto"), self.device)
        on_device = placement == "device"
        self.train_set = video.TrainDataset(
            train_csv, data, "train", seed=seed, num_classes=classes, apply_augment=not on_device
        )
        self.val_set = video.TrainDataset(
            val_csv, data, "validation", seed=seed, num_classes=classes
        )
        self.plan = schedule.make_plan(
            spec, info.world_size, len(self.train_set), len(self.val_set), self.device, train_csv
        )
        # augment_on device: the workers draw the parameters, the clips are made here
        compiled = self.plan.augment_compile
        self.augmenter = augment.ClipAugmenter(data, compiled=compiled) if on_device else None
        self.identity = lifecycle.run_identity(
            spec, {"train": train_csv, "val": val_csv, "pretrained": pretrained}
        )
        self.resolved = lifecycle.resolved_spec(spec, self.plan, self.identity)  # spec.json

        self.net = models.build_model(spec["arch"], classes)
        report = models.load_pretrained(self.net, pretrained, spec["pretrained_format"])
        if info.is_primary:
            log.info("pretrained %s (%s): %s", pretrained, spec["pretrained_format"], report)
        self.net.to(self.device)
        self.optimizer = components.make_optimizer(self.net, self.recipe, self.plan.lr, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.plan.precision == "fp16")
        self.mixup = components.make_mixup(self.recipe, classes)
        self.criterion = components.make_criterion(self.recipe, self.mixup)
        self.sampler, self.train_loader, self.val_loader = samplers.make_loaders(
            self.train_set, self.val_set, self.plan, info, seed, data["num_workers"]
        )
        self.books = Bookkeeper(self.plan, info, self.device, self.state_dir)
        self.checkpointer = lifecycle.Checkpointer(
            self.state_dir,
            info,
            self.identity,
            spec,
            (self.net, self.optimizer, self.scaler),
            self.books.train_log,
            self.plan.steps_per_epoch,
        )
        self.progress = Progress()
        self.model: nn.Module = self.net  # what forward runs: maybe compiled, DDP-wrapped
        self.pending_loss: feed.LateLoss | None = None  # the last step's, read back late
        self.meter = None  # the current epoch's (bookkeeping.EpochMeter)

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
            held.callback(self.checkpointer.release)  # last: after the exit line reached the log
            try:
                self.checkpointer.acquire()
                if self.info.is_primary:
                    held.enter_context(
                        state.trainer_log(self.state_dir, self.info.rank, self.info.world_size)
                    )
                code = self.train()
            except BaseException as err:  # noqa: BLE001 - every way out is reported
                error = err
            finally:
                video.close_loaders(self.train_loader, self.val_loader)
                if self.meter is not None:  # the bar's last draw before the exit line
                    self.meter.close()
            return report_exit(code, error)

    def train(self) -> int:
        """Resume, then every epoch left: its steps, a save, validation, the epoch's record;
        then the outputs. Returns 0, or EXIT_REQUEUE when a signal stopped it (state saved)."""
        plan = self.plan
        if self.info.is_primary:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            lifecycle.remove_partial_outputs(self.out_dir)
            with atomic_write(self.state_dir / "spec.json", "w") as handle:
                json.dump(self.resolved, handle, indent=2)
        distributed.barrier()
        self.progress = self.checkpointer.resume()
        self.model = runnable(self.net, plan.compile, self.device)
        self.step = self.optimiser_step()
        self.books.started(self.spec["arch"]["patchify"], self.progress.global_step)
        try:
            with self.checkpointer.signals_caught():
                while self.progress.epoch < plan.epochs:
                    record = self.run_epoch()
            self.finish(record)
            return 0
        except StopRequested:
            if self.info.is_primary:
                log.warning(
                    "stopped by signal %s; state saved in %s: run again to resume (exit %d)",
                    self.checkpointer.stopped_by(),
                    self.state_dir,
                    EXIT_REQUEUE,
                )
            return EXIT_REQUEUE
        finally:
            self.books.train_log.close()

    def optimiser_step(self) -> components.OptimiserStep:
        """The engine's optimiser step on the model as it runs (`runnable`: compiled, DDP)."""
        return components.OptimiserStep(
            self.model,
            self.optimizer,
            self.scaler,
            self.mixup,
            self.criterion,
            self.device,
            self.plan.precision,
            self.plan.accumulation,
            self.model.no_sync if distributed.active() else None,
        )

    def run_epoch(self) -> dict:
        """One epoch: its optimiser steps (unless a resume found them done), a save,
        validation, the epoch's record and summary line, then the stop check; returns the
        record."""
        plan, epoch, epoch_start = self.plan, self.progress.epoch, time.perf_counter()
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
            "lr": plan.lr_at(self.progress.global_step - 1),
            **metrics,
            "train_time_s": val_start - epoch_start,
            "val_time_s": time.perf_counter() - val_start,
        }
        self.books.epoch_done(record)
        self.progress = Progress(epoch=epoch + 1, global_step=self.progress.global_step)
        if self.progress.epoch < plan.epochs:
            self.check_stop()
        return record

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
        self.meter = self.books.epoch(epoch, progress.step_in_epoch)
        feeder = feed.Feeder(
            iter(self.train_loader),
            functools.partial(feed.prepare, device=self.device, augmenter=self.augmenter),
            self.device,
            (plan.steps_per_epoch - progress.step_in_epoch) * plan.accumulation,
        )
        while progress.step_in_epoch < plan.steps_per_epoch:
            lr = plan.lr_at(progress.global_step)
            step_loss = self.step(feeder, lr)
            where = f"epoch {epoch}, step {progress.step_in_epoch} (global {progress.global_step})"
            self.settle_loss()  # the previous step's: its work is done or nearly
            self.pending_loss = feed.LateLoss(step_loss, where)
            progress.step_in_epoch += 1
            progress.global_step += 1
            self.meter.stepped()
            if self.meter.line_due(progress.step_in_epoch):  # the logging hook
                self.settle_loss()
                self.meter.log_steps(progress.global_step, lr, feeder.pop_wait())
            self.meter.timed(last_step=progress.step_in_epoch == plan.steps_per_epoch)
            if progress.step_in_epoch < plan.steps_per_epoch:
                self.check_stop()
        self.settle_loss()
        self.meter.close()

    def settle_loss(self) -> None:
        """Account the step loss read back late (if one is pending) into the epoch's sum and
        the log window; a non-finite loss raises here, naming its epoch and step. Called
        before every log and save, so neither ever sees a step whose loss is unread."""
        if self.pending_loss is None:
            return
        value = self.pending_loss.value()
        self.pending_loss = None
        self.progress.loss_sum += value
        self.meter.add_loss(value)

    def check_stop(self) -> None:
        """At a step boundary: all ranks agree on a signal / a due timed save (one all-reduce)."""
        stop, save_due = self.checkpointer.poll()
        if stop:
            self.save("signal")
            raise StopRequested
        if save_due:
            self.save("timer")

    def save(self, reason: str) -> None:
        """Every rank calls this at the same point; rank 0 writes the state."""
        self.settle_loss()
        self.checkpointer.save(reason, self.progress)

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        """Single-view top-1/top-5 and CE loss over the val split's videos that decode (sums
        over ranks; one that fails is excluded and logged by the dataset)."""
        self.val_set.set_epoch(epoch)
        self.net.eval()
        # loss sum, top1, top5, count
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        for clips, labels, _ in self.val_loader:
            if not len(labels):  # every video of the batch excluded
                continue
            clips, labels = (
                clips.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )
            with components.autocast(self.device, self.plan.precision):
                logits = self.net(clips)
            logits = logits.float()
            top1, top5 = components.topk_correct(logits, labels, (1, 5))
            loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
            totals += torch.tensor(
                [loss.item(), top1, top5, len(labels)], dtype=torch.float64, device=self.device
            )
        distributed.all_reduce_sum(totals)
        loss_sum, top1, top5, count = totals.tolist()
        if not count:
            raise RuntimeError(f"{self.val_set.csv_path}: not one validation video decodes")
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

    def finish(self, last_epoch: dict) -> None:
        """The declared outputs, written by rank 0 as a set (`lifecycle.write_outputs`)."""
        if self.info.is_primary:
            lifecycle.write_outputs(
                self.out_dir, self.net, last_epoch, self.resolved, self.books.train_log.log_path
            )
        distributed.barrier()


def runnable(net: nn.Module, compile_model: bool, device: torch.device) -> nn.Module:
    """What the train step runs: `net` compiled (CUDA, if asked), then DDP when more than one
    process."""
    model: nn.Module = net
    if compile_model:
        model = torch.compile(model)
    if distributed.active():
        model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            gradient_as_bucket_view=True,
        )
    return model


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
                spec,
                distributed.init(device, spec.get("cpu_threads")),
                train_csv,
                val_csv,
                pretrained,
                state_dir,
                out_dir,
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
    elif isinstance(error, state.StateNotSaved):  # a full disk: one line says what to do
        code = 1
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
