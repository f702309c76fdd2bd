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
  the crop box (`video.random_resized_crop_box`), the flip (numpy), the erasing box (timm's
  `RandomErasing` semantics, `erase_box`) and a seed for the erasing noise (torch). The Python
  and numpy draws are exactly today's upstream-faithful ones, clip for clip.
- `ClipAugmenter` (in the workers, `data.augment_on: workers`, or on the training device after
  the host-to-device copy, `device`): applies those parameters in upstream's order on the
  full-size frames: RandAugment, the crop resized bilinearly, the flip, normalisation, the
  erasing box filled with noise from a generator seeded by the clip's noise seed. On a GPU,
  RandAugment's ops are the torch tensor ops below (each op on all frames of the clip at once;
  AutoContrast and Equalize per frame and channel, as PIL does per image); on the CPU they are
  timm's own PIL ops, called with the drawn arguments: upstream's pixels exactly, and several
  times faster there than the torch ops (benchmarks/train_data.py).

How close the torch ops are to PIL's (tests/test_augment.py measures each on the same frames
and arguments): Invert, Posterize, Solarize, SolarizeAdd, AutoContrast, Equalize, the three
blends (Color, Contrast, Brightness) and Sharpness follow Pillow's integer and float32
arithmetic exactly; the five geometric ops (Pillow's affine transform: pixel centres, its
a = -1 bicubic kernel, clamped neighbours, fill outside, truncation to uint8) compute the pixel
arithmetic in float32 where Pillow uses double, so a value on an integer boundary can come out
one level lower or higher (measured: at most 1 level, in well under 1% of the pixels). The
erasing noise is the same N(0, 1), from the per-clip generator instead of the worker's global
torch stream; everything else a clip's pixels depend on is drawn exactly as before.
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
# RandAugment's 15 ops on uint8 frames [N, 3, H, W] (one argument set for all N frames)


