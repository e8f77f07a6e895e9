"""Stage 4: train the classifier; save the last epoch's weights (or, with ``train.keep:
best``, the epoch with the best validation accuracy).

With ``--best-params`` the learning rate and batch size come from the tune stage.

    python -m imgclf.train --params params.yaml --data data/processed \\
        --model models/model.pt --metrics reports/train_metrics.json \\
        --plots reports/train_history.csv --best-params reports/best_params.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgclf.common.cli import run_process, stage_parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder from preprocess")
    parser.add_argument("--model", type=Path, required=True, help="output model file")
    parser.add_argument("--metrics", type=Path, required=True, help="output DVC metrics file")
    parser.add_argument("--plots", type=Path, required=True, help="output per-epoch CSV")
    parser.add_argument("--best-params", type=Path,
                        help="the tune stage's file; its train.lr and train.batch_size win")
    parser.add_argument("--checkpoint", type=Path,
                        help="per-epoch training state to resume from after an interruption")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.commands import train  # torch and MLflow load only once the arguments parse

    return train.execute(args, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    run_process(main)
