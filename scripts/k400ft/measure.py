"""The timing harness: the engine's train step, model alone or fed by the loader, and an evaluation.

One piece of code that `benchmarks/train_step.py` and the `plan` stage (k400ft.plan) both call.
`Trainer` runs the fine-tuning engine's own optimiser step (`components.OptimiserStep`:
Mixup/CutMix, autocast forward, soft-target cross entropy, backward, AdamW on the layer-decay
groups; with `data.augment_on` device the clips are made on the device first, compiled as
`data.augment_compile` says, as the engine does); `measure_model` times it on synthetic clips
(the model alone) and fed by the real loader (`video.TrainDataset` on real files, the
configured workers and augmentation placement) in the engine's loop (`time_fed`: `feed.Feeder`
and `feed.LateLoss` around the same step object), the compile of the augmentation
(`time_augment_compile`), takes the fed step apart (`time_parts`), and times the forward pass
(per-epoch validation), peak memory and MFU (`model_flops`, `peak_flops`);
`measure_evaluation` times the evaluation stage's own loop (`evaluate.run_shard`: every view of
a video, decoded once) per video; `compare_decoders` decodes a sample with both `data.decoder`
choices (CPU per item, the items whose frames differ).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from k400ft import augment, clipbatch, components, decoders, evaluate, feed, schedule, video
from k400ft.models import build_model

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
GPU_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.5,
    "H100": 989.4,  # SXM
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "A10G": 70.0,
    "L4": 121.0,
    "V100": 125.0,
}
PREFETCH = 2  # batches each loader worker makes ahead (video.make_loader's prefetch_factor)
ROUNDS = 3  # a fed rate is timed over at least this many batches of every worker
LR = 1e-4  # the timed steps' learning rate (speed does not depend on it)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_flops(arch: dict, num_classes: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one clip, counted on the meta device (every
    matmul, convolution and attention product at 2 FLOPs per multiply-add)."""
    with torch.device("meta"):
        model = build_model(arch, num_classes)
        clip = torch.randn(1, 3, arch["num_frames"], arch["img_size"], arch["img_size"])
    with FlopCounterMode(display=False) as counter:
        logits = model(clip)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model(clip).sum().backward()
    del logits
    return float(forward), float(counter.get_total_flops())


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(FLOP/s, where the figure comes from) for MFU: the data-sheet peak of a known GPU, else
    the best this process measures on a large matmul in the step's dtype."""
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return (
                    tflops * 1e12,
                    f"{name}: data-sheet dense {precision} peak {tflops:.0f} TFLOP/s",
                )
    dtype = components.AUTOCAST_DTYPE[precision]
    size = 4096 if device.type == "cuda" else 1024
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = 0.0
    for _ in range(5):  # the best of 5 windows: other processes on a shared machine only slow it
        synchronize(device)
        start, reps = time.perf_counter(), 0
        while time.perf_counter() - start < 0.2:
            a @ b
            reps += 1
        synchronize(device)
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - start))
    return best, (
        f"best measured {size}^3 {precision} matmul on {device.type}: {best / 1e12:.3f} TFLOP/s "
        "(MFU vs measured GEMM)"
    )


