"""Stage 3: search learning rate and batch size with Optuna; the winner feeds training.

Every trial calls the training core the train stage uses on a share of the training split
and reports validation accuracy after each epoch, so the pruner can stop weak trials early.
The study is stored outside DVC's outputs and resumes: raising ``tune.n_trials`` and rerunning
adds only the missing trials. With ``tune.enabled: false`` the stage writes ``train.lr`` and
``train.batch_size`` through unchanged.

    python -m imgclf.tune --params params.yaml --data data/processed \\
        --best reports/best_params.yaml --metrics reports/tune_metrics.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.common.cli import run_process, stage_parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder from preprocess")
    parser.add_argument("--best", type=Path, required=True, help="output best-params YAML")
    parser.add_argument("--metrics", type=Path, required=True, help="output DVC metrics file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.commands import tune  # torch and MLflow load only once the arguments parse

    return tune.execute(args)


if __name__ == "__main__":
    run_process(main)
