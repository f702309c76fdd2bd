"""The fine-tuning recipe against references written out from REFERENCE.md §2 (tests/reference.py),
not against the library's own parts: two real optimiser steps of the engine (its
`components.OptimiserStep`, on its own loader's batches, a tiny model of each patchify,
accumulation 2) against the same steps done by hand; then whole runs with one process and with
two (gloo), with accumulation 1 and 2, which must agree."""

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import BETAS, EPS, adamw_step, decays, lr_scale, mix_batch, soft_target_loss
from test_finetune import TINY_ARCH, finish, fork_run, rank0_log, tiny

from k400ft import distributed, feed, state
from k400ft import finetune as ft
from k400ft.layouts import upstream_state_dict

__all__ = ["tiny"]  # the fixture, shared with test_finetune

LRS = (2e-3, 1e-3)  # the two steps' lr: large enough that every group's update shows


@pytest.fixture
def global_rngs():
    """The engine seeds the process's global streams: put them back afterwards."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    torch.set_rng_state(saved[2])


def engine(root: Path, spec: dict, name: str) -> ft.Finetune:
    """The fine-tuning engine of `spec` on the tiny splits (one process, loaders in this one)."""
    pretrained = root / "pretrained.pth"
    if spec["arch"]["patchify"] == "3d":
        pretrained = root / f"{name}_videomae.pth"
        torch.save(upstream_state_dict(spec["arch"], "videomae_pretrain", seed=4), pretrained)
    return ft.Finetune(
        spec,
        distributed.init("cpu"),
        str(root / "train.csv"),
        str(root / "val.csv"),
        str(pretrained),
        str(root / name / "state"),
        str(root / name / "out"),
    )


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference, relative to the largest value of `want`."""
    return float((got - want).abs().max() / want.abs().max())


def assert_weights_agree(got: dict, want: dict, bound: float) -> None:
    """Each weight equal to 1e-7 plus 2 float32 steps of its value, except where AdamW's update
    flipped sign: float rounding can leave a gradient element on either side of 0, and that
    element's update is +-lr however small the gradient. At most 1 element in 10,000 (and at
    least 1 allowed) may differ, each by at most `bound` (2 x the lr summed over the steps)."""
    off, total = 0, 0
    for name, value in want.items():
        diff = (got[name] - value).abs()
        off += int((diff > 1e-7 + 2.5e-7 * value.abs()).sum())
        total += value.numel()
        assert float(diff.max()) <= bound, (name, float(diff.max()))
    assert off <= max(1, total // 10_000), f"{off} of {total} weights differ"


def clone(batch: tuple) -> tuple:
    return tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in batch)


@pytest.mark.parametrize("patchify", ["2d", "3d"])
def test_two_engine_steps_are_the_reference_adamw_steps(tiny, global_rngs, patchify):
    """Two optimiser steps of the engine, each of 2 micro-batches (accumulation 2: global batch
    4 = 2 x 1 process x 2), on its own loader's real clips, against the same steps written out
    (tests/reference.py, from REFERENCE.md §2): Mixup / CutMix from numpy's stream as timm
    draws it, smoothed targets, soft-target cross entropy, each micro-batch's loss divided by
    the accumulation; AdamW with betas (0.9, 0.999), eps 1e-8, weight decay 0.05 on matrices
    only (not on 1-D parameters, biases, pos_embed, cls_token), every parameter's lr = lr x
    0.75^(depth + 1 - layer id) (layer 0: cls_token, pos_embed, patch_embed; i + 1: block i;
    depth + 1: fc_norm, head). Drop path draws from torch's stream, replayed. Stated tolerance,
    for float rounding only (measured: 3e-7, 4e-7 and 1 float32 step): AdamW's moments
    (the gradients) to 1e-5 of each tensor's largest value; the weights to 1e-7 plus 2 float32
    steps of their value, all but 1 in 10,000 (`assert_weights_agree`; a step moves a weight
    by up to its lr: 2e-3 x 0.75^3 = 8e-4 here and more); the step's loss to 1e-6."""
    root, spec = tiny
    spec = copy.deepcopy(spec)
    spec["arch"] = {**TINY_ARCH, "patchify": patchify}
    spec["pretrained_format"] = {"2d": "catmae_pretrain", "3d": "videomae_pretrain"}[patchify]
    spec["data"]["num_workers"] = 0
    trainer = engine(root, spec, f"step_{patchify}")
    plan, depth, classes = trainer.plan, spec["arch"]["depth"], spec["num_classes"]
    assert plan.accumulation == 2 and plan.batch_per_gpu == 2
    trainer.sampler.set_epoch(0)
    trainer.train_set.set_epoch(0)
    loader = iter(trainer.train_loader)
    batches = [next(loader) for _ in range(len(LRS) * plan.accumulation)]
    assert {tuple(b[0].shape) for b in batches} == {(4, 3, 8, 32, 32)}  # 2 videos x 2 clips
    net = trainer.net
    start = copy.deepcopy(net.state_dict())
    np.random.seed(4)  # Mixup, CutMix, Mixup, CutMix (the engine's seed 0 draws Mixup 4 times)
    streams = torch.get_rng_state(), np.random.get_state()

    net.train()
    feeder = feed.Feeder(
        iter([clone(b) for b in batches]),
        lambda batch: feed.prepare(batch, torch.device("cpu"), None),
        torch.device("cpu"),
        len(batches),
    )
    step = trainer.optimiser_step()  # the engine's (components.OptimiserStep)
    losses = [float(step(feeder, lr)) for lr in LRS]

    torch.set_rng_state(streams[0])
    np.random.set_state(streams[1])
    reference = copy.deepcopy(net)
    reference.load_state_dict(start)
    params = dict(reference.named_parameters())
    moments = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}
    micro_batches, cutmix = iter(batches), []
    for step, lr in enumerate(LRS, start=1):
        grads = {n: torch.zeros_like(p) for n, p in params.items()}
        step_loss = 0.0
        for _ in range(plan.accumulation):
            clips, labels = next(micro_batches)[:2]
            mixed, targets, was_cutmix = mix_batch(clips.clone(), labels, classes)
            cutmix.append(was_cutmix)
            loss = soft_target_loss(reference(mixed), targets)
            for name, grad in zip(
                params, torch.autograd.grad(loss, list(params.values())), strict=True
            ):
                grads[name] += grad / plan.accumulation
            step_loss += float(loss.detach()) / plan.accumulation
        with torch.no_grad():
            adamw_step(params, grads, moments, step, lr, depth)
        assert losses[step - 1] == pytest.approx(step_loss, rel=1e-6)

    assert cutmix == [False, True, False, True]  # both kinds in each step
    groups = trainer.optimizer.param_groups
    assert {(tuple(g["betas"]), g["eps"]) for g in groups} == {(BETAS, EPS)}
    engine_state = trainer.optimizer.state
    for name, param in net.named_parameters():
        m, v = moments[name]
        assert relative(engine_state[param]["exp_avg"], m) < 1e-5, name
        assert relative(engine_state[param]["exp_avg_sq"], v) < 1e-5, name
    weights = {name: param.detach() for name, param in net.named_parameters()}
    assert_weights_agree(weights, {n: p.detach() for n, p in params.items()}, 2 * sum(LRS))
    for name, param in net.named_parameters():
        moved = (param.detach() - start[name]).abs().max()
        assert moved > 0.1 * LRS[1] * lr_scale(name, depth), name  # every group moved
    assert any(decays(n, p) for n, p in params.items()) and not all(
        decays(n, p) for n, p in params.items()
    )


