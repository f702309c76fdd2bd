"""Train-clip augmentation as parameters, applied to a batch with torch ops on any device.

Upstream (REFERENCE.md §3) augments every train clip in the loader workers with PIL:
RandAugment `rand-m7-n4-mstd0.5-inc1` on the full-size uint8 frames (one draw for the clip),
ImageNet normalisation, random resized crop to `input_size` (bilinear), horizontal flip, random
erasing (one box for the clip, fresh N(0, 1) noise per pixel). On full 320 px frames that costs a
worker about 0.34 s per clip, so a GPU waits for data. Here the work is split in two:

- `ClipSampler.draw` (in the workers, cheap): every random choice of one clip, drawn from the
  global RNGs that `video.item_rngs` seeds per (seed, epoch, video), in upstream's order:
  timm's own RandAugment decides which ops fire and with which arguments (its ops' pixel
  functions are swapped for recorders, so the op set, p 0.5, magnitude N(7, 0.5) clipped to
  [0, 10], the level -> argument maps and the random signs are timm's code, not a copy), then
  the crop box (`random_resized_crop_box`), the flip (numpy), the erasing box (timm's
  `RandomErasing` semantics, `erase_box`) and a seed for the erasing noise (torch). The Python
  and numpy draws are exactly today's upstream-faithful ones, clip for clip.
- `ClipAugmenter` applies those parameters in upstream's order on the full-size frames:
  RandAugment, the crop resized bilinearly, the flip, normalisation, the erasing box filled
  with counter-based noise of the clip's noise seed (`erase_noise`). `clip` makes one clip (in
  the workers, `data.augment_on: workers`), RandAugment's ops there being timm's own PIL ops
  called with the drawn arguments: upstream's pixels exactly, and several times faster on a
  CPU than the torch ops (benchmarks/train_data.py). `batch` makes a whole batch on the
  training device after the host-to-device copy (`device`), with the torch tensor ops below on
  frames padded to the batch's largest: per RandAugment layer each op (group) runs once on the
  clips that drew it, with per-clip arguments as tensors (one lookup table per clip for the
  pixel-wise ops, per-clip factors, per-clip affine matrices in one gather), then one gather
  crops, resizes and flips every clip, so the number of kernels does not grow with the batch
  (benchmarks/augment.py). Its clips are bit-identical to `clip` with the torch ops.

RandAugment's pixel ops, as torch ops and how close they are to PIL's: `randaugment`. The
erasing noise is the same N(0, 1), a hash of the clip's noise seed and the pixel instead of the
worker's global torch stream; everything else a clip's pixels depend on is drawn as upstream
draws it. Whole clips are tested against upstream's PIL path, `ClipAugment` in
tests/reference.py (a reference, not library code).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from k400ft import clipbatch
from k400ft.clipbatch import erase_noise
from k400ft.randaugment import FILL, rand_augment, rand_augment_pil

# upstream run_class_finetuning.py: random erasing --remode pixel --recount 1 with timm's area
# (0.02, 1/3) and aspect (0.3, 1/0.3) defaults (RandAugment's fill: randaugment.FILL).
ERASE_AREA = (0.02, 1 / 3)
ERASE_ASPECT = (0.3, 1 / 0.3)


# ----------------------------------------------------------------------------------------------
# Drawing the parameters (workers)


def random_resized_crop_box(
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    rng: random.Random | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: upstream `_get_param_spatial_crop`, which
    has torchvision's `RandomResizedCrop.get_params` semantics and upstream's draws.

    Up to 10 tries: area ~ U(scale) * H * W, aspect = exp(U(log ratio)), w = round(sqrt(area *
    aspect)), h = round(sqrt(area / aspect)), then one numpy draw (upstream evaluates
    `np.random.uniform() < 0.5 and switch_hw` on every try, the accepted one included, though
    switch_hw is False for train clips); accepted if 0 < w <= W and 0 < h <= H, then
    top ~ U{0..H-h}, left ~ U{0..W-w}. Else (10 numpy draws made) a centred crop of the whole
    frame clamped to the ratio range. rng: a random.Random for the Python draws, default
    Python's global one (as upstream); the numpy draws are always numpy's global stream's, so
    the flip and the next clip's RandAugment read it where upstream's do.
    """
    draw = rng if rng is not None else random  # the module's functions use its global Random
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = draw.uniform(*scale) * area
        aspect = math.exp(draw.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        np.random.uniform()  # upstream's switch_hw draw: its value is unused (switch_hw False)
        if 0 < w <= width and 0 < h <= height:
            return draw.randint(0, height - h), draw.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class ClipParams:
    """Every random choice of one train clip (picklable: it crosses the DataLoader's queues).

    ops: the RandAugment ops that fire, in order, with the arguments timm's level maps give
    them; box: (top, left, h, w) of the random resized crop on the full frame; flip: mirror
    left-right; erase: (top, left, h, w) on the input_size x input_size crop, or None;
    noise_seed: the seed of the erasing noise."""

    ops: tuple[tuple[str, tuple], ...]
    box: tuple[int, int, int, int]
    flip: bool
    erase: tuple[int, int, int, int] | None
    noise_seed: int


def _record(name: str, drawn: list, *args: Any, **_kwargs: Any) -> list:
    drawn.append((name, tuple(args)))
    return drawn


def rand_augment_hparams(input_size: int) -> dict:
    """timm hparams of upstream's `create_random_augment`: translate_const 45% of the crop, the
    fill, and one fixed interpolation (bicubic: with a list timm would draw one per op)."""
    return {
        "translate_const": int(input_size * 0.45),
        "img_mean": FILL,
        "interpolation": Image.Resampling.BICUBIC,
    }


def rand_augment_sampler(config: str, hparams: dict):
    """timm's RandAugment for `config`, whose ops record (name, arguments) into the list they
    are called on instead of changing pixels: calling it on [] draws exactly what the real
    transform would draw from the same RNG states (no draw depends on the pixels)."""
    from timm.data.auto_augment import rand_augment_transform  # `import timm` takes seconds

    transform = rand_augment_transform(config, hparams)
    for op in transform.ops:
        op.aug_fn = functools.partial(_record, op.name)
    return transform


def erase_box(
    probability: float,
    height: int,
    width: int,
    area: Sequence[float] = ERASE_AREA,
    aspect: Sequence[float] = ERASE_ASPECT,
) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of one erasing box, or None: timm's `RandomErasing._erase` draws for one
    box (count 1) from Python's global `random`: p `probability`, then up to 10 tries of area ~
    U(area) x H x W, aspect = exp(U(log aspect)), h = round(sqrt(area x aspect)), w =
    round(sqrt(area / aspect)), kept when h < H and w < W, then top, left uniform."""
    if random.random() > probability:
        return None
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(10):
        target = random.uniform(*area) * height * width
        ratio = math.exp(random.uniform(*log_aspect))
        h = int(round(math.sqrt(target * ratio)))
        w = int(round(math.sqrt(target / ratio)))
        if w < width and h < height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    return None


class ClipSampler:
    """Draws a train clip's `ClipParams` from the global RNGs (seeded per item)."""

    def __init__(self, data_cfg: dict[str, Any]):
        aug = data_cfg["augment"]
        self.size = int(data_cfg["input_size"])
        self.scale, self.ratio = tuple(aug["scale"]), tuple(aug["ratio"])
        self.hflip, self.reprob = float(aug["hflip"]), float(aug["reprob"])
        self.rand_augment = rand_augment_sampler(
            aug["rand_augment"], rand_augment_hparams(self.size)
        )

    def draw(self, height: int, width: int) -> ClipParams:
        """In upstream's order: RandAugment (numpy + random), crop box (random), flip (numpy),
        erasing box (random), noise seed (torch)."""
        ops = tuple(self.rand_augment([]))
        box = random_resized_crop_box(height, width, self.scale, self.ratio)
        flip = bool(np.random.uniform() < self.hflip)
        erase = erase_box(self.reprob, self.size, self.size) if self.reprob > 0 else None
        seed = int(torch.randint(0, 2**62, ()).item())
        return ClipParams(ops, box, flip, erase, seed)


# ----------------------------------------------------------------------------------------------
# The whole clip, one at a time or a batch at once


def pad_frames(frames: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos' decoded frames [T, H, W, 3] uint8 (sizes may differ) -> one tensor [V, T, H, W, 3]
    padded with zeros to the largest height and width, and each video's (h, w) [V, 2] int64."""
    sizes = torch.tensor([f.shape[1:3] for f in frames], dtype=torch.int64)
    if len({tuple(s) for s in sizes.tolist()}) == 1:
        return torch.stack(list(frames)), sizes
    height, width = (int(v) for v in sizes.max(dim=0).values)
    out = frames[0].new_zeros((len(frames), frames[0].shape[0], height, width, 3))
    for target, f in zip(out, frames, strict=True):
        target[:, : f.shape[1], : f.shape[2]] = f
    return out, sizes


def group_frames(frames: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Videos' decoded frames [T, H, W, 3] -> one padded tensor per orientation group
    (`clipbatch.size_groups`: landscape or square, portrait; each padded to its own largest
    frame, `pad_frames`), and each video's (h, w) [V, 2], which tells the groups again."""
    sizes = torch.tensor([f.shape[1:3] for f in frames], dtype=torch.int64)
    groups = clipbatch.size_groups(sizes.tolist(), exact=False)
    return [pad_frames([frames[v] for v in videos])[0] for videos in groups], sizes


class ClipAugmenter:
    """Applies `ClipParams` to decoded frames on their device, upstream's order (see the
    module's docstring): [T, H, W, 3] uint8 (as decoded) -> [3, T, S, S] float32, normalised.

    `clip` makes one clip; RandAugment's pixel ops are the torch ops on a GPU and timm's PIL
    ops on the CPU, where they are faster and upstream-exact (pil_on_cpu=False forces the
    torch ops, for tests and the benchmark). The workers use it (augment_on: workers).
    `batch` makes a whole batch with the torch ops in a number of operations that does not
    grow with the number of clips (augment_on: device; `clipbatch`), compiled into fused
    kernels with `compiled` (data.augment_compile)."""

    def __init__(self, data_cfg: dict[str, Any], pil_on_cpu: bool = True, compiled: bool = False):
        self.pil_on_cpu, self.compiled = pil_on_cpu, compiled
        self.size = int(data_cfg["input_size"])
        mean = torch.tensor(data_cfg["mean"], dtype=torch.float32)
        std = torch.tensor(data_cfg["std"], dtype=torch.float32)
        self.affine = 1.0 / (255.0 * std), -mean / std  # (x / 255 - mean) / std = x a + b

    def clip(self, frames: torch.Tensor, params: ClipParams) -> torch.Tensor:
        dev = frames.device
        if dev.type == "cpu" and self.pil_on_cpu:
            frames = torch.from_numpy(rand_augment_pil(frames.numpy(), params.ops))
            x = frames.permute(0, 3, 1, 2)
        else:
            x = rand_augment(frames.permute(0, 3, 1, 2), params.ops)
        top, left, h, w = params.box
        crop = x[:, :, top : top + h, left : left + w].to(torch.float32)
        crop = crop.contiguous(memory_format=torch.channels_last)
        x = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if params.flip:
            x = x.flip(-1)
        scale, shift = (v.to(dev, non_blocking=True) for v in self.affine)
        x = clipbatch.normalise(x.transpose(0, 1), scale, shift)  # [3, T, S, S]
        if params.erase is not None:  # one box for every frame and channel
            top, left, h, w = params.erase
            box = x[:, :, top : top + h, left : left + w]
            counters = torch.arange(box.numel(), device=dev)
            noise = erase_noise(torch.full_like(counters, params.noise_seed), counters)
            box.copy_(noise.view(box.shape))
        return x

    def batch(
        self,
        frames: torch.Tensor | Sequence[torch.Tensor],
        params: Sequence[Sequence[ClipParams]],
        sizes: torch.Tensor | None = None,
        by_size: bool | None = None,
    ) -> torch.Tensor:
        """Videos' frames and each video's clips' parameters -> clips [sum of clips, 3, T, S, S],
        the clips of one video adjacent (as `video.train_collate`). frames: the orientation
        groups' padded tensors [V_g, T, H, W, 3] uint8 with each video's own (h, w) in `sizes`
        [V, 2] (`group_frames`, as `video.train_collate_frames` delivers them), or one tensor
        [V, T, H, W, 3] padded to the batch's largest frame with `sizes` (`pad_frames`), or a
        list of each video's [T, H, W, 3].

        The same pixels as `clip` with the torch ops, clip for clip (`clipbatch.make`).
        by_size (default: on a CPU): the clips made in one group per frame size instead of one
        per orientation: nothing padded; on a CPU no kernel launch is saved by padding."""
        if not torch.is_tensor(frames) and frames[0].dim() == 4:
            frames, sizes = group_frames(frames)
        numbers = list(range(len(params)))
        if torch.is_tensor(frames):
            sources = [(frames, numbers)]
            sizes = sizes if sizes is not None else torch.tensor([frames.shape[2:4]] * len(params))
        else:
            sources = list(zip(frames, clipbatch.size_groups(sizes.tolist(), False), strict=True))
        exact = frames[0].device.type == "cpu" if by_size is None else by_size
        return clipbatch.make(
            sources,
            sizes.tolist(),
            params,
            self.size,
            self.affine,
            exact=exact,
            fused=self.compiled,
        )
