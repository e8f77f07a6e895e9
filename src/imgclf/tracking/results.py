"""Pipeline results to compare: a pipeline run with its params, scores, training curves and
per-image predictions, found by MLflow run id or DVC experiment name."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf.common.errors import UserError, one_line
from imgclf.tracking.store import connect

CURVES = ("train/loss", "val/loss", "train/accuracy", "val/accuracy")
PREDICTIONS = "predictions.csv"  # the evaluate run's artifact


@dataclass(frozen=True)
class Result:
    """One pipeline result: its pipeline run (when DVC ran it) and its stage runs."""

    label: str  # how the user referred to it
    run_id: str  # the pipeline run, or the evaluate run when there is no pipeline run
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]  # the evaluate run's
    evaluate_run_id: str
    train_run_id: str | None

    @property
    def name(self) -> str:
        """The DVC experiment's name, or the short run id."""
        return self.tags.get("dvc_exp_name") or self.run_id[:8]


def result_of(run_id: str, label: str | None = None) -> Result:
    """The result an evaluate run or its pipeline run belongs to.

    Raises:
        UserError: no such run, or one that has no evaluate stage.
    """
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
        if run.data.tags.get("stage") not in (None, "pipeline", "evaluate"):
            run = client.get_run(run.data.tags["mlflow.parentRunId"])
        pipeline = run if run.data.tags.get("stage") == "pipeline" else None
        evaluate_id = run.data.tags.get("run.evaluate") if pipeline else run.info.run_id
        if not evaluate_id:
            raise UserError(f"run {run_id}: its pipeline has no evaluate stage yet; run it "
                            "to the end (dvc repro)")
        evaluate = client.get_run(evaluate_id)
        parent = pipeline or _parent(client, evaluate.data.tags)
    except (MlflowException, KeyError) as exc:
        raise UserError(f"no pipeline result for run {run_id} in the tracking store "
                        f"({one_line(exc)}); imgclf-compare lists the runs") from None
    source = parent or evaluate
    train_id = evaluate.data.tags.get("lineage.train")
    # without a pipeline run, the train run holds the recipe's params
    params = dict(_train_params(client, train_id) if parent is None else {})
    params |= source.data.params
    metrics = {**evaluate.data.metrics, **(parent.data.metrics if parent else {})}
    return Result(label or run_id[:8], source.info.run_id, params, metrics,
                  dict(evaluate.data.tags), evaluate.info.run_id, train_id)


def _train_params(client: MlflowClient, run_id: str | None) -> dict[str, str]:
    try:
        return dict(client.get_run(run_id).data.params) if run_id else {}
    except MlflowException:  # deleted since
        return {}


def _parent(client: MlflowClient, tags: dict[str, str]):  # type: ignore[no-untyped-def]
    parent = tags.get("mlflow.parentRunId")
    return client.get_run(parent) if parent else None


def find(reference: str, experiment: str) -> Result | None:
    """The result an MLflow run id or a DVC experiment name refers to (``None``: neither)."""
    experiment_id = connect(experiment)
    if re.fullmatch(r"[0-9a-f]{32}", reference):
        return result_of(reference)
    found = MlflowClient().search_runs(
        [experiment_id], f"tags.stage = 'pipeline' and tags.dvc_exp_name = '{reference}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return result_of(found[0].info.run_id, reference) if found else None


def find_evaluate_run(run_id: str) -> Result | None:
    """The result of an evaluate run named in a metrics file, if the store has it."""
    try:
        return result_of(run_id)
    except UserError:
        return None


def made_at(commit: str, group: str, seed: str, experiment: str) -> Result | None:
    """The latest result made from ``commit``'s code with a recipe (seed group and seed), such
    as this machine's run of a revision whose committed metrics came from another machine."""
    experiment_id = connect(experiment)
    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.stage = 'evaluate' and tags.git_commit = '{commit}' and "
        f"tags.seed_group = '{group}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"])
    for run in runs:
        found = result_of(run.info.run_id)
        if found.params.get("train.seed") == seed:
            return found
    return None


def log_report(run_id: str, paths: list[Path], folder: str = "report") -> None:
    """Attach a report's files to a run (the head result's pipeline run)."""
    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), folder if path.suffix != ".png"
                            else f"{folder}/{path.parent.name}")


def predictions_of(result: Result, folder: Path) -> Path | None:
    """A local copy of the result's per-image predictions (``None``: it has none)."""
    # a progress bar per small file would bury the command's own output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return Path(MlflowClient().download_artifacts(result.evaluate_run_id, PREDICTIONS,
                                                      str(folder)))
    except (MlflowException, OSError):
        return None


def curves_of(result: Result) -> dict[str, list[tuple[int, float]]]:
    """The train run's per-epoch curves: ``{metric: [(epoch, value), ...]}``."""
    if not result.train_run_id:
        return {}
    client = MlflowClient()
    out = {}
    for metric in CURVES:
        try:
            history = client.get_metric_history(result.train_run_id, metric)
        except MlflowException:
            continue
        if history:
            out[metric] = sorted((point.step, point.value) for point in history)
    return out


def group_of(result: Result, experiment: str) -> list[Result]:
    """The finished results that share ``result``'s seed group (itself included)."""
    group = result.tags.get("seed_group")
    if not group:
        return [result]
    experiment_id = connect(experiment)
    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.stage = 'evaluate' and tags.seed_group = '{group}' "
        "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    members, seen = [], set()
    for run in runs:  # the latest result of each seed (a rerun of one seed counts once)
        found = result_of(run.info.run_id)
        seed = found.params.get("train.seed") or found.train_run_id
        if seed not in seen:
            seen.add(seed)
            members.append(found)
    return members or [result]
