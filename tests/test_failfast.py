"""Fail fast, never hang: an error after the DataLoader workers started ends the stage's process
non-zero within seconds, its workers gone and the error last in the log (tests/faults.py
injects it: the train step, a worker, writing the train log, the evaluation), on one process
and on one rank of two through torchrun. A split CSV label outside the classes, or a split CSV
without videos, is refused naming the file (and line) before any worker starts.

A run is given HANG_LIMIT seconds (generous: a healthy failure takes a few); past it the
whole process tree is killed and the test fails."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_finetune import (
    DATA,
    ENV,
    NUM_CLASSES,
    TINY_ARCH,
    VAL_VIDEOS,
    alive,
    assert_same_run,
    cli_args,
    outcome,
    process_tree,
    tiny,
)

from k400ft import video
from k400ft.models import build_model

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests/faults.py"
HANG_LIMIT = 120
TORCHRUN = [sys.executable, str(ROOT / "scripts/torchrun.py"), "--standalone"]  # the rules

__all__ = ["tiny"]  # the fixture, shared with test_finetune


def run_to_the_end(command: list[str], env: dict | None = None) -> tuple[int, str, float]:
    """Run `command` (its own session); (exit code, stderr, seconds). Fails the test when it is
    still running after HANG_LIMIT s or leaves a process of its tree behind."""
    start = time.monotonic()
    process = subprocess.Popen(
        command,
        env=env or ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: set[int] = set()
    while process.poll() is None and time.monotonic() - start < HANG_LIMIT:
        seen.update(process_tree(process.pid))  # torchrun's trainers and their workers
        time.sleep(0.2)
    if process.poll() is None:
        for pid in process_tree(process.pid):
            os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"still running after {HANG_LIMIT} s (hung):\n{stderr[-3000:]}")
    _, stderr = process.communicate()
    elapsed = time.monotonic() - start
    assert not alive(seen - {process.pid}, wait=10), f"left running: {alive(seen)}"
    return process.returncode, stderr, elapsed


def finetune_command(root: Path, spec: dict, name: str, fault: str, procs: int = 0) -> list[str]:
    script = [str(FAULTS), fault, str(ROOT / "scripts/finetune.py"), *cli_args(root, spec, name)]
    launch = [*TORCHRUN, f"--nproc-per-node={procs}"] if procs else [sys.executable]
    return [*launch, *script, "--threads", "2"]  # 2 CPUs: one loader worker per process


def assert_ends_with(stderr: str, *expected: str) -> None:
    """The error is at the end of the log (the last 40 lines), not buried under later output."""
    tail = "\n".join(stderr.strip().splitlines()[-40:])
    for text in expected:
        assert text in tail, stderr[-4000:]


@pytest.mark.parametrize("fault", ["train_step", "worker", "write_log"])
def test_a_finetune_error_after_the_workers_started_ends_the_process(tiny, fault):
    root, spec = tiny
    code, stderr, _ = run_to_the_end(finetune_command(root, spec, f"fault_{fault}", fault))
    assert code == 1
    expected = "Read-only file system" if fault == "write_log" else "InjectedFault: injected"
    assert_ends_with(stderr, expected)
    assert "Traceback" in stderr
    assert not (root / f"fault_{fault}/out/final.pt").exists()


def test_a_full_disk_at_a_save_says_where_and_how_much_and_the_rerun_resumes(tiny):
    """The second save finds the disk full: one line names the state file, the bytes it
    needed and that the previous state is intact (`OSError: [Errno 28] No space left on
    device` said none of it); a rerun once there is space resumes from that state and ends
    as an uninterrupted run (the harness's control: no fault)."""
    root, spec = tiny
    code, stderr, _ = run_to_the_end(finetune_command(root, spec, "full_control", "none"))
    assert code == 0, stderr[-3000:]
    code, stderr, _ = run_to_the_end(finetune_command(root, spec, "full", "disk_full"))
    assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
    error, exit_line = stderr.strip().splitlines()[-2:]
    assert f"ERROR k400ft.finetune: {root / 'full/state/last.pt'}: no space left" in error
    assert error.endswith("the previous state is intact; free space and rerun to resume")
    assert exit_line.endswith("rank 0 of 1: exitcode: 1 (failed)")
    code, stderr, _ = run_to_the_end(finetune_command(root, spec, "full", "none"))
    assert code == 0, stderr[-3000:]
    assert "using the previous state" in stderr
    assert_same_run(outcome(root / "full_control/out"), outcome(root / "full/out"))


def test_an_error_on_one_rank_of_two_ends_the_whole_job(tiny):
    root, spec = tiny
    env = {**ENV, "FAULT_RANK": "1"}
    code, stderr, elapsed = run_to_the_end(
        finetune_command(root, spec, "fault_rank1", "train_step", procs=2), env
    )
    assert code != 0
    assert "InjectedFault: injected" in stderr
    summary = stderr.strip().splitlines()[-1]  # the launcher's: what each failed rank did
    assert summary.startswith("torchrun: faults.py failed: rank ") and "rank 1: " in summary
    print(f"rank 1 failed; the 2-rank job ended after {elapsed:.1f} s")


@pytest.fixture(scope="module")
def eval_inputs(tiny):
    """A test CSV of the tiny videos and weights in our final.pt layout."""
    root, spec = tiny
    model = build_model(TINY_ARCH, NUM_CLASSES)
    weights = root / "eval_weights.pt"
    torch.save({"model": model.state_dict(), "arch": TINY_ARCH, "epoch": 0}, weights)
    eval_spec = {
        "arch": TINY_ARCH,
        "data": {**DATA, "num_workers": 1},
        "evaluate": {"num_segments": 2, "num_crops": 3, "batch_views": 2},
        "num_classes": NUM_CLASSES,
        "weights_format": "ours",
    }
    return root, eval_spec, weights


def eval_command(root: Path, spec: dict, weights: Path, fault: str, test_csv: Path) -> list:
    return [
        sys.executable, str(FAULTS), fault, str(ROOT / "scripts/evaluate.py"),
        "--spec", json.dumps(spec), "--device", "cpu", "--test", str(test_csv),
        "--weights", str(weights), "--out-dir", str(root / "eval_out"), "--threads", "2",
    ]  # fmt: skip


def test_an_evaluation_error_after_the_workers_started_ends_the_process(eval_inputs):
    root, spec, weights = eval_inputs
    code, stderr, _ = run_to_the_end(
        eval_command(root, spec, weights, "evaluate", root / "train.csv")
    )
    assert code == 1
    assert_ends_with(stderr, "InjectedFault: injected: the evaluation failed")
    assert not (root / "eval_out/metrics.json").exists()


def test_the_fault_harness_runs_a_healthy_evaluation_to_the_end(eval_inputs):
    """Control: the same command without its fault succeeds (the harness is not the failure)."""
    root, spec, weights = eval_inputs
    code, stderr, _ = run_to_the_end(eval_command(root, spec, weights, "none", root / "val.csv"))
    assert code == 0, stderr[-3000:]
    assert json.loads((root / "eval_out/metrics.json").read_text())["videos"] == VAL_VIDEOS


# ---------------------------------------------------------------- split CSV labels


def write_csv(path: Path, labels: list[int], video: str = "/data/v.mp4") -> Path:
    path.write_text("".join(f"{video}{i} {label}\n" for i, label in enumerate(labels)))
    return path


def test_a_label_outside_the_classes_names_the_file_and_line(tmp_path):
    path = write_csv(tmp_path / "train.csv", [0] * 16 + [12])
    with pytest.raises(ValueError) as err:
        video.read_split_csv(path, num_classes=8)
    assert str(err.value) == f"{path}:17: label 12 is outside 0..7 (num_classes 8)"
    assert len(video.read_split_csv(path)) == 17  # without num_classes: format only
    assert len(video.read_split_csv(path, num_classes=13)) == 17


def split_dataset(split: str, path):
    """The dataset a stage opens for `split` (4 classes)."""
    if split == "test":
        return video.TestDataset(path, DATA, 5, 3, num_classes=4)
    return video.TrainDataset(path, DATA, split, num_classes=4)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_every_split_dataset_checks_its_labels_before_any_worker(tmp_path, split):
    path = write_csv(tmp_path / f"{split}.csv", [1, 2, 3, 0, 5])
    expected = rf"{split}.csv:5: label 5 is outside 0..3 \(num_classes 4\)"
    with pytest.raises(ValueError, match=expected):
        split_dataset(split, path)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_every_split_dataset_refuses_a_csv_without_videos(tmp_path, split):
    """A SplitCSVError naming the file (each stage's script exits 2 on it), not a ValueError."""
    path = tmp_path / f"{split}.csv"
    path.write_text("\n\n")
    with pytest.raises(video.SplitCSVError) as err:
        split_dataset(split, path)
    assert str(err.value) == f"{path}: no videos (not one '<video path> <label>' line)"


def test_the_finetune_cli_refuses_a_bad_label_naming_file_and_line(tiny):
    root, spec = tiny
    rows = (root / "train.csv").read_text().splitlines()
    bad = root / "bad_labels"
    bad.mkdir(exist_ok=True)
    rows[6] = rows[6].rsplit(" ", 1)[0] + f" {NUM_CLASSES}"
    (bad / "train.csv").write_text("\n".join(rows) + "\n")
    args = cli_args(root, spec, "bad_labels")
    args[args.index("--train") + 1] = str(bad / "train.csv")
    code, stderr, _ = run_to_the_end([sys.executable, str(ROOT / "scripts/finetune.py"), *args])
    assert code == 2
    assert_ends_with(
        stderr,
        f"{bad / 'train.csv'}:7: label {NUM_CLASSES} is outside 0..{NUM_CLASSES - 1} "
        f"(num_classes {NUM_CLASSES})",
    )
    assert not (root / "bad_labels/state").exists()  # refused before anything was written
