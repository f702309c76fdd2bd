"""The results table, plots and provenance from the evaluation and fine-tuning outputs.

Inputs are found by folder: results/evaluate/<run>/{metrics.json, logits.npz} and
results/finetune/<run>/train_log.jsonl, so each path maps to its run by its parent folder's
name; the spec maps each run to its table row (a model, one run per fine-tuning seed, or
released weights). Everything is recomputed from saved files (no model, no torch): the views
ablation (1x1, 1xC, Sx1, SxC) and per-class accuracy come from the per-view logits.

How sure each number is (`k400ft.stats`): a 95% bootstrap interval over test videos for
Top-1/Top-5 of every row and view subset (pooled over seeds: each video's correctness averaged
over the row's runs), mean ± sd over seeds, whether a published value lies inside the
interval, and each pair of fine-tuned models compared on the same videos (paired difference
with its interval, McNemar's exact test per seed, one sentence).

Outputs (atomic): table.md (main table, the comparisons, views ablation, and the seed's
KINETICS400.md table filled in), table.csv (one row per run, plus one over the seeds of a row
that has several), table.tex, table.html (shown inline by `snakemake --report`),
training_curves, accuracy_vs_views (with interval bars) and per_class as PNG + PDF,
provenance.json.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from k400ft import metrics, provenance, stats, tables
from k400ft.io import atomic_write
from k400ft.tables import MISSING, subset_names

log = logging.getLogger("k400ft.report")

TOPK = ("top1", "top5")


@dataclass(frozen=True)
class RunResult:
    """One evaluated run: a fine-tune with one seed, or released weights (seed None)."""

    key: str
    seed: int | None
    metrics: dict  # metrics.json
    logits: dict[str, np.ndarray]  # logits.npz
    correct: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]  # subset -> (videos, {top1, top5})


@dataclass(frozen=True)
class RowResult:
    """A row of the table: a model and its runs (one per seed), or released weights."""

    key: str
    spec: dict  # {name, pretrain_epochs, published {top1, top5}, finetuned, runs {run: seed}}
    runs: list[RunResult]

    def values(self, subset: str, k: str) -> tuple[np.ndarray, np.ndarray]:
        """(videos, percent right per video, averaged over the runs) on view subset `subset`."""
        videos, values = stats.pooled(
            [(r.correct[subset][0], r.correct[subset][1][k]) for r in self.runs]
        )
        return videos, 100.0 * values


def by_row(paths: list[str], rows: list[str], what: str, required: bool = True) -> dict[str, Path]:
    """Map each path to its row (or run) by its parent folder name (<stage>/<row>/<file>).

    Raises ValueError naming the path when a folder is no row, two paths share a row, or
    (required) a row has no path."""
    found: dict[str, Path] = {}
    for path in map(Path, paths):
        row = path.parent.name
        if row not in rows:
            raise ValueError(
                f"{what} {path}: folder {row!r} is not a row of the table ({', '.join(rows)})"
            )
        if row in found:
            raise ValueError(f"{what}: two files for row {row!r}: {found[row]} and {path}")
        found[row] = path
    if required and (absent := [row for row in rows if row not in found]):
        raise ValueError(f"{what}: no file for row(s) {', '.join(absent)}")
    return found


def load_logits(path: Path) -> dict[str, np.ndarray]:
    """logits.npz as plain arrays (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    expected = {"logits", "video", "label", "segment", "crop", "paths"}
    if missing := expected - set(arrays):
        raise ValueError(f"{path}: missing arrays {sorted(missing)}")
    return arrays


def views_correct(
    logits: dict[str, np.ndarray], num_segments: int, num_crops: int
) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """For each view subset of metrics.view_subsets: (videos, {top1, top5: right or not per
    video}), from saved per-view logits."""
    keys = ("logits", "video", "segment", "crop", "label")
    found = {}
    for name, (segments, crops) in metrics.view_subsets(num_segments, num_crops).items():
        scores = metrics.subset_scores(*(logits[key] for key in keys), segments, crops)
        right = {f"top{k}": metrics.topk_correct(scores.probs, scores.label, k) for k in (1, 5)}
        found[name] = (scores.video, right)
    return found


def run_spec(spec: dict) -> dict[str, tuple[str, int | None]]:
    """Every evaluated run -> (its table row, its seed), in the spec's order."""
    return {run: (row, seed) for row, r in spec["rows"].items() for run, seed in r["runs"].items()}


def load_rows(spec: dict, metrics_paths: list[str], logits_paths: list[str]) -> list[RowResult]:
    """Read every run's metrics and logits, grouped into the spec's rows, in its order."""
    runs = run_spec(spec)
    metrics_by_run = by_row(metrics_paths, list(runs), "--metrics")
    logits_by_run = by_row(logits_paths, list(runs), "--logits")
    wanted = {
        "num_frames": spec["num_frames"],
        "num_segments": spec["evaluate"]["num_segments"],
        "num_crops": spec["evaluate"]["num_crops"],
    }
    found: dict[str, list[RunResult]] = {row: [] for row in spec["rows"]}
    for run, (row, seed) in runs.items():
        with open(metrics_by_run[run]) as handle:
            run_metrics = json.load(handle)
        if stale := {k: run_metrics.get(k) for k, v in wanted.items() if run_metrics.get(k) != v}:
            raise ValueError(
                f"{metrics_by_run[run]}: evaluated with {stale}, the config asks for "
                f"{wanted}: re-run the evaluation"
            )
        logits = load_logits(logits_by_run[run])
        correct = views_correct(logits, run_metrics["num_segments"], run_metrics["num_crops"])
        found[row].append(RunResult(run, seed, run_metrics, logits, correct))
    return [RowResult(row, spec["rows"][row], found[row]) for row in spec["rows"]]


def _delta(value: float | None, published: float | None) -> float | None:
    return None if value is None or published is None else value - published


def numbers(group: RowResult, subsets: list[str], full: str) -> dict:
    """The accuracies of `group`'s runs: per metric the mean over them, the sd (None for one
    run) and the 95% interval (pooled over the runs) of the full views; per view subset the
    mean and, for the subsets listed, the interval."""
    record = {}
    for k in TOPK:
        record[k], record[f"{k}_sd"] = stats.mean_sd([r.metrics[k] for r in group.runs])
        record[f"{k}_low"], record[f"{k}_high"] = stats.interval(group.values(full, k)[1])
    for subset in group.runs[0].correct:
        for k in TOPK:
            name = f"{k}_{subset}"
            record[name] = float(
                np.mean([100 * r.correct[subset][1][k].mean() for r in group.runs])
            )
            if subset == full:
                record[f"{name}_low"], record[f"{name}_high"] = (
                    record[f"{k}_low"],
                    record[f"{k}_high"],
                )
            elif subset in subsets:
                record[f"{name}_low"], record[f"{name}_high"] = stats.interval(
                    group.values(subset, k)[1]
                )
    return record


def table_records(row: RowResult, full: str) -> list[dict]:
    """The CSV records of a row: one per run, then (several seeds) one over the seeds: the
    last record is the row of the main table and carries the interval of every view subset
    (a run's own record beside it: of the full views only)."""
    published = row.spec.get("published") or {}
    base = {
        "key": row.key,
        "model": row.spec["name"],
        "pretrain_epochs": row.spec["pretrain_epochs"],
        "finetuned": "ours" if row.spec["finetuned"] else "released",
        "views": "{num_frames}x{num_segments}x{num_crops}".format(**row.runs[0].metrics),
    }
    subsets = list(row.runs[0].correct)
    records = []
    for run in row.runs:
        alone = RowResult(row.key, row.spec, [run])
        records.append(
            {
                **base,
                "run": run.key,
                "seed": "" if run.seed is None else str(run.seed),
                "seeds": 1,
                "videos": len(run.correct[full][0]),
                "excluded": len(run.metrics["excluded"]),
                **numbers(alone, subsets if len(row.runs) == 1 else [], full),
            }
        )
    if len(row.runs) > 1:
        excluded = {e["path"] for r in row.runs for e in r.metrics["excluded"]}
        records.append(
            {
                **base,
                "run": "",
                "seed": "all",
                "seeds": len(row.runs),
                "videos": len(row.values(full, "top1")[0]),
                "excluded": len(excluded),
                **numbers(row, subsets, full),
            }
        )
    last = records[-1]
    for k in TOPK:
        last[f"published_{k}"] = published.get(k)
        last[f"delta_{k}"] = _delta(last[k], published.get(k))
        last[f"published_{k}_inside"] = stats.is_inside(
            published.get(k), last[f"{k}_low"], last[f"{k}_high"]
        )
    return records


def columns(subsets: list[str]) -> list[str]:
    """The tables' columns, in order."""
    names = ["key", "run", "seed", "model", "pretrain_epochs", "finetuned", "views"]
    names += ["seeds", "videos", "excluded"]
    names += [f"{k}{end}" for k in TOPK for end in ("", "_sd", "_low", "_high")]
    names += [f"{what}_{k}" for k in TOPK for what in ("published", "delta")]
    names += [f"published_{k}_inside" for k in TOPK]
    return names + [f"{k}_{s}{end}" for s in subsets for k in TOPK for end in ("", "_low", "_high")]


def results_tables(rows: list[RowResult], full: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the main table: one row per table row; the CSV's: every run, and each row over its
    seeds), the numbers unrounded."""
    records = [table_records(row, full) for row in rows]
    names = columns(list(rows[0].runs[0].correct))
    return (
        pd.DataFrame.from_records([r[-1] for r in records], columns=names),
        pd.DataFrame.from_records([r for row in records for r in row], columns=names),
    )


def compare(rows: list[RowResult], full: str) -> list[dict]:
    """Each pair of fine-tuned rows on the videos both evaluated: per metric the paired
    difference (first minus second, pooled over seeds) and its interval; on Top-1 McNemar's
    exact test per seed the two share; the sentence that says what it means."""
    found = []
    for a, b in combinations([row for row in rows if row.spec["finetuned"]], 2):
        seeds = [r.seed for r in a.runs if r.seed in {s.seed for s in b.runs}]
        for k, metric in (("top1", "Top-1"), ("top5", "Top-5")):
            videos, (a_values, b_values) = stats.on_common_videos(
                [a.values(full, k), b.values(full, k)]
            )
            estimate, low, high = stats.paired_difference(a_values, b_values)
            tests = []
            for seed in seeds if k == "top1" else []:
                a_run, b_run = (next(r for r in row.runs if r.seed == seed) for row in (a, b))
                _, (a_right, b_right) = stats.on_common_videos(
                    [(r.correct[full][0], r.correct[full][1][k]) for r in (a_run, b_run)]
                )
                tests.append({"seed": seed, **stats.mcnemar(a_right > 0, b_right > 0)})
            sentence = stats.comparison_sentence(
                a.spec["name"],
                b.spec["name"],
                metric,
                estimate,
                low,
                high,
                [t["p"] for t in tests],
                seeds,
            )
            found.append(
                {
                    "a": a.key,
                    "b": b.key,
                    "metric": k,
                    "videos": len(videos),
                    "difference": estimate,
                    "low": low,
                    "high": high,
                    "mcnemar": tests,
                    "sentence": sentence,
                }
            )
    return found


# ---------------------------------------------------------------- plots


def save_figure(fig: Figure, out_dir: Path, stem: str) -> None:
    """PNG (for the report) and PDF (for a paper); the PDF without a creation date."""
    for ext, extra in (("png", {"dpi": 150}), ("pdf", {"metadata": {"CreationDate": None}})):
        with atomic_write(out_dir / f"{stem}.{ext}", "wb") as handle:
            fig.savefig(handle, format=ext, bbox_inches="tight", **extra)


def read_train_log(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """train_log.jsonl -> (step records, epoch records); bad lines name the file and line."""
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from None
            if record.get("type") not in ("step", "epoch"):
                raise ValueError(f"{path}:{number}: 'type' must be 'step' or 'epoch'")
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        raise ValueError(f"{path}: no records")
    return frame[frame["type"] == "step"].reset_index(drop=True), frame[
        frame["type"] == "epoch"
    ].reset_index(drop=True)


def step_epochs(steps: pd.DataFrame) -> pd.Series:
    """Fractional epoch of each step record: global steps done / steps per epoch.

    The fine-tune logs a step record every few steps and always at the last step of an
    epoch, whose `step` (optimiser steps done) is then (epoch + 1) x steps per epoch."""
    last = steps.groupby("epoch")["step"].max()
    per_epoch = last.iloc[0] / (last.index[0] + 1)
    return steps["step"] / per_epoch


def plot_training_curves(
    logs: dict[str, tuple[str, pd.DataFrame, pd.DataFrame]], out_dir: Path
) -> None:
    """Loss, lr and validation Top-1 per epoch for each fine-tuned model (train_log.jsonl of
    k400ft.finetune: step records {epoch, step, loss (mean since the previous record), lr
    (the schedule's, i.e. the head's; layer-wise decay scales lower layers down)}, epoch records
    {epoch (0-based), loss (epoch mean), val_top1, ...}; an epoch record is plotted at the
    end of its epoch)."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)
    for i, (name, steps, epochs) in enumerate(logs.values()):
        colour, dashes = f"C{i}", ("-", "--", ":", "-.")[i % 4]  # equal lr schedules overlap
        if not steps.empty:
            x = step_epochs(steps)
            ax_loss.plot(x, steps["loss"], color=colour, alpha=0.3, lw=0.8)
            ax_lr.plot(x, steps["lr"], color=colour, ls=dashes, label=name)
        if not epochs.empty:
            ax_loss.plot(epochs["epoch"] + 1, epochs["loss"], color=colour, marker=".", label=name)
            ax_val.plot(
                epochs["epoch"] + 1, epochs["val_top1"], color=colour, marker=".", label=name
            )
    for ax, title in (
        (ax_loss, "train loss (steps; dots: epoch mean)"),
        (ax_lr, "learning rate"),
        (ax_val, "validation Top-1 (%), single view"),
    ):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if logs:
        ax_val.legend(fontsize=8)
    else:
        for ax in (ax_loss, ax_lr, ax_val):
            ax.text(
                0.5, 0.5, "no fine-tuned model", ha="center", va="center", transform=ax.transAxes
            )
    save_figure(fig, out_dir, "training_curves")


def plot_views(table: pd.DataFrame, out_dir: Path) -> Figure:
    """Top-1 and Top-5 against the number of views (1x1, 1xC, Sx1, SxC): bars at the mean
    over seeds, whiskers at the 95% interval (pooled over seeds). Returns the figure."""
    subsets = subset_names(table)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(subsets))
    for i, (_, r) in enumerate(table.iterrows()):
        for ax, k in zip(axes, ("top1", "top5"), strict=True):
            values = np.array([r[f"{k}_{s}"] for s in subsets])
            low, high = ([r[f"{k}_{s}_{end}"] for s in subsets] for end in ("low", "high"))
            errors = np.clip([values - low, high - values], 0, None)  # below, above
            at = x + (i - (len(table) - 1) / 2) * width
            bars = ax.bar(at, values, width, label=r["model"])
            ax.errorbar(
                at, values, yerr=errors, fmt="none", ecolor="black", elinewidth=0.8, capsize=2
            )
            ax.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center")
    for ax, title in zip(axes, ("Top-1 (%)", "Top-5 (%)"), strict=True):
        ax.set_xticks(
            x, [f"{s}\n({eval_views(s)} view{'s' * (eval_views(s) > 1)})" for s in subsets]
        )
        ax.set_title(f"{title}; whiskers: 95% interval", fontsize=10)
        ax.set_xlabel("segments x crops")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    save_figure(fig, out_dir, "accuracy_vs_views")
    return fig


