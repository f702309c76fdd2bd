"""The results table, plots and provenance from the evaluation and fine-tuning outputs.

Inputs are found by folder: results/evaluate/<row>/{metrics.json, logits.npz} and
results/finetune/<model>/train_log.jsonl, so each path maps to its table row by its parent
folder's name. Everything is recomputed from saved files (no model, no torch): the views
ablation (1x1, 1xC, Sx1, SxC) and per-class accuracy come from the per-view logits.

Outputs (atomic): table.md (main table, views ablation, and the seed's KINETICS400.md table
filled in), table.csv, table.tex, table.html (shown inline by `snakemake --report`),
training_curves, accuracy_vs_views and per_class as PNG + PDF, provenance.json.
"""

from __future__ import annotations

import datetime
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from k400ft import metrics, provenance
from k400ft.io import atomic_write

log = logging.getLogger("k400ft.report")

MISSING = "-"  # how the seed's table shows a number that does not exist


@dataclass(frozen=True)
class RowResult:
    """Everything the report knows about one evaluated model."""

    key: str
    spec: dict  # {name, pretrain_epochs, published {top1, top5}, finetuned}
    metrics: dict  # metrics.json
    logits: dict[str, np.ndarray]  # logits.npz
    ablation: dict[str, dict[str, float]]  # view subset -> {top1, top5}


def by_row(paths: list[str], rows: list[str], what: str, required: bool = True) -> dict[str, Path]:
    """Map each path to its row by its parent folder name (<stage>/<row>/<file>).

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


def views_ablation(
    logits: dict[str, np.ndarray], num_segments: int, num_crops: int
) -> dict[str, dict[str, float]]:
    """Top-1/Top-5 for each view subset of metrics.view_subsets, from saved per-view logits."""
    keys = ("logits", "video", "segment", "crop", "label")
    return {
        name: metrics.subset_accuracy(*(logits[key] for key in keys), segments, crops)
        for name, (segments, crops) in metrics.view_subsets(num_segments, num_crops).items()
    }


def load_rows(spec: dict, metrics_paths: list[str], logits_paths: list[str]) -> list[RowResult]:
    """Read every row's metrics and logits, in the spec's row order."""
    rows = list(spec["rows"])
    metrics_by_row = by_row(metrics_paths, rows, "--metrics")
    logits_by_row = by_row(logits_paths, rows, "--logits")
    wanted = {
        "num_frames": spec["num_frames"],
        "num_segments": spec["evaluate"]["num_segments"],
        "num_crops": spec["evaluate"]["num_crops"],
    }
    results = []
    for row in rows:
        with open(metrics_by_row[row]) as handle:
            row_metrics = json.load(handle)
        if stale := {k: row_metrics.get(k) for k, v in wanted.items() if row_metrics.get(k) != v}:
            raise ValueError(
                f"{metrics_by_row[row]}: evaluated with {stale}, the config asks for "
                f"{wanted}: re-run the evaluation"
            )
        logits = load_logits(logits_by_row[row])
        ablation = views_ablation(logits, row_metrics["num_segments"], row_metrics["num_crops"])
        results.append(RowResult(row, spec["rows"][row], row_metrics, logits, ablation))
    return results


def _delta(value: float | None, published: float | None) -> float | None:
    return None if value is None or published is None else value - published


def results_table(rows: list[RowResult]) -> pd.DataFrame:
    """One row per model: the numbers of every table format (unrounded)."""
    records = []
    for row in rows:
        published = row.spec.get("published") or {}
        m = row.metrics
        record = {
            "key": row.key,
            "model": row.spec["name"],
            "pretrain_epochs": row.spec["pretrain_epochs"],
            "finetuned": "ours" if row.spec["finetuned"] else "released",
            "views": f"{m['num_frames']}x{m['num_segments']}x{m['num_crops']}",
            "top1": m["top1"],
            "top5": m["top5"],
            "videos": m["videos"],
            "excluded": len(m["excluded"]),
            "published_top1": published.get("top1"),
            "published_top5": published.get("top5"),
            "delta_top1": _delta(m["top1"], published.get("top1")),
            "delta_top5": _delta(m["top5"], published.get("top5")),
        }
        for name, acc in row.ablation.items():
            record[f"top1_{name}"] = acc["top1"]
            record[f"top5_{name}"] = acc["top5"]
        records.append(record)
    return pd.DataFrame.from_records(records)


def fmt(value: float | None, signed: bool = False) -> str:
    """One decimal like the published numbers; '-' where there is none (as in the seed)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    return f"{value:+.1f}" if signed else f"{value:.1f}"


