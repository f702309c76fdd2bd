"""What a fine-tune and its evaluation will cost on this node, measured before spending GPU-days.

The measuring code of `benchmarks/train_step.py` and of the `plan` stage (rules/plan.smk): one
piece of code called two ways. `Trainer.step` is the fine-tuning engine's micro-step (Mixup/
CutMix, autocast forward, soft-target cross entropy, backward, AdamW on the layer-decay groups;
with `data.augment_on` device the clips are made on the device first, as the engine does);
`measure_model` times it on synthetic clips (the model alone) and fed by the real loader
(`video.TrainDataset` on real files, the configured workers and augmentation placement), the
forward pass (per-epoch validation), peak memory and MFU; `measure_evaluation` times the
evaluation stage's own loop (`evaluate.run_shard`: every view of a video, decoded once) per
video; `project_run` turns the figures into the wall time and GPU-hours of the whole run for
the configured GPU count (data parallel, assuming linear scaling: one all-reduce of 22M
parameters per optimiser step is small next to a step); `recommendations` says what follows
from them. `compare_decoders` decodes the sampled videos with both `data.decoder` choices
(CPU per item, and the items whose frames differ) and `decoder_advice` says which to use.

`plan` (scripts/plan.py) runs all of it on a sample of the user's own train and test videos
and writes `cost.json` and `cost.md`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from k400ft import augment, components, decoders, distributed, evaluate, feed, schedule, video
from k400ft.io import atomic_write
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
DATA_BOUND = 0.10  # a fed step waiting for data more than this share of its time is data-bound
MEMORY_HEADROOM = 0.85  # batch growth is suggested up to this share of the GPU's memory
PREFETCH = 2  # batches each loader worker makes ahead (video.make_loader's prefetch_factor)
ROUNDS = 3  # a fed rate is timed over at least this many batches of every worker
COMPILE_GAIN = 1.05  # recipe.compile is advised when the compiled model is this much faster


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


class Trainer:
    """The fine-tuning engine's micro-step on one device, for timing (random weights: speed
    does not depend on them)."""

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
        self.channels_last = channels_last
        self.net = build_model(self.arch, self.num_classes).to(device)
        if channels_last:
            self.net.patch_embed.to(memory_format=torch.channels_last_3d)
        self.model = torch.compile(self.net) if compile_model else self.net
        self.optimizer = components.make_optimizer(self.net, self.recipe, 1e-4, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.mixup = components.make_mixup(self.recipe, self.num_classes)
        self.criterion = components.make_criterion(self.recipe, self.mixup)
        placement = schedule.augment_placement(spec["data"].get("augment_on", "auto"), device)
        self.augment_on = placement
        self.augmenter = augment.ClipAugmenter(spec["data"]) if placement == "device" else None

    def clips(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Synthetic clips and labels, made on the device: "model alone" copies nothing."""
        shape = (count, 3, self.arch["num_frames"], self.arch["img_size"], self.arch["img_size"])
        return (
            torch.randn(shape, device=self.device),
            torch.randint(0, self.num_classes, (count,), device=self.device),
        )

    def autocast(self) -> torch.autocast:
        return components.autocast(self.device, self.precision)

    def forward_backward(self, clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mixup/CutMix, autocast forward, loss, backward; returns the loss (on the device)."""
        clips, targets = (
            components.mix_clips(self.mixup, clips, labels) if self.mixup else (clips, labels)
        )
        if self.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        with self.autocast():
            loss = self.criterion(self.model(clips), targets)
        self.scaler.scale(loss).backward()
        return loss.detach()

    def optimiser_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, clips: torch.Tensor, labels: torch.Tensor) -> None:
        """One step on clips already on the device."""
        self.forward_backward(clips, labels)
        self.optimiser_step()

    def prepare(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch -> (clips, labels) on the device, as the engine makes them."""
        return feed.prepare(batch, self.device, self.augmenter)

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> None:
        with self.autocast():
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
    """The engine's fed loop (`feed.Feeder`: the next batch made on the device while this step
    runs; the loss read one step late), timed over `steps` steps after `warmup`: seconds per
    step and the share of it spent waiting for the loader."""
    device = trainer.device
    feeder = feed.Feeder(batches, trainer.prepare, device, warmup + steps)
    pending, start = None, time.perf_counter()
    for index in range(warmup + steps):
        if index == warmup:
            synchronize(device)
            start = time.perf_counter()
            feeder.pop_wait()
        loss = trainer.forward_backward(*feeder.take())
        feeder.fetch()
        trainer.optimiser_step()
        late = feed.LateLoss(loss, f"step {index}")
        if pending is not None:
            pending.value()
        pending = late
    pending.value()
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"step_s": elapsed / steps, "data_wait": feeder.pop_wait() / elapsed}


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
        clips, labels = feed.make_clips(moved, trainer.augmenter)
        synchronize(device)
        marks.append(time.perf_counter())
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