def eval_views(subset: str) -> int:
    segments, crops = subset.split("x")
    return int(segments) * int(crops)


def read_labels(path: Path) -> list[str]:
    """labels.csv (index,name) -> names by index; checks the indices are 0..K-1."""
    frame = pd.read_csv(path)
    if list(frame.columns[:2]) != ["index", "name"]:
        raise ValueError(f"{path}: expected columns index,name, got {list(frame.columns)}")
    if frame["index"].tolist() != list(range(len(frame))):
        raise ValueError(f"{path}: indices are not 0..{len(frame) - 1} in order")
    return frame["name"].astype(str).tolist()


def per_class(logits: dict[str, np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-class Top-1 in percent [K], NaN for a class without test videos; confusion counts
    [K, K] with rows = true class, columns = predicted), over all saved views."""
    scores = metrics.aggregate(
        logits["logits"], logits["video"], logits["segment"], logits["crop"], logits["label"]
    )
    predicted = scores.probs.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (scores.label, predicted), 1)
    return class_accuracy(confusion), confusion


def class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Per-class Top-1 in percent from confusion counts; NaN for a class without videos."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * np.diag(confusion) / totals, np.nan)


def confused_pairs(confusion: np.ndarray, top: int) -> list[tuple[int, int, int]]:
    """The `top` largest off-diagonal counts as (true, predicted, count), largest first,
    ties by (true, predicted) ascending; pairs with count 0 are left out."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    true, pred = np.nonzero(off)
    order = np.lexsort((pred, true, -off[true, pred]))[:top]
    return [(int(true[i]), int(pred[i]), int(off[true[i], pred[i]])) for i in order]


def plot_per_class(rows: list[RowResult], labels: list[str], out_dir: Path, top: int = 10) -> None:
    """Per-class Top-1 sorted (one line per model) and each model's most-confused pairs (the
    confusions of a model's seeds summed)."""
    fig = Figure(figsize=(11, 3.5 + 2.6 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(1 + len(rows), 1, height_ratios=[1.4] + [1] * len(rows))
    ax = fig.add_subplot(grid[0])
    for i, row in enumerate(rows):
        confusion = sum(per_class(run.logits, len(labels))[1] for run in row.runs)
        accuracy = class_accuracy(confusion)
        values = np.sort(accuracy[~np.isnan(accuracy)])[::-1]
        ax.plot(np.arange(1, len(values) + 1), values, color=f"C{i}", label=row.spec["name"])
        pairs = confused_pairs(confusion, top)
        sub = fig.add_subplot(grid[1 + i])
        if pairs:
            names = [f"{labels[t]} → {labels[p]}" for t, p, _ in pairs][::-1]
            sub.barh(np.arange(len(pairs)), [c for _, _, c in pairs][::-1], color=f"C{i}")
            sub.set_yticks(np.arange(len(pairs)), names, fontsize=7)
        else:
            sub.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=sub.transAxes)
        sub.set_title(
            f"{row.spec['name']}: most confused (true → predicted), test videos", fontsize=10
        )
        sub.set_xlabel("videos" if len(row.runs) == 1 else f"videos x {len(row.runs)} seeds")
        sub.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("per-class Top-1 (%), classes sorted by accuracy", fontsize=10)
    ax.set_xlabel("class rank")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out_dir, "per_class")


# ---------------------------------------------------------------- provenance


def _summary(values: pd.Series, how: str) -> float | None:
    """mean/max of a benchmark column, None where Snakemake wrote NA."""
    value = getattr(pd.to_numeric(values, errors="coerce"), how)()
    return None if pd.isna(value) else round(float(value), 3)


def read_benchmarks(folder: Path) -> dict[str, dict]:
    """Snakemake benchmark TSVs under `folder` ->
    {"<stage>/<name>": {wall_s, cpu_time_s, max_rss_mb}} (mean over repeats; RSS max)."""
    stages = {}
    for path in sorted(folder.rglob("*.tsv")) if folder.is_dir() else []:
        frame = pd.read_csv(path, sep="\t")
        if "s" not in frame:
            raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column)")
        stages[path.relative_to(folder).with_suffix("").as_posix()] = {
            key: _summary(frame[column], how) if column in frame else None
            for key, column, how in (
                ("wall_s", "s", "mean"),
                ("cpu_time_s", "cpu_time", "mean"),
                ("max_rss_mb", "max_rss", "max"),
            )
        }
    return stages


