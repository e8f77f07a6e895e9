"""Stage 1: get the dataset's published files, verified by checksum; or, for a folder
dataset, list and hash the folder's images (extracting an archive first).

Sources are tried in order: the local mirror folders from ``download.mirrors``, then the
upstream URLs. A file is accepted only once its checksum matches; a file that fails is never
kept and the next source is tried.

    python -m imgclf.download --params params.yaml --out data/raw \\
        --metrics reports/download_metrics.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.common.cli import run_process, stage_parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for the verified files")
    parser.add_argument("--metrics", type=Path, required=True, help="output DVC metrics file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.commands import download  # torch and MLflow load only once the arguments parse

    return download.execute(args)


if __name__ == "__main__":
    run_process(main)
