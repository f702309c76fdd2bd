"""CPU video decoders on the data path's frame indices: time per item and bit-identity to decord.

    OMP_NUM_THREADS=1 python benchmarks/decoders.py [--videos 4] [--gops 250,12] [--draws 3]
    (torchcodec rows need torchcodec importable, e.g. PYTHONPATH=/path/to/torchcodec, and the
    FFmpeg shared libraries it loads; without it those rows are skipped and the output says why)

One core, one decoding thread per decoder, process CPU time (with one thread that is the
one-core cost, whatever else the machine runs). The same K400-like H.264 files (300 frames,
320 x 568, crf 23; data_throughput.py's generator, kept in --dir) at each keyframe interval of
--gops (250: x264's default, what K400 copies have; 12: a short-keyframe copy), and the same
frame indices for every decoder:

  train  video.train_frame_indices (16 frames over a 64-frame window), a seeded numpy
         Generator per (draw, video): --draws items per video
  test   video.test_frame_indices (every 4th frame of the whole video): one item per video

An item is what a loader worker does: open the file, read its frame count, take the indices,
decode each distinct frame once (sorted) to [T, H, W, 3] uint8 RGB in a numpy array, close.

  decord                  what we use: video.open_video + video.read_frames (get_batch)
  torchcodec-exact        VideoDecoder(seek_mode="exact"), get_frames_at(indices) (exact mode
                          scans the file's packets when it opens it)
  torchcodec-approximate  VideoDecoder(seek_mode="approximate"): frame positions from the
                          header's frame rate, no scan
  pyav                    `data.decoder: pyav` (k400ft.decoders.PyAVVideo): decord's frame
                          numbering from a packet scan, one seek by pts, decode forward,
                          to_ndarray("rgb24") of the wanted frames

For each decoder: median and total CPU time per item, the ratio to decord, and whether its
frames are bit-identical to decord's (else max |diff| and the fraction of differing pixels).
--variants (default on): the same comparison on the files tests/videos.py VARIANTS writes at
the same size (what a Kinetics-400 tree can hold: 29.97 fps with B-frames, an audio track,
variable frame rate, a late start, full-range BT.709, open GOPs, MPEG-4 Part 2, Matroska, VP9
WebM), with a ground truth: every frame decoded in order, no seek (PyAV's plain decode loop).
For each decoder, how many returned frames are the ground truth's frame at that index, and for
the others how far off they are (the index of the identical ground-truth frame).

Then a profile of one train item, end to end, for decord (open, len, indices, get_batch,
asnumpy, close; and get_batch split into the seek + decode up to the first wanted frame and the
decode of the rest) and for PyAV, whose steps can be separated further (demuxer open, seek,
decode to YUV, colour conversion to RGB, stacking): decord converts inside get_batch.

Not used by the tests (and must not be imported by them).
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import decord
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from data_throughput import k400_like_frames, make_videos  # noqa: E402
from videos import VARIANTS, write_variant  # noqa: E402

from k400ft import decoders as decoders_module  # noqa: E402
from k400ft import video  # noqa: E402

try:
    from torchcodec import _core as torchcodec_core
    from torchcodec.decoders import VideoDecoder

    TORCHCODEC_VERSIONS = torchcodec_core.get_ffmpeg_library_versions()  # loads FFmpeg
    TORCHCODEC_ERROR = None
except Exception as error:  # ImportError, or RuntimeError: FFmpeg libraries not found
    VideoDecoder = None
    TORCHCODEC_VERSIONS = None
    lines = str(error).strip().splitlines() or [""]
    missing = [line.strip() for line in lines if "cannot open shared object file" in line]
    TORCHCODEC_ERROR = f"{type(error).__name__}: {lines[0]}" + (
        f" (FFmpeg shared libraries missing, e.g. {missing[0]})" if missing else ""
    )

NUM_FRAMES, SAMPLING_RATE = 16, 4  # the paper run's clip: 16 frames over a 64-frame window

Indexer = Callable[[int], np.ndarray]  # frame count -> frame indices


def unique_sorted(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The distinct indices in increasing order, and how to expand them back (None: as is)."""
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    if len(unique) == len(indices) and np.array_equal(unique, indices):
        return unique, None
    return unique, inverse.reshape(-1)


