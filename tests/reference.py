"""Reference implementations the library is tested and benchmarked against; not the library.

Every formula and number here is written out from REFERENCE.md (and the upstream code it
describes), never imported from `k400ft`: a reference that shared the code it checks would
agree with any bug in it. Each one computes, the slow and plain way upstream does, what a part
of `k400ft` computes:

- `ClipAugment`: one augmented train clip with PIL and timm, upstream's `_aug_frame` +
  `spatial_sampling` (with `apply_same_draw`, RandAugment's one draw for all frames; the crop
  box `upstream_crop_box`). The training path (`k400ft.augment`: the same draws as parameters,
  applied with torch ops in the workers or on the device) is tested against it
  (tests/test_augment.py) and benchmarked against it (benchmarks/train_data.py).
- `naive_test_view`: one test view decoded on its own with decord, resized with OpenCV, as
  upstream makes each view (`upstream_test_view` cuts it); the single-decode
  `video.TestDataset` is tested (tests/test_video.py) and benchmarked
  (benchmarks/data_throughput.py) against it.
- `upstream_resize`: upstream's `resize_clip` (`functional.py`), OpenCV's bilinear resize frame
  by frame: the test views' and the validation clip's resize are tested against it, byte for
  byte (tests/test_video.py), and compared with it on K400-like footage
  (benchmarks/view_pixels.py).
- The recipe's optimiser step (REFERENCE.md §2): `layer_id`, `decays`, `mix_batch` (Mixup /
  CutMix with smoothed targets), `soft_target_loss` and `adamw_step`, against which one real
  step of the fine-tuning engine is checked (tests/test_recipe.py).
- The metrics (REFERENCE.md §4): `video_probabilities` and `top_k_hits`, from which the
  tests recompute the validation and evaluation metrics the stages write.

They live here and not in scripts/k400ft/ because no stage runs them: the library holds what a
run executes, and a reference kept beside it would read as a second way to do the same thing.
Tests import this module by name (pytest puts tests/ on the path); benchmarks add tests/ to
`sys.path` as they add scripts/.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# ---------------------------------------------------------------- augmentation settings
# upstream create_random_augment: timm hparams translate_const = int(0.45 x the crop size),
# no img_mean (timm's fill (128, 128, 128) then), interpolation 'bicubic' (--train_interpolation)
TRANSLATE_SHARE = 0.45
FILL = (128, 128, 128)
# upstream run_class_finetuning.py: --remode pixel, --recount 1 (random erasing, timm's
# RandomErasing in `ClipAugment`); not recipe knobs in the paper.
ERASE_MODE = "pixel"
ERASE_COUNT = 1
CROP_TRIES = 10  # upstream _get_param_spatial_crop's loop

# ---------------------------------------------------------------- the recipe (REFERENCE.md §2)
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.05
LAYER_DECAY = 0.75
MIXUP_ALPHA, CUTMIX_ALPHA, MIX_PROB, SWITCH_PROB = 0.8, 1.0, 1.0, 0.5
SMOOTHING = 0.1
NO_DECAY_NAMES = ("pos_embed", "cls_token")


def apply_same_draw(
    transform: Callable[[Image.Image], Image.Image], images: Sequence[Image.Image]
) -> list[Image.Image]:
    """Apply a random image transform to every frame with the SAME random draw.

    timm's RandAugment draws everything from Python's `random` (op probability, magnitude,
    sign) and numpy's global RNG (which ops); none of the draws depends on the pixels. So
    restoring both states before each frame gives every frame exactly the draw the first
    frame got, which is what upstream's clip-aware copy of the same code does (it applies
    each chosen op to the whole list). The RNG streams end where one image would leave them.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    out = []
    for number, image in enumerate(images):
        if number:
            random.setstate(py_state)
            np.random.set_state(np_state)
        out.append(transform(image))
    return out


def rand_augment_hparams(crop_size: int) -> dict[str, Any]:
    """The timm hparams of upstream's `create_random_augment` for a crop of `crop_size`."""
    translate = int(crop_size * TRANSLATE_SHARE)
    return {
        "translate_const": translate,
        "img_mean": FILL,
        "interpolation": Image.Resampling.BICUBIC,
    }


