"""k400ft.models: both fine-tuning models against the upstream facts (REFERENCE.md section 1).

Full ViT-S-size synthetic checkpoints in the exact upstream layouts are written once per module;
forward passes use small inputs (a full 16x224x224 forward takes seconds on one core).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from k400ft import layouts, models
from k400ft.arch import ARCH_REQUIRED
from k400ft.layouts import NEW_AT_FINETUNE, check_layout, read_state_dict, upstream_state_dict
from k400ft.models import CATMAE_VITS16, VIDEOMAE_VITS16, build_model, load_pretrained, load_weights

torch.set_num_threads(1)

# The demo's tiny models (demo/config.yaml).
TINY_2D = {
    "patchify": "2d",
    "img_size": 64,
    "num_frames": 16,
    "patch_size": 16,
    "tubelet_size": 2,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "mlp_ratio": 4.0,
    "drop_path": 0.1,
    "head_init_scale": 1.0,
}
TINY_3D = {**TINY_2D, "patchify": "3d", "head_init_scale": 0.001}

# Exact parameter counts of the two ViT-S/16 fine-tuning models with a 400-class head.
CATMAE_PARAMS = 22_114_576  # stem 590,208 + cls 384 + pos_embed 75,648 + 12 x 1,774,464 + 154,768
VIDEOMAE_PARAMS = 22_033_936  # stem 590,208 + 12 x 1,774,080 (q/v bias, no k bias) + 154,768


def save(obj, path):
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Full-size synthetic upstream checkpoints, their files, and models loaded from them."""
    folder = tmp_path_factory.mktemp("full")
    out = {}
    for arch, fmt in ((CATMAE_VITS16, "catmae_pretrain"), (VIDEOMAE_VITS16, "videomae_pretrain")):
        ckpt = upstream_state_dict(arch, fmt, seed=1)
        path = save(ckpt, folder / f"{fmt}.pth")
        torch.manual_seed(0)
        model = build_model(arch, 400)
        fresh = {k: v.clone() for k, v in model.state_dict().items() if k in NEW_AT_FINETUNE}
        report = load_pretrained(model, path, fmt)
        out[fmt] = {"ckpt": ckpt, "path": path, "model": model, "fresh": fresh, "report": report}
    return out


def test_parameter_counts_full_size(full):
    catmae = full["catmae_pretrain"]["model"]
    videomae = full["videomae_pretrain"]["model"]
    assert sum(p.numel() for p in catmae.parameters()) == CATMAE_PARAMS
    assert sum(p.numel() for p in videomae.parameters()) == VIDEOMAE_PARAMS
    assert len(catmae.state_dict()) == 152
    assert len(videomae.state_dict()) == 162


def test_catmae_checkpoint_lands_where_it_should(full):
    entry = full["catmae_pretrain"]
    sd, model, report = entry["ckpt"]["model"], entry["model"], entry["report"]
    target = model.state_dict()
    kernel = sd["patch_embed.proj.weight"]
    assert kernel.shape == (384, 3, 16, 16)
    inflated = kernel.unsqueeze(2).repeat(1, 1, 2, 1, 1) / 2
    assert torch.equal(target["patch_embed.proj.weight"], inflated)
    assert torch.equal(target["patch_embed.proj.bias"], sd["patch_embed.proj.bias"])
    assert target["pos_embed"].shape == (1, 197, 384)
    assert torch.equal(target["pos_embed"], sd["pos_embed"])  # kept as loaded (sin-cos table)
    assert torch.equal(target["pos_embed"][0, 0], torch.zeros(384))
    assert model.pos_embed.requires_grad  # learnable at fine-tune
    assert torch.equal(target["cls_token"], sd["cls_token"])
    copied = [k for k in target if k in sd and not k.startswith("patch_embed")]
    for key in copied:
        assert torch.equal(target[key], sd[key]), key
    assert len(copied) + 2 == 148 == len(report.loaded)
    assert all(k in sd for k in ("blocks.11.attn.qkv.bias", "blocks.0.mlp.fc2.weight"))
    assert sorted(report.missing) == sorted(NEW_AT_FINETUNE)
    for key, value in entry["fresh"].items():  # newly initialised, untouched by the load
        assert torch.equal(target[key], value), key
    assert "norm.weight" not in target and "norm.weight" in report.ignored
    assert {"mask_token", "decoder_pred.weight", "decoder_blocks.0.linear1.weight"} <= set(
        report.ignored
    )
    assert set(report.ignored) == set(sd) - set(target)
    text = str(report)
    assert "loaded 148 of 152" in text and "inflated" in text and "tiled over 8" in text


