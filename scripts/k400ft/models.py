"""The two fine-tuning models (CatMAE "2d", VideoMAE "3d") and their checkpoint loaders.

Upstream facts reproduced here are those of REFERENCE.md section 1 (CatMAE's
`downstream/kinetics-400-action-recognition/`, a copy of VideoMAE's fine-tuning code). Both
models are ViT encoders with LayerNorm eps 1e-6, a Conv3d tubelet stem, mean pooling, `fc_norm`
and a linear head. One class, :class:`VideoViT`, builds both from the config `arch` dict; the
`patchify` key picks what differs:

=================  ==========================================  ===================================
                   CatMAE (``patchify: 2d``)                   VideoMAE (``patchify: 3d``)
=================  ==========================================  ===================================
stem               Conv3d inflated from the pretrained Conv2d  Conv3d loaded as is
cls token          yes, gets ``pos_embed[:, :1]``              none
positions          learnable ``pos_embed`` [1, 1+Hp*Wp, D],    fixed 1-D sinusoid table over all
                   spatial rows tiled over the Tp time steps   Tp*Hp*Wp tokens (a buffer)
attention bias     full ``qkv.bias``                           ``q_bias`` and ``v_bias``, no k bias
pooling            mean of patch tokens (cls excluded)         mean of all tokens
head init          trunc_normal(0.02), bias 0                  the same, then x head_init_scale
=================  ==========================================  ===================================

Attention runs through `F.scaled_dot_product_attention`; drop path is linear over depth. When
a checkpoint's image grid differs from the model's (another img_size), CatMAE's learnable
`pos_embed` is resampled bicubically at load; VideoMAE's table is fixed and computed for any
frames/size, so there is nothing to interpolate. A stem kernel of another patch/tubelet size is
an error.

Deliberate differences from upstream: the CatMAE model takes its frame count from config (upstream
hard-codes 8 temporal positions); every checkpoint load is weights-only and raises on any
missing, unexpected or mis-shaped encoder tensor (upstream prints and continues).

File layout (timm style): blocks, the model, the builder, then one checkpoint filter per
upstream layout, the loaders, and the synthetic upstream checkpoints used by tests and the demo.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from torch import Tensor, nn

__all__ = [
    "ARCH_DEFAULTS",
    "CATMAE_VITS16",
    "VIDEOMAE_VITS16",
    "PRETRAIN_FORMATS",
    "LAYOUT_FORMATS",
    "LoadReport",
    "VideoViT",
    "build_model",
    "check_layout",
    "load_pretrained",
    "load_weights",
    "read_state_dict",
    "resolve_arch",
    "sincos_2d_table",
    "sinusoid_1d_table",
    "upstream_state_dict",
]

#: Schema defaults of the optional `arch` keys (schemas/config.schema.yaml, `$defs/arch`).
ARCH_DEFAULTS: dict = {
    "patch_size": 16,
    "tubelet_size": 2,
    "mlp_ratio": 4.0,
    "drop_path": 0.1,
    "head_init_scale": 1.0,
}
_ARCH_REQUIRED = ("patchify", "img_size", "num_frames", "embed_dim", "depth", "num_heads")

#: CatMAE ViT-S/16 as fine-tuned upstream: dim 384, depth 12, heads 6, 16 x 224 x 224 clips,
#: tubelet 2, drop path 0.1, head trunc_normal(0.02) unscaled.
CATMAE_VITS16: dict = {
    "patchify": "2d",
    "img_size": 224,
    "num_frames": 16,
    "patch_size": 16,
    "tubelet_size": 2,
    "embed_dim": 384,
    "depth": 12,
    "num_heads": 6,
    "mlp_ratio": 4.0,
    "drop_path": 0.1,
    "head_init_scale": 1.0,
}
#: VideoMAE ViT-S/16 as fine-tuned upstream: the same shape, head init scale 0.001.
VIDEOMAE_VITS16: dict = {**CATMAE_VITS16, "patchify": "3d", "head_init_scale": 0.001}

#: Pretrained layouts `load_pretrained` accepts, and the model path each one feeds.
PRETRAIN_FORMATS: dict[str, str] = {"catmae_pretrain": "2d", "videomae_pretrain": "3d"}
#: Every upstream layout `check_layout` knows (the config schema's checkpoint `format` enum).
LAYOUT_FORMATS: dict[str, str] = {**PRETRAIN_FORMATS, "videomae_finetuned": "3d"}
#: Tensors a fine-tuning model always initialises anew from a pretrained checkpoint.
NEW_AT_FINETUNE = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")

_LN_EPS = 1e-6  # upstream norm_layer=partial(nn.LayerNorm, eps=1e-6)


# ----------------------------------------------------------------------------------------------
# Position tables
# ----------------------------------------------------------------------------------------------


def sinusoid_1d_table(num_positions: int, dim: int) -> Tensor:
    """VideoMAE's `get_sinusoid_encoding_table`: [1, num_positions, dim] float32.

    Entry (p, j) is p / 10000^(2 * (j // 2) / dim), then sin on even j and cos on odd j,
    computed in float64 like upstream's numpy code and cast to float32.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angles = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


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


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------

QkvBias = Literal["qkv", "qv"]


class Attention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention` (scale head_dim^-0.5).

    `qkv_bias="qkv"`: timm's `qkv` Linear with a full bias [3D] (CatMAE, from timm's ViT).
    `qkv_bias="qv"`: VideoMAE's `q_bias` and `v_bias` parameters [D] and a bias-free `qkv`
    Linear; the k bias is a constant zero, as upstream `cat(q_bias, zeros_like(v_bias), v_bias)`.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: QkvBias = "qkv") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if qkv_bias not in ("qkv", "qv"):
            raise ValueError(f"qkv_bias must be 'qkv' or 'qv', got {qkv_bias!r}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias == "qkv")
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            qkv = F.linear(x, self.qkv.weight, bias)
        else:
            qkv = self.qkv(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(attn(norm1 x)), x + DropPath(mlp(norm2 x)).

    Same structure and key names in timm's ViT (CatMAE) and VideoMAE: `norm1`, `attn`, `norm2`,
    `mlp.fc1`, `mlp.fc2` (GELU). No layer scale (upstream fine-tuning passes init_values 0).
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: QkvBias, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class TubeletEmbed(nn.Module):
    """Conv3d stem, kernel = stride = (tubelet, patch, patch); tokens flattened T-major.

    [B, 3, T, H, W] -> [B, Tp * Hp * Wp, D] in (t, h, w) raster order, as upstream
    `proj(x).flatten(2).transpose(1, 2)`. Keys `patch_embed.proj.{weight,bias}` (VideoMAE's
    names) for both models; upstream's CatMAE fine-tune model holds the Conv3d directly as
    `patch_embed.{weight,bias}`, a naming difference only (CatMAE publishes no fine-tuned
    weights that would need it).
    """

    def __init__(self, dim: int, patch_size: int, tubelet_size: int) -> None:
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class VideoViT(nn.Module):
    """Video ViT classifier for both upstream fine-tuning models; input [B, 3, T, H, W].

    patchify "2d" (CatMAE): cls token; learnable `pos_embed` [1, 1 + Hp*Wp, D] whose spatial rows
    are tiled over the Tp = T / tubelet temporal positions in forward (T-major, the Conv3d
    flatten order; the cls token gets row 0), so there is no temporal position information, as
    upstream; full qkv bias; mean of the patch tokens (cls excluded). Fresh `cls_token` and
    `pos_embed` are trunc_normal(0.02) as timm's ViT, but both come from the checkpoint.

    patchify "3d" (VideoMAE): no cls token; a fixed 1-D sinusoid table over all Tp*Hp*Wp tokens
    held as a non-persistent buffer (never in a state dict, never learned, cast to the
    activations' dtype as upstream `type_as`); q/v bias only; mean of all tokens.

    Both: drop path linear over depth (`linspace(0, drop_path, depth)`); there is no final
    `norm` (upstream's mean pooling replaces it with `fc_norm`); Linear weights trunc_normal(0.02)
    with zero bias, LayerNorms 1/0, the Conv3d stem PyTorch's default; the head is
    trunc_normal(0.02), bias 0, then weight and bias multiplied by `head_init_scale` (VideoMAE
    0.001; 1.0 for CatMAE, where upstream does not scale).
    """

    def __init__(
        self,
        *,
        patchify: Literal["2d", "3d"],
        img_size: int = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        head_init_scale: float = 1.0,
        num_classes: int = 400,
    ) -> None:
        super().__init__()
        self.arch = resolve_arch(
            {
                "patchify": patchify,
                "img_size": img_size,
                "num_frames": num_frames,
                "patch_size": patch_size,
                "tubelet_size": tubelet_size,
                "embed_dim": embed_dim,
                "depth": depth,
                "num_heads": num_heads,
                "mlp_ratio": mlp_ratio,
                "drop_path": drop_path,
                "head_init_scale": head_init_scale,
            }
        )
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.patchify = patchify
        self.num_classes = num_classes
        self.depth = depth
        self.num_layers = depth + 2
        self.input_shape = (num_frames, img_size, img_size)
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_prefix_tokens = 1 if patchify == "2d" else 0
        time_steps, grid_h, grid_w = self.grid

        self.patch_embed = TubeletEmbed(embed_dim, patch_size, tubelet_size)
        if patchify == "2d":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid_h * grid_w, embed_dim))
        else:
            self.cls_token = None
            table = sinusoid_1d_table(time_steps * grid_h * grid_w, embed_dim)
            self.register_buffer("pos_embed", table, persistent=False)
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()
        bias: QkvBias = "qkv" if patchify == "2d" else "qv"
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, bias, rate) for rate in rates
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=_LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights(head_init_scale)

    def _init_weights(self, head_init_scale: float) -> None:
        """Upstream init: Linear trunc_normal(0.02)/0, LayerNorm 1/0, head x init scale."""
        if self.patchify == "2d":
            trunc_normal_(self.pos_embed, std=0.02)
            trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)
            self.head.bias.mul_(head_init_scale)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """Stem + position embedding (+ cls token first for "2d"): [B, prefix + Tp*Hp*Wp, D]."""
        if x.ndim != 5 or tuple(x.shape[1:]) != (3, *self.input_shape):
            raise ValueError(
                f"expected input [B, 3, {', '.join(map(str, self.input_shape))}], "
                f"got {list(x.shape)}"
            )
        x = self.patch_embed(x)
        if self.cls_token is None:
            return x + self.pos_embed.to(x.dtype)
        x = x + self.pos_embed[:, 1:].repeat(1, self.grid[0], 1)
        cls = self.cls_token.expand(x.shape[0], -1, -1) + self.pos_embed[:, :1]
        return torch.cat((cls, x), dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens through the blocks, mean over the patch tokens, `fc_norm`: [B, D]."""
        x = self.prepare_tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x[:, self.num_prefix_tokens :].mean(dim=1))

    def forward_head(self, x: Tensor) -> Tensor:
        """Pooled features [B, D] -> logits [B, num_classes] (upstream fc dropout is 0)."""
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def no_weight_decay(self) -> set[str]:
        """Upstream's skip list {'pos_embed', 'cls_token'}; biases and other 1-D params are
        excluded by the optimiser's own rule. In the "3d" model neither name is a parameter
        (the table is a buffer), so the list has no effect there, as upstream."""
        return {"pos_embed", "cls_token"}

    def layer_id(self, name: str) -> int:
        """Upstream `get_num_layer_for_vit`: layer of a parameter for layer-wise lr decay.

        0 for cls_token / pos_embed / patch_embed.*, i + 1 for blocks.i.*, and depth + 1
        (= num_layers - 1) for everything else (fc_norm, head). A leading `module.` (DDP) or
        `_orig_mod.` (torch.compile) is ignored.
        """
        for prefix in ("module.", "_orig_mod."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name in ("cls_token", "pos_embed", "mask_token") or name.startswith("patch_embed."):
            return 0
        match = re.match(r"blocks\.(\d+)\.", name)
        if match:
            return int(match.group(1)) + 1
        return self.num_layers - 1


def resolve_arch(arch: Mapping) -> dict:
    """The config `arch` dict with schema defaults filled in, checked for a buildable shape."""
    unknown = set(arch) - set(_ARCH_REQUIRED) - set(ARCH_DEFAULTS)
    missing = [key for key in _ARCH_REQUIRED if key not in arch]
    if unknown or missing:
        raise ValueError(f"arch: unknown keys {sorted(unknown)}, missing keys {missing}")
    out = {**ARCH_DEFAULTS, **arch}
    if out["patchify"] not in ("2d", "3d"):
        raise ValueError(f"arch.patchify must be '2d' or '3d', got {out['patchify']!r}")
    if out["img_size"] % out["patch_size"]:
        raise ValueError(
            f"arch.img_size {out['img_size']} is not divisible by patch_size {out['patch_size']}"
        )
    if out["num_frames"] % out["tubelet_size"]:
        raise ValueError(
            f"arch.num_frames {out['num_frames']} is not divisible by tubelet_size "
            f"{out['tubelet_size']}"
        )
    if out["embed_dim"] % out["num_heads"]:
        raise ValueError(
            f"arch.embed_dim {out['embed_dim']} is not divisible by num_heads {out['num_heads']}"
        )
    return out


def build_model(arch: Mapping, num_classes: int) -> VideoViT:
    """The fine-tuning model for a config `arch` dict (schema defaults for absent keys)."""
    return VideoViT(**resolve_arch(arch), num_classes=num_classes)


# ----------------------------------------------------------------------------------------------
# Upstream checkpoint layouts
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
            f"kernel) is {got}; keys seen: {_summarise(state_dict)}"
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
    problems = _compare(encoder, expected)
    if patchify == "2d" and pos_rows != -1 and pos_rows < 2:
        problems.append(f"pos_embed has {pos_rows} rows; expected 1 cls row + patch rows")
    if problems:
        raise ValueError(f"not a {fmt} checkpoint: " + "; ".join(problems))


def _compare(tensors: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
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


def _summarise(keys) -> str:
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
# Loading into a model
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a load did: model keys loaded, newly initialised, checkpoint keys ignored, notes."""

    path: str
    fmt: str
    total: int
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"{self.fmt} checkpoint {self.path}",
            f"  loaded {len(self.loaded)} of {self.total} model tensors",
        ]
        if self.missing:
            lines.append(f"  newly initialised ({len(self.missing)}): {', '.join(self.missing)}")
        else:
            lines.append("  newly initialised: none")
        if self.ignored:
            lines.append(
                f"  ignored checkpoint keys ({len(self.ignored)}): {_summarise(self.ignored)}"
            )
        else:
            lines.append("  ignored checkpoint keys: none")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def _catmae_to_video(encoder: dict[str, Tensor], model: VideoViT, notes: list[str]) -> None:
    """CatMAE image encoder -> the "2d" video model, in place (upstream fine-tune loader).

    Stem: the Conv2d kernel [D, 3, p, p] is inflated to Conv3d [D, 3, t, p, p] as
    `w.unsqueeze(2).repeat(1, 1, t, 1, 1) / t` (a clip of one repeated frame then gives the
    image's patch embedding); the bias is copied. pos_embed is kept as loaded; when the
    checkpoint's grid differs from the model's Hp x Wp (another img_size) its spatial rows are
    resampled bicubically (timm `resample_abs_pos_embed`, align_corners False and no
    antialiasing, as MAE/DeiT `interpolate_pos_embed`; checkpoint grid assumed square), the cls
    row unchanged. Frames need nothing: the spatial rows are tiled over Tp in forward.
    """
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


def load_pretrained(model: VideoViT, path: str | Path, fmt: str) -> LoadReport:
    """Initialise `model`'s encoder from an upstream pretraining checkpoint; fc_norm and head
    keep their fresh init.

    fmt "catmae_pretrain" needs a "2d" model (stem inflated, pos_embed kept or resampled, see
    `_catmae_to_video`); "videomae_pretrain" a "3d" model (`encoder.` prefix stripped; its
    position table is fixed and recomputed for any frames/size, so nothing is interpolated).
    Decoder, mask token, `encoder_to_decoder` and the pretrained final norm are ignored and
    reported. Any missing, unexpected or mis-shaped encoder tensor raises ValueError naming the
    file and the keys: never a silent random init. Returns the report (its str() is the
    printable text); the caller logs it, once, on the primary rank.
    """
    if fmt not in PRETRAIN_FORMATS:
        raise ValueError(
            f"unknown pretrained format {fmt!r}; expected one of {sorted(PRETRAIN_FORMATS)}"
        )
    if model.patchify != PRETRAIN_FORMATS[fmt]:
        raise ValueError(
            f"{fmt} checkpoints initialise patchify "
            f"{PRETRAIN_FORMATS[fmt]!r} models, this model is {model.patchify!r}"
        )
    state_dict = read_state_dict(path)
    try:
        check_layout(state_dict, fmt)
        encoder, ignored = _encoder_view(state_dict, fmt)
        notes: list[str] = []
        if fmt == "catmae_pretrain":
            _catmae_to_video(encoder, model, notes)
        else:
            kernel = tuple(encoder["patch_embed.proj.weight"].shape[2:])
            wanted = tuple(model.patch_embed.proj.weight.shape[2:])
            if kernel != wanted:
                raise ValueError(
                    f"stem: patch_embed.proj.weight has a {list(kernel)} tubelet "
                    f"kernel, the model's (tubelet_size, patch_size, patch_size) "
                    f"is {list(wanted)}; a stem kernel is not resized"
                )
            time_steps, grid_h, grid_w = model.grid
            notes.append(
                f"no position table in the checkpoint: the fixed 1-D sinusoid table is "
                f"computed for this model's {time_steps}x{grid_h}x{grid_w} = "
                f"{time_steps * grid_h * grid_w} tokens (not learned)"
            )
        for key in NEW_AT_FINETUNE:
            if key in encoder:  # a fine-tuned checkpoint used as a start: the head is new
                del encoder[key]
                ignored.append(key)
        target = model.state_dict()
        expected = {k: tuple(v.shape) for k, v in target.items() if k not in NEW_AT_FINETUNE}
        problems = _compare(encoder, expected)
        if problems:
            raise ValueError("; ".join(problems))
    except ValueError as err:
        raise ValueError(f"{path} ({fmt}) does not fit the {model.patchify} model: {err}") from None
    model.load_state_dict(encoder, strict=False)
    report = LoadReport(
        path=str(path),
        fmt=fmt,
        total=len(target),
        loaded=list(encoder),
        missing=[k for k in target if k not in encoder],
        ignored=ignored,
        notes=notes,
    )
    return report


def load_weights(model: VideoViT, path: str | Path, fmt: str) -> LoadReport:
    """Load a complete fine-tuned model, head included, strictly.

    fmt "ours": our final.pt, `{'model': state_dict, 'arch': ..., 'epoch': ...}`.
    fmt "videomae_finetuned": VideoMAE's released K400 weights, `{'module'|'model': ...}` with
    the "3d" layout, fc_norm and a `num_classes` head. Any missing, unexpected or mis-shaped
    tensor raises ValueError naming the file and the keys.
    """
    if fmt not in ("ours", "videomae_finetuned"):
        raise ValueError(f"unknown weights format {fmt!r}; expected 'ours' or 'videomae_finetuned'")
    if fmt == "videomae_finetuned" and model.patchify != "3d":
        raise ValueError(
            f"videomae_finetuned weights need a patchify '3d' model, this model is "
            f"{model.patchify!r}"
        )
    state_dict = read_state_dict(path)
    target = model.state_dict()
    try:
        if fmt == "videomae_finetuned":
            check_layout(state_dict, fmt)
        problems = _compare(state_dict, {k: tuple(v.shape) for k, v in target.items()})
        if problems:
            raise ValueError("; ".join(problems))
    except ValueError as err:
        raise ValueError(
            f"{path} ({fmt}) does not fit the {model.patchify} model with "
            f"{model.num_classes} classes: {err}"
        ) from None
    model.load_state_dict(state_dict, strict=True)
    report = LoadReport(path=str(path), fmt=fmt, total=len(target), loaded=list(state_dict))
    return report


# ----------------------------------------------------------------------------------------------
# Synthetic checkpoints in the exact upstream layouts (tests, demo)
# ----------------------------------------------------------------------------------------------


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