class ChannelsLast(nn.Module):
    """The model fed channels_last_3d clips (a benchmark setting, `--channels-last`)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.net(clips.contiguous(memory_format=torch.channels_last_3d))


class Ready:
    """A feeder of one batch already on the device, every time (the model alone)."""

    def __init__(self, clips: torch.Tensor, labels: torch.Tensor):
        self.batch = clips, labels

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch

    def fetch(self) -> None:
        pass


class Trainer:
    """The fine-tuning engine's optimiser step (`components.OptimiserStep`, the very object
    the engine runs) on one device, for timing (random weights: speed does not depend on
    them), one micro-batch per step at a fixed lr."""

    def __init__(
        self,
        spec: dict,
        device: torch.device,
        precision: str,
        compile_model: bool = False,
        channels_last: bool = False,
    ):
        self.arch, self.recipe, self.device = spec["arch"], spec["recipe"], device
        self.num_classes = spec["num_classes"]
        self.precision = schedule.resolve_precision(precision, device)
        self.net = build_model(self.arch, self.num_classes).to(device)
        model = self.net
        if channels_last:
            self.net.patch_embed.to(memory_format=torch.channels_last_3d)
            model = ChannelsLast(self.net)
        self.model = torch.compile(model) if compile_model else model
        optimizer = components.make_optimizer(self.net, self.recipe, LR, device)
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        mixup = components.make_mixup(self.recipe, self.num_classes)
        criterion = components.make_criterion(self.recipe, mixup)
        self.optimiser_step = components.OptimiserStep(
            self.model, optimizer, scaler, mixup, criterion, device, self.precision
        )
        data = spec["data"]
        self.augment_on = schedule.augment_placement(data.get("augment_on", "auto"), device)
        self.augment_compiled = schedule.augment_compile(
            data.get("augment_compile", "auto"), device
        )
        self.augmenter = (
            augment.ClipAugmenter(data, compiled=self.augment_compiled)
            if self.augment_on == "device"
            else None
        )
        self.data = data

    def clips(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Synthetic clips and labels, made on the device: "model alone" copies nothing."""
        shape = (count, 3, self.arch["num_frames"], self.arch["img_size"], self.arch["img_size"])
        return (
            torch.randn(shape, device=self.device),
            torch.randint(0, self.num_classes, (count,), device=self.device),
        )

    def step(self, clips: torch.Tensor, labels: torch.Tensor) -> None:
        """One engine step on clips already on the device."""
        self.optimiser_step(Ready(clips, labels), LR)

    def prepare(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch -> (clips, labels) on the device, as the engine makes them."""
        return feed.prepare(batch, self.device, self.augmenter)

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> None:
        with components.autocast(self.device, self.precision):
            self.model(clips)


def time_steps(
    function: Callable, batches: Iterable, warmup: int, steps: int, device: torch.device
) -> dict:
    """Median and mean seconds per call of function(*batch) after `warmup` calls, each call
    waited for; and the first call's seconds (a loader's start: its workers and first batch)."""
    times, first = [], 0.0
    iterator = iter(batches)
    for index in range(warmup + steps):
        start = time.perf_counter()
        function(*next(iterator))
        synchronize(device)
        if index == 0:
            first = time.perf_counter() - start
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return {"first_s": first, "step_s": statistics.median(times), "mean_s": sum(times) / len(times)}


def time_fed(trainer: Trainer, batches: Iterator, warmup: int, steps: int) -> dict:
    """The engine's fed loop: its optimiser step (`Trainer.optimiser_step`, the engine's own)
    taking batches from `feed.Feeder` (the next batch made on the device while this step
    runs), each step's loss read back one step late (`feed.LateLoss`), in the order
    `Finetune.train_one_epoch` runs them; timed over `steps` steps after `warmup`: seconds
    per step and the share of it spent waiting for the loader. Each timed step fetches the
    next batch, the last one included (one batch past the window), so the window holds
    `steps` waits, not `steps` - 1."""
    device = trainer.device
    feeder = feed.Feeder(batches, trainer.prepare, device, warmup + steps + 1)
    pending, start = None, time.perf_counter()
    for index in range(warmup + steps):
        if index == warmup:
            synchronize(device)
            start = time.perf_counter()
            feeder.pop_wait()
        loss = trainer.optimiser_step(feeder, LR)
        if pending is not None:
            pending.value()
        pending = feed.LateLoss(loss, f"step {index}")
    pending.value()
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"step_s": elapsed / steps, "data_wait": feeder.pop_wait() / elapsed}


def every_kind(batch: tuple, sampler: augment.ClipSampler, draws: int = 200) -> tuple:
    """A loader batch (`video.train_collate_frames`) whose clips run every graph of the
    compiled batch: per video, one clip per op kind (`clipbatch.KINDS`) and one without any
    op, each with the video's first clip's crop and flip and the batch's first erasing box.
    The ops are timm's RandAugment draws under fixed seeds (the caller's RNG streams kept); a
    kind the config never draws in `draws` clips is left out, as training would never run it."""
    frames, sizes, params, labels, _ = batch
    ops: dict[str, tuple] = {}
    for draw in range(draws):
        with video.item_rngs(0, 0, draw):
            for op in sampler.rand_augment([]):
                ops.setdefault(clipbatch.op_kind(op[0]), op)
        if len(ops) == len(clipbatch.KINDS):
            break
    erase = next((c.erase for clips in params for c in clips if c.erase is not None), None)
    clips = [
        [
            dataclasses.replace(first, ops=chosen, erase=erase)
            for chosen in [(), *((op,) for op in ops.values())]
        ]
        for first in (video_params[0] for video_params in params)
    ]
    count = sum(len(c) for c in clips)
    return frames, sizes, clips, labels[:1].repeat(count), torch.zeros(count, dtype=torch.int64)


def time_augment_compile(trainer: Trainer, batch: tuple) -> dict:
    """With the compiled augmentation: the graphs it compiles in this process (every op kind,
    the crop and the erasing, run once on `every_kind(batch)`, so that none compiles later in
    a timed step) and the seconds that takes beyond a second call (what a fine-tune pays once,
    in its first steps)."""
    if trainer.augmenter is None or not trainer.augment_compiled:
        return {}
    batch = every_kind(batch, augment.ClipSampler(trainer.data))
    before = clipbatch.compile_stats()
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        trainer.prepare(batch)
        synchronize(trainer.device)
        seconds.append(time.perf_counter() - start)
    after = clipbatch.compile_stats()
    return {
        "augment_graphs": after["graphs"] - before["graphs"],
        "augment_compile_s": max(seconds[0] - seconds[1], 0.0),
    }


def time_parts(trainer: Trainer, batches: Iterator, steps: int) -> dict[str, float]:
    """The fed step taken apart, each part waited for: median ms of waiting for the loader,
    the host-to-device copy, the augmentation on the device (0 with augment_on workers) and
    the model step (Mixup, forward, backward, AdamW)."""
    device, on_device = trainer.device, trainer.augmenter is not None
    parts: dict[str, list[float]] = {"wait": [], "copy": [], "augment": [], "model": []}
    for _ in range(steps):
        marks = [time.perf_counter()]
        batch = next(batches)
        marks.append(time.perf_counter())
        moved = feed.move(batch, device, on_device)
        synchronize(device)
        marks.append(time.perf_counter())
        if on_device:  # with augment_on workers there is nothing to time here
            moved = feed.make_clips(moved, trainer.augmenter)
            synchronize(device)
        marks.append(time.perf_counter())
        clips, labels = moved
        trainer.step(clips, labels)
        synchronize(device)
        marks.append(time.perf_counter())
        for name, begin, end in zip(parts, marks, marks[1:], strict=False):
            parts[name].append(end - begin)
    return {f"{name}_ms": 1e3 * statistics.median(values) for name, values in parts.items()}


def repeat(value):
    while True:
        yield value


def train_loader(spec: dict, csv: Path, batch: int, workers: int, device: torch.device):
    """The engine's train loader over `csv` (augmentation where data.augment_on puts it)."""
    placement = schedule.augment_placement(spec["data"].get("augment_on", "auto"), device)
    dataset = video.TrainDataset(
        csv, spec["data"], "train", seed=0, apply_augment=placement == "workers"
    )
    return video.make_loader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=dataset.collate,
        device=device,
        drop_last=True,
    )


