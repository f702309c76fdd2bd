"""k400ft.plan: the sample of the splits, the projections, the advice (pure), and the whole plan
on tiny real mp4 files on the CPU (cost.json and cost.md written, every figure there)."""

import json
import runpy
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_finetune import DATA, NUM_CLASSES, RECIPE, TINY_ARCH, tiny

from k400ft import measure as M
from k400ft import plan as P
from k400ft.schedule import SpecError

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["tiny"]  # the fixture, shared with test_finetune


def test_the_sample_is_spread_over_the_classes_and_seeded():
    rows = [(f"/v/{label}_{i}.mp4", label) for label in range(4) for i in range(10 + label)]
    picked = P.sample_rows(rows, 10, seed=3)
    assert len(picked) == len(set(picked)) == 10
    assert sorted(Counter(label for _, label in picked).values()) == [2, 2, 3, 3]
    assert picked == P.sample_rows(rows, 10, seed=3) != P.sample_rows(rows, 10, seed=4)
    assert sorted(P.sample_rows(rows, 1000)) == sorted(rows)  # never more than there are


FIGURES = {
    "batch_videos": 12,
    "clips_per_step": 24,
    "step_s": 0.064,
    "clips_per_s": 375.0,
    "val_clips_per_s": 500.0,
    "workers": 10,
    "loader_clips_per_s": 35.0,
    "fed_step_s": 0.686,
    "fed_clips_per_s": 35.0,
    "data_wait": 0.94,
    "augment_on": "workers",
    "eval_videos_per_s": 20.0,
}


def test_the_projection_counts_steps_accumulation_validation_and_evaluation():
    p = P.project_run(FIGURES, 48, 150, 4, 240_000, 19_800, 1, 19_800)
    assert p["accumulation"] == 1 and p["optimiser_steps"] == 5000 * 150
    train = 750_000 * 0.686 / 3600 + 150 * 19_800 / (500 * 4) / 3600
    assert p["train_wall_h"] == pytest.approx(train)
    assert p["train_gpu_h"] == pytest.approx(4 * train)
    assert p["train_wall_h_model_alone"] == pytest.approx(750_000 * 0.064 / 3600)
    assert p["eval_wall_h"] == pytest.approx(19_800 / 20 / 3600) == p["eval_gpu_h"]
    started = {**FIGURES, "import_s": 6.0, "build_s": 1.0, "loader_start_s": 1.5}
    with_start = P.project_run(started, 48, 150, 4, 240_000, 19_800)
    assert with_start["start_s"] == 10.0  # imports, model, the train and validation loaders
    assert with_start["train_wall_h"] == pytest.approx(train + 10 / 3600)
    assert with_start["train_gpu_h"] == pytest.approx(4 * (train + 10 / 3600))
    two = P.project_run(FIGURES, 48, 150, 2, 240_000, 19_800)  # accumulation 2
    assert two["accumulation"] == 2 and two["train_wall_h"] > p["train_wall_h"]


def advice(**changes):
    figures = {**FIGURES, **changes.pop("figures", {})}
    settings = dict(node_cpus=44, procs_per_node=4, global_batch=48, gpus=4, transcode=False)
    return P.recommendations(figures, **{**settings, "device": "cuda", **changes})


def test_advice_data_bound_within_the_node_names_the_workers_needed():
    lines = advice(node_cpus=200, figures={"data_wait": 0.5})
    # 375 clips/s at 3.5 clips/s per worker: 108 workers; 200 cores / 4 processes: 49 each
    assert "data-bound" in lines[0] and "even with every core" in lines[0]
    lines = advice(node_cpus=600, figures={"data_wait": 0.5})
    assert lines == [
        "data-bound (the step waits for data 50% of its time): raise data.num_workers to 108 "
        "(this node has 600 cores for 4 process(es): up to 149 workers each)"
    ]


def test_advice_when_the_workers_would_keep_up_alone_blames_shared_cores():
    (line,) = advice(figures={"data_wait": 0.3, "loader_clips_per_s": 400.0})
    assert "although its 10 worker(s) make 400.0 clips/s alone" in line
    assert "give the job more CPUs" in line


def test_advice_beyond_the_node_suggests_device_augmentation_and_the_copy():
    lines = advice()
    assert "even with every core" in lines[0]
    assert any("data.augment_on: device" in line for line in lines)
    assert any("data.transcode" in line for line in lines)
    lines = advice(transcode=True, figures={"augment_on": "device"})
    assert len(lines) == 1


def test_advice_compute_bound_and_batch_growth():
    lines = advice(figures={"data_wait": 0.02, "peak_mem_gib": 6.8, "gpu_mem_gib": 139.0})
    assert lines[0].startswith("compute-bound")
    # 12 x 0.85 x 139 / 6.8 = 208 fits; the largest divisor of 48 / 4 = 12 is 12: no growth
    assert len(lines) == 1
    lines = advice(
        global_batch=384, figures={"data_wait": 0.02, "peak_mem_gib": 6.8, "gpu_mem_gib": 139.0}
    )
    assert "finetune.batch_per_gpu can grow to 96" in lines[1]  # divisor of 384 / 4 = 96


