"""The config `arch` dict of a model: its schema defaults, required keys and shape checks.

One small module that both `k400ft.models` (building a net) and `k400ft.layouts` (sizing a
synthetic upstream checkpoint) read, so that neither has to import the other for it.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ARCH_DEFAULTS", "ARCH_REQUIRED", "resolve_arch"]

#: Schema defaults of the optional `arch` keys (schemas/config.schema.yaml, `$defs/arch`).
ARCH_DEFAULTS: dict = {
    "patch_size": 16,
    "tubelet_size": 2,
    "mlp_ratio": 4.0,
    "drop_path": 0.1,
    "head_init_scale": 1.0,
}
#: The keys every `arch` dict names (the schema's required ones).
ARCH_REQUIRED = ("patchify", "img_size", "num_frames", "embed_dim", "depth", "num_heads")


def resolve_arch(arch: Mapping) -> dict:
    """The config `arch` dict with schema defaults filled in, checked for a buildable shape."""
    unknown = set(arch) - set(ARCH_REQUIRED) - set(ARCH_DEFAULTS)
    missing = [key for key in ARCH_REQUIRED if key not in arch]
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
