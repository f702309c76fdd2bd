"""Upstream's training recipe as components: AdamW on layer-decay groups, Mixup/CutMix, loss.

The pieces the fine-tuning engine (k400ft.finetune) runs and the timing harness
(k400ft.measure) times, built one way for both (REFERENCE.md §2): AdamW (betas, eps) with weight
decay on matrices only and layer-wise lr decay (`param_groups`, `make_optimizer`); timm's
Mixup / CutMix on 5-D clips (`make_mixup`, `mix_clips`) with the loss upstream pairs with it
(`make_criterion`); the autocast of the resolved precision; top-k counting for validation; and
the optimiser step made of them (`OptimiserStep`), the one the engine runs and the plan times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay

from k400ft import models

AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def param_groups(model: models.VideoViT, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with layer-wise lr decay (upstream's `get_parameter_groups`),
    built by timm's `param_groups_layer_decay` from the model's `group_matcher`.

    A parameter gets no weight decay when it is 1-D, its name ends in `.bias`, or its name is
    in `model.no_weight_decay()` (pos_embed, cls_token); its lr scale is
    layer_decay^(num_layers - 1 - layer id) (ViT-S: num_layers 14, scale 0.75^(13 - id),
    id 0 = cls_token/pos_embed/patch_embed, i + 1 = blocks.i, 13 = fc_norm/head). Frozen
    parameters are left out. One group per (layer, decay) pair, in the order parameters first
    appear, each with `params`, `weight_decay` and `lr_scale` (lr = lr x lr_scale every step).
    """
    return param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        no_weight_decay_list=(*sorted(model.no_weight_decay()), "*.bias"),
        layer_decay=layer_decay,
    )


def make_optimizer(
    net: models.VideoViT, recipe: dict, lr: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with the recipe's betas and eps over `param_groups` (fused on CUDA)."""
    return torch.optim.AdamW(
        param_groups(net, recipe["weight_decay"], recipe["layer_decay"]),
        lr=lr,
        betas=tuple(recipe["betas"]),
        eps=recipe["eps"],
        fused=device.type == "cuda",
    )


def make_mixup(recipe: dict, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix with upstream's arguments (None when both alphas are 0)."""
    if recipe["mixup"] <= 0 and recipe["cutmix"] <= 0:
        return None
    return Mixup(
        mixup_alpha=recipe["mixup"],
        cutmix_alpha=recipe["cutmix"],
        prob=recipe["mixup_prob"],
        switch_prob=recipe["mixup_switch_prob"],
        mode=recipe["mixup_mode"],
        label_smoothing=recipe["smoothing"],
        num_classes=num_classes,
    )


def make_criterion(recipe: dict, mixup: Mixup | None) -> nn.Module:
    """Upstream: soft-target CE when mixing (smoothing is inside the mixed targets), else
    label-smoothing CE when smoothing > 0, else plain CE."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if recipe["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe["smoothing"])
    return nn.CrossEntropyLoss()


def mix_clips(
    mixup: Mixup, clips: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup/CutMix of a batch of clips [B, C, T, H, W] -> (mixed clips, soft targets [B, K]).

    timm's Mixup cuts `x[:, :, y0:y1, x0:x1]`, i.e. dims 2 and 3, which on a 5-D clip would be
    (T, H) while the box is drawn from the last two dims (H, W). Viewing the clips as
    [B, C x T, H, W] makes timm cut (H, W) of every frame and channel, as upstream's video
    copy does; mixup proper is elementwise and unaffected. In place, like timm."""
    b, c, t, h, w = clips.shape
    mixed, targets = mixup(clips.view(b, c * t, h, w), labels)
    return mixed.view(b, c, t, h, w), targets


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward's autocast for a resolved precision (bf16 / fp16; fp32: off)."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPE[precision], enabled=precision != "fp32")


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[int]:
    """Number of rows whose label is among the k highest logits, for each k (k capped at the
    number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


@dataclass
class OptimiserStep:
    """The fine-tuning engine's optimiser step (k400ft.finetune runs it, k400ft.measure times
    it): at `lr`, `accumulation` micro-batches, each taken from `feeder` (`feed.Feeder`: made
    on the device a step ahead), Mixup/CutMix, autocast forward, loss, backward of loss /
    accumulation (with DDP, `no_sync` on all but the last), the next batch fetched while the
    device runs this one; then AdamW (through the grad scaler) and zeroed gradients. Returns
    the step's mean loss on the device (not read: no sync)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    mixup: Mixup | None
    criterion: nn.Module
    device: torch.device
    precision: str
    accumulation: int = 1
    no_sync: Callable | None = None  # DDP's model.no_sync; None with one process

    def __call__(self, feeder, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        step_loss = torch.zeros((), device=self.device)
        for micro in range(self.accumulation):
            clips, labels = feeder.take()
            if self.mixup is not None:
                clips, targets = mix_clips(self.mixup, clips, labels)
            else:
                targets = labels
            last = micro == self.accumulation - 1
            sync = contextlib.nullcontext() if last or self.no_sync is None else self.no_sync()
            with sync:
                with autocast(self.device, self.precision):
                    loss = self.criterion(self.model(clips), targets)
                self.scaler.scale(loss / self.accumulation).backward()
            feeder.fetch()  # the next batch, made while this step runs on the device
            step_loss += loss.detach() / self.accumulation
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss
