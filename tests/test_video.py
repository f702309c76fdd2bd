"""k400ft.video: split CSVs, the exact index/crop functions, decoding, augmentation, datasets."""

import copy
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from reference import (
    ClipAugment,
    apply_same_draw,
    naive_test_view,
    tensor_normalize,
    upstream_crop_box,
    upstream_resize,
    upstream_test_view,
)
from torchvision.transforms import RandomResizedCrop
from videos import (
    demo_data,
    frame_number,
    frame_pattern,
    k400_like_frames,
    write_mp4,
    write_pattern_mp4,
)

from k400ft import augment as A
from k400ft import video as V

torch.set_num_threads(1)

DATA = demo_data(32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Real mp4 files: landscape 70 frames, portrait 100 frames, short 30 frames, a broken one."""
    root = tmp_path_factory.mktemp("clips")
    files = {
        "wide": write_pattern_mp4(root / "wide clip.mp4", 70, 48, 64, seed=1),
        "tall": write_pattern_mp4(root / "tall.mp4", 100, 64, 40, seed=2, gop=12),
        "short": write_pattern_mp4(root / "short.mp4", 30, 32, 40, seed=3),
    }
    broken = root / "broken.mp4"
    broken.write_bytes(b"not a video " * 200)
    files["broken"] = broken
    return {name: str(path) for name, path in files.items()}


def _csv(tmp_path, rows, name="split.csv"):
    path = tmp_path / name
    V.write_split_csv(path, rows)
    return path


# ---------------------------------------------------------------------------- split CSVs
def test_csv_round_trip_with_spaces(tmp_path):
    rows = [("/data/k 400/train/air drumming/a b.mp4", 3), ("/data/x.mp4", 0), ("/d/ü ñ.mp4", 399)]
    path = _csv(tmp_path, rows)
    assert V.read_split_csv(path) == rows
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1] == "/data/x.mp4 0"  # upstream's format: exactly one space
    assert lines[0] == "/data/k 400/train/air drumming/a b.mp4 3"


def test_csv_reader_two_spaces_tabs_blank_lines(tmp_path):
    path = tmp_path / "doc.csv"
    path.write_text("/a/b.mp4  7\n\n/c d/e.mp4\t 12\r\n  /f.mp4 0\n")
    assert V.read_split_csv(path) == [("/a/b.mp4", 7), ("/c d/e.mp4", 12), ("/f.mp4", 0)]


@pytest.mark.parametrize("bad", ["/a/b.mp4", "/a/b.mp4 x", "/a/b.mp4 -1", "/a/b.mp4 1.5", "  7"])
def test_csv_malformed_line_names_file_and_line(tmp_path, bad):
    path = tmp_path / "bad.csv"
    path.write_text(f"/ok.mp4 1\n{bad}\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: expected"):
        V.read_split_csv(path)


@pytest.mark.parametrize(
    "row",
    [
        ("/a.mp4 ", 1),
        (" /a.mp4", 1),
        ("/a\nb.mp4", 1),
        ("", 1),
        ("/a.mp4", -1),
        ("/a.mp4", 1.0),
        ("/a.mp4", True),
    ],
)
def test_csv_writer_refuses_what_cannot_round_trip(tmp_path, row):
    with pytest.raises(ValueError, match="row 1"):
        V.write_split_csv(tmp_path / "x.csv", [row])
    assert not (tmp_path / "x.csv").exists()


# ---------------------------------------------------------------------------- frame indices
class FixedEnd:
    """A Generator stand-in whose integers(low, high) returns `end` and records the bounds."""

    def __init__(self, end):
        self.end, self.calls = end, []

    def integers(self, low, high):
        self.calls.append((low, high))
        return self.end


WINDOW = [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 46, 51, 55, 59, 63]


@pytest.mark.parametrize(
    "n, expected",
    [
        (1, [0] * 16),
        (2, [1] * 16),  # pad value n clipped to n - 1
        (3, [2] * 16),
        (4, [0] + [3] * 15),
        (63, [0, 4, 9, 13, 18, 22, 27, 31, 36, 40, 45, 49, 54, 58, 62, 62]),
        (64, WINDOW),
    ],
)
def test_train_indices_short_videos(n, expected):
    rng = FixedEnd(None)
    np.testing.assert_array_equal(V.train_frame_indices(n, rng), expected)
    assert rng.calls == []  # no random draw for n <= 64


def test_train_indices_long_videos():
    rng = FixedEnd(64)
    np.testing.assert_array_equal(V.train_frame_indices(65, rng), WINDOW)
    assert rng.calls == [(64, 65)]  # randint(64, n): n excluded, so n = 65 always ends at 64
    rng = FixedEnd(164)
    np.testing.assert_array_equal(V.train_frame_indices(300, rng), np.array(WINDOW) + 100)
    assert rng.calls == [(64, 300)]
    ends = {V.train_frame_indices(66, np.random.default_rng(s))[-1] for s in range(200)}
    assert ends == {63, 64}  # windows ending at 64 or 65, never at the last frame 66


def test_test_indices_and_view_starts():
    np.testing.assert_array_equal(V.test_frame_indices(1), [0] * 16)
    np.testing.assert_array_equal(V.test_frame_indices(30), list(range(0, 30, 4)) + [28] * 8)
    np.testing.assert_array_equal(V.test_frame_indices(65), list(range(0, 65, 4)))
    assert len(V.test_frame_indices(300)) == 75
    assert V.test_view_starts(17) == [0, 0, 0, 0, 1]  # n = 65: REFERENCE section 6
    assert V.test_view_starts(16) == [0] * 5
    assert V.test_view_starts(75) == [0, 14, 29, 44, 59]
    assert V.test_view_starts(75, num_segments=1) == [29]
    with pytest.raises(ValueError):
        V.test_view_starts(15)


# ---------------------------------------------------------------------------- crop boxes
@pytest.mark.parametrize(
    "hw, size, expected",
    [
        ((320, 568), 224, (224, 397)),
        ((568, 320), 224, (397, 224)),
        ((224, 300), 224, (224, 300)),  # already short side 224: unchanged
        ((300, 224), 224, (300, 224)),
        ((256, 256), 224, (224, 224)),
        ((72, 96), 64, (64, 85)),
        ((100, 150), 224, (224, 336)),  # upscaling
    ],
)
def test_resized_short_side(hw, size, expected):
    assert V.resized_short_side(*hw, size) == expected


def test_center_crop_offset_rounds_half_even():
    assert V.center_crop_offset(224, 397, 224) == (0, 86)  # slack 173 -> 86.5 -> 86
    assert V.center_crop_offset(224, 399, 224) == (0, 88)  # slack 175 -> 87.5 -> 88
    assert V.center_crop_offset(300, 224, 224) == (38, 0)
    with pytest.raises(ValueError):
        V.center_crop_offset(200, 300, 224)


def test_test_crop_offsets():
    assert V.test_crop_offsets(224, 397, 224) == [(0, 0), (0, 86), (0, 173)]
    assert V.test_crop_offsets(397, 224, 224) == [(0, 0), (86, 0), (173, 0)]
    assert V.test_crop_offsets(224, 224, 224) == [(0, 0)] * 3  # square: along H, step 0
    assert V.test_crop_offsets(224, 397, 224, num_crops=1) == [(0, 86)]


class Extremes:
    """A random.Random stand-in: uniform returns the top of the range, randint the bottom."""

    def uniform(self, low, high):
        return high

    def randint(self, low, high):
        return low


def test_random_resized_crop_box_bounds_and_fallback():
    rng = random.Random(0)
    for _ in range(500):
        top, left, h, w = A.random_resized_crop_box(48, 64, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top <= 48 - h and 0 <= left <= 64 - w and h > 0 and w > 0
    # whole-frame area at the widest ratio never fits a 100 x 1000 frame: centred fallback
    assert A.random_resized_crop_box(100, 1000, (0.08, 1.0), (3 / 4, 4 / 3), Extremes()) == (
        0,
        433,
        100,
        133,
    )
    assert A.random_resized_crop_box(1000, 100, (0.08, 1.0), (3 / 4, 4 / 3), Extremes())[2:] == (
        133,
        100,
    )
    # first try fits: area 1.0 * 48 * 64 at ratio 4/3 = the whole frame
    assert A.random_resized_crop_box(48, 64, (0.08, 1.0), (3 / 4, 4 / 3), Extremes()) == (
        0,
        0,
        48,
        64,
    )


def test_random_resized_crop_box_matches_torchvision_distribution():
    rng = random.Random(1)
    torch.manual_seed(1)
    ours = np.array(
        [
            A.random_resized_crop_box(240, 320, (0.08, 1.0), (3 / 4, 4 / 3), rng)
            for _ in range(3000)
        ],
        dtype=float,
    )
    img = torch.empty(1, 240, 320)
    theirs = np.array(
        [RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(3000)],
        dtype=float,
    )
    for column in range(4):  # top, left, h, w: means agree within sampling noise
        spread = theirs[:, column].std() / math.sqrt(3000)
        assert abs(ours[:, column].mean() - theirs[:, column].mean()) < 5 * spread


def _seed_streams(seed):
    random.seed(seed)
    np.random.seed(seed)


def _assert_same_streams(python_state, expected_python, numpy_state, expected_numpy):
    """Both streams at the same position: Python's state tuples equal, numpy's
    ('MT19937', key, pos, has_gauss, cached_gaussian) equal field by field."""
    assert python_state == expected_python
    assert numpy_state[0] == expected_numpy[0]
    assert np.array_equal(numpy_state[1], expected_numpy[1])
    assert numpy_state[2:] == expected_numpy[2:], "numpy's stream is at a different position"


UPSTREAM_RATIO = (0.75, 1.3333)  # kinetics.py:191's literals
# (height, width, scale): a K400-like frame (mostly the first try), a flat strip (failed tries,
# then a fit), a 4 px strip (never fits: the fallback after 10 tries)
CROP_CASES = [(240, 320, (0.08, 1.0)), (20, 200, (0.08, 1.0)), (4, 400, (0.08, 1.0))]


@pytest.mark.parametrize("own_rng", [False, True], ids=["global", "rng"])
def test_random_resized_crop_box_draws_exactly_as_upstreams_loop(own_rng):
    """Box and both streams' positions afterwards equal the restated upstream loop's, for 200
    seeds on frames that take one try, several, or the fallback; with `rng` the Python draws
    come from it and Python's global stream is left alone."""
    tries_seen = set()
    for seed in range(200):
        for height, width, scale in CROP_CASES:
            _seed_streams(seed)
            expected, tries = upstream_crop_box(height, width, scale, UPSTREAM_RATIO)
            tries_seen.add(tries)
            expected_python, expected_numpy = random.getstate(), np.random.get_state()
            _seed_streams(seed)
            if own_rng:
                rng = random.Random(seed)
                random.seed(seed + 1)
                untouched = random.getstate()
                box = A.random_resized_crop_box(height, width, scale, UPSTREAM_RATIO, rng)
                assert random.getstate() == untouched
                python_state = rng.getstate()
            else:
                box = A.random_resized_crop_box(height, width, scale, UPSTREAM_RATIO)
                python_state = random.getstate()
            assert box == expected, (seed, height, width)
            _assert_same_streams(
                python_state, expected_python, np.random.get_state(), expected_numpy
            )
    assert {1, 2, 3, 10} <= tries_seen  # first try, later tries, and the fallback all ran


def _replay_clip(sampler, seed, crop_python_draws, tries):
    """Seed both streams and make, by hand, the draws one train clip should take: timm's
    RandAugment (numpy op choice + Python per-op draws, the sampler's own), the crop's Python
    draws, one numpy draw per crop try, the flip (numpy), the erasing box (Python)."""
    _seed_streams(seed)
    sampler.rand_augment([])
    crop_python_draws()
    for _ in range(tries):
        np.random.uniform()
    np.random.uniform()  # the flip
    if sampler.reprob > 0:
        A.erase_box(sampler.reprob, sampler.size, sampler.size)
    return random.getstate(), np.random.get_state()


def test_a_train_clip_takes_one_numpy_draw_per_crop_try_fallback():
    """A 4 x 400 frame never fits a crop (h >= 9 px at 8% of the area): 10 tries, 20 Python
    draws (area, aspect) and 10 numpy draws in the crop, then the centred fallback; the
    flip reads numpy's stream 10 draws on."""
    sampler = A.ClipSampler(DATA)
    assert sampler.ratio == UPSTREAM_RATIO  # the configs carry upstream's literals

    def crop_python_draws():
        for _ in range(10):
            random.uniform(0.0, 1.0), random.uniform(0.0, 1.0)

    for seed in range(20):
        _seed_streams(seed)
        params = sampler.draw(4, 400)
        after = random.getstate(), np.random.get_state()
        assert params.box == (0, 197, 4, 5)  # centred, 4 px high at the widest ratio 1.3333
        expected = _replay_clip(sampler, seed, crop_python_draws, tries=10)
        _assert_same_streams(after[0], expected[0], after[1], expected[1])


def test_a_train_clip_takes_a_numpy_draw_on_the_accepted_try_too(monkeypatch):
    """Python's uniform scripted so that the crop's first two tries fail (the whole area at
    aspect 0.75: 64 px high on a 48 px frame) and the third fits (a quarter of the area at
    aspect 1: 28 x 28): 3 numpy draws in the crop (the accepted try's included) plus the
    flip; the Python stream moves by RandAugment's draws and the two randints alone."""
    data = copy.deepcopy(DATA)
    data["augment"]["reprob"] = 0.0
    sampler = A.ClipSampler(data)
    script = [1.0, math.log(0.75), 1.0, math.log(0.75), 0.25, 0.0]
    for seed in range(20):
        values = iter(script)
        monkeypatch.setattr(random, "uniform", lambda low, high, values=values: next(values))
        _seed_streams(seed)
        params = sampler.draw(48, 64)
        after = random.getstate(), np.random.get_state()
        assert next(values, None) is None  # exactly 3 tries' area and aspect draws
        top, left, h, w = params.box
        assert (h, w) == (28, 28)

        def crop_python_draws():
            random.randint(0, 48 - 28), random.randint(0, 64 - 28)

        expected = _replay_clip(sampler, seed, crop_python_draws, tries=3)
        _assert_same_streams(after[0], expected[0], after[1], expected[1])
        _seed_streams(seed)
        sampler.rand_augment([])
        assert (top, left) == (random.randint(0, 20), random.randint(0, 36))


# ---------------------------------------------------------------------------- decoding
def test_read_frames_decodes_each_distinct_frame_in_order(clips):
    reader = V.open_video(clips["tall"])
    indices = np.array([40, 3, 3, 71, 0, 40])
    frames = V.read_frames(reader, indices)
    assert frames.shape == (6, 64, 40, 3)
    assert [frame_number(f) for f in frames] == indices.tolist()
    one_by_one = np.stack(
        [V.open_video(clips["tall"]).get_batch([i]).asnumpy()[0] for i in indices]
    )
    np.testing.assert_array_equal(frames, one_by_one)


@pytest.mark.parametrize("name", ["wide", "tall", "short"])
def test_test_views_equal_views_decoded_separately(clips, tmp_path, name):
    dataset = V.TestDataset(_csv(tmp_path, [(clips[name], 5)]), DATA, num_segments=5, num_crops=3)
    item = dataset[0]
    assert item["ok"] and item["label"] == 5 and item["video"] == 0 and item["error"] == ""
    assert item["views"].shape == (15, 3, 16, 32, 32)
    assert item["segment"].tolist() == [s for s in range(5) for _ in range(3)]
    assert item["crop"].tolist() == [0, 1, 2] * 5
    naive = torch.stack(
        [naive_test_view(clips[name], DATA, s, c, 5, 3) for s in range(5) for c in range(3)]
    )
    # the same pixels, normalised up to float rounding (upstream's (x / 255 - mean) / std
    # against one multiply-add: < 1e-6; one level is 1 / (255 x std) > 0.017)
    torch.testing.assert_close(item["views"], naive, rtol=0, atol=1e-6)


def test_uint8_test_views_normalised_on_the_device_match(clips, tmp_path):
    csv = _csv(tmp_path, [(clips["wide"], 1), (clips["broken"], 2)])
    floats = V.TestDataset(csv, DATA, 5, 3)[0]["views"]
    raw = V.TestDataset(csv, DATA, 5, 3, normalized=False)
    item = raw[0]
    assert item["views"].dtype == torch.uint8 and item["views"].shape == floats.shape
    normalised = V.normalize_views(item["views"], DATA["mean"], DATA["std"])
    torch.testing.assert_close(normalised, floats, rtol=0, atol=1e-6)
    assert raw[1]["views"].dtype == torch.uint8 and not raw[1]["ok"]


def test_test_views_skip_resize_when_short_side_fits(tmp_path):
    path = write_mp4(tmp_path / "fit.mp4", frame_pattern(20, 32, 40))
    views = V.TestDataset(_csv(tmp_path, [(str(path), 0)]), DATA, 5, 3)[0]["views"]
    raw = torch.from_numpy(V.open_video(str(path)).get_batch(list(range(0, 20, 4))).asnumpy())
    last = views[-1]  # segment 4, crop 2: frames 0..16 step 4 padded, columns 8..39
    expected = tensor_normalize(raw[:, :, 8:40], DATA["mean"], DATA["std"]).permute(3, 0, 1, 2)
    torch.testing.assert_close(last[:, :5], expected, rtol=0, atol=1e-6)  # float rounding
    assert torch.equal(last[:, 5:], last[:, 4:5].expand(-1, 11, -1, -1))


# (height, width) of footage-like frames: K400's short side 320 at 16:9, 4:3 and portrait
# (down), an exact 2x reduction (where OpenCV's INTER_LINEAR takes its INTER_AREA shortcut),
# odd sizes a little down and up, small frames up, and frames already at the target size
# (upstream then does not resize at all), a square one included.
UPSTREAM_SIZES = [
    (320, 568),
    (320, 427),
    (568, 320),
    (448, 600),
    (225, 301),
    (223, 397),
    (181, 243),
    (120, 160),
    (224, 298),
    (300, 224),
    (250, 250),
]


@pytest.mark.parametrize(("height", "width"), UPSTREAM_SIZES)
def test_test_views_and_validation_clip_are_upstreams_opencv_pixels(tmp_path, height, width):
    """Byte for byte what upstream's `resize_clip` (cv2.resize, INTER_LINEAR, per frame) then
    its crops give (tests/reference.py): all 15 test views (uint8), and the validation clip
    (normalised to within float rounding)."""
    data = {**DATA, "short_side_size": 224, "input_size": 224}
    frames = k400_like_frames(16, height, width, seed=height + width)
    csv = _csv(tmp_path, [("never decoded.mp4", 0)])
    views = V.TestDataset(csv, data, 5, 3, normalized=False).views(frames)
    expected = torch.stack(
        [
            torch.from_numpy(upstream_test_view(frames, 224, 16, s, c, 5, 3)).permute(3, 0, 1, 2)
            for s in range(5)
            for c in range(3)
        ]
    )
    diff = views.int() - expected.int()
    assert views.shape == expected.shape and not diff.any(), (
        f"{(diff != 0).float().mean():.1%} of the test views' values differ from upstream's, "
        f"mean {diff.float().mean():+.3f} levels"
    )
    resized = upstream_resize(frames, 224)
    top, left = (round((side - 224) / 2.0) for side in resized.shape[1:3])  # upstream's centre
    crop = torch.from_numpy(resized[:, top : top + 224, left : left + 224])
    validation = V.TrainDataset(csv, data, "validation").validation_clip(frames)
    expected = tensor_normalize(crop, data["mean"], data["std"]).permute(3, 0, 1, 2)
    torch.testing.assert_close(validation, expected, rtol=0, atol=1e-6)  # float rounding


def test_broken_test_video_is_reported_not_raised(clips, tmp_path):
    item = V.TestDataset(_csv(tmp_path, [(clips["broken"], 2)]), DATA, 5, 3)[0]
    assert item["ok"] is False and item["views"].shape == (0, 3, 16, 32, 32)
    assert item["segment"].numel() == 0 and item["label"] == 2
    assert "Error reading" in item["error"] or "moov" in item["error"]


# ---------------------------------------------------------------------------- augmentation
def test_rand_augment_same_draw_for_every_frame():
    augment = ClipAugment(DATA)
    frames = frame_pattern(6, 40, 56, seed=4)
    images = [Image.fromarray(f) for f in frames]
    for seed in range(6):
        random.seed(seed)
        np.random.seed(seed)
        clip = apply_same_draw(augment.rand_augment, images)
        after = random.random(), np.random.random()
        for frame, out in zip(images, clip, strict=False):
            random.seed(seed)
            np.random.seed(seed)
            assert np.array_equal(np.asarray(augment.rand_augment(frame)), np.asarray(out))
        assert (random.random(), np.random.random()) == after  # streams end as after one image
    # and the draw is not trivial: frame-by-frame draws would differ between frames
    same = [Image.fromarray(frames[0])] * 4
    random.seed(0)
    np.random.seed(0)
    independent = [np.asarray(augment.rand_augment(im)) for im in same]
    assert any(not np.array_equal(independent[0], x) for x in independent[1:])


def test_random_erasing_one_box_same_in_every_frame():
    data = copy.deepcopy(DATA)
    data["augment"].update(reprob=1.0, rand_augment="rand-m0-n0")
    augment = ClipAugment(data)
    flat = np.full((8, 40, 56, 3), 128, dtype=np.uint8)
    torch.manual_seed(0)
    random.seed(3)
    np.random.seed(3)
    clip = augment(flat)  # [3, T, S, S]
    erased = (clip - clip[:, :, :1, :1]).abs().sum(0) > 1e-4  # per frame [S, S] mask
    assert erased[0].any() and all(torch.equal(erased[0], m) for m in erased)
    box = erased[0]
    assert not torch.equal(clip[:, 0][:, box], clip[:, 1][:, box])  # fresh noise per frame


def test_train_items_are_seeded_and_leave_global_rngs_alone(clips, tmp_path):
    csv = _csv(tmp_path, [(clips["wide"], 0), (clips["tall"], 1)])
    first = V.TrainDataset(csv, DATA, "train", seed=7)
    second = V.TrainDataset(csv, DATA, "train", seed=7)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    a, labels, index = first[1]
    assert a.shape == (2, 3, 16, 32, 32) and labels.tolist() == [1, 1] and index == 1
    assert not torch.equal(a[0], a[1])  # two different augmentations of the same frames
    assert torch.equal(a, second[1][0])
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    first.set_epoch(1)
    assert not torch.equal(a, first[1][0])
    assert torch.equal(first[1][0], first[1][0])
    assert not torch.equal(a, V.TrainDataset(csv, DATA, "train", seed=8)[1][0])


def test_validation_view_is_centre_crop_of_random_window(clips, tmp_path):
    dataset = V.TrainDataset(_csv(tmp_path, [(clips["wide"], 4)]), DATA, "validation")
    clip, labels, _ = dataset[0]
    assert clip.shape == (1, 3, 16, 32, 32) and labels.tolist() == [4]
    with V.item_rngs(0, 0, 0) as rng:
        indices = V.train_frame_indices(70, rng)
    frames = torch.from_numpy(V.read_frames(V.open_video(clips["wide"]), indices))
    resized = upstream_resize(frames.numpy(), 32)  # 48 x 64 -> 32 x 42
    assert resized.shape[1:3] == (32, 42)
    centre = resized[:, :, 5:37]  # round((42 - 32) / 2) = 5
    expected = tensor_normalize(torch.from_numpy(centre), DATA["mean"], DATA["std"])
    torch.testing.assert_close(clip[0], expected.permute(3, 0, 1, 2), rtol=0, atol=1e-6)


def test_broken_train_video_replaced_by_next_and_bounded(clips, tmp_path):
    csv = _csv(tmp_path, [(clips["wide"], 0), (clips["broken"], 1), (clips["short"], 2)])
    clips_, labels, index = V.TrainDataset(csv, DATA, "train")[1]
    assert index == 2 and labels.tolist() == [2, 2]
    all_broken = _csv(tmp_path, [(clips["broken"], 0)] * 3, "broken.csv")
    with pytest.raises(RuntimeError, match="3 consecutive videos"):
        V.TrainDataset(all_broken, DATA, "train")[0]


def test_loader_with_persistent_worker_follows_set_epoch(clips, tmp_path):
    csv = _csv(tmp_path, [(clips["short"], 0), (clips["wide"], 1)])
    dataset = V.TrainDataset(csv, DATA, "train", seed=3)
    loader = V.make_loader(dataset, batch_size=2, num_workers=1, collate_fn=V.train_collate)
    assert loader.persistent_workers and not loader.pin_memory
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        batch_clips, batch_labels, batch_index = next(iter(loader))
        assert batch_clips.shape == (4, 3, 16, 32, 32)
        assert batch_labels.tolist() == [0, 0, 1, 1] and batch_index.tolist() == [0, 0, 1, 1]
        expected = torch.cat([dataset[0][0], dataset[1][0]])
        assert torch.equal(batch_clips, expected)  # the worker saw this epoch
