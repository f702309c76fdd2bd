"""Upstream checkpoint layouts: read a file, check its keys, map it onto our model, write one.

Everything this project knows about the checkpoints of REFERENCE.md section 1 lives here, so
that `k400ft.models` is the nets and its loaders only map, load and report:

- reading: `read_state_dict`, weights-only, unwrapping `{'model'|'module': ...}`;
- checking: `check_layout`, the expected keys and shapes of each format (`LAYOUT_FORMATS`),
  derived from the checkpoint's own stem, blocks and `pos_embed`, pretraining-only keys allowed;
- mapping: one pure filter per pretrained format (timm's `checkpoint_filter_fn` style,
  `PRETRAIN_FILTERS`): the state dict under our key names, the keys it ignores and notes on
  what it changed. CatMAE: the Conv2d stem inflated to Conv3d, `pos_embed` resampled
  bicubically when the checkpoint's grid differs from the model's (another img_size).
  VideoMAE: the `encoder.` prefix stripped; its position table is fixed and computed for any
  frames/size, so there is nothing to interpolate. A stem kernel of another patch/tubelet
  size is an error;
- writing: `upstream_state_dict`, a random checkpoint in the exact upstream layout (tests,
  demo), and `place_encoder`, which puts a fine-tuning model's encoder into one (the demo).

Decoder, mask token, `encoder_to_decoder` and the pretrained final norm are the keys a
fine-tune ignores; `fc_norm` and `head` (`NEW_AT_FINETUNE`) are what it initialises anew.

This module does not import `k400ft.models` (which imports it): a filter reads the model
through `FilterTarget`, and the writers take the `arch` defaults from `k400ft.arch`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from k400ft.arch import resolve_arch

__all__ = [
    "LAYOUT_FORMATS",
    "NEW_AT_FINETUNE",
    "PRETRAIN_FILTERS",
    "PRETRAIN_FORMATS",
    "FilterTarget",
    "Mapped",
    "catmae_pretrain_filter",
    "check_layout",
    "compare_shapes",
    "place_encoder",
    "read_state_dict",
    "sincos_2d_table",
    "summarise_keys",
    "upstream_state_dict",
    "videomae_pretrain_filter",
]

#: Pretrained layouts `load_pretrained` accepts, and the model path each one feeds.
PRETRAIN_FORMATS: dict[str, str] = {"catmae_pretrain": "2d", "videomae_pretrain": "3d"}
#: Every upstream layout `check_layout` knows (the config schema's checkpoint `format` enum).
LAYOUT_FORMATS: dict[str, str] = {**PRETRAIN_FORMATS, "videomae_finetuned": "3d"}
#: Tensors a fine-tuning model always initialises anew from a pretrained checkpoint.
NEW_AT_FINETUNE = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")


# ----------------------------------------------------------------------------------------------
# Reading checkpoints
# ----------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a checkpoint weights-only on the CPU and return its state dict.

    `torch.load(map_location="cpu", weights_only=True)` with `argparse.Namespace` allow-listed
    (CatMAE's pretraining saves its `args` as one); nothing else outside PyTorch's weights-only
    allow-list is unpickled, so a pickle that would run code is refused before it runs.
    Unwraps `{'model': ...}`, then `{'module': ...}`, else takes the dict as is (upstream
    `--model_key model|module`). Raises FileNotFoundError or ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused or unreadable as a weights-only PyTorch checkpoint"
            f"{_html_hint(path)}: {_first_line(err)}"
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is not a PyTorch checkpoint{_html_hint(path)}: {_first_line(err)}"
        ) from None
    state = obj
    if isinstance(obj, Mapping):
        for key in ("model", "module"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path} holds no state dict (top level: {type(obj).__name__})")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path}: not a state dict, these entries are not tensors: {_listing(not_tensors)}"
        )
    return dict(state)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _html_hint(path: Path) -> str:
    """' (it is an HTML page ...)' when the file starts like one (a Drive error page)."""
    with contextlib.suppress(OSError), path.open("rb") as handle:
        if handle.read(512).lstrip().lower().startswith((b"<!doctype html", b"<html")):
            return " (it is an HTML page, e.g. a download error page)"
    return ""


# ----------------------------------------------------------------------------------------------
# The layouts and their check
# ----------------------------------------------------------------------------------------------


def _encoder_shapes(
    patchify: str,
    dim: int,
    depth: int,
    hidden: int,
    stem: tuple[int, ...],
    pos_rows: int,
    num_classes: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an upstream encoder, in upstream order and our (fine-tune) key names.

    "2d" (CatMAE pretrain, timm ViT): cls_token, pos_embed [1, pos_rows, D], the stem with kernel
    shape `stem`, blocks with full qkv bias. "3d" (VideoMAE): the stem, blocks with q/v bias.
    With `num_classes`, fc_norm and the head follow (a fine-tuned model).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    if patchify == "2d":
        shapes["cls_token"] = (1, 1, dim)
        shapes["pos_embed"] = (1, pos_rows, dim)
    shapes["patch_embed.proj.weight"] = (dim, 3, *stem)
    shapes["patch_embed.proj.bias"] = (dim,)
    for i in range(depth):
        block = f"blocks.{i}."
        shapes[block + "norm1.weight"] = shapes[block + "norm1.bias"] = (dim,)
        if patchify == "3d":
            shapes[block + "attn.q_bias"] = shapes[block + "attn.v_bias"] = (dim,)
        shapes[block + "attn.qkv.weight"] = (3 * dim, dim)
        if patchify == "2d":
            shapes[block + "attn.qkv.bias"] = (3 * dim,)
        shapes[block + "attn.proj.weight"] = (dim, dim)
        shapes[block + "attn.proj.bias"] = (dim,)
        shapes[block + "norm2.weight"] = shapes[block + "norm2.bias"] = (dim,)
        shapes[block + "mlp.fc1.weight"] = (hidden, dim)
        shapes[block + "mlp.fc1.bias"] = (hidden,)
        shapes[block + "mlp.fc2.weight"] = (dim, hidden)
        shapes[block + "mlp.fc2.bias"] = (dim,)
    if num_classes is not None:
        shapes["fc_norm.weight"] = shapes["fc_norm.bias"] = (dim,)
        shapes["head.weight"] = (num_classes, dim)
        shapes["head.bias"] = (num_classes,)
    return shapes


def _ignored(key: str, fmt: str) -> bool:
    """Pretraining-only keys the fine-tuning model does not use (REFERENCE section 1).

    CatMAE: the decoder (`decoder_*`), `mask_token` and the final `norm`. VideoMAE (after the
    `encoder.` prefix is stripped): `decoder.*`, `encoder_to_decoder.*`, `mask_token` and the
    final `norm` (upstream `encoder.norm`).
    """
    if fmt == "catmae_pretrain":
        return key.startswith(("decoder_", "norm.")) or key == "mask_token"
    if fmt == "videomae_pretrain":
        return key.startswith(("decoder.", "encoder_to_decoder.", "norm.")) or key == "mask_token"
    return False


def _encoder_view(state_dict: Mapping[str, Tensor], fmt: str) -> tuple[dict, list[str]]:
    """Split an upstream state dict into (encoder tensors under our key names, ignored keys).

    VideoMAE pretrain keys lose their `encoder.` prefix first (upstream strips it the same way);
    ignored keys are reported under their original names.
    """
    if fmt not in LAYOUT_FORMATS:
        raise ValueError(
            f"unknown checkpoint format {fmt!r}; expected one of {sorted(LAYOUT_FORMATS)}"
        )
    encoder: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        name = key
        if fmt == "videomae_pretrain" and key.startswith("encoder."):
            name = key[len("encoder.") :]
        if _ignored(name, fmt):
            ignored.append(key)
        else:
            encoder[name] = value
    return encoder, ignored


def check_layout(state_dict: Mapping[str, Tensor], fmt: str) -> None:
    """Raise ValueError unless `state_dict` (already unwrapped) has the encoder layout of `fmt`.

    The expected keys and shapes are derived from the checkpoint's own stem, first MLP and
    `pos_embed` (so any size passes as long as it is self-consistent): catmae_pretrain needs
    cls_token, pos_embed [1, 1+N, D], a Conv2d stem [D, 3, p, p] and timm blocks with full qkv
    bias; videomae_pretrain `encoder.`-prefixed (or bare) keys with a Conv3d stem
    [D, 3, t, p, p] and q/v bias; videomae_finetuned the same without prefix plus fc_norm and
    head. Decoder, mask token and final-norm keys are allowed and ignored. The message lists
    every missing, unexpected and mis-shaped key.
    """
    encoder, _ = _encoder_view(state_dict, fmt)
    patchify = LAYOUT_FORMATS[fmt]
    stem = encoder.get("patch_embed.proj.weight")
    stem_ndim = 4 if patchify == "2d" else 5
    if stem is None or stem.ndim != stem_ndim:
        got = "absent" if stem is None else f"shape {list(stem.shape)}"
        raise ValueError(
            f"not a {fmt} checkpoint: patch_embed.proj.weight (the {stem_ndim - 2}-D stem "
            f"kernel) is {got}; keys seen: {summarise_keys(state_dict)}"
        )
    dim = stem.shape[0]
    block_ids = {int(m.group(1)) for k in encoder if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(block_ids) + 1 if block_ids else 1
    fc1 = encoder.get("blocks.0.mlp.fc1.weight")
    hidden = fc1.shape[0] if fc1 is not None and fc1.ndim == 2 else 4 * dim
    pos = encoder.get("pos_embed")
    pos_rows = pos.shape[1] if pos is not None and pos.ndim == 3 else -1
    head = encoder.get("head.weight")
    num_classes = None
    if fmt == "videomae_finetuned":
        num_classes = head.shape[0] if head is not None and head.ndim == 2 else -1
    expected = _encoder_shapes(
        patchify, dim, depth, hidden, tuple(stem.shape[2:]), pos_rows, num_classes
    )
    problems = compare_shapes(encoder, expected)
    if patchify == "2d" and pos_rows != -1 and pos_rows < 2:
        problems.append(f"pos_embed has {pos_rows} rows; expected 1 cls row + patch rows")
    if problems:
        raise ValueError(f"not a {fmt} checkpoint: " + "; ".join(problems))


def compare_shapes(
    tensors: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """Missing, unexpected and mis-shaped keys of `tensors` against `expected`, as sentences."""
    problems = []
    missing = [key for key in expected if key not in tensors]
    unexpected = [key for key in tensors if key not in expected]
    shapes = [
        f"{key} {list(tensors[key].shape)} (expected {list(expected[key])})"
        for key in expected
        if key in tensors and tuple(tensors[key].shape) != tuple(expected[key])
    ]
    if missing:
        problems.append(f"missing {len(missing)} keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} tensors of the wrong shape: {_listing(shapes)}")
    return problems


def _listing(items: list[str], limit: int = 24) -> str:
    """Comma-separated items, the first `limit` of them."""
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def summarise_keys(keys) -> str:
    """Keys grouped by their leading name(s): 'decoder_blocks.* (52), mask_token, norm.* (2)'."""
    groups: collections.Counter = collections.Counter()
    single: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        depth = 2 if parts[0] in ("encoder", "decoder", "module") and len(parts) > 2 else 1
        group = ".".join(parts[:depth])
        groups[group] += 1
        single[group] = key
    return ", ".join(single[g] if n == 1 else f"{g}.* ({n})" for g, n in groups.items())


# ----------------------------------------------------------------------------------------------
# Mapping a pretrained layout onto the fine-tuning model (one filter per format)
# ----------------------------------------------------------------------------------------------


class FilterTarget(Protocol):
    """What a filter reads of the model it maps onto (`models.VideoViT` is one): its resolved
    `arch` dict, its token grid (Tp, Hp, Wp) and its stem (`patch_embed.proj`, the Conv3d)."""

    arch: Mapping[str, Any]
    grid: tuple[int, int, int]
    patch_embed: nn.Module


class Mapped(NamedTuple):
    """A filter's result: the tensors to load (our key names), the checkpoint keys it left
    out (their original names) and one note per change it made."""

    encoder: dict[str, Tensor]
    ignored: list[str]
    notes: list[str]


def _drop_new_at_finetune(encoder: dict[str, Tensor], ignored: list[str]) -> None:
    """A fine-tuned checkpoint used as a start: its fc_norm and head are new, not loaded."""
    for key in NEW_AT_FINETUNE:
        if key in encoder:
            del encoder[key]
            ignored.append(key)


def catmae_pretrain_filter(state_dict: Mapping[str, Tensor], model: FilterTarget) -> Mapped:
    """CatMAE image encoder -> the "2d" video model (upstream fine-tune loader); pure.

    Stem: the Conv2d kernel [D, 3, p, p] is inflated to Conv3d [D, 3, t, p, p] as
    `w.unsqueeze(2).repeat(1, 1, t, 1, 1) / t` (a clip of one repeated frame then gives the
    image's patch embedding); the bias is copied. pos_embed is kept as loaded; when the
    checkpoint's grid differs from the model's Hp x Wp (another img_size) its spatial rows are
    resampled bicubically (timm `resample_abs_pos_embed`, align_corners False and no
    antialiasing, as MAE/DeiT `interpolate_pos_embed`; checkpoint grid assumed square), the cls
    row unchanged. Frames need nothing: the spatial rows are tiled over Tp in forward.
    Decoder, mask token and final norm are ignored. A stem of another patch size raises.
    """
    encoder, ignored = _encoder_view(state_dict, "catmae_pretrain")
    notes: list[str] = []
    tubelet, patch = model.arch["tubelet_size"], model.arch["patch_size"]
    kernel = encoder["patch_embed.proj.weight"]
    if tuple(kernel.shape[2:]) != (patch, patch):
        raise ValueError(
            f"stem patch size: patch_embed.proj.weight {list(kernel.shape)} has "
            f"{list(kernel.shape[2:])} patches, the model's patch_size is {patch}; "
            "a stem kernel is not resized"
        )
    inflated = kernel.unsqueeze(2).repeat(1, 1, tubelet, 1, 1) / tubelet
    encoder["patch_embed.proj.weight"] = inflated
    notes.append(
        f"patch_embed.proj.weight: Conv2d kernel {list(kernel.shape)} inflated to "
        f"Conv3d {list(inflated.shape)} (w.unsqueeze(2).repeat(1,1,{tubelet},1,1)/"
        f"{tubelet}); patch_embed.proj.bias copied"
    )
    pos = encoder["pos_embed"]
    time_steps, grid_h, grid_w = model.grid
    old = pos.shape[1] - 1
    if old != grid_h * grid_w:
        side = math.isqrt(old)
        if side * side != old:
            raise ValueError(
                f"pos_embed has {old} patch rows, not a square grid: cannot "
                f"resample it to {grid_h}x{grid_w}"
            )
        encoder["pos_embed"] = resample_abs_pos_embed(
            pos.float(),
            new_size=[grid_h, grid_w],
            old_size=[side, side],
            num_prefix_tokens=1,
            interpolation="bicubic",
            antialias=False,
        ).to(pos.dtype)
        notes.append(
            f"pos_embed: {side}x{side} grid resampled bicubically to "
            f"{grid_h}x{grid_w} (cls row unchanged), learnable"
        )
    else:
        notes.append(f"pos_embed: {list(pos.shape)} kept as loaded, learnable")
    notes.append(
        f"pos_embed: its {grid_h * grid_w} spatial rows are tiled over {time_steps} "
        "temporal positions in forward (T-major), the cls token gets row 0: no "
        "temporal position information, as upstream"
    )
    _drop_new_at_finetune(encoder, ignored)
    return Mapped(encoder, ignored, notes)


def videomae_pretrain_filter(state_dict: Mapping[str, Tensor], model: FilterTarget) -> Mapped:
    """VideoMAE pretrain encoder -> the "3d" video model; pure.

    The `encoder.` prefix is stripped; decoder, `encoder_to_decoder`, mask token and the final
    `encoder.norm` are ignored. The Conv3d stem is loaded as is (another tubelet/patch kernel
    raises); the position table is fixed and computed for the model's frames and size, so the
    checkpoint has none and nothing is interpolated.
    """
    encoder, ignored = _encoder_view(state_dict, "videomae_pretrain")
    kernel = tuple(encoder["patch_embed.proj.weight"].shape[2:])
    wanted = tuple(model.patch_embed.proj.weight.shape[2:])
    if kernel != wanted:
        raise ValueError(
            f"stem: patch_embed.proj.weight has a {list(kernel)} tubelet "
            f"kernel, the model's (tubelet_size, patch_size, patch_size) "
            f"is {list(wanted)}; a stem kernel is not resized"
        )
    time_steps, grid_h, grid_w = model.grid
    notes = [
        f"no position table in the checkpoint: the fixed 1-D sinusoid table is "
        f"computed for this model's {time_steps}x{grid_h}x{grid_w} = "
        f"{time_steps * grid_h * grid_w} tokens (not learned)"
    ]
    _drop_new_at_finetune(encoder, ignored)
    return Mapped(encoder, ignored, notes)


#: The filter of each pretrained format: (unwrapped state dict, model) -> `Mapped`.
PRETRAIN_FILTERS: dict[str, Callable[[Mapping[str, Tensor], FilterTarget], Mapped]] = {
    "catmae_pretrain": catmae_pretrain_filter,
    "videomae_pretrain": videomae_pretrain_filter,
}


# ----------------------------------------------------------------------------------------------
# Writing checkpoints in the exact upstream layouts (tests, demo)
# ----------------------------------------------------------------------------------------------


def sincos_2d_table(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> Tensor:
    """MAE/CatMAE `get_2d_sincos_pos_embed` (the table CatMAE pretraining saves as `pos_embed`).

    Returns [1, (1 +) grid_h * grid_w, dim] float32, rows in raster order. As upstream, the grid
    is `meshgrid(w, h)` ("w goes first"), so the first dim/2 channels encode the column index
    and the last dim/2 the row index, each as [sin, cos] of pos * 10000^(-k / (dim/4)); the cls
    row is all zeros.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos table needs embed_dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)
    return table.float().unsqueeze(0)


