"""RandAugment's 15 ops as torch tensor ops on uint8 frames [..., 3, H, W] (one clip, or a batch
of clips padded to a common size), and the same ops as timm's PIL ones (`rand_augment_pil`).

One clip: frames [T, 3, H, W] and the op's arguments as Python numbers (one draw for all its
frames). A batch of clips: frames [n, T, 3, H, W] padded to a common H x W, the arguments as
tensors that broadcast against [n, 1, 1, 1, 1] (each clip its own), and `sizes` [n, 2], each
clip's true (h, w): statistics, borders and the affine ops' frame see its own pixels only. The
arithmetic is the same either way, so a clip comes out the same alone or in a batch
(`augment.ClipAugmenter.batch`).

How close the torch ops are to PIL's (tests/test_augment.py measures each on the same frames
and arguments): Invert, Posterize, Solarize, SolarizeAdd, AutoContrast, Equalize, the three
blends (Color, Contrast, Brightness) and Sharpness follow Pillow's integer and float32
arithmetic exactly; the five geometric ops (Pillow's affine transform: pixel centres, its
a = -1 bicubic kernel, clamped neighbours, fill outside, truncation to uint8) compute the pixel
arithmetic in float32 where Pillow uses double, so a value on an integer boundary can come out
one level lower or higher (measured: at most 1 level, in well under 1% of the pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

# upstream: --train_interpolation bicubic (RandAugment's geometric ops) and RandAugment's fill
# (128, 128, 128) (create_random_augment passes no img_mean)
FILL = (128, 128, 128)
# Pillow's equalize divides by 255 since Pillow 10 (by 256 before, as in upstream's older
# environment): the pinned Pillow's value, so the tensor op matches the PIL path it replaces.
EQUALIZE_DIVISOR = 255


def _valid(frames: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[n, 1, 1, H, W] bool: the pixels of each clip's own (h, w) within the padded frames."""
    height, width = frames.shape[-2:]
    rows = torch.arange(height, device=frames.device) < sizes[:, :1]
    cols = torch.arange(width, device=frames.device) < sizes[:, 1:]
    valid = rows.unsqueeze(2) & cols.unsqueeze(1)
    return valid.view(len(valid), *[1] * (frames.dim() - 3), height, width)


def apply_lut(frames: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Map each frame's channel through its own 256-entry table ([..., 3 or 1, 256] uint8,
    broadcast against the frames' leading dimensions)."""
    height, width = frames.shape[-2:]
    table = table.expand(*frames.shape[:-2], 256).reshape(-1, 256)
    flat = frames.reshape(-1, height * width).long()
    return torch.gather(table, 1, flat).view(frames.shape)


def _histograms(frames: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """[..., 3, 256] int32 pixel counts per frame and channel (within each clip's size)."""
    height, width = frames.shape[-2:]
    planes = frames.numel() // (height * width)
    offsets = torch.arange(planes, device=frames.device).unsqueeze(1) * 256
    index = frames.reshape(planes, height * width).long() + offsets
    if sizes is not None:  # padding goes to one extra bin, dropped
        valid = _valid(frames, sizes).expand(frames.shape).reshape(planes, height * width)
        index = torch.where(valid, index, planes * 256)
    index = index.reshape(-1)  # counted by a scatter: CUDA's bincount reads its max on the host
    # int32: compiled, an int32 scatter-add is one kernel; an int64 one falls back to aten
    counts = torch.zeros(planes * 256 + 1, dtype=torch.int32, device=frames.device)
    counts.scatter_add_(0, index, torch.ones_like(index, dtype=torch.int32))
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
    return apply_lut(frames, table.to(torch.uint8))


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
    return apply_lut(frames, table.to(torch.uint8))


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
