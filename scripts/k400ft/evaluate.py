"""Multi-view evaluation of one model (REFERENCE sections 3 and 4): per-view logits + metrics.

Every test video is decoded once and cut into num_segments x num_crops views (the data
path's TestDataset); the views go through the model in batches of `batch_views`. Ranks
(torchrun) each take a shard of the videos through a DistributedSampler, which pads the
list to a multiple of the world size by repeating videos; the per-view results of all ranks
are gathered in memory by a collective (all_gather_object) and only rank 0 writes. Nothing
relies on another rank's files appearing (upstream merges per-rank text files without a
barrier). Duplicated views from the padding are dropped by (video, segment, crop).

Outputs (atomic): logits.npz (float16 logits [V, K] of unique views sorted by (video,
segment, crop), with int arrays video, label, segment, crop and the test CSV's paths [N])
and metrics.json. The metrics are computed from the float16 logits exactly as saved, so the
report stage recomputes them (and the views ablation) bit for bit from logits.npz.

One process:   torchrun --standalone --nproc-per-node=1 scripts/evaluate.py ... --device cpu
Several GPUs:  torchrun --standalone --nproc-per-node=4 scripts/evaluate.py ... --device cuda
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from k400ft import distributed, metrics, provenance
from k400ft.io import atomic_write
from k400ft.models import build_model, load_weights
from k400ft.video import TestDataset, close_loaders, describe_error, make_loader, test_collate

log = logging.getLogger("k400ft.evaluate")

LOG_EVERY_S = 60.0  # progress line interval


@dataclass
class Shard:
    """What one rank saw: per-view logits with their keys, and the broken videos it met."""

    logits: list[np.ndarray] = field(default_factory=list)  # float16 [b, K] per forward pass
    video: list[np.ndarray] = field(default_factory=list)
    segment: list[np.ndarray] = field(default_factory=list)
    crop: list[np.ndarray] = field(default_factory=list)
    label: list[np.ndarray] = field(default_factory=list)
    broken: dict[int, str] = field(default_factory=dict)  # video index -> reason

    def arrays(self, num_classes: int) -> dict[str, np.ndarray]:
        """The shard as flat arrays (empty arrays when this rank saw no working video)."""
        if not self.logits:
            empty = np.zeros(0, dtype=np.int64)
            return {
                "logits": np.zeros((0, num_classes), np.float16),
                "video": empty,
                "segment": empty,
                "crop": empty,
                "label": empty,
            }
        return {
            name: np.concatenate(getattr(self, name))
            for name in ("logits", "video", "segment", "crop", "label")
        }


def iter_view_batches(
    items: Iterable[dict], batch_views: int, broken: dict[int, str]
) -> Iterator[dict]:
    """Regroup the views of successive videos into batches of exactly `batch_views` views
    (the last one smaller), so a forward pass is full whatever S x C is. Broken videos
    (item["ok"] False) are recorded in `broken` with their reason (item["error"], or ""
    when the item carries none) and yield nothing.

    Yields dicts: views [b, 3, T, H, W], video, segment, crop, label (LongTensor [b])."""
    pending: list[dict] = []
    count = 0
    for item in items:
        if not item["ok"]:
            broken[int(item["video"])] = str(item.get("error") or "")
            continue
        n = len(item["views"])
        pending.append(
            {
                "views": item["views"],
                "video": torch.full((n,), int(item["video"]), dtype=torch.long),
                "segment": torch.as_tensor(item["segment"], dtype=torch.long),
                "crop": torch.as_tensor(item["crop"], dtype=torch.long),
                "label": torch.full((n,), int(item["label"]), dtype=torch.long),
            }
        )
        count += n
        while count >= batch_views:
            batch = {key: torch.cat([p[key] for p in pending]) for key in pending[0]}
            yield {key: value[:batch_views] for key, value in batch.items()}
            rest = {key: value[batch_views:] for key, value in batch.items()}
            count -= batch_views
            pending = [rest] if count else []
    if pending:
        yield {key: torch.cat([p[key] for p in pending]) for key in pending[0]}


def failure_reason(dataset: TestDataset, index: int) -> str:
    """Why video `index` did not decode: the first line of the error its loading raises
    (TestDataset logs it in the worker but returns only ok=False, so it is read again here;
    broken videos are rare and fail fast)."""
    try:
        dataset.load(index)
    except Exception as err:  # any decoder error is the answer, not a crash
        return describe_error(err)
    return "failed to decode in the loader worker, decoded on retry"


def run_shard(
    model: torch.nn.Module,
    dataset: TestDataset,
    loader: Iterable[list[dict]],
    batch_views: int,
    device: torch.device,
    num_videos: int,
) -> Shard:
    """Forward every view of this rank's videos (loader batches are lists of TestDataset
    items); logits kept as float16 on the CPU.

    On CUDA the forward runs under fp16 autocast, as upstream's final test does."""
    shard = Shard()
    items = (item for batch in loader for item in batch)
    amp = device.type == "cuda"
    seen, views_done, start, last_log = set(), 0, time.perf_counter(), time.perf_counter()
    with torch.inference_mode():
        for batch in iter_view_batches(items, batch_views, shard.broken):
            views = batch["views"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(views)
            shard.logits.append(logits.to(torch.float16).cpu().numpy())
            for key in ("video", "segment", "crop", "label"):
                getattr(shard, key).append(batch[key].numpy())
            seen.update(batch["video"].tolist())
            views_done += len(views)
            now = time.perf_counter()
            if now - last_log > LOG_EVERY_S and distributed.is_primary():
                last_log = now
                log.info(
                    "rank 0: %d of %d videos, %.1f views/s",
                    len(seen),
                    num_videos,
                    views_done / (now - start),
                )
    for index, reason in shard.broken.items():
        shard.broken[index] = reason or failure_reason(dataset, index)
    return shard


def merge_shards(
    shards: list[dict], num_videos: int, num_segments: int, num_crops: int
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Merge the ranks' shards: unique views sorted by (video, segment, crop), and the
    broken videos (index -> reason).

    Each shard is {"arrays": Shard.arrays(), "broken": {video: reason}}. Checks that every
    video of the test list is either complete (all S x C views) or broken, never both and
    never missing, so a lost or doubled shard cannot go unnoticed."""
    cat = {key: np.concatenate([s["arrays"][key] for s in shards]) for key in shards[0]["arrays"]}
    keep = metrics.unique_views(cat["video"], cat["segment"], cat["crop"])
    merged = {key: value[keep] for key, value in cat.items()}
    broken: dict[int, str] = {}
    for shard in shards:
        broken.update(shard["broken"])
    if len(merged["video"]) and (
        merged["segment"].max() >= num_segments or merged["crop"].max() >= num_crops
    ):
        raise RuntimeError(f"views outside {num_segments} segments x {num_crops} crops")
    videos, counts = np.unique(merged["video"], return_counts=True)
    incomplete = videos[counts != num_segments * num_crops]
    if len(incomplete):
        raise RuntimeError(
            f"videos without all {num_segments * num_crops} views: {incomplete[:10].tolist()}"
        )
    both = sorted(set(videos.tolist()) & set(broken))
    if both:
        raise RuntimeError(f"videos both evaluated and broken: {both[:10]}")
    missing = sorted(set(range(num_videos)) - set(videos.tolist()) - set(broken))
    if missing:
        raise RuntimeError(f"videos of the test list never evaluated: {missing[:10]}")
    return merged, dict(sorted(broken.items()))


def environment(info: distributed.DistInfo) -> dict:
    """Host, packages and devices of this run, for the provenance record."""
    env = {
        **provenance.host(("torch", "torchvision", "timm", "numpy", "decord")),
        "world_size": info.world_size,
        "device": info.device.type,
        "cpu_threads": torch.get_num_threads() if info.device.type == "cpu" else None,
    }
    if info.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(info.device)
        env["cuda"] = torch.version.cuda
    return env


def write_outputs(
    out_dir: Path,
    merged: dict[str, np.ndarray],
    broken: dict[int, str],
    paths: list[str],
    record: dict,
) -> dict:
    """Score the merged views, write logits.npz and metrics.json (atomically); return metrics."""
    scores = metrics.aggregate(
        merged["logits"], merged["video"], merged["segment"], merged["crop"], merged["label"]
    )
    result = {
        **metrics.accuracy(scores),
        "videos": len(scores.video),
        "videos_listed": len(paths),
        "excluded": [{"path": paths[i], "reason": reason} for i, reason in broken.items()],
        **record,
    }
    arrays = {
        "logits": merged["logits"].astype(np.float16),
        "video": merged["video"].astype(np.int32),
        "label": merged["label"].astype(np.int32),
        "segment": merged["segment"].astype(np.int16),
        "crop": merged["crop"].astype(np.int16),
        "paths": np.asarray(paths, dtype=np.str_),
    }
    with atomic_write(out_dir / "logits.npz", "wb") as handle:
        np.savez_compressed(handle, **arrays)
    with atomic_write(out_dir / "metrics.json", "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    return result


def evaluate(spec: dict, device: str, test_csv: str, weights: str, out_dir: str) -> dict | None:
    """Evaluate `weights` on every video of `test_csv`; rank 0 writes and returns the metrics.

    spec: {arch, data, evaluate: {num_segments, num_crops, batch_views}, num_classes,
    weights_format: 'ours' | 'videomae_finetuned'} (rules/evaluate.smk)."""
    start = time.perf_counter()
    info = distributed.init(device, spec.get("cpu_threads"))
    loader = None
    try:
        settings = spec["evaluate"]
        num_segments, num_crops = settings["num_segments"], settings["num_crops"]
        model = build_model(spec["arch"], spec["num_classes"])
        load_weights(model, weights, spec["weights_format"])
        model.to(info.device).eval()

        dataset = TestDataset(
            test_csv, spec["data"], num_segments, num_crops, num_classes=spec["num_classes"]
        )
        paths = [dataset.path(index) for index in range(len(dataset))]
        sampler = DistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=False, drop_last=False
        )
        loader = make_loader(
            dataset,
            batch_size=1,
            sampler=sampler,
            num_workers=spec["data"]["num_workers"],
            collate_fn=test_collate,
            device=info.device,
        )
        if distributed.is_primary():
            log.info(
                "%d videos x %d views on %d process(es), %s; weights %s (%s)",
                len(paths),
                num_segments * num_crops,
                info.world_size,
                info.device,
                weights,
                spec["weights_format"],
            )
        shard = run_shard(
            model, dataset, loader, settings["batch_views"], info.device, len(sampler)
        )
        gathered = distributed.all_gather_object(
            {"arrays": shard.arrays(spec["num_classes"]), "broken": shard.broken}
        )
        result = None
        if distributed.is_primary():
            merged, broken = merge_shards(gathered, len(paths), num_segments, num_crops)
            for index, reason in broken.items():
                log.warning("excluded broken video %s: %s", paths[index], reason)
            record = {
                "views": num_segments * num_crops,
                "num_segments": num_segments,
                "num_crops": num_crops,
                "num_frames": spec["data"]["num_frames"],
                "duplicates_dropped": sum(len(g["arrays"]["video"]) for g in gathered)
                - len(merged["video"]),
                "weights": str(weights),
                "weights_format": spec["weights_format"],
                "weights_sha256": provenance.file_sha256(weights),
                "test_csv": str(test_csv),
                "spec_sha256": provenance.json_sha256(spec),
                "environment": environment(info),
                "wall_time_s": round(time.perf_counter() - start, 3),
            }
            result = write_outputs(Path(out_dir), merged, broken, paths, record)
            log.info(
                "Top-1 %.2f  Top-5 %.2f  on %d videos (%d excluded), %d views each, %.0f s",
                result["top1"],
                result["top5"],
                result["videos"],
                len(broken),
                result["views"],
                result["wall_time_s"],
            )
        distributed.barrier()  # no rank leaves before the outputs exist
        return result
    finally:  # on every way out: workers shut down, so an error ends the process at once
        if loader is not None:
            close_loaders(loader)
        distributed.cleanup()
