"""What changed between two pipeline results, and whether the difference is real.

    imgclf-report [--base HEAD] [--head workspace]

Each side is ``workspace`` (this checkout's ``reports/``), a git revision (its committed
``reports/`` and ``params.yaml``, its predictions from the DVC cache), a DVC experiment name
or an MLflow run id. Writes ``reports/report.md`` (figures in ``reports/report_files/``) and
one self-contained ``reports/report.html``, and attaches them to the head's pipeline run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from imgclf.common.cli import run_process, tool_parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--base", default="HEAD", help="the result to compare against")
    parser.add_argument("--head", default="workspace",
                        help="the result to report on (default: workspace, this checkout)")
    parser.add_argument("--data", type=Path, default=Path("data/processed"),
                        help="preprocessed splits, the flipped test images' source "
                             "(paths are relative to the project root)")
    parser.add_argument("--out", type=Path, default=Path("reports/report.md"),
                        help="the Markdown report (its figures go beside it)")
    parser.add_argument("--html", type=Path, default=Path("reports/report.html"),
                        help="the self-contained HTML report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.commands import report  # torch and MLflow load only once the arguments parse

    return report.execute(args)


def cli() -> NoReturn:
    """The ``imgclf-report`` console script."""
    run_process(main)


if __name__ == "__main__":
    cli()
