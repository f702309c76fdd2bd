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

How close the torch ops are to PIL's (tests/test_augment.py measures each on the same frames
and arguments): Invert, Posterize, Solarize, SolarizeAdd, AutoContrast, Equalize, the three
blends (Color, Contrast, Brightness) and Sharpness follow Pillow's integer and float32
arithmetic exactly; the five geometric ops (Pillow's affine transform: pixel centres, its
a = -1 bicubic kernel, clamped neighbours, fill outside, truncation to uint8) compute the pixel
arithmetic in float32 where Pillow uses double, so a value on an integer boundary can come out
one level lower or higher (measured: at most 1 level, in well under 1% of the pixels). The
erasing noise is the same N(0, 1), a hash of the clip's noise seed and the pixel instead of the
worker's global torch stream; everything else a clip's pixels depend on is drawn as upstream
draws it. Whole
clips are tested against upstream's PIL path, `ClipAugment` in tests/reference.py (a reference,
not library code).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# upstream run_class_finetuning.py: --train_interpolation bicubic (RandAugment's geometric ops),
# RandAugment's fill (128, 128, 128) (create_random_augment passes no img_mean), random erasing
# --remode pixel --recount 1 with timm's area (0.02, 1/3) and aspect (0.3, 1/0.3) defaults.
FILL = (128, 128, 128)
ERASE_AREA = (0.02, 1 / 3)
ERASE_ASPECT = (0.3, 1 / 0.3)
# Pillow's equalize divides by 255 since Pillow 10 (by 256 before, as in upstream's older
# environment): the pinned Pillow's value, so the tensor op matches the PIL path it replaces.
EQUALIZE_DIVISOR = 255


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
# RandAugment's 15 ops on uint8 frames [..., 3, H, W]
#
# One clip: frames [T, 3, H, W] and the op's arguments as Python numbers (one draw for all its
# frames). A batch of clips: frames [n, T, 3, H, W] padded to a common H x W, the arguments as
# tensors that broadcast against [n, 1, 1, 1, 1] (each clip its own), and `sizes` [n, 2], each
# clip's true (h, w): statistics, borders and the affine ops' frame see its own pixels only.
# The arithmetic is the same either way, so a clip comes out the same alone or in a batch.


