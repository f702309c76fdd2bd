"""Shared test set-up: the library under scripts/ is importable like the scripts see it."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pytest  # noqa: E402

from k400ft import demo  # noqa: E402

# A miniature of the public Kinetics-400 archive (k400ft.demo.write_archive: the demo's
# generator at test size): 3 train parts, 2 val parts, the replacement archive, broken files.
MINI_DEMO = {
    "train_per_class": 2,
    "val_per_class": 1,
    "frames": [8, 12],
    "height": 48,
    "width": 64,
    "broken": 3,
    "seed": 5,
}
MINI_KINETICS = {
    "root": "",
    "layout": "annotations",
    "annotations": {"train": "annotations/train.csv", "val": "annotations/validate.csv"},
    "video_dirs": {"train": "train", "val": "val"},
    "extensions": ["mp4"],
    "num_classes": 8,
    "archive": {
        "lists": {"train": "train/k400_train_path.txt", "val": "val/k400_val_path.txt"},
        "parts": {"train": 3, "val": 2},
        "annotations": {"train": "annotations/train.csv", "val": "annotations/val.csv"},
        "replacement": "replacement_for_corrupted_k400.tgz",
    },
}


@pytest.fixture(scope="session")
def mini_archive(tmp_path_factory):
    """The miniature archive's folder (made once per test session; do not change it)."""
    folder = tmp_path_factory.mktemp("mini-archive")
    demo.write_archive(MINI_DEMO, MINI_KINETICS, folder)
    return folder


import torch  # noqa: E402

# The tests fork trainers that run backward passes. Autograd's engine starts its worker threads
# at a process's first backward; once torch.compile has run in the process (test_augment's
# compiled batches), that first backward starts threads a forked child cannot use ("Unable to
# handle autograd's threading in combination with fork-based multiprocessing"). One backward
# here, before anything is compiled, settles the engine as a plain CPU process's.
_ONE = torch.ones(1, requires_grad=True)
(2 * _ONE).sum().backward()