def _catmae_decoder_shapes(dim: int, num_patches: int, patch: int) -> dict[str, tuple[int, ...]]:
    """CatMAE `models_catmae.py` decoder keys; one decoder block.

    Decoder dim 2/3 of the encoder's (ViT-S 256, ViT-B 512; a multiple of 4 for other sizes,
    which the sin-cos `decoder_pos_embed` needs); blocks are
    `TransformerDecoderLayer`s (self_attn, multihead_attn, linear1/2 with the fixed
    feed-forward width 2048, norm1..3). Upstream has 4 blocks; one is enough to exercise the
    filter, which ignores them all.
    """
    dec, ff = max(4, 2 * dim // 3 // 4 * 4), 2048
    shapes: dict[str, tuple[int, ...]] = {
        "decoder_embed.weight": (dec, dim),
        "decoder_embed.bias": (dec,),
        "mask_token": (1, 1, dec),
        "decoder_pos_embed": (1, 1 + num_patches, dec),
    }
    block = "decoder_blocks.0."
    for attn in ("self_attn", "multihead_attn"):
        shapes[f"{block}{attn}.in_proj_weight"] = (3 * dec, dec)
        shapes[f"{block}{attn}.in_proj_bias"] = (3 * dec,)
        shapes[f"{block}{attn}.out_proj.weight"] = (dec, dec)
        shapes[f"{block}{attn}.out_proj.bias"] = (dec,)
    shapes.update(
        {
            f"{block}linear1.weight": (ff, dec),
            f"{block}linear1.bias": (ff,),
            f"{block}linear2.weight": (dec, ff),
            f"{block}linear2.bias": (dec,),
        }
    )
    for norm in ("norm1", "norm2", "norm3"):
        shapes[f"{block}{norm}.weight"] = shapes[f"{block}{norm}.bias"] = (dec,)
    shapes.update(
        {
            "decoder_norm.weight": (dec,),
            "decoder_norm.bias": (dec,),
            "decoder_pred.weight": (patch * patch * 3, dec),
            "decoder_pred.bias": (patch * patch * 3,),
            "decoder_frame_info": (2, 1, 1, dec),
        }
    )
    return shapes


def _videomae_decoder_shapes(dim: int, patch: int, tubelet: int) -> dict[str, tuple[int, ...]]:
    """VideoMAE pretrain keys outside the encoder (decoder dim D/2: ViT-S 192); one block.

    `encoder_to_decoder` (no bias), `mask_token`, `decoder.blocks.i` (VideoMAE blocks, q/v
    bias), `decoder.norm`, `decoder.head` [3 * t * p * p, dec]. Upstream has 4 blocks.
    """
    dec = max(1, dim // 2)
    shapes = {"encoder_to_decoder.weight": (dec, dim), "mask_token": (1, 1, dec)}
    block = _encoder_shapes("3d", dec, 1, 4 * dec, (tubelet, patch, patch), 0)
    shapes.update({"decoder." + k: v for k, v in block.items() if k.startswith("blocks.")})
    shapes.update(
        {
            "decoder.norm.weight": (dec,),
            "decoder.norm.bias": (dec,),
            "decoder.head.weight": (3 * tubelet * patch * patch, dec),
            "decoder.head.bias": (3 * tubelet * patch * patch,),
        }
    )
    return shapes


def upstream_state_dict(
    arch: Mapping, fmt: str, num_classes: int | None = None, seed: int = 0
) -> dict:
    """A randomly initialised checkpoint in the exact upstream layout of `fmt`, sized by `arch`.

    catmae_pretrain: `{'model': sd, 'optimizer', 'epoch': 299, 'scaler', 'args': Namespace}`
    (upstream `save_model`), sd = cls_token, pos_embed [1, 1+Hp*Wp, D] (MAE's 2-D sin-cos table,
    zero cls row), a Conv2d stem `patch_embed.proj.weight` [D, 3, p, p], timm blocks, `norm.*`,
    and CatMAE decoder keys. videomae_pretrain: `{'model': sd}` with `encoder.`-prefixed
    encoder keys (Conv3d stem, q/v bias, `encoder.norm`), `encoder_to_decoder.weight`,
    `mask_token` and `decoder.*`. videomae_finetuned: `{'module': sd}` with un-prefixed encoder
    keys, fc_norm and a `num_classes` head. Every tensor gets distinct random values (norm
    weights near 1), so a misplaced tensor is detectable; the decoder has one block only.
    """
    arch = resolve_arch(arch)
    dim, depth, patch = arch["embed_dim"], arch["depth"], arch["patch_size"]
    tubelet, hidden = arch["tubelet_size"], int(arch["embed_dim"] * arch["mlp_ratio"])
    grid = arch["img_size"] // patch
    if fmt not in LAYOUT_FORMATS:
        raise ValueError(
            f"unknown checkpoint format {fmt!r}; expected one of {sorted(LAYOUT_FORMATS)}"
        )
    if arch["patchify"] != LAYOUT_FORMATS[fmt]:
        raise ValueError(
            f"{fmt} is a patchify {LAYOUT_FORMATS[fmt]!r} layout, arch has {arch['patchify']!r}"
        )
    if (fmt == "videomae_finetuned") != (num_classes is not None):
        raise ValueError("num_classes is required for videomae_finetuned and only there")
    if fmt == "catmae_pretrain":
        shapes = _encoder_shapes("2d", dim, depth, hidden, (patch, patch), 1 + grid * grid)
        shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
        shapes.update(_catmae_decoder_shapes(dim, grid * grid, patch))
    elif fmt == "videomae_pretrain":
        encoder = _encoder_shapes("3d", dim, depth, hidden, (tubelet, patch, patch), 0)
        encoder.update({"norm.weight": (dim,), "norm.bias": (dim,)})
        shapes = {"encoder." + k: v for k, v in encoder.items()}
        shapes.update(_videomae_decoder_shapes(dim, patch, tubelet))
    else:
        shapes = _encoder_shapes("3d", dim, depth, hidden, (tubelet, patch, patch), 0, num_classes)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=generator) * 0.02
        if re.search(r"norm\d?\.weight$", key):
            value += 1.0
        state[key] = value
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in state:
            state[key] = sincos_2d_table(state[key].shape[-1], grid, grid, cls_token=True)
    if fmt == "catmae_pretrain":
        return {
            "model": state,
            "optimizer": {
                "state": {},
                "param_groups": [
                    {"lr": 0.0, "weight_decay": 0.05, "params": list(range(len(state)))}
                ],
            },
            "epoch": 299,
            "scaler": {
                "scale": 65536.0,
                "growth_factor": 2.0,
                "backoff_factor": 0.5,
                "growth_interval": 2000,
                "_growth_tracker": 0,
            },
            "args": argparse.Namespace(
                model="catmae_vit_small",
                input_size=arch["img_size"],
                patch_size=patch,
                batch_size=512,
                epochs=300,
                accum_iter=2,
                norm_pix_loss=True,
                blr=1.5e-4,
                mask_ratio=0.95,
                repeated_sampling=2,
                seed=0,
            ),
        }
    if fmt == "videomae_pretrain":
        return {"model": state}
    return {"module": state}


def place_encoder(checkpoint: dict, fmt: str, model_state: Mapping[str, Tensor]) -> None:
    """Put a fine-tuning model's encoder into `checkpoint` (from `upstream_state_dict`, pretrained
    `fmt`), in place: the reverse of the format's filter.

    fc_norm and head are left out (a pretraining checkpoint has neither); videomae_pretrain keys
    get their `encoder.` prefix; for catmae_pretrain the Conv3d stem is summed over time back to
    the Conv2d kernel (the inverse of the inflation `w / t` per time step, when the model's
    temporal kernel slices are equal). Every tensor must have the layout's shape.
    """
    if fmt not in PRETRAIN_FORMATS:
        raise ValueError(
            f"unknown pretrained format {fmt!r}; expected one of {sorted(PRETRAIN_FORMATS)}"
        )
    state = checkpoint["model"]
    prefix = "encoder." if fmt == "videomae_pretrain" else ""
    for key, value in model_state.items():
        if key in NEW_AT_FINETUNE:
            continue
        if fmt == "catmae_pretrain" and key == "patch_embed.proj.weight":
            value = value.sum(2)  # the 2D kernel whose inflation (w / t per frame) it was
        if tuple(state[prefix + key].shape) != tuple(value.shape):
            raise AssertionError(f"{key}: {list(value.shape)} vs {list(state[prefix + key].shape)}")
        state[prefix + key] = value.detach().clone()
