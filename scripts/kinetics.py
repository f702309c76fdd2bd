"""Kinetics-400 from its public archive: fetch, plan, extract, count, resize (rules/fetch.smk,
rules/extract.smk, rules/resize.smk).

    python scripts/kinetics.py fetch --url URL [URL ...] --output FILE [FILE ...]
    python scripts/kinetics.py fetch --list ARCHIVES/train/parts.txt --list-url URL --index 3 \\
        --parts 242 --tar --output ARCHIVES/train/part_3.tar.gz --failure FAILED/train/part_3.json
    python scripts/kinetics.py plan --spec '<JSON>' --splits train val --lists L1 L2 \\
        --annotations A1 A2 --json results/plan/data.json --md results/plan/data.md
    python scripts/kinetics.py extract --part P --folder ROOT/extracted/train --manifest M
    python scripts/kinetics.py count --split train --annotations A --folder F --extensions mp4 \\
        --manifests M1 M2 ... [--replacement R] --output results/kinetics/extract/train.json
    python scripts/kinetics.py resize --counts C1 C2 --targets ROOT/train ROOT/val \\
        --settings '<JSON>' --shard 0 --shards 64 --workers 8 --output SHARD.json
    python scripts/kinetics.py resize-gather --counts C1 C2 --report REPORT.json SHARD.json ...
    python scripts/kinetics.py missing --spec '<JSON>'

The logic lives in k400ft.fetch, k400ft.dataplan, k400ft.extract and k400ft.resize; this
script only parses arguments. Exit codes: 0 done; 1 a file of the archive cannot be had
(the message starts with its URL) or the stage cannot run as asked; 2 the input is refused (a
list file that disagrees with config kinetics.archive.parts, a hostile or unreadable part, an
annotation CSV, a file system too small for the peak: the message names it); 74 (EX_IOERR) an
output cannot be written (a full or read-only disk: the message names the path).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from k400ft import dataplan, extract, fetch, resize
from k400ft.encode import EncodeError
from k400ft.io import EXIT_IOERR, OutputError, load_json_arg, setup_logging


def _fetch(args: argparse.Namespace) -> None:
    if args.list:
        list_url = fetch.resolve_url(args.list_url)
        urls = fetch.read_list(args.list, list_url, args.parts, "kinetics.archive.parts")
        pairs = [(urls[args.index], args.output[0])]
    else:
        if len(args.url) != len(args.output):
            raise SystemExit("error: give one --output per --url")
        pairs = [(fetch.resolve_url(u), o) for u, o in zip(args.url, args.output, strict=True)]
    for url, output in pairs:
        if args.tar:
            fetch.fetch_part(url, output, args.failure)
        else:
            fetch.fetch(url, output)


def _plan(args: argparse.Namespace) -> None:
    spec = load_json_arg(args.spec, "--spec")
    record = dataplan.plan_data(
        spec, dict(zip(args.splits, args.lists, strict=True)), args.annotations
    )
    dataplan.write_plan(record, args.json, args.md)
    for line in dataplan.render_lines(record):
        if line.startswith("- "):
            logging.getLogger("k400ft.dataplan").info("%s", line[2:])


def _missing(args: argparse.Namespace) -> None:
    spec = load_json_arg(args.spec, "--spec")

    def done(part: str) -> bool:
        return (
            Path(spec["manifests"], f"{part}.json").exists()
            or Path(spec["archives"], f"{part}.tar.gz").exists()
        )

    missing = fetch.missing_parts(spec["parts"], done, spec["failures"])
    if not missing:
        return
    Path(spec["output"]).parent.mkdir(parents=True, exist_ok=True)
    Path(spec["output"]).write_text(json.dumps(missing, indent=1) + "\n")
    total = sum(len(parts) for parts in spec["parts"].values())
    print(f"Kinetics-400: {len(missing)} of {total} parts are missing:", file=sys.stderr)
    for item in missing:
        print(f"  {item['part']}: {item['reason']}", file=sys.stderr)
    print(f"(listed in {spec['output']})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="fetch files or one part of the archive")
    get.add_argument("--url", nargs="+", help="files to fetch (a list file, the CSVs)")
    get.add_argument("--list", help="the split's fetched list file (a part: with --index)")
    get.add_argument("--list-url", help="where the list file came from (parts lie beside it)")
    get.add_argument("--index", type=int, help="the part: its line in the list, from 0")
    get.add_argument("--parts", type=int, help="config kinetics.archive.parts of the split")
    get.add_argument("--tar", action="store_true", help="read it as a tar.gz before it counts")
    get.add_argument("--failure", help="where a part that cannot be had records why")
    get.add_argument("--output", nargs="+", required=True, help="where each file goes")
    plan = commands.add_parser("plan", help="bytes, peak disk and resize cost; the refusal")
    plan.add_argument("--spec", required=True, help="the data plan spec (rules/common.smk)")
    plan.add_argument("--splits", nargs="+", required=True)
    plan.add_argument("--lists", nargs="+", required=True, help="each split's list file")
    plan.add_argument("--annotations", nargs="+", required=True, help="the annotation CSVs")
    plan.add_argument("--json", required=True)
    plan.add_argument("--md", required=True)
    unpack = commands.add_parser("extract", help="extract one part into a split folder")
    unpack.add_argument("--part", required=True)
    unpack.add_argument("--folder", required=True, help="the split's folder")
    unpack.add_argument("--flatten", action="store_true", help="by file name (replacement)")
    unpack.add_argument("--manifest", required=True, help="the part's manifest (JSON)")
    count = commands.add_parser("count", help="a split's files against its annotation CSV")
    count.add_argument("--split", required=True)
    count.add_argument("--annotations", required=True)
    count.add_argument("--folder", required=True)
    count.add_argument("--extensions", nargs="+", required=True)
    count.add_argument("--manifests", nargs="+", required=True, help="the split's parts'")
    count.add_argument("--replacement", nargs="*", default=[], help="its manifest (train)")
    count.add_argument("--output", required=True)
    scale = commands.add_parser("resize", help="resize one shard of the extracted videos")
    scale.add_argument("--counts", nargs="+", required=True, help="each split's count")
    scale.add_argument("--targets", nargs="+", required=True, help="each split's tree folder")
    scale.add_argument("--settings", required=True, help="encoder settings (JSON)")
    scale.add_argument("--shard", type=int, required=True)
    scale.add_argument("--shards", type=int, required=True, help="kinetics.resize.shards")
    scale.add_argument("--psnr-videos", type=int, default=0)
    scale.add_argument("--psnr-frames", type=int, default=8)
    scale.add_argument("--workers", type=int, default=1)
    scale.add_argument("--output", required=True, help="the shard's record (JSON)")
    gather = commands.add_parser("resize-gather", help="the resize's report")
    gather.add_argument("--counts", nargs="+", required=True)
    gather.add_argument("--report", required=True)
    gather.add_argument("shard_files", nargs="+")
    missing = commands.add_parser("missing", help="which parts are missing, and why")
    missing.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.command == "fetch":
            _fetch(args)
        elif args.command == "plan":
            _plan(args)
        elif args.command == "extract":
            extract.extract_part(args.part, args.folder, args.manifest, args.flatten)
        elif args.command == "count":
            replacement = next(iter(args.replacement), None)
            extract.count_split(
                args.split,
                args.annotations,
                args.folder,
                args.extensions,
                args.manifests,
                args.output,
                replacement,
            )
        elif args.command == "resize":
            resize.run_shard(
                args.counts,
                args.targets,
                args.shard,
                args.shards,
                resize.Settings(**load_json_arg(args.settings, "--settings")),
                args.output,
                max(1, args.workers),
                args.psnr_videos,
                args.psnr_frames,
            )
        elif args.command == "resize-gather":
            resize.gather(args.counts, args.shard_files, args.report)
        else:
            _missing(args)
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_IOERR
    except (fetch.ArchiveError, extract.ExtractError, fetch.SpaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (fetch.FetchError, EncodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
