"""Short-keyframe H.264 copies of the train/val videos: one shard, or the gather step.

    python scripts/transcode.py shard --train results/splits/train.csv \
        --val results/splits/val.csv --shard 0 --shards 32 --keyint 16 --crf 18 \
        --preset veryfast --tune fastdecode --psnr-videos 4 --psnr-frames 8 \
        --videos results/transcode/videos --workers 8 --output results/transcode/shards/0.json
    python scripts/transcode.py gather --train results/splits/train.csv \
        --val results/splits/val.csv --out-dir results/transcode results/transcode/shards/*.json

The logic lives in k400ft.transcode; this script only parses arguments (rules/transcode.smk).
Exit codes: 0 done; 1 the stage cannot run as asked (a bad CSV, setting or shard record: the
message names the file or setting); 74 (EX_IOERR) an output cannot be written (a read-only or
full disk, a file where a folder should be: the message names the path; a shard tries its
folders before encoding anything). A video that does not transcode is not an error (it is
reported and the fine-tune keeps its original).
"""

import argparse
import sys

from k400ft.io import EXIT_IOERR, OutputError, setup_logging
from k400ft.transcode import (
    Settings,
    TranscodeError,
    gather,
    run_shard,
)
from k400ft.video import SplitCSVError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shard = commands.add_parser("shard", help="copy the videos of one shard")
    shard.add_argument("--train", required=True, help="the splits stage's train.csv")
    shard.add_argument("--val", required=True, help="the splits stage's val.csv")
    shard.add_argument("--shard", type=int, required=True, help="this shard, 0..shards-1")
    shard.add_argument("--shards", type=int, required=True, help="data.transcode.shards")
    shard.add_argument("--keyint", type=int, required=True, help="data.transcode.keyint")
    shard.add_argument("--crf", type=float, required=True, help="data.transcode.crf")
    shard.add_argument("--preset", required=True, help="data.transcode.preset")
    shard.add_argument("--tune", required=True, help="data.transcode.tune")
    shard.add_argument("--psnr-videos", type=int, default=0, help="data.transcode.psnr_videos")
    shard.add_argument("--psnr-frames", type=int, default=8, help="data.transcode.psnr_frames")
    shard.add_argument("--videos", required=True, help="folder of the copies (kept across runs)")
    shard.add_argument("--workers", type=int, default=1, help="videos encoded in parallel")
    shard.add_argument("--output", required=True, help="the shard's JSON record")
    collect = commands.add_parser("gather", help="the fine-tune's CSVs and report.json")
    collect.add_argument("--train", required=True, help="the splits stage's train.csv")
    collect.add_argument("--val", required=True, help="the splits stage's val.csv")
    collect.add_argument("--out-dir", required=True, help="folder for train.csv, val.csv, report")
    collect.add_argument("shard_files", nargs="+", help="every shard's JSON record")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.command == "shard":
            run_shard(
                args.train,
                args.val,
                args.shard,
                args.shards,
                args.videos,
                Settings(args.keyint, args.crf, args.preset, args.tune),
                args.output,
                workers=max(1, args.workers),
                psnr_videos=args.psnr_videos,
                psnr_frames=args.psnr_frames,
            )
        else:
            gather(args.train, args.val, args.shard_files, args.out_dir)
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_IOERR
    except (TranscodeError, SplitCSVError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