def finetune_record(train_log: Path) -> dict | None:
    """The fine-tune's spec.json (written beside train_log.jsonl with final.pt): its spec hash,
    identity and plan (world size, global batch, accumulation, precision, device)."""
    path = train_log.parent / "spec.json"
    if not path.is_file():
        return None
    with open(path) as handle:
        resolved = json.load(handle)
    return {
        "spec_sha256": provenance.json_sha256(resolved.get("spec")),
        "identity": resolved.get("identity"),
        "plan": resolved.get("plan"),
        "torch": resolved.get("torch"),
    }


def provenance_record(
    spec: dict,
    rows: list[RowResult],
    logs: dict,
    benchmarks: Path,
    plan: Path | None = None,
    comparisons: list[dict] | None = None,
) -> dict:
    """Where every number of the table comes from (per evaluated run), what it cost (and,
    when the `plan` stage has run, what it was planned to cost: its cost.json), and the
    comparisons' numbers."""
    return {
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": provenance.git_state(),
        "report_spec_sha256": provenance.json_sha256(spec),
        "rows": {
            run.key: {
                "name": row.spec["name"],
                "seed": run.seed,
                "top1": run.metrics["top1"],
                "top5": run.metrics["top5"],
                "videos": run.metrics["videos"],
                "excluded": len(run.metrics["excluded"]),
                "weights": run.metrics.get("weights"),
                "weights_format": run.metrics.get("weights_format"),
                "weights_sha256": run.metrics.get("weights_sha256"),
                "evaluate_spec_sha256": run.metrics.get("spec_sha256"),
                "evaluate_wall_time_s": run.metrics.get("wall_time_s"),
                "evaluate_environment": run.metrics.get("environment"),
                "train_log": str(logs[run.key]) if run.key in logs else None,
                "finetune": finetune_record(logs[run.key]) if run.key in logs else None,
            }
            for row in rows
            for run in row.runs
        },
        "comparisons": comparisons or [],
        "report_environment": provenance.host(("numpy", "pandas", "matplotlib", "scipy")),
        "stages": read_benchmarks(benchmarks),
        "cost_plan": json.loads(plan.read_text()) if plan is not None and plan.exists() else None,
    }


