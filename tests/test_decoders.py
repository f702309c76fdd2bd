"""k400ft.decoders: decord and PyAV number frames alike; PyAV's frames are decord's wherever
decord returns the frame asked for, and the right ones where it does not."""

import copy
import gc
import logging
import os
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from videos import (
    VARIANTS,
    demo_data,
    frame_pattern,
    packet_spans,
    truncate,
    write_audio_only,
    write_image_as_mp4,
    write_pattern_mp4,
    write_variant,
)

from k400ft import decoders as D
from k400ft import evaluate as E
from k400ft import video as V

torch.set_num_threads(1)

DATA = demo_data(32)
FRAMES = 60
# where decord's keyframe table counts in decode order and display order differs
DECORD_MISNUMBERS = {"open_gop", "mpeg4"}


def index_sets(n: int) -> list[np.ndarray]:
    """What the data path asks for: every frame, the test path's every 4th, train windows
    (sorted, with repeats: padding), single frames after a seek, the last frame."""
    rng = np.random.default_rng(0)
    windows = [V.train_frame_indices(n, rng, 8, 2) for _ in range(4)]
    return [np.arange(n), V.test_frame_indices(n, 8, 4), *windows, np.array([n - 1]),
            np.array([11]), np.array([3, 3, 40, 40])]  # fmt: skip


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    frames = frame_pattern(FRAMES, 48, 64, seed=5)
    return {
        name: str(write_variant(root / f"{name}{suffix}", name, frames, gop=25))
        for name, (suffix, _) in VARIANTS.items()
    }