def project_run(
    figures: dict,
    global_batch: int,
    epochs: int,
    gpus: int,
    train_videos: int,
    val_videos: int,
    eval_gpus: int | None = None,
    test_videos: int | None = None,
    unit: str = "GPU",
) -> dict:
    """Wall hours and GPU-hours of the whole fine-tune (accumulation x the loader-fed micro-step
    when measured, else the model alone; per-epoch validation at the forward rate; plus the
    fixed start: the process's imports and model build, the train and validation loaders'
    start) and of the evaluation (at the measured videos/s per GPU), on `gpus` (`eval_gpus`)
    processes."""
    batch = figures["batch_videos"]
    fixed_s = (
        figures.get("import_s", 0.0)
        + figures.get("build_s", 0.0)
        + 2 * figures.get("loader_start_s", 0.0)
    )
    accumulation = schedule.accumulation_steps(global_batch, batch, gpus)
    micro = figures.get("fed_step_s", figures["step_s"])
    fed = schedule.project_cost(
        accumulation * micro,
        train_videos,
        global_batch,
        epochs,
        gpus,
        val_videos,
        figures["val_clips_per_s"] * gpus,
        unit=unit,
    )
    alone = schedule.project_cost(
        accumulation * figures["step_s"], train_videos, global_batch, epochs, gpus, unit=unit
    )
    result = {
        "accumulation": accumulation,
        "train_wall_h": fed.wall_hours + fixed_s / 3600,
        "train_gpu_h": fed.gpu_hours + gpus * fixed_s / 3600,
        "start_s": fixed_s,
        "train_wall_h_model_alone": alone.wall_hours,
        "optimiser_steps": fed.steps_total,
        "describe": fed.describe(),
    }
    if "eval_videos_per_s" in figures and test_videos:
        hours = test_videos / (figures["eval_videos_per_s"] * (eval_gpus or 1)) / 3600
        result["eval_wall_h"] = hours
        result["eval_gpu_h"] = hours * (eval_gpus or 1)
    return result


