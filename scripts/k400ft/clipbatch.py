"""A batch of train clips made on the training device (`data.augment_on: device`): every clip's
RandAugment, crop, resize, flip, normalisation and erasing at once, by the arithmetic of
`augment.ClipAugmenter.clip` (the same clips, bit for bit on the CPU), in a bounded number of
kernels that read and write little more than the pixels need.

How a batch is made (`make`):
- Its videos are grouped so that little is padded (`size_groups`): by orientation on a GPU
  (320 x 568 and 320 x 426 frames together, padded to the group's largest; portrait frames
  apart), by exact size on a CPU, where no launch is saved by padding. The loader's collate
  pads each orientation group on its own (`augment.group_frames`), so no padding across
  orientations is made, copied or augmented.
- Per group, RandAugment runs layer by layer (`plan`): one gather puts the group's clips in the
  layer's order, where the clips whose op falls in one kind (`KINDS`) are adjacent (on the first
  layer the same gather makes each clip's copy of its video's frames); then each kind runs once,
  in place, on its slice of clips, with per-clip arguments as tensors (lookup tables, factors,
  affine matrices). A kind's op reads only its own clips and writes them back.
- One kernel then crops, resizes (bilinear), flips and normalises every clip of the group,
  reading its clips in the batch's order; erasing fills each erased box with the clip's noise.

Compiled (`compiled=True`, config `data.augment_compile`), each kind's op and the crop are
torch.compile'd (Inductor): one to three fused kernels each, uint8 in and uint8 out with the
arithmetic in registers (no float32 temporaries, no per-pixel coordinates in memory), and the
erasing fused into the crop. Sizes are marked unbacked, so one graph per kind serves every
batch (no recompiles for other clip counts or frame sizes: tests/test_augment.py counts them).
Inductor keeps eager's arithmetic on the CPU (no floating-point contraction), so the compiled
clips are bit-identical there (tested); on a GPU the kernels are compiled without FMA contraction
and with IEEE division (`OPTIONS`) for the same reason, which no test here can check: the
bound on what contraction changes is measured on the CPU (tests/test_augment.py, README).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from k400ft.randaugment import (
    AXES,
    FILL,
    MATRICES,
    OPS,
    affine,
    apply_lut,
    auto_contrast,
    color,
    contrast,
    equalize,
    sharpness,
)

# pixel-wise ops: applied through one lookup table per clip, made by the op itself (`lut_tables`)
LUT_OPS = (
    "Invert",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "BrightnessIncreasing",
)
KINDS = (  # how a batch applies RandAugment's 15 ops: each kind in one call per layer
    "lut",
    "AutoContrast",
    "Equalize",
    "ColorIncreasing",
    "ContrastIncreasing",
    "SharpnessIncreasing",
    "affine x",  # ShearX, TranslateXRel: 4 neighbours along x
    "affine y",  # ShearY, TranslateYRel
    "affine xy",  # Rotate: 16 neighbours
)
# Inductor options: a GPU kernel rounds as eager does (no FMA contraction, IEEE division)
OPTIONS = {
    "emulate_precision_casts": True,
    "eager_numerics.division_rounding": True,
    # recompute a kind's neighbours, coordinates and weights inside its kernel rather than
    # store them: loads served by the cache cost less than full-size temporaries in memory
    "realize_reads_threshold": 64,
    "realize_opcount_threshold": 4096,
    "realize_cpu_opcount_threshold": 4096,
    "realize_acc_reads_threshold": 64,
    "realize_cpu_acc_reads_threshold": 64,
    "max_fusion_size": 512,
}


def op_kind(name: str) -> str:
    """The kind (`KINDS`) RandAugment op `name` runs in."""
    return "lut" if name in LUT_OPS else f"affine {AXES[name]}" if name in AXES else name


def size_groups(sizes: Sequence[Sequence[int]], exact: bool) -> list[list[int]]:
    """The batch's videos (numbers) in the groups a batch is made in, each group padded to its
    largest frame: one group per orientation (landscape or square, portrait), or with `exact`
    one per frame size (nothing padded). In order of their first video."""
    groups: dict = {}
    for number, (height, width) in enumerate(sizes):
        key = (height, width) if exact else height > width
        groups.setdefault(key, []).append(number)
    return list(groups.values())


@dataclass
class Run:
    """The clips of one kind at one layer: positions start..stop of the layer's order, each
    clip's (op name, arguments), and what the kind takes per clip (affine matrices, or the
    blends' and sharpness's factor; nothing for lookup tables, AutoContrast and Equalize)."""

    kind: str
    start: int
    stop: int
    ops: list[tuple[str, tuple]]
    args: list


@dataclass
class Layer:
    """One RandAugment layer of a group: its clips (numbers) in the layer's order, the clips of
    each kind adjacent (then those without an op at this layer), and the runs of kinds."""

    order: list[int]
    runs: list[Run]


def plan(clips: Sequence, sizes: Sequence[Sequence[int]]) -> list[Layer]:
    """RandAugment of a group's clips (`ClipParams`) as layers of runs, each clip's ops in its
    order: at most 4 layers x 9 runs, whatever the number of clips. sizes: each clip's frame
    (h, w), which the affine matrices depend on."""
    layers = []
    for layer in range(max((len(p.ops) for p in clips), default=0)):
        by_kind: dict[str, list[int]] = {kind: [] for kind in KINDS}
        idle = []
        for number, params in enumerate(clips):
            if layer < len(params.ops):
                by_kind[op_kind(params.ops[layer][0])].append(number)
            else:
                idle.append(number)
        order: list[int] = []
        runs = []
        for kind, numbers in by_kind.items():
            if not numbers:
                continue
            ops = [clips[number].ops[layer] for number in numbers]
            if kind.startswith("affine"):
                args = [
                    MATRICES[name](arguments[0], *sizes[number])
                    for number, (name, arguments) in zip(numbers, ops, strict=True)
                ]
            elif kind == "lut" or not ops[0][1]:
                args = []
            else:
                args = [arguments[0] for _, arguments in ops]
            runs.append(Run(kind, len(order), len(order) + len(numbers), ops, args))
            order += numbers
        layers.append(Layer(order + idle, runs))
    return layers


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
    one host-to-device copy. Each tensor is a view at storage offset SPARE or more (`SPARE`)."""
    kind = torch.empty(0, dtype=dtype).numpy().dtype
    arrays = {key: np.asarray(value, dtype=kind) for key, value in pieces.items()}
    flat = np.concatenate([np.zeros(SPARE, kind)] + [a.reshape(-1) for a in arrays.values()])
    sizes = [SPARE] + [a.size for a in arrays.values()]
    parts = torch.from_numpy(flat).to(device, non_blocking=True).split(sizes)[1:]
    return {key: p.view(a.shape) for (key, a), p in zip(arrays.items(), parts, strict=True)}


