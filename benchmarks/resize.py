"""The resize to short side 320, per core: ours (k400ft.encode, the resize stage's path)
against the ffmpeg command line that peers' scripts run, on the same K400-like files, side by
side in one run.

    OMP_NUM_THREADS=1 python benchmarks/resize.py [--videos 3] [--sizes 360x640,720x1280] \\
        [--repeats 3]

The files (written once into --dir with the tests' mp4 writer): K400-like originals, 10 s at
30 fps (300 frames: a smooth scene panning 2 px per frame, a moving square, sensor noise;
data_throughput.k400_like_frames), H.264 crf 23 preset medium, x264's default keyframe
interval, at each --sizes (K400's YouTube originals are mostly 360p and 720p).

Each file is resized three ways, in turn, --repeats times (the machine is shared: turns
interleaved, the median kept), with config.yaml's kinetics.resize settings (or --crf /
--preset / --tune) and mbtree off, as ours runs:
  ours         `encode.encode_video` in this process: PyAV decodes on one thread, swscale
               bicubic to the short side (even sides), libx264 on one thread, audio dropped;
               CPU time of this process (`time.process_time`);
  ffmpeg -t1   `ffmpeg -i in -vf scale=-2:320 -c:v libx264 -crf C -preset P -x264-params
               mbtree=0 -an -threads 1 out.mp4`: the same work on one thread each;
  ffmpeg       the same command without -threads (what a peer's script runs: ffmpeg's own
               threading); CPU time of the child process (`resource.getrusage`, user + sys).
It prints CPU seconds per video for each, ours / ffmpeg, the output sizes and bytes, and the
PSNR of each output against the source scaled alike (`encode.measure_psnr`). The workflow
never runs ffmpeg; this needs it on PATH (`apt-get install ffmpeg`).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import av
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from data_throughput import make_videos  # noqa: E402

from k400ft import encode  # noqa: E402

RESIZE = yaml.safe_load((ROOT / "config.yaml").read_text())["kinetics"]


def ffmpeg_command(source: str, dest: str, settings: encode.Settings, threads: int | None):
    """The peers' command line with our encoder settings; with `threads`, that many for the
    decoder, the filters and the encoder."""
    _, height, width = encode.video_shape(source)
    short = settings.short_side
    scale = f"scale=-2:{short}" if width >= height else f"scale={short}:-2"
    one = ["-threads", str(threads)] if threads else []
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *one, "-i", source]
    command += ["-vf", scale, *(["-filter_threads", str(threads)] if threads else [])]
    command += ["-c:v", "libx264", "-crf", f"{settings.crf:g}", "-preset", settings.preset]
    command += ["-x264-params", "mbtree=0", "-an", *one]
    if settings.tune != "none":
        command += ["-tune", settings.tune]
    return [*command, dest]


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ffmpeg(command: list[str]) -> float:
    """CPU seconds the ffmpeg process spent (all its threads)."""
    before = child_cpu()
    subprocess.run(command, check=True)
    return child_cpu() - before


def run_ours(source: str, dest: str, settings: encode.Settings) -> float:
    """CPU seconds of this process for encode.encode_video (decode, scale, encode, write)."""
    before = time.process_time()
    encode.encode_video(source, dest, settings)
    return time.process_time() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3, help="files per size")
    parser.add_argument("--sizes", default="360x640,720x1280", help="HxW of the originals")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--short-side", type=int, default=RESIZE["resize_short_side"])
    parser.add_argument("--crf", type=float, default=RESIZE["resize"]["crf"])
    parser.add_argument("--preset", default=RESIZE["resize"]["preset"])
    parser.add_argument("--tune", default=RESIZE["resize"]["tune"])
    parser.add_argument("--psnr-frames", type=int, default=8)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "k400ft-resize"))
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        raise SystemExit("error: ffmpeg is not on PATH (apt-get install ffmpeg): it is compared")
    settings = encode.Settings(None, args.crf, args.preset, args.tune, args.short_side)
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    print(f"date {date.today()}; {version.stdout.splitlines()[0]}; PyAV {av.__version__} "
          f"(libavcodec {av.library_versions['libavcodec']}); OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}; {os.cpu_count()} CPUs")  # fmt: skip
    print(
        f"settings: short side {settings.short_side}, crf {settings.crf:g}, preset "
        f"{settings.preset}, tune {settings.tune}, mbtree off; {args.repeats} turns each"
    )
    ways = ("ours", "ffmpeg -threads 1", "ffmpeg (its threads)")
    rows = []
    work = Path(tempfile.mkdtemp(prefix="resize-out-"))
    try:
        for size in args.sizes.split(","):
            height, width = (int(v) for v in size.split("x"))
            sources = make_videos(Path(args.dir), args.videos, args.frames, height, width, 250)
            cpu: dict[str, list[float]] = {way: [] for way in ways}
            outputs: dict[str, list[Path]] = {way: [] for way in ways}
            for number, source in enumerate(sources):
                dests = {way: work / f"{size}_{number}_{i}.mp4" for i, way in enumerate(ways)}
                turns: dict[str, list[float]] = {way: [] for way in ways}
                for _ in range(args.repeats):
                    turns[ways[0]].append(run_ours(source, dests[ways[0]], settings))
                    one = ffmpeg_command(source, str(dests[ways[1]]), settings, 1)
                    turns[ways[1]].append(run_ffmpeg(one))
                    own = ffmpeg_command(source, str(dests[ways[2]]), settings, None)
                    turns[ways[2]].append(run_ffmpeg(own))
                for way in ways:
                    cpu[way].append(statistics.median(turns[way]))
                    outputs[way].append(dests[way])
            shapes = {way: {encode.video_shape(p) for p in outputs[way]} for way in ways}
            for way in ways:
                quality = [
                    encode.measure_psnr(s, p, args.psnr_frames)
                    for s, p in zip(sources, outputs[way], strict=True)
                ]
                rows.append(
                    (size, way, statistics.fmean(cpu[way]), sorted(shapes[way]),
                     statistics.fmean(os.path.getsize(p) for p in outputs[way]) / 1e3,
                     statistics.fmean(quality))
                )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        "\n| source | way | CPU s per video | ours / this | output (frames, h, w) | kB | PSNR dB |"
    )
    print("|---|---|---|---|---|---|---|")
    for size, way, seconds, shape, kilobytes, quality in rows:
        ours = next(r[2] for r in rows if r[0] == size and r[1] == "ours")
        print(f"| {size} | {way} | {seconds:.2f} | {ours / seconds:.2f} | {shape} | "
              f"{kilobytes:.0f} | {quality:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
