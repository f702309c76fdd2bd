"""Video decoders of the data path: decord (the default, what upstream uses) and PyAV.

Both number a video's frames the same way, decord 0.6.0's: frame i is the video packet with
the i-th smallest presentation timestamp (pts), over a scan of every packet when the file is
opened. That numbering is exact for any frame rate, constant or variable, and for streams that
start late. `open_video(path, decoder)` gives a reader with `len()`; `read_frames(reader,
indices)` gives the frames [len(indices), H, W, 3] uint8 RGB, each distinct frame decoded once,
in increasing order. `data.decoder` in config.yaml picks one (README, "Video decoders").

  decord  `VideoReader` with one thread. `get_batch` seeks per index from its keyframe table,
          which counts keyframes in decode order: in an open-GOP file (B-frames that precede a
          keyframe in display order but follow it in the file) that table is off by those
          frames, and decord returns a neighbouring frame after a seek. Closed-GOP files (x264's
          default; the demo's, the transcode stage's copies) are not affected.
  pyav    the same scan in Python; then one seek to the last keyframe at or before the first
          wanted frame (by pts, so open GOPs are right), a forward decode that converts only the
          wanted frames to RGB (swscale, as decord does), and a check that every one was found.
          Same frames as decord wherever decord's table is right (tested on constant and
          variable rate, late start, audio, full range, open GOP, VP9 in WebM and Matroska),
          and 13-20% less CPU per train item, 21-32% per test item (benchmarks/decoders.py).

Both decode with one thread: the parallelism is the DataLoader's workers. Drop a reader as soon
as its frames are read (decord's thread keeps decoding ahead while the reader lives).

A file that is not a whole video raises BrokenVideoError naming it, with the same verdict
from either decoder: no video stream; not a video (a stream that declares neither a frame
count nor a duration, what decord refuses to open: an image with bytes after it named .mp4,
which FFmpeg's image demuxer opens as a video); truncated (an mp4 whose video packets end
before its index says they do, `index_shortfall`). PyAV's scan decides; when decord fails
(at open, or decoding: "av_read_frame failed with 1094995529" for a file cut inside a
packet, no file named), the scan says why (`broken_verdict`).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from decord import VideoReader, cpu

DECODERS = ("decord", "pyav")


class FrameNotFoundError(RuntimeError):
    """A frame of a file's packet index that decoding from its keyframe did not produce."""


class BrokenVideoError(ValueError):
    """A file that is not a whole video: it has no video stream, or its video packets end
    before its index says they do (a download cut short). The message starts with the path."""