# A compiled graph specialises on a tensor's storage offset being 0 or 1 (as on a size): every
# tensor a compiled kind gets is a view at an offset of SPARE elements or more, so one graph per
# kind serves every batch (the group's clips follow a spare clip that nothing reads).
SPARE = 2


# ----------------------------------------------------------------------------------------------
# One kind on its clips, in place: x [n, T, 3, H, W] uint8 (a slice of the group's clips), the
# kind's per-clip argument, each clip's (h, w) [n, 2] (None: no clip is padded). Each is a
# function of its own, so that torch.compile makes a graph per kind and byte counts name it.


def lookup(x, tables, sizes):
    x.copy_(apply_lut(x, tables.view(-1, 1, 1, 256)))


def autocontrast(x, _, sizes):
    x.copy_(auto_contrast(x, sizes))


def equalise(x, _, sizes):
    x.copy_(equalize(x, sizes))


def colour(x, factors, sizes):
    x.copy_(color(x, factors.view(-1, 1, 1, 1, 1)))


def contrast_(x, factors, sizes):
    x.copy_(contrast(x, factors.view(-1, 1, 1, 1, 1), sizes))


def sharpen(x, factors, sizes):
    x.copy_(sharpness(x, factors.view(-1, 1, 1, 1, 1), sizes))


def affine_x(x, matrices, sizes):
    x.copy_(affine(x, matrices, FILL, sizes, "x"))


def affine_y(x, matrices, sizes):
    x.copy_(affine(x, matrices, FILL, sizes, "y"))


def affine_xy(x, matrices, sizes):
    x.copy_(affine(x, matrices, FILL, sizes, "xy"))