def make_report(
    spec: dict,
    metrics_paths: list[str],
    logits_paths: list[str],
    train_log_paths: list[str],
    labels_path: str,
    benchmarks: str,
    out_dir: str,
    plan: str | None = None,
) -> pd.DataFrame:
    """Write every report output into out_dir; returns the main table. `plan`: the plan
    stage's cost.json, included in provenance.json when it exists."""
    out = Path(out_dir)
    rows = load_rows(spec, metrics_paths, logits_paths)
    runs = run_spec(spec)
    finetuned = [run for run, (row, _) in runs.items() if spec["rows"][row]["finetuned"]]
    log_paths = by_row(train_log_paths, finetuned, "--train-logs")
    logs = {}
    for run in finetuned:
        row, seed = runs[run]
        several = len(spec["rows"][row]["runs"]) > 1
        name = spec["rows"][row]["name"] + (f" (seed {seed})" if several else "")
        logs[run] = (name, *read_train_log(log_paths[run]))
    labels = read_labels(Path(labels_path))
    for row in rows:
        for run in row.runs:
            if run.logits["logits"].shape[1] != len(labels):
                raise ValueError(
                    f"run {run.key}: {run.logits['logits'].shape[1]} classes in logits, "
                    f"{len(labels)} in {labels_path}"
                )
    full = "{num_segments}x{num_crops}".format(**spec["evaluate"])
    table, every_run = results_tables(rows, full)
    comparisons = compare(rows, full)
    seeds = {
        row: ", ".join(MISSING if s is None else str(s) for s in r["runs"].values())
        for row, r in spec["rows"].items()
    }
    tables.write_tables(table, every_run, seeds, comparisons, out)
    plot_training_curves(logs, out)
    plot_views(table, out)
    plot_per_class(rows, labels, out)
    record = provenance_record(
        spec, rows, log_paths, Path(benchmarks), plan and Path(plan), comparisons
    )
    tables.write_text(out / "provenance.json", json.dumps(record, indent=2) + "\n")
    for r in table.itertuples():
        log.info(
            "%s: Top-1 %.2f [%.2f, %.2f]  Top-5 %.2f [%.2f, %.2f]  (%d videos, %s, seeds %s)",
            r.model,
            r.top1,
            r.top1_low,
            r.top1_high,
            r.top5,
            r.top5_low,
            r.top5_high,
            r.videos,
            r.views,
            seeds[r.key],
        )
    for comparison in comparisons:
        log.info("%s", comparison["sentence"])
    return table