# --------------------------------------------------------------------------------------------
# The decoders: path, indexer -> (indices, [T, H, W, 3] uint8)
# --------------------------------------------------------------------------------------------
def library_decoder(name: str) -> Callable[[str, Indexer], tuple[np.ndarray, np.ndarray]]:
    """What `data.decoder: name` does in the datasets (k400ft.decoders)."""

    def decode(path: str, indexer: Indexer) -> tuple[np.ndarray, np.ndarray]:
        reader = video.open_video(path, name)
        indices = indexer(len(reader))
        frames = video.read_frames(reader, indices)
        del reader  # as the datasets do: a live decord reader keeps decoding ahead
        return indices, frames

    return decode


def torchcodec_decoder(seek_mode: str) -> Callable[[str, Indexer], tuple[np.ndarray, np.ndarray]]:
    def decode(path: str, indexer: Indexer) -> tuple[np.ndarray, np.ndarray]:
        decoder = VideoDecoder(
            path,
            seek_mode=seek_mode,
            num_ffmpeg_threads=1,
            device="cpu",
            dimension_order="NHWC",
        )
        indices = indexer(len(decoder))
        unique, inverse = unique_sorted(indices)
        frames = decoder.get_frames_at(unique.tolist()).data.numpy()
        del decoder
        return indices, frames if inverse is None else frames[inverse]

    return decode


