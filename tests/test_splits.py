"""k400ft.splits and scripts/make_splits.py on tiny Kinetics-shaped trees of real mp4 files."""

import codecs
import csv
import json
import os
import shutil

import make_splits
import pytest
import videos
from videos import frame_pattern, write_pattern_mp4, write_variant

from k400ft import splits as S
from k400ft.video import read_split_csv

HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A few real videos to copy into trees: long (100 frames), short (40 frames), broken."""
    root = tmp_path_factory.mktemp("sources")
    long_ = write_pattern_mp4(root / "long.mp4", 100, 32, 40, seed=1)
    short = write_pattern_mp4(root / "short.mp4", 40, 32, 40, seed=2)
    truncated = root / "truncated.mp4"
    truncated.write_bytes(long_.read_bytes()[: long_.stat().st_size // 2])
    text = root / "text.mp4"
    text.write_text("this is not a video\n" * 100)
    return {"long": long_, "short": short, "truncated": truncated, "text": text}


def _put(sources, kind, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "tiny":
        path.write_bytes(b"\0" * 500)
    else:
        shutil.copyfile(sources[kind], path)
    return path


def _kinetics(root, layout="annotations", num_classes=3):
    return {
        "root": str(root),
        "layout": layout,
        "annotations": {"train": "annotations/train.csv", "val": "annotations/validate.csv"},
        "video_dirs": {"train": "train", "val": "val"},
        "extensions": ["mp4", "webm"],
        "num_classes": num_classes,
    }


def annotations_tree(root, sources):
    """3 classes (names with spaces), every kind of bad file, a video in a class sub-folder."""
    train = [
        ("air drumming", "aaa", 0, 10, "long"),
        ("air drumming", "aab", 5, 15, "short"),
        ("abseiling", "bbb", 12, 22, "long"),
        ("abseiling", "bbc", 0, 10, None),  # missing
        ("zumba", "ccc", 1, 11, "empty"),
        ("zumba", "ccd", 2, 12, "truncated"),
        ("zumba", "cce", 3, 13, "text"),
        ("zumba", "ccf", 4, 14, "tiny"),
        ("zumba", "ccg", 5, 15, "long"),
        ("zumba", "ccg", 5, 15, "long"),  # listed twice
    ]
    val = [("abseiling", "vvv", 0, 10, "short"), ("zumba", "vvw", 30, 40, "long")]
    (root / "annotations").mkdir(parents=True)
    for split, rows, name in (("train", train, "train.csv"), ("val", val, "validate.csv")):
        lines = [HEADER]
        for label, yid, start, end, kind in rows:
            lines.append(f'"{label}",{yid},{start},{end},{split},False\n')
            stem = f"{yid}_{start:06d}_{end:06d}.mp4"
            if kind is not None:
                folder = root / split / (label if yid == "vvw" else "")
                _put(sources, kind, folder / stem)
        (root / "annotations" / name).write_text("".join(lines))
    return root


def test_annotations_layout(tmp_path, sources):
    root = annotations_tree(tmp_path / "k 400", sources)  # a space in every path
    out = tmp_path / "splits"
    summary = S.make_splits(_kinetics(root), tmp_path / "cache", 2, out)

    labels = list(csv.reader((out / "labels.csv").open()))
    assert labels == [["index", "name"], ["0", "abseiling"], ["1", "air drumming"], ["2", "zumba"]]
    train = read_split_csv(out / "train.csv")
    assert [(os.path.basename(p), label) for p, label in train] == [
        ("aaa_000000_000010.mp4", 1),
        ("aab_000005_000015.mp4", 1),
        ("bbb_000012_000022.mp4", 0),
        ("ccg_000005_000015.mp4", 2),
    ]
    assert all(os.path.isabs(p) and " " in p for p, _ in train)
    val = read_split_csv(out / "val.csv")
    assert [label for _, label in val] == [0, 2] and val[1][0].endswith(
        "zumba/vvw_000030_000040.mp4"
    )
    assert (out / "test.csv").read_bytes() == (out / "val.csv").read_bytes()

    dropped = {
        os.path.basename(row["path"]): row["reason"]
        for row in csv.DictReader((out / "dropped.csv").open())
    }
    assert {k: v.split(":")[0] for k, v in dropped.items()} == {
        "bbc_000000_000010.mp4": "missing",
        "ccc_000001_000011.mp4": "empty",
        "ccd_000002_000012.mp4": "undecodable",
        "cce_000003_000013.mp4": "undecodable",
        "ccf_000004_000014.mp4": "under_1KiB",
        "ccg_000005_000015.mp4": "duplicate",
    }
    train_summary = summary["splits"]["train"]
    assert train_summary["listed"] == 10 and train_summary["kept"] == 4
    assert train_summary["dropped"] == {
        "duplicate": 1,
        "empty": 1,
        "missing": 1,
        "undecodable": 2,
        "under_1KiB": 1,
    }
    assert train_summary["short_kept"] == 1 and train_summary["frames"]["min"] == 40
    assert summary["splits"]["val"]["kept"] == 2 and summary["splits"]["test"]["kept"] == 2
    assert json.loads((out / "summary.json").read_text()) == summary


def test_class_folders_layout_sorts_underscores_like_spaces(tmp_path, sources):
    root = tmp_path / "k400"
    for split, name, kind in [
        ("train", "ski_jumping/a.mp4", "long"),
        ("train", "ski(indoor)/b.mp4", "short"),
        ("train", "ski(indoor)/c.webm", "text"),
        ("train", "ski(indoor)/notes.txt", "text"),
        ("train", "ski/d.mp4", "long"),
        ("val", "ski_jumping/e.mp4", "short"),
    ]:
        _put(sources, kind, root / split / name)
    out = tmp_path / "out"
    summary = S.make_splits(_kinetics(root, "class_folders"), tmp_path / "cache", 1, out)
    names = [row[1] for row in csv.reader((out / "labels.csv").open())][1:]
    assert names == ["ski", "ski_jumping", "ski(indoor)"]  # as "ski jumping" < "ski(indoor)"
    assert [(os.path.basename(p), label) for p, label in read_split_csv(out / "train.csv")] == [
        ("d.mp4", 0),
        ("a.mp4", 1),
        ("b.mp4", 2),
    ]
    assert summary["splits"]["train"]["dropped"] == {"undecodable": 1}
    assert read_split_csv(out / "val.csv")[0][1] == 1


def test_unrecognised_trees_say_what_was_looked_for(tmp_path, sources):
    folders = tmp_path / "folders"
    _put(sources, "long", folders / "train" / "a" / "x.mp4")
    _put(sources, "long", folders / "val" / "a" / "y.mp4")
    with pytest.raises(S.SplitError, match="annotations/train.csv not found.*class_folders"):
        S.make_splits(_kinetics(folders), tmp_path / "c", 1, tmp_path / "o")

    flat = annotations_tree(tmp_path / "flat", sources)
    with pytest.raises(S.SplitError, match=r"no class folders in .*<class name>/\*\.\{mp4,webm\}"):
        S.make_splits(_kinetics(flat, "class_folders"), tmp_path / "c", 1, tmp_path / "o")

    empty_dirs = tmp_path / "nothing"
    (empty_dirs / "annotations").mkdir(parents=True)
    shutil.copytree(flat / "annotations", empty_dirs / "annotations", dirs_exist_ok=True)
    (empty_dirs / "train").mkdir()
    (empty_dirs / "val").mkdir()
    with pytest.raises(S.SplitError, match=r"none of the 10 videos .*\{youtube_id\}"):
        S.make_splits(_kinetics(empty_dirs), tmp_path / "c", 1, tmp_path / "o")

    with pytest.raises(S.SplitError, match="kinetics.root .* does not exist"):
        S.make_splits(_kinetics(tmp_path / "absent"), tmp_path / "c", 1, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_bad_annotation_csv_names_file_and_line(tmp_path, sources):
    root = annotations_tree(tmp_path / "k", sources)
    path = root / "annotations" / "validate.csv"
    path.write_text(path.read_text() + "unknown class,zzz,0,10,val,False\n")
    with pytest.raises(S.SplitError, match=r"validate\.csv:4: class 'unknown class'"):
        S.make_splits(_kinetics(root), tmp_path / "c", 1, tmp_path / "o")
    path.write_text("label,youtube,start\n")
    with pytest.raises(S.SplitError, match=r"lacks \['youtube_id', 'time_start', 'time_end'\]"):
        S.make_splits(_kinetics(root), tmp_path / "c", 1, tmp_path / "o")


def test_annotation_csvs_with_a_byte_order_mark_read_the_same(tmp_path, sources):
    """Spreadsheet tools save CSVs with a UTF-8 BOM; before, it glued itself to 'label'."""
    plain = annotations_tree(tmp_path / "plain", sources)
    marked = annotations_tree(tmp_path / "marked", sources)
    for name in ("train.csv", "validate.csv"):
        path = marked / "annotations" / name
        path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    expected = S.make_splits(_kinetics(plain), tmp_path / "c1", 1, tmp_path / "o1")
    summary = S.make_splits(_kinetics(marked), tmp_path / "c2", 1, tmp_path / "o2")
    assert summary["splits"] == expected["splits"]
    names = [os.path.basename(p) for p, _ in read_split_csv(tmp_path / "o2/train.csv")]
    assert names == [os.path.basename(p) for p, _ in read_split_csv(tmp_path / "o1/train.csv")]


def test_a_split_csv_with_a_byte_order_mark_reads_the_same(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(codecs.BOM_UTF8 + b"/data/a b.mp4 3\n/data/c.mp4 0\n")
    assert read_split_csv(path) == [("/data/a b.mp4", 3), ("/data/c.mp4", 0)]


def test_num_classes_mismatch_writes_nothing(tmp_path, sources):
    root = annotations_tree(tmp_path / "k", sources)
    out = tmp_path / "out"
    with pytest.raises(S.SplitError, match="num_classes is 400 but .* has 3 classes"):
        S.make_splits(_kinetics(root, num_classes=400), tmp_path / "c", 1, out)
    assert not out.exists()


def test_probe_cache_skips_unchanged_files(tmp_path, sources, monkeypatch):
    root = annotations_tree(tmp_path / "k", sources)
    probed, probe = [], S.probe_video

    def counting(path):
        probed.append(os.path.basename(path))
        return probe(path)

    monkeypatch.setattr(S, "probe_video", counting)
    kinetics, cache = _kinetics(root), tmp_path / "cache"
    first = S.make_splits(kinetics, cache, 2, tmp_path / "o1", pool="thread")
    assert len(probed) == 10  # train: 10 listed - missing - duplicate; val: 2
    probed.clear()
    assert S.make_splits(kinetics, cache, 2, tmp_path / "o2", pool="thread") == first
    assert probed == []
    touched = root / "train" / "aaa_000000_000010.mp4"
    os.utime(touched, ns=(1, 1))
    S.make_splits(kinetics, cache, 2, tmp_path / "o3", pool="thread")
    assert probed == [touched.name]
    assert (tmp_path / "o3" / "train.csv").read_bytes() == (
        tmp_path / "o1" / "train.csv"
    ).read_bytes()


def test_an_interrupted_probe_keeps_what_it_found(tmp_path):
    paths = [str(tmp_path / f"{n}.mp4") for n in range(6)]
    for path in paths:
        open(path, "wb").write(b"x" * 2000)

    def fail_on_4(path):
        if path.endswith("4.mp4"):
            raise RuntimeError("interrupted")
        return S.Probe(None, 10, 2, 2)

    with pytest.raises(RuntimeError, match="interrupted"):
        S.probe_videos(paths, tmp_path / "cache", 1, "thread", probe=fail_on_4)
    again = []
    S.probe_videos(
        paths,
        tmp_path / "cache",
        1,
        "thread",
        probe=lambda p: again.append(p) or S.Probe(None, 10, 2, 2),
    )
    assert paths[4] in again and paths[0] not in again


def crash_on_b(path):
    """A probe that kills its worker process on files named b*: a decoder segfault."""
    if os.path.basename(path).startswith("b"):
        os._exit(1)
    return S.Probe(None, 10, 2, 2)


def test_a_crashing_decoder_is_isolated_and_reported(tmp_path):
    paths = []
    for name in ["a1", "a2", "b", "a3", "a4", "a5"]:
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(b"x" * 2000)
        paths.append(str(path))
    results = S.probe_videos(paths, tmp_path / "cache", 2, "process", probe=crash_on_b)
    assert results[paths[2]].reason.startswith("crashed")
    assert all(results[p].reason is None for p in paths if p != paths[2])


def test_script_exit_status_and_outputs(tmp_path, sources, capsys):
    root = annotations_tree(tmp_path / "k", sources)
    args = ["--cache", str(tmp_path / "c"), "--threads", "2", "--out-dir", str(tmp_path / "o")]
    assert make_splits.main(["--kinetics", json.dumps(_kinetics(root)), *args]) == 0
    assert sorted(os.listdir(tmp_path / "o")) == [
        "dropped.csv",
        "labels.csv",
        "summary.json",
        "test.csv",
        "train.csv",
        "val.csv",
    ]
    bad = json.dumps(_kinetics(root, num_classes=4))
    assert make_splits.main(["--kinetics", bad, *args[:-1], str(tmp_path / "o2")]) == 1
    assert "num_classes is 4" in capsys.readouterr().err


def test_summary_counts_the_videos_decord_misnumbers(tmp_path, sources):
    """An open-GOP file is kept (decord reads it) and counted: decord can return a neighbouring
    frame after a seek in it (README, Video decoders); the count survives the probe cache."""
    open_gop = write_variant(tmp_path / "open_gop.mp4", "open_gop", frame_pattern(60, 48, 64))
    root = tmp_path / "k400"
    for split in ("train", "val"):
        _put(sources, "long", root / split / "abseiling" / "x.mp4")
        (root / split / "zumba").mkdir(parents=True)
        shutil.copyfile(open_gop, root / split / "zumba" / "y.mp4")
    kinetics = _kinetics(root, "class_folders", num_classes=2)
    first = S.make_splits(kinetics, tmp_path / "cache", 1, tmp_path / "out", pool="thread")
    for split in ("train", "val"):
        assert first["splits"][split]["kept"] == 2
        assert first["splits"][split]["decord_misnumbers"] == 1
        assert first["splits"][split]["pyav_cannot_open"] == 0
    cached = json.loads((tmp_path / "cache" / "probe.json").read_text())["entries"]
    assert sorted(entry[-1] for entry in cached.values()) == [False, False, True, True]
    again = S.make_splits(kinetics, tmp_path / "cache", 1, tmp_path / "out2", pool="thread")
    assert again["splits"] == first["splits"]


def test_truncated_and_audio_only_files_are_dropped_for_both_decoders(tmp_path, sources):
    """The probe decides for both data.decoder choices. A faststart mp4 cut after its 30th
    of 60 video packets opens with decord, but PyAV finds it truncated: dropped (it was
    kept, and PyAV then refused it in the data path). Cut inside that packet: decord refuses
    it. Cut a few frames short, B-frames last in the file: both decoders read it (57 of 60
    frames, the last one shown still there), PyAV finds the hole: dropped (it was kept). An
    audio-only file: the reason says so (decord said "Check failed: st_nb >= 0")."""
    whole = write_pattern_mp4(tmp_path / "whole.mp4", 60, 32, 40, seed=3, faststart=True)
    first, after = videos.packet_spans(whole)[29]
    frames = videos.frame_pattern(60, 32, 40, seed=3)
    b_frames_last = videos.write_variant(tmp_path / "b.mp4", "cfr", frames, gop=25, faststart=True)
    root = tmp_path / "k400"
    files = {
        "between": videos.truncate(whole, root / "train/zumba/between.mp4", after),
        "inside": videos.truncate(whole, root / "train/zumba/inside.mp4", (first + after) // 2),
        "short": videos.truncate(
            b_frames_last, root / "train/zumba/short.mp4", videos.packet_spans(b_frames_last)[56][1]
        ),
        "sound": videos.write_audio_only(root / "train/zumba/sound.mp4"),
    }
    for split in ("train", "val"):
        _put(sources, "long", root / split / "abseiling" / "x.mp4")
        _put(sources, "short", root / split / "zumba" / "y.mp4")
    out = tmp_path / "out"
    kinetics = _kinetics(root, "class_folders", num_classes=2)
    summary = S.make_splits(kinetics, tmp_path / "cache", 1, out, pool="thread")
    dropped = {row["path"]: row["reason"] for row in csv.DictReader((out / "dropped.csv").open())}
    assert sorted(dropped) == sorted(str(path) for path in files.values())
    between = dropped[str(files["between"])]
    assert between.startswith(f"undecodable: {files['between']}: truncated: the file holds 30 of")
    assert dropped[str(files["inside"])].startswith("undecodable: ")
    assert dropped[str(files["short"])].startswith(
        f"undecodable: {files['short']}: truncated: the file holds 57 of the 60 video frames "
        "its index lists, frames missing from "
    )
    assert dropped[str(files["sound"])] == f"undecodable: {files['sound']}: no video stream"
    assert summary["splits"]["train"]["dropped"] == {"undecodable": 4}
    assert summary["splits"]["train"]["kept"] == 2
