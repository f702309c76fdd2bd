"""The fine-tuning engine: the recipe's parts as pure functions (layer-decay groups,
Mixup/CutMix on clips), the resume state file, the data order; then the
real stage on tiny models and tiny real mp4 files: SIGKILL at random steps and SIGTERM, then
restart, must reach bit-identical weights and metrics to an uninterrupted run (one process,
and 2 gloo processes through torchrun)."""

import contextlib
import functools
import io
import json
import multiprocessing
import os
import random
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.models import group_parameters
from torch import nn

from k400ft import components, lifecycle, samplers
from k400ft import finetune as ft
from k400ft.io import setup_logging
from k400ft.models import CATMAE_VITS16, VIDEOMAE_VITS16, build_model

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCH = {
    "patchify": "2d",
    "img_size": 32,
    "num_frames": 8,
    "patch_size": 16,
    "tubelet_size": 2,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "mlp_ratio": 2.0,
    "drop_path": 0.1,
    "head_init_scale": 1.0,
}
RECIPE = {
    "epochs": 2,
    "warmup_epochs": 1,
    "weight_decay": 0.05,
    "layer_decay": 0.75,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "min_lr": 1e-6,
    "mixup": 0.8,
    "cutmix": 1.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "mixup_mode": "batch",
    "smoothing": 0.1,
    "precision": "auto",
    "compile": False,
    "seed": 0,
    "checkpoint_minutes": 1e-6,  # a timed save at every step boundary: kills land mid-epoch
}
DATA = {
    "num_frames": 8,
    "sampling_rate": 2,
    "input_size": 32,
    "short_side_size": 32,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "augment": {
        "rand_augment": "rand-m7-n4-mstd0.5-inc1",
        "scale": [0.08, 1.0],
        "ratio": [0.75, 1.3333],  # upstream's literals
        "hflip": 0.5,
        "reprob": 0.25,
        "num_sample": 2,
    },
    "num_workers": 1,
}


# ---------------------------------------------------------------- parameter groups


def layer_decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    layer_id: Callable[[str], int],
    num_layers: int,
    no_weight_decay: set[str],
    weight_decay: float,
    layer_decay: float,
) -> list[dict[str, Any]]:
    """The reference: the project's own groups before timm built them (`components.param_groups`),
    upstream's `get_parameter_groups`.

    A parameter gets no weight decay when it is 1-D, its name ends in `.bias`, or its name is
    in `no_weight_decay` (pos_embed, cls_token); its lr scale is
    layer_decay^(num_layers - 1 - layer_id(name)) (ViT-S: num_layers 14, scale 0.75^(13 - id),
    id 0 = cls_token/pos_embed/patch_embed, i + 1 = blocks.i, 13 = fc_norm/head). One group per
    (layer, decay) pair, in the order parameters first appear; each group lists `param_names`.
    """
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay)
        layer = layer_id(name)
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer_id({name!r}) = {layer} outside [0, {num_layers})")
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "param_names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (num_layers - 1 - layer),
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def upstream_layer_id(name: str, num_layers: int) -> int:
    """The reference layer id, upstream `get_num_layer_for_vit` (`VideoViT.layer_id` as it was
    written before it read `group_matcher`): 0 for cls_token / pos_embed / mask_token /
    patch_embed.*, i + 1 for blocks.i.*, num_layers - 1 for the rest (fc_norm, head)."""
    if name in ("cls_token", "pos_embed", "mask_token") or name.startswith("patch_embed."):
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return num_layers - 1


def reference_groups(model, weight_decay=0.05, layer_decay=0.75):
    return layer_decay_groups(
        model.named_parameters(),
        functools.partial(upstream_layer_id, num_layers=model.num_layers),
        model.num_layers,
        model.no_weight_decay(),
        weight_decay,
        layer_decay,
    )


def groups_by_name(model, weight_decay=0.05, layer_decay=0.75):
    groups = reference_groups(model, weight_decay, layer_decay)
    return {
        name: (g["weight_decay"], g["lr_scale"]) for g in groups for name in g["param_names"]
    }, groups


def test_param_groups_membership_and_lr_scale_per_name():
    model = build_model(TINY_ARCH, 8)  # depth 2: num_layers 4, head = layer 3
    by_name, groups = groups_by_name(model)
    expected = {
        "cls_token": (0.0, 0.75**3),
        "pos_embed": (0.0, 0.75**3),
        "patch_embed.proj.weight": (0.05, 0.75**3),
        "patch_embed.proj.bias": (0.0, 0.75**3),
        "blocks.0.norm1.weight": (0.0, 0.75**2),
        "blocks.0.attn.qkv.weight": (0.05, 0.75**2),
        "blocks.0.attn.qkv.bias": (0.0, 0.75**2),
        "blocks.1.mlp.fc2.weight": (0.05, 0.75),
        "blocks.1.mlp.fc2.bias": (0.0, 0.75),
        "fc_norm.weight": (0.0, 1.0),
        "fc_norm.bias": (0.0, 1.0),
        "head.weight": (0.05, 1.0),
        "head.bias": (0.0, 1.0),
    }
    for name, (wd, scale) in expected.items():
        assert by_name[name][0] == wd, name
        assert by_name[name][1] == pytest.approx(scale), name
    assert set(by_name) == {n for n, _ in model.named_parameters()}  # every parameter, once
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    decayed = {n for n, (wd, _) in by_name.items() if wd > 0}
    assert all(
        n.endswith(".weight") and dict(model.named_parameters())[n].ndim >= 2 for n in decayed
    )


