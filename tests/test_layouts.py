"""k400ft.layouts on its own: each pretrained format's filter is a pure mapping from the
upstream state dict to our key names (REFERENCE.md section 1), and `place_encoder` is its
reverse. The loaders built on them are tested in test_models.py."""

from __future__ import annotations

import pytest
import torch

from k400ft.layouts import (
    NEW_AT_FINETUNE,
    PRETRAIN_FILTERS,
    catmae_pretrain_filter,
    place_encoder,
    upstream_state_dict,
    videomae_pretrain_filter,
)
from k400ft.models import build_model

torch.set_num_threads(1)

TINY_2D = {
    "patchify": "2d",
    "img_size": 64,
    "num_frames": 16,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
}
TINY_3D = {**TINY_2D, "patchify": "3d", "head_init_scale": 0.001}


def test_catmae_filter_inflates_the_stem_keeps_pos_embed_and_ignores_pretraining_keys():
    state = upstream_state_dict(TINY_2D, "catmae_pretrain", seed=1)["model"]
    before = {k: v.clone() for k, v in state.items()}
    model = build_model(TINY_2D, 5)
    encoder, ignored, notes = catmae_pretrain_filter(state, model)
    assert all(torch.equal(state[k], v) for k, v in before.items())  # the input is untouched
    assert list(encoder) == [k for k in model.state_dict() if k not in NEW_AT_FINETUNE]
    kernel = state["patch_embed.proj.weight"]
    assert torch.equal(
        encoder["patch_embed.proj.weight"], kernel.unsqueeze(2).repeat(1, 1, 2, 1, 1) / 2
    )
    assert encoder["pos_embed"] is state["pos_embed"]
    assert all(encoder[k] is state[k] for k in encoder if k != "patch_embed.proj.weight")
    assert ignored == [k for k in state if k.startswith(("decoder_", "norm.")) or k == "mask_token"]
    assert "inflated" in notes[0] and "kept as loaded" in notes[1] and "tiled over 8" in notes[2]


def test_catmae_filter_resamples_pos_embed_to_another_grid():
    state = upstream_state_dict(TINY_2D, "catmae_pretrain")["model"]  # 4 x 4 grid
    model = build_model({**TINY_2D, "img_size": 96}, 5)  # 6 x 6 grid
    encoder, _, notes = catmae_pretrain_filter(state, model)
    assert encoder["pos_embed"].shape == (1, 1 + 36, 64)
    assert torch.equal(encoder["pos_embed"][:, 0], state["pos_embed"][:, 0])
    assert "4x4 grid resampled bicubically to 6x6" in notes[1]
    with pytest.raises(ValueError, match="patch_size is 8"):
        catmae_pretrain_filter(state, build_model({**TINY_2D, "patch_size": 8}, 5))


def test_videomae_filter_strips_the_prefix_and_ignores_pretraining_keys():
    state = upstream_state_dict(TINY_3D, "videomae_pretrain", seed=2)["model"]
    model = build_model(TINY_3D, 5)
    encoder, ignored, notes = videomae_pretrain_filter(state, model)
    assert list(encoder) == [k for k in model.state_dict() if k not in NEW_AT_FINETUNE]
    assert all(encoder[k] is state["encoder." + k] for k in encoder)
    assert set(ignored) == set(state) - {"encoder." + k for k in encoder}
    assert {"encoder.norm.weight", "encoder_to_decoder.weight", "mask_token"} <= set(ignored)
    assert notes == [
        "no position table in the checkpoint: the fixed 1-D sinusoid table is computed for "
        "this model's 8x4x4 = 128 tokens (not learned)"
    ]
    with pytest.raises(ValueError, match=r"\[2, 16, 16\] tubelet kernel"):
        videomae_pretrain_filter(state, build_model({**TINY_3D, "tubelet_size": 4}, 5))


@pytest.mark.parametrize("arch", [TINY_2D, TINY_3D], ids=["catmae", "videomae"])
def test_place_encoder_is_the_reverse_of_the_filter(arch):
    fmt = "catmae_pretrain" if arch["patchify"] == "2d" else "videomae_pretrain"
    model = build_model(arch, 5)
    with torch.no_grad():  # equal temporal slices, as the demo's pretext keeps them
        stem = model.patch_embed.proj.weight
        stem.copy_(stem[:, :, :1].expand_as(stem))
    checkpoint = upstream_state_dict(arch, fmt, seed=3)
    place_encoder(checkpoint, fmt, model.state_dict())
    encoder, _, _ = PRETRAIN_FILTERS[fmt](checkpoint["model"], model)
    target = model.state_dict()
    assert list(encoder) == [k for k in target if k not in NEW_AT_FINETUNE]
    for key, value in encoder.items():
        assert torch.equal(value, target[key]), key
