"""What ``imgclf-compare`` does: the leaderboard of the latest pipeline runs, with
intervals and paired tests. Its command line is in ``imgclf/compare.py``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from imgclf.common.cli import project_folder
from imgclf.common.errors import UserError
from imgclf.common.settings import load_settings
from imgclf.common.stats import spread
from imgclf.evaluation.comparison import Verdict, groups_verdict, paired, runs_verdict
from imgclf.evaluation.predictions import from_csv
from imgclf.evaluation.scores import Predictions
from imgclf.tracking.results import Result, predictions_of, result_of
from imgclf.tracking.runs import pipeline_runs

METRICS = ("val/accuracy", "test/accuracy")


@dataclass
class Entry:
    """A leaderboard row: one run, or the runs of one seed group."""

    members: list[Result]
    predictions: Predictions | None = None  # a single run's, on the sorted metric's split

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.members if metric in r.metrics]

    def cell(self, metric: str) -> str:
        values = self.values(metric)
        if not values:
            return "-"
        if len(self.members) > 1:
            found = spread(values)
            return (f"{found.mean:.4f} ± {found.std:.4f} sd (n={found.n}), "
                    f"mean in [{found.low:.4f}, {found.high:.4f}]")
        low, high = (self.members[0].metrics.get(f"{metric}_ci95_{end}") for end in ("low", "high"))
        half = f" ± {(high - low) / 2:.4f}" if low is not None and high is not None else ""
        return f"{values[0]:.4f}{half}"

    def digest(self, split: str) -> str | None:
        digests = {r.tags.get(f"{split}_digest") for r in self.members}
        return digests.pop() if len(digests) == 1 else None


def entries(results: list[Result]) -> list[Entry]:
    """Results grouped by seed group, in order of first appearance; a seed run twice counts
    once (its latest result)."""
    groups: dict[str, Entry] = {}
    for result in results:
        key = result.tags.get("seed_group") or result.run_id
        entry = groups.setdefault(key, Entry([]))
        seeds = {r.params.get("train.seed") for r in entry.members}
        if result.params.get("train.seed") not in seeds or None in seeds:
            entry.members.append(result)
    return list(groups.values())


def verdict(best: Entry, other: Entry, metric: str) -> Verdict:
    """Whether ``other`` is significantly different from ``best`` on ``metric``."""
    split, name = metric.split("/", 1)
    if best.digest(split) is None or best.digest(split) != other.digest(split):
        return Verdict(False, why="scored on different images")
    if len(best.members) == 1 and len(other.members) == 1:
        if name == "accuracy":
            return runs_verdict(best.predictions, other.predictions, best.digest(split),
                                other.digest(split))
        if best.predictions is None or other.predictions is None:
            return Verdict(False, why="no stored predictions")
        test = paired(best.predictions, other.predictions, name)
        return Verdict(True, test.significant(), test.p_value, "paired bootstrap")
    return groups_verdict(best.values(metric), other.values(metric))


def leaderboard(found: list[Entry], sort: str) -> tuple[list[str], list[list[str]]]:
    """Columns and rows: params that differ between entries, the scores, the verdicts."""
    ordered = sorted(found, key=lambda e: spread(e.values(sort)).mean if e.values(sort)
                     else float("-inf"), reverse=True)
    keys = sorted({key for e in found for r in e.members for key in r.params})
    differing = [key for key in keys if len({r.params.get(key) for e in found
                                             for r in e.members}) > 1]
    columns = ["run", "experiment", *differing, *METRICS, f"vs best ({sort})"]
    rows = []
    for rank, entry in enumerate(ordered):
        mark = "best" if rank == 0 else verdict(ordered[0], entry, sort).mark(worse=True)
        rows.append([
            entry.members[0].run_id if len(entry.members) == 1
            else f"seed group {entry.members[0].tags.get('seed_group', '')}",
            ", ".join(sorted({r.name for r in entry.members})),
            *[",".join(sorted({r.params.get(key, "-") for r in entry.members}))
              for key in differing],
            *[entry.cell(metric) for metric in METRICS], mark])
    return columns, rows


def group_notes(found: list[Entry], sort: str) -> list[str]:
    """A line for each seed group: its runs differ only in the seed."""
    notes = []
    for entry in found:
        if len(entry.members) > 1 and entry.values(sort):
            seeds = ", ".join(sorted({r.params.get("train.seed", "?") for r in entry.members}))
            found_ = spread(entry.values(sort))
            notes.append(f"seed group {entry.members[0].tags.get('seed_group', '')}: "
                         f"{found_.n} runs of one recipe (train.seed {seeds}), {sort} "
                         f"{found_.mean:.4f} ± {found_.std:.4f} sd. Only the seed differs "
                         "between them: their differences are seed variation, not significant "
                         "as a change of recipe.")
    return notes


def load_predictions(found: list[Entry], split: str, folder: Path,
                     fetch: Callable[[Result, Path], Path | None] = predictions_of) -> None:
    """Each single run's stored predictions on ``split`` (what paired tests need)."""
    for index, entry in enumerate(found):
        if len(entry.members) == 1:
            path = fetch(entry.members[0], folder / str(index))
            if path is not None:
                try:
                    entry.predictions = from_csv(path)[0].get(split)
                except UserError:
                    entry.predictions = None


def execute(args: argparse.Namespace) -> int:
    settings = load_settings(args.params or project_folder() / "params.yaml")
    runs = pipeline_runs(settings.tracking.experiment, args.last)
    results = [result_of(run["run_id"]) for run in runs if "run.evaluate" in run["tags"]]
    if not results:
        print("no finished pipeline runs yet: run the pipeline (make run, dvc exp run)")
        return 0
    found = entries(results)
    with tempfile.TemporaryDirectory(prefix="imgclf-compare-") as folder:
        load_predictions(found, args.sort.split("/")[0], Path(folder))
    columns, rows = leaderboard(found, args.sort)
    table = Table(title=f"last {len(results)} pipeline runs of "
                        f"'{settings.tracking.experiment}' ({len(found)} rows)")
    for column in columns:
        table.add_column(column, no_wrap=column == "run")
    for row in rows:
        table.add_row(*row)
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]
    Console(width=max(80, sum(width + 3 for width in widths) + 1)).print(table)
    print("± is a single run's 95% interval half-width, or a seed group's standard deviation."
          " '≈ best': not significantly different from the best row (alpha 0.05): exact "
          "McNemar on the same images between runs, Welch's t-test between seed groups.")
    for note in group_notes(found, args.sort):
        print(note)
    return 0
