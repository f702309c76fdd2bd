"""Fetch one pretrained checkpoint, verified, for rules/checkpoints.smk.

    python scripts/download_checkpoint.py --name catmae_vits16_pt300 \
        --spec '{"gdrive_id": "1xWrpSxZy6d3r_XnsZmXvqM1XUReJ7v97", "sha256": null,
                 "format": "catmae_pretrain"}' \
        --lock results/checkpoints/catmae_vits16_pt300.sha256 \
        --output results/checkpoints/catmae_vits16_pt300.pth

Exits 1 with an explanation (quota page, permission page, no network, hash or layout
mismatch) and nothing at --output. Proxies and CA bundles: HTTPS_PROXY, REQUESTS_CA_BUNDLE.
"""

from __future__ import annotations

import argparse
import sys

from k400ft import checkpoints
from k400ft.io import load_json_arg, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="key of config `checkpoints`")
    parser.add_argument(
        "--spec", required=True, help="the entry as JSON: gdrive_id | path, sha256, format"
    )
    parser.add_argument(
        "--lock", required=True, help="sha256 record kept across runs (trust on first use)"
    )
    parser.add_argument("--output", required=True, help="verified checkpoint path")
    args = parser.parse_args(argv)
    log = setup_logging()
    try:
        spec = checkpoints.CheckpointSpec.from_dict(args.name, load_json_arg(args.spec, "--spec"))
        checkpoints.fetch_checkpoint(spec, args.output, args.lock)
    except checkpoints.CheckpointError as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
