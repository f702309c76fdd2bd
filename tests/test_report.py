"""The report stage on fabricated evaluation outputs: table contents in every format, the views
ablation from saved logits, plots, provenance, and the mapping of files to rows."""

import copy
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from k400ft import metrics, report, stats

ROOT = Path(__file__).resolve().parents[1]
K = 8
LABELS = [f"class {chr(97 + i)}" for i in range(K)]


def spec_row(key: str, name: str, epochs: int, published: tuple, finetuned: bool) -> dict:
    """One row of the plan's spec; a fine-tuned row has one run, seed 0."""
    top1, top5 = published
    return {
        key: {
            "name": name,
            "pretrain_epochs": epochs,
            "published": {"top1": top1, "top5": top5},
            "finetuned": finetuned,
            "runs": {key: 0 if finetuned else None},
        }
    }


SPEC = {
    "rows": {
        **spec_row("catmae_vits16", "CatMAE ViT-S/16", 300, (None, None), True),
        **spec_row("videomae_vits16", "VideoMAE ViT-S/16", 1600, (79.0, 93.8), True),
        **spec_row("videomae_released", "VideoMAE ViT-S/16 (released)", 1600, (79.0, 93.8), False),
    },
    "num_frames": 16,
    "evaluate": {"num_segments": 5, "num_crops": 3, "batch_views": 30},
}


def fabricated_logits(seed: int, num_videos: int = 24) -> dict[str, np.ndarray]:
    """5 x 3 views per video: the centre view (segment 2, crop 1) is informative, the others
    barely, so 1x1 beats 5x3 here (the reverse of real data) and shows which view 1x1 is."""
    rng = np.random.default_rng(seed)
    grid = [(v, s, c) for v in range(num_videos) for s in range(5) for c in range(3)]
    video, segment, crop = (np.array(col) for col in zip(*grid, strict=True))
    label = video % K
    logits = rng.normal(size=(len(video), K))
    centre = (segment == 2) & (crop == 1)
    logits[np.arange(len(video)), label] += np.where(centre, 2.5, 0.1)
    return {
        "logits": logits.astype(np.float16),
        "video": video.astype(np.int32),
        "label": label.astype(np.int32),
        "segment": segment.astype(np.int16),
        "crop": crop.astype(np.int16),
        "paths": np.array([f"/k400/val/v{i:03d}.mp4" for i in range(num_videos + 1)]),
    }


def write_train_log(path: Path, epochs: int = 3, steps: int = 4) -> None:
    lines = []
    for epoch in range(epochs):
        for step in range(steps):
            g = epoch * steps + step + 1  # optimiser steps done, as k400ft.finetune logs it
            lines.append(
                {
                    "type": "step",
                    "epoch": epoch,
                    "step": g,
                    "loss": 2.0 - 0.1 * g,
                    "lr": 1e-3 * g / 12,
                }
            )
        lines.append(
            {
                "type": "epoch",
                "epoch": epoch,
                "step": (epoch + 1) * steps,
                "loss": 2.0 - 0.4 * epoch,
                "lr": 1e-3,
                "val_top1": 20.0 * (epoch + 1),
                "val_top5": 50.0 + 10 * epoch,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def write_evaluation(results: Path, run: str, seed: int) -> dict[str, float]:
    """evaluate/<run>/{logits.npz, metrics.json} from `fabricated_logits(seed)`; its Top-k."""
    folder = results / "evaluate" / run
    folder.mkdir(parents=True)
    logits = fabricated_logits(seed)
    np.savez_compressed(folder / "logits.npz", **logits)
    scores = metrics.aggregate(
        *(logits[k] for k in ("logits", "video", "segment", "crop", "label"))
    )
    acc = metrics.accuracy(scores)
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                **acc,
                "videos": 24,
                "videos_listed": 25,
                "views": 15,
                "num_segments": 5,
                "num_crops": 3,
                "num_frames": 16,
                "excluded": [{"path": "/k400/val/v024.mp4", "reason": "empty file"}],
                "weights": f"{run}.pt",
                "weights_format": "ours",
                "weights_sha256": f"{seed:064x}",
                "spec_sha256": "ab" * 32,
                "wall_time_s": 12.5,
                "environment": {"device": "cpu"},
            }
        )
    )
    return acc


