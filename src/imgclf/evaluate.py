"""Stage 5: score the trained model on the validation and test splits, and register it.

    python -m imgclf.evaluate --params params.yaml --data data/processed \\
        --model models/model.pt --metrics reports/metrics.json \\
        --per-class reports/per_class.json --confusion reports/confusion.csv \\
        --confusion-png reports/confusion.png --calibration-png reports/calibration.png \\
        --predictions reports/predictions.csv

Every score comes with its 95% interval. The registry's ``champion`` alias moves to the new
version only when it beats the champion on ``evaluate.champion_metric`` (validation accuracy
by default), both scored on the same images, and a paired test says the gain is real.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.common.cli import run_process, stage_parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder from preprocess")
    parser.add_argument("--model", type=Path, required=True, help="model from the train stage")
    parser.add_argument("--metrics", type=Path, required=True, help="output DVC metrics file")
    parser.add_argument("--per-class", type=Path, required=True, help="output per-class JSON")
    parser.add_argument("--confusion", type=Path, required=True, help="output DVC plot data")
    parser.add_argument("--confusion-png", type=Path, required=True, help="output image")
    parser.add_argument("--calibration-png", type=Path, required=True,
                        help="output reliability diagram")
    parser.add_argument("--predictions", type=Path, required=True,
                        help="output per-image predictions (CSV)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.commands import evaluate  # torch and MLflow load only once the arguments parse

    return evaluate.execute(args)


if __name__ == "__main__":
    run_process(main)
