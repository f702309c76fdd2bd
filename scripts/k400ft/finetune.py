"""The fine-tuning engine: upstream's recipe (REFERENCE.md §2), data parallel, preemption-safe.

Recipe (every number from the spec, i.e. config.yaml): AdamW (betas, eps) with weight decay on
matrices only (no decay on 1-D parameters, biases, `pos_embed`, `cls_token`); layer-wise lr
decay (scale = layer_decay^(num_layers - 1 - layer_id), 0.75^(13 - id) for ViT-S); lr and
min_lr scaled by global_batch / 256; a per-step schedule of linear warmup from 0 then cosine to
min_lr (upstream's `cosine_scheduler`, reproduced value for value); Mixup / CutMix with label
smoothing and soft-target cross entropy (timm); repeated augmentation (each video gives
`num_sample` clips, all in the batch); bf16 autocast on GPUs that have it, fp16 + GradScaler on
those that do not, fp32 on CPU; no gradient clipping, no EMA; seed + rank.

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
(seed, rank, epoch, step). The sampler's permutation is DistributedSampler's (seed + epoch); a
resumed epoch skips the index positions already trained on (no decoding of skipped videos);
augmentation draws are a function of (seed, epoch, video index) (`video.item_rngs`), whatever
worker runs them; the loaders own their generators, so starting them never draws from the main
process's random streams; those streams (Mixup's numpy draws, drop path's torch draws) are saved
per rank at the step boundary and restored. The epoch's running train loss is saved per rank
too, and the log is cut back to its length at the save, so the log of a resumed run equals the
uninterrupted one. A kill between two saves costs the steps since the last save (at most
checkpoint_minutes, or one epoch).

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
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from k400ft import augment, distributed, feed, models, provenance, state, video
from k400ft.io import atomic_write

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
LR_REFERENCE_BATCH = 256  # lr = base_lr x global_batch / 256 (upstream's linear scaling rule)
LOG_LINES_PER_EPOCH = 100  # step lines are means over steps_per_epoch // 100 steps (at least 1)
PROJECT_AFTER_STEPS = 20  # log the cost projection after this many steps (or the first epoch)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
OUTPUTS = ("final.pt", "train_log.jsonl", "spec.json")  # the out dir's files, written as a set


class SpecError(ValueError):
    """The spec's numbers cannot run as asked (the message says which to change)."""


# ----------------------------------------------------------------------------------------------
# Pure functions: the numbers that must be exactly right


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Upstream's linear scaling rule: lr = base_lr x global_batch / 256 (min_lr likewise)."""
    return base_lr * global_batch / LR_REFERENCE_BATCH


def accumulation_steps(global_batch: int, batch_per_gpu: int, world_size: int) -> int:
    """Micro-steps per optimiser step so that batch_per_gpu x world_size x steps = global_batch.

    Raises SpecError (a ValueError) naming the numbers to change when global_batch does not
    split exactly."""
    per_pass = batch_per_gpu * world_size
    if global_batch % per_pass == 0:
        return global_batch // per_pass
    hint = (
        f"set finetune.batch_per_gpu to a divisor of {global_batch // world_size} "
        f"(global_batch / processes: {_divisors(global_batch // world_size)})"
        if global_batch % world_size == 0
        else f"run a number of processes that divides the global batch ({_divisors(global_batch)})"
    )
    raise SpecError(
        f"finetune.global_batch {global_batch} is not a multiple of finetune.batch_per_gpu "
        f"{batch_per_gpu} x {world_size} processes = {per_pass}, so gradient accumulation cannot "
        f"keep it: {hint}, or change finetune.global_batch (and base_lr with it)"
    )


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def lr_at_step(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimiser step `step` (0-based), upstream's `cosine_scheduler` exactly.

    Upstream builds `np.linspace(0, lr, warmup_steps)` (endpoint included: step 0 has lr 0,
    step warmup_steps - 1 has lr) followed by `min_lr + (lr - min_lr) / 2 x (1 + cos(pi i / n))`
    for i = 0 .. n - 1, n = total_steps - warmup_steps; it is indexed per optimiser step.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside the schedule [0, {total_steps})")
    if step < warmup_steps:
        return _warmup(lr, warmup_steps)[step]
    i, n = step - warmup_steps, total_steps - warmup_steps
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * i / n))