def write_labels(results: Path) -> None:
    (results / "splits").mkdir()
    pd.DataFrame({"index": range(K), "name": LABELS}).to_csv(
        results / "splits/labels.csv", index=False
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Fabricated results tree, then scripts/make_report.py run on it (the rule's command)."""
    results = tmp_path_factory.mktemp("results")
    expected = {row: write_evaluation(results, row, seed) for seed, row in enumerate(SPEC["rows"])}
    for row in ("catmae_vits16", "videomae_vits16"):
        write_train_log(results / "finetune" / row / "train_log.jsonl")
    plan = {"world_size": 4, "global_batch": 48, "accumulation": 1, "precision": "bf16"}
    (results / "finetune/videomae_vits16/spec.json").write_text(
        json.dumps({"spec": {"recipe": {}}, "plan": plan, "identity": "id", "torch": "2.14.1"})
    )
    write_labels(results)
    (results / "benchmarks/evaluate").mkdir(parents=True)
    (results / "benchmarks/evaluate/catmae_vits16.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "61.5\t0:01:01\t812.3\t900.1\t700.2\t710.0\t1.0\t2.0\t95.0\t58.1\n"
    )
    rows = list(SPEC["rows"])
    out = results / "report"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/make_report.py"),
            "--spec",
            json.dumps(SPEC),
            "--metrics",
            *(str(results / f"evaluate/{r}/metrics.json") for r in reversed(rows)),
            "--logits",
            *(str(results / f"evaluate/{r}/logits.npz") for r in rows),
            "--train-logs",
            *(str(results / f"finetune/{r}/train_log.jsonl") for r in rows[:2]),
            "--labels",
            str(results / "splits/labels.csv"),
            "--benchmarks",
            str(results / "benchmarks"),
            "--out-dir",
            str(out),
            "--plan",
            str(results / "plan/cost.json"),  # absent: the plan stage has not run
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, expected


def main_table_cells(md: str) -> dict[str, list[str]]:
    """The main table of table.md: model name -> its cells."""
    main = md.split("## The fine-tuned models compared")[0]
    return {
        line.split(" | ")[0].lstrip("| "): line.removesuffix(" |").split(" | ")
        for line in main.splitlines()
        if line.startswith("| ")
    }


def test_table_markdown_rows_and_numbers(made):
    out, expected = made
    md = (out / "table.md").read_text()
    csv = pd.read_csv(out / "table.csv").set_index("key")
    lines = main_table_cells(md)
    catmae = lines["CatMAE ViT-S/16"]
    assert catmae[1:5] == ["300", "ours", "16x5x3", "0"]
    assert catmae[5] == f"{expected['catmae_vits16']['top1']:.1f}"
    assert catmae[7] == f"{expected['catmae_vits16']['top5']:.1f}"
    low, high = csv.loc["catmae_vits16", ["top1_low", "top1_high"]]
    assert catmae[6] == f"[{low:.1f}, {high:.1f}]"  # the 95% interval beside its value
    assert catmae[9:11] == ["24", "1"]
    assert catmae[11:] == ["-", "-", "-", "-"]  # nothing published for CatMAE
    released = lines["VideoMAE ViT-S/16 (released)"]
    top1 = expected["videomae_released"]["top1"]
    assert released[2] == "released" and released[4] == "-"  # no seed: released weights
    assert released[11:13] == ["79.0", "93.8"]
    low, high = csv.loc["videomae_released", ["top1_low", "top1_high"]]
    where = "inside" if low <= 79.0 <= high else "outside"
    assert released[13] == f"{top1 - 79.0:+.1f} ({where})"
    assert csv.loc["videomae_released", "published_top1_inside"] == (where == "inside")
    assert "| Model | 1x1 | 1x3 | 5x1 | 5x3 |" in md
    assert '<td align="left">pretrain epoch</td>' in md  # the seed's layout, filled in


def correct_of(seed: int) -> np.ndarray:
    """Top-1 right or not per video of `fabricated_logits(seed)`, all views."""
    logits = fabricated_logits(seed)
    scores = metrics.aggregate(
        *(logits[k] for k in ("logits", "video", "segment", "crop", "label"))
    )
    return metrics.topk_correct(scores.probs, scores.label, 1)


def test_the_two_fine_tuned_models_compared_in_one_sentence(made):
    out, _ = made
    catmae, videomae = correct_of(0), correct_of(1)  # the fixture's rows 0 and 1
    estimate, low, high = stats.paired_difference(100.0 * catmae, 100.0 * videomae)
    p = stats.mcnemar(catmae, videomae)["p"]
    sentence = stats.comparison_sentence(
        "CatMAE ViT-S/16", "VideoMAE ViT-S/16", "Top-1", estimate, low, high, [p], [0]
    )
    assert sentence.startswith("CatMAE ViT-S/16 − VideoMAE ViT-S/16: ")
    assert f"- {sentence}\n" in (out / "table.md").read_text()
    assert html.escape(sentence) in (out / "table.html").read_text()
    record = json.loads((out / "provenance.json").read_text())["comparisons"][0]
    assert record["difference"] == pytest.approx(estimate) and record["mcnemar"][0]["p"] == p


def test_table_csv_has_unrounded_numbers_intervals_and_ablation(made):
    out, expected = made
    table = pd.read_csv(out / "table.csv")
    assert table["key"].tolist() == list(SPEC["rows"])  # the spec's order, not the arguments'
    assert table["seed"].fillna(-1).tolist() == [0, 0, -1]  # released weights: no seed
    for _, r in table.iterrows():
        assert r["top1"] == pytest.approx(expected[r["key"]]["top1"], abs=1e-4)
        assert r["top1_5x3"] == pytest.approx(r["top1"], abs=1e-4)  # ablation from logits = metrics
        for k in ("top1", "top5"):
            assert r[f"{k}_low"] <= r[k] <= r[f"{k}_high"]
            assert r[f"{k}_5x3_low"] == r[f"{k}_low"] and r[f"{k}_1x1_low"] <= r[f"{k}_1x1"]
    # the fabricated centre view is the informative one: 1x1 (segment 2, crop 1) beats 5x3
    assert (table["top1_1x1"] > table["top1_5x3"] + 10).all()
    assert (table["top5_5x3"] < 100).all()
    assert table["published_top1"].isna().tolist() == [True, False, False]
    assert table["delta_top5"].iloc[1] == pytest.approx(
        expected["videomae_vits16"]["top5"] - 93.8, abs=1e-4
    )


def test_the_tables_are_the_same_bytes_on_a_rerun(made, tmp_path):
    """Fixed bootstrap seed: a second report from the same files writes the same tables."""
    out, _ = made
    results = out.parent
    rows = list(SPEC["rows"])
    report.make_report(
        SPEC,
        [str(results / f"evaluate/{r}/metrics.json") for r in rows],
        [str(results / f"evaluate/{r}/logits.npz") for r in rows],
        [str(results / f"finetune/{r}/train_log.jsonl") for r in rows[:2]],
        str(results / "splits/labels.csv"),
        str(results / "benchmarks"),
        str(tmp_path),
    )
    for name in ("table.md", "table.csv", "table.tex", "table.html"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_several_seeds_give_mean_sd_the_pooled_interval_and_per_seed_csv_rows(tmp_path):
    """Two seeds per fine-tuned model (runs <model> and <model>_seed1), one released row."""
    spec = copy.deepcopy(SPEC)
    for row in ("catmae_vits16", "videomae_vits16"):
        spec["rows"][row]["runs"] = {row: 0, f"{row}_seed1": 1}
    fabricated = {  # run -> the fabricated logits' seed
        "catmae_vits16": 0,
        "catmae_vits16_seed1": 3,
        "videomae_vits16": 1,
        "videomae_vits16_seed1": 4,
        "videomae_released": 2,
    }
    acc = {run: write_evaluation(tmp_path, run, seed) for run, seed in fabricated.items()}
    finetuned = [run for run in fabricated if run != "videomae_released"]
    for run in finetuned:
        write_train_log(tmp_path / "finetune" / run / "train_log.jsonl")
    write_labels(tmp_path)
    report.make_report(
        spec,
        [str(tmp_path / f"evaluate/{r}/metrics.json") for r in fabricated],
        [str(tmp_path / f"evaluate/{r}/logits.npz") for r in fabricated],
        [str(tmp_path / f"finetune/{r}/train_log.jsonl") for r in finetuned],
        str(tmp_path / "splits/labels.csv"),
        str(tmp_path / "benchmarks"),
        str(tmp_path / "report"),
    )
    csv = pd.read_csv(tmp_path / "report/table.csv", dtype={"seed": str})
    assert csv["key"].tolist() == ["catmae_vits16"] * 3 + ["videomae_vits16"] * 3 + [
        "videomae_released"
    ]
    assert csv["seed"].fillna("").tolist() == ["0", "1", "all", "0", "1", "all", ""]
    pooled = csv[csv["seed"] == "all"].set_index("key").loc["catmae_vits16"]
    mean, sd = stats.mean_sd([acc["catmae_vits16"]["top1"], acc["catmae_vits16_seed1"]["top1"]])
    assert pooled["top1"] == pytest.approx(mean, abs=1e-4)
    assert pooled["top1_sd"] == pytest.approx(sd, abs=1e-4) and pooled["seeds"] == 2
    low, high = stats.interval(100.0 * (correct_of(0).astype(float) + correct_of(3)) / 2)
    assert (pooled["top1_low"], pooled["top1_high"]) == pytest.approx((low, high), abs=1e-4)
    catmae = main_table_cells((tmp_path / "report/table.md").read_text())["CatMAE ViT-S/16"]
    assert catmae[4] == "0, 1" and catmae[5] == f"{mean:.1f} ± {sd:.1f}"
    assert catmae[6] == f"[{low:.1f}, {high:.1f}]"
    md = (tmp_path / "report/table.md").read_text()
    assert re.search(r"McNemar p [=<] [0-9.]+, p [=<] [0-9.]+ \(seeds 0, 1\)", md)
    record = json.loads((tmp_path / "report/provenance.json").read_text())
    assert record["rows"]["catmae_vits16_seed1"]["seed"] == 1


def test_table_tex_and_html(made):
    out, _ = made
    tex = (out / "table.tex").read_text()
    assert tex.startswith(r"\begin{tabular}") and tex.rstrip().endswith(r"\end{tabular}")
    assert tex.count(r"\\") == 4  # header + 3 rows
    assert r"$\Delta$ Top-1" in tex
    page = (out / "table.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "VideoMAE ViT-S/16 (released)" in page
    assert "http" not in page  # self-contained: renders offline
    assert page.count("<tr>") == 2 * (1 + 3)


def test_plots_are_non_empty_png_and_pdf(made):
    out, _ = made
    for stem in ("training_curves", "accuracy_vs_views", "per_class"):
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, stem
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_the_views_plot_has_the_intervals_as_whiskers(made, tmp_path):
    out, _ = made
    table = pd.read_csv(out / "table.csv")
    fig = report.plot_views(table, tmp_path)
    for ax, k in zip(fig.axes, ("top1", "top5"), strict=True):
        whiskers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(whiskers) == len(table)  # one set per row
        for (_, r), container in zip(table.iterrows(), whiskers, strict=True):
            segments = container.lines[2][0].get_segments()  # one vertical line per subset
            ends = [end for seg in segments for end in (seg[0][1], seg[1][1])]
            subsets = ("1x1", "1x3", "5x1", "5x3")
            expected = [r[f"{k}_{s}_{end}"] for s in subsets for end in ("low", "high")]
            assert ends == pytest.approx(expected, abs=1e-4)


def test_provenance(made):
    out, expected = made
    record = json.loads((out / "provenance.json").read_text())
    assert set(record["rows"]) == set(SPEC["rows"])
    assert record["rows"]["videomae_vits16"]["weights_sha256"] == f"{1:064x}"
    assert record["rows"]["videomae_released"]["train_log"] is None
    assert record["rows"]["videomae_vits16"]["finetune"]["plan"]["global_batch"] == 48
    assert record["rows"]["catmae_vits16"]["finetune"] is None  # no spec.json beside its log
    assert record["stages"]["evaluate/catmae_vits16"] == {
        "wall_s": 61.5,
        "cpu_time_s": 58.1,
        "max_rss_mb": 812.3,
    }
    assert record["cost_plan"] is None  # no plan run: nothing, and no error
    assert record["report_environment"]["packages"]["numpy"] == np.__version__
    assert "commit" in record["git"]
    assert len(record["report_spec_sha256"]) == 64


def test_a_plan_run_is_in_the_provenance(tmp_path):
    plan = tmp_path / "cost.json"
    plan.write_text(json.dumps({"models": {"catmae_vits16": {"advice": ["compute-bound"]}}}))
    record = report.provenance_record({}, [], {}, tmp_path / "no-benchmarks", plan)
    assert record["cost_plan"]["models"]["catmae_vits16"]["advice"] == ["compute-bound"]


def test_paths_map_to_rows_by_folder():
    rows = ["a", "b"]
    assert report.by_row(["x/b/m.json", "x/a/m.json"], rows, "--metrics") == {
        "a": Path("x/a/m.json"),
        "b": Path("x/b/m.json"),
    }
    with pytest.raises(ValueError, match="folder 'c' is not a row"):
        report.by_row(["x/a/m.json", "x/c/m.json"], rows, "--metrics")
    with pytest.raises(ValueError, match="no file for row"):
        report.by_row(["x/a/m.json"], rows, "--metrics")
    with pytest.raises(ValueError, match="two files"):
        report.by_row(["x/a/m.json", "y/a/m.json"], rows, "--metrics")


def test_confused_pairs_and_per_class():
    logits = {
        "logits": np.eye(3)[[0, 1, 1, 2, 0]] * 5,
        "video": np.arange(5),
        "segment": np.zeros(5, int),
        "crop": np.zeros(5, int),
        "label": np.array([0, 0, 1, 2, 2]),
    }
    accuracy, confusion = report.per_class(logits, 4)
    assert accuracy[:3].tolist() == [50.0, 100.0, 50.0] and np.isnan(accuracy[3])
    assert report.confused_pairs(confusion, 5) == [(0, 1, 1), (2, 0, 1)]


def test_bad_train_log_names_file_and_line(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"type": "step", "epoch": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"train_log.jsonl:2: not JSON"):
        report.read_train_log(path)


def test_report_module_does_not_need_torch():
    """The report's conda env has numpy, pandas and matplotlib only."""
    code = "import sys; import k400ft.report; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT / "scripts", check=True, timeout=60)


def test_step_records_land_on_fractional_epochs(tmp_path):
    path = tmp_path / "finetune/m/train_log.jsonl"
    write_train_log(path, epochs=2, steps=4)
    steps, epochs = report.read_train_log(path)
    assert report.step_epochs(steps).tolist() == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert epochs["val_top1"].tolist() == [20.0, 40.0]


def test_metrics_of_other_views_than_the_config_are_refused(made):
    out, _ = made
    results = out.parent
    spec = {**SPEC, "evaluate": {**SPEC["evaluate"], "num_segments": 4}}
    rows = list(SPEC["rows"])
    with pytest.raises(ValueError, match="evaluated with {'num_segments': 5}"):
        report.load_rows(
            spec,
            [str(results / f"evaluate/{r}/metrics.json") for r in rows],
            [str(results / f"evaluate/{r}/logits.npz") for r in rows],
        )