class PyAVVideo:
    """A video file opened with PyAV, numbered as decord numbers it (see the module docstring).

    `len()` is the video stream's packet count; `frames(sorted distinct indices)` decodes them.
    The container is closed when the frames are read (or by `close()`); a reader serves one
    `frames` call, as the datasets use it.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._container = av.open(self.path)
        try:
            stream = self._container.streams.best("video")
            if stream is None:
                raise BrokenVideoError(f"{self.path}: no video stream")
            if declared_frames(self._container, stream) < 1:  # what decord refuses to open
                raise BrokenVideoError(
                    f"{self.path}: not a video ({self._container.format.long_name}: "
                    "no frame count or duration)"
                )
            stream.codec_context.thread_count = 1
            pts, durations, keys, positions = [], [], [], []
            for packet in self._container.demux(stream):
                if packet.pts is None:
                    if packet.size == 0:
                        continue  # the demuxer's end-of-stream packet
                    raise ValueError("a video packet has no presentation timestamp")
                if packet.is_keyframe:
                    # seek to its dts (<= pts): a container indexed by dts (mp4) lands on this
                    # keyframe, one indexed by pts (Matroska) on it or an earlier one
                    dts = packet.dts if packet.dts is not None else packet.pts
                    keys.append((packet.pts, min(packet.pts, dts)))
                    positions.append(len(pts))
                pts.append(packet.pts)
                durations.append(packet.duration or 0)
            shortfall = index_shortfall(stream, list(zip(pts, durations, strict=True)))
            if shortfall:
                raise BrokenVideoError(f"{self.path}: {shortfall}")
        except BaseException:
            self._container.close()
            raise
        self._stream = stream
        self.decord_misnumbers = decord_misnumbers(pts, positions)
        self._pts = np.sort(np.asarray(pts, dtype=np.int64))
        keys.sort()
        self._key_pts = [key for key, _ in keys]
        self._key_seek = [seek for _, seek in keys]

    def __len__(self) -> int:
        return len(self._pts)

    def frames(self, indices: np.ndarray) -> np.ndarray:
        """Frames at `indices` (distinct, increasing) as [N, H, W, 3] uint8 RGB."""
        try:
            return self._decode(np.asarray(indices, dtype=np.int64))
        finally:
            self.close()

    def _decode(self, indices: np.ndarray) -> np.ndarray:
        if len(indices) and (indices[0] < 0 or indices[-1] >= len(self)):
            raise IndexError(f"frame indices {indices.tolist()} outside 0..{len(self) - 1}")
        wanted = self._pts[indices]
        position = {int(p): i for i, p in enumerate(wanted.tolist())}
        stream = self._stream
        out = np.empty((len(indices), stream.height, stream.width, 3), dtype=np.uint8)
        if not len(indices):
            return out
        key = max(bisect.bisect_right(self._key_pts, int(wanted[0])) - 1, 0)
        if self._key_pts:
            self._container.seek(self._key_seek[key], stream=stream, backward=True)
        done, found, last = np.zeros(len(indices), dtype=bool), 0, int(wanted[-1])
        for frame in self._container.decode(stream):
            at = position.get(frame.pts)
            if at is not None and not done[at]:
                out[at] = frame.to_ndarray(format="rgb24")
                done[at] = True
                found += 1
                if found == len(indices):
                    return out
            if frame.pts is not None and frame.pts > last:
                break
        raise FrameNotFoundError(
            f"{self.path}: decoding from the keyframe before frame {int(indices[0])} did not "
            f"produce frame(s) {indices[~done][:8].tolist()} (their timestamps are in the "
            "file's packets but no decoded frame carries them)"
        )

    def close(self) -> None:
        self._container.close()


def declared_frames(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    """The frame count a file declares, as decord 0.6.0 reads it (and refuses a file below 1):
    the stream's count, else its average rate x the container's duration."""
    if stream.frames > 0:
        return stream.frames
    if not stream.average_rate or not container.duration:
        return 0
    return float(stream.average_rate) * container.duration / av.time_base


def index_shortfall(stream: av.VideoStream, spans: list[tuple[int, int]]) -> str | None:
    """Why a video stream's packets, (pts, duration) each, fall short of what the file's index
    declares (a truncated file), or None when they do not.

    A container with a per-frame index (mp4, mov) declares the stream's frame count
    (`stream.frames`) and duration; a download cut short keeps that index and loses its tail
    (with the index at the front, faststart, the file still opens). Fewer packets alone is no
    fault: an edit list that starts after whole GOPs drops their packets too, but the packets
    left reach the declared end (start_time + duration) without a hole. So truncated = fewer
    packets than declared, and the last ending more than half an average frame before the
    declared end, or a hole of more than half a frame between two frames left (a file cut a
    few frames short can lose only B-frames, stored after the last frame shown, which then
    still reaches the end). Matroska and WebM declare no frame count: a cut one is not
    detected (decord reads what is left of it too).
    """
    declared, count = stream.frames, len(spans)
    if declared <= count:
        return None
    where = ""
    if count and stream.duration and stream.time_base:
        ordered = sorted(spans)
        end = max(pts + duration for pts, duration in spans)
        # the largest hole between a frame's end and the next one's start: (size, from, to)
        hole = max(
            ((b - (a + d), a + d, b) for (a, d), (b, _) in itertools.pairwise(ordered)),
            default=(0, end, end),
        )
        declared_end = (stream.start_time or 0) + stream.duration
        half = stream.duration / (2 * declared)
        if end < declared_end - half:
            where = (
                f", its video ending at {float(end * stream.time_base):.2f} s of "
                f"{float(declared_end * stream.time_base):.2f} s"
            )
        elif hole[0] > half:
            where = (
                f", frames missing from {float(hole[1] * stream.time_base):.2f} s to "
                f"{float(hole[2] * stream.time_base):.2f} s"
            )
        else:
            return None
    return (
        f"truncated: the file holds {count} of the {declared} video frames its index lists{where}"
    )


def decord_misnumbers(pts_in_file_order: list[int], keyframe_positions: list[int]) -> bool:
    """Whether decord 0.6.0 can return a neighbouring frame after a seek in this file: its
    keyframe table takes a keyframe's position among the packets (file order) as its frame
    number, which is right only when every keyframe is also shown at that position (display
    order: the rank of its pts). Open GOPs and MPEG-4 Part 2 with B-frames break that."""
    ranks = np.argsort(np.argsort(np.asarray(pts_in_file_order), kind="stable"), kind="stable")
    positions = np.asarray(keyframe_positions, dtype=np.int64)
    return bool(np.any(ranks[positions] != positions))


def describe_error(err: BaseException) -> str:
    """A decoder error on one line: decord's messages without their timestamps and source
    locations, at most 300 characters."""
    lines = [
        re.sub(r"^\[[0-9:]+\] \S+:[0-9]+: ", "", line).strip() for line in str(err).splitlines()
    ]
    return " | ".join(line for line in lines if line)[:300] or type(err).__name__


class DecordVideo(VideoReader):
    """decord's reader (one thread) that knows its file, so that a failure to decode it can
    be explained (`broken_verdict`)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        super().__init__(self.path, ctx=cpu(0), num_threads=1)


