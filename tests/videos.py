"""Tiny real video files for tests: H.264 mp4 files written with PyAV (libx264).

`frame_pattern` draws frames whose mean brightness encodes the frame number, so a test can
check which frame a decoder returned despite lossy compression; `write_mp4` encodes any
uint8 frames. Keep the files small: these helpers are meant for fast unit tests.

Beware: decord 0.6.0 returns 4-channel frames (and get_batch fails) for some tiny widths
(16, 24, 48 and 72 px at height 64); widths such as 32, 40, 56, 64, 96 and all K400 sizes
decode correctly. The splits probe drops such files ("undecodable").
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


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
