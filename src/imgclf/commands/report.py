"""What ``imgclf-report`` (``make report``) does: compare two pipeline results. Its
command line is in ``imgclf/report.py``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from ruamel.yaml import YAML

from imgclf.common.cli import project_folder
from imgclf.common.errors import UserError
from imgclf.common.settings import load_settings
from imgclf.data.splits import load_split, split_digest
from imgclf.evaluation.document import write
from imgclf.evaluation.predictions import from_csv
from imgclf.evaluation.report import Side, build
from imgclf.tracking.provenance import seed_group
from imgclf.tracking.results import (
    CURVES,
    Result,
    curves_of,
    find,
    find_evaluate_run,
    group_of,
    log_report,
    made_at,
    predictions_of,
)
from imgclf.tracking.runs import flatten

WORKSPACE = "workspace"  # a side that is this checkout's files
METRICS, PARAMS = "reports/metrics.json", "params.yaml"
HISTORY, PREDICTIONS = "reports/train_history.csv", "reports/predictions.csv"


def read_at(reference: str, path: str) -> str | None:
    """A file of the workspace, or of a git revision (``None``: not there)."""
    if reference == WORKSPACE:
        try:
            return Path(path).read_text()
        except OSError:
            return None
    try:
        return subprocess.run(["git", "show", f"{reference}:{path}"], capture_output=True,
                              text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def predictions_at(reference: str, folder: Path) -> Path | None:
    """``reports/predictions.csv`` of the workspace, or of a revision from the DVC cache."""
    if reference == WORKSPACE:
        return Path(PREDICTIONS) if Path(PREDICTIONS).is_file() else None
    import dvc.api  # slow to import: only when a revision's predictions are read

    try:
        text = dvc.api.read(PREDICTIONS, rev=reference)
    except Exception:
        return None
    path = folder / f"{abs(hash(reference))}.csv"
    path.write_text(text)
    return path


def flat_params(text: str | None, folder: Path) -> dict[str, str]:
    """``params.yaml`` as MLflow records it (``train.lr``: ``"0.005"``, defaults filled in)."""
    if not text:
        return {}
    path = folder / "params.yaml"
    path.write_text(text)
    try:
        settings = load_settings(path)
        return {k: str(v) for k, v in flatten(settings, tuple(type(settings).model_fields)).items()}
    except UserError:  # params of an older schema: as written
        raw = YAML(typ="safe", pure=True).load(text) or {}
        return {f"{section}.{key}": str(value) for section, values in raw.items()
                if isinstance(values, dict) for key, value in values.items()}


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    return {f"{split}/{key}": float(value) for split in ("val", "test")
            for key, value in summary.get(split, {}).items()}


def history_curves(text: str | None) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in csv.DictReader(io.StringIO(text or "")):
        for metric in CURVES:
            if row.get(metric):
                curves[metric].append((int(row["epoch"]), float(row[metric])))
    return dict(curves)


def files_side(reference: str, experiment: str, folder: Path) -> Side:
    """A side read from the workspace's or a revision's files."""
    text = read_at(reference, METRICS)
    if text is None:
        raise UserError(f"{reference}: not a run id, DVC experiment name or git revision with "
                        f"a {METRICS} (give a commit, 'workspace', a name from dvc exp show "
                        "or a run id from imgclf-compare)")
    summary = json.loads(text)
    params_text = read_at(reference, PARAMS)
    stored = find_evaluate_run(str(summary.get("mlflow_run_id", "")))
    if stored is None and reference != WORKSPACE and (mine := this_machines(
            reference, params_text, experiment, folder)) is not None:
        # the committed metrics came from another machine: this one's run of that revision
        return run_side(replace(mine, label=reference), experiment, folder / "run")
    path = predictions_at(reference, folder)
    if path is None and stored is not None:
        path = predictions_of(stored, folder / "run")
    predictions, classes = from_csv(path) if path else ({}, [])
    metrics = flat_metrics(summary)
    group = ([r.metrics["test/accuracy"] for r in group_of(stored, experiment)
              if "test/accuracy" in r.metrics] if stored else [metrics.get("test/accuracy", 0)])
    return Side(reference, stored.run_id if stored else str(summary.get("mlflow_run_id", "-")),
                flat_params(params_text, folder), metrics, predictions, classes,
                dict(summary.get("digests", {})), history_curves(read_at(reference, HISTORY)),
                group, stored.tags.get("seed_group", "") if stored else "")


def this_machines(reference: str, params_text: str | None, experiment: str, folder: Path
                  ) -> Result | None:
    """This store's latest result of a revision's code and params, if it has one."""
    commit = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{reference}^{{commit}}"],
                            capture_output=True, text=True, timeout=60).stdout.strip()
    if not commit or not params_text:
        return None
    path = folder / "params-at-revision.yaml"
    path.write_text(params_text)
    try:
        settings = load_settings(path)
    except UserError:  # params of an older schema
        return None
    return made_at(commit, seed_group(settings), str(settings.train.seed), experiment)


def run_side(result: Result, experiment: str, folder: Path) -> Side:
    """A side read from the tracking store."""
    path = predictions_of(result, folder)
    predictions, classes = from_csv(path) if path else ({}, [])
    group = [r.metrics["test/accuracy"] for r in group_of(result, experiment)
             if "test/accuracy" in r.metrics]
    return Side(result.label, result.run_id, result.params, result.metrics, predictions, classes,
                {s: result.tags.get(f"{s}_digest", "") for s in ("val", "test")},
                curves_of(result), group, result.tags.get("seed_group", ""))


def side(reference: str, experiment: str, folder: Path) -> Side:
    found = None if reference == WORKSPACE else find(reference, experiment)
    if found is not None:
        return run_side(found, experiment, folder / "run")
    return files_side(reference, experiment, folder)


def test_images(data: Path, digest: str | None) -> np.ndarray | None:
    """The test images the sides were scored on, when ``data`` holds them."""
    try:
        if digest and split_digest(data, "test") == digest:
            return np.asarray(load_split(data, "test").images)
    except (OSError, UserError):
        pass
    return None


def execute(args: argparse.Namespace) -> int:
    root = project_folder()
    experiment = load_settings(args.params or root / "params.yaml").tracking.experiment
    os.chdir(root)  # revisions' files, the DVC cache and the outputs are the project's
    with tempfile.TemporaryDirectory(prefix="imgclf-report-") as folder:
        (Path(folder) / "run").mkdir()
        base, head = (side(ref, experiment, Path(folder)) for ref in (args.base, args.head))
    document = build(base, head, test_images(args.data, head.digests.get("test")))
    written = write(document, args.out, args.html)
    if len(head.run_id) == 32 and (stored := find_evaluate_run(head.run_id)) is not None:
        log_report(stored.run_id, written)
    print(f"wrote {args.out} and {args.html} ({base.label} → {head.label})")
    return 0
