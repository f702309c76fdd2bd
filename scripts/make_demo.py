"""The embedded demo's inputs (rules/demo.smk).

python scripts/make_demo.py archive --demo '<config demo JSON>' \\
    --kinetics '<config kinetics JSON>' --folder results/demo/archive
python scripts/make_demo.py videos --demo '<config demo JSON>' --kinetics '<config kinetics JSON>'
python scripts/make_demo.py checkpoint --output X.pth \\
    --spec '{"format": "catmae_pretrain" | "videomae_pretrain", "arch": <config arch>,
             "pretrain": <config demo.pretrain + seed, sampling_rate, mean, std>}'
"""

from __future__ import annotations

import argparse

from k400ft.demo import write_archive, write_checkpoint, write_videos
from k400ft.io import load_json_arg, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    archive = sub.add_parser(
        "archive", help="write the synthetic set as a miniature Kinetics-400 archive"
    )
    archive.add_argument("--demo", required=True, help="config `demo` section as JSON")
    archive.add_argument("--kinetics", required=True, help="config `kinetics` section as JSON")
    archive.add_argument("--folder", required=True, help="folder of the archive")
    videos = sub.add_parser("videos", help="write the synthetic Kinetics-400-shaped video tree")
    videos.add_argument("--demo", required=True, help="config `demo` section as JSON")
    videos.add_argument("--kinetics", required=True, help="config `kinetics` section as JSON")
    checkpoint = sub.add_parser(
        "checkpoint", help="pretrain a tiny encoder briefly, save it in an upstream layout"
    )
    checkpoint.add_argument(
        "--spec", required=True, help='JSON {"format": ..., "arch": {...}, "pretrain": {...}}'
    )
    checkpoint.add_argument("--output", required=True, help="checkpoint file to write")
    args = parser.parse_args()
    setup_logging()
    try:
        if args.command == "archive":
            write_archive(
                load_json_arg(args.demo, "--demo"),
                load_json_arg(args.kinetics, "--kinetics"),
                args.folder,
            )
        elif args.command == "videos":
            write_videos(
                load_json_arg(args.demo, "--demo"), load_json_arg(args.kinetics, "--kinetics")
            )
        else:
            write_checkpoint(load_json_arg(args.spec, "--spec"), args.output)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
