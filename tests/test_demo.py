"""The demo's synthetic Kinetics-400 tree and tiny checkpoints (scripts/k400ft/demo.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import runpy
import subprocess
import sys
import tarfile
from pathlib import Path
from unittest.mock import patch

import decord
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import MINI_DEMO, MINI_KINETICS

from k400ft import demo, layouts, models

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)

DEMO = {**MINI_DEMO, "train_per_class": 3, "val_per_class": 2, "frames": [24, 32], "seed": 3}
KINETICS = {k: v for k, v in MINI_KINETICS.items() if k != "archive"}  # root: set per tree
NAME = re.compile(r"^[A-Za-z0-9_-]{11}_\d{6}_\d{6}\.mp4$")


def make_tree(root: Path, **changes) -> dict:
    return demo.write_videos({**DEMO, **changes}, {**KINETICS, "root": str(root)})


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("k400")
    make_tree(root)
    return root


def read_csvs(root: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_csv(root / KINETICS["annotations"][s]) for s in ("train", "val")}


def planned() -> dict[str, demo.Clip]:
    return {c.youtube_id: c for c in demo.plan_clips(DEMO)}


def decode(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_class_names_are_sorted_kinetics_style_labels():
    names = demo.class_names()
    assert len(names) == 8 == len(set(names))
    assert names == sorted(names)
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)+", n) for n in names)
    assert names[0] == "blue squares blinking" and names[-1] == "red squares standing still"


def test_tree_has_the_official_annotation_layout(tree):
    csvs = read_csvs(tree)
    for split, df in csvs.items():
        text = (tree / KINETICS["annotations"][split]).read_text()
        assert text.splitlines()[0] == "label,youtube_id,time_start,time_end,split,is_cc"
        assert text.splitlines()[1].startswith(
            '"blue squares blinking",'
        )  # labels with spaces quoted
        assert list(df.columns) == list(demo.CSV_COLUMNS)
        assert set(df["split"]) == {split}  # the official lists say 'train' / 'val'
        assert sorted(set(df["label"])) == demo.class_names()
        assert (df.groupby("label").size() == DEMO[f"{split}_per_class"]).all()
        assert list(df["label"]) == sorted(df["label"])
        assert (df["time_end"] - df["time_start"] == 10).all()
        assert (df["is_cc"] == 0).all()
        for row in df.itertuples():
            name = f"{row.youtube_id}_{row.time_start:06d}_{row.time_end:06d}.mp4"
            assert NAME.match(name), name
    ids = pd.concat(csvs.values())["youtube_id"]
    assert ids.is_unique and (ids.str.len() == 11).all()
    listed = {
        f"{r.youtube_id}_{r.time_start:06d}_{r.time_end:06d}.mp4"
        for df in csvs.values()
        for r in df.itertuples()
    }
    on_disk = {p.name for d in KINETICS["video_dirs"].values() for p in (tree / d).iterdir()}
    assert (
        on_disk <= listed and len(listed - on_disk) == 1
    )  # one listed clip is missing; no temp files left


def test_videos_decode_to_the_planned_frames_and_size(tree):
    plan = planned()
    good = [c for c in plan.values() if c.defect is None]
    lo, hi = DEMO["frames"]
    assert len({c.num_frames for c in good}) > 1 and all(lo <= c.num_frames <= hi for c in good)
    for clip in good:
        reader = decord.VideoReader(
            str(tree / KINETICS["video_dirs"][clip.split] / clip.filename), num_threads=1
        )
        assert len(reader) == clip.num_frames
        assert reader.get_avg_fps() == pytest.approx(25.0)
        assert reader[0].shape == (DEMO["height"], DEMO["width"], 3)


def test_broken_entries_are_broken_the_intended_way(tree):
    plan = planned()
    broken = [c for c in plan.values() if c.defect]
    assert sorted(c.defect for c in broken) == ["missing", "not_video", "truncated", "zero_byte"]
    assert {c.split for c in broken} == {"train", "val"}
    assert len({c.label for c in broken}) == len(broken)  # spread over classes
    for clip in broken:
        path = tree / KINETICS["video_dirs"][clip.split] / clip.filename
        if clip.defect == "missing":
            assert not path.exists()
            continue
        data = path.read_bytes()
        if clip.defect == "zero_byte":
            assert data == b""
        elif clip.defect == "not_video":
            assert data.startswith(b"<!DOCTYPE html>")
        else:
            whole = demo.encode_h264(
                demo.render_clip(clip, DEMO["height"], DEMO["width"], DEMO["seed"])
            )
            assert data == whole[: int(len(whole) * demo.TRUNCATE_AT)] and len(data) > 200
        with pytest.raises((RuntimeError, decord.DECORDError)):  # what the data stage must catch
            decord.VideoReader(str(path), num_threads=1)


def test_same_seed_same_tree_other_seed_other_tree(tree, tmp_path):
    make_tree(tmp_path / "again")
    for rel in KINETICS["annotations"].values():
        assert (tmp_path / "again" / rel).read_bytes() == (tree / rel).read_bytes()
    clip = next(c for c in demo.plan_clips(DEMO) if c.defect is None)
    rel = Path(KINETICS["video_dirs"][clip.split]) / clip.filename
    assert (tmp_path / "again" / rel).read_bytes() == (tree / rel).read_bytes()
    other = demo.plan_clips({**DEMO, "seed": 4})
    assert {c.youtube_id for c in other}.isdisjoint(planned())


def motion_colour_features(frames: np.ndarray, lag: int = 4, reach: int = 16) -> np.ndarray:
    """(speed, share of frames without a square, red-minus-blue) of the coloured squares.

    Speed: the shift (within +-reach px) maximising the circular cross-correlation of the
    squares' masks `lag` frames apart, median over the frame pairs that both show squares,
    in px/frame.
    """
    f = frames.astype(np.float32)
    saturated = (f.max(-1) - f.min(-1)) > 60
    shown = saturated.any(axis=(1, 2))
    spectra = np.fft.rfft2(saturated)
    shifts = []
    for t in np.flatnonzero(shown[lag:] & shown[:-lag]):
        corr = np.fft.irfft2(spectra[t + lag] * np.conj(spectra[t]), s=saturated.shape[1:])
        window = np.roll(corr, (reach, reach), axis=(0, 1))[: 2 * reach + 1, : 2 * reach + 1]
        dy, dx = np.unravel_index(np.argmax(window), window.shape)
        shifts.append(np.hypot(dy - reach, dx - reach))
    speed = np.median(shifts) / lag if shifts else 0.0
    colour = (f[..., 0] - f[..., 2])[saturated].mean() / 255
    return np.array([speed, 1 - shown.mean(), colour])


def test_classes_are_separable_by_motion_and_colour_even_when_flipped(tree):
    """Nearest class centroid of simple features of the decoded train clips classifies the
    decoded val clips, and their horizontal flips (the recipe's hflip), far above chance."""
    plan = [c for c in demo.plan_clips(DEMO) if c.defect is None]
    frames = {c: decode(tree / KINETICS["video_dirs"][c.split] / c.filename) for c in plan}
    train = [c for c in plan if c.split == "train"]
    names = demo.class_names()
    centroids = np.stack(
        [
            np.mean([motion_colour_features(frames[c]) for c in train if c.label == n], 0)
            for n in names
        ]
    )
    val = [c for c in plan if c.split == "val"]
    for flip in (False, True):
        feats = [motion_colour_features(frames[c][:, :, ::-1] if flip else frames[c]) for c in val]
        guess = [names[int(np.argmin(np.linalg.norm(centroids - f, axis=1)))] for f in feats]
        right = sum(g == c.label for g, c in zip(guess, val, strict=True))
        assert right / len(val) >= 0.9, (flip, right, len(val))


def test_single_frames_carry_colour_only():
    """One frame of a still, slow or fast clip is the same kind of picture: two sharp squares,
    nothing blank (the motion classes need time)."""
    for label in demo.class_names():
        clip = demo.Clip(3, label, "", 0, "train", 40)
        frames = demo.render_clip(clip, 72, 96, seed=0)
        coloured = (frames.max(-1).astype(int) - frames.min(-1)) > 60
        shown = coloured.any(axis=(1, 2))
        if "blinking" in label:
            assert 0.3 < shown.mean() < 0.7
        else:
            assert shown.all()
            side = demo.draw_scene(clip, 72, 96, seed=0).side
            assert (coloured.sum(axis=(1, 2)) == 2 * side * side).mean() > 0.5


def test_pretext_targets_follow_each_clip_scene():
    arch = DEMO_CONFIG["models"]["videomae_vits16"]["arch"]
    pretrain = {"seed": 0, "sampling_rate": 4, "mean": [0.5] * 3, "std": [0.25] * 3}
    clips, targets = demo.pretext_batch(np.random.default_rng(1), 64, arch, pretrain)
    assert clips.shape == (64, 3, arch["num_frames"], arch["img_size"], arch["img_size"])
    assert clips.dtype == np.float32 and -2.1 < clips.min() and clips.max() < 2.1
    red, blinks, speed = targets.T
    assert set(red) == {0.0, 1.0} and set(blinks) == {0.0, 1.0}
    assert (speed[blinks == 1] == 0).all()
    fast = speed > demo.MOTIONS["moving fast"][0][0] / demo.MOTIONS["moving fast"][0][1] - 1e-6
    slow = (speed > 0) & ~fast
    assert fast.any() and slow.any() and (speed <= 1 + 1e-6).all()
    # the red channel of red clips' squares is high: red targets match the pixels
    r_minus_b = clips[:, 0] - clips[:, 2]
    assert (r_minus_b.max(axis=(1, 2, 3))[red == 1] > 1).all()
    assert (r_minus_b.min(axis=(1, 2, 3))[red == 0] < -1).all()


@pytest.mark.parametrize(
    ("demo_changes", "kinetics_changes", "key"),
    [
        ({}, {"layout": "class_folders"}, "kinetics.layout"),
        ({}, {"num_classes": 400}, "kinetics.num_classes"),
        ({"height": 47}, {}, "demo.height"),
        ({"frames": [30, 20]}, {}, "demo.frames"),
        ({"broken": 99}, {}, "demo.broken"),
    ],
)
def test_bad_config_names_the_key_and_writes_nothing(tmp_path, demo_changes, kinetics_changes, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        demo.write_videos(
            {**DEMO, **demo_changes}, {**KINETICS, "root": str(tmp_path / "t"), **kinetics_changes}
        )
    assert not (tmp_path / "t" / "annotations").exists()


def run_cli(*args: str) -> None:
    """scripts/make_demo.py in this process (argparse and all), as the rule calls it."""
    with patch.object(sys, "argv", ["make_demo.py", *args]):
        runpy.run_path(str(ROOT / "scripts/make_demo.py"), run_name="__main__")


def test_cli_videos_writes_a_clean_tree_when_broken_is_zero(tmp_path):
    small = {"train_per_class": 1, "val_per_class": 1, "frames": [8, 10], "height": 32, "width": 32}
    small |= {"broken": 0, "seed": 0}
    kinetics = {**KINETICS, "root": str(tmp_path / "k")}
    run_cli("videos", "--demo", json.dumps(small), "--kinetics", json.dumps(kinetics))
    df = read_csvs(tmp_path / "k")
    assert [len(d) for d in df.values()] == [8, 8]
    for split, d in df.items():
        for r in d.itertuples():
            path = (
                tmp_path / "k" / split / f"{r.youtube_id}_{r.time_start:06d}_{r.time_end:06d}.mp4"
            )
            assert 8 <= len(decord.VideoReader(str(path), num_threads=1)) <= 10


DEMO_CONFIG = yaml.safe_load((ROOT / "demo/config.yaml").read_text())


# Prints the sha256 of encode_h264 for the clips of config (argv 2) at the indices (argv 3).
ENCODE_CLIPS = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from k400ft import demo
config, indices = json.loads(sys.argv[2]), json.loads(sys.argv[3])
plan = demo.plan_clips(config)
for i in indices:
    frames = demo.render_clip(plan[i], config["height"], config["width"], config["seed"])
    print(hashlib.sha256(demo.encode_h264(frames)).hexdigest())
"""


def test_the_same_frames_encode_to_the_same_bytes_every_time():
    """The demo's files feed every fine-tune, so they must be a function of the config. With
    x264's mbtree on, encode_h264 read heap memory it had not written: the same frames gave
    other bytes when encoded again in one process, in a process whose fresh heap memory is
    filled with other bytes (glibc's MALLOC_PERTURB_; other C libraries ignore it), and, for a
    third of the clips, in two clean runs of the demo."""
    config = DEMO_CONFIG["demo"]
    plan = demo.plan_clips(config)
    clips = [c for c in plan if c.defect is None and c.label.endswith("moving fast")][:4]
    videos = [demo.render_clip(c, config["height"], config["width"], config["seed"]) for c in clips]
    encodings: list[set[str]] = [set() for _ in clips]
    for order in (range(len(clips)), reversed(range(len(clips))), range(len(clips))):
        for k in order:
            encodings[k].add(hashlib.sha256(demo.encode_h264(videos[k])).hexdigest())
    args = [str(ROOT / "scripts"), json.dumps(config), json.dumps([c.index for c in clips])]
    elsewhere = subprocess.run(
        [sys.executable, "-c", ENCODE_CLIPS, *args],
        env={**os.environ, "MALLOC_PERTURB_": "85"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for found, digest in zip(encodings, elsewhere, strict=True):
        found.add(digest)
    differ = [c.filename for c, found in zip(clips, encodings, strict=True) if len(found) > 1]
    assert not differ, f"{len(differ)} of {len(clips)} clips gave other bytes: {differ}"


@pytest.mark.parametrize("model", DEMO_CONFIG["models"].values(), ids=DEMO_CONFIG["models"])
def test_cli_checkpoint_of_each_demo_model_has_the_upstream_layout_and_loads(tmp_path, model):
    """The spec rules/demo.smk passes for each demo model: its checkpoint's format and arch."""
    fmt = DEMO_CONFIG["checkpoints"][model["pretrained"]]["format"]
    path = tmp_path / "pretrained" / f"{model['pretrained']}.pth"
    spec = {"format": fmt, "arch": model["arch"], "pretrain": TINY_PRETRAIN}
    run_cli("checkpoint", "--spec", json.dumps(spec), "--output", str(path))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    state_dict = layouts.read_state_dict(path)
    layouts.check_layout(state_dict, fmt)
    assert "mask_token" in state_dict and any("decoder" in k for k in state_dict)
    loaded = models.build_model(model["arch"], num_classes=8)
    report = models.load_pretrained(loaded, path, fmt)
    assert {k.split(".")[0] for k in report.missing} == {"fc_norm", "head"}
    # the loaded encoder is the pretrained one (for CatMAE: saved as the 2D kernel, inflated back)
    pretrained = demo.pretrain_encoder(spec).state_dict()
    for key, value in loaded.state_dict().items():
        if not key.startswith(("fc_norm.", "head.")):
            torch.testing.assert_close(value, pretrained[key], msg=key)


TINY_PRETRAIN = {"steps": 3, "batch": 4, "clips": 8, "lr": 1e-3, "seed": 0, "sampling_rate": 4}
TINY_PRETRAIN |= {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize(
    ("change", "key"), [({"steps": None}, "spec.pretrain.steps"), ({"batch": 9}, "pretrain.batch")]
)
def test_cli_checkpoint_bad_pretrain_names_the_key_and_writes_nothing(tmp_path, change, key):
    pretrain = {k: v for k, v in {**TINY_PRETRAIN, **change}.items() if v is not None}
    arch = DEMO_CONFIG["models"]["catmae_vits16"]["arch"]
    spec = {"format": "catmae_pretrain", "arch": arch, "pretrain": pretrain}
    with pytest.raises(SystemExit, match=re.escape(key)):
        run_cli("checkpoint", "--spec", json.dumps(spec), "--output", str(tmp_path / "c.pth"))
    assert not list(tmp_path.iterdir())


def test_cli_checkpoint_rejects_a_non_pretraining_format(tmp_path):
    spec = {
        "format": "videomae_finetuned",
        "arch": DEMO_CONFIG["models"]["videomae_vits16"]["arch"],
    }
    with pytest.raises(SystemExit, match="spec.format"):
        run_cli("checkpoint", "--spec", json.dumps(spec), "--output", str(tmp_path / "c.pth"))
    assert not list(tmp_path.iterdir())


def test_the_archive_holds_the_tree_in_the_real_layout(tree, tmp_path):
    """make_demo's miniature archive: per split a list file naming part_<i>.tar.gz on the
    original host, the parts beside it holding the tree's files (broken ones included) once
    each, the annotation CSVs, and the replacement archive whose clip is cut short in its
    part; the same bytes every time."""
    archive = {
        "lists": {"train": "train/k400_train_path.txt", "val": "val/k400_val_path.txt"},
        "parts": {"train": 3, "val": 2},
        "annotations": {"train": "annotations/train.csv", "val": "annotations/val.csv"},
        "replacement": "replacement_for_corrupted_k400.tgz",
    }
    kinetics = {**KINETICS, "archive": archive}
    summary = demo.write_archive(DEMO, kinetics, tmp_path / "a")
    for split in ("train", "val"):
        folder = tmp_path / "a" / split
        listing = (folder / Path(archive["lists"][split]).name).read_text().splitlines()
        assert listing == [
            f"https://s3.amazonaws.com/kinetics/400/{split}/part_{n}.tar.gz"
            for n in range(archive["parts"][split])
        ]
        packed = {}
        for n in range(archive["parts"][split]):
            with tarfile.open(folder / f"part_{n}.tar.gz") as tar:
                for member in tar.getmembers():
                    assert member.name not in packed and "/" not in member.name
                    packed[member.name] = tar.extractfile(member).read()
        on_disk = {p.name: p.read_bytes() for p in (tree / split).iterdir()}
        [replaced] = summary["replaced"]
        for name, data in on_disk.items():
            if name == replaced:
                assert packed[name] == data[: int(len(data) * demo.TRUNCATE_AT)]
            else:
                assert packed[name] == data, name
        assert set(packed) == set(on_disk)  # the missing clip is in no part
        assert (tmp_path / "a" / archive["annotations"][split]).read_bytes() == (
            tree / KINETICS["annotations"][split]
        ).read_bytes()
    with tarfile.open(tmp_path / "a" / archive["replacement"]) as tar:
        [member] = tar.getmembers()
        assert member.name == f"replacement_for_corrupted_k400/{replaced}"
        assert tar.extractfile(member).read() == (tree / "train" / replaced).read_bytes()
    demo.write_archive(DEMO, kinetics, tmp_path / "b")
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file():
            assert (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes() == (
                path.read_bytes()
            ), path
    assert not (tmp_path / "a" / ".tree").exists()
