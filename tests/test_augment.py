"""k400ft.augment: the train augmentation as parameters (drawn in the workers) and torch ops
(applied in the workers or on the device), against the upstream-faithful PIL path.

Tolerances, per op, on the same frames and arguments as timm's PIL op (asserted below):
- exact (max |diff| 0): AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd, Color,
  Contrast, Brightness, Sharpness: the same integer / float32 arithmetic as Pillow's C code;
- at most 1 level in at most 1% of the pixels: Rotate, ShearX, ShearY, TranslateX/YRel: PIL's
  affine bicubic (a = -1 kernel, pixel centres, clamped neighbours, fill, truncation) computed
  in float32 where Pillow uses double, so a value on an integer boundary can truncate the
  other way (measured: 0-0.3% of the pixels, 1 level).
The draws are timm's own (its RandAugment with recording ops): identical to the real transform's
for the same RNG states, and the same distribution over many draws."""

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from reference import FILL, ClipAugment, rand_augment_hparams
from test_finetune import DATA as FINETUNE_DATA
from timm.data import auto_augment as AA
from timm.data.random_erasing import RandomErasing
from videos import write_pattern_mp4

from k400ft import augment as A
from k400ft import clipbatch as C
from k400ft import randaugment as R
from k400ft import video as V
from k400ft.traffic import OpCounter, Traffic, install_kernel_counting

install_kernel_counting()  # before anything is compiled in this process: kernels are counted