@functools.lru_cache(maxsize=4)
def _warmup(lr: float, warmup_steps: int) -> tuple[float, ...]:
    return tuple(np.linspace(0.0, lr, warmup_steps).tolist())


def param_groups(model: models.VideoViT, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with layer-wise lr decay (upstream's `get_parameter_groups`),
    built by timm's `param_groups_layer_decay` from the model's `group_matcher`.

    A parameter gets no weight decay when it is 1-D, its name ends in `.bias`, or its name is
    in `model.no_weight_decay()` (pos_embed, cls_token); its lr scale is
    layer_decay^(num_layers - 1 - layer id) (ViT-S: num_layers 14, scale 0.75^(13 - id),
    id 0 = cls_token/pos_embed/patch_embed, i + 1 = blocks.i, 13 = fc_norm/head). Frozen
    parameters are left out. One group per (layer, decay) pair, in the order parameters first
    appear, each with `params`, `weight_decay` and `lr_scale` (lr = lr x lr_scale every step).
    """
    return param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        no_weight_decay_list=(*sorted(model.no_weight_decay()), "*.bias"),
        layer_decay=layer_decay,
    )


def augment_placement(setting: str, device: torch.device) -> str:
    """Where train clips are augmented (data.augment_on): 'auto' -> on the device when it is a
    GPU (the workers only decode and draw), in the workers on CPU; 'workers' / 'device' as
    asked (device on CPU runs it in the training process)."""
    if setting not in ("auto", "workers", "device"):
        raise SpecError(f"data.augment_on must be auto, workers or device, got {setting!r}")
    if setting == "auto":
        return "device" if device.type == "cuda" else "workers"
    return setting


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a GPU that supports it, else fp16; fp32 on CPU whatever was asked."""
    if device.type != "cuda":
        if precision not in ("auto", "fp32"):
            log.warning("recipe.precision %s ignored on CPU: training in fp32", precision)
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_mixup(recipe: dict, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix with upstream's arguments (None when both alphas are 0)."""
    if recipe["mixup"] <= 0 and recipe["cutmix"] <= 0:
        return None
    return Mixup(
        mixup_alpha=recipe["mixup"],
        cutmix_alpha=recipe["cutmix"],
        prob=recipe["mixup_prob"],
        switch_prob=recipe["mixup_switch_prob"],
        mode=recipe["mixup_mode"],
        label_smoothing=recipe["smoothing"],
        num_classes=num_classes,
    )


def make_criterion(recipe: dict, mixup: Mixup | None) -> nn.Module:
    """Upstream: soft-target CE when mixing (smoothing is inside the mixed targets), else
    label-smoothing CE when smoothing > 0, else plain CE."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if recipe["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe["smoothing"])
    return nn.CrossEntropyLoss()


def mix_clips(
    mixup: Mixup, clips: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup/CutMix of a batch of clips [B, C, T, H, W] -> (mixed clips, soft targets [B, K]).

    timm's Mixup cuts `x[:, :, y0:y1, x0:x1]`, i.e. dims 2 and 3, which on a 5-D clip would be
    (T, H) while the box is drawn from the last two dims (H, W). Viewing the clips as
    [B, C x T, H, W] makes timm cut (H, W) of every frame and channel, as upstream's video
    copy does; mixup proper is elementwise and unaffected. In place, like timm."""
    b, c, t, h, w = clips.shape
    mixed, targets = mixup(clips.view(b, c * t, h, w), labels)
    return mixed.view(b, c, t, h, w), targets


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[int]:
    """Number of rows whose label is among the k highest logits, for each k (k capped at the
    number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


@dataclass(frozen=True)
class Projection:
    """What the whole run will cost, from a measured optimiser-step time."""

    step_seconds: float
    steps_total: int
    wall_hours: float
    gpu_hours: float  # wall hours x processes (GPUs; CPU processes on CPU)
    unit: str = "GPU"

    def describe(self) -> str:
        wall = (
            f"{self.wall_hours:.1f} h"
            if self.wall_hours >= 1
            else f"{60 * self.wall_hours:.1f} min"
        )
        return (
            f"{self.steps_total} optimiser steps x {self.step_seconds:.3f} s = {wall} wall, "
            f"{self.gpu_hours:.2f} {self.unit}-hours"
        )


def project_cost(
    step_seconds: float,
    train_videos: int,
    global_batch: int,
    epochs: int,
    gpus: int,
    val_videos: int = 0,
    val_videos_per_second: float | None = None,
    unit: str = "GPU",
) -> Projection:
    """Wall time and GPU-hours of a full run: steps = (train_videos // global_batch) x epochs
    optimiser steps of `step_seconds` each (measured with `gpus` processes, data loading
    included), plus one validation pass over `val_videos` per epoch when its speed is given."""
    steps = (train_videos // global_batch) * epochs
    seconds = steps * step_seconds
    if val_videos and val_videos_per_second:
        seconds += epochs * val_videos / val_videos_per_second
    hours = seconds / 3600
    return Projection(step_seconds, steps, hours, hours * gpus, unit)


# ----------------------------------------------------------------------------------------------
# Data order


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle, seed + epoch permutation, rank::world_size) restricted to
    the `per_rank` videos the epoch's optimiser steps consume, from position `start` on.

    per_rank = steps_per_epoch x accumulation x batch_per_gpu, so per epoch the ranks together
    take exactly steps_per_epoch x global_batch distinct videos (never the padding)."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, per_rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if per_rank > self.num_samples:
            raise ValueError(f"{per_rank} videos per rank asked, the epoch has {self.num_samples}")
        self.per_rank = per_rank
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start : self.per_rank])

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world_size, ... in order, unpadded: every video counted once
    over the ranks (validation sums correct counts and totals across ranks)."""

    def __init__(self, length: int, num_replicas: int, rank: int):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def loader_seed(seed: int, rank: int, stream: int) -> int:
    """Seed of a data loader's own generator (shuffling is the sampler's, worker seeds come from
    this generator): never drawn from the main process's random streams, which are saved and
    restored at step boundaries and must not depend on when loaders start."""
    return int(np.random.SeedSequence([seed, rank, stream]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class Plan:
    """Numbers derived from the spec and the process count (saved as the resolved spec)."""

    world_size: int
    global_batch: int
    batch_per_gpu: int
    accumulation: int
    num_sample: int
    train_videos: int
    val_videos: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int
    lr: float
    min_lr: float
    precision: str
    compile: bool
    log_every: int
    device: str
    augment_on: str  # where train clips are augmented: workers | device


def make_plan(
    spec: dict, world_size: int, train_videos: int, val_videos: int, device: torch.device
) -> Plan:
    """Check the spec's numbers against the process count and the split sizes."""
    ft, recipe = spec["finetune"], spec["recipe"]
    accumulation = accumulation_steps(ft["global_batch"], ft["batch_per_gpu"], world_size)
    steps_per_epoch = train_videos // ft["global_batch"]
    if steps_per_epoch == 0:
        raise SpecError(
            f"the train split has {train_videos} videos, fewer than one global batch "
            f"(finetune.global_batch {ft['global_batch']})"
        )
    num_sample = spec["data"]["augment"]["num_sample"]
    if (recipe["mixup"] > 0 or recipe["cutmix"] > 0) and (ft["batch_per_gpu"] * num_sample) % 2:
        raise SpecError(
            f"Mixup/CutMix pair each clip with the batch flipped and need an even "
            f"number of clips per pass: finetune.batch_per_gpu {ft['batch_per_gpu']} x "
            f"data.augment.num_sample {num_sample} is odd"
        )
    compile_model = bool(recipe["compile"]) and device.type == "cuda"
    if recipe["compile"] and not compile_model:
        log.warning(
            "recipe.compile ignored on %s (torch.compile is used on CUDA only)", device.type
        )
    return Plan(
        world_size=world_size,
        global_batch=ft["global_batch"],
        batch_per_gpu=ft["batch_per_gpu"],
        accumulation=accumulation,
        num_sample=num_sample,
        train_videos=train_videos,
        val_videos=val_videos,
        steps_per_epoch=steps_per_epoch,
        epochs=recipe["epochs"],
        total_steps=steps_per_epoch * recipe["epochs"],
        warmup_steps=steps_per_epoch * recipe["warmup_epochs"],
        lr=scaled_lr(ft["base_lr"], ft["global_batch"]),
        min_lr=scaled_lr(recipe["min_lr"], ft["global_batch"]),
        precision=resolve_precision(recipe["precision"], device),
        compile=compile_model,
        log_every=max(1, steps_per_epoch // LOG_LINES_PER_EPOCH),
        device=device.type,
        augment_on=augment_placement(spec["data"].get("augment_on", "auto"), device),
    )


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
        placement = augment_placement(self.data_cfg.get("augment_on", "auto"), self.device)
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
        self.plan = make_plan(
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
        self.optimizer = torch.optim.AdamW(
            param_groups(self.net, self.recipe["weight_decay"], self.recipe["layer_decay"]),
            lr=self.plan.lr,
            betas=tuple(self.recipe["betas"]),
            eps=self.recipe["eps"],
            fused=self.device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.plan.precision == "fp16")
        self.mixup = make_mixup(self.recipe, spec["num_classes"])
        self.criterion = make_criterion(self.recipe, self.mixup)
        self.sampler = ResumableSampler(
            self.train_set,
            info.world_size,
            info.rank,
            self.recipe["seed"],
            self.plan.steps_per_epoch * self.plan.accumulation * self.plan.batch_per_gpu,
        )
        # persistent workers (video.make_loader): the sampler is iterated in this process, the
        # epoch reaches the workers through the datasets' shared memory (set_epoch)
        self.train_loader = self._loader(self.train_set, self.sampler, stream=0)
        self.val_loader = self._loader(
            self.val_set, ShardSampler(len(self.val_set), info.world_size, info.rank), stream=1
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

    def autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=AUTOCAST_DTYPE[self.plan.precision],
            enabled=self.plan.precision != "fp32",
        )

    def _loader(self, dataset, sampler: Sampler, stream: int) -> DataLoader:
        """Batches of (clips [batch x num_sample, 3, T, S, S], labels, video index), the clips
        of one video adjacent (upstream's `multiple_samples_collate`); or, for augmentation on
        the device, `video.train_collate_frames` batches (the dataset's `collate`)."""
        return video.make_loader(
            dataset,
            batch_size=self.plan.batch_per_gpu,
            sampler=sampler,
            num_workers=self.data_cfg["num_workers"],
            collate_fn=dataset.collate,
            device=self.device,
            seed=loader_seed(self.recipe["seed"], self.info.rank, stream),
        )

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
            lr = lr_at_step(
                progress.global_step, plan.lr, plan.min_lr, plan.warmup_steps, plan.total_steps
            )
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            step_loss = torch.zeros((), device=self.device)
            for micro in range(plan.accumulation):
                clips, labels = feeder.take()
                if self.mixup is not None:
                    clips, targets = mix_clips(self.mixup, clips, labels)
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
        projection = project_cost(
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
            top1, top5 = topk_correct(logits, labels, (1, 5))
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
                    "lr": lr_at_step(
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