def endless(loader) -> Iterator[tuple]:
    if len(loader) == 0:
        raise ValueError(
            f"the loader gives no full batch: {len(loader.dataset)} videos for a batch of "
            f"{loader.batch_size}"
        )
    epoch = 0
    while True:
        loader.dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def steady_window(workers: int, steps: int, prefetch: int = PREFETCH) -> tuple[int, int]:
    """(warm-up, timed) batches for a rate fed by a loader of `workers` workers: the warm-up
    drains the batches the workers made ahead (workers x prefetch, their first burst), the
    timed window spans at least ROUNDS batches of every worker (pure)."""
    return max(workers * prefetch, 1), max(steps, ROUNDS * max(workers, 1))


def measure_model(
    spec: dict,
    device: torch.device,
    precision: str,
    *,
    batch: int,
    steps: int,
    warmup: int,
    compile_model: bool = False,
    channels_last: bool = False,
    csv: Path | None = None,
    workers: int = 0,
    loader_batches: int = 10,
) -> dict:
    """Every figure of one model at one setting. spec: {arch, recipe, data, num_classes}.

    "Model alone" is the step on clips already on the device (no copy: the engine's copies
    overlap its steps); with `csv`, the loader alone and the engine's fed loop are timed over
    a steady-state window (`steady_window`), and the fed step is taken apart (`time_parts`).
    On CUDA without compile, the compiled model alone is timed too."""
    clips_per_step = batch * spec["data"]["augment"]["num_sample"]
    built = time.perf_counter()
    trainer = Trainer(spec, device, precision, compile_model, channels_last)
    built = time.perf_counter() - built
    forward_flops, train_flops = model_flops(spec["arch"], spec["num_classes"])
    peak, peak_source = peak_flops(device, trainer.precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synthetic = time_steps(
        trainer.step, repeat(trainer.clips(clips_per_step)), warmup, steps, device
    )
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": trainer.precision,
        "compile": compile_model,
        "channels_last_3d": channels_last,
        "augment_on": trainer.augment_on,
        "augment_compile": trainer.augment_compiled,
        "batch_videos": batch,
        "clips_per_step": clips_per_step,
        "train_gflops_per_clip": train_flops / 1e9,
        "forward_gflops_per_clip": forward_flops / 1e9,
        "step_s": synthetic["step_s"],
        "clips_per_s": clips_per_step / synthetic["step_s"],
        "peak_source": peak_source,
        "build_s": built,
    }
    result["mfu"] = result["clips_per_s"] * train_flops / peak
    val = time_steps(
        trainer.forward, repeat((trainer.clips(clips_per_step)[0],)), warmup, steps, device
    )
    result["val_clips_per_s"] = clips_per_step / val["step_s"]
    if csv is not None:
        loader = train_loader(spec, csv, batch, workers, device)
        burst, window = steady_window(workers, max(steps, loader_batches))
        try:
            batches = endless(loader)
            started = time.perf_counter()
            next(batches)
            result["loader_start_s"] = time.perf_counter() - started
            alone = time_steps(lambda *b: None, batches, burst, window, device)
            result["workers"] = workers
            result["loader_clips_per_s"] = clips_per_step / alone["mean_s"]
            result.update(time_augment_compile(trainer, next(batches)))
            fed = time_fed(trainer, batches, burst, window)
            parts = time_parts(trainer, batches, steps)
        finally:
            video.close_loaders(loader)
        result["fed_window"] = {"warmup_batches": burst, "timed_batches": window}
        result["fed_step_s"] = fed["step_s"]
        result["fed_clips_per_s"] = clips_per_step / fed["step_s"]
        result["data_wait"] = fed["data_wait"]
        result["fed_parts"] = parts
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["gpu_mem_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
        if not compile_model:  # what recipe.compile would give
            compiled = Trainer(spec, device, precision, True, channels_last)
            timed = time_steps(
                compiled.step, repeat(compiled.clips(clips_per_step)), warmup, steps, device
            )
            result["compiled_clips_per_s"] = clips_per_step / timed["step_s"]
    return result


def measure_evaluation(
    spec: dict, device: torch.device, test_csv: Path, workers: int, warmup: int = 1
) -> dict:
    """Videos per second of the evaluation stage's own loop (every num_segments x num_crops
    view, decoded once, forward in batches of batch_views) on the videos of `test_csv`, the
    first `warmup` of them untimed. spec: {arch, data, evaluate, num_classes}."""
    settings = spec["evaluate"]
    model = build_model(spec["arch"], spec["num_classes"]).to(device).eval()
    dataset = video.TestDataset(
        test_csv, spec["data"], settings["num_segments"], settings["num_crops"]
    )
    loader = video.make_loader(
        dataset, batch_size=1, num_workers=workers, collate_fn=video.test_collate, device=device
    )
    started: list[float] = []

    def timed_items():  # the loop's items; the clock starts at the first one after the warm-up
        for number, batch in enumerate(loader):
            if number == warmup:
                synchronize(device)
                started.append(time.perf_counter())
            yield batch

    try:
        evaluate.run_shard(
            model, dataset, timed_items(), settings["batch_views"], device, len(dataset)
        )
        synchronize(device)
    finally:
        video.close_loaders(loader)
    timed = len(dataset) - warmup
    if not started or timed < 1:
        raise ValueError(f"{test_csv}: {len(dataset)} videos, need more than {warmup}")
    return {
        "eval_videos": timed,
        "eval_videos_per_s": timed / (time.perf_counter() - started[0]),
        "views": settings["num_segments"] * settings["num_crops"],
    }


def compare_decoders(train_csv: Path, test_csv: Path, data_cfg: dict) -> dict[str, Any]:
    """Each sampled video decoded by every decoder through the datasets' own `load` (open,
    count, the train window of a seeded draw or the test indices, the frames): median CPU ms
    per train and per test item, videos a decoder cannot read, and the items whose frames
    differ."""
    datasets = {
        name: (
            video.TrainDataset(train_csv, {**data_cfg, "decoder": name}),
            video.TestDataset(test_csv, {**data_cfg, "decoder": name}, 1, 1),
        )
        for name in decoders.DECODERS
    }
    seconds = {name: {"train": [], "test": []} for name in decoders.DECODERS}
    failed = dict.fromkeys(decoders.DECODERS, 0)
    differing: list[str] = []
    train, test = datasets["decord"]  # every decoder's datasets hold the same rows
    items = [("train", n) for n in range(len(train))] + [("test", n) for n in range(len(test))]
    for kind, number in items:
        frames = {}
        for name, (train_set, test_set) in datasets.items():
            start = time.process_time()
            try:
                if kind == "train":
                    frames[name] = train_set.load(number, np.random.default_rng([0, number]))
                else:
                    frames[name] = test_set.load(number)
            except Exception:  # any decoder error: this decoder cannot read the file
                failed[name] += 1
                continue
            seconds[name][kind].append(time.process_time() - start)
        if len(frames) == len(decoders.DECODERS):
            first, *others = frames.values()
            if any(not np.array_equal(first, other) for other in others):
                differing.append((train if kind == "train" else test).path(number))
    return {
        "items": len(items),
        "ms_per_item": {
            name: {
                kind: 1e3 * statistics.median(values) if values else None
                for kind, values in by_kind.items()
            }
            for name, by_kind in seconds.items()
        },
        "cannot_read": failed,
        "differing": len(differing),
        "differing_videos": differing[:10],
    }


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