def decoders(names: list[str]) -> tuple[dict[str, Callable], list[str]]:
    """The decoders asked for that can run here, and notes on those that cannot."""
    available = {name: library_decoder(name) for name in decoders_module.DECODERS}
    for mode in ("exact", "approximate"):
        available[f"torchcodec-{mode}"] = (
            torchcodec_decoder(mode) if VideoDecoder is not None else None
        )
    chosen, notes = {}, []
    for name in names:
        if name not in available:
            raise SystemExit(f"unknown decoder {name!r}: choose from {', '.join(available)}")
        if available[name] is None:
            notes.append(f"{name}: skipped, torchcodec unavailable ({TORCHCODEC_ERROR})")
        else:
            chosen[name] = available[name]
    if "decord" not in chosen:
        raise SystemExit("decord is the reference: keep it in --decoders")
    return chosen, notes


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
class Stats:
    """CPU seconds per item and the differences from decord's frames."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.max_diff = 0
        self.values = self.values_differing = 0
        self.pixels = self.pixels_differing = 0
        self.index_mismatches = 0

    def compare(self, indices, frames, ref_indices, ref_frames) -> None:
        if not np.array_equal(indices, ref_indices) or frames.shape != ref_frames.shape:
            self.index_mismatches += 1
            return
        diff = np.abs(frames.astype(np.int16) - ref_frames.astype(np.int16))
        self.max_diff = max(self.max_diff, int(diff.max()))
        self.values += diff.size
        self.values_differing += int(np.count_nonzero(diff))
        self.pixels += diff.size // diff.shape[-1]
        self.pixels_differing += int(np.count_nonzero(diff.max(axis=-1)))

    def identity(self) -> str:
        if self.index_mismatches:
            return f"{self.index_mismatches} items: other indices or shape"
        if self.pixels == 0:
            return "-"
        if self.max_diff == 0:
            return "bit-identical"
        return (
            f"max|d| {self.max_diff}, {100 * self.pixels_differing / self.pixels:.3f}% px "
            f"({100 * self.values_differing / self.values:.3f}% values)"
        )


def measure(
    paths: list[str], chosen: dict[str, Callable], draws: int, seed: int
) -> dict[str, dict[str, Stats]]:
    """results[path kind][decoder]: the same items for every decoder, decord first."""
    items = {
        "train": [(draw, i) for draw in range(draws) for i in range(len(paths))],
        "test": [(0, i) for i in range(len(paths))],
    }

    def indexer(kind: str, draw: int, i: int) -> Indexer:
        if kind == "test":
            return lambda n: video.test_frame_indices(n, NUM_FRAMES, SAMPLING_RATE)
        rng = np.random.default_rng([seed, draw, i])  # a fresh, equal generator per decoder
        return lambda n: video.train_frame_indices(n, rng, NUM_FRAMES, SAMPLING_RATE)

    for decode in chosen.values():  # warm up: libraries, allocator
        decode(paths[0], indexer("train", 0, 0))
    results = {kind: {name: Stats() for name in chosen} for kind in items}
    for kind, kind_items in items.items():
        for draw, i in kind_items:
            reference = None
            for name, decode in chosen.items():
                start = time.process_time()
                indices, frames = decode(paths[i], indexer(kind, draw, i))
                results[kind][name].seconds.append(time.process_time() - start)
                if reference is None:
                    reference = indices, frames  # decord's
                else:
                    results[kind][name].compare(indices, frames, *reference)
    return results


def ground_truth(path: str) -> np.ndarray:
    """Every frame of `path` in display order, decoded in one pass from the start (no seek)."""
    with av.open(path) as container:
        stream = container.streams.best("video")
        stream.codec_context.thread_count = 1
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def offset(truth: np.ndarray, index: int, frame: np.ndarray) -> int | None:
    """Which ground-truth frame `frame` is, relative to `index` (the nearest identical one;
    None: none is identical)."""
    if index < len(truth) and np.array_equal(truth[index], frame):
        return 0
    same = [i for i in range(len(truth)) if np.array_equal(truth[i], frame)]
    return min((i - index for i in same), key=abs) if same else None


def measure_variants(
    folder: Path, chosen: dict[str, Callable], draws: int, seed: int
) -> list[tuple[str, str, dict[str, tuple[Stats, list[int]]]]]:
    """Per VARIANTS file (300 frames, 320 x 568): per decoder, Stats of its train and test
    items (vs decord) and the offsets of its returned frames from the frames asked for
    (0: right; None: no identical ground-truth frame)."""
    frames = k400_like_frames(300, 320, 568, seed=7)
    rows = []
    for name, (suffix, what) in VARIANTS.items():
        path = folder / f"variant_{name}{suffix}"
        if not path.exists():
            write_variant(path, name, frames)
        truth = ground_truth(str(path))
        by_decoder = {decoder: (Stats(), []) for decoder in chosen}

        def indexer(draw: int) -> Indexer:  # a fresh, equal generator per decoder
            if draw == draws:
                return lambda n: video.test_frame_indices(n, NUM_FRAMES, SAMPLING_RATE)
            rng = np.random.default_rng([seed, draw])
            return lambda n: video.train_frame_indices(n, rng, NUM_FRAMES, SAMPLING_RATE)

        for draw in range(draws + 1):  # the train items, then the test item
            reference = None
            for decoder, decode in chosen.items():
                stats, offsets = by_decoder[decoder]
                start = time.process_time()
                indices, got = decode(str(path), indexer(draw))
                stats.seconds.append(time.process_time() - start)
                offsets.extend(
                    offset(truth, index, frame) for index, frame in zip(indices, got, strict=True)
                )
                if reference is None:
                    reference = indices, got
                else:
                    stats.compare(indices, got, *reference)
        rows.append((name, what, by_decoder))
    return rows


def right_frames(offsets: list[int | None]) -> str:
    wrong = [o for o in offsets if o != 0]
    if not wrong:
        return f"all {len(offsets)}"
    known = [abs(o) for o in wrong if o is not None]
    far = f", off by up to {max(known)} frames" if known else ""
    unknown = sum(o is None for o in wrong)
    return f"{len(offsets) - len(wrong)} of {len(offsets)}{far}" + (
        f", {unknown} not any decoded frame" if unknown else ""
    )


def median_steps(runs: list[dict[str, float]]) -> dict[str, float]:
    return {step: float(np.median([run[step] for run in runs])) for step in runs[0]}


def profile_decord(path: str, seed: int, repeats: int) -> tuple[dict, dict, dict]:
    """One train item's steps (CPU seconds, median over `repeats` fresh readers), with
    get_batch in one call, and split into its first frame and the rest; and get_batch of every
    frame of the window, first..last, to estimate what decord spends per frame it returns
    (colour conversion to RGB and the copy out: it decodes the same frames either way)."""
    whole, split, window = [], [], []
    for repeat in range(3 * repeats):
        steps = {}
        t = time.process_time()
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        steps["open (VideoReader)"] = time.process_time() - t
        t = time.process_time()
        n = len(reader)
        steps["len()"] = time.process_time() - t
        t = time.process_time()
        indices = video.train_frame_indices(n, np.random.default_rng([seed, 0, 0]))
        unique, _ = unique_sorted(indices)
        steps["indices (+ np.unique)"] = time.process_time() - t
        if repeat % 3 == 2:
            t = time.process_time()
            reader.get_batch(list(range(int(unique[0]), int(unique[-1]) + 1))).asnumpy()
            steps["every frame of the window"] = time.process_time() - t
        elif repeat % 3 == 0:
            t = time.process_time()
            batch = reader.get_batch(unique.tolist())
            steps["get_batch: seek, decode, to RGB"] = time.process_time() - t
            t = time.process_time()
            batch.asnumpy()
            steps["asnumpy (copy)"] = time.process_time() - t
        else:
            t = time.process_time()
            first = reader.get_batch(unique[:1].tolist())
            steps["get_batch(first): seek + decode to it"] = time.process_time() - t
            t = time.process_time()
            rest = reader.get_batch(unique[1:].tolist())
            steps["get_batch(rest): decode forward"] = time.process_time() - t
            t = time.process_time()
            first.asnumpy(), rest.asnumpy()
            steps["asnumpy (copy)"] = time.process_time() - t
        t = time.process_time()
        del reader
        steps["close (del reader)"] = time.process_time() - t
        (whole, split, window)[repeat % 3].append(steps)
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    keys = np.asarray(reader.get_key_indices())
    del reader
    key = int(keys[keys <= unique[0]].max())
    whole, split = median_steps(whole), median_steps(split)
    returned = whole["get_batch: seek, decode, to RGB"] + whole["asnumpy (copy)"]
    extra = int(unique[-1] - unique[0] + 1) - len(unique)
    info = {
        "indices": unique,
        "keyframe": key,
        "decoded": int(unique[-1]) - key + 1,
        "per_returned_frame": (median_steps(window)["every frame of the window"] - returned)
        / max(extra, 1),
    }
    return whole, split, info


def profile_pyav(path: str, seed: int, repeats: int) -> dict[str, float]:
    """The same item with `data.decoder: pyav`: open (demuxer, codec, the packet scan), then
    frames() (seek to the keyframe, decode forward, convert the wanted frames, close)."""
    runs = []
    for _ in range(repeats):
        steps = {}
        t = time.process_time()
        reader = decoders_module.PyAVVideo(path)
        steps["open + scan of every packet"] = time.process_time() - t
        t = time.process_time()
        indices = video.train_frame_indices(len(reader), np.random.default_rng([seed, 0, 0]))
        unique, _ = unique_sorted(indices)
        steps["indices (+ np.unique)"] = time.process_time() - t
        t = time.process_time()
        reader.frames(unique)
        steps["frames(): seek, decode, to RGB, close"] = time.process_time() - t
        runs.append(steps)
    return median_steps(runs)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def ffmpeg_of(avcodec_major: int) -> str:
    return {58: "4.x", 59: "5.x", 60: "6.x", 61: "7.x", 62: "8.x"}.get(avcodec_major, "?")


def versions() -> list[str]:
    bundled = glob.glob(os.path.join(os.path.dirname(decord.__file__) + ".libs", "libavcodec-*"))
    decord_codec = bundled[0].rsplit(".so.", 1)[-1] if bundled else "?"
    decord_ffmpeg = ffmpeg_of(int(decord_codec.split(".")[0])) if bundled else "?"
    codec = ".".join(map(str, av.library_versions["libavcodec"]))
    lines = [
        f"torch {torch.__version__}, numpy {np.__version__}",
        f"decord {decord.__version__}: its bundled libavcodec {decord_codec} "
        f"(FFmpeg {decord_ffmpeg})",
        f"av {av.__version__}: its bundled FFmpeg {av.ffmpeg_version_info} (libavcodec {codec})",
    ]
    if TORCHCODEC_VERSIONS is not None:
        import torchcodec

        tc_codec = ".".join(map(str, TORCHCODEC_VERSIONS["libavcodec"]))
        lines.append(
            f"torchcodec {torchcodec.__version__} ({os.path.dirname(torchcodec.__file__)}): "
            f"FFmpeg {TORCHCODEC_VERSIONS.get('ffmpeg_version', '?')} from the system "
            f"(libavcodec {tc_codec})"
        )
    else:
        lines.append(f"torchcodec: not available ({TORCHCODEC_ERROR})")
    return lines


def print_steps(title: str, steps: dict[str, float]) -> None:
    total = sum(steps.values())
    print(f"  {title}: {total * 1e3:.1f} ms")
    for step, seconds in steps.items():
        print(f"    {step:40s} {seconds * 1e3:8.2f} ms  {100 * seconds / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--draws", type=int, default=3, help="train items per video")
    parser.add_argument("--gops", default="250,12", help="keyframe intervals, one file set each")
    parser.add_argument(
        "--decoders",
        default="decord,torchcodec-exact,torchcodec-approximate,pyav",
        help="comma-separated; decord (the reference) must be among them",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile-repeats", type=int, default=5)
    parser.add_argument(
        "--variants",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compare on tests/videos.py's VARIANTS files",
    )
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "k400ft_bench_videos"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    env = " ".join(
        f"{name}={shlex.quote(os.environ[name])}"
        for name in ("OMP_NUM_THREADS", "PYTHONPATH")
        if name in os.environ
    )
    print("command: " + " ".join(filter(None, (env, shlex.join([sys.executable, *sys.argv])))))
    for line in versions():
        print("  " + line)
    chosen, notes = decoders(args.decoders.split(","))
    for note in notes:
        print("  NOTE " + note)

    started = time.perf_counter()
    gops = [int(g) for g in args.gops.split(",")]
    results, profiles = {}, {}
    for gop in gops:
        paths = make_videos(Path(args.dir), args.videos, 300, 320, 568, gop)
        results[gop] = measure(paths, chosen, args.draws, args.seed)
        profiles[gop] = (
            *profile_decord(paths[0], args.seed, args.profile_repeats),
            profile_pyav(paths[0], args.seed, args.profile_repeats),
        )

    print(
        f"\n{args.videos} videos, 300 frames 320x568 H.264 crf 23; train: {args.draws} draws per "
        f"video ({NUM_FRAMES} frames over a {NUM_FRAMES * SAMPLING_RATE}-frame window), test: "
        f"every {SAMPLING_RATE}th frame (75); process CPU time per item, one decoding thread, "
        f"torch threads {torch.get_num_threads()}"
    )
    header = (
        f"{'keyint':>6s} {'path':5s} {'decoder':22s} {'items':>5s} {'median ms':>9s} "
        f"{'total s':>7s} {'vs decord':>9s}  frames vs decord"
    )
    print(header)
    print("-" * len(header))
    for gop in gops:
        for kind, by_decoder in results[gop].items():
            base = np.median(by_decoder["decord"].seconds)
            for name, stats in by_decoder.items():
                median = np.median(stats.seconds)
                identity = "(reference)" if name == "decord" else stats.identity()
                print(
                    f"{gop:6d} {kind:5s} {name:22s} {len(stats.seconds):5d} "
                    f"{median * 1e3:9.1f} {sum(stats.seconds):7.2f} {median / base:8.2f}x  "
                    f"{identity}"
                )
        print()

    for gop in gops:
        whole, split, info, pyav_steps = profiles[gop]
        print(
            f"profile of one train item (video 0, draw 0), keyint {gop}: frames "
            f"{info['indices'][0]}..{info['indices'][-1]} ({len(info['indices'])} distinct), "
            f"keyframe before them {info['keyframe']}, so {info['decoded']} frames decoded; "
            f"CPU ms, median of {args.profile_repeats}"
        )
        print_steps("decord, get_batch in one call (what read_frames does)", whole)
        print_steps("decord, get_batch split at the first wanted frame", split)
        print_steps("pyav, the same frames (colour conversion separable)", pyav_steps)
        per_frame = split["get_batch(rest): decode forward"] / max(
            int(info["indices"][-1] - info["indices"][0]), 1
        )
        converted = info["per_returned_frame"]
        decoded = whole["get_batch: seek, decode, to RGB"] - len(info["indices"]) * converted
        print(
            f"  decord, derived: decode forward in the window {per_frame * 1e3:.2f} ms per frame "
            f"(with the conversions); per frame returned (to RGB + copy out, from get_batch of "
            f"every window frame vs the {len(info['indices'])} wanted) {converted * 1e3:.2f} ms, "
            f"so of get_batch about {len(info['indices']) * converted * 1e3:.1f} ms conversion "
            f"and {decoded * 1e3:.1f} ms seek + decode of {info['decoded']} frames "
            f"({decoded / info['decoded'] * 1e3:.2f} ms each)\n"
        )
    if args.variants:
        rows = measure_variants(Path(args.dir), chosen, args.draws, args.seed)
        print(
            f"variants (300 frames 320x568, {args.draws} train items + 1 test item each): CPU ms "
            "per item (median), frames vs decord, and frames that are the one asked for "
            "(ground truth: every frame decoded in order)"
        )
        header = (
            f"{'variant':11s} {'decoder':22s} {'median ms':>9s} {'vs decord':>9s}  "
            f"{'frames vs decord':32s} right frames"
        )
        print(header)
        print("-" * len(header))
        for name, _, by_decoder in rows:
            base = np.median(by_decoder["decord"][0].seconds)
            for decoder, (stats, offsets) in by_decoder.items():
                median = np.median(stats.seconds)
                identity = "(reference)" if decoder == "decord" else stats.identity()
                print(
                    f"{name:11s} {decoder:22s} {median * 1e3:9.1f} {median / base:8.2f}x  "
                    f"{identity:32s} {right_frames(offsets)}"
                )
        print()
        for name, what, _ in rows:
            print(f"  {name}: {what}")
    print(f"total {time.perf_counter() - started:.0f} s wall")


if __name__ == "__main__":
    main()
