"""k400ft.resize and the shared encoder path's scaling (k400ft.encode) on tiny real mp4 files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import pytest
from videos import frame_pattern, write_pattern_mp4, write_variant

from k400ft import encode as E
from k400ft import resize as R
from k400ft.decoders import open_video

SETTINGS = R.Settings(keyint=None, crf=23, preset="veryfast", tune="none", short_side=32)


@pytest.mark.parametrize(
    ("size", "short", "expected"),
    [
        ((640, 360), 320, (568, 320)),  # 16:9: 568.9 -> 568 (ffmpeg -vf scale=-2:320)
        ((1280, 720), 320, (568, 320)),
        ((340, 256), 320, (426, 320)),  # 425.0 exactly: av_rescale rounds half up, x 2
        ((360, 640), 320, (320, 568)),  # portrait: scale=320:-2
        ((641, 361), 320, (568, 320)),  # odd source sides
        ((320, 320), 320, (320, 320)),
        ((176, 144), 320, (392, 320)),  # a short side under the target is scaled up
        ((640, 360), None, (640, 360)),
    ],
)
def test_scaled_size_is_ffmpeg_s(size, short, expected):
    assert E.scaled_size(*size, short) == expected
    width, height = E.scaled_size(*size, short)
    assert width % 2 == 0 and height % 2 == 0 or short is None


def shape(path) -> tuple[int, int, int]:
    return E.video_shape(path)


def streams(path) -> set[str]:
    with av.open(str(path)) as container:
        return {stream.type for stream in container.streams}


def test_a_video_is_resized_audio_dropped_frames_kept_and_reused(tmp_path):
    source = write_variant(tmp_path / "src.mp4", "audio", frame_pattern(24, 48, 64))
    assert streams(source) == {"video", "audio"}
    dest = tmp_path / "out/src.mp4"
    record = R.resize_one(str(source), str(dest), SETTINGS, psnr_frames=4)
    assert record["status"] == "resized" and record["copy"] == str(dest), record
    assert shape(dest) == (24, 32, 42) and record["frames"] == 24
    assert streams(dest) == {"video"}  # audio dropped
    assert 30 < record["psnr"] < E.MAX_PSNR
    assert R.resize_one(str(source), str(dest), SETTINGS)["status"] == "reused"
    bigger = R.Settings(None, 23, "veryfast", "none", short_side=40)
    assert "other settings" in E.check_output(source, dest, bigger)


def test_a_video_already_at_the_target_is_copied_not_encoded(tmp_path):
    source = write_pattern_mp4(tmp_path / "at.mp4", 10, 32, 64)
    dest = tmp_path / "out/at.mp4"
    record = R.resize_one(str(source), str(dest), SETTINGS, psnr_frames=4)
    assert record["status"] == "copied" and dest.read_bytes() == source.read_bytes()
    assert "psnr" not in record
    assert R.resize_one(str(source), str(dest), SETTINGS)["status"] == "reused"


def keyframes(path) -> list[int]:
    with av.open(str(path)) as container:
        packets = sorted(
            (p.pts, p.is_keyframe) for p in container.demux(video=0) if p.pts is not None
        )
    return [position for position, (_, key) in enumerate(packets) if key]


def test_with_transcode_on_one_encode_resizes_and_sets_the_keyframes(tmp_path):
    """data.transcode on: the resize's encode also puts a keyframe every keyint frames, even
    for a video already at the target size (a copy would keep its keyframes)."""
    settings = R.Settings(keyint=8, crf=18, preset="veryfast", tune="fastdecode", short_side=32)
    for name, (height, width) in {"big": (48, 64), "at": (32, 64)}.items():
        source = write_pattern_mp4(tmp_path / f"{name}.mp4", 20, height, width)
        assert keyframes(source) == [0]
        dest = tmp_path / f"out/{name}.mp4"
        assert R.resize_one(str(source), str(dest), settings)["status"] == "resized"
        assert keyframes(dest) == [0, 8, 16] and shape(dest)[1] == 32


def test_a_video_that_fails_keeps_its_original_in_the_tree(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"<html>403</html>")
    dest = tmp_path / "out/broken.mp4"
    record = R.resize_one(str(broken), str(dest), SETTINGS)
    assert record["status"] == "failed" and record["reason"]
    assert record["kept"] == str(dest) and dest.read_bytes() == broken.read_bytes()


def count(folder: Path, split: str, videos: list[str], path: Path) -> Path:
    """An extract-stage count (what the resize reads) of `videos` in `folder`."""
    path.write_text(json.dumps({"split": split, "folder": str(folder), "videos": videos}))
    return path


def test_shards_resize_every_present_video_once_and_gather_reports(tmp_path):
    extracted = tmp_path / "extracted"
    names = {"train": ["a.mp4", "b.mp4", "sub/c.mp4", "bad.mp4"], "val": ["d.mp4"]}
    for split, files in names.items():
        for number, name in enumerate(files):
            if name == "bad.mp4":
                (extracted / split / name).write_bytes(b"")
            else:
                write_pattern_mp4(extracted / split / name, 8 + number, 48, 64, seed=number)
    counts = [count(extracted / s, s, names[s], tmp_path / f"{s}.json") for s in names]
    targets = [str(tmp_path / "tree" / s) for s in names]
    shards = [
        R.run_shard(counts, targets, n, 2, SETTINGS, tmp_path / f"shards/{n}.json", 2, 1, 2)
        for n in range(2)
    ]
    assert [len(s["records"]) for s in shards] == [3, 2]  # rows 0, 2, 4 and 1, 3
    report = R.gather(counts, [tmp_path / f"shards/{n}.json" for n in range(2)], tmp_path / "r")
    assert report == json.loads((tmp_path / "r").read_text())
    assert (report["videos"], report["resized"], report["failed"]) == (5, 4, 1)
    assert report["splits"] == {"train": 4, "val": 1} and report["psnr"]["videos"] == 2
    assert report["failures"][0]["source"].endswith("train/bad.mp4")
    for split, files in names.items():
        for name in files:
            assert (tmp_path / "tree" / split / name).exists(), name
    assert shape(tmp_path / "tree/train/sub/c.mp4") == (10, 32, 42)
    assert len(open_video(str(tmp_path / "tree/val/d.mp4"))) == 8
    with pytest.raises(E.EncodeError, match=r"v2: .*/val/e\.mp4 is in no shard record"):
        R.gather(
            [counts[0], count(extracted / "val", "val", ["d.mp4", "e.mp4"], tmp_path / "v2")],
            [tmp_path / f"shards/{n}.json" for n in range(2)],
            tmp_path / "r2",
        )
    assert not (tmp_path / "r2").exists()


def test_an_output_folder_that_cannot_be_written_fails_the_shard_before_any_video(tmp_path):
    source = write_pattern_mp4(tmp_path / "x/a.mp4", 8, 48, 64)
    counts = [count(source.parent, "train", ["a.mp4"], tmp_path / "c.json")]
    (tmp_path / "tree").write_text("a file where the folder should be")
    with pytest.raises(E.OutputError, match=rf"cannot write {tmp_path / 'tree'}"):
        R.run_shard(counts, [str(tmp_path / "tree")], 0, 1, SETTINGS, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()
    assert os.path.getsize(source) > 0


def test_the_encoder_chooses_each_frame_type_itself(tmp_path):
    """A decoded frame carries its coded type (I, P, B): passed on, x264 took the source's
    keyframes and B-frames as orders. The keyframes of an output are then exactly every
    keyint frames whatever the source's (K400's have scene-cut keyframes), and without a
    keyint the encoder places them as under the ffmpeg command line."""
    source = write_pattern_mp4(tmp_path / "src.mp4", 40, 48, 64, gop=10)
    assert set(keyframes(source)) - {0, 12, 24, 36}  # keyframes off the copy's grid
    every12 = R.Settings(keyint=12, crf=18, preset="veryfast", tune="fastdecode", short_side=32)
    R.resize_one(str(source), str(tmp_path / "k12.mp4"), every12)
    assert keyframes(tmp_path / "k12.mp4") == [0, 12, 24, 36]
    R.resize_one(str(source), str(tmp_path / "auto.mp4"), SETTINGS)
    assert keyframes(tmp_path / "auto.mp4") != keyframes(source)  # x264's own choice
