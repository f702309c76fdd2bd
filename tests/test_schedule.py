"""k400ft.schedule: the recipe's numbers as pure functions (lr scaling and schedule,
accumulation, the cost projection), tested alone."""

import math

import numpy as np
import pytest

from k400ft import schedule as S

# ---------------------------------------------------------------- lr schedule


def upstream_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs):
    """VideoMAE/CatMAE utils.cosine_scheduler (start_warmup_value 0, warmup_steps -1), restated."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(0, base_value, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters))
    )
    return np.concatenate((warmup, cosine))


def test_scaled_lr_is_linear_in_global_batch():
    assert S.scaled_lr(1.2e-3, 28) == pytest.approx(1.3125e-4)  # CatMAE seed script, 7 x 4 GPUs
    assert S.scaled_lr(5e-4, 48) == pytest.approx(9.375e-5)  # its VideoMAE script, 12 x 4
    assert S.scaled_lr(5e-4, 384) == pytest.approx(7.5e-4)  # VideoMAE's own recipe
    assert S.scaled_lr(1e-6, 256) == 1e-6


def test_lr_schedule_values_at_chosen_steps():
    lr, min_lr, spe = 1e-3, 1e-5, 10
    warmup, total = 5 * spe, 30 * spe

    def at(step):
        return S.lr_at_step(step, lr, min_lr, warmup, total)

    assert at(0) == 0.0  # linear from 0
    assert at(1) == pytest.approx(lr / 49)  # linspace(0, lr, 50): endpoint included
    assert at(warmup - 1) == pytest.approx(lr)  # the last warmup step reaches lr ...
    assert at(warmup) == pytest.approx(lr)  # ... and the cosine starts there
    middle = warmup + (total - warmup) // 2
    assert at(middle) == pytest.approx((lr + min_lr) / 2)  # half-way down the cosine
    assert at(total - 1) == pytest.approx(
        min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * 249 / 250))
    )
    assert min_lr < at(total - 1) < min_lr * 1.01
    values = [at(s) for s in range(total)]
    np.testing.assert_allclose(
        values, upstream_cosine_scheduler(lr, min_lr, 30, spe, 5), rtol=1e-12, atol=0
    )
    assert all(a <= b for a, b in zip(values[: warmup - 1], values[1:warmup], strict=True))
    assert all(a >= b for a, b in zip(values[warmup:-1], values[warmup + 1 :], strict=True))
    with pytest.raises(ValueError, match="outside"):
        at(total)


def test_lr_schedule_without_warmup_and_paper_sizes():
    # the paper run: K400 train ~240k videos, global batch 28 -> 8571 steps per epoch
    spe = 240_000 // 28
    lr, min_lr = S.scaled_lr(1.2e-3, 28), S.scaled_lr(1e-6, 28)
    ref = upstream_cosine_scheduler(lr, min_lr, 150, spe, 5)
    for step in (0, 1, 5 * spe - 1, 5 * spe, 77 * spe + 13, 150 * spe - 1):
        assert S.lr_at_step(step, lr, min_lr, 5 * spe, 150 * spe) == pytest.approx(
            ref[step], rel=1e-12, abs=0
        )
    assert S.lr_at_step(0, 1.0, 0.0, 0, 4) == 1.0  # no warmup: the cosine from step 0


# ---------------------------------------------------------------- accumulation


def test_accumulation_steps_keep_the_global_batch():
    assert S.accumulation_steps(28, 7, 4) == 1  # CatMAE seed script as run
    assert S.accumulation_steps(28, 7, 1) == 4  # the same global batch on one GPU
    assert S.accumulation_steps(48, 12, 2) == 2
    assert S.accumulation_steps(384, 12, 8) == 4  # VideoMAE's 384 on 8 GPUs


def test_accumulation_refusal_names_the_numbers_to_change():
    with pytest.raises(S.SpecError) as err:
        S.accumulation_steps(28, 8, 4)
    message = str(err.value)
    assert "finetune.global_batch 28" in message and "batch_per_gpu 8 x 4 processes = 32" in message
    assert "divisor of 7" in message and "1, 7" in message
    with pytest.raises(
        ValueError,
        match=r"number of processes that divides the global batch \(1, 2, 4, 7, 14, 28\)",
    ):
        S.accumulation_steps(28, 1, 3)


# ---------------------------------------------------------------- cost projection


def test_cost_projection():
    # 240k videos / global batch 48 = 5000 steps per epoch x 150 epochs at 0.5 s, 4 GPUs
    p = S.project_cost(0.5, 240_000, 48, 150, 4)
    assert p.steps_total == 750_000
    assert p.wall_hours == pytest.approx(750_000 * 0.5 / 3600)
    assert p.gpu_hours == pytest.approx(4 * p.wall_hours)
    with_val = S.project_cost(
        0.5, 240_000, 48, 150, 4, val_videos=19_800, val_videos_per_second=100
    )
    assert with_val.wall_hours == pytest.approx(p.wall_hours + 150 * 198 / 3600)
    assert "750000 optimiser steps" in p.describe() and "GPU-hours" in p.describe()


def test_augment_compile_resolves_per_device_and_refuses_other_values():
    import torch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert S.augment_compile("auto", cuda) and not S.augment_compile("auto", cpu)
    for on in ("on", True):  # YAML reads an unquoted on as true
        assert S.augment_compile(on, cpu) and S.augment_compile(on, cuda)
    for off in ("off", False):
        assert not S.augment_compile(off, cuda)
    with pytest.raises(S.SpecError, match="augment_compile must be auto, on or off, got 'yes'"):
        S.augment_compile("yes", cpu)