def open_video(path: str | Path, decoder: str = "decord") -> DecordVideo | PyAVVideo:
    """A reader of `path` with one decoding thread; `decoder` is one of DECODERS."""
    if decoder == "decord":
        with explained(path):
            return DecordVideo(path)
    if decoder == "pyav":
        return PyAVVideo(path)
    raise ValueError(f"unknown decoder {decoder!r}: use one of {', '.join(DECODERS)}")


def broken_verdict(path: str | Path) -> BrokenVideoError | None:
    """Why decord failed on `path`, as PyAV's scan says it (decord's "Check failed: st_nb >=
    0", "Failed to measure duration/frame-count due to broken metadata" and "av_read_frame
    failed with 1094995529" name no file, or no reason): the BrokenVideoError naming the file
    (no video stream, not a video, truncated), or None when the scan finds nothing wrong or
    cannot open the file either (decord's own error then stands)."""
    try:
        PyAVVideo(path).close()
    except BrokenVideoError as broken:
        return broken
    except Exception:  # noqa: BLE001 - FFmpeg cannot read it either
        return None
    return None


@contextlib.contextmanager
def explained(path: str | Path | None) -> Iterator[None]:
    """decord's error (DECORDError, RuntimeError, ...) on `path` raised as the
    `broken_verdict` naming the file, where PyAV's scan finds one; else as it is (and always
    without a path: a bare VideoReader)."""
    try:
        yield
    except Exception as err:
        broken = broken_verdict(path) if path is not None else None
        if broken is None:
            raise
        raise broken from err


def read_frames(reader: VideoReader | PyAVVideo, indices: np.ndarray) -> np.ndarray:
    """Frames at `indices` as [len(indices), H, W, 3] uint8, each distinct frame decoded once.

    The distinct indices are decoded sorted (decord's `get_batch` then seeks once and decodes
    forward); repeated indices (padding) are filled in afterwards.
    """
    indices = np.asarray(indices, dtype=np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)
    if isinstance(reader, PyAVVideo):
        batch = reader.frames(unique)
    else:
        with explained(getattr(reader, "path", None)):
            batch = reader.get_batch(unique.tolist()).asnumpy()
    if len(unique) == len(indices) and np.array_equal(unique, indices):
        return batch
    return batch[inverse.reshape(-1)]
