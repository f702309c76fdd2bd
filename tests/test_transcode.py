"""k400ft.transcode (short-keyframe copies) on tiny real mp4 files, and its place in the DAG."""

import contextlib
import errno
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import av
import numpy as np
import pytest
import transcode as script
from test_finetune import alive, process_tree
from test_workflow import PAPER_JOBS, ROOT, fake_kinetics, job_counts, snakemake, write_config
from videos import write_pattern_mp4

from k400ft import encode as E
from k400ft import transcode as T
from k400ft.io import EXIT_IOERR
from k400ft.video import open_video, read_frames, read_split_csv, write_split_csv

SETTINGS = T.Settings(keyint=12, crf=18, preset="veryfast", tune="fastdecode")
FRAMES, HEIGHT, WIDTH = 40, 64, 96


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Three good videos (two share a file name in different class folders) and a broken one,
    all 64 x 96 x 40 frames with x264's default keyframe interval (one keyframe)."""
    root = tmp_path_factory.mktemp("sources")
    good = [
        write_pattern_mp4(root / folder / "clip.mp4", FRAMES, HEIGHT, WIDTH, seed=number)
        for number, folder in enumerate(("abseiling", "air drumming", "zumba"))
    ]
    broken = root / "zumba" / "broken.mp4"
    broken.write_bytes(good[0].read_bytes()[:3000])
    return {"good": [str(p) for p in good], "broken": str(broken)}


