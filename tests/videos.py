"""Tiny real video files for tests: H.264 mp4 files written with PyAV (libx264).

`frame_pattern` draws frames whose mean brightness encodes the frame number, so a test can
check which frame a decoder returned despite lossy compression; `k400_like_frames` looks
like footage (a smooth scene panning, a moving square, sensor noise); `write_mp4` encodes any
uint8 frames. Keep the files small: these helpers are meant for fast unit tests.

Beware: decord 0.6.0 returns 4-channel frames (and get_batch fails) for some tiny widths
(16, 24, 48 and 72 px at height 64); widths such as 32, 40, 56, 64, 96 and all K400 sizes
decode correctly. The splits probe drops such files ("undecodable").
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image


def demo_data(size: int = 32) -> dict:
    """The demo's data section (paper recipe, small frames), at `size` px to keep tests fast."""
    data = yaml.safe_load((Path(__file__).parents[1] / "demo" / "config.yaml").read_text())["data"]
    return {**data, "input_size": size, "short_side_size": size}


def frame_pattern(
    num_frames: int, height: int, width: int, seed: int = 0, step: int = 3
) -> np.ndarray:
    """[T, H, W, 3] uint8 frames: frame t is level 20 + step*t (mod 216) plus a little texture.

    The texture (a fixed noise field, +-8 levels, and a moving bright bar) keeps the frames
    realistic enough for the codec and for RandAugment's histogram operations, while the
    per-frame median still identifies the frame to within a level or two after H.264.
    """
    rng = np.random.default_rng(seed)
    noise = rng.integers(-8, 9, size=(height, width, 3))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        level = 20 + (step * t) % 216
        frame = np.clip(level + noise, 0, 255)
        bar = (t * 2) % max(width - 4, 1)
        frame[:, bar : bar + 3, :] = 255
        frames[t] = frame.astype(np.uint8)
    return frames


def k400_like_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random scene panning 2 px per frame, a moving square, light sensor noise."""
    rng = np.random.default_rng(seed)
    wide = width + 2 * num_frames
    coarse = torch.from_numpy(
        rng.integers(0, 256, (1, 3, height // 10 + 2, wide // 10 + 2))
    ).float()
    scene = F.interpolate(coarse, size=(height, wide), mode="bicubic", align_corners=False)
    scene = scene.clamp(0, 255)[0].permute(1, 2, 0).numpy()
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = scene[:, 2 * t : 2 * t + width] + rng.normal(0, 2, (height, width, 3))
        y, x = (37 * t) % (height - 60), (53 * t) % (width - 60)
        frame[y : y + 60, x : x + 60] = (240, 60, 30)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 30,
    gop: int | None = None,
    crf: int = 18,
    faststart: bool = False,
    preset: str = "veryfast",
) -> Path:
    """Encode [T, H, W, 3] uint8 RGB frames as H.264 (yuv420p) in an mp4 file.

    gop: keyframe interval (x264 `keyint`; None = x264's default of 250). Height and width
    must be even (yuv420p). crf, preset: x264's quality and speed settings. faststart puts
    the index (moov) before the data, as many web copies do; the default (moov at the end)
    is ffmpeg's default.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype=np.uint8)
    _, height, width, _ = frames.shape
    options = {"crf": str(crf), "preset": preset}
    if gop is not None:
        options["g"] = str(gop)
        options["keyint_min"] = str(min(gop, 25))
    container_options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=container_options) as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# Files shaped like the ones a Kinetics-400 tree holds (YouTube downloads, re-encodes), each
# with what a decoder can get wrong: name -> (suffix, what it is). `write_variant` writes one.
VARIANTS = {
    "cfr": (".mp4", "H.264, 29.97 fps, B-frames, closed GOPs (x264's default)"),
    "audio": (".mp4", "the same with an AAC audio track interleaved"),
    "vfr": (".mp4", "variable frame rate: frame durations of 1/60 to 1/15 s"),
    "late_start": (".mp4", "first frame at 0.5 s (an edit list)"),
    "full_range": (".mp4", "full-range YUV (yuvj420p) tagged BT.709"),
    "open_gop": (
        ".mp4",
        "open GOPs: B-frames before a keyframe in display order, after it in "
        "the file; a keyframe every 12 frames",
    ),
    "mpeg4": (".mp4", "MPEG-4 Part 2 with B-frames"),
    "mkv": (".mkv", "H.264 with B-frames in Matroska (seeks by pts)"),
    "webm": (".webm", "VP9 in WebM"),
}


