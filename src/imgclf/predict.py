"""Predict the classes of image files with a trained model.

    imgclf-predict [--model URI|PATH] [--output FILE.csv|FILE.json] [--top-k K]
                   [--batch-size N] PATH...
    imgclf-predict --export-samples DIR [--data data/processed] [--split test]

PATHs are image files, folders (searched recursively; hidden files are left out) and globs.
The model is the registry's champion for the current params unless ``--model`` names an
MLflow model URI (``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model``) or a
train stage ``.pt`` file. The model's own preprocessing is applied, whatever params.yaml
says. Each file gets one row: ``path``, ``class``, ``probability``, the top-k classes and
their probabilities, and ``error`` for a file that is not a readable image. The rows go to
stdout as CSV, or to ``--output`` as CSV or JSON by its extension. When every file sits in a
folder named after one of the model's classes, the accuracy against those names is printed.

``--export-samples`` writes a preprocessed split as PNG files in one folder per class, the
layout ``data.dataset: folder`` and this command read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from imgclf.common.cli import run_process, stage_parser
from imgclf.common.errors import UserError

FORMATS = (".csv", ".json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders, globs")
    parser.add_argument("--model", help="MLflow model URI or .pt file (default: the champion)")
    parser.add_argument("--output", type=Path, help="a .csv or .json file (default: stdout)")
    parser.add_argument("--top-k", type=int, default=3, help="classes listed per file")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--export-samples", type=Path, metavar="DIR",
                        help="write a preprocessed split as PNG class folders, then stop")
    parser.add_argument("--data", type=Path, default=Path("data/processed"),
                        help="the preprocessed splits, for --export-samples")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    args = parser.parse_args(argv)
    if args.output is not None and args.output.suffix.lower() not in FORMATS:
        raise UserError(f"--output {args.output}: give a file ending in .csv or .json")
    if args.top_k < 1 or args.batch_size < 1:
        raise UserError("--top-k and --batch-size must be at least 1")
    if not args.paths and args.export_samples is None:
        raise UserError("give the image files, folders or globs to predict")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.commands import predict  # torch and MLflow load only once the arguments parse

    return predict.execute(args)


def cli() -> NoReturn:
    """The ``imgclf-predict`` console script."""
    run_process(main)


if __name__ == "__main__":
    cli()