def keyframes(path) -> list[int]:
    """Positions (in presentation order) of the keyframe packets of a file's video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted(
            (p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None
        )
    return [position for position, (_, key) in enumerate(packets) if key]


def splits(tmp_path, train, val):
    write_split_csv(tmp_path / "train.csv", [(path, label) for label, path in enumerate(train)])
    write_split_csv(tmp_path / "val.csv", [(path, 0) for path in val])
    return tmp_path / "train.csv", tmp_path / "val.csv"


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------
def test_copy_paths_never_collide_and_keep_the_name(tmp_path, sources, monkeypatch):
    first, second, _ = sources["good"]
    assert Path(first).name == Path(second).name
    a, b = T.copy_path(first, tmp_path / "videos"), T.copy_path(second, tmp_path / "videos")
    assert a != b and a.name.endswith("_clip.mp4") and b.name.endswith("_clip.mp4")
    assert a.parent.parent == tmp_path / "videos" and len(a.parent.name) == 2
    monkeypatch.chdir(Path(first).parent)
    assert T.copy_path("clip.mp4", tmp_path / "videos") == a  # keyed by the absolute path
    monkeypatch.chdir(tmp_path)
    assert T.copy_path(first, "videos") == a  # absolute, like the splits' paths
    assert T.copy_path("/k400/train/x.webm", "v").suffix == ".mp4"


@pytest.mark.parametrize("count", [0, 1, 7, 10, 33])
@pytest.mark.parametrize("shards", [1, 3, 4, 12])
def test_shards_partition_the_rows_exactly(count, shards):
    rows = [f"/v/{i}.mp4" for i in range(count)]
    parts = [T.shard_sources(rows, shard, shards) for shard in range(shards)]
    assert sorted(path for part in parts for path in part) == sorted(rows)
    assert sum(len(part) for part in parts) == count  # disjoint
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(part == [p for p in rows if p in part] for part in parts)  # order kept
    assert parts[0][:1] == rows[:1]


def test_shard_errors_name_the_setting():
    with pytest.raises(T.TranscodeError, match=r"shard 4 is not in 0\.\.3"):
        T.shard_sources(["a"], 4, 4)
    with pytest.raises(T.TranscodeError, match="data.transcode.shards"):
        T.shard_sources(["a"], 0, 0)


def test_unique_sources_keep_first_seen_order():
    assert T.unique_sources([("b", 1), ("a", 0), ("b", 1)], [("c", 2), ("a", 0)]) == ["b", "a", "c"]


def test_sample_positions():
    assert E.sample_positions(5, 8) == [0, 1, 2, 3, 4]
    assert E.sample_positions(100, 3) == [0, 50, 99]
    assert E.sample_positions(0, 3) == [] and E.sample_positions(9, 0) == []


def test_psnr_of_known_errors():
    frames = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    assert E.psnr(frames, frames) == E.MAX_PSNR
    off_by_one = frames + 1  # MSE 1: 20 log10(255)
    assert E.psnr(frames, off_by_one) == pytest.approx(20 * np.log10(255))
    mixed = frames.copy()
    mixed[1] += 2  # per-frame mean of (cap, 20 log10(255 / 2))
    assert E.psnr(frames, mixed) == pytest.approx((E.MAX_PSNR + 20 * np.log10(127.5)) / 2)
    with pytest.raises(ValueError, match="differ"):
        E.psnr(frames, frames[:1])


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"keyint": 0}, "keyint"), ({"crf": 60}, "crf"), ({"preset": "quick"}, "preset")],
)
def test_settings_errors_name_the_key(kwargs, key):
    with pytest.raises(T.TranscodeError, match=f"data.transcode.{key}"):
        T.Settings(**{"keyint": 12, "crf": 18, "preset": "veryfast", **kwargs})


def test_x264_options_force_the_keyframe_interval():
    options = SETTINGS.x264_options()
    assert options["g"] == options["keyint_min"] == "12" and options["sc_threshold"] == "0"
    assert options["tune"] == "fastdecode" and options["crf"] == "18"
    assert "tune" not in T.Settings(12, 18.5, "fast", "none").x264_options()


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------
def test_copy_keeps_frames_size_and_rate_with_the_keyframe_interval(tmp_path, sources):
    source = sources["good"][0]
    dest = T.copy_path(source, tmp_path)
    record = T.transcode_one(source, str(dest), SETTINGS, psnr_frames=8)
    assert record["status"] == "transcoded" and record["copy"] == str(dest), record
    assert keyframes(source) == [0]
    assert keyframes(dest) == [0, 12, 24, 36]
    copy = open_video(str(dest))
    assert len(copy) == FRAMES == record["frames"]
    assert read_frames(copy, np.arange(FRAMES)).shape == (FRAMES, HEIGHT, WIDTH, 3)
    with av.open(str(dest)) as container:
        assert container.streams.video[0].average_rate == 30
    assert 40 < record["psnr"] < E.MAX_PSNR
    assert record["psnr"] == pytest.approx(E.measure_psnr(source, dest, 8))
    assert record["core_seconds"] > 0 and record["copy_bytes"] > 0
    assert E.check_output(source, dest, SETTINGS) is None
    assert "other settings" in E.check_output(source, dest, T.Settings(12, 30, "veryfast"))
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temp file left


def test_a_source_that_fails_mid_stream_leaves_no_half_written_copy(tmp_path):
    """A source cut after 60% of its data (index first, so it opens and its first frames
    decode) fails part-way through the encode: the failure says why and no copy, partial
    or temporary, is left."""
    whole = write_pattern_mp4(tmp_path / "src" / "fast.mp4", FRAMES, HEIGHT, WIDTH, faststart=True)
    cut = tmp_path / "src" / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    dest = T.copy_path(cut, tmp_path / "videos")
    record = T.transcode_one(str(cut), str(dest), SETTINGS)
    assert record["status"] == "failed" and record["copy"] is None
    assert "Invalid data" in record["reason"], record["reason"]
    assert not dest.exists() and not list(dest.parent.glob("*"))


# --------------------------------------------------------------------------------------------
# Shards and gather
# --------------------------------------------------------------------------------------------
def test_shards_resume_report_failures_and_gather(tmp_path, sources):
    good, broken = sources["good"], sources["broken"]
    train_csv, val_csv = splits(tmp_path, [good[0], broken, good[1]], [good[2]])
    videos = tmp_path / "videos"

    def shard(number):
        return T.run_shard(
            train_csv, val_csv, number, 2, videos, SETTINGS, tmp_path / f"shards/{number}.json",
            workers=2, psnr_videos=2, psnr_frames=4,
        )  # fmt: skip

    first = [shard(0), shard(1)]
    statuses = {r["source"]: r["status"] for s in first for r in s["records"]}
    assert statuses == {
        good[0]: "transcoded",
        broken: "failed",
        good[1]: "transcoded",
        good[2]: "transcoded",
    }
    assert [r["source"] for r in first[0]["records"]] == [good[0], good[1]]  # rows 0 and 2
    failure = next(r for r in first[1]["records"] if r["source"] == broken)
    assert failure["reason"] and failure["copy"] is None

    report = T.gather(
        train_csv,
        val_csv,
        [tmp_path / "shards/0.json", tmp_path / "shards/1.json"],
        tmp_path / "out",
    )
    train = read_split_csv(tmp_path / "out" / "train.csv")
    copies = {p: str(T.copy_path(p, videos)) for p in good}
    assert train == [(copies[good[0]], 0), (broken, 1), (copies[good[1]], 2)]
    assert read_split_csv(tmp_path / "out" / "val.csv") == [(copies[good[2]], 0)]
    assert report == json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["videos"], report["transcoded"], report["reused"], report["failed"]) == (
        4,
        3,
        0,
        1,
    )
    assert report["failures"] == [{"source": broken, "reason": failure["reason"]}]
    assert report["psnr"]["videos"] == 3 and report["psnr"]["min"] > 40
    assert report["core_seconds"] > 0 and report["core_seconds_per_video"] > 0
    assert report["settings"] == {
        "keyint": 12,
        "crf": 18,
        "preset": "veryfast",
        "tune": "fastdecode",
    }

    # resume: done copies are kept as they are; a copy cut short is made again
    done = Path(copies[good[0]])
    stamp = done.stat().st_mtime_ns
    cut = Path(copies[good[1]])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    again = shard(0)
    assert [r["status"] for r in again["records"]] == ["reused", "transcoded"]
    assert done.stat().st_mtime_ns == stamp
    assert len(open_video(str(cut))) == FRAMES
    assert again["records"][0]["psnr"] == pytest.approx(first[0]["records"][0]["psnr"])


def test_gather_names_a_video_no_shard_has(tmp_path, sources):
    good = sources["good"]
    train_csv, val_csv = splits(tmp_path, good[:1], good[1:2])
    T.run_shard(train_csv, val_csv, 0, 1, tmp_path / "videos", SETTINGS, tmp_path / "0.json")
    write_split_csv(val_csv, [(good[2], 0)])  # the splits changed after the shards ran
    with pytest.raises(T.TranscodeError, match=rf"val\.csv: {re.escape(good[2])} is in no shard"):
        T.gather(train_csv, val_csv, [tmp_path / "0.json"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(T.TranscodeError, match=r"bad\.json: not a transcode shard record"):
        T.gather(train_csv, val_csv, [tmp_path / "bad.json"], tmp_path / "out")


def _die_on_second(source, dest, settings, psnr_frames=0):
    """A `work` function whose process dies on the second video (a decoder crash)."""
    if source.endswith("1.mp4"):
        os._exit(1)
    return T.transcode_one(source, dest, settings, psnr_frames)


def test_a_file_that_kills_its_process_is_reported_and_the_rest_are_copied(tmp_path):
    paths = [str(write_pattern_mp4(tmp_path / f"{n}.mp4", 8, 32, 64, seed=n)) for n in range(3)]
    records = T.transcode_sources(paths, tmp_path / "videos", SETTINGS, 2, work=_die_on_second)
    assert records[1]["status"] == "failed" and records[1]["reason"].startswith("crashed")
    for n in (0, 2):
        # a video in flight when the pool broke is run again alone: its copy may be done
        # already (reused) or not (transcoded); either way it is there and valid
        assert records[n]["status"] in ("transcoded", "reused")
        assert E.check_output(paths[n], records[n]["copy"], SETTINGS) is None


def test_script_errors_name_the_file(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("/a.mp4 0\nnot-a-row\n")
    (tmp_path / "val.csv").write_text("")
    code = script.main(
        ["shard", "--train", str(tmp_path / "train.csv"), "--val", str(tmp_path / "val.csv"),
         "--shard", "0", "--shards", "1", "--keyint", "12", "--crf", "18", "--preset",
         "veryfast", "--tune", "fastdecode", "--videos", str(tmp_path / "v"), "--output",
         str(tmp_path / "0.json")]
    )  # fmt: skip
    assert code == 1
    assert re.search(r"error: .*train\.csv:2: expected", capsys.readouterr().err)
    assert not (tmp_path / "0.json").exists()


def shard_args(tmp_path, train_csv, val_csv, videos, output, workers=1) -> list[str]:
    """scripts/transcode.py's arguments for shard 0 of 1."""
    return [
        "shard", "--train", str(train_csv), "--val", str(val_csv), "--shard", "0", "--shards",
        "1", "--keyint", "12", "--crf", "18", "--preset", "veryfast", "--tune", "fastdecode",
        "--videos", str(videos), "--workers", str(workers), "--output", str(output),
    ]  # fmt: skip


