"""Feeding the train step without stopping the host: the next batch made on the device one
step ahead, and the loss read back one step late.

A CUDA step is a queue of kernels; the host only has to issue them faster than the GPU runs
them. Two things stopped the host every step: reading the loss (`.item()` waits for the whole
step) and making the next batch only once the step was done. Here:
- `Feeder` issues the next batch's host-to-device copy and augmentation (`prepare`) on a side
  CUDA stream as soon as the current step's forward and backward are issued, so they run
  while the GPU still works on this step (the copy on the copy engine, the augmentation's
  kernels beside the backward's). The main stream waits for the side stream only where it
  takes the batch. Nothing on the device draws random numbers (the erasing noise is
  counter-based), so the order of the work changes no value: resume stays bit-identical.
- `LateLoss` copies a step's loss to pinned host memory without blocking, and is read once
  the next step's work is queued: the host waits for the previous step only, and a
  non-finite loss still stops the run, naming its epoch and step.
On the CPU both are plain: the batch is made when fetched, the loss read at once.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch


class LateLoss:
    """One optimiser step's loss (a 0-d device tensor), readable later without a sync now."""

    def __init__(self, loss: torch.Tensor, where: str):
        self.where = where  # "epoch E, step S (global G)", for the error
        self.ready = None
        self.host = loss.detach()
        if loss.is_cuda:
            self.host = torch.empty((), dtype=loss.dtype, pin_memory=True)
            self.host.copy_(loss, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()

    def value(self) -> float:
        """The loss as a float (waits for its step only); raises FloatingPointError if it is
        not finite."""
        if self.ready is not None:
            self.ready.synchronize()
        value = float(self.host)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at {self.where}")
        return value


class Feeder:
    """Train batches from `batches` (a loader iterator) made ready on `device` by `prepare`
    (host-to-device copy, augmentation), one batch ahead, at most `count` of them (the
    epoch's remaining micro-batches: nothing is fetched past the epoch)."""

    def __init__(
        self,
        batches: Iterator,
        prepare: Callable[[tuple], tuple[torch.Tensor, ...]],
        device: torch.device,
        count: int,
    ):
        self.batches, self.prepare, self.count = batches, prepare, count
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.ready: tuple[torch.Tensor, ...] | None = None
        self.wait = 0.0  # seconds spent waiting for the loader, since the last `pop_wait`

    def fetch(self) -> None:
        """Issue the next batch's preparation (on the side stream), if the epoch has one."""
        if self.ready is not None or self.count == 0:
            return
        self.count -= 1
        start = time.perf_counter()
        batch = next(self.batches)
        self.wait += time.perf_counter() - start
        stream = torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext()
        with stream:
            self.ready = self.prepare(batch)

    def take(self) -> tuple[torch.Tensor, ...]:
        """The batch made ready ahead (made now if none was), usable on the current stream."""
        self.fetch()
        if self.ready is None:
            raise StopIteration("the epoch's batches are used up")
        ready, self.ready = self.ready, None
        if self.stream is not None:
            current = torch.cuda.current_stream(self.stream.device)
            current.wait_stream(self.stream)
            for tensor in ready:
                tensor.record_stream(current)  # its memory is not reused before this use
        return ready

    def pop_wait(self) -> float:
        wait, self.wait = self.wait, 0.0
        return wait


def move(batch: tuple, device: torch.device, augment_on_device: bool) -> tuple:
    """A loader batch's tensors on the device (non-blocking: the loader pins them on CUDA):
    (clips, labels) from `video.train_collate`, or, for augmentation on the device,
    (frames, sizes, params, labels) from `video.train_collate_frames` (sizes and params stay
    on the host: the augmenter reads them there)."""
    labels = batch[-2].to(device, non_blocking=True)
    if not augment_on_device:
        return batch[0].to(device, non_blocking=True), labels
    frames, sizes, params = batch[:3]
    return [f.to(device, non_blocking=True) for f in frames], sizes, params, labels


def make_clips(moved: tuple, augmenter) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips, labels) from a moved batch: the augmenter (`augment.ClipAugmenter`) makes the
    whole batch's clips when augmentation is on the device (augmenter not None)."""
    if augmenter is None:
        return moved
    frames, sizes, params, labels = moved
    return augmenter.batch(frames, params, sizes), labels


def prepare(batch: tuple, device: torch.device, augmenter) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch -> (clips, labels) on the device: `move`, then `make_clips`."""
    return make_clips(move(batch, device, augmenter is not None), augmenter)