HEADERS = (
    "Model",
    "Pretrain epochs",
    "Fine-tune",
    "Frames x views",
    "Top-1",
    "Top-5",
    "Videos",
    "Excluded",
    "Published Top-1",
    "Published Top-5",
    "Δ Top-1",
    "Δ Top-5",
)


def display_rows(table: pd.DataFrame) -> list[list[str]]:
    """The main table's cells as text, in HEADERS order."""
    return [
        [
            r.model,
            str(r.pretrain_epochs),
            r.finetuned,
            r.views,
            fmt(r.top1),
            fmt(r.top5),
            str(r.videos),
            str(r.excluded),
            fmt(r.published_top1),
            fmt(r.published_top5),
            fmt(r.delta_top1, signed=True),
            fmt(r.delta_top5, signed=True),
        ]
        for r in table.itertuples()
    ]


def ablation_rows(table: pd.DataFrame, subsets: list[str]) -> list[list[str]]:
    """Views ablation cells 'Top-1 / Top-5' per subset."""
    return [
        [r["model"], *(f"{fmt(r[f'top1_{s}'])} / {fmt(r[f'top5_{s}'])}" for s in subsets)]
        for _, r in table.iterrows()
    ]


def subset_names(table: pd.DataFrame) -> list[str]:
    return [c.removeprefix("top1_") for c in table.columns if c.startswith("top1_")]


def markdown_table(headers: list[str] | tuple[str, ...], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def seed_table(table: pd.DataFrame) -> str:
    """The seed's KINETICS400.md results table (models as columns), filled in."""
    head = "".join(f'<th valign="bottom">{html.escape(m)}</th>\n' for m in table["model"])

    def line(label: str, cells: list[str]) -> str:
        body = "".join(f'<td align="center">{html.escape(c)}</td>\n' for c in cells)
        return f'<tr><td align="left">{label}</td>\n{body}</tr>\n'

    return (
        '<table><tbody>\n<th valign="bottom"></th>\n'
        + head
        + line("pretrain epoch", [str(v) for v in table["pretrain_epochs"]])
        + line("views", list(table["views"]))
        + line("Top-1", [fmt(v) for v in table["top1"]])
        + line("Top-5", [fmt(v) for v in table["top5"]])
        + "</tbody></table>\n"
    )


def render_markdown(table: pd.DataFrame) -> str:
    subsets = subset_names(table)
    return (
        "# Kinetics-400 fine-tuning: Top-1 / Top-5 (%)\n\n"
        "Softmax per view, mean over a video's views, Top-k over unique videos; "
        "broken videos are excluded and counted.\n\n"
        + markdown_table(HEADERS, display_rows(table))
        + "\n## Accuracy by views (Top-1 / Top-5, from the saved per-view logits)\n\n"
        "1x1 = middle segment, centre crop; 1xC = middle segment, every crop; "
        "Sx1 = every segment, centre crop.\n\n"
        + markdown_table(["Model", *subsets], ablation_rows(table, subsets))
        + "\n## As in the seed's KINETICS400.md\n\n"
        + seed_table(table)
    )


def latex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
    ):
        text = text.replace(char, escaped)
    return text


def render_latex(table: pd.DataFrame) -> str:
    """A booktabs tabular of the main table."""
    headers = [latex_escape(h).replace("Δ", r"$\Delta$") for h in HEADERS]
    lines = [
        r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}",
        r"\toprule",
        " & ".join(headers) + r" \\",
        r"\midrule",
        *(" & ".join(map(latex_escape, row)) + r" \\" for row in display_rows(table)),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


HTML_STYLE = (
    "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#eee}"
)


def html_table(headers: list[str] | tuple[str, ...], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in cells
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def render_html(table: pd.DataFrame) -> str:
    """A self-contained page (inline style, no external resources: works offline)."""
    subsets = subset_names(table)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Kinetics-400 results</title>'
        f"<style>{HTML_STYLE}</style></head><body>\n"
        "<h3>Kinetics-400 fine-tuning: Top-1 / Top-5 (%)</h3>\n"
        + html_table(HEADERS, display_rows(table))
        + "<h3>Accuracy by views (Top-1 / Top-5)</h3>\n"
        + html_table(["Model", *subsets], ablation_rows(table, subsets))
        + "</body></html>\n"
    )


def write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_tables(table: pd.DataFrame, out_dir: Path) -> None:
    write_text(out_dir / "table.md", render_markdown(table))
    write_text(out_dir / "table.tex", render_latex(table))
    write_text(out_dir / "table.html", render_html(table))
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, float_format="%.4f")
    write_text(out_dir / "table.csv", buffer.getvalue())


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