# ---------------------------------------------------------------- one process or two, accumulation


@pytest.fixture(scope="module")
def three_runs(tiny):
    """The same recipe three ways: one process with accumulation 2 (batch 2), two gloo
    processes with accumulation 1 (batch 2 each), one process with accumulation 1 (batch 4).
    Mixup / CutMix and drop path off: both draw per process, so their draws, not the maths,
    would differ between the three (the step with them on is checked above)."""
    root, spec = tiny
    spec = copy.deepcopy(spec)
    spec["arch"]["drop_path"] = 0.0
    spec["recipe"].update(mixup=0.0, cutmix=0.0, epochs=1, warmup_epochs=0, checkpoint_minutes=60)
    runs = {"acc2": (2, 1), "ddp": (2, 2), "acc1": (4, 1)}  # (batch_per_gpu, processes)
    out = {}
    for name, (batch, processes) in runs.items():
        run_spec = copy.deepcopy(spec)
        run_spec["finetune"]["batch_per_gpu"] = batch
        ranks = fork_run(root, run_spec, name, world_size=processes)
        assert finish(ranks) == [0] * processes, rank0_log(root, name)[-3000:]
        final = torch.load(root / name / "out/final.pt", map_location="cpu", weights_only=True)
        log = [json.loads(line) for line in (root / name / "out/train_log.jsonl").open()]
        saved = state.unpack_state(root / name / "state/last.pt")
        plan = json.loads((root / name / "out/spec.json").read_text())["plan"]
        out[name] = {"model": final["model"], "log": log, "state": saved, "plan": plan}
    return out


def test_one_process_and_two_and_accumulation_1_and_2_agree(three_runs):
    """Global batch 4 as 2 x 1 process x accumulation 2, 2 x 2 processes, 4 x 1 process: each
    optimiser step sees the same 4 videos (8 clips) and the mean of their losses, so the runs
    differ by float rounding only (the order of the sums). Stated tolerance (measured: 4e-9,
    9e-7 and 1e-8; once, under heavy load, more in the stem's weights): the weights to 1e-7
    plus 2 float32 steps of their value, all but 1 in 10,000 (`assert_weights_agree`; the 4
    steps at lr 1.6e-5 move them by up to 6e-5), AdamW's moments (the gradients) to 1e-5 of
    each tensor's largest value, the epoch's train and validation loss to 1e-6 relative, the
    validation Top-1 / Top-5 equal."""
    base = three_runs["acc2"]
    assert [three_runs[n]["plan"]["accumulation"] for n in ("acc2", "ddp", "acc1")] == [2, 1, 1]
    assert three_runs["ddp"]["plan"]["world_size"] == 2
    reference_moments = base["state"]["optimizer"]["state"]
    for name in ("ddp", "acc1"):
        other = three_runs[name]
        assert_weights_agree(other["model"], base["model"], 2 * 4 * 1e-3 * 4 / 256)
        moments = other["state"]["optimizer"]["state"]
        assert moments.keys() == reference_moments.keys()
        for index, entry in reference_moments.items():
            for key in ("exp_avg", "exp_avg_sq"):
                assert relative(moments[index][key], entry[key]) < 1e-5, (name, index, key)
        epoch, base_epoch = other["log"][-1], base["log"][-1]
        assert epoch["type"] == base_epoch["type"] == "epoch"
        for key in ("loss", "val_loss"):
            assert epoch[key] == pytest.approx(base_epoch[key], rel=1e-6), key
        assert (epoch["val_top1"], epoch["val_top5"]) == (
            base_epoch["val_top1"],
            base_epoch["val_top5"],
        )