def recommendations(
    figures: dict,
    *,
    node_cpus: int,
    procs_per_node: int,
    global_batch: int,
    gpus: int,
    transcode: bool,
    device: str,
) -> list[str]:
    """Plain advice that follows from the measured figures (pure: tested on its own)."""
    advice = []
    wait = figures.get("data_wait")
    if wait is not None:
        workers = figures.get("workers", 0)
        per_worker = figures["loader_clips_per_s"] / max(workers, 1)
        needed = math.ceil(figures["clips_per_s"] / per_worker)
        available = max(node_cpus // procs_per_node - 1, 1)
        if wait <= DATA_BOUND:
            advice.append(
                f"compute-bound: the loader keeps up (the step waits for data {100 * wait:.0f}% "
                "of its time)"
            )
        elif needed <= workers:
            advice.append(
                f"the step waits for data {100 * wait:.0f}% of its time although its {workers} "
                f"worker(s) make {figures['loader_clips_per_s']:.1f} clips/s alone (the model "
                f"takes {figures['clips_per_s']:.1f}): they share cores with the training "
                "process; give the job more CPUs than workers + 1 per process"
            )
        elif needed <= available:
            advice.append(
                f"data-bound (the step waits for data {100 * wait:.0f}% of its time): raise "
                f"data.num_workers to {needed} (this node has {node_cpus} cores for "
                f"{procs_per_node} process(es): up to {available} workers each)"
            )
        else:
            advice.append(
                f"data-bound (the step waits for data {100 * wait:.0f}% of its time) even with "
                f"every core: {needed} workers per process would keep up, this node has "
                f"{available} per process ({node_cpus} cores, {procs_per_node} process(es))"
            )
            if figures.get("augment_on") == "workers" and device == "cuda":
                advice.append("set data.augment_on: device (the workers then only decode and draw)")
            if not transcode:
                advice.append(
                    "turn on data.transcode: a short-keyframe copy makes each clip's decode "
                    "cheaper (README: short-keyframe copies)"
                )
    compiled, eager = figures.get("compiled_clips_per_s"), figures["clips_per_s"]
    if compiled and not figures.get("compile") and compiled > COMPILE_GAIN * eager:
        advice.append(
            f"set recipe.compile: true: the compiled model alone makes {compiled:.1f} clips/s, "
            f"{100 * (compiled / eager - 1):.0f}% more than eager ({eager:.1f})"
        )
    peak, total = figures.get("peak_mem_gib"), figures.get("gpu_mem_gib")
    if peak and total:
        batch = figures["batch_videos"]
        fits = int(batch * MEMORY_HEADROOM * total / peak)
        per_gpu = global_batch // gpus if global_batch % gpus == 0 else 0
        options = [d for d in range(1, per_gpu + 1) if per_gpu % d == 0 and d <= fits]
        if options and max(options) > batch:
            advice.append(
                f"finetune.batch_per_gpu can grow to {max(options)} (peak {peak:.1f} GiB of "
                f"{total:.0f} GiB at {batch}; a divisor of global_batch / GPUs = "
                f"{global_batch // gpus}, so fewer accumulation steps, the same recipe)"
            )
    return advice


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


def decoder_advice(compared: dict[str, Any], configured: str) -> list[str]:
    """Which `data.decoder` the comparison on the user's sample argues for (pure)."""
    ms, items = compared["ms_per_item"], compared["items"]
    lost = compared["cannot_read"]["pyav"] - compared["cannot_read"]["decord"]
    if lost > 0:
        return [
            f"PyAV cannot read {lost} sampled video(s) that decord reads: keep data.decoder: decord"
        ]
    if compared["differing"]:
        return [
            f"decord and PyAV gave different frames for {compared['differing']} of {items} "
            "sampled items (open GOPs: PyAV's are the frames asked for, README Video "
            f"decoders), e.g. {compared['differing_videos'][0]}"
            + ("; set data.decoder: pyav" if configured == "decord" else "")
        ]
    saving = {
        kind: 1 - ms["pyav"][kind] / ms["decord"][kind]
        for kind in ("train", "test")
        if ms["pyav"][kind] and ms["decord"][kind]
    }
    if configured == "decord" and saving.get("train", 0) > 0:
        return [
            f"data.decoder: pyav gives the same frames on all {items} sampled items with "
            f"{_less_or_more(saving['train'])} CPU per train item"
            + (f" and {_less_or_more(saving['test'])} per test item" if "test" in saving else "")
        ]
    return []


def _less_or_more(saving: float) -> str:
    """A relative saving in words: 0.28 -> '28% less', -0.48 -> '48% more'."""
    return f"{100 * abs(saving):.0f}% {'less' if saving >= 0 else 'more'}"


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)


def sample_rows(rows: list[tuple[str, int]], count: int, seed: int = 0) -> list[tuple[str, int]]:
    """Up to `count` rows spread over the classes: round-robin over the labels (sorted), each
    label's rows in a seeded random order."""
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    queues = [
        [group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_label.items())
    ]
    picked: list[tuple[str, int]] = []
    while len(picked) < min(count, len(rows)):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop())
    return picked