def plot_views(table: pd.DataFrame, out_dir: Path) -> None:
    """Top-1 and Top-5 against the number of views (1x1, 1xC, Sx1, SxC)."""
    subsets = subset_names(table)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(subsets))
    for i, (_, r) in enumerate(table.iterrows()):
        for ax, k in zip(axes, ("top1", "top5"), strict=True):
            values = [r[f"{k}_{s}"] for s in subsets]
            bars = ax.bar(x + (i - (len(table) - 1) / 2) * width, values, width, label=r["model"])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
    for ax, title in zip(axes, ("Top-1 (%)", "Top-5 (%)"), strict=True):
        ax.set_xticks(
            x, [f"{s}\n({eval_views(s)} view{'s' * (eval_views(s) > 1)})" for s in subsets]
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("segments x crops")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    save_figure(fig, out_dir, "accuracy_vs_views")


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
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(totals > 0, 100.0 * np.diag(confusion) / totals, np.nan)
    return accuracy, confusion


def confused_pairs(confusion: np.ndarray, top: int) -> list[tuple[int, int, int]]:
    """The `top` largest off-diagonal counts as (true, predicted, count), largest first,
    ties by (true, predicted) ascending; pairs with count 0 are left out."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    true, pred = np.nonzero(off)
    order = np.lexsort((pred, true, -off[true, pred]))[:top]
    return [(int(true[i]), int(pred[i]), int(off[true[i], pred[i]])) for i in order]


def plot_per_class(rows: list[RowResult], labels: list[str], out_dir: Path, top: int = 10) -> None:
    """Per-class Top-1 sorted (one line per model) and each model's most-confused pairs."""
    fig = Figure(figsize=(11, 3.5 + 2.6 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(1 + len(rows), 1, height_ratios=[1.4] + [1] * len(rows))
    ax = fig.add_subplot(grid[0])
    for i, row in enumerate(rows):
        accuracy, confusion = per_class(row.logits, len(labels))
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
        sub.set_xlabel("videos")
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
    spec: dict, rows: list[RowResult], logs: dict, benchmarks: Path, plan: Path | None = None
) -> dict:
    """Where every number of the table comes from, and what it cost (and, when the `plan`
    stage has run, what it was planned to cost: its cost.json)."""
    return {
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": provenance.git_state(),
        "report_spec_sha256": provenance.json_sha256(spec),
        "rows": {
            row.key: {
                "name": row.spec["name"],
                "top1": row.metrics["top1"],
                "top5": row.metrics["top5"],
                "videos": row.metrics["videos"],
                "excluded": len(row.metrics["excluded"]),
                "weights": row.metrics.get("weights"),
                "weights_format": row.metrics.get("weights_format"),
                "weights_sha256": row.metrics.get("weights_sha256"),
                "evaluate_spec_sha256": row.metrics.get("spec_sha256"),
                "evaluate_wall_time_s": row.metrics.get("wall_time_s"),
                "evaluate_environment": row.metrics.get("environment"),
                "train_log": str(logs[row.key]) if row.key in logs else None,
                "finetune": finetune_record(logs[row.key]) if row.key in logs else None,
            }
            for row in rows
        },
        "report_environment": provenance.host(("numpy", "pandas", "matplotlib")),
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
    """Write every report output into out_dir; returns the table. `plan`: the plan stage's
    cost.json, included in provenance.json when it exists."""
    out = Path(out_dir)
    rows = load_rows(spec, metrics_paths, logits_paths)
    finetuned = [key for key, row in spec["rows"].items() if row["finetuned"]]
    log_paths = by_row(train_log_paths, finetuned, "--train-logs")
    logs = {key: (spec["rows"][key]["name"], *read_train_log(log_paths[key])) for key in finetuned}
    labels = read_labels(Path(labels_path))
    for row in rows:
        if row.logits["logits"].shape[1] != len(labels):
            raise ValueError(
                f"row {row.key}: {row.logits['logits'].shape[1]} classes in logits, "
                f"{len(labels)} in {labels_path}"
            )
    table = results_table(rows)
    write_tables(table, out)
    plot_training_curves(logs, out)
    plot_views(table, out)
    plot_per_class(rows, labels, out)
    record = provenance_record(spec, rows, log_paths, Path(benchmarks), plan and Path(plan))
    write_text(out / "provenance.json", json.dumps(record, indent=2) + "\n")
    for r in table.itertuples():
        log.info(
            "%s: Top-1 %.2f  Top-5 %.2f  (%d videos, %s)",
            r.model,
            r.top1,
            r.top5,
            r.videos,
            r.views,
        )
    return table
