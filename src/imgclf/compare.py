"""Leaderboard of the latest pipeline runs, for people who live in the terminal.

    imgclf-compare [-n 10] [--sort val/accuracy]

One row per ``dvc repro`` / ``dvc exp run``, or per seed group: runs whose params differ only
in ``train.seed`` count as one row with their mean ± standard deviation and the 95% interval
of the mean. A single run shows its score ± the half-width of its 95% interval. The last
column says whether a row is significantly worse than the best one: a paired test on the
runs' per-image predictions when they were scored on the same images, and "not comparable"
otherwise.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from imgclf.common.cli import run_process, tool_parser

SORTS = ("val/accuracy", "test/accuracy", "val/macro_f1", "test/macro_f1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("-n", "--last", type=int, default=10, help="how many pipeline runs")
    parser.add_argument("--sort", default="val/accuracy", choices=SORTS,
                        help="the score to rank and test by (choose on validation)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.commands import compare  # torch and MLflow load only once the arguments parse

    return compare.execute(args)


def cli() -> NoReturn:
    """The ``imgclf-compare`` console script."""
    run_process(main)


if __name__ == "__main__":
    cli()
