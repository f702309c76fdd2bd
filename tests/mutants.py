"""Deliberate bugs in the recipe, the data path, evaluation, the plan and resuming, each the
test suite must catch: apply one (a single string replacement in the library), run the tests
named for it, put the file back. Not collected by pytest; run it by hand after changing a test
that guards one of these, on a checkout with no uncommitted change to scripts/:

    .venv/bin/python tests/mutants.py            # every mutant
    .venv/bin/python tests/mutants.py fill_0     # one

One line per mutant: caught (a named test failed) or MISSED, the seconds, the first failure.
Exit 1 when one is missed or when the tests fail without any mutant (checked first)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
LIB = "scripts/k400ft/"
ADAMW = "tests/test_recipe.py::test_two_engine_steps_are_the_reference_adamw_steps"
AGREE = "tests/test_recipe.py::test_one_process_and_two_and_accumulation_1_and_2_agree"
SIGNALS = (
    "tests/test_finetune.py::"
    "test_sigkill_sigterm_sigusr1_and_ctrl_c_at_random_steps_then_resume_is_bit_identical"
)
PIL_PATH = (
    "tests/test_augment.py::test_on_the_cpu_a_clip_is_the_pil_paths_exactly",
    "tests/test_augment.py::test_a_clip_matches_the_pil_path_drawn_from_the_same_seed",
)


class Mutant(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "layer_decay_off", "components.py", "layer_decay=layer_decay,", "layer_decay=1.0,", (ADAMW,)
    ),
    Mutant(
        "decay_on_pos_embed",
        "components.py",
        '(*sorted(model.no_weight_decay()), "*.bias")',
        '("*.bias",)',
        (ADAMW,),
    ),
    Mutant(
        "no_label_smoothing",
        "components.py",
        'label_smoothing=recipe["smoothing"],',
        "label_smoothing=0.0,",
        (ADAMW,),
    ),
    Mutant(
        "accumulation_not_divided",
        "components.py",
        "self.scaler.scale(loss / self.accumulation)",
        "self.scaler.scale(loss)",
        (AGREE,),
    ),
    Mutant(
        "no_sync_on_the_last_micro_step",
        "components.py",
        "if last or self.no_sync is None",
        "if self.no_sync is None",
        (AGREE,),
    ),
    Mutant(
        "val_top1_from_top5",
        "finetune.py",
        '"val_top1": 100 * top1 / count',
        '"val_top1": 100 * top5 / count',
        (
            "tests/test_finetune.py::"
            "test_validation_metrics_are_the_final_weights_logits_scored_again",
        ),
    ),
    Mutant(
        "views_merged_as_raw_logits",
        "metrics.py",
        "probs = softmax(logits[keep])",
        "probs = logits[keep]",
        ("tests/test_evaluate.py::test_metrics_json_is_logits_npz_scored_by_the_reference",),
    ),
    Mutant("fill_0", "randaugment.py", "FILL = (128, 128, 128)", "FILL = (0, 0, 0)", PIL_PATH),
    Mutant(
        "normalise_without_std",
        "video.py",
        "(-mean / std).view(3, 1, 1, 1)",
        "(-mean).view(3, 1, 1, 1)",
        ("tests/test_video.py",),
    ),
    Mutant(
        "train_clip_may_end_past_the_video",
        "video.py",
        "end = int(rng.integers(span, n))",
        "end = int(rng.integers(span, n + 1))",
        ("tests/test_video.py",),
    ),
    Mutant(
        "test_view_step_over_segments_not_gaps",
        "video.py",
        "(num_taken - num_frames) / (num_segments - 1)",
        "(num_taken - num_frames) / num_segments",
        ("tests/test_video.py",),
    ),
    Mutant(
        "data_wait_over_steps_minus_1",
        "measure.py",
        "device, warmup + steps + 1)",
        "device, warmup + steps)",
        ("tests/test_plan.py::test_the_fed_step_against_a_loader_of_known_delay",),
    ),
    Mutant(
        "videomae_decoder_full_width",
        "layouts.py",
        "dec = max(1, dim // 2)",
        "dec = dim",
        ("tests/test_models.py::test_videomae_layout_is_the_released_checkpoints_frozen_key_list",),
    ),
    Mutant("ctrl_c_exits_1", "finetune.py", "code = EXIT_INTERRUPTED\n", "code = 1\n", (SIGNALS,)),
    Mutant(
        "sigusr1_ignored",
        "lifecycle.py",
        "SIGNALS = (signal.SIGTERM, signal.SIGUSR1)",
        "SIGNALS = (signal.SIGTERM,)",
        (SIGNALS,),
    ),
)


def pytest(tests: tuple[str, ...]) -> tuple[bool, str]:
    """Whether the tests pass, and the first FAILED line (or pytest's last line)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", *tests],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = proc.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAILED")]
    return proc.returncode == 0, (failed or lines[-1:] or [""])[0][:160]


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    if unknown := set(names) - {m.name for m in MUTANTS}:
        sys.exit(f"unknown mutants: {', '.join(sorted(unknown))}")
    dirty = subprocess.run(
        ["git", "status", "--porcelain", LIB], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    if dirty:
        sys.exit(f"uncommitted changes under {LIB}: mutants restore files, commit first")
    passed, line = pytest(tuple(sorted({t for m in chosen for t in m.tests})))
    if not passed:
        print(f"the tests fail without any mutant: {line}")
        return 1
    missed = 0
    for mutant in chosen:
        path = ROOT / LIB / mutant.file
        text = path.read_text()
        if text.count(mutant.old) != 1:
            sys.exit(f"{mutant.name}: {mutant.old!r} is not once in {path}")
        path.write_text(text.replace(mutant.old, mutant.new))
        started = time.perf_counter()
        try:
            passed, line = pytest(mutant.tests)
        finally:
            path.write_text(text)
        missed += passed
        verdict = "MISSED" if passed else "caught"
        print(f"{mutant.name}: {verdict} in {time.perf_counter() - started:.0f} s; {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