def write_variant(
    path: str | Path, name: str, frames: np.ndarray, gop: int = 250, faststart: bool = False
) -> Path:
    """Encode [T, H, W, 3] uint8 RGB frames as the VARIANTS file `name` (path: its suffix
    included). gop: keyframe interval where the variant does not fix it. faststart: the mp4
    index (moov) before the data, as in `write_mp4`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num, height, width, _ = np.asarray(frames).shape
    codec, pix_fmt = "libx264", "yuv420p"
    options = {"crf": "20", "preset": "veryfast", "g": str(gop), "keyint_min": str(min(gop, 25))}
    clock, step = Fraction(1, 30000), 1001  # 29.97 fps
    pts = np.arange(num) * step
    if name == "vfr":
        durations = np.random.default_rng(0).choice([500, 1001, 1500, 2002], num - 1)
        pts = np.concatenate([[0], np.cumsum(durations)])
    elif name == "late_start":
        pts = pts + 15015
    elif name == "full_range":
        options["x264-params"] = "fullrange=on:colorprim=bt709:transfer=bt709:colormatrix=bt709"
        pix_fmt = "yuvj420p"
    elif name == "open_gop":
        options.update(g="12", keyint_min="12", **{"x264-params": "open-gop=1:bframes=3"})
    elif name == "mpeg4":
        codec, options = "mpeg4", {"qscale": "4", "bf": "2", "g": str(gop)}
    elif name == "webm":
        codec = "libvpx-vp9"
        options = {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8", "g": str(gop)}
    elif name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: {sorted(VARIANTS)}")
    container_options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=container_options) as container:
        stream = container.add_stream(codec, rate=Fraction(30000, 1001), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = stream.time_base = clock
        audio = container.add_stream("aac", rate=44100) if name == "audio" else None
        samples = 0
        for number, rgb in enumerate(np.asarray(frames, dtype=np.uint8)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = int(pts[number]), clock
            container.mux(stream.encode(frame))
            while audio is not None and samples < (pts[number] + step) * clock * 44100:
                silence = av.AudioFrame.from_ndarray(
                    np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
                )
                silence.sample_rate, silence.pts = 44100, samples
                container.mux(audio.encode(silence))
                samples += 1024
        container.mux(stream.encode())
        if audio is not None:
            container.mux(audio.encode())
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0, rate: int = 8000) -> Path:
    """An AAC track and no video stream (an .m4a, or an .mp4 a download left without video):
    a 440 Hz tone, so the file is not under the splits probe's 1 KiB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        for start in range(0, int(seconds * rate), 1024):
            tone = np.sin(2 * np.pi * 440 * (start + np.arange(1024)) / rate)
            frame = av.AudioFrame.from_ndarray(
                tone.astype(np.float32)[None], format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_image_as_mp4(path: str | Path, seed: int = 0) -> Path:
    """A PNG frame followed by random bytes, named .mp4 (a file damaged, or put in a CSV by
    hand): FFmpeg's image demuxer opens it as a video stream of a frame or two."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    Image.fromarray(frame_pattern(1, 48, 64, seed)[0]).save(image, "PNG")
    path.write_bytes(image.getvalue() + np.random.default_rng(seed).bytes(4096))
    return path


def truncate(path: str | Path, dest: str | Path, size: int) -> Path:
    """A copy of `path` cut short, as an interrupted download leaves it: its first `size`
    bytes."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(Path(path).read_bytes()[:size])
    return dest


def packet_spans(path: str | Path, kind: str = "video") -> list[tuple[int, int]]:
    """(first byte, byte after the last) of each packet of the first `kind` ("video",
    "audio") stream of `path`, in file order: where a cut falls between or inside packets."""
    with av.open(str(path)) as container:
        return [(p.pos, p.pos + p.size) for p in container.demux(**{kind: 0}) if p.size]


def write_pattern_mp4(
    path: str | Path, num_frames: int, height: int = 48, width: int = 64, seed: int = 0, **kwargs
) -> Path:
    """`write_mp4` of `frame_pattern(num_frames, height, width, seed)`."""
    return write_mp4(path, frame_pattern(num_frames, height, width, seed), **kwargs)


def frame_number(frame: np.ndarray, step: int = 3) -> int:
    """The frame number `frame_pattern` encoded in a decoded frame's brightness.

    The median ignores the bright bar; exact for t < 216 / step (72 with the default step).
    """
    core = frame[:, :, :].astype(np.float64)
    level = np.median(core)
    return int(round((level - 20) / step))