def test_videomae_checkpoint_lands_where_it_should(full):
    entry = full["videomae_pretrain"]
    sd, model, report = entry["ckpt"]["model"], entry["model"], entry["report"]
    target = model.state_dict()
    assert all(
        k.startswith(("encoder.", "decoder.", "encoder_to_decoder.", "mask_token")) for k in sd
    )
    encoder = {
        k[len("encoder.") :]: v
        for k, v in sd.items()
        if k.startswith("encoder.") and not k.startswith("encoder.norm.")
    }
    assert set(encoder) == set(target) - set(NEW_AT_FINETUNE)
    for key, value in encoder.items():
        assert torch.equal(target[key], value), key
    assert target["patch_embed.proj.weight"].shape == (384, 3, 2, 16, 16)
    for i in (0, 11):
        for name in ("attn.q_bias", "attn.v_bias", "attn.qkv.weight"):
            assert torch.equal(target[f"blocks.{i}.{name}"], sd[f"encoder.blocks.{i}.{name}"])
        assert f"blocks.{i}.attn.qkv.bias" not in target  # no k bias
    assert "pos_embed" not in target and "cls_token" not in target
    assert "pos_embed" not in dict(model.named_parameters())
    assert model.pos_embed.shape == (1, 1568, 384)
    assert len(report.loaded) == 158 and sorted(report.missing) == sorted(NEW_AT_FINETUNE)
    assert {
        "encoder.norm.weight",
        "encoder_to_decoder.weight",
        "mask_token",
        "decoder.head.weight",
    } <= set(report.ignored)
    assert set(report.ignored) == set(sd) - {"encoder." + k for k in encoder}


def test_full_width_forward_shape():
    for arch in (CATMAE_VITS16, VIDEOMAE_VITS16):
        model = build_model({**arch, "img_size": 32, "num_frames": 4}, 400).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 400)
        assert model.forward_features(torch.randn(1, 3, 4, 32, 32)).shape == (1, 384)


def test_demo_models_build_load_and_run(tmp_path):
    clip = torch.randn(2, 3, 16, 64, 64)
    for arch, fmt in ((TINY_2D, "catmae_pretrain"), (TINY_3D, "videomae_pretrain")):
        path = save(upstream_state_dict(arch, fmt), tmp_path / f"{fmt}.pth")
        model = build_model(arch, 5)
        report = load_pretrained(model, path, fmt)
        assert report.missing == list(NEW_AT_FINETUNE)
        assert model.grid == (8, 4, 4) and model.num_layers == 4
        assert model(clip).shape == (2, 5)


