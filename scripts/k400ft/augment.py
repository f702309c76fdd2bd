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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from k400ft.randaugment import (
    AXES,
    FILL,
    MATRICES,
    OPS,
    affine,
    apply_lut,
    rand_augment,
    rand_augment_pil,
)

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
                out = apply_lut(sub, next(tables).view(-1, 1, 1, 256))
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
            out.index_copy_(0, torch.tensor(where).to(out.device, non_blocking=True), part)
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