def _lut(frames: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Map each frame's channel c through its own 256-entry table [N, 3, 256] (uint8)."""
    n, c, h, w = frames.shape
    flat = frames.reshape(n * c, h * w).long()
    return torch.gather(table.reshape(n * c, 256), 1, flat).reshape(n, c, h, w)


def _histograms(frames: torch.Tensor) -> torch.Tensor:
    """[N, 3, 256] int64 pixel counts per frame and channel."""
    n, c, h, w = frames.shape
    offsets = torch.arange(n * c, device=frames.device).unsqueeze(1) * 256
    index = (frames.reshape(n * c, h * w).long() + offsets).reshape(-1)
    return torch.bincount(index, minlength=n * c * 256).reshape(n, c, 256)


def auto_contrast(frames: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0) per frame and channel: lo, hi = the darkest and
    brightest levels present; level i -> int(i x 255 / (hi - lo) - lo x 255 / (hi - lo)),
    clipped; identity where hi <= lo."""
    levels = torch.arange(256, device=frames.device, dtype=torch.float64)
    flat = frames.flatten(2)
    lo = flat.amin(dim=2).double().unsqueeze(2)
    hi = flat.amax(dim=2).double().unsqueeze(2)
    spread = (hi - lo).clamp(min=1)
    scale = torch.full_like(spread, 255.0) / spread  # a true division, as Python's (not 255 x 1/d)
    table = (levels * scale - lo * scale).trunc().clamp(0, 255)
    table = torch.where(hi > lo, table, levels)
    return _lut(frames, table.to(torch.uint8))


def equalize(frames: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.equalize per frame and channel: step = (pixels - count of the brightest
    level present) // EQUALIZE_DIVISOR; level i -> (step // 2 + pixels below i) // step,
    clipped to 255; identity when at most one level is present or step is 0."""
    hist = _histograms(frames)
    total = hist.sum(dim=2, keepdim=True)
    levels = torch.arange(256, device=frames.device)
    brightest = torch.where(hist > 0, levels, -1).amax(dim=2, keepdim=True)
    last = hist.gather(2, brightest.clamp(min=0))
    step = (total - last) // EQUALIZE_DIVISOR
    below = hist.cumsum(dim=2) - hist
    table = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    keep = ((hist > 0).sum(dim=2, keepdim=True) <= 1) | (step == 0)
    table = torch.where(keep, levels, table)
    return _lut(frames, table.to(torch.uint8))


def invert(frames: torch.Tensor) -> torch.Tensor:
    return 255 - frames


def posterize(frames: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the `bits` most significant bits (timm: unchanged from 8 bits on)."""
    if bits >= 8:
        return frames
    return frames & (~((1 << (8 - bits)) - 1) & 0xFF)


def solarize(frames: torch.Tensor, threshold: int) -> torch.Tensor:
    """Levels >= threshold inverted (PIL ImageOps.solarize)."""
    return torch.where(frames < threshold, frames, 255 - frames)


def solarize_add(frames: torch.Tensor, add: int, threshold: int = 128) -> torch.Tensor:
    """timm's solarize_add: levels below threshold get + add (capped at 255)."""
    added = (frames.to(torch.int16) + add).clamp(max=255).to(torch.uint8)
    return torch.where(frames < threshold, added, frames)


def _grey(frames: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: (R x 19595 + G x 38470 + B x 7471 + 32768) >> 16, [N, 1, H, W] int32."""
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32, device=frames.device)
    grey = (frames.to(torch.int32) * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    return (grey + 32768) >> 16


def blend(degenerate: torch.Tensor, frames: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL Image.blend(degenerate, image, factor): in float32, d + factor x (x - d), truncated
    toward zero and clipped to 0..255 (PIL's ImagingBlend)."""
    alpha = torch.tensor(factor, dtype=torch.float32).item()  # PIL takes alpha as a C float
    d = degenerate.to(torch.float32)
    out = d + alpha * (frames.to(torch.float32) - d)
    return out.clamp(0, 255).trunc().to(torch.uint8)


def color(frames: torch.Tensor, factor: float) -> torch.Tensor:
    """ImageEnhance.Color: blend with the frame's greyscale."""
    return blend(_grey(frames).expand_as(frames), frames, factor)


def contrast(frames: torch.Tensor, factor: float) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with a flat frame at int(mean greyscale level + 0.5)."""
    grey = _grey(frames)
    mean = (grey.double().mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()
    return blend(mean.expand_as(frames), frames, factor)


def brightness(frames: torch.Tensor, factor: float) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return blend(torch.zeros_like(frames), frames, factor)


def sharpness(frames: torch.Tensor, factor: float) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter of the frame (3x3 kernel
    [1 1 1; 1 5 1; 1 1 1] / 13, rounded; the one-pixel border kept as it is). Computed as the
    integer 3x3 sum plus 4 x the centre, / 13: the exact value is never within 1/26 of a
    rounding boundary, so PIL's float32 sum rounds to the same level."""
    x = frames.to(torch.int32)
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = (box + 4 * x[:, :, 1:-1, 1:-1]).to(torch.float32) / 13.0
    degenerate = frames.clone()
    degenerate[:, :, 1:-1, 1:-1] = (smooth + 0.5).floor().clamp(0, 255).to(torch.uint8)
    return blend(degenerate, frames, factor)


def _cubic(v1, v2, v3, v4, d):
    """PIL's geometric bicubic (Geometry.c's BICUBIC macro, kernel a = -1), in its Horner form
    (the same operations, so float32 rounds as closely as it can to PIL's double)."""
    p2 = v3 - v1
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = v2 - v1 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def affine(frames: torch.Tensor, matrix: Sequence[float], fill: Sequence[int] = FILL):
    """PIL's Image.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill) on [N, 3, H, W]:
    output pixel (x, y) samples the input at (a(x+.5) + b(y+.5) + c, d(x+.5) + e(y+.5) + f);
    outside [0, W) x [0, H) it gets `fill`; inside, the 4 x 4 neighbours (clamped at the
    border) are combined with PIL's a = -1 cubic kernel and truncated to uint8. The frames
    are gathered pixel-major ([H x W, N x 3]: one index per pixel moves all frames and
    channels), the coordinates in float64 as PIL's, the pixel arithmetic in float32."""
    n, c, h, w = frames.shape
    dev = frames.device
    a, b, cc, d, e, f = (float(v) for v in matrix)
    ys = torch.arange(h, device=dev, dtype=torch.float64).view(h, 1) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float64).view(1, w) + 0.5
    src_x = a * xs + b * ys + cc
    src_y = d * xs + e * ys + f
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    src_x, src_y = src_x - 0.5, src_y - 0.5
    x0, y0 = src_x.floor(), src_y.floor()
    dx = (src_x - x0).to(torch.float32).reshape(-1, 1)
    dy = (src_y - y0).to(torch.float32).reshape(-1, 1)
    x0, y0 = x0.long() - 1, y0.long() - 1
    pixels = frames.permute(2, 3, 0, 1).reshape(h * w, n * c)
    cols = [(x0 + i).clamp(0, w - 1) for i in range(4)]
    rows = []
    for j in range(4):
        row = (y0 + j).clamp(0, h - 1) * w
        taps = [pixels.index_select(0, (row + col).reshape(-1)).to(torch.float32) for col in cols]
        rows.append(_cubic(*taps, dx))
    value = _cubic(*rows, dy)
    value = value.clamp_(0, 255).trunc_().to(torch.uint8).reshape(h, w, n, c).permute(2, 3, 0, 1)
    fill_value = torch.tensor(fill, dtype=torch.uint8, device=dev).view(1, 3, 1, 1)
    return torch.where(inside, value, fill_value)


def rotate(frames: torch.Tensor, degrees: float, fill: Sequence[int] = FILL) -> torch.Tensor:
    """PIL Image.rotate(degrees) about the centre (w / 2, h / 2), same size, its matrix."""
    if degrees % 360.0 == 0:
        return frames
    h, w = frames.shape[-2:]
    angle = -math.radians(degrees)
    m = [
        round(math.cos(angle), 15),
        round(math.sin(angle), 15),
        0.0,
        round(-math.sin(angle), 15),
        round(math.cos(angle), 15),
        0.0,
    ]
    cx, cy = w / 2.0, h / 2.0
    m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx
    m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy
    return affine(frames, m, fill)


def shear_x(frames, factor, fill=FILL):
    return affine(frames, (1, factor, 0, 0, 1, 0), fill)


def shear_y(frames, factor, fill=FILL):
    return affine(frames, (1, 0, 0, factor, 1, 0), fill)


def translate_x_rel(frames, pct, fill=FILL):
    return affine(frames, (1, 0, pct * frames.shape[-1], 0, 1, 0), fill)


def translate_y_rel(frames, pct, fill=FILL):
    return affine(frames, (1, 0, 0, 0, 1, pct * frames.shape[-2]), fill)


OPS = {  # timm's RandAugment op names (the 'inc1' increasing set) -> tensor op
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "PosterizeIncreasing": posterize,
    "SolarizeIncreasing": solarize,
    "SolarizeAdd": solarize_add,
    "ColorIncreasing": color,
    "ContrastIncreasing": contrast,
    "BrightnessIncreasing": brightness,
    "SharpnessIncreasing": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateXRel": translate_x_rel,
    "TranslateYRel": translate_y_rel,
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
# The whole clip


class ClipAugmenter:
    """Applies `ClipParams` to decoded frames on their device: [T, H, W, 3] uint8 (as decoded)
    -> [3, T, S, S] float32, normalised, upstream's order (see the module's docstring).

    RandAugment's pixel ops: the torch ops on a GPU; on the CPU timm's PIL ops, which are
    faster there and upstream-exact (pil_on_cpu=False forces the torch ops, for tests and the
    benchmark). Everything after RandAugment is the same torch code on either."""

    def __init__(self, data_cfg: dict[str, Any], pil_on_cpu: bool = True):
        self.pil_on_cpu = pil_on_cpu
        self.size = int(data_cfg["input_size"])
        self.mean = torch.tensor(data_cfg["mean"], dtype=torch.float32)
        self.std = torch.tensor(data_cfg["std"], dtype=torch.float32)

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
        scale = (1.0 / (255.0 * self.std)).to(dev).view(3, 1, 1, 1)
        shift = (-self.mean / self.std).to(dev).view(3, 1, 1, 1)
        x = torch.addcmul(shift, x.transpose(0, 1), scale).contiguous()  # [3, T, S, S]
        if params.erase is not None:
            top, left, h, w = params.erase
            generator = torch.Generator(device=dev)
            generator.manual_seed(params.noise_seed)
            flat = x.view(-1, self.size, self.size)  # one box for every frame and channel
            noise = torch.empty((flat.shape[0], h, w), device=dev).normal_(generator=generator)
            flat[:, top : top + h, left : left + w] = noise
        return x

    def batch(
        self, frames: Sequence[torch.Tensor], params: Sequence[Sequence[ClipParams]]
    ) -> torch.Tensor:
        """Videos' frames (sizes may differ) and each video's clips' parameters -> clips
        [sum of clips, 3, T, S, S], the clips of one video adjacent (as `video.train_collate`)."""
        return torch.stack(
            [self.clip(f, p) for f, clips in zip(frames, params, strict=True) for p in clips]
        )