KIND_OPS = dict(
    zip(
        KINDS,
        (lookup, autocontrast, equalise, colour, contrast_, sharpen, affine_x, affine_y, affine_xy),
        strict=True,
    )
)
# ----------------------------------------------------------------------------------------------


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


def crop_resize_flip(x, rows, boxes, flips, size: int) -> torch.Tensor:
    """x [n, T, 3, H, W] uint8; for each output clip the row of x it reads (`rows`), its crop
    box (top, left, h, w) and flip -> the crops resized bilinearly to size x size, mirrored
    where flipped: [m, 3, T, S, S] float32 (a view). Four gathers of pixel rows (each moves all
    frames and channels), combined in F.interpolate's CPU order: w00 x00 + w01 x01 + w10 x10 +
    w11 x11, w = h-weight x w-weight in float32. A flip reverses the output columns' taps."""
    n, t, c, height, width = x.shape
    pixels = x.permute(0, 3, 4, 1, 2).reshape(n * height * width, t * c)
    y0, y1, wy0, wy1 = linear_taps(boxes[:, 2], size)
    x_taps = linear_taps(boxes[:, 3], size)
    flip = flips.bool().unsqueeze(1)
    x0, x1, wx0, wx1 = (torch.where(flip, v.flip(1), v) for v in x_taps)
    first_row = (rows * height + boxes[:, 0]).unsqueeze(1)
    out = None
    for taps, wy in ((first_row + y0, wy0), (first_row + y1, wy1)):
        for cols, wx in ((boxes[:, 1:2] + x0, wx0), (boxes[:, 1:2] + x1, wx1)):
            index = (taps.unsqueeze(2) * width + cols.unsqueeze(1)).reshape(-1)
            weight = (wy.unsqueeze(2) * wx.unsqueeze(1)).reshape(-1, 1)
            term = pixels.index_select(0, index).to(torch.float32) * weight
            out = term if out is None else out + term
    return out.view(len(rows), size, size, t, c).permute(0, 4, 3, 1, 2)


def normalise(clips: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """[..., 3, T, S, S] on the 0..255 scale -> x scale + shift per channel, contiguous: a
    product then a sum, each rounded to float32. Not addcmul: its CPU kernel rounds once (the
    compiler contracts it into a fused multiply-add) where a compiled CPU kernel rounds twice,
    so the two would differ by one unit in the last place; written as two operations, eager and
    compiled, CPU and GPU kernels (compiled without contraction, `OPTIONS`) give the same bits."""
    return (clips * scale.view(3, 1, 1, 1) + shift.view(3, 1, 1, 1)).contiguous()


def erase_uniforms(seeds: torch.Tensor, counters: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Two float32 uniforms per (seed, counter), in (0, 1] and [0, 1): a 32-bit hash of both,
    integer arithmetic only (the same bits on any device, eager or compiled)."""
    key = _mix32(seeds & _M32) ^ _mix32(((seeds >> 32) & _M32) ^ 0x5BD1E995)
    u1 = (_mix32(_mix32((2 * counters) & _M32) ^ key) + 1).to(torch.float32) * 2.0**-32
    u2 = _mix32(_mix32((2 * counters + 1) & _M32) ^ key).to(torch.float32) * 2.0**-32
    return u1, u2


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """N(0, 1) from two uniforms. Always eager: compiled kernels compute log and cos with other
    libraries than eager's (on the CPU Sleef against MKL), one unit in the last place apart."""
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * np.pi) * u2)


