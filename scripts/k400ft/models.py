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

Attention runs through `F.scaled_dot_product_attention`; drop path is linear over depth.
`group_matcher` gives timm's layer groups for layer-wise lr decay (upstream
`get_num_layer_for_vit`).

Deliberate differences from upstream: the CatMAE model takes its frame count from config (upstream
hard-codes 8 temporal positions); every checkpoint load is weights-only and raises on any
missing, unexpected or mis-shaped encoder tensor (upstream prints and continues).

File layout (timm style): blocks, the model, the builder, then the loaders. What the upstream
checkpoints hold (their keys, the CatMAE stem inflation, the checks, one filter per layout, the
writers of synthetic upstream checkpoints) is `k400ft.layouts`; a loader maps the layout with
it, loads and reports. The `arch` dict's defaults and checks are `k400ft.arch`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

from k400ft.arch import resolve_arch
from k400ft.layouts import (
    NEW_AT_FINETUNE,
    PRETRAIN_FILTERS,
    PRETRAIN_FORMATS,
    check_layout,
    compare_shapes,
    read_state_dict,
    summarise_keys,
)

__all__ = [
    "CATMAE_VITS16",
    "VIDEOMAE_VITS16",
    "LoadReport",
    "VideoViT",
    "build_model",
    "load_pretrained",
    "load_weights",
    "sinusoid_1d_table",
]

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

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's layer groups (`timm.models.group_parameters`), as read by
        `timm.optim.param_groups_layer_decay`: `stem` (cls_token, pos_embed, patch_embed.*;
        upstream's list also names mask_token) is group 0, `blocks.i` group i + 1, and every
        parameter neither matches (fc_norm, head) the last group, depth + 1 = num_layers - 1.
        Upstream `get_num_layer_for_vit`. Each block is its own group, `coarse` or not.
        """
        return {
            "stem": r"^(?:cls_token|pos_embed|mask_token)$|^patch_embed\.",
            "blocks": r"^blocks\.(\d+)\.",
        }

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay, by `group_matcher`'s patterns.

        0 for cls_token / pos_embed / patch_embed.*, i + 1 for blocks.i.*, and depth + 1
        (= num_layers - 1) for everything else (fc_norm, head): the ids timm's
        `group_parameters` gives. A leading `module.` (DDP) or `_orig_mod.` (torch.compile)
        is ignored.
        """
        for prefix in ("module.", "_orig_mod."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        matcher = self.group_matcher()
        if re.match(matcher["stem"], name):
            return 0
        match = re.match(matcher["blocks"], name)
        if match:
            return int(match.group(1)) + 1
        return self.num_layers - 1


def build_model(arch: Mapping, num_classes: int) -> VideoViT:
    """The fine-tuning model for a config `arch` dict (schema defaults for absent keys)."""
    return VideoViT(**resolve_arch(arch), num_classes=num_classes)


# ----------------------------------------------------------------------------------------------
# Loading into a model: map the layout (k400ft.layouts), load, report
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
                f"  ignored checkpoint keys ({len(self.ignored)}): {summarise_keys(self.ignored)}"
            )
        else:
            lines.append("  ignored checkpoint keys: none")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def load_pretrained(model: VideoViT, path: str | Path, fmt: str) -> LoadReport:
    """Initialise `model`'s encoder from an upstream pretraining checkpoint; fc_norm and head
    keep their fresh init.

    The file is read weights-only, its layout checked (`layouts.check_layout`) and mapped onto
    the model by the format's filter (`layouts.PRETRAIN_FILTERS`): "catmae_pretrain" needs a
    "2d" model (stem inflated, pos_embed kept or resampled), "videomae_pretrain" a "3d" model
    (`encoder.` prefix stripped, nothing interpolated). Decoder, mask token,
    `encoder_to_decoder` and the pretrained final norm are ignored and reported. Any missing,
    unexpected or mis-shaped encoder tensor raises ValueError naming the file and the keys:
    never a silent random init. Returns the report (its str() is the printable text); the
    caller logs it, once, on the primary rank.
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
    target = model.state_dict()
    try:
        check_layout(state_dict, fmt)
        encoder, ignored, notes = PRETRAIN_FILTERS[fmt](state_dict, model)
        expected = {k: tuple(v.shape) for k, v in target.items() if k not in NEW_AT_FINETUNE}
        problems = compare_shapes(encoder, expected)
        if problems:
            raise ValueError("; ".join(problems))
    except ValueError as err:
        raise ValueError(f"{path} ({fmt}) does not fit the {model.patchify} model: {err}") from None
    model.load_state_dict(encoder, strict=False)
    return LoadReport(
        path=str(path),
        fmt=fmt,
        total=len(target),
        loaded=list(encoder),
        missing=[k for k in target if k not in encoder],
        ignored=ignored,
        notes=notes,
    )


def load_weights(model: VideoViT, path: str | Path, fmt: str) -> LoadReport:
    """Load a complete fine-tuned model, head included, strictly.

    fmt "ours": our final.pt, `{'model': state_dict, 'arch': ..., 'epoch': ...}`.
    fmt "videomae_finetuned": VideoMAE's released K400 weights, `{'module'|'model': ...}` with
    the "3d" layout, fc_norm and a `num_classes` head (checked by `layouts.check_layout`; our
    key names, so nothing is mapped). Any missing, unexpected or mis-shaped tensor raises
    ValueError naming the file and the keys.
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
        problems = compare_shapes(state_dict, {k: tuple(v.shape) for k, v in target.items()})
        if problems:
            raise ValueError("; ".join(problems))
    except ValueError as err:
        raise ValueError(
            f"{path} ({fmt}) does not fit the {model.patchify} model with "
            f"{model.num_classes} classes: {err}"
        ) from None
    model.load_state_dict(state_dict, strict=True)
    return LoadReport(path=str(path), fmt=fmt, total=len(target), loaded=list(state_dict))
