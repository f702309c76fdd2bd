"""The results table as text: markdown, LaTeX, HTML and CSV (written atomically).

The numbers come from `k400ft.report` as data frames, unrounded: the main table (one row
per model or released weights: Top-k mean over seeds ± sd, the 95% interval, the published
value and whether it lies inside), and for the CSV one row per run. Here they are only
formatted: one decimal like the published numbers, '-' where there is none (as in the seed's
KINETICS400.md, whose table is filled in too).
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from k400ft import stats
from k400ft.io import atomic_write

MISSING = "-"  # how the seed's table shows a number that does not exist


def fmt(value: float | None, signed: bool = False) -> str:
    """One decimal like the published numbers; '-' where there is none (as in the seed)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def fmt_mean(value: float, sd: float | None) -> str:
    """'79.1', or '79.1 ± 0.2' over several seeds."""
    return fmt(value) if sd is None or np.isnan(sd) else f"{value:.1f} ± {sd:.1f}"


def fmt_delta(delta: float | None, inside: bool | None) -> str:
    """'+0.1 (inside)': ours minus published, and whether published lies inside our interval."""
    if delta is None or (isinstance(delta, float) and np.isnan(delta)):
        return MISSING
    return f"{delta:+.1f} ({'inside' if inside else 'outside'})"


HEADERS = (
    "Model",
    "Pretrain epochs",
    "Fine-tune",
    "Frames x views",
    "Seeds",
    "Top-1",
    "Top-1 95% CI",
    "Top-5",
    "Top-5 95% CI",
    "Videos",
    "Excluded",
    "Published Top-1",
    "Published Top-5",
    "Δ Top-1",
    "Δ Top-5",
)


def display_rows(table: pd.DataFrame, seeds: dict[str, str]) -> list[list[str]]:
    """The main table's cells as text, in HEADERS order; `seeds`: each row's seeds as text."""
    return [
        [
            r.model,
            str(r.pretrain_epochs),
            r.finetuned,
            r.views,
            seeds[r.key],
            fmt_mean(r.top1, r.top1_sd),
            f"[{fmt(r.top1_low)}, {fmt(r.top1_high)}]",
            fmt_mean(r.top5, r.top5_sd),
            f"[{fmt(r.top5_low)}, {fmt(r.top5_high)}]",
            str(r.videos),
            str(r.excluded),
            fmt(r.published_top1),
            fmt(r.published_top5),
            fmt_delta(r.delta_top1, r.published_top1_inside),
            fmt_delta(r.delta_top5, r.published_top5_inside),
        ]
        for r in table.itertuples()
    ]


def ablation_rows(table: pd.DataFrame, subsets: list[str]) -> list[list[str]]:
    """Views ablation cells 'Top-1 / Top-5' per subset (mean over seeds)."""
    return [
        [r["model"], *(f"{fmt(r[f'top1_{s}'])} / {fmt(r[f'top5_{s}'])}" for s in subsets)]
        for _, r in table.iterrows()
    ]


def subset_names(table: pd.DataFrame) -> list[str]:
    return [c.removeprefix("top1_") for c in table.columns if re.fullmatch(r"top1_\d+x\d+", c)]


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


MAIN_NOTE = (
    "Softmax per view, mean over a video's views, Top-k over unique videos; broken videos "
    "are excluded and counted. Top-k: mean over the fine-tuning seeds (± sd over seeds when "
    f"there are several). 95% CI: bootstrap over the test videos (BCa, {stats.RESAMPLES:,} "
    "resamples, fixed seed; several seeds pooled: each video's correctness averaged over "
    "them). Δ: ours "
    "minus published; inside / outside: whether the published value lies inside our interval."
)
COMPARE_NOTE = (
    "Paired difference on the videos both evaluated (first minus second; paired bootstrap, "
    "95% CI) and McNemar's exact test on Top-1 correctness (per seed)."
)


def render_markdown(table: pd.DataFrame, seeds: dict[str, str], comparisons: list[dict]) -> str:
    subsets = subset_names(table)
    compared = "".join(f"- {c['sentence']}\n" for c in comparisons) or "- (one fine-tuned model)\n"
    return (
        "# Kinetics-400 fine-tuning: Top-1 / Top-5 (%)\n\n"
        + MAIN_NOTE
        + "\n\n"
        + markdown_table(HEADERS, display_rows(table, seeds))
        + "\n## The fine-tuned models compared on the same videos\n\n"
        + COMPARE_NOTE
        + "\n\n"
        + compared
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


def render_latex(table: pd.DataFrame, seeds: dict[str, str]) -> str:
    """A booktabs tabular of the main table."""
    headers = [latex_escape(h).replace("Δ", r"$\Delta$") for h in HEADERS]
    cells = [
        [latex_escape(c).replace("±", r"$\pm$") for c in row] for row in display_rows(table, seeds)
    ]
    lines = [
        r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}",
        r"\toprule",
        " & ".join(headers) + r" \\",
        r"\midrule",
        *(" & ".join(row) + r" \\" for row in cells),
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


def render_html(table: pd.DataFrame, seeds: dict[str, str], comparisons: list[dict]) -> str:
    """A self-contained page (inline style, no external resources: works offline)."""
    subsets = subset_names(table)
    compared = "".join(f"<li>{html.escape(c['sentence'])}</li>\n" for c in comparisons)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Kinetics-400 results</title>'
        f"<style>{HTML_STYLE}</style></head><body>\n"
        "<h3>Kinetics-400 fine-tuning: Top-1 / Top-5 (%)</h3>\n"
        f"<p>{html.escape(MAIN_NOTE)}</p>\n"
        + html_table(HEADERS, display_rows(table, seeds))
        + "<h3>The fine-tuned models compared on the same videos</h3>\n"
        + f"<p>{html.escape(COMPARE_NOTE)}</p>\n<ul>\n{compared}</ul>\n"
        + "<h3>Accuracy by views (Top-1 / Top-5)</h3>\n"
        + html_table(["Model", *subsets], ablation_rows(table, subsets))
        + "</body></html>\n"
    )


def write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_tables(
    table: pd.DataFrame,
    every_run: pd.DataFrame,
    seeds: dict[str, str],
    comparisons: list[dict],
    out_dir: Path,
) -> None:
    """table.md, .tex and .html of the main table (`table`: one row per table row; `seeds`:
    each row's seeds as text), table.csv of `every_run` (unrounded)."""
    write_text(out_dir / "table.md", render_markdown(table, seeds, comparisons))
    write_text(out_dir / "table.tex", render_latex(table, seeds))
    write_text(out_dir / "table.html", render_html(table, seeds, comparisons))
    buffer = io.StringIO()
    every_run.to_csv(buffer, index=False, float_format="%.4f")
    write_text(out_dir / "table.csv", buffer.getvalue())