def test_a_killed_shard_takes_its_pool_with_it(tmp_path):
    """kill -9 of a shard (the OOM killer, a scancel) while its workers are busy on videos:
    every process it started ends with it. Its fork server, pool workers and resource tracker
    outlived it, re-parented to init, ~570 MB each."""
    stuck = [tmp_path / f"fifo{n}.mp4" for n in range(2)]  # a worker reading one waits for us
    for fifo in stuck:
        os.mkfifo(fifo)
    good = [write_pattern_mp4(tmp_path / f"{n}.mp4", 8, 32, 64, seed=n) for n in range(2)]
    train_csv, val_csv = splits(tmp_path, [*stuck, *good], [])
    args = shard_args(tmp_path, train_csv, val_csv, tmp_path / "videos", tmp_path / "0.json", 2)
    with open(tmp_path / "shard.log", "w") as log:
        shard = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts/transcode.py"), *args], stderr=log
        )
    tree, writers = [shard.pid], {}
    try:
        deadline = time.monotonic() + 120
        while len(writers) < len(stuck):  # until both workers are reading their FIFO
            assert shard.poll() is None, (tmp_path / "shard.log").read_text()
            assert time.monotonic() < deadline, "the workers never opened their video"
            time.sleep(0.1)
            for fifo in set(stuck) - set(writers):
                with contextlib.suppress(OSError):  # ENXIO: no reader yet
                    writers[fifo] = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        tree = process_tree(shard.pid)
        shard.kill()
        shard.wait()
        left = alive(tree[1:], wait=3.0)
        assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes()[:100] for pid in left]
    finally:
        for pid in alive(tree):
            os.kill(pid, signal.SIGKILL)
        for fd in writers.values():
            os.close(fd)