# the fine-tune tests' data path without erasing (compared separately) and with 4 frames
DATA = {**FINETUNE_DATA, "num_frames": 4, "augment": {**FINETUNE_DATA["augment"], "reprob": 0.0}}
PIL_OPS = {  # timm's pixel function of each RandAugment op of the 'inc1' set
    "AutoContrast": AA.auto_contrast,
    "Equalize": AA.equalize,
    "Invert": AA.invert,
    "Rotate": AA.rotate,
    "PosterizeIncreasing": AA.posterize,
    "SolarizeIncreasing": AA.solarize,
    "SolarizeAdd": AA.solarize_add,
    "ColorIncreasing": AA.color,
    "ContrastIncreasing": AA.contrast,
    "BrightnessIncreasing": AA.brightness,
    "SharpnessIncreasing": AA.sharpness,
    "ShearX": AA.shear_x,
    "ShearY": AA.shear_y,
    "TranslateXRel": AA.translate_x_rel,
    "TranslateYRel": AA.translate_y_rel,
}
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
PIL_KWARGS = {"fillcolor": FILL, "resample": Image.Resampling.BICUBIC}  # upstream's, literal


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Real decoded H.264 frames (K400's aspect, small) and synthetic ones with flat areas,
    gradients, saturated colours and noise: [T, H, W, 3] uint8 each."""
    path = write_pattern_mp4(tmp_path_factory.mktemp("aug") / "v.mp4", num_frames=6, seed=3)
    decoded = V.read_frames(V.open_video(str(path)), np.arange(3))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:128]
    synthetic = []
    for t in range(3):
        base = np.stack([(xx * 2 + 9 * t) % 256, (yy * 3) % 256, (xx + yy) % 256], -1)
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        image[20:40, 30:70] = (250, 20, 40)
        synthetic.append(image)
    return [decoded, np.stack(synthetic)]


def op_arguments(name: str, magnitude: float, negate: bool) -> tuple:
    """The arguments timm's level map gives op `name` at `magnitude` with the sign `negate`."""
    level_fn = AA.LEVEL_TO_ARG[name]
    if level_fn is None:
        return ()
    random.seed(0 if negate else 1)  # _randomly_negate: negate when random.random() > 0.5
    assert (random.random() > 0.5) == negate
    random.seed(0 if negate else 1)
    return level_fn(magnitude, {"translate_const": 100, "img_mean": FILL})


@pytest.mark.parametrize("name", sorted(PIL_OPS))
@pytest.mark.parametrize("magnitude", [2.0, 7.0, 9.6])
def test_each_tensor_op_matches_timms_pil_op(frames, name, magnitude):
    for clip in frames:
        for negate in (False, True):
            args = op_arguments(name, magnitude, negate)
            ours = R.OPS[name](torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous(), *args)
            ours = ours.permute(0, 2, 3, 1).numpy().astype(int)
            theirs = np.stack(
                [np.asarray(PIL_OPS[name](Image.fromarray(f), *args, **PIL_KWARGS)) for f in clip]
            ).astype(int)
            diff = np.abs(ours - theirs)
            if name in GEOMETRIC:
                assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (name, args, diff.max())
            else:
                assert diff.max() == 0, (name, args, diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("name", ["ShearX", "ShearY", "TranslateXRel", "TranslateYRel"])
def test_one_axis_affine_ops_read_4_neighbours_and_equal_the_16_neighbour_cubic(frames, name):
    """A shear or translation along one axis weights the other axis's neighbours by exactly 0:
    reading only 4 of the 16 gives the same bits."""
    clip = torch.from_numpy(frames[1]).permute(0, 3, 1, 2).contiguous()
    for arg in (0.3, -0.27, 0.45):
        matrix = R.MATRICES[name](arg, *clip.shape[-2:])
        assert R.AXES[name] in ("x", "y")
        one_axis = R.affine(clip, matrix, axes=R.AXES[name])
        assert torch.equal(one_axis, R.affine(clip, matrix, axes="xy"))


def test_per_frame_ops_use_each_frames_own_statistics(frames):
    """AutoContrast and Equalize work per image in PIL: a dark frame beside a bright one is
    stretched on its own."""
    clip = frames[1].copy()
    clip[0] = clip[0] // 4
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()
    for name in ("AutoContrast", "Equalize"):
        ours = R.OPS[name](x).permute(0, 2, 3, 1).numpy()
        for t, f in enumerate(clip):
            assert np.array_equal(ours[t], np.asarray(PIL_OPS[name](Image.fromarray(f))))


def test_flat_and_two_level_frames_take_pils_identity_branches():
    flat = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(R.auto_contrast(flat), flat) and torch.equal(R.equalize(flat), flat)
    two = flat.clone()
    two[:, :, :4] = 200
    for name in ("AutoContrast", "Equalize"):
        theirs = np.asarray(PIL_OPS[name](Image.fromarray(two[0].permute(1, 2, 0).numpy())))
        assert np.array_equal(R.OPS[name](two)[0].permute(1, 2, 0).numpy(), theirs)


# ---------------------------------------------------------------- the draws


def recording_pil_transform(config: str, hparams: dict, calls: list):
    """timm's real RandAugment whose ops also record what they were called with."""
    transform = AA.rand_augment_transform(config, hparams)
    for op in transform.ops:
        fn = op.aug_fn

        def recorded(img, *args, _fn=fn, _name=op.name, **kwargs):
            calls.append((_name, tuple(args)))
            return _fn(img, *args, **kwargs)

        op.aug_fn = recorded
    return transform


def test_the_sampler_draws_exactly_what_timms_transform_applies():
    hparams = rand_augment_hparams(32)  # upstream's (tests/reference.py), not the library's
    sampler = A.rand_augment_sampler("rand-m7-n4-mstd0.5-inc1", hparams)
    calls: list = []
    real = recording_pil_transform("rand-m7-n4-mstd0.5-inc1", hparams, calls)
    image = Image.new("RGB", (32, 24), (90, 120, 30))
    for seed in range(200):
        random.seed(seed), np.random.seed(seed)
        drawn = sampler([])
        after = (random.random(), np.random.rand())
        calls.clear()
        random.seed(seed), np.random.seed(seed)
        real(image)
        assert drawn == calls
        assert (random.random(), np.random.rand()) == after  # the streams end in the same place


def test_the_draws_have_rand_m7_n4_mstd0_5_inc1s_distribution():
    """Over many clips: 4 layers, each a uniform choice of the 15 ops with replacement, firing
    with p 0.5; magnitude N(7, 0.5) clipped to [0, 10]; signs 50/50."""
    sampler = A.rand_augment_sampler(
        "rand-m7-n4-mstd0.5-inc1", {"translate_const": 100, "img_mean": FILL}
    )
    random.seed(1), np.random.seed(1)
    clips = 6000
    draws = [sampler([]) for _ in range(clips)]
    counts = Counter(name for ops in draws for name, _ in ops)
    assert set(counts) == set(PIL_OPS)
    p = 4 * 0.5 / 15  # expected firings of one op per clip
    sigma = math.sqrt(clips * 4 * (1 / 15 * 0.5) * (1 - 1 / 15 * 0.5))
    for name, count in counts.items():
        assert abs(count - clips * p) < 5 * sigma, (name, count)
    fired = Counter(len(ops) for ops in draws)  # Binomial(4, 0.5)
    for k in range(5):
        assert abs(fired[k] / clips - math.comb(4, k) / 16) < 0.02
    degrees = np.array([args[0] for ops in draws for name, args in ops if name == "Rotate"])
    magnitudes = np.abs(degrees) / 3  # Rotate: level / 10 x 30 degrees
    assert abs(magnitudes.mean() - 7) < 0.05 and abs(magnitudes.std() - 0.5) < 0.05
    assert abs((degrees < 0).mean() - 0.5) < 0.05
    bits = Counter(args[0] for ops in draws for name, args in ops if name == "PosterizeIncreasing")
    assert set(bits) <= {1, 2}  # 4 - int(m / 10 x 4) for m around 7: 2, rarely 1


def test_erase_box_is_timms_random_erasing_box():
    erasing = RandomErasing(1.0, mode="pixel", max_count=1, num_splits=1, device="cpu")
    for seed in range(300):
        random.seed(seed)
        box = A.erase_box(1.0, 32, 32)
        random.seed(seed)
        image = torch.zeros(12, 32, 32)
        torch.manual_seed(seed)
        erasing(image)
        rows, cols = torch.nonzero(image.abs().sum(0)).unbind(1)
        if box is None:
            assert len(rows) == 0
        else:
            height, width = rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()
            assert (int(rows.min()), int(cols.min()), int(height), int(width)) == box
    random.seed(0)
    assert all(A.erase_box(0.0, 32, 32) is None for _ in range(50))


# ---------------------------------------------------------------- the whole clip


def both_paths(frames: np.ndarray, data: dict, seed: int, pil_on_cpu: bool = False):
    """The PIL path (reference.ClipAugment) and ours (sampler + augmenter; the torch ops unless
    pil_on_cpu) on the same item seed."""
    with V.item_rngs(seed, 0, 0):
        reference = ClipAugment(data)(frames)
    with V.item_rngs(seed, 0, 0):
        params = A.ClipSampler(data).draw(*frames.shape[1:3])
    ours = A.ClipAugmenter(data, pil_on_cpu).clip(torch.from_numpy(frames), params)
    return reference, ours, params


def test_on_the_cpu_a_clip_is_the_pil_paths_exactly(frames):
    """augment_on workers (CPU): the same draws applied with timm's PIL ops, then the same
    crop/resize/flip: the upstream-faithful path's pixels exactly, normalised up to float
    rounding (upstream's (x / 255 - mean) / std against our one multiply-add: < 1e-6, where
    one level is 1 / (255 x std) > 0.017)."""
    for clip in frames:
        for seed in range(6):
            reference, ours, params = both_paths(clip, DATA, seed, pil_on_cpu=True)
            torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6, msg=str(params))


def test_a_clip_matches_the_pil_path_drawn_from_the_same_seed(frames):
    """The torch ops (what a GPU runs), same draws, same crop/resize/flip/normalise: the clips
    differ only by the geometric ops' rare 1-level truncations, i.e. by at most 1 / (255 x
    std) after normalisation."""
    one_level = 1 / (255 * min(DATA["std"]))
    worst = 0.0
    for clip in frames:
        for seed in range(12):
            reference, ours, params = both_paths(clip, DATA, seed)
            assert ours.shape == reference.shape == (3, len(clip), 32, 32)
            diff = (ours - reference).abs()
            worst = max(worst, float(diff.max()))
            assert float(diff.max()) <= one_level + 1e-4, params
            assert float(diff.mean()) < 0.01 * one_level
    print(f"largest difference from the PIL path: {worst / one_level:.2f} levels")


def test_erasing_replaces_the_same_box_as_the_pil_path(frames):
    data = {**DATA, "augment": {**DATA["augment"], "reprob": 1.0}}
    for seed in range(8):
        reference, ours, params = both_paths(frames[1], data, seed)
        if params.erase is None:
            continue
        top, left, h, w = params.erase
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[top : top + h, left : left + w] = True
        one_level = 1 / (255 * min(DATA["std"]))
        assert float((ours - reference).abs()[..., ~inside].max()) <= one_level + 1e-4
        noise = ours[..., inside]
        assert abs(float(noise.mean())) < 0.2 and abs(float(noise.std()) - 1) < 0.2
        assert not torch.equal(ours[:, 0][..., inside], ours[:, 1][..., inside])  # per frame


# ---------------------------------------------------------------- a batch at once

SIZES = ((36, 64), (64, 48), (40, 40), (36, 64), (48, 30))  # K400 mixes aspects in a batch


def drawn_boxes(rng: random.Random, h: int, w: int, least: int) -> tuple[tuple, tuple]:
    """A random crop box in an h x w frame (sides of at least `least`), and a random erasing
    box on the 32 px clip."""
    bh, bw = rng.randint(least, h), rng.randint(least, w)
    box = (rng.randint(0, h - bh), rng.randint(0, w - bw), bh, bw)
    return box, (rng.randint(0, 20), rng.randint(0, 20), rng.randint(1, 12), rng.randint(1, 12))


def every_op_batch(videos: int, erase: bool, seed: int = 0, frames: int = 3, sizes=SIZES):
    """`videos` videos of the mixed SIZES, 2 clips each, whose 4 RandAugment layers hold every
    one of the 15 ops (each layer: the ops in turn, shifted, with timm's arguments at random
    magnitudes and signs), random crop boxes (upsampled and downsampled), flips and, with
    `erase`, every other clip erased."""
    rng = random.Random(seed)
    names = sorted(PIL_OPS)
    clips, videos_frames, params = 0, [], []
    for v in range(videos):
        h, w = sizes[v % len(sizes)]
        videos_frames.append(torch.randint(0, 256, (frames, h, w, 3), dtype=torch.uint8))
        video_params = []
        for _ in range(2):
            ops = tuple(
                (name, op_arguments(name, rng.uniform(1, 10), rng.random() < 0.5))
                for name in (names[(clips + 4 * layer) % 15] for layer in range(4))
            )
            box, erased = drawn_boxes(rng, h, w, 4)
            video_params.append(
                A.ClipParams(
                    ops,
                    box,
                    rng.random() < 0.5,
                    erased if erase and clips % 2 else None,
                    rng.randrange(2**62),
                )
            )
            clips += 1
        params.append(video_params)
    return videos_frames, params


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("by_size", [False, True], ids=["by orientation", "by size"])
@pytest.mark.parametrize("erase", [False, True], ids=["erase off", "erase on"])
def test_a_batch_is_the_per_clip_torch_ops_clip_for_clip(erase, by_size, compiled):
    """Mixed frame sizes (each orientation group padded to its largest), every one of the 15
    ops in every layer: the batch equals each clip made alone by the per-clip torch ops, bit
    for bit, eager and compiled (the same arithmetic: ops on padded frames see each clip's own
    pixels; the crop + resize is F.interpolate's CPU arithmetic; erasing noise is a function of
    the clip's seed; the compiled kernels keep eager's rounding)."""
    augmenter = A.ClipAugmenter(DATA, pil_on_cpu=False, compiled=compiled)
    frames, params = every_op_batch(5, erase)
    assert {op for ps in params for p in ps for op, _ in p.ops} == set(PIL_OPS)
    clips = augmenter.batch(frames, params, by_size=by_size)
    pairs = zip(frames, params, strict=True)
    alone = torch.stack([augmenter.clip(f, p) for f, ps in pairs for p in ps])
    assert clips.shape == (10, 3, 3, 32, 32) and clips.is_contiguous()
    assert torch.equal(clips, alone)
    groups, sizes = A.group_frames(frames)  # as the loader's collate delivers them
    assert torch.equal(augmenter.batch(groups, params, sizes, by_size=by_size), clips)
    padded, sizes = A.pad_frames(frames)  # one tensor padded to the batch's largest frame
    assert torch.equal(augmenter.batch(padded, params, sizes, by_size=by_size), clips)


def test_group_frames_pads_each_orientation_apart():
    frames = [torch.randint(1, 256, (2, h, w, 3), dtype=torch.uint8) for h, w in SIZES]
    groups, sizes = A.group_frames(frames)
    assert sizes.tolist() == [list(s) for s in SIZES]
    assert C.size_groups(sizes.tolist(), exact=False) == [[0, 2, 3], [1, 4]]
    assert C.size_groups(sizes.tolist(), exact=True) == [[0, 3], [1], [2], [4]]
    assert [tuple(g.shape) for g in groups] == [(3, 2, 40, 64, 3), (2, 2, 64, 48, 3)]
    for group, videos in zip(groups, ([0, 2, 3], [1, 4]), strict=True):
        for padded, v in zip(group, videos, strict=True):
            h, w = SIZES[v]
            assert torch.equal(padded[:, :h, :w], frames[v]) and int(padded.sum()) == int(
                frames[v].long().sum()
            )


def test_pad_frames_keeps_each_videos_pixels_and_size():
    frames = [torch.randint(1, 256, (2, h, w, 3), dtype=torch.uint8) for h, w in SIZES[:3]]
    padded, sizes = A.pad_frames(frames)
    assert padded.shape == (3, 2, 64, 64, 3) and sizes.tolist() == [list(s) for s in SIZES[:3]]
    for f, p, (h, w) in zip(frames, padded, SIZES, strict=False):
        assert torch.equal(p[:, :h, :w], f) and int(p.sum()) == int(f.long().sum())
    same, sizes = A.pad_frames(frames[:1] * 2)
    assert same.shape == (2, 2, 36, 64, 3) and sizes.tolist() == [[36, 64]] * 2


# ops that make the host wait for the device on CUDA (a value or a size read back)
SYNCING = {"_local_scalar_dense", "bincount", "nonzero", "unique", "masked_select", "_unique2"}


def test_a_batch_reads_nothing_back_from_the_device():
    """No op of the batch path needs a device value on the host (on CUDA each would stop the
    host from queueing work ahead): no item, bincount, nonzero, unique, masked_select; the
    erasing's counters come from a size the host knows."""
    augmenter = A.ClipAugmenter(DATA, pil_on_cpu=False)
    frames, params = every_op_batch(5, erase=True, frames=2)
    groups, sizes = A.group_frames(frames)
    with OpCounter() as counter:
        augmenter.batch(groups, params, sizes, by_size=False)  # as on a GPU
    names = {name for name, _ in counter.calls}
    assert not names & SYNCING, names & SYNCING
    assert "searchsorted" in names and "repeat_interleave" not in names


def test_a_batch_dispatches_as_many_ops_for_96_clips_as_for_24():
    """The batch's work is a fixed number of operations, whatever the number of clips: per
    layer one gather and each op kind once, one crop-resize gather, one erasing scatter. (The
    per-clip path dispatches ~4x more for 4x the clips.) One orientation, as on a GPU."""
    augmenter = A.ClipAugmenter(DATA, pil_on_cpu=False)
    counts = {}
    for clips in (24, 96):
        frames, params = every_op_batch(clips // 2, erase=True, frames=2, sizes=SIZES[2:4])
        groups, sizes = A.group_frames(frames)  # done by the loader's collate, in the workers
        assert len(groups) == 1
        with OpCounter() as counter:
            augmenter.batch(groups, params, sizes, by_size=False)
        counts[clips] = counter.count
    assert counts[96] <= 1.1 * counts[24], counts
    frames, params = every_op_batch(2, erase=True, frames=2)
    with OpCounter() as per_clip:
        [augmenter.clip(f, p) for f, ps in zip(frames, params, strict=True) for p in ps]
    assert per_clip.count > 2 * counts[24] / 24, "the per-clip path should cost more per clip"


def test_erasing_noise_is_a_function_of_the_clips_seed_alone():
    """The same clip erased in two different batches gets the same noise; N(0, 1) over the
    box, different in every frame and channel, and different for another seed."""
    augmenter = A.ClipAugmenter(DATA, pil_on_cpu=False)
    frames, params = every_op_batch(4, erase=True)
    clip = params[1][1]
    assert clip.erase is not None
    alone = augmenter.batch(frames[1:2], [[clip]])
    mixed = augmenter.batch(frames, params)
    assert torch.equal(alone[0], mixed[3])
    counters = torch.arange(200_000)
    noise = A.erase_noise(torch.full_like(counters, 12345), counters)
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01
    assert abs(float((noise.abs() < 1).float().mean()) - 0.6827) < 0.005  # normal, not uniform
    other = A.erase_noise(torch.full_like(counters, 12346), counters)
    assert abs(float(torch.corrcoef(torch.stack([noise, other]))[0, 1])) < 0.01
    top, left, h, w = clip.erase
    box = alone[0][:, :, top : top + h, left : left + w]
    assert not torch.equal(box[:, 0], box[:, 1]) and not torch.equal(box[0], box[1])


def test_a_batch_of_videos_of_different_sizes():
    augmenter = A.ClipAugmenter(DATA)
    sampler = A.ClipSampler(DATA)
    frames = [
        torch.randint(0, 256, (4, h, w, 3), dtype=torch.uint8) for h, w in ((36, 64), (64, 48))
    ]
    with V.item_rngs(0, 0, 0):
        params = [[sampler.draw(*f.shape[1:3]) for _ in range(2)] for f in frames]
    clips = augmenter.batch(frames, params)
    assert clips.shape == (4, 3, 4, 32, 32) and clips.dtype == torch.float32
    torch_ops = A.ClipAugmenter(DATA, pil_on_cpu=False)
    assert torch.equal(clips[2], torch_ops.clip(frames[1], params[1][0]))


# ---------------------------------------------------------------- compiled: graphs, bytes, FMA


def random_batch(rng: random.Random, erase: bool = True):
    """1-7 videos of random sizes (both orientations, squares), 2-3 frames, 1-2 clips each
    with 0-4 random RandAugment ops (any of the 15, timm's arguments), random crops, flips and
    erasing: what a compiled batch must serve without compiling again."""
    names = sorted(PIL_OPS)
    frames, params = [], []
    count = rng.randint(2, 3)
    for _ in range(rng.randint(1, 7)):
        h, w = rng.randint(8, 40), rng.randint(8, 40)
        frames.append(torch.randint(0, 256, (count, h, w, 3), dtype=torch.uint8))
        video_params = []
        for _ in range(rng.randint(1, 2)):
            ops = tuple(
                (name, op_arguments(name, rng.uniform(0, 10), rng.random() < 0.5))
                for name in rng.choices(names, k=rng.randint(0, 4))
            )
            box, erased = drawn_boxes(rng, h, w, 1)
            flip, erased = rng.random() < 0.5, erased if erase and rng.random() < 0.3 else None
            video_params.append(A.ClipParams(ops, box, flip, erased, rng.randrange(2**62)))
        params.append(video_params)
    return frames, params


def test_compiled_batches_compile_a_bounded_number_of_graphs():
    """200 random batches (random clip counts per op kind, frame sizes, orientations, frame
    counts, every op, erasing), grouped by size or by orientation: at most one graph per op
    kind, the crop's and the erasing's (sizes are unbacked, storage offsets never 0 or 1), all
    compiled in the first batches; every tenth batch equals the eager batch."""
    compiled = A.ClipAugmenter(DATA, pil_on_cpu=False, compiled=True)
    eager = A.ClipAugmenter(DATA, pil_on_cpu=False)
    rng = random.Random(7)
    start = C.compile_stats()["graphs"]
    graphs = []
    for number in range(200):
        frames, params = random_batch(rng)
        by_size = number % 2 == 0
        clips = compiled.batch(frames, params, by_size=by_size)
        graphs.append(C.compile_stats()["graphs"] - start)
        if number % 10 == 0:
            assert torch.equal(clips, eager.batch(frames, params, by_size=by_size)), number
    assert graphs[-1] <= len(C.KINDS) + 2, graphs[-1]
    assert graphs[-1] == graphs[30], (graphs[30], graphs[-1])


def test_the_compiled_batch_reads_and_writes_little_more_than_its_pixels():
    """Bytes read and written (k400ft.traffic: eager ops by their tensors, compiled kernels
    by their arguments) for a batch of K400-shaped videos, real draws: the compiled batch moves
    at most 12x the bytes of the clips' frames plus the float32 clips out (at K400 sizes
    3.7 GB for 24 clips, 9x: benchmarks/augment.py), at least 10x less than the eager ops."""
    sampler = A.ClipSampler(DATA)
    frames, params = [], []
    for number, (h, w) in enumerate([(64, 112), (64, 84), (84, 64)] * 2):
        frames.append(torch.randint(0, 256, (4, h, w, 3), dtype=torch.uint8))
        with V.item_rngs(0, 0, number):
            params.append([sampler.draw(h, w) for _ in range(2)])
    groups, sizes = A.group_frames(frames)
    counted = {}
    for compiled in (False, True):
        augmenter = A.ClipAugmenter(DATA, pil_on_cpu=False, compiled=compiled)
        augmenter.batch(groups, params, sizes, by_size=False)  # compiles
        with Traffic() as traffic:
            out = augmenter.batch(groups, params, sizes, by_size=False)
        counted[compiled] = traffic
    pixels = sum(2 * f.numel() for f in frames) + out.numel() * out.element_size()
    assert sum(n for place, n in counted[True].ops.items() if place.startswith("compiled")) > 9
    assert counted[True].total <= 12 * pixels, counted[True].bytes
    assert counted[False].total >= 10 * counted[True].total


CONTRACTED = {**C.OPTIONS, "cpp.enable_floating_point_contract_flag": "fast"}


def test_fused_multiply_add_contraction_moves_at_most_one_level(frames):
    """What a kernel that contracts a x b + c into one rounding (a GPU compiler may; ours are
    compiled without, `clipbatch.OPTIONS`) would change, measured on this CPU with contraction
    forced: the float32 kinds (rotation's bicubic, the blends) at most 1 level on at most 0.1%
    of the values, the crop and normalisation one unit in the last place (README)."""
    clip = torch.from_numpy(np.concatenate(frames[1:] * 2)).permute(0, 3, 1, 2)
    x = clip.unsqueeze(0).expand(4, -1, -1, -1, -1).contiguous()
    h, w = x.shape[-2:]
    sizes = torch.tensor([[h, w]] * 4)
    matrices = torch.tensor(
        [R.rotation_matrix(d, h, w) for d in (7.3, -13.1, 21.7, -2.2)], dtype=torch.float64
    )
    factors = torch.tensor([0.37, 1.61, 1.23, 0.71], dtype=torch.float64)
    for kind, arg in ((C.affine_xy, matrices), (C.colour, factors)):
        eager, fused = x.clone(), x.clone()
        kind(eager, arg, sizes)
        torch.compile(kind, dynamic=True, options=CONTRACTED)(fused, arg, sizes)
        diff = (eager.int() - fused.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.001, kind.__name__
    boxes = torch.tensor([[3, 5, 60, 100], [0, 0, h, w], [10, 20, 30, 40], [1, 2, 50, 90]])
    finish = (x, torch.arange(4), boxes, torch.tensor([0, 1, 1, 0]), *A.ClipAugmenter(DATA).affine)
    eager = C.crop_finish(*finish, 32)
    fused = torch.compile(C.crop_finish, dynamic=True, options=CONTRACTED)(*finish, 32)
    assert not torch.equal(eager, fused), "contraction forced but nothing changed"
    assert torch.allclose(eager, fused, rtol=2**-23, atol=2**-22)


def test_every_kind_compiles_every_graph_before_the_plan_times_a_step():
    """measure.every_kind turns a loader batch into one that runs every graph (each op kind,
    the crop, the erasing), the caller's RNG streams untouched: after it, random batches
    compile nothing. With the loader's batch alone (2 clips draw a few kinds) the plan's timed
    window compiled the rest (about 2 s in one step, the fed step then 45% above its parts)."""
    from k400ft import measure as M

    torch._dynamo.reset()  # the graphs earlier tests compiled would hide a missing one
    compiled = A.ClipAugmenter(DATA, pil_on_cpu=False, compiled=True)
    rng = random.Random(11)
    frames, params = random_batch(rng)
    while not any(c.erase for clips in params for c in clips):
        frames, params = random_batch(rng)
    groups, sizes = A.group_frames(frames)
    labels = torch.arange(sum(len(clips) for clips in params))
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    warm = M.every_kind((groups, sizes, params, labels, labels), A.ClipSampler(DATA))
    assert random.getstate() == states[0] and torch.equal(torch.get_rng_state(), states[2])
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), states[1], strict=True))
    made = [C.op_kind(op[0]) for clips in warm[2] for clip in clips for op in clip.ops]
    assert sorted(set(made)) == sorted(C.KINDS) and len(warm[3]) == len(made) + len(frames)
    before = C.compile_stats()["graphs"]
    compiled.batch(warm[0], warm[2], warm[1], by_size=False)
    start = C.compile_stats()["graphs"]
    assert 0 < start - before <= len(C.KINDS) + 2
    for number in range(30):
        frames, params = random_batch(rng)
        compiled.batch(frames, params, by_size=number % 2 == 0)
    assert C.compile_stats()["graphs"] == start