def test_param_groups_vits_layer_ids_and_frozen_params():
    vits = dict(TINY_ARCH, patchify="3d", depth=12, embed_dim=16)  # ViT-S depth, small width
    model = build_model(vits, 4)
    by_name, _ = groups_by_name(model)
    assert model.num_layers == 14
    assert by_name["head.weight"] == (0.05, pytest.approx(1.0))  # layer 13
    assert by_name["fc_norm.weight"][1] == pytest.approx(1.0)
    assert by_name["blocks.11.attn.qkv.weight"][1] == pytest.approx(0.75)  # layer 12
    assert by_name["blocks.0.attn.q_bias"] == (0.0, pytest.approx(0.75**12))  # layer 1
    assert by_name["patch_embed.proj.weight"][1] == pytest.approx(0.75**13)  # layer 0
    model.head.bias.requires_grad_(False)
    assert "head.bias" not in groups_by_name(model)[0]


def test_param_groups_drive_adamw_lr_per_parameter():
    model = build_model(TINY_ARCH, 8)
    groups = layer_decay_groups(
        model.named_parameters(),
        model.layer_id,
        model.num_layers,
        model.no_weight_decay(),
        0.05,
        0.75,
    )
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    for group in optimizer.param_groups:
        group["lr"] = 2e-3 * group["lr_scale"]
    lr_of = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    assert lr_of["head.weight"] == pytest.approx(2e-3)
    assert lr_of["cls_token"] == pytest.approx(2e-3 * 0.75**3)