@pytest.mark.parametrize("how", ["read-only", "a file"])
@pytest.mark.parametrize("folder", ["videos", "shards"])
def test_an_output_folder_that_cannot_be_written_fails_the_shard_before_any_video(
    tmp_path, sources, monkeypatch, capsys, folder, how
):
    """A read-only (EROFS) folder of the copies or of the shard record, or a file where it
    should be, is the job's failure, exit 74 naming the path, found before any video is
    encoded. It was 1 failed video per video and exit 0 (copies), or a bare OSError after the
    whole shard's work (record). Tests run as root, where chmod does not stop writes: the
    read-only file system is os.open raising EROFS under the folder."""
    train_csv, val_csv = splits(tmp_path, sources["good"][:2], [])
    target = tmp_path / folder
    if how == "a file":
        target.write_text("")
    else:
        real_open = os.open

        def read_only(path, *args, **kwargs):
            if Path(path).is_relative_to(target):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only)

    def encode(*args, **kwargs):
        raise AssertionError("videos were encoded before the output folders were tried")

    monkeypatch.setattr(T, "transcode_sources", encode)
    output = tmp_path / "shards" / "0.json"
    code = script.main(shard_args(tmp_path, train_csv, val_csv, tmp_path / "videos", output))
    err = capsys.readouterr().err
    assert code == EXIT_IOERR == 74, err
    cause = "Read-only file system" if how == "read-only" else "(File exists|Not a directory)"
    assert re.search(rf"error: cannot write {re.escape(str(target))}: .*{cause}", err), err
    assert not output.exists()


class _FullFile(io.FileIO):
    """A file on a full disk: every write raises ENOSPC."""

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _failing_write(fault: str, source, dest, settings, psnr_frames=0):
    """transcode_one in a worker whose writes fail: the copy's temp file cannot be created
    (read-only), its data cannot be written or synced (full disk)."""
    patches = {
        "create": mock.patch("tempfile.mkstemp", side_effect=OSError(errno.EROFS, "Read-only")),
        "write": mock.patch("os.fdopen", lambda fd, mode: _FullFile(fd, "wb")),
        "fsync": mock.patch("os.fsync", side_effect=OSError(errno.ENOSPC, "No space")),
    }
    with patches[fault]:
        return T.transcode_one(source, dest, settings, psnr_frames)


