"""The fine-tune's numbers: lr scaling and schedule, accumulation, the run plan, the cost.

Pure arithmetic on the spec (no files, no processes), tested on its own (tests/test_schedule.py):
the linear scaling rule (lr and min_lr x global_batch / 256), upstream's per-step schedule
(linear warmup from 0, then cosine to min_lr, value for value), the gradient accumulation that
keeps the global batch whatever the process count (refused with the numbers to change when it
does not split), the run plan (`Plan`: every derived number, saved as the resolved spec) and the
projection of a whole run's wall time and GPU-hours from a measured step (`project_cost`, used
by the engine after its first steps and by the plan stage).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger("k400ft.schedule")

LR_REFERENCE_BATCH = 256  # lr = base_lr x global_batch / 256 (upstream's linear scaling rule)
LOG_LINES_PER_EPOCH = 100  # step lines are means over steps_per_epoch // 100 steps (at least 1)


class SpecError(ValueError):
    """The spec's numbers cannot run as asked (the message says which to change)."""


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


def augment_placement(setting: str, device: torch.device) -> str:
    """Where train clips are augmented (data.augment_on): 'auto' -> on the device when it is a
    GPU (the workers only decode and draw), in the workers on CPU; 'workers' / 'device' as
    asked (device on CPU runs it in the training process)."""
    if setting not in ("auto", "workers", "device"):
        raise SpecError(f"data.augment_on must be auto, workers or device, got {setting!r}")
    if setting == "auto":
        return "device" if device.type == "cuda" else "workers"
    return setting


def augment_compile(setting: str, device: torch.device) -> bool:
    """Whether a batch augmented on the device runs compiled kernels (data.augment_compile,
    `clipbatch`): 'auto' -> on a GPU, where the fused kernels move about 20x fewer bytes than
    the eager ops (benchmarks/augment.py); not on the CPU, where they took as long per clip
    and each process first spends a minute or more compiling them (benchmarks/RESULTS.md).
    'on' / 'off' (YAML reads them unquoted as true / false: both are accepted)."""
    if setting not in ("auto", "on", "off", True, False):
        raise SpecError(f"data.augment_compile must be auto, on or off, got {setting!r}")
    if setting == "auto":
        return device.type == "cuda"
    return setting in ("on", True)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a GPU that supports it, else fp16; fp32 on CPU whatever was asked."""
    if device.type != "cuda":
        if precision not in ("auto", "fp32"):
            log.warning("recipe.precision %s ignored on CPU: training in fp32", precision)
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


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
    augment_compile: bool  # augment_on device: the compiled kernels (clipbatch)
    cpu_threads: int | None  # intra-op threads on the CPU device (None on CUDA)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimiser step `step` of this run (`lr_at_step`)."""
        return lr_at_step(step, self.lr, self.min_lr, self.warmup_steps, self.total_steps)


def make_plan(
    spec: dict,
    world_size: int,
    train_videos: int,
    val_videos: int,
    device: torch.device,
    train_csv: str = "the train split",
) -> Plan:
    """Check the spec's numbers against the process count and the split sizes (`train_csv`:
    the user's file, named when it holds fewer videos than one global batch)."""
    ft, recipe = spec["finetune"], spec["recipe"]
    accumulation = accumulation_steps(ft["global_batch"], ft["batch_per_gpu"], world_size)
    steps_per_epoch = train_videos // ft["global_batch"]
    if steps_per_epoch == 0:
        raise SpecError(
            f"{train_csv}: {train_videos} video(s); a fine-tune step takes one global batch "
            f"of {ft['global_batch']} (finetune.global_batch)"
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
        augment_compile=augment_compile(spec["data"].get("augment_compile", "auto"), device),
        cpu_threads=torch.get_num_threads() if device.type == "cpu" else None,
    )


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