def read_splits(
    spec: dict, train_csv: str | Path, test_csv: str | Path
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The rows of the user's train and test CSVs, both checked before anything is measured
    (SplitCSVError naming the file, SpecError naming the key): every line and label, enough
    train videos for one batch of every model (the fed step times whole batches, from a
    sample of `plan.videos`), and at least 2 test videos (the evaluation's timing starts
    after one warm-up video)."""
    batch, name = max((m["finetune"]["batch_per_gpu"], n) for n, m in spec["models"].items())
    if spec["plan"]["videos"] < batch:
        raise schedule.SpecError(
            f"plan.videos {spec['plan']['videos']} is smaller than one batch of {name} "
            f"(finetune.batch_per_gpu {batch}): the plan times whole batches"
        )
    train_rows = video.read_split_csv(
        train_csv,
        spec["num_classes"],
        min_videos=batch,
        need=f"the plan times batches of {batch} (finetune.batch_per_gpu of {name})",
    )
    test_rows = video.read_split_csv(
        test_csv,
        spec["num_classes"],
        min_videos=2,
        need="the plan times the evaluation on at least 2 videos, the first untimed",
    )
    return train_rows, test_rows


def render_markdown(plan: dict) -> str:
    """cost.md: the measured figures, the projections and the advice, per model."""
    lines = [
        "# Planned cost of the fine-tunes and evaluations",
        "",
        f"Measured on {plan['node']['device']} ({plan['node']['cpus']} CPU cores), "
        f"{plan['sample']['train_videos']} train and {plan['sample']['test_videos']} test videos "
        "of your splits; projections for the configured launch "
        f"({_counted(plan['launch']['gpus'], plan['launch']['unit'])} for fine-tuning, "
        f"{plan['launch']['eval_gpus']} for evaluation, {plan['launch']['epochs']} epochs of "
        f"{plan['launch']['train_videos']} videos).",
        "",
        "| Model | batch / GPU | model alone (clips/s) | fed by the loader (clips/s) | data wait "
        "| fine-tune wall | fine-tune GPU-h | evaluation wall | evaluation GPU-h | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in plan["models"].items():
        f, p = model["figures"], model["projection"]
        memory = f"{f['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in f else "-"
        lines.append(
            f"| {name} | {f['batch_videos']} | {f['clips_per_s']:.1f} | "
            f"{f.get('fed_clips_per_s', float('nan')):.1f} | {100 * f.get('data_wait', 0):.0f}% | "
            f"{_hours(p['train_wall_h'])} | {p['train_gpu_h']:.1f} | "
            f"{_hours(p.get('eval_wall_h', 0))} | {p.get('eval_gpu_h', 0):.2f} | {memory} |"
        )
    parted = {
        name: m["figures"] for name, m in plan["models"].items() if "fed_parts" in m["figures"]
    }
    if parted:
        lines += [
            "",
            "The fed step taken apart (median ms, each part waited for), and the engine's "
            "pipelined fed step against the model alone on clips already on the device:",
            "",
            "| Model | loader wait | host-to-device | augmentation | model step | fed step "
            "| fed / alone | compiled alone (clips/s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, f in parted.items():
            p = f["fed_parts"]
            compiled = f.get("compiled_clips_per_s")
            lines.append(
                f"| {name} | {p['wait_ms']:.1f} | {p['copy_ms']:.1f} | {p['augment_ms']:.1f} | "
                f"{p['model_ms']:.1f} | {1e3 * f['fed_step_s']:.1f} | "
                f"{100 * f['fed_clips_per_s'] / f['clips_per_s']:.0f}% | "
                + (f"{compiled:.1f} |" if compiled else "- |")
            )
    compared = plan.get("decoders")
    if compared:
        lines += [
            "",
            f"Decoders on the sample ({compared['items']} items, CPU ms per item; "
            f"data.decoder is {plan['launch']['decoder']}):",
            "",
            "| decoder | train item | test item | cannot read |",
            "|---|---|---|---|",
        ]
        for name, ms in compared["ms_per_item"].items():
            cells = [f"{ms[k]:.1f}" if ms[k] is not None else "-" for k in ("train", "test")]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | {compared['cannot_read'][name]} |")
        lines.append(f"\nItems whose frames differ between the decoders: {compared['differing']}.")
    lines += ["", "## What to do", ""]
    for name, model in plan["models"].items():
        for advice in model["advice"]:
            lines.append(f"- {name}: {advice}")
    for advice in plan.get("decoder_advice", []):
        lines.append(f"- decoder: {advice}")
    lines.append("")
    return "\n".join(lines)


def _counted(count: int, unit: str) -> str:
    """'1 GPU', '8 GPUs', '1 CPU process', '2 CPU processes' (`unit` as cost.json names it)."""
    noun = unit.replace("-", " ")
    if count != 1:
        noun += "es" if noun.endswith("s") else "s"
    return f"{count} {noun}"


def _hours(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.1f} min"


def plan(
    spec: dict, device: str, train_csv: str, test_csv: str, threads: int, out_dir: str
) -> dict:
    """Measure every model of `spec` on a sample of the splits and write cost.json / cost.md.

    spec: {models: {name: {arch, finetune: {global_batch, batch_per_gpu}}}, recipe, data,
    evaluate, num_classes, launch: {finetune, evaluate}, plan: {videos, test_videos, steps,
    warmup}}."""
    import_s = process_age()  # a fine-tune process pays the same imports before it starts
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    launch, settings = spec["launch"], spec["plan"]
    procs = launch["finetune"]["procs_per_node"]
    gpus = launch["finetune"]["nodes"] * procs
    eval_gpus = launch["evaluate"]["nodes"] * launch["evaluate"]["procs_per_node"]
    workers = distributed.loader_workers(threads, procs)  # what each fine-tune process gets
    train_rows, test_rows = read_splits(spec, train_csv, test_csv)
    record: dict[str, Any] = {
        "node": {
            "device": torch.cuda.get_device_name(torch_device)
            if torch_device.type == "cuda"
            else "cpu",
            "cpus": threads,  # the job's CPUs on this node
            "machine_cpus": os.cpu_count(),
        },
        "launch": {
            "gpus": gpus,
            "eval_gpus": eval_gpus,
            "unit": "GPU" if torch_device.type == "cuda" else "CPU-process",
            "epochs": spec["recipe"]["epochs"],
            "train_videos": len(train_rows),
            "test_videos": len(test_rows),
            "workers_per_process": workers,
            "augment_on": schedule.augment_placement(
                spec["data"].get("augment_on", "auto"), torch_device
            ),
            "transcode": bool(spec.get("transcode")),
            "decoder": spec["data"].get("decoder", "decord"),
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        train_sample = Path(tmp) / "train.csv"
        test_sample = Path(tmp) / "test.csv"
        video.write_split_csv(train_sample, sample_rows(train_rows, settings["videos"]))
        video.write_split_csv(test_sample, sample_rows(test_rows, settings["test_videos"] + 1))
        record["sample"] = {
            "train_videos": min(settings["videos"], len(train_rows)),
            "test_videos": min(settings["test_videos"] + 1, len(test_rows)),
        }
        for name, model in spec["models"].items():
            model_spec = {
                "arch": model["arch"],
                "recipe": spec["recipe"],
                "data": spec["data"],
                "num_classes": spec["num_classes"],
                "evaluate": spec["evaluate"],
            }
            figures = measure_model(
                model_spec,
                torch_device,
                spec["recipe"]["precision"],
                batch=model["finetune"]["batch_per_gpu"],
                steps=settings["steps"],
                warmup=settings["warmup"],
                compile_model=bool(spec["recipe"]["compile"]) and torch_device.type == "cuda",
                csv=train_sample,
                workers=workers,
            )
            figures.update(measure_evaluation(model_spec, torch_device, test_sample, workers))
            figures["import_s"] = import_s
            projection = project_run(
                figures,
                model["finetune"]["global_batch"],
                spec["recipe"]["epochs"],
                gpus,
                len(train_rows),
                len(test_rows),  # per-epoch validation runs on val.csv, which test.csv is
                eval_gpus,
                len(test_rows),
                record["launch"]["unit"],
            )
            record["models"][name] = {
                "figures": figures,
                "projection": projection,
                "advice": recommendations(
                    figures,
                    node_cpus=threads,
                    procs_per_node=procs,
                    global_batch=model["finetune"]["global_batch"],
                    gpus=gpus,
                    transcode=record["launch"]["transcode"],
                    device=torch_device.type,
                ),
            }
        record["decoders"] = compare_decoders(train_sample, test_sample, spec["data"])
    record["decoder_advice"] = decoder_advice(record["decoders"], record["launch"]["decoder"])
    out = Path(out_dir)
    with atomic_write(out / "cost.json", "w") as handle:
        json.dump(record, handle, indent=2)
    with atomic_write(out / "cost.md", "w") as handle:
        handle.write(render_markdown(record))
    return record