def test_advice_to_compile_the_augmentation_when_it_weighs_on_the_step():
    parts = {"wait_ms": 0.0, "copy_ms": 1.0, "augment_ms": 30.0, "model_ms": 60.0}
    fed = {"data_wait": 0.02, "augment_on": "device", "fed_parts": parts}
    lines = advice(figures=fed)
    assert lines[1] == (
        "set data.augment_compile: on: the augmentation on the device takes 30.0 ms per step "
        "beside the model's 60.0 (fused kernels move about 20x fewer bytes)"
    )
    assert len(advice(figures={**fed, "augment_compile": True})) == 1
    light = {**fed, "fed_parts": {**parts, "augment_ms": 5.0}}
    assert len(advice(figures=light)) == 1


def test_the_augmentations_compile_is_in_the_fixed_start():
    started = {**FIGURES, "import_s": 6.0, "augment_compile_s": 50.0}
    assert P.project_run(started, 48, 150, 4, 240_000, 19_800)["start_s"] == 56.0


def test_advice_to_compile_names_the_measured_gain_only_when_it_pays():
    lines = advice(figures={"data_wait": 0.02, "compiled_clips_per_s": 600.0})
    assert lines[1] == (
        "set recipe.compile: true: the compiled model alone makes 600.0 clips/s, 60% more "
        "than eager (375.0)"
    )
    assert len(advice(figures={"data_wait": 0.02, "compiled_clips_per_s": 380.0})) == 1
    compiled = {"data_wait": 0.02, "compiled_clips_per_s": 600.0, "compile": True}
    assert len(advice(figures=compiled)) == 1


def test_a_fed_rate_is_timed_after_the_workers_first_burst_over_rounds_of_every_worker():
    # 15 workers x prefetch 2 batches made ahead; then 3 batches of each worker at least
    assert M.steady_window(15, 10) == (30, 45)
    assert M.steady_window(1, 10) == (2, 10)
    assert M.steady_window(0, 5) == (1, 5)  # no workers: the main process loads


def plan_spec() -> dict:
    return {
        "models": {
            "tiny_2d": {"arch": TINY_ARCH, "finetune": {"global_batch": 4, "batch_per_gpu": 2}},
        },
        "recipe": {**RECIPE, "epochs": 3},
        "data": {**DATA, "augment_on": "device", "augment_compile": "on"},
        "evaluate": {"num_segments": 2, "num_crops": 3, "batch_views": 6},
        "num_classes": NUM_CLASSES,
        "launch": {
            "finetune": {"nodes": 1, "procs_per_node": 1, "device": "cpu"},
            "evaluate": {"nodes": 1, "procs_per_node": 1, "device": "cpu"},
        },
        "plan": {"videos": 8, "test_videos": 2, "steps": 3, "warmup": 1},
        "transcode": False,
    }


