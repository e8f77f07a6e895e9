"""Stage 2: decode the raw files once into uint8 tensors and split train/validation.

The validation split is seeded and stratified by class; the per-channel mean and std come
from the training split only, so nothing about validation or test leaks into training.

    python -m imgclf.preprocess --params params.yaml --raw data/raw --out data/processed \\
        --metrics reports/preprocess_metrics.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.common.cli import run_process, stage_parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="folder from the download stage")
    parser.add_argument("--out", type=Path, required=True, help="folder for the splits")
    parser.add_argument("--metrics", type=Path, required=True, help="output DVC metrics file")
    parser.add_argument("--audit", type=Path, required=True,
                        help="output audit (DVC metrics file): skipped files, duplicates, leaks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.commands import preprocess  # torch and MLflow load only once the arguments parse

    return preprocess.execute(args)


if __name__ == "__main__":
    run_process(main)
