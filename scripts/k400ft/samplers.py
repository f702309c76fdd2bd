"""The fine-tune's data order: which videos each rank trains and validates on, and in what order.

`ResumableSampler`: DistributedSampler's permutation (seed + epoch), cut to the videos the
epoch's optimiser steps consume, from any position on: a resumed epoch skips the positions
already trained on without decoding them. `ShardSampler`: every validation video once over the
ranks. `make_loaders`: the engine's train and validation loaders; each owns its generator
(`loader_seed`), so starting them never draws from the main process's random streams, which
are saved and restored at step boundaries (k400ft.lifecycle).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from k400ft import distributed, schedule, video


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


def make_loaders(
    train_set: video.TrainDataset,
    val_set: video.TrainDataset,
    plan: schedule.Plan,
    info: distributed.DistInfo,
    seed: int,
    num_workers: int,
) -> tuple[ResumableSampler, DataLoader, DataLoader]:
    """(train sampler, train loader, validation loader) of one rank. Batches of (clips
    [batch x num_sample, 3, T, S, S], labels, video index), the clips of one video adjacent
    (upstream's `multiple_samples_collate`); or, for augmentation on the device,
    `video.train_collate_frames` batches (the dataset's `collate`). Persistent workers
    (`video.make_loader`): the sampler is iterated in this process, the epoch reaches the
    workers through the datasets' shared memory (set_epoch)."""
    sampler = ResumableSampler(
        train_set,
        info.world_size,
        info.rank,
        seed,
        plan.steps_per_epoch * plan.accumulation * plan.batch_per_gpu,
    )

    def loader(dataset: video.TrainDataset, order: Sampler, stream: int) -> DataLoader:
        return video.make_loader(
            dataset,
            batch_size=plan.batch_per_gpu,
            sampler=order,
            num_workers=num_workers,
            collate_fn=dataset.collate,
            device=info.device,
            seed=loader_seed(seed, info.rank, stream),
        )

    validation = ShardSampler(len(val_set), info.world_size, info.rank)
    return sampler, loader(train_set, sampler, 0), loader(val_set, validation, 1)
