"""k400ft.dataplan: the data preparation's cost from the miniature archive served on
127.0.0.1 (one HEAD per part, a sample resized), and the refusal before any part's byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kinetics as script
import pytest
from conftest import MINI_KINETICS
from fakearchive import FakeArchive

from k400ft import dataplan

ARCHIVE = MINI_KINETICS["archive"]
RESIZE = {"short_side": 32, "crf": 23, "preset": "veryfast", "tune": "none", "keyint": None}


def test_peak_disk_with_and_without_the_archives():
    assert dataplan.peak_disk(100, 101, 40, True, 30) == 241
    assert dataplan.peak_disk(100, 101, 40, False, 30) == 171
    assert dataplan.peak_disk(100, 101, 40, False, 500) == 241  # never more than them all


def spec(base_url: str, root: Path, **changes) -> dict:
    return {
        "base_url": base_url,
        "lists": ARCHIVE["lists"],
        "parts": ARCHIVE["parts"],
        "replacement": ARCHIVE["replacement"],
        "connections": 2,
        "keep_archives": True,
        "root": str(root),
        "folders": [str(root / "archives")],
        "resize": RESIZE,
        "resize_videos": 3,
        **changes,
    }


def inputs(mini_archive: Path) -> tuple[dict, list[str]]:
    lists = {s: str(mini_archive / ARCHIVE["lists"][s]) for s in ("train", "val")}
    return lists, [str(mini_archive / ARCHIVE["annotations"][s]) for s in ("train", "val")]


def test_the_plan_heads_each_part_and_measures_the_resize_on_a_sample(mini_archive, tmp_path):
    lists, annotations = inputs(mini_archive)
    with FakeArchive(mini_archive) as archive:
        record = dataplan.plan_data(spec(archive.url, tmp_path / "k400"), lists, annotations)
    parts = [f"{s}/part_{n}.tar.gz" for s in ("train", "val") for n in range(ARCHIVE["parts"][s])]
    parts.append(ARCHIVE["replacement"])
    heads = sorted(r.path for r in archive.requests if r.method == "HEAD")
    assert heads == sorted(parts)  # one HEAD per part
    assert [r.path for r in archive.requests if r.method == "GET"] == ["val/part_0.tar.gz"]
    assert record["archive_bytes"] == sum((mini_archive / p).stat().st_size for p in parts)
    assert record["parts"] == {"train": 3, "val": 2, "replacement": 1}
    rows = sum(len(Path(a).read_text().splitlines()) - 1 for a in annotations)
    assert record["listed_videos"] == rows
    resize = record["resize"]
    assert resize["videos"] + resize["failed"] == 3 and resize["core_s_per_video"] > 0
    assert resize["core_hours"] == pytest.approx(resize["core_s_per_video"] * rows / 3600)
    assert record["resized_bytes"] == int(record["extracted_bytes"] * resize["bytes_ratio"])
    assert record["peak_bytes"] == (
        record["archive_bytes"] + record["extracted_bytes"] + record["resized_bytes"]
    )
    assert record["fits"] and record["extract_ratio"] > 1  # gzip shrinks the tiny videos
    text = "\n".join(dataplan.render_lines(record))
    assert re.search(r"- to fetch: [\d.]+ MB in 6 parts \(train 3, val 2, replacement 1", text)
    assert "core-s per video (" in text and "peak disk:" in text and ": fits" in text


def test_without_the_archives_the_peak_holds_a_window_of_parts(mini_archive, tmp_path):
    lists, annotations = inputs(mini_archive)
    with FakeArchive(mini_archive) as archive:
        base = spec(archive.url, tmp_path, keep_archives=False, connections=1, resize=None)
        record = dataplan.plan_data(base, lists, annotations)
    sizes = sorted(
        (p.stat().st_size for p in mini_archive.rglob("*.t*gz")), reverse=True
    )  # parts and the replacement
    assert record["resize"] is None and record["resized_bytes"] == 0
    assert record["peak_bytes"] == record["extracted_bytes"] + sum(sizes[:2])
    assert record["peak_other_bytes"] == record["archive_bytes"] + record["extracted_bytes"]


@pytest.mark.parametrize("early", [True, False], ids=["before-the-sample", "after-the-sample"])
def test_a_disk_too_small_is_refused_with_the_figures(mini_archive, tmp_path, monkeypatch, early):
    """Less free than the archives and as much extracted: refused before a byte of any part
    is read (not even the sample's); enough for that but not for the extracted bytes the
    sample measures (the tiny videos shrink in gzip) and the resized tree: refused once the
    sample is in. Either way the message gives the peak's terms, what is free and what to
    change; exit 2."""
    lists, annotations = inputs(mini_archive)
    archives = sum(p.stat().st_size for p in mini_archive.rglob("*.t*gz"))
    free = 10 if early else 2 * archives + 1
    monkeypatch.setattr(dataplan, "free_bytes", lambda root: (free, "/data"))
    with FakeArchive(mini_archive) as archive:
        base = spec(archive.url, tmp_path / "k400")
        with pytest.raises(dataplan.fetch.SpaceError) as refused:
            dataplan.plan_data(base, lists, annotations)
        gets = [r.path for r in archive.requests if r.method == "GET"]
        assert gets == ([] if early else ["val/part_0.tar.gz"])
        args = ["plan", "--spec", json.dumps(base), "--splits", "train", "val"]
        args += ["--lists", *lists.values(), "--annotations", *annotations]
        code = script.main(
            [*args, "--json", str(tmp_path / "d.json"), "--md", str(tmp_path / "d.md")]
        )
    message = str(refused.value)
    assert re.search(
        rf"kinetics.root {tmp_path}/k400 \(file system of /data\): [\d.]+ MB free, the data "
        r"preparation needs (at least )?[\d.]+ MB at its peak \(archives [\d.]+ MB \+ "
        r"extracted [\d.]+ MB \+ resized [\d.]+ MB, keep_archives true",
        message,
    ), message
    assert "set kinetics.keep_archives: false (peak" in message and "Nothing was fetched" in message
    assert code == 2 and not (tmp_path / "d.json").exists()


def test_the_plan_stops_on_a_list_that_disagrees_with_the_config(mini_archive, tmp_path, capsys):
    lists, annotations = inputs(mini_archive)
    base = spec("http://127.0.0.1:9", tmp_path, parts={"train": 4, "val": 2})
    args = ["plan", "--spec", json.dumps(base), "--splits", "train", "val"]
    args += ["--lists", *lists.values(), "--annotations", *annotations]
    assert (
        script.main([*args, "--json", str(tmp_path / "d.json"), "--md", str(tmp_path / "m")]) == 2
    )
    err = capsys.readouterr().err
    assert (
        "k400_train_path.txt: the list names 3 parts, config kinetics.archive.parts.train says 4"
        in err
    )


def test_the_plans_cost_md_carries_the_data_preparation_lines():
    """The figures of the real archive's sizes (pure: `figures`), as cost.md shows them."""
    from k400ft import plan

    disk = {"free_bytes": 2_000 * 10**9, "filesystem": "/data", "held_bytes": 0}
    disk["unavailable"] = []
    resize = {"videos": 8, "failed": 0, "core_s_per_video": 2.0, "bytes_ratio": 0.4}
    resize["settings"] = RESIZE | {"short_side": 320}
    sizes = [1_800 * 10**6] * 262 + [900 * 10**6]
    parts = {"train": 242, "val": 20, "replacement": 1}
    base = spec("https://h", Path("/data/k400"), keep_archives=False, connections=8)
    record = dataplan.figures(parts, sizes, 266_440, 1.01, resize, base, disk)
    assert record["extracted_bytes"] == int(sum(sizes) * 1.01)
    assert record["resized_bytes"] == int(record["extracted_bytes"] * 0.4)
    window = 16 * 1_800 * 10**6  # the 2 x 8 connections largest parts
    assert record["peak_bytes"] == record["extracted_bytes"] + record["resized_bytes"] + window
    assert record["resize"]["core_hours"] == pytest.approx(2.0 * 266_440 / 3600)
    text = plan.render_markdown(
        {
            "node": {"device": "cpu", "cpus": 4},
            "sample": {"train_videos": 8, "test_videos": 3},
            "launch": {"gpus": 1, "unit": "GPU", "eval_gpus": 1, "epochs": 3, "train_videos": 16},
            "models": {},
            "data": record,
        }
    )
    assert "## Data preparation (Kinetics-400 from its archive)" in text
    assert "- to fetch: 472.5 GB in 263 parts (train 242, val 20, replacement 1;" in text
    assert "-> 148 core-hours for the 266440 listed" in text
    assert "keep_archives false); with keep_archives true:" in text and ": fits" in text