def upstream_crop_box(
    height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> tuple[tuple[int, int, int, int], int]:
    """((top, left, h, w), tries) of upstream's `_get_param_spatial_crop`
    (video_transforms.py:499-538) for a train clip, restated from REFERENCE.md §3: each of up
    to 10 tries draws the area and the log-aspect from Python's global stream, then evaluates
    `np.random.uniform() < 0.5 and switch_hw` (switch_hw False for train clips), then checks
    the fit; the fitting try draws top and left; else the whole frame clamped to the aspect
    range, centred."""
    frame_area = height * width
    low, high = math.log(ratio[0]), math.log(ratio[1])
    for tries in range(1, CROP_TRIES + 1):
        area_draw = random.uniform(scale[0], scale[1])
        aspect_draw = random.uniform(low, high)
        switch_hw = False
        if np.random.uniform() < 0.5 and switch_hw:
            raise AssertionError("switch_hw is False for train clips")
        target, aspect = area_draw * frame_area, math.exp(aspect_draw)
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < h <= height and 0 < w <= width:
            return (random.randint(0, height - h), random.randint(0, width - w), h, w), tries
    frame_ratio = float(width) / float(height)
    h, w = height, width
    if frame_ratio < min(ratio):
        h = int(round(width / min(ratio)))
    elif frame_ratio > max(ratio):
        w = int(round(height * max(ratio)))
    return ((height - h) // 2, (width - w) // 2, h, w), tries


def tensor_normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
    """Upstream's `tensor_normalize` on channel-last values 0..255: (x / 255 - mean) / std."""
    x = frames.float() / 255.0
    return (x - torch.tensor(mean)) / torch.tensor(std)


class ClipAugment:
    """One augmented train clip from decoded frames: upstream `_aug_frame` + `spatial_sampling`,
    with PIL, as upstream computes it. The reference that the training path (`augment`: the
    same draws, applied with torch ops, in the workers or on the device) is tested and
    benchmarked against; not used for training.

    Order and random sources as upstream: RandAugment (numpy + random), crop box (random, and
    numpy's unused draw per try), flip (numpy), erasing (random + torch). We crop and resize
    on the 0..255 scale and normalise after; normalisation is per-channel affine and bilinear
    resizing is a convex combination, so this equals upstream's normalise-then-resize up to
    float rounding. Erasing is timm's RandomErasing on the clip viewed as one [3*T, S, S]
    image: one box for all frames and channels, per-pixel noise drawn for each; upstream's
    cube variant does the same with 100 tries for a fitting box where timm makes 10 (a box
    fails to fit with probability < 1%, so 10 tries all fail with probability < 1e-20).
    """

    def __init__(self, data_cfg: dict[str, Any]):
        # imported here: `import timm` loads all its models (seconds), and `naive_test_view`
        # does not need it
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        aug = data_cfg["augment"]
        self.size = int(data_cfg["input_size"])
        self.scale = tuple(aug["scale"])
        self.ratio = tuple(aug["ratio"])
        self.hflip = float(aug["hflip"])
        self.mean, self.std = data_cfg["mean"], data_cfg["std"]
        self.rand_augment = rand_augment_transform(
            aug["rand_augment"], rand_augment_hparams(self.size)
        )
        self.erase = None
        if aug["reprob"] > 0:
            self.erase = RandomErasing(
                aug["reprob"],
                mode=ERASE_MODE,
                max_count=ERASE_COUNT,
                num_splits=ERASE_COUNT,
                device="cpu",
            )

    def augment_colours(self, frames: np.ndarray) -> np.ndarray:
        """RandAugment with one draw for the whole clip: [T, H, W, 3] uint8 -> same shape."""
        images = apply_same_draw(self.rand_augment, [Image.fromarray(f) for f in frames])
        return np.stack([np.asarray(image) for image in images])

    def crop_flip_erase(self, frames: np.ndarray) -> torch.Tensor:
        """Random resized crop (bilinear), flip, normalisation, erasing: [T, H, W, 3] uint8 ->
        [3, T, S, S]."""
        height, width = frames.shape[1:3]
        (top, left, h, w), _ = upstream_crop_box(height, width, self.scale, self.ratio)
        crop = torch.from_numpy(frames[:, top : top + h, left : left + w]).permute(0, 3, 1, 2)
        crop = crop.to(torch.float32).contiguous(memory_format=torch.channels_last)
        x = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if np.random.uniform() < self.hflip:
            x = x.flip(-1)
        x = tensor_normalize(x.permute(0, 2, 3, 1), self.mean, self.std).permute(3, 0, 1, 2)
        x = x.contiguous()
        if self.erase is not None:
            # one box for the whole clip, fresh noise per frame: erase [C*T, S, S] as one image
            self.erase(x.view(-1, self.size, self.size))
        return x

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        return self.crop_flip_erase(self.augment_colours(frames))


def upstream_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """[T, H, W, 3] uint8 -> short side `size`, as upstream's `resize_clip(clip, size,
    "bilinear")` with its `get_resize_sizes`: nothing when the short side already is `size`,
    else the long side int(size * long / short) and `cv2.resize(img, (w, h),
    interpolation=cv2.INTER_LINEAR)` on each frame."""
    height, width = frames.shape[1:3]
    if (width <= height and width == size) or (height <= width and height == size):
        return frames
    if width < height:
        new_h, new_w = int(size * height / width), size
    else:
        new_h, new_w = size, int(size * width / height)
    return np.stack(
        [cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR) for frame in frames]
    )


def upstream_test_view(
    taken: np.ndarray, size: int, length: int, segment: int, crop: int, segments: int, crops: int
) -> np.ndarray:
    """One test view of the frames a video's test path takes (REFERENCE.md §3 and §6), uint8
    [length, size, size, 3]: resized (`upstream_resize`), segment k from int(k x (T - length) /
    (segments - 1)), crop c from int(c x (long - size) / (crops - 1)) along the long side (H
    when H >= W). One segment or crop: the centre (upstream divides by zero there)."""
    frames = upstream_resize(taken, size)
    count, (height, width) = len(frames), frames.shape[1:3]
    if segments > 1:
        delta = max(count - length, 0) / (segments - 1)
        start = int(segment * delta)
    else:
        start = int((count - length) / 2)
    if crops > 1:
        spatial_step = 1.0 * (max(height, width) - size) / (crops - 1)
        offset = int(crop * spatial_step)
    else:
        offset = int((max(height, width) - size) / 2)
    if height >= width:
        return frames[start : start + length, offset : offset + size, :, :]
    return frames[start : start + length, :, offset : offset + size, :]


def naive_test_view(
    path: str, data_cfg: dict[str, Any], segment: int, crop: int, num_segments: int, num_crops: int
) -> torch.Tensor:
    """ONE test view the way upstream makes it: open the video with decord and decode every
    `sampling_rate`-th frame (the last repeated up to `num_frames`) for this view alone, cut
    the view (`upstream_test_view`), normalise. The reference our single-decode `TestDataset`
    is tested and benchmarked against; [3, T, s, s] float32."""
    from decord import VideoReader, cpu

    length, rate = int(data_cfg["num_frames"]), int(data_cfg["sampling_rate"])
    reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    indices = list(range(0, len(reader), rate))
    while len(indices) < length:
        indices.append(indices[-1])
    taken = reader.get_batch(indices).asnumpy()
    del reader
    size = int(data_cfg["short_side_size"])
    view = upstream_test_view(taken, size, length, segment, crop, num_segments, num_crops)
    view = tensor_normalize(
        torch.from_numpy(np.ascontiguousarray(view)), data_cfg["mean"], data_cfg["std"]
    )
    return view.permute(3, 0, 1, 2)


# ---------------------------------------------------------------- the optimiser step


def layer_id(name: str, depth: int) -> int:
    """REFERENCE.md §2's layer id of a ViT parameter: 0 for cls_token, pos_embed and
    patch_embed.*, i + 1 for blocks.i.*, depth + 1 for fc_norm and head (13 for ViT-S)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("fc_norm.", "head.")):
        return depth + 1
    raise ValueError(f"{name}: no layer id in REFERENCE.md")


def decays(name: str, param: torch.Tensor) -> bool:
    """Weight decay applies, except to 1-D parameters, biases, pos_embed and cls_token."""
    return not (param.ndim <= 1 or name.endswith(".bias") or name in NO_DECAY_NAMES)


def lr_scale(name: str, depth: int) -> float:
    """Layer-wise lr decay: 0.75^(num_layers - 1 - layer id), num_layers = depth + 2."""
    return LAYER_DECAY ** (depth + 1 - layer_id(name, depth))


def mix_batch(
    clips: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Mixup 0.8 / CutMix 1.0, prob 1.0, switch prob 0.5, mode batch, smoothing 0.1 (REFERENCE
    §2), with the draws timm's Mixup (which upstream uses) makes from numpy's global stream:
    the prob draw, the switch draw, lambda ~ Beta(alpha, alpha), then for CutMix the box
    centre (row, column). Each clip [B, C, T, H, W] is mixed with its mirror in the batch
    (clip B - 1 - b); CutMix pastes the mirror's box of (H, W) into every frame and channel
    and corrects lambda to the pasted area. Targets: smoothed one-hots (off = 0.1 / K, on =
    1 - 0.1 + off) mixed with the same lambda. Returns (mixed clips, targets [B, K], whether
    it was CutMix)."""
    assert np.random.rand() < MIX_PROB
    cutmix = np.random.rand() < SWITCH_PROB
    alpha = CUTMIX_ALPHA if cutmix else MIXUP_ALPHA
    lam = float(np.random.beta(alpha, alpha))
    mirror = clips.flip(0)
    if cutmix:
        height, width = clips.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        row, col = np.random.randint(0, height), np.random.randint(0, width)
        rows = slice(max(row - cut_h // 2, 0), min(row + (cut_h + 1) // 2, height))
        cols = slice(max(col - cut_w // 2, 0), min(col + (cut_w + 1) // 2, width))
        mixed = clips.clone()
        mixed[..., rows, cols] = mirror[..., rows, cols]
        lam = 1 - (rows.stop - rows.start) * (cols.stop - cols.start) / (height * width)
    else:
        mixed = clips * lam + mirror * (1 - lam)
    off = SMOOTHING / num_classes
    smoothed = torch.full((len(labels), num_classes), off)
    smoothed[torch.arange(len(labels)), labels] = 1 - SMOOTHING + off
    return mixed, smoothed * lam + smoothed.flip(0) * (1 - lam), cutmix


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft-target cross entropy, averaged over the batch."""
    return (-targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def adamw_step(
    params: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]],
    step: int,
    lr: float,
    depth: int,
) -> None:
    """One AdamW step (decoupled weight decay, bias-corrected moments) of every named
    parameter, in place: its lr is lr x `lr_scale`, its decay `WEIGHT_DECAY` where `decays`;
    `moments` holds (m, v) per name (zeros before step 1); step counts from 1."""
    for name, param in params.items():
        grad, (m, v) = grads[name], moments[name]
        rate = lr * lr_scale(name, depth)
        if decays(name, param):
            param.mul_(1 - rate * WEIGHT_DECAY)
        m.mul_(BETAS[0]).add_((1 - BETAS[0]) * grad)
        v.mul_(BETAS[1]).add_((1 - BETAS[1]) * grad * grad)
        m_hat = m / (1 - BETAS[0] ** step)
        v_hat = v / (1 - BETAS[1] ** step)
        param.sub_(rate * m_hat / (v_hat.sqrt() + EPS))


# ---------------------------------------------------------------- metrics (REFERENCE.md §4)


def video_probabilities(logits: np.ndarray, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(videos, probabilities [N, K]): per video, the mean over its views of each view's
    softmax (in float64)."""
    x = np.asarray(logits, dtype=np.float64)
    probs = np.exp(x - x.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    videos = np.unique(video)
    return videos, np.stack([probs[video == v].mean(axis=0) for v in videos])


def top_k_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each row's label is among its k highest scores (a stable descending sort:
    ties go to the lower class index)."""
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return (order == np.asarray(labels)[:, None]).any(axis=1)