def timm_vit(arch: dict, num_classes: int) -> VisionTransformer:
    """timm's 2D ViT with CatMAE's shape, mean pooling and fc_norm (upstream global_pool)."""
    return VisionTransformer(
        img_size=arch["img_size"],
        patch_size=arch["patch_size"],
        num_classes=num_classes,
        global_pool="avg",
        embed_dim=arch["embed_dim"],
        depth=arch["depth"],
        num_heads=arch["num_heads"],
        mlp_ratio=arch["mlp_ratio"],
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()


def test_repeated_frame_gives_2d_vit_patch_tokens(tmp_path):
    """A clip of one repeated frame: stem + pos embed equal the 2D ViT's on that frame, for
    every one of the 8 temporal positions (what the inflation and the tiling preserve)."""
    ckpt = upstream_state_dict(TINY_2D, "catmae_pretrain", seed=3)
    path = save(ckpt, tmp_path / "catmae.pth")
    model = build_model(TINY_2D, 5).eval()
    load_pretrained(model, path, "catmae_pretrain")
    reference = timm_vit(TINY_2D, 5)
    encoder = {k: v for k, v in ckpt["model"].items() if k in reference.state_dict()}
    missing, _ = reference.load_state_dict(encoder, strict=False)
    assert set(missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    frame = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens_2d = reference._pos_embed(reference.patch_embed(frame))  # [B, 1 + 16, D]
        tokens = model.prepare_tokens(frame.unsqueeze(2).repeat(1, 1, 16, 1, 1))
    assert tokens.shape == (2, 1 + 8 * 16, 64)
    torch.testing.assert_close(tokens[:, 0], tokens_2d[:, 0])
    per_step = tokens[:, 1:].reshape(2, 8, 16, 64)
    for t in range(8):
        torch.testing.assert_close(per_step[:, t], tokens_2d[:, 1:], rtol=1e-5, atol=1e-5)


def test_single_time_step_model_equals_timm_2d_vit():
    """With one temporal position the whole CatMAE model (blocks, pooling without cls, fc_norm,
    head) is timm's 2D ViT: same key names, same logits on a repeated frame."""
    arch = {**TINY_2D, "num_frames": 2}
    torch.manual_seed(0)
    model = build_model(arch, 5).eval()
    state = model.state_dict()
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].sum(dim=2)
    reference = timm_vit(arch, 5)
    reference.load_state_dict(state, strict=True)
    frame = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model(frame.unsqueeze(2).repeat(1, 1, 2, 1, 1)), reference(frame), rtol=1e-4, atol=1e-5
        )