def erase_noise(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """N(0, 1) float32 noise, elementwise a pure function of (seed, counter): hashed, then
    Box-Muller. An erased clip's noise depends on its own seed and pixel alone, on any device,
    in any batch and whatever else the batch holds."""
    return box_muller(*erase_uniforms(seeds, counters))


_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding 32-bit
    values: every product stays below 2^59, so the same bits on any device."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def erase_targets(x, clips, boxes, seeds, counter):
    """Where the erased values of x [n, 3, T, S, S] go, and their uniforms: each erased clip's
    box (top, left, h, w; the same in every frame and channel), its values numbered as in
    `ClipAugmenter.clip` (((channel x T + frame) x h + row) x w + column), all boxes' values in
    turn (`counter`: 0, 1, ... up to their total). Returns (flat index into x, u1, u2)."""
    planes, size = x.shape[1] * x.shape[2], x.shape[-1]
    area = boxes[:, 2] * boxes[:, 3]
    counts = planes * area
    ends = counts.cumsum(0)
    owner = torch.searchsorted(ends, counter, right=True)
    local = counter - (ends - counts)[owner]
    box, area = boxes[owner], area[owner]
    plane, rest = local // area, local % area
    row, col = box[:, 0] + rest // box[:, 3], box[:, 1] + rest % box[:, 3]
    where = ((clips[owner] * planes + plane) * size + row) * size + col
    return (where, *erase_uniforms(seeds[owner], local))


def crop_finish(x, rows, boxes, flips, scale, shift, size: int):
    """`crop_resize_flip` then `normalise`: a group's last step as one function (compiled: one
    kernel from the clips' uint8 pixels to the normalised float32 clips)."""
    return normalise(crop_resize_flip(x, rows, boxes, flips, size), scale, shift)


@functools.cache
def compiled(function):
    """`function` compiled once per process (its graphs: one per kind of input, sizes
    unbacked)."""
    return torch.compile(function, dynamic=False, options=OPTIONS)


def unbacked(tensor: torch.Tensor, *dims: int) -> torch.Tensor:
    """Mark tensor's dims as sizes the compiled graph must not specialise on (not even 0 or 1):
    one graph for every clip count and frame size."""
    for dim in dims:
        torch._dynamo.decorators.mark_unbacked(tensor, dim)
    return tensor


def compile_stats() -> dict:
    """Graphs Dynamo compiled in this process so far, and the seconds they took."""
    from torch._dynamo.utils import compile_times, counters

    seconds = compile_times(repr="csv", aggregate=True)
    total = 0.0
    for name, value in zip(*seconds, strict=False):
        if name == "_compile.compile_inner":
            total = float(value)
    return {"graphs": int(counters["stats"]["unique_graphs"]), "seconds": total}


def _inverse(order: Sequence[int]) -> list[int]:
    """position[clip] for an order listing the clips."""
    position = [0] * len(order)
    for place, clip in enumerate(order):
        position[clip] = place
    return position


def make(sources, sizes, params, size: int, normalisation, exact: bool, fused: bool):
    """The batch's clips [sum of clips, 3, T, S, S] float32, in the batch's order (each video's
    clips adjacent). sources: (frames [V', T, H', W', 3] uint8 on the device, the batch numbers
    of its V' videos) pairs, each video in one; sizes: each video's (h, w); params: each video's
    `ClipParams`; size: S; normalisation: (scale, shift) per channel; exact: one group per frame
    size (else per orientation); fused: the compiled kernels (module docstring)."""
    starts = np.cumsum([0] + [len(p) for p in params]).tolist()
    held = {
        number: (frames, local)
        for frames, numbers in sources
        for local, number in enumerate(numbers)
    }
    device = sources[0][0].device
    scale, shift = (v.to(device, non_blocking=True) for v in normalisation)
    groups = size_groups(sizes, exact)
    out = None
    for videos in groups:
        frames = held[videos[0]][0]
        height = max(sizes[v][0] for v in videos)
        width = max(sizes[v][1] for v in videos)
        clips = _Group(videos, [held[v][1] for v in videos], sizes, params, (height, width))
        made = clips.make(frames[:, :, :height, :width], size, scale, shift, fused)
        positions = [p for v in videos for p in range(starts[v], starts[v + 1])]
        if len(groups) == 1:
            out = made
        else:
            if out is None:
                out = made.new_empty((starts[-1], *made.shape[1:]))
            index = torch.tensor(positions).to(device, non_blocking=True)
            out.index_copy_(0, index, made)
    erase(out, [p for video_params in params for p in video_params], fused)
    return out


class _Group:
    """The clips of one size group, planned on the host (`plan`), made on the device."""

    def __init__(self, videos, local, sizes, params, padded_size):
        self.params = [p for v in videos for p in params[v]]
        self.sizes = [list(sizes[v]) for v in videos for _ in params[v]]
        self.source = [frame for v, frame in zip(videos, local, strict=True) for _ in params[v]]
        self.padded = any(s != list(padded_size) for s in self.sizes)
        self.layers = plan(self.params, self.sizes)

    def host_values(self, fused: bool):
        """Everything the device needs, as three host dicts: int64, float64 and lookup tables."""
        orders = [layer.order for layer in self.layers] or [list(range(len(self.params)))]
        ints = {"first": [self.source[clip] for clip in orders[0]]}
        for k, order in enumerate(orders):
            if k:
                before = _inverse(orders[k - 1])
                ints[f"gather{k}"] = [before[clip] for clip in order]
            if self.padded or fused:
                ints[f"sizes{k}"] = [self.sizes[clip] for clip in order]
        ints["rows"] = _inverse(orders[-1])
        ints["boxes"] = [p.box for p in self.params]
        ints["flips"] = [p.flip for p in self.params]
        floats = {
            f"args{k}.{r}": run.args
            for k, layer in enumerate(self.layers)
            for r, run in enumerate(layer.runs)
            if run.kind != "lut" and run.args
        }
        luts = [run for layer in self.layers for run in layer.runs if run.kind == "lut"]
        return ints, floats, lut_tables([op for run in luts for op in run.ops])

    def make(self, frames, size: int, scale, shift, fused: bool) -> torch.Tensor:
        """frames [V', T, H, W, 3] (the group's padded size) -> the group's clips, in order."""
        ints, floats, tables = self.host_values(fused)
        device = frames.device
        ints = to_device(ints, torch.int64, device)
        floats = to_device(floats, torch.float64, device) if floats else {}
        tables = torch.cat([tables.new_zeros(1, 256), tables]).to(device, non_blocking=True)
        call = _compiled_call if fused else _call
        shape = (1 + len(self.params), frames.shape[1], 3, *frames.shape[2:4])
        x = torch.index_select(
            frames.permute(0, 1, 4, 2, 3), 0, ints["first"], out=frames.new_empty(shape)[1:]
        )
        spare = frames.new_empty(shape)[1:] if len(self.layers) > 1 else None
        used = 1
        for k, layer in enumerate(self.layers):
            if k:  # this layer's order, into the other buffer
                x, spare = torch.index_select(x, 0, ints[f"gather{k}"], out=spare), x
            for r, run in enumerate(layer.runs):
                if run.kind == "lut":
                    arg = tables[used : used + run.stop - run.start]
                    used += run.stop - run.start
                else:
                    arg = floats.get(f"args{k}.{r}")
                sizes = ints.get(f"sizes{k}")
                sizes = sizes[run.start : run.stop] if sizes is not None else None
                call(KIND_OPS[run.kind], x[run.start : run.stop], arg, sizes)
        finish = (x, ints["rows"], ints["boxes"], ints["flips"], scale, shift, size)
        if not fused:
            return crop_finish(*finish)
        unbacked(x, 0, 1, 3, 4)
        return compiled(crop_finish)(x, *(unbacked(v, 0) for v in finish[1:4]), *finish[4:])


def _call(function, x, arg, sizes) -> None:
    function(x, arg, sizes)


def erase(out: torch.Tensor, clips, fused: bool) -> None:
    """Fill each erased clip's box of out [n, 3, T, S, S] with its noise (`erase_targets`,
    compiled when fused; the noise itself is always eager, `box_muller`): one scatter."""
    erased = [(i, p.erase, p.noise_seed) for i, p in enumerate(clips) if p.erase is not None]
    if not erased:
        return
    values = {"clips": [e[0] for e in erased], "boxes": [e[1] for e in erased]}
    values["seeds"] = [e[2] for e in erased]
    ints = to_device(values, torch.int64, out.device)
    total = sum(out.shape[1] * out.shape[2] * e[1][2] * e[1][3] for e in erased)
    counter = torch.arange(total, device=out.device)
    if fused:
        targets = compiled(erase_targets)(
            unbacked(out, 0, 2), *(unbacked(v, 0) for v in (*ints.values(), counter))
        )
    else:
        targets = erase_targets(out, *ints.values(), counter)
    where, u1, u2 = targets
    out.view(-1).index_copy_(0, where, box_muller(u1, u2))


def _compiled_call(function, x, arg, sizes) -> None:
    unbacked(x, 0, 1, 3, 4)
    for tensor in (arg, sizes):
        if tensor is not None:
            unbacked(tensor, 0)
    compiled(function)(x, arg, sizes)
