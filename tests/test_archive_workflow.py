"""The workflow's data preparation for real: Snakemake runs the fetch, extract, count and
resize stages and the splits on the miniature archive served over HTTP on 127.0.0.1
(tests/fakearchive.py), a missing part included."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import MINI_DEMO, MINI_KINETICS
from fakearchive import FakeArchive
from test_workflow import snakemake

from k400ft import demo
from k400ft.encode import video_shape

ROOT = Path(__file__).resolve().parents[1]
MISSING = "val/part_1.tar.gz"


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake on the repository's Snakefile in `workdir` (its scripts/ linked there)."""
    return snakemake("-s", str(ROOT / "Snakefile"), *args, cwd=workdir, check=False, timeout=600)


@pytest.fixture(scope="module")
def prepared(mini_archive, tmp_path_factory):
    """The demo config pointed at the served miniature archive (its own tree, results,
    parts, resize to short side 32); run once with the part MISSING answering 404 and
    --keep-going, then again with it back. Yields (workdir, first run, second run, server)."""
    workdir = tmp_path_factory.mktemp("archive-run")
    (workdir / "scripts").symlink_to(ROOT / "scripts")
    with FakeArchive(mini_archive) as archive:
        config = yaml.safe_load((ROOT / "demo/config.yaml").read_text())
        del config["demo"]
        config["results"] = "results"
        config["kinetics"] |= {
            "root": "k400",
            "annotations": MINI_KINETICS["annotations"],
            "resize_short_side": 32,
        }
        config["kinetics"]["archive"] |= {
            "base_url": archive.url,
            "parts": MINI_KINETICS["archive"]["parts"],
            "connections": 2,
        }
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        archive.fault(MISSING, "missing")
        args = ["--configfile", "config.yaml", "--cores", "4", "results/splits/train.csv"]
        first = run(workdir, *args, "--keep-going", "--show-failed-logs")
        archive.faults.clear()
        second = run(workdir, *args)
        yield workdir, first, second, archive


def test_a_missing_part_fails_its_job_the_rest_go_on_and_the_summary_lists_it(prepared):
    workdir, first, _, archive = prepared
    assert first.returncode != 0
    url = f"{archive.url}/{MISSING}"
    assert f"error: {url}: HTTP 404" in first.stdout  # the failed job's log, shown
    summary = re.search(
        r"Kinetics-400: 1 of 6 parts are missing:\n  val/part_1: (.*)", first.stdout
    )
    assert summary and summary[1] == f"{url}: HTTP 404 Not Found", first.stdout[-3000:]
    assert json.loads((workdir / "results/kinetics/missing.json").read_text())[0]["url"] == url
    for part in (
        "train/part_0",
        "train/part_1",
        "train/part_2",
        "val/part_0",
        "replacement/part_0",
    ):
        assert (workdir / f"results/kinetics/extract/{part}.json").exists(), part  # --keep-going
    # kinetics.archive.connections caps the parts fetched at once (a Snakemake resource)
    assert re.search(r"Provided resources: .*kinetics_connections\W+\w*\W*2\b", first.stdout)


def test_the_rerun_fetches_only_what_is_missing_and_the_splits_read_the_resized_tree(prepared):
    workdir, _, second, archive = prepared
    assert second.returncode == 0, second.stdout[-4000:]
    kept = {
        split: sum(c.split == split and c.defect is None for c in demo.plan_clips(MINI_DEMO))
        for split in ("train", "val")
    }
    train = (workdir / "results/splits/train.csv").read_text().splitlines()
    assert len(train) == kept["train"]  # the replaced clip is whole again, the broken dropped
    assert len((workdir / "results/splits/val.csv").read_text().splitlines()) == kept["val"]
    first_video = train[0].rsplit(maxsplit=1)[0]
    assert first_video.startswith(str(workdir / "k400/train/"))
    assert video_shape(first_video)[1] == 32  # short side 32, from 48 x 64
    counts = json.loads((workdir / "results/kinetics/extract/train.json").read_text())
    assert counts["replaced"] == 1 and counts["missing"] == 0
    data = (workdir / "results/plan/data.md").read_text()
    assert "- to fetch:" in data and "6 parts (train 3, val 2, replacement 1" in data


def test_nothing_to_do_after_the_data_is_prepared_though_the_parts_are_gone(prepared):
    workdir = prepared[0]
    out = run(workdir, "results/splits/train.csv", "-n", "--configfile", "config.yaml").stdout
    assert "Nothing to be done" in out, out[-3000:]