@pytest.mark.parametrize(
    "arch",
    [CATMAE_VITS16, VIDEOMAE_VITS16, TINY_ARCH, dict(TINY_ARCH, patchify="3d")],
    ids=["catmae_vits16", "videomae_vits16", "tiny_2d", "tiny_3d"],
)
def test_timm_param_groups_are_the_reference_groups(arch):
    """`components.param_groups` (timm's `param_groups_layer_decay` over `VideoViT.group_matcher`)
    gives the reference's groups for both models: the same groups in the same order, each with
    the same parameters (identity, in order), lr_scale and weight_decay exactly equal; frozen
    parameters left out the same way. timm's layer ids are `layer_id`'s."""
    torch.manual_seed(0)
    model = build_model(arch, 400)
    names = {id(p): n for n, p in model.named_parameters()}
    ids = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert ids == {n: upstream_layer_id(n, model.num_layers) for n, _ in model.named_parameters()}
    assert ids == {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert max(ids.values()) == model.num_layers - 1 == model.depth + 1

    def rows(groups):
        return [
            ([names[id(p)] for p in g["params"]], g["lr_scale"], g["weight_decay"]) for g in groups
        ]

    for frozen in ((), ("head.bias", "blocks.0.norm1.weight")):
        for name in frozen:
            dict(model.named_parameters())[name].requires_grad_(False)
        new, old = components.param_groups(model, 0.05, 0.75), reference_groups(model)
        assert rows(new) == rows(old)
        for got, want in zip(new, old, strict=True):
            assert all(a is b for a, b in zip(got["params"], want["params"], strict=True))
            assert set(got) == {"params", "lr_scale", "weight_decay"}  # no param_names
        assert sorted(rows(new), key=repr) == sorted(rows(old), key=repr)  # the multiset, too
        assert sum(len(g["params"]) for g in new) == sum(
            p.requires_grad for p in model.parameters()
        )


def test_optimizer_state_of_reference_groups_loads_into_timm_groups():
    """A resume state written before timm built the groups (reference groups, `param_names`
    included) loads into today's optimiser: same group count, sizes and order, so every
    parameter gets its own moments back, with its lr_scale and weight_decay."""
    torch.manual_seed(0)
    model = build_model(TINY_ARCH, 8)
    old = torch.optim.AdamW(reference_groups(model), lr=1e-3)
    model(torch.randn(2, 3, 8, 32, 32)).square().sum().backward()
    old.step()
    saved = old.state_dict()
    new = torch.optim.AdamW(components.param_groups(model, 0.05, 0.75), lr=1e-3)
    new.load_state_dict(saved)
    for param in model.parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(new.state[param][key], old.state[param][key])
    for got, want in zip(new.param_groups, old.param_groups, strict=True):
        assert got["params"] == want["params"]
        assert (got["lr_scale"], got["weight_decay"]) == (want["lr_scale"], want["weight_decay"])


# ---------------------------------------------------------------- mixup / cutmix on clips


def two_clips():
    clips = torch.zeros(2, 3, 4, 16, 24)
    clips[1] = 1.0
    return clips, torch.tensor([0, 1])


def test_cutmix_on_clips_cuts_height_and_width_of_every_frame():
    mixup = Mixup(
        mixup_alpha=0.0,
        cutmix_alpha=1.0,
        prob=1.0,
        switch_prob=0.5,
        mode="batch",
        label_smoothing=0.0,
        num_classes=2,
    )
    np.random.seed(3)
    clips, labels = two_clips()
    mixed, targets = components.mix_clips(mixup, clips, labels)
    assert mixed.shape == (2, 3, 4, 16, 24)
    box = mixed[0]  # clip 0 was zeros: ones inside the box (pasted from clip 1)
    assert box.sum() > 0
    assert torch.equal(box, box[:1, :1].expand_as(box))  # same box in every channel and frame
    rows, cols = box[0, 0].any(dim=1), box[0, 0].any(dim=0)
    assert torch.equal(box[0, 0], (rows[:, None] & cols[None, :]).float())  # a rectangle in (H, W)
    area = float(box[0, 0].mean())
    assert targets[0].tolist() == pytest.approx([1 - area, area])  # lam corrected to the area
    assert torch.equal(mixed[1], 1 - mixed[0])  # the partner got the complementary box


def test_mixup_on_clips_blends_whole_clips_with_smoothed_targets():
    mixup = components.make_mixup(dict(RECIPE, cutmix=0.0), num_classes=2)
    np.random.seed(0)
    clips, labels = two_clips()
    mixed, targets = components.mix_clips(mixup, clips, labels)
    lam = 1 - float(mixed[0].mean())
    assert torch.allclose(mixed[0], torch.full_like(mixed[0], 1 - lam))
    assert targets[0].tolist() == pytest.approx(
        [lam * 0.95 + (1 - lam) * 0.05, lam * 0.05 + (1 - lam) * 0.95]
    )


def test_criterion_follows_upstream_choice():
    recipe = RECIPE
    mixup = components.make_mixup(recipe, 400)
    assert type(components.make_criterion(recipe, mixup)).__name__ == "SoftTargetCrossEntropy"
    off = dict(recipe, mixup=0.0, cutmix=0.0)
    assert components.make_mixup(off, 400) is None
    assert type(components.make_criterion(off, None)).__name__ == "LabelSmoothingCrossEntropy"
    assert (
        type(components.make_criterion(dict(off, smoothing=0.0), None)).__name__
        == "CrossEntropyLoss"
    )


def test_topk_correct_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    assert components.topk_correct(logits, torch.tensor([1, 2, 0]), (1, 2, 5)) == [1, 2, 3]


# ---------------------------------------------------------------- data order


def test_resumable_sampler_skips_exactly_the_done_positions():
    data = list(range(23))
    per_rank = (
        2 * 1 * 4
    )  # 2 steps/epoch x accumulation 1 x batch_per_gpu 4 (global batch 8, 2 ranks)
    full = {}
    for rank in (0, 1):
        sampler = samplers.ResumableSampler(data, 2, rank, seed=0, per_rank=per_rank)
        sampler.set_epoch(3)
        full[rank] = list(sampler)
        assert len(full[rank]) == per_rank
        sampler.set_start(4)
        assert list(sampler) == full[rank][4:] and len(sampler) == 4
    assert len(set(full[0]) | set(full[1])) == 16  # distinct videos, never the padding
    again = samplers.ResumableSampler(data, 2, 0, seed=0, per_rank=per_rank)
    again.set_epoch(4)
    assert list(again) != full[0]  # a new permutation each epoch


def test_shard_sampler_covers_every_video_once():
    shards = [list(samplers.ShardSampler(7, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))


# ---------------------------------------------------------------- the stage, killed and resumed
# Runs are forked from this process (no start-up imports; 2 ranks = 2 forks with torchrun's
# environment variables and gloo); the resume of the killed 2-rank run goes through torchrun
# and the CLI.

NUM_CLASSES = 10  # more than 5: a validation Top-5 below 100% is possible
VAL_VIDEOS = 10
STEPS = 2 * (16 // 4)  # 16 train videos, global batch 4, 2 epochs
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """16 train + 10 val tiny real mp4 files (one unreadable: replaced deterministically; the
    val files one of each class), a CatMAE-layout pretrained checkpoint, and the spec."""
    from videos import write_pattern_mp4

    from k400ft.layouts import upstream_state_dict
    from k400ft.video import write_split_csv

    root = tmp_path_factory.mktemp("finetune")
    rows = {"train": [], "val": []}
    for i in range(16 + VAL_VIDEOS):
        path = write_pattern_mp4(
            root / f"videos/v{i:02d}.mp4", num_frames=20 + i % 7, seed=i, gop=8
        )
        rows["train" if i < 16 else "val"].append((str(path), i % NUM_CLASSES))
    (root / "videos/v03.mp4").write_bytes(b"not a video")
    for split, split_rows in rows.items():
        write_split_csv(root / f"{split}.csv", split_rows)
    torch.save(upstream_state_dict(TINY_ARCH, "catmae_pretrain"), root / "pretrained.pth")
    spec = {
        "arch": TINY_ARCH,
        "finetune": {"global_batch": 4, "batch_per_gpu": 2, "base_lr": 1e-3},
        "recipe": RECIPE,
        "data": DATA,
        "num_classes": NUM_CLASSES,
        "pretrained_format": "catmae_pretrain",
    }
    return root, spec


def paths(root: Path, name: str) -> tuple[str, ...]:
    return (
        str(root / "train.csv"),
        str(root / "val.csv"),
        str(root / "pretrained.pth"),
        str(root / name / "state"),
        str(root / name / "out"),
    )


def _rank_main(root: Path, spec: dict, name: str, env: dict) -> None:
    """A forked rank: stderr to <name>/rank<r>.log, then the engine; exits with its code."""
    os.environ.update(env)
    (root / name).mkdir(parents=True, exist_ok=True)
    log_fd = os.open(
        root / name / f"rank{env.get('RANK', '0')}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND
    )
    os.dup2(log_fd, 2)
    sys.stderr = open(2, "w", closefd=False)
    torch.set_num_threads(1)
    setup_logging()
    try:
        code = ft.finetune(spec, "cpu", *paths(root, name))
    except BaseException:  # noqa: BLE001 - report anything, exit non-zero
        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code)


def fork_run(root: Path, spec: dict, name: str, world_size: int = 1) -> list:
    """Start `world_size` ranks (gloo) as forks of this process; returns the processes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ranks = []
    for rank in range(world_size):
        env = (
            {}
            if world_size == 1
            else {
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(world_size),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
        )
        process = multiprocessing.get_context("fork").Process(
            target=_rank_main, args=(root, spec, name, env)
        )
        process.start()
        ranks.append(process)
    return ranks


def rank0_log(root: Path, name: str) -> str:
    return (root / name / "rank0.log").read_text()


def finish(ranks: list, timeout: float = 120) -> list[int]:
    for process in ranks:
        process.join(timeout)
        assert process.exitcode is not None, "a rank hung"
    return [process.exitcode for process in ranks]


def cli_args(root: Path, spec: dict, name: str) -> list[str]:
    """scripts/finetune.py's command line for run `name` (rules/finetune.smk's interface)."""
    state, out = paths(root, name)[3:]
    return [
        "--spec", json.dumps(spec), "--device", "cpu",
        "--train", str(root / "train.csv"), "--val", str(root / "val.csv"),
        "--pretrained", str(root / "pretrained.pth"), "--state-dir", state, "--out-dir", out,
    ]  # fmt: skip


# torchrun as the rules start it (rules/common.smk `launcher`): scripts/torchrun.py
TORCHRUN = [sys.executable, str(ROOT / "scripts/torchrun.py"), "--standalone"]


def torchrun(root: Path, spec: dict, name: str, threads: int = 1) -> subprocess.Popen:
    """The CLI through torchrun with 2 gloo processes (threads 4: a loader worker each)."""
    launch = [*TORCHRUN, "--nproc-per-node=2"]
    return subprocess.Popen(
        [
            *launch,
            str(ROOT / "scripts/finetune.py"),
            *cli_args(root, spec, name),
            f"--threads={threads}",
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a stage's command line to its end (4 minutes at most), its output captured."""
    return subprocess.run(
        command, env=env or ENV, capture_output=True, text=True, timeout=240, check=False
    )


def step_lines(state_dir: Path) -> int:
    log_path = state_dir / "train_log.jsonl"
    return log_path.read_text().count('"type": "step"') if log_path.exists() else 0


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts its workers in sessions of their own)."""
    pids, index = [pid], 0
    while index < len(pids):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pids[index]}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        index += 1
    return pids


def wait_for_step(root: Path, name: str, after_steps: int) -> None:
    """Until `after_steps` step lines are logged, and at least one by this run."""
    deadline = time.monotonic() + 120
    target = max(after_steps, step_lines(root / name / "state") + 1)
    while step_lines(root / name / "state") < target:
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.01)


def signal_at_step(root: Path, name: str, pids: list[int], after_steps: int, sig: int) -> None:
    """Once `after_steps` step lines are logged, and at least one by this run, send `sig`
    (SIGKILL: to every process of the run at once, data workers included, like a lost node)."""
    wait_for_step(root, name, after_steps)
    targets = [p for pid in pids for p in process_tree(pid)] if sig == signal.SIGKILL else pids
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def alive(pids, wait: float = 0.0) -> list[int]:
    """The pids of `pids` still running (zombies count as gone) after up to `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        running = []
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                running.append(pid)
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.1)


def outcome(out_dir: Path):
    """Final weights and every logged number that must not depend on interruptions."""
    final = torch.load(out_dir / "final.pt", map_location="cpu", weights_only=True)
    lines = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    keys = ("type", "epoch", "step", "loss", "lr", "val_loss", "val_top1", "val_top5", "val_videos")
    return final, [{k: line[k] for k in keys if k in line} for line in lines]


def assert_same_run(reference, other):
    (ref_final, ref_log), (final, log_lines) = reference, other
    assert final.keys() == ref_final.keys()
    assert ref_final["model"].keys() == final["model"].keys()
    for key, value in ref_final["model"].items():
        assert torch.equal(value, final["model"][key]), key
    assert log_lines == ref_log  # same steps, losses, lrs, val metrics, nothing duplicated


@pytest.fixture(scope="module")
def reference(tiny):
    """An uninterrupted one-process run."""
    root, spec = tiny
    assert finish(fork_run(root, spec, "ref")) == [0], rank0_log(root, "ref")[-5000:]
    return outcome(root / "ref/out")


def test_uninterrupted_run_outputs_log_and_schedule(tiny, reference):
    root, spec = tiny
    final, lines = reference
    steps = [line for line in lines if line["type"] == "step"]
    assert [line["step"] for line in steps] == list(range(1, STEPS + 1))
    assert steps[0]["lr"] == 0.0 and steps[3]["lr"] == pytest.approx(
        1e-3 * 4 / 256
    )  # warmup 0 -> lr
    epochs = [line for line in lines if line["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1] and all(
        e["val_videos"] == VAL_VIDEOS for e in epochs
    )
    assert (
        final["epoch"] == 1 and final["arch"] == TINY_ARCH and final["num_classes"] == NUM_CLASSES
    )
    assert "cannot decode" in rank0_log(root, "ref")  # the broken video was met and replaced
    assert sorted(p.name for p in (root / "ref/out").iterdir()) == [
        "final.pt",
        "spec.json",
        "train_log.jsonl",
    ]
    resolved = json.loads((root / "ref/out/spec.json").read_text())
    assert resolved["plan"]["accumulation"] == 2 and resolved["plan"]["steps_per_epoch"] == 4
    assert resolved["spec"] == spec
    assert (root / "ref/state/last.pt").exists() and (root / "ref/state/prev.pt").exists()
    assert any((root / "ref/state/tensorboard").iterdir())
    # a finished run started again resumes from its last state and writes the same outputs
    assert finish(fork_run(root, spec, "ref")) == [0]
    assert "RESUMED at epoch 1, step 4 of 4 (global step 8), validation pending" in rank0_log(
        root, "ref"
    )
    assert_same_run(reference, outcome(root / "ref/out"))


def test_validation_metrics_are_the_final_weights_logits_scored_again(tiny, reference):
    """The last epoch's logged val_top1 / val_top5 / val_loss, recomputed in the test from the
    final weights' logits on that epoch's validation clips (one view per video, its temporal
    window drawn for the epoch) with the reference Top-k (tests/reference.py) and a float64
    cross entropy: 10 classes, so Top-5 is not 100% by construction, and the run's Top-1 and
    Top-5 differ (a Top-1 counted from top-5 hits would show)."""
    from reference import top_k_hits

    from k400ft.models import build_model
    from k400ft.video import TrainDataset

    root, spec = tiny
    final, lines = reference
    last = [line for line in lines if line["type"] == "epoch"][-1]
    model = build_model(spec["arch"], NUM_CLASSES)
    model.load_state_dict(final["model"])
    model.eval()
    clips = TrainDataset(root / "val.csv", spec["data"], "validation", seed=spec["recipe"]["seed"])
    clips.set_epoch(last["epoch"])
    logits, labels = [], []
    with torch.no_grad():
        for index in range(len(clips)):
            clip, label, _ = clips[index]
            logits.append(model(clip).double().numpy()[0])
            labels.append(int(label[0]))
    logits, labels = np.stack(logits), np.array(labels)
    assert sorted(labels.tolist()) == list(range(NUM_CLASSES))
    top1 = 100 * top_k_hits(logits, labels, 1).mean()
    top5 = 100 * top_k_hits(logits, labels, 5).mean()
    shifted = logits - logits.max(axis=1, keepdims=True)
    nll = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels]
    assert (last["val_top1"], last["val_top5"]) == pytest.approx((top1, top5))
    assert last["val_loss"] == pytest.approx(nll.mean(), rel=1e-5)
    assert last["val_videos"] == len(labels) == VAL_VIDEOS
    assert top1 < top5 < 100  # the run tells them apart


def test_sigkill_sigterm_sigusr1_and_ctrl_c_at_random_steps_then_resume_is_bit_identical(
    tiny, reference
):
    """SIGKILL twice, SIGTERM and SIGUSR1 (SLURM's signals: save at the next step boundary,
    exit 75), a Ctrl-C (SIGINT to the trainer and its loader worker, as a terminal sends it to
    the foreground group: exit 130, the state of the last step boundary kept), each at a
    random step; then the run resumes and finishes bit-identical to the uninterrupted one."""
    root, spec = tiny
    # 8 steps, 4 per epoch; each stop at least one step after the last, the last by step 6 (a
    # signal landing in the last step finishes)
    points = sorted(random.Random(0).sample(range(1, STEPS - 1), 5))
    stops = zip(points, (signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1,
                         signal.SIGINT), strict=True)  # fmt: skip
    for after, sig in stops:
        ranks = fork_run(root, spec, "kill")
        if sig == signal.SIGINT:  # Ctrl-C: the whole foreground process group
            wait_for_step(root, "kill", after)
            for pid in process_tree(ranks[0].pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        else:
            signal_at_step(root, "kill", [r.pid for r in ranks], after, sig)
        expected = {signal.SIGKILL: -signal.SIGKILL, signal.SIGINT: ft.EXIT_INTERRUPTED}
        assert finish(ranks) == [expected.get(sig, ft.EXIT_REQUEUE)], rank0_log(root, "kill")
        assert not (root / "kill/out").exists()
    log_text = rank0_log(root, "kill")
    for name in ("SIGTERM", "SIGUSR1"):
        assert f"stopped by signal {name}; state saved" in log_text
        assert "RESUMED at epoch" in log_text.split(f"stopped by signal {name}")[1]  # its save
    assert log_text.count("rank 0 of 1: exitcode: 75 (stopped by a signal, state saved") == 2
    interrupted = log_text.split("interrupted (SIGINT)")
    assert len(interrupted) == 2 and "Traceback" not in interrupted[1].split("RESUMED")[0]
    assert "rank 0 of 1: exitcode: 130 (interrupted)" in interrupted[1]
    assert finish(fork_run(root, spec, "kill")) == [0]
    log_text = rank0_log(root, "kill")
    assert "(signal: epoch" in log_text
    assert "RESUMED at epoch" in log_text.split("interrupted (SIGINT)")[1]
    assert not list((root / "kill/state").glob(".*.tmp"))  # a save cut by SIGKILL leaves no litter
    assert_same_run(reference, outcome(root / "kill/out"))


@pytest.fixture(scope="module")
def ddp_reference(tiny):
    """An uninterrupted run of two gloo processes."""
    root, spec = tiny
    assert finish(fork_run(root, spec, "ddp_ref", world_size=2)) == [0, 0], rank0_log(
        root, "ddp_ref"
    )[-5000:]
    return outcome(root / "ddp_ref/out")


def test_two_processes_killed_then_resumed_through_torchrun_is_bit_identical(tiny, ddp_reference):
    """SIGTERM to torchrun (SLURM's before the time limit): torchrun exits 1 (a traceback of
    its SignalException) and reports no trainer's code, so each trainer logs its own
    `exitcode: 75` after saving; then a SIGKILL of both ranks, then the resume through
    torchrun."""
    root, spec = tiny
    reference = ddp_reference
    run = torchrun(root, spec, "ddp")
    signal_at_step(root, "ddp", [run.pid], 1, signal.SIGTERM)  # to torchrun alone
    _, stderr = run.communicate(timeout=240)
    assert run.returncode == 1, stderr[-5000:]  # torchrun's own: its SignalException
    for rank in (0, 1):
        assert f"rank {rank} of 2: exitcode: 75 (stopped by a signal, state saved" in stderr, (
            stderr[-5000:]
        )
    state = root / "ddp/state"
    assert stderr.strip().splitlines()[-1] == (  # the launcher's summary ends the job's log
        "torchrun: stopped by SIGTERM; finetune.py rank 0 of 2 (from trainer.log): exit code "
        f"75 (stopped by a signal, state saved: run again to resume); state dir {state} "
        f"(every attempt's log: {state / 'trainer.log'})"
    )
    trainer_log = (root / "ddp/state/trainer.log").read_text()
    assert "stopped by signal SIGTERM" in trainer_log and "rank 1 of 2" not in trainer_log
    assert trainer_log.rstrip().endswith(
        "rank 0 of 2: exitcode: 75 (stopped by a signal, state saved: run again to resume)"
    )
    ranks = fork_run(root, spec, "ddp", world_size=2)
    signal_at_step(
        root,
        "ddp",
        [r.pid for r in ranks],
        random.Random(1).randrange(1, STEPS - 1),
        signal.SIGKILL,
    )
    assert finish(ranks) == [-signal.SIGKILL] * 2
    run = torchrun(root, spec, "ddp")  # the CLI, 2 gloo processes, resuming the 2-rank state
    _, stderr = run.communicate(timeout=240)
    assert run.returncode == 0, stderr[-5000:]
    assert "RESUMED at epoch" in stderr
    assert "rank 0 of 2: exitcode: 0 (done)" in stderr
    assert "rank 1 of 2: exitcode: 0 (done)" in stderr
    assert_same_run(reference, outcome(root / "ddp/out"))
    resolved = json.loads((root / "ddp/out/spec.json").read_text())
    assert resolved["plan"]["world_size"] == 2 and resolved["plan"]["accumulation"] == 1


def test_a_state_of_another_spec_is_set_aside_not_resumed(tiny, reference):
    root, spec = tiny
    shutil.copytree(root / "ref/state", root / "stale/state")
    changed = json.loads(json.dumps(spec))
    changed["finetune"]["base_lr"] = 2e-3
    changed["recipe"]["epochs"] = 1
    assert finish(fork_run(root, changed, "stale")) == [0]
    log_text = rank0_log(root, "stale")
    assert "was written for another spec or other inputs" in log_text and "RESUMED" not in log_text
    assert len(list((root / "stale/state").glob("*.pt.stale-*"))) == 2


def test_a_failed_job_log_ends_with_one_line_naming_the_exit_code_and_state_dir(tiny):
    """After the trainer's `exitcode:` line torchrun printed some 30 lines (a ChildFailedError
    traceback and table); the launcher the rules use ends the log with one summary line."""
    root, spec = tiny
    bad = dict(spec, finetune={"global_batch": 6, "batch_per_gpu": 4, "base_lr": 1e-3})
    proc = run_cli(
        [*TORCHRUN, "--nproc-per-node=1", str(ROOT / "scripts/finetune.py")]
        + cli_args(root, bad, "launched")
    )
    state = root / "launched/state"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    trainer_exit, summary = proc.stderr.strip().splitlines()[-3::2]
    assert trainer_exit.endswith("rank 0 of 1: exitcode: 2 (a refused spec or split CSV)")
    assert summary == (
        "torchrun: finetune.py failed: rank 0: exit code 2 (a refused spec or split CSV); "
        f"state dir {state} (every attempt's log: {state / 'trainer.log'})"
    )


def test_cli_refuses_a_global_batch_that_does_not_split(tiny, monkeypatch, capsys):
    root, spec = tiny
    bad = dict(spec, finetune={"global_batch": 6, "batch_per_gpu": 4, "base_lr": 1e-3})
    monkeypatch.setattr(sys, "argv", ["finetune.py", *cli_args(root, bad, "bad")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts/finetune.py"), run_name="__main__")
    assert exit_info.value.code == 2
    assert (
        "finetune.global_batch 6 is not a multiple of finetune.batch_per_gpu 4"
        in capsys.readouterr().err
    )
    assert not (root / "bad/out").exists()


def refused_in_one_line(monkeypatch, capsys, args: list[str]) -> str:
    """Run scripts/finetune.py with `args`: exit 2, one error line and then the exit line, no
    traceback; returns the error line's message."""
    monkeypatch.setattr(sys, "argv", ["finetune.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts/finetune.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err[-3000:]
    error, last = err.strip().splitlines()[-2:]
    assert last.endswith("rank 0 of 1: exitcode: 2 (a refused spec or split CSV)")
    return error.split("ERROR k400ft.finetune: ", 1)[1]


def test_cli_refuses_an_unknown_decoder_in_one_line(tiny, monkeypatch, capsys):
    """data.decoder: ffmpeg was a ValueError traceback and exit 1; the README promises 2."""
    root, spec = tiny
    bad = json.loads(json.dumps(spec))
    bad["data"]["decoder"] = "ffmpeg"
    error = refused_in_one_line(monkeypatch, capsys, cli_args(root, bad, "ffmpeg"))
    assert error == "data.decoder: 'ffmpeg' is not one of decord, pyav"
    assert not (root / "ffmpeg").exists()


def test_cli_refuses_a_train_split_smaller_than_a_global_batch_naming_the_file(
    tiny, monkeypatch, capsys
):
    """As the plan does: the user's file, its count and what needs more ("the train split has
    3 videos" named no file)."""
    root, spec = tiny
    small = root / "small" / "train.csv"
    small.parent.mkdir(exist_ok=True)
    small.write_text("".join((root / "train.csv").read_text().splitlines(True)[:3]))
    args = cli_args(root, spec, "small")
    args[args.index("--train") + 1] = str(small)
    error = refused_in_one_line(monkeypatch, capsys, args)
    assert error == (
        f"{small}: 3 video(s); a fine-tune step takes one global batch of 4 (finetune.global_batch)"
    )
    assert sorted(p.name for p in small.parent.iterdir()) == ["train.csv"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_cli_refuses_a_split_csv_without_videos_in_one_line(tiny, monkeypatch, capsys, split):
    """Exit 2 (a refused split CSV), one error line naming the user's file, then the exit line;
    no traceback, nothing written."""
    root, spec = tiny
    empty = root / f"empty_{split}" / f"{split}.csv"
    empty.parent.mkdir(exist_ok=True)
    empty.write_text("\n")  # a blank line only: no videos
    args = cli_args(root, spec, f"empty_{split}")
    args[args.index(f"--{split}") + 1] = str(empty)
    monkeypatch.setattr(sys, "argv", ["finetune.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts/finetune.py"), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error, last = err.strip().splitlines()[-2:]
    assert error.endswith(
        f"ERROR k400ft.finetune: {empty}: no videos (not one '<video path> <label>' line)"
    )
    assert last.endswith("rank 0 of 1: exitcode: 2 (a refused spec or split CSV)")
    assert sorted(p.name for p in empty.parent.iterdir()) == [empty.name]  # no state, no out


def test_the_cpu_thread_count_is_the_specs_whatever_the_jobs_cpus(tiny):
    """Snakemake sets OMP_NUM_THREADS to a job's threads (`--cores 1`, another SLURM CPU
    count): the same spec gave another val_loss from epoch 0 and another final.pt, and nothing
    reran. On CPU the intra-op thread count is the spec's `cpu_threads` (config
    launch.finetune.cpu_threads, a param of the rule), recorded in spec.json. As Snakemake's
    `--cores 1` and `--cores 2` start it: 1 CPU (no loader worker, the clips made in the
    trainer) and 2 CPUs (one worker)."""
    root, spec = tiny
    spec = {**spec, "cpu_threads": 2}
    runs = []
    for threads in ("1", "2"):
        name = f"omp_{threads}"
        command = [sys.executable, str(ROOT / "scripts/finetune.py"), *cli_args(root, spec, name)]
        proc = run_cli([*command, "--threads", threads], {**ENV, "OMP_NUM_THREADS": threads})
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(outcome(root / name / "out"))
        resolved = json.loads((root / name / "out/spec.json").read_text())
        assert resolved["spec"]["cpu_threads"] == resolved["plan"]["cpu_threads"] == 2
    assert_same_run(*runs)
    # final.pt records the spec less the loader workers (0 and 1 here): the same bytes
    assert (root / "omp_1/out/final.pt").read_bytes() == (root / "omp_2/out/final.pt").read_bytes()


def test_a_validation_video_that_fails_is_excluded_not_replaced(tiny):
    """val_videos counts the videos that decode: a broken one was replaced by the next video
    (VAL_VIDEOS + 1 validated where VAL_VIDEOS decode)."""
    root, spec = tiny
    broken = root / "broken_val"
    broken.mkdir(exist_ok=True)
    (broken / "val.csv").write_text((root / "val.csv").read_text() + f"{root}/videos/v03.mp4 1\n")
    one_epoch = {**spec, "recipe": {**spec["recipe"], "epochs": 1}}
    args = cli_args(root, one_epoch, "broken_val")
    args[args.index("--val") + 1] = str(broken / "val.csv")
    proc = run_cli([sys.executable, str(ROOT / "scripts/finetune.py"), *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"validation: cannot decode {root}/videos/v03.mp4 (" in proc.stderr
    (epoch,) = [line for line in outcome(broken / "out")[1] if line["type"] == "epoch"]
    assert epoch["val_videos"] == VAL_VIDEOS


def test_kill_9_of_torchrun_takes_its_trainers_and_workers_with_it(tiny, ddp_reference):
    """torchrun starts each trainer in a session of its own: without the parent-death signal a
    kill -9 of torchrun left them training, and the re-run trained beside them."""
    root, spec = tiny
    run = torchrun(root, spec, "orphans", threads=4)
    deadline = time.monotonic() + 120
    while step_lines(root / "orphans/state") < 1:
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-3000:]
        time.sleep(0.01)
    tree = process_tree(run.pid)
    assert len(tree) >= 5  # torchrun, 2 trainers, and a loader worker each
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    # at once (1 s: the tiny run's remaining steps take longer, so orphans would still be here)
    assert alive(set(tree) - {run.pid}, wait=1) == []
    rerun = torchrun(root, spec, "orphans")  # resumes alone: no step twice in the log
    _, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, stderr[-5000:]
    assert_same_run(ddp_reference, outcome(root / "orphans/out"))


def test_a_second_trainer_on_a_state_dir_in_use_refuses_and_the_first_is_unharmed(
    tiny, reference, monkeypatch
):
    """Two checkouts on one `results:` folder: Snakemake deletes the job's log before it starts
    the second job, so the first trainer's job log is gone; what it did is in
    `<state-dir>/trainer.log`, and the refused second trainer wrote nothing there."""
    root, spec = tiny
    go = root / "second_done"
    check_stop = ft.Finetune.check_stop

    def paused(self):  # the first trainer waits at its first step boundary for the second
        deadline = time.monotonic() + 120
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        check_stop(self)

    monkeypatch.setattr(ft.Finetune, "check_stop", paused)  # in the fork only
    first = fork_run(root, spec, "shared")
    monkeypatch.undo()
    deadline = time.monotonic() + 120
    while step_lines(root / "shared/state") < 1:
        assert time.monotonic() < deadline and first[0].is_alive()
        time.sleep(0.01)
    job_log = root / "shared/rank0.log"  # the first trainer's stderr: its job log
    job_log.unlink()  # as Snakemake does before it starts the second job
    with open(job_log, "w") as second_log:
        second = subprocess.run(
            [sys.executable, str(ROOT / "scripts/finetune.py"), *cli_args(root, spec, "shared")],
            env=ENV,
            stderr=second_log,
            timeout=120,
            check=False,
        )
    go.touch()
    refusal = job_log.read_text()
    assert second.returncode == ft.EXIT_LOCKED, refusal[-3000:]
    assert f"in use by another trainer (host {socket.gethostname()} pid {first[0].pid}" in refusal
    assert refusal.rstrip().endswith(
        "rank 0 of 1: exitcode: 73 (the state dir is in use by another trainer)"
    )
    trainer_log = root / "shared/state/trainer.log"
    assert finish(first) == [0], trainer_log.read_text()[-3000:]
    assert_same_run(reference, outcome(root / "shared/out"))
    assert (root / "shared/state/trainer.lock").read_text() == ""  # released at the end
    assert "done:" not in job_log.read_text()  # the job log holds only the refusal ...
    kept = trainer_log.read_text()  # ... the state dir's log, the first trainer's whole run
    assert kept.startswith(f"======== trainer host {socket.gethostname()} pid {first[0].pid}, ")
    assert kept.count("======== trainer") == 1 and "in use by another trainer" not in kept
    for line in ("epoch 1/2: train loss", "epoch 2/2: train loss", "done: "):
        assert line in kept, kept[-3000:]
    assert kept.rstrip().endswith("rank 0 of 1: exitcode: 0 (done)")


def test_a_kill_inside_finish_leaves_no_declared_output_and_the_rerun_completes(
    tiny, reference, monkeypatch
):
    root, spec = tiny
    save = torch.save

    def killed_while_writing_final(obj, target, *args, **kwargs):
        if not isinstance(target, io.BytesIO):  # final.pt (state files are packed in memory)
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_while_writing_final)  # in the fork only
    ranks = fork_run(root, spec, "finish_kill")
    monkeypatch.undo()
    assert finish(ranks) == [-signal.SIGKILL]
    left = [p.name for p in (root / "finish_kill/out").iterdir() if not p.name.startswith(".")]
    assert left == []  # temp files only: no final.pt, and no spec.json or log beside nothing
    assert finish(fork_run(root, spec, "finish_kill")) == [0]
    assert sorted(p.name for p in (root / "finish_kill/out").iterdir()) == sorted(lifecycle.OUTPUTS)
    assert_same_run(reference, outcome(root / "finish_kill/out"))


def test_augmentation_on_the_device_resumes_bit_identical_too(tiny):
    """data.augment_on device: workers decode and draw, the training process makes the clips
    (here on the CPU); a SIGKILL and a SIGTERM, then resume, still give the uninterrupted run,
    which made its clips with the compiled kernels (data.augment_compile on): the same bits."""
    root, spec = tiny
    on_device = json.loads(json.dumps(spec))
    on_device["data"]["augment_on"] = "device"
    compiled = json.loads(json.dumps(on_device))
    compiled["data"]["augment_compile"] = "on"
    assert finish(fork_run(root, compiled, "dev_ref")) == [0], rank0_log(root, "dev_ref")[-3000:]
    reference = outcome(root / "dev_ref/out")
    resolved = json.loads((root / "dev_ref/out/spec.json").read_text())
    assert resolved["plan"]["augment_on"] == "device" and resolved["plan"]["augment_compile"]
    for after, sig in ((2, signal.SIGKILL), (5, signal.SIGTERM)):
        ranks = fork_run(root, on_device, "dev")
        signal_at_step(root, "dev", [r.pid for r in ranks], after, sig)
        assert finish(ranks) == [-signal.SIGKILL if sig == signal.SIGKILL else ft.EXIT_REQUEUE]
    assert finish(fork_run(root, on_device, "dev")) == [0]
    assert_same_run(reference, outcome(root / "dev/out"))