def test_the_plan_on_tiny_real_videos_writes_cost_json_and_md(tiny, tmp_path):
    root, _ = tiny
    spec = plan_spec()
    record = P.plan(spec, "cpu", root / "train.csv", root / "val.csv", 2, tmp_path / "plan")
    saved = json.loads((tmp_path / "plan/cost.json").read_text())
    assert saved == json.loads(json.dumps(record))
    model = saved["models"]["tiny_2d"]
    figures = model["figures"]
    assert figures["augment_on"] == "device" and figures["workers"] == 1
    for key in ("clips_per_s", "fed_clips_per_s", "loader_clips_per_s", "eval_videos_per_s"):
        assert figures[key] > 0, key
    assert 0 <= figures["data_wait"] <= 1
    assert figures["fed_window"] == {"warmup_batches": 2, "timed_batches": 10}
    parts = figures["fed_parts"]
    assert set(parts) == {"wait_ms", "copy_ms", "augment_ms", "model_ms"}
    assert parts["augment_ms"] > 0 and parts["model_ms"] > 0  # augment_on: device
    assert figures["augment_compile"] is True  # compiled kernels, and what compiling cost
    assert figures["augment_graphs"] >= 0 and figures["augment_compile_s"] >= 0
    assert figures["import_s"] > 0 and model["projection"]["start_s"] > figures["import_s"]
    assert saved["sample"] == {"train_videos": 8, "test_videos": 3}
    assert saved["launch"]["train_videos"] == 16 and saved["launch"]["test_videos"] == 4
    assert model["projection"]["optimiser_steps"] == (16 // 4) * 3 and model["advice"]
    text = (tmp_path / "plan/cost.md").read_text()
    assert "| tiny_2d | 2 |" in text and "## What to do" in text
    assert "| Model | loader wait | host-to-device | augmentation | model step | fed step" in text
    assert "tiny_2d: the augmentation on the device runs compiled kernels: " in text
    compared = saved["decoders"]
    assert compared["items"] == 8 + 3 and compared["differing"] == 0  # x264 closed GOPs
    assert compared["cannot_read"] == {"decord": 0, "pyav": 0}
    for name in ("decord", "pyav"):
        assert all(ms > 0 for ms in compared["ms_per_item"][name].values())
        assert f"| {name} |" in text
    assert saved["launch"]["decoder"] == "decord"


@pytest.mark.parametrize(
    ("split", "rows", "expected"),
    [
        ("train", 0, "no videos (not one '<video path> <label>' line); the plan times batches "
         "of 2 (finetune.batch_per_gpu of tiny_2d)"),
        ("train", 1, "1 video(s); the plan times batches of 2"),
        ("test", 0, "no videos (not one '<video path> <label>' line); the plan times the "
         "evaluation on at least 2 videos, the first untimed"),
        ("test", 1, "1 video(s); the plan times the evaluation on at least 2 videos"),
    ],
)  # fmt: skip
def test_the_plan_refuses_a_split_too_small_before_measuring(
    tiny, tmp_path, monkeypatch, capsys, split, rows, expected
):
    """scripts/plan.py exits 2 with one line naming the user's CSV (not the sample's temporary
    copy), before anything is measured or written."""
    root, _ = tiny
    csvs = {"train": root / "train.csv", "test": root / "val.csv"}
    csvs[split] = tmp_path / f"{split}.csv"
    csvs[split].write_text("".join((root / "val.csv").read_text().splitlines(True)[:rows]))

    def measured(*args, **kwargs):
        raise AssertionError("measured before the splits were checked")

    monkeypatch.setattr(M, "measure_model", measured)
    monkeypatch.setattr(M, "measure_evaluation", measured)
    monkeypatch.setattr(M, "compare_decoders", measured)
    argv = ["plan.py", "--spec", json.dumps(plan_spec()), "--device", "cpu", "--threads", "2"]
    argv += ["--train", str(csvs["train"]), "--test", str(csvs["test"])]
    monkeypatch.setattr(sys, "argv", [*argv, "--out-dir", str(tmp_path / "plan")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts/plan.py"), run_name="__main__")
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(f"error: {csvs[split]}: {expected}")
    )
    assert not (tmp_path / "plan").exists()


def test_the_plan_refuses_a_sample_smaller_than_a_batch(tiny, tmp_path):
    root, _ = tiny
    spec = plan_spec()
    spec["plan"]["videos"] = 1
    with pytest.raises(SpecError, match=r"^plan.videos 1 is smaller than one batch of tiny_2d "):
        P.plan(spec, "cpu", root / "train.csv", root / "val.csv", 2, tmp_path / "plan")
    assert not (tmp_path / "plan").exists()


def compared(differing=0, cannot_read=(0, 0), train=(80.0, 68.0), test=(200.0, 140.0)):
    return {
        "items": 20,
        "ms_per_item": {
            "decord": {"train": train[0], "test": test[0]},
            "pyav": {"train": train[1], "test": test[1]},
        },
        "cannot_read": dict(zip(("decord", "pyav"), cannot_read, strict=True)),
        "differing": differing,
        "differing_videos": ["/k/a.mp4"] * differing,
    }


def test_decoder_advice_follows_the_comparison():
    [same] = P.decoder_advice(compared(), "decord")
    assert "data.decoder: pyav gives the same frames on all 20" in same
    assert "15% less CPU per train item and 30% less per test item" in same
    assert P.decoder_advice(compared(), "pyav") == []
    assert P.decoder_advice(compared(train=(60.0, 70.0)), "decord") == []
    [differ] = P.decoder_advice(compared(differing=3), "decord")
    assert "different frames for 3 of 20" in differ and differ.endswith("set data.decoder: pyav")
    assert "/k/a.mp4" in differ
    [lost] = P.decoder_advice(compared(differing=1, cannot_read=(1, 3)), "pyav")
    assert "PyAV cannot read 2 sampled video(s)" in lost and "keep data.decoder: decord" in lost


def test_decoder_advice_says_more_when_pyav_costs_more_per_test_item():
    [advice] = P.decoder_advice(compared(train=(100.0, 72.0), test=(100.0, 148.0)), "decord")
    assert "28% less CPU per train item and 48% more per test item" in advice
    assert "-48%" not in advice


@pytest.mark.parametrize(
    ("gpus", "unit", "words"),
    [
        (1, "GPU", "1 GPU"),
        (8, "GPU", "8 GPUs"),
        (1, "CPU-process", "1 CPU process"),
        (2, "CPU-process", "2 CPU processes"),
    ],
)
def test_cost_md_counts_the_processes_in_words(gpus, unit, words):
    launch = {"gpus": gpus, "unit": unit, "eval_gpus": 1, "epochs": 3, "train_videos": 16}
    text = P.render_markdown(
        {
            "node": {"device": "cpu", "cpus": 4},
            "sample": {"train_videos": 8, "test_videos": 3},
            "launch": launch,
            "models": {},
        }
    )
    assert f"({words} for fine-tuning, 1 for evaluation, 3 epochs of 16 videos)" in text
    assert "(s)" not in text