def test_videomae_attention_is_upstream_formula():
    """VideoMAE attention: qkv = x W^T + [q_bias, 0, v_bias], softmax(q k^T / sqrt(d)) v per
    head, then proj; written out explicitly here."""
    torch.manual_seed(0)
    attn = models.Attention(64, 2, qkv_bias="qv").eval()
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    assert attn.qkv.bias is None
    x = torch.randn(2, 10, 64)
    q, k, v = (x @ attn.qkv.weight.T).split(64, dim=-1)
    q, v = q + attn.q_bias, v + attn.v_bias
    heads = [(t.reshape(2, 10, 2, 32).transpose(1, 2)) for t in (q, k, v)]
    weights = torch.softmax(heads[0] @ heads[1].transpose(-1, -2) / 32**0.5, dim=-1)
    expected = attn.proj((weights @ heads[2]).transpose(1, 2).reshape(2, 10, 64))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_videomae_sinusoid_table_is_upstream_formula():
    table = models.sinusoid_1d_table(50, 64)[0].numpy()
    angles = np.array(
        [[p / np.power(10000, 2 * (j // 2) / 64) for j in range(64)] for p in range(50)]
    )
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    np.testing.assert_allclose(table, angles, atol=1e-6)
    model = build_model(TINY_3D, 5)
    torch.testing.assert_close(model.pos_embed, models.sinusoid_1d_table(8 * 16, 64))


def test_sincos_2d_table_is_mae_layout():
    """MAE's grid is meshgrid(w, h): the first D/2 channels encode the column, the last D/2
    the row, each [sin | cos] with frequency 1 in the first channel of each half."""
    table = layouts.sincos_2d_table(64, 3, 5)[0]
    assert table.shape == (1 + 15, 64)
    assert torch.equal(table[0], torch.zeros(64))
    row, col = 2, 3
    entry = table[1 + row * 5 + col]
    torch.testing.assert_close(
        entry[[0, 16, 32, 48]],
        torch.tensor([np.sin(col), np.cos(col), np.sin(row), np.cos(row)], dtype=torch.float32),
    )


def test_catmae_pos_embed_resampled_for_another_size(tmp_path):
    ckpt = upstream_state_dict(TINY_2D, "catmae_pretrain")  # 4 x 4 grid
    path = save(ckpt, tmp_path / "catmae64.pth")
    model = build_model({**TINY_2D, "img_size": 96, "num_frames": 8}, 5)
    report = load_pretrained(model, path, "catmae_pretrain")
    pos = ckpt["model"]["pos_embed"]
    grid = pos[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = torch.cat([pos[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 36, 64)], dim=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    assert "resampled bicubically to 6x6" in str(report) and "tiled over 4" in str(report)
    assert model(torch.randn(1, 3, 8, 96, 96)).shape == (1, 5)


def test_videomae_loads_into_another_size(tmp_path):
    path = save(upstream_state_dict(TINY_3D, "videomae_pretrain"), tmp_path / "v.pth")
    model = build_model({**TINY_3D, "img_size": 96, "num_frames": 8}, 5)
    report = load_pretrained(model, path, "videomae_pretrain")
    assert "4x6x6 = 144 tokens" in str(report) and model.pos_embed.shape == (1, 144, 64)


def test_stem_patch_size_mismatch_is_a_clear_error(tmp_path):
    for arch, fmt in ((TINY_2D, "catmae_pretrain"), (TINY_3D, "videomae_pretrain")):
        path = save(upstream_state_dict(arch, fmt), tmp_path / f"{fmt}.pth")
        model = build_model({**arch, "patch_size": 8}, 5)
        with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight.*not resized") as err:
            load_pretrained(model, path, fmt)
        assert str(path) in str(err.value)


def test_missing_and_misshaped_encoder_keys_raise_with_names(tmp_path):
    ckpt = upstream_state_dict(TINY_2D, "catmae_pretrain")
    del ckpt["model"]["blocks.1.attn.qkv.bias"]
    ckpt["model"]["blocks.0.mlp.fc1.bias"] = torch.zeros(7)
    path = save(ckpt, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as err:
        load_pretrained(build_model(TINY_2D, 5), path, "catmae_pretrain")
    message = str(err.value)
    assert str(path) in message
    assert "blocks.1.attn.qkv.bias" in message and "blocks.0.mlp.fc1.bias [7]" in message

    deeper = save(
        upstream_state_dict({**TINY_3D, "depth": 3}, "videomae_pretrain"), tmp_path / "deeper.pth"
    )
    with pytest.raises(ValueError, match=r"unexpected 13 keys: blocks\.2\.norm1\.weight"):
        load_pretrained(build_model(TINY_3D, 5), deeper, "videomae_pretrain")
    wider = save(
        upstream_state_dict({**TINY_3D, "embed_dim": 32}, "videomae_pretrain"),
        tmp_path / "wider.pth",
    )
    with pytest.raises(ValueError, match=r"wrong shape: patch_embed\.proj\.weight \[32, 3, 2"):
        load_pretrained(build_model(TINY_3D, 5), wider, "videomae_pretrain")


def test_format_and_model_must_agree(tmp_path):
    videomae = save(upstream_state_dict(TINY_3D, "videomae_pretrain"), tmp_path / "v.pth")
    with pytest.raises(ValueError, match="patchify '2d' models"):
        load_pretrained(build_model(TINY_3D, 5), videomae, "catmae_pretrain")
    with pytest.raises(ValueError, match=r"not a catmae_pretrain checkpoint.*encoder\.blocks"):
        check_layout(read_state_dict(videomae), "catmae_pretrain")
    with pytest.raises(ValueError, match="unknown pretrained format"):
        load_pretrained(build_model(TINY_3D, 5), videomae, "mae")


def test_check_layout_accepts_every_upstream_layout():
    check_layout(upstream_state_dict(CATMAE_VITS16, "catmae_pretrain")["model"], "catmae_pretrain")
    check_layout(upstream_state_dict(TINY_3D, "videomae_pretrain")["model"], "videomae_pretrain")
    finetuned = upstream_state_dict(TINY_3D, "videomae_finetuned", num_classes=400)["module"]
    check_layout(finetuned, "videomae_finetuned")
    assert finetuned["head.weight"].shape == (400, 64)
    del finetuned["fc_norm.bias"]
    with pytest.raises(ValueError, match=r"missing 1 keys: fc_norm\.bias"):
        check_layout(finetuned, "videomae_finetuned")


RELEASED = json.loads((Path(__file__).parent / "data/videomae_vits16_keys.json").read_text())


def frozen_checkpoint(fmt: str) -> tuple[dict, list[tuple[str, tuple[int, ...]]]]:
    """A checkpoint of the frozen list's keys and shapes (distinct values per tensor), wrapped
    as the released file is; and the list."""
    entry = RELEASED[fmt]
    keys = [(name, tuple(shape)) for name, shape in entry["keys"]]
    generator = torch.Generator().manual_seed(5)
    state = {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in keys}
    return {entry["wrapper"]: state}, keys


@pytest.mark.parametrize("fmt", ["videomae_pretrain", "videomae_finetuned"])
def test_videomae_layout_is_the_released_checkpoints_frozen_key_list(fmt, tmp_path):
    """Our VideoMAE layout against the released files' every key and shape, frozen as data
    (tests/data/videomae_vits16_keys.json, from REFERENCE.md section 1, not from our code): the
    layout check accepts it, the ViT-S model takes every encoder tensor from it (the head too
    for the fine-tuned file) and ignores exactly the pretraining-only keys; and the layout our
    tests and demo write holds the same keys and shapes (one decoder block of the four)."""
    checkpoint, keys = frozen_checkpoint(fmt)
    state = checkpoint[RELEASED[fmt]["wrapper"]]
    check_layout(state, fmt)
    path = save(checkpoint, tmp_path / f"{fmt}.pth")
    model = build_model(VIDEOMAE_VITS16, 400)
    target = model.state_dict()
    if fmt == "videomae_pretrain":
        report = load_pretrained(model, path, fmt)
        prefix = "encoder."
        expected_ignored = {
            name
            for name, _ in keys
            if name.startswith(("decoder.", "encoder_to_decoder.", "encoder.norm."))
            or name == "mask_token"
        }
        assert set(report.ignored) == expected_ignored and len(expected_ignored) == 60
        assert sorted(report.missing) == sorted(NEW_AT_FINETUNE)
    else:
        report = load_weights(model, path, fmt)
        prefix = ""
        assert not report.ignored and not report.missing
    loaded = {
        name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)
    }
    fresh = set(NEW_AT_FINETUNE) if fmt == "videomae_pretrain" else set()
    assert set(target) - set(loaded) == fresh  # every other model tensor is in the file
    for key, value in model.state_dict().items():
        if key not in fresh:
            assert torch.equal(value, loaded[key]), key
    assert sorted(report.loaded) == sorted(set(target) & set(loaded)) and len(report.loaded) == (
        158 if fmt == "videomae_pretrain" else 162
    )
    written = upstream_state_dict(
        VIDEOMAE_VITS16, fmt, num_classes=400 if fmt == "videomae_finetuned" else None
    )[RELEASED[fmt]["wrapper"]]
    shapes = dict(keys)
    assert {k: tuple(v.shape) for k, v in written.items()} == {
        k: s
        for k, s in shapes.items()
        if not k.startswith(("decoder.blocks.1.", "decoder.blocks.2.", "decoder.blocks.3."))
    }


class RunsCode:
    """Unpickling this runs a shell command (the attack weights_only must refuse)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    path = save({"model": {"w": torch.zeros(1)}, "payload": RunsCode(marker)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="refused or unreadable as a weights-only") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError):
        load_pretrained(build_model(TINY_2D, 5), path, "catmae_pretrain")
    assert not marker.exists()
    # Control: the payload is live; an unrestricted load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_read_state_dict_unwraps_and_explains(tmp_path):
    sd = {"a": torch.ones(2)}
    for name, obj in (
        ("bare", sd),
        ("model", {"model": sd, "epoch": 1}),
        ("module", {"module": sd}),
        ("args", {"model": sd, "args": argparse.Namespace(lr=1.0, name="x")}),
    ):
        assert read_state_dict(save(obj, tmp_path / f"{name}.pth")).keys() == {"a"}, name
    html = tmp_path / "quota.pth"
    html.write_text("<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>")
    with pytest.raises(ValueError, match="HTML page"):
        read_state_dict(html)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        read_state_dict(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="not tensors: epoch"):
        read_state_dict(save({"w": torch.ones(1), "epoch": 3}, tmp_path / "mixed.pth"))


def test_load_weights_ours_and_released(tmp_path):
    torch.manual_seed(1)
    trained = build_model(TINY_2D, 5).eval()
    path = save({"model": trained.state_dict(), "arch": TINY_2D, "epoch": 2}, tmp_path / "final.pt")
    restored = build_model(TINY_2D, 5).eval()
    report = load_weights(restored, path, "ours")
    assert len(report.loaded) == report.total == 4 + 2 * 12 + 4 and not report.missing
    clip = torch.randn(1, 3, 16, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored(clip), trained(clip))
    with pytest.raises(ValueError, match=r"final\.pt.*head\.weight \[5, 64\] \(expected \[7, 64\]"):
        load_weights(build_model(TINY_2D, 7), path, "ours")

    released = upstream_state_dict(TINY_3D, "videomae_finetuned", num_classes=5)
    path = save(released, tmp_path / "released.pth")
    model = build_model(TINY_3D, 5)
    load_weights(model, path, "videomae_finetuned")
    for key, value in released["module"].items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"head\.bias \[5\] \(expected \[400\]\)"):
        load_weights(build_model(TINY_3D, 400), path, "videomae_finetuned")


def test_videomae_head_init_scale():
    torch.manual_seed(0)
    scaled = build_model(TINY_3D, 400)
    torch.manual_seed(0)
    plain = build_model({**TINY_3D, "head_init_scale": 1.0}, 400)
    torch.testing.assert_close(scaled.head.weight, plain.head.weight * 0.001)
    assert torch.equal(scaled.head.bias, torch.zeros(400))
    assert 0.015 < plain.head.weight.std().item() < 0.025  # trunc_normal(0.02)
    assert torch.equal(scaled.blocks[1].mlp.fc1.weight, plain.blocks[1].mlp.fc1.weight)


# ViT-S depth and drop path at a small width (building is cheaper).
DEEP_2D = CATMAE_VITS16 | {"img_size": 32, "num_frames": 2, "embed_dim": 32, "num_heads": 2}


def test_drop_path_linear_over_depth():
    model = build_model(DEEP_2D, 4)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 12).tolist())
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert all(b.drop_path1 is not b.drop_path2 for b in model.blocks[1:])


def test_layer_id_and_no_weight_decay():
    model = build_model(DEEP_2D, 4)
    assert model.num_layers == 14
    expected = {
        "cls_token": 0,
        "pos_embed": 0,
        "patch_embed.proj.weight": 0,
        "patch_embed.proj.bias": 0,
        "blocks.0.norm1.weight": 1,
        "blocks.0.attn.qkv.bias": 1,
        "blocks.11.mlp.fc2.weight": 12,
        "blocks.5.attn.proj.weight": 6,
        "fc_norm.weight": 13,
        "head.weight": 13,
        "head.bias": 13,
        "module.blocks.3.norm2.bias": 4,
    }
    assert {name: model.layer_id(name) for name in expected} == expected
    assert all(0 <= model.layer_id(n) < model.num_layers for n, _ in model.named_parameters())
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    params = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(params)


def test_arch_defaults_and_errors():
    model = build_model({k: TINY_3D[k] for k in ARCH_REQUIRED}, 3)
    assert model.arch == {**TINY_3D, "head_init_scale": 1.0}
    with pytest.raises(ValueError, match="num_frames 15 is not divisible by tubelet_size 2"):
        build_model({**TINY_3D, "num_frames": 15}, 3)
    with pytest.raises(ValueError, match="img_size 60 is not divisible"):
        build_model({**TINY_3D, "img_size": 60}, 3)
    with pytest.raises(ValueError, match=r"unknown keys \['depthh'\]"):
        build_model({**TINY_3D, "depthh": 1}, 3)
    with pytest.raises(ValueError, match=r"expected input \[B, 3, 16, 64, 64\]"):
        build_model(TINY_3D, 3)(torch.zeros(1, 3, 8, 64, 64))
