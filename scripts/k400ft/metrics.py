"""Multi-view video classification metrics (REFERENCE section 4), numpy only.

Shared by the evaluation stage (which writes them) and the report stage (which recomputes
view subsets from the saved per-view logits without importing torch).

Upstream's merge, reproduced: softmax each view's logits, average the probability vectors
of a video's views, then Top-k on that mean; accuracy is the mean over unique videos.
Where upstream differs we do better on purpose: views are keyed by the integers (video,
segment, crop) (upstream concatenates the segment and crop numbers into a string, which
collides from 10 views on), and a distributed sampler's padding duplicates are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VideoScores:
    """Per-video result of aggregating views: one row per unique video, sorted by video."""

    video: np.ndarray  # [N] int, video index (row of the test CSV)
    probs: np.ndarray  # [N, K] float64, mean over the video's views of the per-view softmax
    label: np.ndarray  # [N] int
    views: np.ndarray  # [N] int, number of unique views averaged


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (max-subtracted, so large logits do not overflow)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def unique_views(video: np.ndarray, segment: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each (video, segment, crop), sorted by that key.

    A DistributedSampler pads the dataset to a multiple of the world size by repeating
    videos, so the same view can arrive twice; the first one seen is kept."""
    video, segment, crop = (np.asarray(a, dtype=np.int64) for a in (video, segment, crop))
    if not video.shape == segment.shape == crop.shape or video.ndim != 1:
        raise ValueError(
            f"video, segment, crop must be 1-D of one length, got shapes "
            f"{video.shape}, {segment.shape}, {crop.shape}"
        )
    order = np.lexsort((crop, segment, video))  # stable: ties keep their arrival order
    key = np.stack([video[order], segment[order], crop[order]], axis=1)
    first = np.ones(len(order), dtype=bool)
    first[1:] = np.any(key[1:] != key[:-1], axis=1)
    return order[first]


def aggregate(
    logits: np.ndarray,
    video: np.ndarray,
    segment: np.ndarray,
    crop: np.ndarray,
    label: np.ndarray,
) -> VideoScores:
    """Per-video mean of the per-view softmax, duplicates (same video, segment, crop) dropped.

    Raises ValueError when the arrays disagree in length or one video carries two labels."""
    logits = np.asarray(logits)
    label = np.asarray(label, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(video) or len(label) != len(video):
        raise ValueError(
            f"logits must be [V, K] with V = len(video) = len(label); got logits "
            f"{logits.shape}, {len(video)} videos, {len(label)} labels"
        )
    keep = unique_views(video, segment, crop)
    video_kept = np.asarray(video, dtype=np.int64)[keep]
    label_kept = label[keep]
    probs = softmax(logits[keep])
    videos, start, counts = np.unique(video_kept, return_index=True, return_counts=True)
    # keep is sorted by video, so each video's views form one contiguous run from `start`
    sums = np.add.reduceat(probs, start, axis=0) if len(start) else probs[:0]
    first_label = label_kept[start]
    mismatch = label_kept != np.repeat(first_label, counts)
    if mismatch.any():
        bad = np.unique(video_kept[mismatch])
        raise ValueError(f"videos whose views carry different labels: {bad[:10].tolist()}")
    return VideoScores(video=videos, probs=sums / counts[:, None], label=first_label, views=counts)


def topk_correct(scores: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
    """Whether each row's label is among its k highest scores.

    Ties are broken by class index, lower first, exactly like a stable descending sort or
    `np.argmax` (which returns the first maximum): the label's rank is the number of classes
    scoring strictly higher plus the number scoring equal with a lower index, and the label
    counts as correct when that rank is below k. So the result never depends on how a sort
    implementation orders equal values (torch.topk leaves it unspecified). k >= K is always
    correct."""
    scores = np.asarray(scores)
    label = np.asarray(label, dtype=np.int64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if scores.ndim != 2 or len(scores) != len(label):
        raise ValueError(
            f"scores must be [N, K] with N = len(label); got {scores.shape}, {len(label)}"
        )
    if len(label) and (label.min() < 0 or label.max() >= scores.shape[1]):
        raise ValueError(
            f"labels must lie in [0, {scores.shape[1]}), got {label.min()}..{label.max()}"
        )
    own = scores[np.arange(len(label)), label][:, None]
    lower_index = np.arange(scores.shape[1])[None, :] < label[:, None]
    rank = (scores > own).sum(axis=1) + ((scores == own) & lower_index).sum(axis=1)
    return rank < k


def accuracy(scores: VideoScores, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent over the unique videos of `scores`: {"top1": ..., "top5": ...}."""
    if len(scores.label) == 0:
        raise ValueError("no videos to score")
    return {
        f"top{k}": 100.0 * float(topk_correct(scores.probs, scores.label, k).mean()) for k in ks
    }


def view_subsets(num_segments: int, num_crops: int) -> dict[str, tuple[list[int], list[int]]]:
    """The views ablation: name "SxC" -> (segments, crops) kept, from one S x C evaluation.

    1x1 is the middle segment (S // 2) and the centre crop (C // 2); 1xC all crops of the
    middle segment; Sx1 the centre crop of every segment; SxC everything. With S = 5 and
    C = 3 these are 1x1, 1x3, 5x1 and 5x3 (names collapse when S or C is 1)."""
    every_segment, every_crop = list(range(num_segments)), list(range(num_crops))
    middle, centre = [num_segments // 2], [num_crops // 2]
    return {
        "1x1": (middle, centre),
        f"1x{num_crops}": (middle, every_crop),
        f"{num_segments}x1": (every_segment, centre),
        f"{num_segments}x{num_crops}": (every_segment, every_crop),
    }


def subset_scores(
    logits: np.ndarray,
    video: np.ndarray,
    segment: np.ndarray,
    crop: np.ndarray,
    label: np.ndarray,
    segments: list[int],
    crops: list[int],
) -> VideoScores:
    """`aggregate` of only the views whose segment and crop are listed."""
    mask = np.isin(segment, segments) & np.isin(crop, crops)
    if not mask.any():
        raise ValueError(f"no views with segment in {segments} and crop in {crops}")
    return aggregate(logits[mask], video[mask], segment[mask], crop[mask], label[mask])