def _valid(frames: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[n, 1, 1, H, W] bool: the pixels of each clip's own (h, w) within the padded frames."""
    height, width = frames.shape[-2:]
    rows = torch.arange(height, device=frames.device) < sizes[:, :1]
    cols = torch.arange(width, device=frames.device) < sizes[:, 1:]
    valid = rows.unsqueeze(2) & cols.unsqueeze(1)
    return valid.view(len(valid), *[1] * (frames.dim() - 3), height, width)


def _lut(frames: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Map each frame's channel through its own 256-entry table ([..., 3 or 1, 256] uint8,
    broadcast against the frames' leading dimensions)."""
    height, width = frames.shape[-2:]
    table = table.expand(*frames.shape[:-2], 256).reshape(-1, 256)
    flat = frames.reshape(-1, height * width).long()
    return torch.gather(table, 1, flat).view(frames.shape)


def _histograms(frames: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """[..., 3, 256] int64 pixel counts per frame and channel (within each clip's size)."""
    height, width = frames.shape[-2:]
    planes = frames.numel() // (height * width)
    offsets = torch.arange(planes, device=frames.device).unsqueeze(1) * 256
    index = frames.reshape(planes, height * width).long() + offsets
    if sizes is not None:  # padding goes to one extra bin, dropped
        valid = _valid(frames, sizes).expand(frames.shape).reshape(planes, height * width)
        index = torch.where(valid, index, planes * 256)
    index = index.reshape(-1)  # counted by a scatter: CUDA's bincount reads its max on the host
    counts = torch.zeros(planes * 256 + 1, dtype=torch.int64, device=frames.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[: planes * 256].view(*frames.shape[:-2], 256)


def auto_contrast(frames: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0) per frame and channel: lo, hi = the darkest and
    brightest levels present; level i -> int(i x 255 / (hi - lo) - lo x 255 / (hi - lo)),
    clipped; identity where hi <= lo."""
    levels = torch.arange(256, device=frames.device, dtype=torch.float64)
    darkest, brightest = frames, frames
    if sizes is not None:
        valid = _valid(frames, sizes)
        darkest, brightest = torch.where(valid, frames, 255), torch.where(valid, frames, 0)
    lo = darkest.flatten(-2).amin(dim=-1).double().unsqueeze(-1)
    hi = brightest.flatten(-2).amax(dim=-1).double().unsqueeze(-1)
    spread = (hi - lo).clamp(min=1)
    scale = torch.full_like(spread, 255.0) / spread  # a true division, as Python's (not 255 x 1/d)
    table = (levels * scale - lo * scale).trunc().clamp(0, 255)
    table = torch.where(hi > lo, table, levels)
    return _lut(frames, table.to(torch.uint8))


def equalize(frames: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """PIL ImageOps.equalize per frame and channel: step = (pixels - count of the brightest
    level present) // EQUALIZE_DIVISOR; level i -> (step // 2 + pixels below i) // step,
    clipped to 255; identity when at most one level is present or step is 0."""
    hist = _histograms(frames, sizes)
    total = hist.sum(dim=-1, keepdim=True)
    levels = torch.arange(256, device=frames.device)
    brightest = torch.where(hist > 0, levels, -1).amax(dim=-1, keepdim=True)
    last = hist.gather(-1, brightest.clamp(min=0))
    step = (total - last) // EQUALIZE_DIVISOR
    below = hist.cumsum(dim=-1) - hist
    table = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    keep = ((hist > 0).sum(dim=-1, keepdim=True) <= 1) | (step == 0)
    table = torch.where(keep, levels, table)
    return _lut(frames, table.to(torch.uint8))


def invert(frames: torch.Tensor) -> torch.Tensor:
    return 255 - frames


def posterize(frames: torch.Tensor, bits) -> torch.Tensor:
    """Keep the `bits` most significant bits (timm: unchanged from 8 bits on)."""
    shift = (8 - torch.as_tensor(bits)).clamp(min=0)
    return frames & ((255 >> shift) << shift).to(frames.device, torch.uint8)


def solarize(frames: torch.Tensor, threshold) -> torch.Tensor:
    """Levels >= threshold inverted (PIL ImageOps.solarize)."""
    return torch.where(frames < threshold, frames, 255 - frames)


def solarize_add(frames: torch.Tensor, add, threshold: int = 128) -> torch.Tensor:
    """timm's solarize_add: levels below threshold get + add (capped at 255)."""
    added = (frames.to(torch.int16) + add).clamp(max=255).to(torch.uint8)
    return torch.where(frames < threshold, added, frames)


def _grey(frames: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: (R x 19595 + G x 38470 + B x 7471 + 32768) >> 16, [..., 1, H, W] int32."""
    r, g, b = frames.to(torch.int32).unbind(-3)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(-3)


def blend(degenerate: torch.Tensor, frames: torch.Tensor, factor) -> torch.Tensor:
    """PIL Image.blend(degenerate, image, factor): in float32, d + factor x (x - d), truncated
    toward zero and clipped to 0..255 (PIL's ImagingBlend). PIL takes the factor as a C float."""
    alpha = torch.as_tensor(factor, dtype=torch.float32).to(frames.device)
    d = degenerate.to(torch.float32)
    out = d + alpha * (frames.to(torch.float32) - d)
    return out.clamp(0, 255).trunc().to(torch.uint8)


def color(frames: torch.Tensor, factor) -> torch.Tensor:
    """ImageEnhance.Color: blend with the frame's greyscale."""
    return blend(_grey(frames).expand_as(frames), frames, factor)


def contrast(frames: torch.Tensor, factor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with a flat frame at int(mean greyscale level + 0.5). The
    sum of integer levels is exact in float64, so mean = sum / pixels whatever the order."""
    grey = _grey(frames)
    if sizes is None:
        mean = grey.double().mean(dim=(-3, -2, -1), keepdim=True)
    else:
        valid = torch.where(_valid(frames, sizes), grey, 0).double()
        total = valid.sum(dim=(-3, -2, -1), keepdim=True)
        mean = total / sizes.prod(dim=1).double().view(-1, *[1] * (grey.dim() - 1))
    return blend((mean + 0.5).floor().expand_as(frames), frames, factor)


def brightness(frames: torch.Tensor, factor) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return blend(torch.zeros_like(frames), frames, factor)


def sharpness(frames: torch.Tensor, factor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter of the frame (3x3 kernel
    [1 1 1; 1 5 1; 1 1 1] / 13, rounded; the one-pixel border kept as it is). Computed as the
    integer 3x3 sum plus 4 x the centre, / 13: the exact value is never within 1/26 of a
    rounding boundary, so PIL's float32 sum rounds to the same level."""
    x = frames.to(torch.int32)
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = (box + 4 * x[..., 1:-1, 1:-1]).to(torch.float32) / 13.0
    degenerate = frames.clone()
    degenerate[..., 1:-1, 1:-1] = (smooth + 0.5).floor().clamp(0, 255).to(torch.uint8)
    if sizes is not None:  # each clip's own last row and column are border too
        degenerate = torch.where(_valid(frames, sizes - 1), degenerate, frames)
    return blend(degenerate, frames, factor)


def _cubic(v1, v2, v3, v4, d):
    """PIL's geometric bicubic (Geometry.c's BICUBIC macro, kernel a = -1), in its Horner form
    (the same operations, so float32 rounds as closely as it can to PIL's double)."""
    p2 = v3 - v1
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = v2 - v1 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def affine(
    frames: torch.Tensor,
    matrix: Sequence[float] | torch.Tensor,
    fill: Sequence[int] = FILL,
    sizes: torch.Tensor | None = None,
    axes: str = "xy",
) -> torch.Tensor:
    """PIL's Image.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill): output pixel (x, y)
    samples the input at (a(x+.5) + b(y+.5) + c, d(x+.5) + e(y+.5) + f); outside the frame it
    gets `fill`; inside, the 4 x 4 neighbours (clamped at the border) are combined with PIL's
    a = -1 cubic kernel and truncated to uint8. One clip: frames [T, 3, H, W] and 6 numbers; a
    batch: [n, T, 3, H, W] and matrices [n, 6] float64 (one gather for all clips). axes: "x"
    or "y" for matrices that move along one axis only (`AXES`), whose 4 neighbours along the
    other are not read (they are weighted by exactly 0). The frames
    are gathered pixel-major ([pixels, T x 3]: one index moves all frames and channels), the
    coordinates in float64 as PIL's, the pixel arithmetic in float32."""
    if not torch.is_tensor(matrix):  # one clip: a batch of one
        matrix = torch.tensor([list(matrix)], dtype=torch.float64, device=frames.device)
        return affine(frames.unsqueeze(0), matrix, fill, sizes, axes)[0]
    n, t, c, h, w = frames.shape
    dev = frames.device
    height, width = (h, w) if sizes is None else (sizes[:, :1, None], sizes[:, 1:, None])
    ys = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w) + 0.5
    a, b, cc, d, e, f = matrix.view(n, 6, 1, 1).unbind(1)
    src_x = a * xs + b * ys + cc
    src_y = d * xs + e * ys + f
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    src_x, src_y = src_x - 0.5, src_y - 0.5
    x0, y0 = src_x.floor(), src_y.floor()
    dx = (src_x - x0).to(torch.float32).reshape(-1, 1)
    dy = (src_y - y0).to(torch.float32).reshape(-1, 1)
    x0, y0 = x0.long() - 1, y0.long() - 1
    pixels = frames.permute(0, 3, 4, 1, 2).reshape(n * h * w, t * c)
    first = torch.arange(n, device=dev).view(n, 1, 1) * (h * w)  # each clip's first pixel

    def tap(j: int, i: int) -> torch.Tensor:  # neighbour (y0 + j, x0 + i), clamped, float32
        row = (y0 + j).clamp(min=0).clamp(max=height - 1)
        col = (x0 + i).clamp(min=0).clamp(max=width - 1)
        return pixels.index_select(0, (first + row * w + col).reshape(-1)).to(torch.float32)

    # a shear or translation along x keeps every row (dy = 0 exactly: the cubic in y returns
    # its second row unchanged), one along y every column: 4 neighbours instead of 16
    if axes == "x":
        value = _cubic(*(tap(1, i) for i in range(4)), dx)
    elif axes == "y":
        value = _cubic(*(tap(j, 1) for j in range(4)), dy)
    else:
        value = _cubic(*(_cubic(*(tap(j, i) for i in range(4)), dx) for j in range(4)), dy)
    value = value.clamp_(0, 255).trunc_().to(torch.uint8)
    value = value.view(n, h, w, t, c).permute(0, 3, 4, 1, 2)
    fill_value = torch.tensor(fill, dtype=torch.uint8).to(dev, non_blocking=True).view(3, 1, 1)
    return torch.where(inside.view(n, 1, 1, h, w), value, fill_value)


def rotation_matrix(degrees: float, height: int, width: int) -> list[float]:
    """PIL Image.rotate(degrees)'s inverse matrix about the centre (w / 2, h / 2), same size."""
    angle = -math.radians(degrees)
    m = [
        round(math.cos(angle), 15),
        round(math.sin(angle), 15),
        0.0,
        round(-math.sin(angle), 15),
        round(math.cos(angle), 15),
        0.0,
    ]
    cx, cy = width / 2.0, height / 2.0
    m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx
    m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy
    return m


AXES = {"Rotate": "xy", "ShearX": "x", "TranslateXRel": "x", "ShearY": "y", "TranslateYRel": "y"}
MATRICES = {  # the geometric ops: (argument, frame height, width) -> PIL's affine matrix
    "Rotate": rotation_matrix,
    "ShearX": lambda factor, h, w: [1, factor, 0, 0, 1, 0],
    "ShearY": lambda factor, h, w: [1, 0, 0, factor, 1, 0],
    "TranslateXRel": lambda pct, h, w: [1, 0, pct * w, 0, 1, 0],
    "TranslateYRel": lambda pct, h, w: [1, 0, 0, 0, 1, pct * h],
}


def _geometric(name: str):
    def op(frames: torch.Tensor, arg: float, fill: Sequence[int] = FILL) -> torch.Tensor:
        if name == "Rotate" and arg % 360.0 == 0:
            return frames
        return affine(frames, MATRICES[name](arg, *frames.shape[-2:]), fill, axes=AXES[name])

    op.__name__ = op.__qualname__ = name
    return op


OPS = {  # timm's RandAugment op names (the 'inc1' increasing set) -> tensor op
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "PosterizeIncreasing": posterize,
    "SolarizeIncreasing": solarize,
    "SolarizeAdd": solarize_add,
    "ColorIncreasing": color,
    "ContrastIncreasing": contrast,
    "BrightnessIncreasing": brightness,
    "SharpnessIncreasing": sharpness,
    **{name: _geometric(name) for name in MATRICES},
}


def rand_augment(frames: torch.Tensor, ops: Sequence[tuple[str, tuple]]) -> torch.Tensor:
    """Apply the drawn ops in order to all frames [N, 3, H, W] uint8 of a clip (torch ops)."""
    for name, args in ops:
        frames = OPS[name](frames, *args)
    return frames


def rand_augment_pil(frames: np.ndarray, ops: Sequence[tuple[str, tuple]]) -> np.ndarray:
    """The same on the CPU with timm's own PIL ops (upstream's pixels exactly), frame by frame:
    [N, H, W, 3] uint8 -> same. On a CPU, Pillow's C loops are several times faster than the
    torch ops (the geometric ops' 16-neighbour gathers above all): measured in
    benchmarks/train_data.py."""
    if not ops:
        return frames
    from timm.data.auto_augment import NAME_TO_OP

    images = [Image.fromarray(frame) for frame in frames]
    for name, args in ops:
        function = NAME_TO_OP[name]
        images = [
            function(image, *args, fillcolor=FILL, resample=Image.Resampling.BICUBIC)
            for image in images
        ]
    return np.stack([np.asarray(image) for image in images])


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


# pixel-wise ops: applied in a batch through one lookup table per clip, made by the op itself
LUT_OPS = (
    "Invert",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "BrightnessIncreasing",
)
SIZED = {"AutoContrast", "Equalize", "ContrastIncreasing", "SharpnessIncreasing"}  # see `sizes`


def op_group(name: str) -> str:
    """How a batch applies op `name`: the pixel-wise ops through one lookup table per clip
    ('lut'), the five geometric ops through one affine gather per axes ('affine x', 'affine
    y' for the shears and translations, 'affine xy' for Rotate), each other op on
    its own with per-clip arguments."""
    return "lut" if name in LUT_OPS else f"affine {AXES[name]}" if name in AXES else name


@dataclass
class OpGroup:
    """The clips (positions in the batch) whose op at one RandAugment layer falls in one group,
    with what the group needs per clip: the ops and arguments ('lut': its tables are made
    from them), the affine matrices ('affine ...'), or the op's argument (none for AutoContrast
    and Equalize)."""

    kind: str
    clips: list[int] = field(default_factory=list)
    ops: list[tuple[str, tuple]] = field(default_factory=list)
    args: list = field(default_factory=list)


def plan_layers(clips: Sequence[ClipParams], sizes: Sequence[Sequence[int]]) -> list[OpGroup]:
    """RandAugment of a batch as groups of clips, layer by layer (each clip's ops run in its
    order): at most 4 layers x 9 groups, whatever the number of clips. sizes: each clip's
    frame (h, w), which the geometric ops' matrices depend on."""
    groups = []
    for layer in range(max((len(p.ops) for p in clips), default=0)):
        by_kind: dict[str, OpGroup] = {}
        for number, params in enumerate(clips):
            if layer >= len(params.ops):
                continue
            name, args = params.ops[layer]
            group = by_kind.setdefault(op_group(name), OpGroup(op_group(name)))
            group.clips.append(number)
            group.ops.append((name, args))
            if group.kind.startswith("affine"):
                group.args.append(MATRICES[name](args[0], *sizes[number]))
            elif group.kind != "lut" and args:
                group.args.append(args[0])
        groups.extend(by_kind.values())
    return groups


def lut_tables(ops: Sequence[tuple[str, tuple]]) -> torch.Tensor:
    """[n, 256] uint8: the table of each (op, arguments), made by the op itself on the 256
    levels, one call per op for all its rows (the arguments as a column tensor)."""
    levels = torch.arange(256, dtype=torch.uint8)
    tables = torch.empty((len(ops), 256), dtype=torch.uint8)
    for name in sorted({name for name, _ in ops}):
        rows = [i for i, (n, _) in enumerate(ops) if n == name]
        args = [
            torch.tensor(column).unsqueeze(1)
            for column in zip(*(ops[i][1] for i in rows), strict=True)
        ]
        tables[rows] = OPS[name](levels.expand(len(rows), 256), *args)
    return tables


def to_device(pieces: dict[str, list], dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Host lists of numbers (any nesting, rectangular) -> tensors of `dtype` on `device`, in
    one host-to-device copy."""
    kind = torch.empty(0, dtype=dtype).numpy().dtype
    arrays = {key: np.asarray(value, dtype=kind) for key, value in pieces.items()}
    flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays.values()]))
    parts = flat.to(device, non_blocking=True).split([a.size for a in arrays.values()])
    return {key: p.view(a.shape) for (key, a), p in zip(arrays.items(), parts, strict=True)}


_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding 32-bit
    values: every product stays below 2^59, so the same bits on any device."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def erase_noise(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """N(0, 1) float32 noise, elementwise a pure function of (seed, counter): hashed, then
    Box-Muller. An erased clip's noise depends on its own seed and pixel alone, on any device,
    in any batch and whatever else the batch holds."""
    key = _mix32(seeds & _M32) ^ _mix32(((seeds >> 32) & _M32) ^ 0x5BD1E995)
    u1 = (_mix32(_mix32((2 * counters) & _M32) ^ key) + 1).to(torch.float32) * 2.0**-32
    u2 = _mix32(_mix32((2 * counters + 1) & _M32) ^ key).to(torch.float32) * 2.0**-32
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)


def linear_taps(lengths: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """A bilinear resize (align_corners False) of lengths [n] to `size`, computed as PyTorch's
    CPU kernel does: source = max(length / size x (i + 0.5) - 0.5, 0) in float32; first tap
    floor(source) (at most length - 1), second the next one (clamped); weights 1 - l and l,
    l = source - first. Returns (first, second, first's weight, second's weight), [n, size]."""
    scale = (lengths.to(torch.float32) / size).unsqueeze(1)
    target = torch.arange(size, device=lengths.device, dtype=torch.float32)
    source = (scale * (target + 0.5) - 0.5).clamp(min=0)
    last = lengths.unsqueeze(1) - 1
    first = torch.minimum(source.floor().long(), last)
    weight = (source - first.to(torch.float32)).clamp(0, 1)
    return first, first + (first < last).long(), 1 - weight, weight


class ClipAugmenter:
    """Applies `ClipParams` to decoded frames on their device, upstream's order (see the
    module's docstring): [T, H, W, 3] uint8 (as decoded) -> [3, T, S, S] float32, normalised.

    `clip` makes one clip; RandAugment's pixel ops are the torch ops on a GPU and timm's PIL
    ops on the CPU, where they are faster and upstream-exact (pil_on_cpu=False forces the
    torch ops, for tests and the benchmark). The workers use it (augment_on: workers).
    `batch` makes a whole batch with the torch ops in a number of operations that does not
    grow with the number of clips (augment_on: device)."""

    def __init__(self, data_cfg: dict[str, Any], pil_on_cpu: bool = True):
        self.pil_on_cpu = pil_on_cpu
        self.size = int(data_cfg["input_size"])
        mean = torch.tensor(data_cfg["mean"], dtype=torch.float32)
        std = torch.tensor(data_cfg["std"], dtype=torch.float32)
        self.affine = 1.0 / (255.0 * std), -mean / std  # (x / 255 - mean) / std = x a + b

    def normalise(self, clips: torch.Tensor) -> torch.Tensor:
        """[..., 3, T, S, S] on the 0..255 scale -> ImageNet-normalised, contiguous."""
        scale, shift = (v.to(clips.device, non_blocking=True).view(3, 1, 1, 1) for v in self.affine)
        return torch.addcmul(shift, clips, scale).contiguous()

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
        x = self.normalise(x.transpose(0, 1))  # [3, T, S, S]
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
        the clips of one video adjacent (as `video.train_collate`). frames: [V, T, H, W, 3]
        uint8 padded to the batch's largest frame, each video's own (h, w) in `sizes` [V, 2]
        (`pad_frames`, as `video.train_collate_frames` delivers them), or a list of [T, H, W, 3].

        The same pixels as `clip` with the torch ops, clip for clip, by the same arithmetic on
        the whole batch: per RandAugment layer each op group runs once on the clips that drew
        it; then one bilinear gather crops, resizes and flips every clip; one normalisation;
        one scatter of every erased box's noise. Host values reach the device in three copies.

        by_size (default: on a CPU): one such call per frame size instead of one on the padded
        frames: the same clips; on a CPU no kernel launch is saved by padding, which only adds
        pixels (benchmarks/augment.py); on a GPU the number of kernels stays fixed."""
        if not torch.is_tensor(frames):
            frames, sizes = pad_frames(frames)
        height, width = frames.shape[2:4]
        clips = [p for video_params in params for p in video_params]
        source = [v for v, video_params in enumerate(params) for _ in video_params]
        video_sizes = sizes.tolist() if sizes is not None else [[height, width]] * len(params)
        clip_sizes = [video_sizes[v] for v in source]
        padded = any(size != [height, width] for size in clip_sizes)
        if padded and (frames.device.type == "cpu" if by_size is None else by_size):
            return self._by_size(frames, params, video_sizes, source)
        groups = plan_layers(clips, clip_sizes)
        erased = [(i, p.erase, p.noise_seed) for i, p in enumerate(clips) if p.erase is not None]
        ints = {
            "source": source,
            "sizes": clip_sizes,
            "boxes": [p.box for p in clips],
            "flips": [p.flip for p in clips],
            "erased": [e[0] for e in erased],
            "erase_boxes": [e[1] for e in erased] or np.zeros((0, 4)),
            "seeds": [e[2] for e in erased],
        }
        ints |= {f"clips{k}": group.clips for k, group in enumerate(groups)}
        floats = {f"args{k}": g.args for k, g in enumerate(groups) if g.kind != "lut" and g.args}
        luts = [g for g in groups if g.kind == "lut"]
        tables = lut_tables([op for g in luts for op in g.ops])
        dev = frames.device
        ints = to_device(ints, torch.int64, dev)
        floats = to_device(floats, torch.float64, dev) if floats else {}
        tables = iter(tables.to(dev, non_blocking=True).split([len(g.clips) for g in luts]))

        x = frames.index_select(0, ints["source"]).permute(0, 1, 4, 2, 3).contiguous()
        for k, group in enumerate(groups):  # x: [clips, T, 3, H, W] uint8
            index = ints[f"clips{k}"]
            sub = x.index_select(0, index)
            sub_sizes = ints["sizes"].index_select(0, index) if padded else None
            if group.kind == "lut":
                out = _lut(sub, next(tables).view(-1, 1, 1, 256))
            elif group.kind.startswith("affine"):
                axes = group.kind.split()[1]
                out = affine(sub, floats[f"args{k}"], FILL, sub_sizes, axes)
            else:
                args = [floats[f"args{k}"].view(-1, 1, 1, 1, 1)] if group.args else []
                kwargs = {"sizes": sub_sizes} if group.kind in SIZED else {}
                out = OPS[group.kind](sub, *args, **kwargs)
            x.index_copy_(0, index, out)
        x = self.normalise(self.crop_resize_flip(x, ints["boxes"], ints["flips"]))
        if erased:
            total = sum(x.shape[1] * x.shape[2] * e[1][2] * e[1][3] for e in erased)
            self.erase(x, ints["erased"], ints["erase_boxes"], ints["seeds"], total)
        return x

    def _by_size(self, frames, params, video_sizes: list, source: list[int]) -> torch.Tensor:
        """`batch` once per frame size, on the videos of that size cut out of the padding."""
        out = None
        for size in sorted({tuple(s) for s in video_sizes}):
            videos = [v for v, s in enumerate(video_sizes) if tuple(s) == size]
            part = self.batch(
                frames[videos][:, :, : size[0], : size[1]], [params[v] for v in videos]
            )
            if out is None:
                out = part.new_empty((len(source), *part.shape[1:]))
            where = [i for i, v in enumerate(source) if v in videos]
            out.index_copy_(0, torch.tensor(where, device=out.device), part)
        return out

    def crop_resize_flip(self, x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor):
        """[n, T, 3, H, W] uint8 and each clip's crop box (top, left, h, w) and flip -> the
        crops resized bilinearly to S x S, mirrored where flipped: [n, 3, T, S, S] float32 (a
        view). Four gathers of pixel rows (each moves all frames and channels), combined in
        F.interpolate's CPU order: w00 x00 + w01 x01 + w10 x10 + w11 x11, w = h-weight x
        w-weight in float32. A flip reverses the output columns' taps."""
        n, t, c, height, width = x.shape
        pixels = x.permute(0, 3, 4, 1, 2).reshape(n * height * width, t * c)
        y0, y1, wy0, wy1 = linear_taps(boxes[:, 2], self.size)
        x_taps = linear_taps(boxes[:, 3], self.size)
        flip = flips.bool().unsqueeze(1)
        x0, x1, wx0, wx1 = (torch.where(flip, v.flip(1), v) for v in x_taps)
        first_row = torch.arange(n, device=x.device).unsqueeze(1) * height + boxes[:, :1]
        out = None
        for rows, wy in ((first_row + y0, wy0), (first_row + y1, wy1)):
            for cols, wx in ((boxes[:, 1:2] + x0, wx0), (boxes[:, 1:2] + x1, wx1)):
                index = (rows.unsqueeze(2) * width + cols.unsqueeze(1)).reshape(-1)
                weight = (wy.unsqueeze(2) * wx.unsqueeze(1)).reshape(-1, 1)
                term = pixels.index_select(0, index).to(torch.float32) * weight
                out = term if out is None else out + term
        return out.view(n, self.size, self.size, t, c).permute(0, 4, 3, 1, 2)

    def erase(self, x, clips, boxes, seeds, total: int) -> None:
        """Fill each erased clip's box (top, left, h, w; the same in every frame and channel)
        of x [n, 3, T, S, S] with `erase_noise` of its seed, counted as in `clip`: all boxes'
        pixels in one scatter. total: the number of erased values (known on the host)."""
        planes, size = x.shape[1] * x.shape[2], self.size
        area = boxes[:, 2] * boxes[:, 3]
        counts = planes * area
        owner = torch.repeat_interleave(
            torch.arange(len(clips), device=x.device), counts, output_size=total
        )
        counter = torch.arange(total, device=x.device) - (counts.cumsum(0) - counts)[owner]
        box, area = boxes[owner], area[owner]
        plane, rest = counter // area, counter % area
        row, col = box[:, 0] + rest // box[:, 3], box[:, 1] + rest % box[:, 3]
        where = ((clips[owner] * planes + plane) * size + row) * size + col
        x.view(-1).index_copy_(0, where, erase_noise(seeds[owner], counter))