@pytest.mark.parametrize(
    ("fault", "code"),
    [("create", errno.EROFS), ("write", errno.ENOSPC), ("fsync", errno.ENOSPC)],
)
def test_an_io_error_writing_a_copy_fails_the_shard_naming_it(tmp_path, sources, fault, code):
    """A read-only or full disk met while writing a copy is raised, naming the copy, not
    recorded as the video's failure (the fine-tune trained on the originals, exit 0). No
    copy, whole or partial, is left."""
    videos = tmp_path / "videos"
    work = functools.partial(_failing_write, fault)
    with pytest.raises(OSError) as raised:
        T.transcode_sources(sources["good"], videos, SETTINGS, workers=1, work=work)
    assert isinstance(raised.value, E.OutputError) and raised.value.errno == code
    assert raised.value.filename in {str(T.copy_path(p, videos)) for p in sources["good"]}
    assert str(raised.value).startswith(f"cannot write {videos}")
    assert [p for p in videos.rglob("*") if p.is_file()] == []


def test_a_shard_record_that_cannot_be_written_exits_74(tmp_path, sources, monkeypatch, capsys):
    """The disk fills up after the folders were tried: writing the record fails, exit 74
    naming it (it was a bare OSError's traceback)."""
    train_csv, val_csv = splits(tmp_path, sources["good"][:1], [])
    output = tmp_path / "shards" / "0.json"
    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        if Path(dst) == output:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    code = script.main(shard_args(tmp_path, train_csv, val_csv, tmp_path / "videos", output))
    err = capsys.readouterr().err
    assert code == 74, err
    assert f"error: cannot write {output}: [Errno 28] No space left on device" in err
    assert list(output.parent.iterdir()) == []


def test_gather_fails_on_shard_records_of_output_errors_and_on_its_own(tmp_path, sources, capsys):
    """gather refuses a shard record that is missing or lists a video failed by a read-only
    or full disk (what the stage wrote before such errors failed the shard), naming it: it
    exited 0 and the fine-tune read the originals. Outputs it cannot write: exit 74."""
    good = sources["good"]
    train_csv, val_csv = splits(tmp_path, good[:2], [])
    record = tmp_path / "0.json"
    T.run_shard(train_csv, val_csv, 0, 1, tmp_path / "videos", SETTINGS, record)

    def gather(*shards, out=tmp_path / "out"):
        args = ["gather", "--train", str(train_csv), "--val", str(val_csv), "--out-dir", str(out)]
        return script.main([*args, *map(str, shards)]), capsys.readouterr().err

    code, err = gather(tmp_path / "1.json")
    assert code == 1 and f"{tmp_path / '1.json'}: cannot read the shard record" in err
    data = json.loads(record.read_text())
    failure = {"status": "failed", "copy": None, "reason": None}
    for errno_ in (errno.EROFS, errno.ENOSPC):
        failure["reason"] = f"[Errno {errno_}] {os.strerror(errno_)}: '{tmp_path}/videos/ab'"
        data["records"][1].update(failure)
        record.write_text(json.dumps(data))
        code, err = gather(record)
        assert code == 1, err
        assert f"{record}: {good[1]} failed writing its copy" in err
        assert not (tmp_path / "out").exists()
    (tmp_path / "out").write_text("")
    data["records"][1]["reason"] = "Invalid data found when processing input"  # a bad video
    record.write_text(json.dumps(data))
    code, err = gather(record)
    assert code == 74 and f"error: cannot write {tmp_path / 'out'}: " in err
    code, err = gather(record, out=tmp_path / "ok")
    assert code == 0, err
    assert read_split_csv(tmp_path / "ok" / "train.csv")[1] == (good[1], 1)


# --------------------------------------------------------------------------------------------
# The DAG
# --------------------------------------------------------------------------------------------
def rule_inputs(output: str, rule: str) -> list[list[str]]:
    """The input lists of every job of `rule` in a dry-run's output."""
    blocks = re.findall(rf"^rule {rule}:\n((?:    .*\n)+)", output, re.M)
    return [re.search(r"^    input: (.*)$", b, re.M)[1].split(", ") for b in blocks]


def paper_dry_run(tmp_path, edit=None):
    k400 = fake_kinetics(tmp_path / "k400")

    def configure(config):
        config["kinetics"].update(root=str(k400), source="local")
        if edit:
            edit(config)

    config = write_config(tmp_path / "config.yaml", configure)
    args = ("-n", "-p", "--directory", str(tmp_path), "--configfile", str(config))
    return snakemake(*args, "--replace-workflow-config").stdout