def ground_truth(path: str) -> np.ndarray:
    """Every frame in display order, decoded from the start without a seek."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_pyav_gives_the_frames_asked_for_and_decords_where_decord_is_right(variants, name):
    path = variants[name]
    truth = ground_truth(path)
    assert len(D.open_video(path, "pyav")) == len(D.open_video(path, "decord")) == len(truth)
    decord_wrong = 0
    for indices in index_sets(len(truth)):
        ours = D.read_frames(D.open_video(path, "pyav"), indices)
        theirs = D.read_frames(D.open_video(path, "decord"), indices)
        assert ours.dtype == np.uint8 and ours.shape == (len(indices), 48, 64, 3)
        np.testing.assert_array_equal(ours, truth[indices], err_msg=f"{name} {indices}")
        if name not in DECORD_MISNUMBERS:
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{name} {indices}")
        decord_wrong += not np.array_equal(theirs, truth[indices])
    # the README's claim: decord 0.6.0 returns a neighbouring frame after a seek in these
    assert (decord_wrong > 0) == (name in DECORD_MISNUMBERS)


def test_unknown_decoder_is_refused(variants, tmp_path):
    with pytest.raises(ValueError, match="unknown decoder 'ffmpeg'.*decord, pyav"):
        D.open_video(variants["cfr"], "ffmpeg")
    csv = tmp_path / "split.csv"
    V.write_split_csv(csv, [(variants["cfr"], 0)])
    with pytest.raises(ValueError, match="data.decoder: 'ffmpeg' is not one of decord, pyav"):
        V.TestDataset(csv, {**DATA, "decoder": "ffmpeg"}, 2, 2)


def test_pyav_errors_name_the_problem(variants, tmp_path):
    with pytest.raises(FileNotFoundError):
        D.open_video(tmp_path / "missing.mp4", "pyav")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video " * 200)
    with pytest.raises(av.error.InvalidDataError):
        D.open_video(garbage, "pyav")
    sound = write_audio_only(tmp_path / "sound.m4a")
    with pytest.raises(ValueError, match="no video stream"):
        D.open_video(sound, "pyav")
    with pytest.raises(IndexError, match=f"outside 0..{FRAMES - 1}"):
        D.read_frames(D.open_video(variants["cfr"], "pyav"), np.array([0, FRAMES]))


def test_a_download_cut_short_is_refused_by_both_or_found_truncated(variants, tmp_path):
    """A download cut at two thirds, its index (moov) at the end: neither decoder opens it.
    With its index at the front (faststart), cut a few frames short: the last packets in the
    file are B-frames shown before the last P-frame, so the frames left still reach the
    declared end; PyAV finds the hole they leave and refuses the file, naming it truncated
    (it read 57-59 frames without a word before), while decord reads what is left (the
    splits probe drops such a file for both decoders: tests/test_splits.py)."""
    data = Path(variants["cfr"]).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(RuntimeError, match="Error reading"):
        D.open_video(cut, "decord")
    with pytest.raises(av.error.InvalidDataError):
        D.open_video(cut, "pyav")
    frames = frame_pattern(FRAMES, 48, 64, seed=5)
    whole = write_variant(tmp_path / "whole.mp4", "cfr", frames, gop=25, faststart=True)
    spans = packet_spans(whole)
    assert len(spans) == FRAMES
    for kept in (FRAMES - 3, FRAMES - 2, FRAMES - 1):
        short = truncate(whole, tmp_path / f"short{kept}.mp4", spans[kept - 1][1])
        assert len(D.open_video(short, "decord")) == kept
        with pytest.raises(
            D.BrokenVideoError,
            match=rf"^{re.escape(str(short))}: truncated: the file holds {kept} of the {FRAMES} "
            r"video frames its index lists, frames missing from 1\.\d\d s to 1\.\d\d s$",
        ):
            D.open_video(short, "pyav")
    assert len(D.open_video(whole, "pyav")) == FRAMES


def broken_in_the_data_path(tmp_path, caplog, decoder: str, bad: Path) -> tuple[str, str]:
    """Put `bad` between two good videos and read it through the data path: (the warning a
    train item logs when it replaces `bad` by the next video, the reason the evaluation lists
    for it as an excluded test video); fails if `bad` is used. Per-epoch validation excludes
    it too (it replaced it by the next video: 3 videos validated where 2 decode)."""
    good = write_pattern_mp4(tmp_path / "good.mp4", 40)
    csv = tmp_path / f"split_{decoder}.csv"
    V.write_split_csv(csv, [(str(good), 0), (str(bad), 1), (str(good), 2)])
    data = {**DATA, "decoder": decoder}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="k400ft.video"):
        _, labels, index = V.TrainDataset(csv, data, seed=1)[1]
    assert index == 2 and labels.tolist() == [2, 2]  # replaced by the next video
    warning = [r.getMessage() for r in caplog.records if f"cannot decode {bad}" in r.getMessage()]
    assert len(warning) == 1
    validation = V.TrainDataset(csv, data, "validation", seed=1)
    clips, labels, _ = V.train_collate([validation[i] for i in range(3)])
    assert labels.tolist() == [0, 2] and len(clips) == 2  # excluded, not replaced
    test = V.TestDataset(csv, data, 2, 1)
    excluded: dict[int, str] = {}
    batches = list(E.iter_view_batches((test[i] for i in range(len(test))), 4, excluded))
    assert sorted(set(torch.cat([b["video"] for b in batches]).tolist())) == [0, 2]
    assert list(excluded) == [1]  # the evaluation lists it in metrics.json's "excluded"
    return warning[0], excluded[1]


@pytest.mark.parametrize("decoder", D.DECODERS)
def test_a_truncated_faststart_mp4_is_a_broken_video_for_both_decoders(tmp_path, caplog, decoder):
    """A download cut at half its size, its index (moov) at the front: the index lists 60
    video frames, the file holds its first few, all whole (the cut falls inside an audio
    packet; the index fills much of so small a file). decord refuses it; PyAV read the frames
    left without a word (one more video evaluated than with decord). Now it is broken for
    both: a train item is replaced by the next video (logged), a test video excluded and
    listed."""
    frames = frame_pattern(FRAMES, 48, 64, seed=2)
    whole = write_variant(tmp_path / "whole.mp4", "audio", frames, faststart=True)
    middle = whole.stat().st_size // 2
    first, after = next(span for span in packet_spans(whole, "audio") if span[1] > middle)
    cut = truncate(whole, tmp_path / "cut.mp4", (first + after) // 2)
    warning, reason = broken_in_the_data_path(tmp_path, caplog, decoder, cut)
    expected = (
        rf"{re.escape(str(cut))}: truncated: the file holds \d+ of the {FRAMES} video "
        r"frames its index lists, its video ending at [0-9.]+ s of 2\.00 s"
    )
    if decoder == "pyav":
        with pytest.raises(D.BrokenVideoError, match=expected):
            D.open_video(cut, "pyav")
    # decord said only "av_read_frame failed with 1094995529" (no file, no "truncated")
    assert re.match(expected, reason), reason
    assert f"({reason})" in warning


@pytest.mark.parametrize("decoder", D.DECODERS)
def test_an_image_named_mp4_is_not_a_video_for_both_decoders(tmp_path, caplog, decoder):
    """A PNG frame plus random bytes named .mp4: decord refused it ("Failed to measure
    duration/frame-count due to broken metadata", no file named), PyAV read it as a video of
    two frames and the evaluation scored it. Both now say `<file>: not a video`: a train
    item is replaced, a validation video and a test video excluded and listed."""
    image = write_image_as_mp4(tmp_path / "frame.mp4")
    expected = rf"{re.escape(str(image))}: not a video \(.*\)"
    with pytest.raises(D.BrokenVideoError, match=expected):
        D.read_frames(D.open_video(image, decoder), np.array([0]))
    warning, reason = broken_in_the_data_path(tmp_path, caplog, decoder, image)
    assert re.fullmatch(expected, reason) and f"({reason})" in warning


def test_an_mp4_cut_between_packets_is_truncated_for_pyav_and_the_probe(tmp_path):
    """Cut exactly after its 30th video packet, a faststart mp4 opens with decord too (30
    frames, no error): PyAV refuses it, and so does the splits probe, which decides for both
    decoders (tests/test_splits.py). An edit list that skips whole GOPs also leaves fewer
    packets than the index lists, but they reach the declared end: not truncated."""
    whole = write_pattern_mp4(tmp_path / "whole.mp4", 60, seed=1, faststart=True)
    cut = truncate(whole, tmp_path / "cut.mp4", packet_spans(whole)[29][1])
    assert len(D.open_video(cut, "decord")) == 30
    with pytest.raises(
        D.BrokenVideoError, match=rf"{re.escape(str(cut))}: truncated: .* 30 of the 60 .* 2\.00 s"
    ):
        D.open_video(cut, "pyav")
    skipped = tmp_path / "edit_list.mp4"
    clock, step = Fraction(1, 30000), 1001
    with av.open(str(skipped), "w") as container:  # frames 0-34 before time 0: cut by an edit list
        options = {"g": "10", "keyint_min": "10", "bf": "0"}
        stream = container.add_stream("libx264", rate=Fraction(30000, 1001), options=options)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = stream.time_base = clock
        for number, rgb in enumerate(frame_pattern(60, 48, 64)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = (number - 35) * step, clock
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(skipped)) as container:
        assert container.streams.video[0].frames == 60
    assert len(D.open_video(skipped, "pyav")) == len(D.open_video(skipped, "decord")) < 60


@pytest.mark.parametrize("decoder", D.DECODERS)
def test_an_audio_only_file_has_no_video_stream_for_both_decoders(tmp_path, caplog, decoder):
    """decord said only "Check failed: st_nb >= 0 ..."; both now say `<file>: no video stream`
    when it is opened, in the train log and in the evaluation's list of excluded videos."""
    sound = write_audio_only(tmp_path / "sound.mp4")
    warning, reason = broken_in_the_data_path(tmp_path, caplog, decoder, sound)
    assert reason == f"{sound}: no video stream" and f"({reason})" in warning
    with pytest.raises(D.BrokenVideoError, match=f"^{re.escape(str(sound))}: no video stream$"):
        D.open_video(sound, decoder)


def test_pyav_reader_leaves_no_file_open(variants):
    def open_fds() -> int:
        gc.collect()  # readers of earlier tests
        return len(os.listdir("/proc/self/fd"))

    D.read_frames(D.open_video(variants["audio"], "pyav"), np.arange(4))  # warm up
    before = open_fds()
    readers = [D.open_video(variants["audio"], "pyav") for _ in range(20)]
    assert open_fds() >= before + 20  # each holds its file while it is not read
    for start, reader in enumerate(readers):
        D.read_frames(reader, np.arange(start, start + 8))
    assert open_fds() <= before  # read: closed, though the readers are still referenced


@pytest.mark.parametrize("augment_on_device", [False, True])
def test_datasets_give_the_same_items_with_either_decoder(tmp_path, augment_on_device):
    """The whole data path (train clips augmented, validation view, test views) is the same
    with PyAV on x264 files: the demo's, the transcode stage's, any closed-GOP copy."""
    rows = [
        (str(write_pattern_mp4(tmp_path / f"v{i}.mp4", 50 + 7 * i, 48, 64, seed=i)), i % 3)
        for i in range(3)
    ]
    csv = tmp_path / "split.csv"
    V.write_split_csv(csv, rows)
    items = {}
    for decoder in D.DECODERS:
        data = {**copy.deepcopy(DATA), "decoder": decoder}
        train = V.TrainDataset(csv, data, seed=3, apply_augment=not augment_on_device)
        val = V.TrainDataset(csv, data, mode="validation", seed=3)
        test = V.TestDataset(csv, data, 2, 3)
        train.set_epoch(1)
        items[decoder] = [
            ([train[i] for i in range(3)], [val[i] for i in range(3)], [test[i] for i in range(3)])
        ]
    for (train_a, val_a, test_a), (train_b, val_b, test_b) in zip(*items.values(), strict=True):
        for a, b in zip(train_a + val_a, train_b + val_b, strict=True):
            torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
            assert repr(a[1:]) == repr(b[1:])
        for a, b in zip(test_a, test_b, strict=True):
            assert a["ok"] and b["ok"]
            torch.testing.assert_close(a["views"], b["views"], rtol=0, atol=0)
