"""Leaderboard of the latest pipeline runs, for people who live in the terminal.

    imgclf-compare [-n 10] [--sort test/accuracy]

One row per ``dvc repro`` / ``dvc exp run``: the DVC experiment, the params that differ
between the listed runs, validation and test accuracy, and the MLflow run id to look up.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from imgclf.common.cli import run_process, stage_parser
from imgclf.common.settings import load_settings
from imgclf.tracking.runs import pipeline_runs

METRICS = ("val/kept_accuracy", "test/accuracy")  # the saved model's validation and test


def leaderboard(runs: list[dict], sort: str) -> tuple[list[str], list[list[str]]]:
    """Columns and rows: params that differ between ``runs``, the metrics and ids."""
    keys = sorted({key for run in runs for key in run["params"]})
    differing = [key for key in keys
                 if len({run["params"].get(key) for run in runs}) > 1]
    ordered = sorted(runs, key=lambda run: run["metrics"].get(sort, float("-inf")),
                     reverse=not sort.endswith("loss"))
    columns = ["run", "experiment", *differing, *METRICS]
    rows = []
    for run in ordered:
        rows.append([
            run["run_id"], run["experiment"] or "-",
            *[str(run["params"].get(key, "-")) for key in differing],
            *[f"{run['metrics'][m]:.4f}" if m in run["metrics"] else "-" for m in METRICS],
        ])
    return columns, rows


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("-n", "--last", type=int, default=10, help="how many pipeline runs")
    parser.add_argument("--sort", default="test/accuracy", help="metric to rank by")
    args = parser.parse_args(argv)

    settings = load_settings(args.params)
    runs = pipeline_runs(settings.tracking.experiment, args.last)
    if not runs:
        print("no pipeline runs yet: run the pipeline (make run, dvc exp run)")
        return 0
    columns, rows = leaderboard(runs, args.sort)
    table = Table(title=f"last {len(runs)} pipeline runs of '{settings.tracking.experiment}'")
    for column in columns:
        table.add_column(column, no_wrap=column == "run")
    for row in rows:
        table.add_row(*row)
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]
    Console(width=max(80, sum(width + 3 for width in widths) + 1)).print(table)
    return 0


if __name__ == "__main__":
    run_process(main)