def test_transcode_on_feeds_the_finetune_and_not_the_evaluation(tmp_path):
    def on(config):
        config["data"]["transcode"].update(enabled=True, shards=5)

    out = paper_dry_run(tmp_path, on)
    assert job_counts(out) == {**PAPER_JOBS, "transcode": 5, "transcode_gather": 1}
    for inputs in rule_inputs(out, "finetune"):
        assert inputs[:2] == ["results/transcode/train.csv", "results/transcode/val.csv"]
    for inputs in rule_inputs(out, "evaluate"):
        assert inputs[0] == "results/splits/test.csv"
    [gather] = rule_inputs(out, "transcode_gather")
    assert gather[2:] == [f"results/transcode/shards/{n}.json" for n in range(5)]
    assert "--keyint 16 --crf 18 --preset veryfast --tune fastdecode" in out


def test_transcode_off_leaves_the_paper_dag_as_it_was(tmp_path):
    out = paper_dry_run(tmp_path)
    assert job_counts(out) == PAPER_JOBS
    for inputs in rule_inputs(out, "finetune"):
        assert inputs[:2] == ["results/splits/train.csv", "results/splits/val.csv"]
    specs = re.findall(r"scripts/finetune\.py --spec '([^']*)'", out)
    assert len(specs) == 2
    assert all(set(json.loads(s)["data"]) == PAPER_FINETUNE_DATA for s in specs)


# the data keys a paper fine-tune's params hold: the transcode settings are never among them
PAPER_FINETUNE_DATA = {
    "num_frames",
    "sampling_rate",
    "input_size",
    "short_side_size",
    "mean",
    "std",
    "augment",
    "augment_on",
    "augment_compile",
    "decoder",
}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.update(keyint=0),
            r"keyint: 0 is less than the minimum of 1 \(allowed: an integer >= 1\)",
        ),
        (
            lambda t: t.update(preset="quick"),
            r"preset: 'quick' is not allowed \(allowed: ultrafast, superfast, .*\)",
        ),
        (lambda t: t.update(shard=3), r"shard: unknown key \(allowed: enabled, keyint, .*\)"),
    ],
    ids=["keyint", "preset", "unknown-key"],
)
def test_transcode_config_errors_name_the_key(tmp_path, edit, message):
    config = write_config(tmp_path / "config.yaml", lambda c: edit(c["data"]["transcode"]))
    proc = snakemake(
        "-n", "--directory", str(tmp_path), "--configfile", str(config),
        "--replace-workflow-config", check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert re.search(r"^config error: data\.transcode\." + message + "$", proc.stdout, re.M)


def test_a_copy_is_the_same_bytes_every_time(tmp_path):
    """The demo's fine-tunes read the copies: with x264's mbtree on, copies of one source
    differed from run to run (so did the demo's numbers)."""
    source = write_pattern_mp4(tmp_path / "src.mp4", 48, 180, 320, seed=5)
    settings = T.Settings(keyint=16, crf=18, preset="veryfast", tune="fastdecode")
    copies = set()
    for attempt in range(4):
        E.encode_video(source, tmp_path / f"copy{attempt}.mp4", settings)
        copies.add((tmp_path / f"copy{attempt}.mp4").read_bytes())
    assert len(copies) == 1


def test_two_clean_runs_make_copies_of_the_same_bytes(tmp_path):
    """Two clean runs (the demo's videos written anew, another checkout) have the same source
    bytes at another path and time: copies carried their source's path and mtime, so their
    bytes differed though every frame was the same. A copy now carries its source's sha256,
    and the muxer no version tag (bitexact)."""
    first = write_pattern_mp4(tmp_path / "a/src.mp4", 24, 48, 64, seed=5)
    second = tmp_path / "b/src.mp4"
    second.parent.mkdir()
    second.write_bytes(first.read_bytes())
    os.utime(second, ns=(10**18, 10**18))
    for number, source in enumerate((first, second)):
        E.encode_video(source, tmp_path / f"copy{number}.mp4", SETTINGS)
    copy = (tmp_path / "copy0.mp4").read_bytes()
    assert copy == (tmp_path / "copy1.mp4").read_bytes()
    assert str(tmp_path).encode() not in copy and b"Lavf" not in copy
    assert E.check_output(second, tmp_path / "copy0.mp4", SETTINGS) is None  # reused
    write_pattern_mp4(second, 24, 48, 64, seed=6)  # replaced: made again
    assert E.check_output(second, tmp_path / "copy0.mp4", SETTINGS) == (
        "made from another source or with other settings"
    )
