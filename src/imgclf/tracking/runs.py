"""MLflow runs: one per stage, nested under one *pipeline* run per DVC invocation.

Each stage opens :func:`stage_run`. The runs a single ``dvc repro`` / ``dvc exp run`` produces
are nested under one pipeline run: DVC starts every stage as a child of the same ``dvc``
process, so that process's identity names the pipeline run the stages share even though
each stage is a separate Python process. :class:`StageRun` is the only handle stage code
has on MLflow.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset import Dataset
from mlflow.entities import (
    DatasetInput,
    InputTag,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    Param,
    RunStatus,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from imgclf.common.errors import Terminated
from imgclf.common.processes import process_id, start_time
from imgclf.common.settings import Settings
from imgclf.tracking.datasets import CONTEXTS
from imgclf.tracking.orphans import close_orphaned_runs, error_tag
from imgclf.tracking.provenance import (
    PROCESS_TAG,
    dvc_command,
    dvc_lock_hashes,
    dvc_process,
    pipeline_description,
    run_tags,
    seed_group,
)
from imgclf.tracking.store import connect

# Which params.yaml sections each stage logs as MLflow params ("train.lr", ...), the same
# names ``dvc exp run -S`` and ``dvc params diff`` use; the pipeline run logs them all.
STAGE_SECTIONS = {
    "download": ("data", "download"),
    "preprocess": ("data",),
    "tune": ("tune",),
    "train": ("train",),
    "evaluate": ("evaluate",),
}
# The params the train stage takes from the tune stage: the pipeline run shows the values
# used, logged by the stage that knows them, and a params.yaml value that lost as
# ``unused_baseline/<name>``.
TUNED = ("train.lr", "train.batch_size")
UNUSED = "unused_baseline/"
DESCRIPTION_TAG = "mlflow.note.content"
RESULT = "\n\nResult: "


# The stages whose runs carry MLflow's system metrics (CPU, memory, GPU when present).
SYSTEM_METRICS_STAGES = ("tune", "train", "evaluate")


def flatten(settings: Settings, sections: tuple[str, ...]) -> dict[str, Any]:
    """``{"train.lr": 0.003, ...}`` for the given sections."""
    dumped = settings.model_dump(mode="json")
    return {f"{section}.{key}": value
            for section in sections for key, value in dumped[section].items()}


@dataclass
class StageRun:
    """An open MLflow run; the only handle stage code has on MLflow."""

    run_id: str
    experiment_id: str
    stage: str = ""
    pipeline_run_id: str | None = None
    upstream: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def lineage(self) -> dict[str, str]:
        """Run ids of this stage and of every stage upstream: stored in the outputs."""
        return {**self.upstream, self.stage: self.run_id}

    @property
    def pipeline(self) -> StageRun | None:
        """The pipeline run this stage runs under (``None`` outside DVC)."""
        if self.pipeline_run_id is None:
            return None
        return StageRun(self.pipeline_run_id, self.experiment_id, "pipeline")

    def log_to_pipeline(self, metrics: Mapping[str, float] | None = None,
                        params: Mapping[str, Any] | None = None,
                        artifacts: Sequence[tuple[str | Path, str | None]] = ()) -> None:
        """Summarise on the pipeline run (when DVC runs the stage) so runs compare at a glance.

        Params already there are kept (MLflow params never change): the first stage that
        knows a value logs it.
        """
        if (pipeline := self.pipeline) is None:
            return
        if metrics:
            pipeline.log_metrics(metrics)
        if params:
            existing = self._client.get_run(pipeline.run_id).data.params
            pipeline.log_params({k: v for k, v in params.items() if k not in existing})
        for path, folder in artifacts:
            pipeline.log_artifact(path, folder)

    def log_used(self, used: Mapping[str, Any], declared: Settings) -> None:
        """The tuned values this run used (``train.lr``...), each params.yaml value that was
        not used as ``unused_baseline/<name>``, here and on the pipeline run."""
        baseline = flatten(declared, ("train",))
        params = dict(used) | {f"{UNUSED}{key}": baseline[key] for key, value in used.items()
                               if key in baseline and baseline[key] != value}
        self.log_params(params)
        self.log_to_pipeline(params=params)

    def log_datasets(self, datasets: Mapping[str, Dataset]) -> None:
        """Record the splits this run read (``{"train": dataset, ...}``) as its MLflow inputs,
        and on the pipeline run."""
        inputs = [DatasetInput(dataset._to_mlflow_entity(),
                               [InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS.get(split, split))])
                  for split, dataset in datasets.items()]
        for run in (self, self.pipeline):
            if run is not None:
                self._client.log_inputs(run.run_id, datasets=inputs)

    def use_model(self, model_id: str) -> None:
        """Record that this run read the logged model ``model_id`` (an MLflow model input)."""
        self._client.log_inputs(self.run_id, models=[LoggedModelInput(model_id)])

    def link_model(self, model_id: str, step: int) -> None:
        """List the logged model among the pipeline run's models (its Logged models panel)."""
        if (pipeline := self.pipeline) is not None:
            self._client.log_outputs(pipeline.run_id, [LoggedModelOutput(model_id, step)])

    def describe_result(self, result: str) -> None:
        """End the pipeline run's description with the result (replacing an earlier one)."""
        if (pipeline := self.pipeline) is None:
            return
        tags = self._client.get_run(pipeline.run_id).data.tags
        head = tags.get(DESCRIPTION_TAG, "").split(RESULT)[0]
        pipeline.set_tags({DESCRIPTION_TAG: f"{head}{RESULT}{result}"})

    @property
    def _client(self) -> MlflowClient:
        return MlflowClient()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._client.log_batch(self.run_id, params=[
            Param(key, str(value)) for key, value in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None,
                    model_id: str | None = None, dataset: Dataset | None = None) -> None:
        """Log several metrics in one call (one batch request per epoch); with ``model_id``
        and ``dataset`` they are also the logged model's scores on that dataset."""
        now = int(time.time() * 1000)
        name, digest = (dataset.name, dataset.digest) if dataset is not None else (None, None)
        self._client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), now, step or 0, model_id=model_id, dataset_name=name,
                   dataset_digest=digest)
            for key, value in metrics.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._client.log_batch(self.run_id, tags=[
            RunTag(key, str(value)) for key, value in tags.items()])

    def log_dict(self, data: Any, name: str) -> None:
        self._client.log_dict(self.run_id, data, name)

    def log_table(self, data: Mapping[str, list[Any]], name: str) -> None:
        """A table (columns of equal length) as an MLflow table artifact."""
        self._client.log_table(self.run_id, dict(data), name)

    def log_figure(self, figure: Any, name: str) -> None:
        self._client.log_figure(self.run_id, figure, name)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), folder)


def _pipeline_run(client: MlflowClient, experiment_id: str, settings: Settings) -> str | None:
    """The id of the pipeline run shared by the stages of the current DVC invocation."""
    proc = dvc_process()
    if proc is None:
        return None
    key = f"{proc.pid}-{start_time(proc)}"
    found = client.search_runs([experiment_id], f"tags.pipeline_key = '{key}'", max_results=1)
    if found:
        run_id = str(found[0].info.run_id)
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = run_tags("pipeline", settings, source=dvc_command(proc)) | {
        "pipeline_key": key, PROCESS_TAG: process_id(proc), "seed_group": seed_group(settings)}
    tags[DESCRIPTION_TAG] = pipeline_description(tags)
    # a runs table of many experiments needs names that tell them apart
    label = tags.get("dvc_exp_name") or tags.get("git_commit", "")[:7] or "workspace"
    name = f"pipeline · {label}"
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    # every section, except the values the tune stage decides (logged as used, later)
    params = flatten(settings, tuple(type(settings).model_fields))
    client.log_batch(run.info.run_id, params=[
        Param(key, str(value)) for key, value in params.items() if key not in TUNED])
    for path in (Path("params.yaml"), Path("dvc.yaml")):
        if path.is_file():
            client.log_artifact(run.info.run_id, str(path), "pipeline")
    return str(run.info.run_id)


def _link_pipeline(client: MlflowClient, pipeline: str, stage: str, run_id: str,
                   upstream: Mapping[str, str], data_version: str | None) -> None:
    """Tag the pipeline run with this stage's run and the cached runs it builds on."""
    existing = client.get_run(pipeline).data.tags
    tags = {f"run.{stage}": run_id}
    for name, upstream_id in upstream.items():
        if f"run.{name}" not in existing:  # DVC skipped that stage: its outputs were cached
            tags |= {f"run.{name}": upstream_id, f"reused.{name}": "true"}
    if data_version:
        tags["data_version"] = data_version
    client.log_batch(pipeline, tags=[RunTag(key, value) for key, value in tags.items()])


def _stage_tags(stage: str, settings: Settings, upstream: Mapping[str, str],
                data_version: str | None, deps: Sequence[str | Path]) -> dict[str, str]:
    """Provenance, the upstream runs (``lineage.<stage>``) and the inputs' DVC hashes."""
    tags = run_tags(stage, settings)
    tags |= {f"lineage.{name}": run_id for name, run_id in upstream.items()}
    tags |= {f"dvc.md5/{path}": md5 for path, md5 in dvc_lock_hashes(deps).items()}
    if data_version:
        tags["data_version"] = data_version
    return tags


@contextlib.contextmanager
def stage_run(
    stage: str,
    settings: Settings,
    *,
    upstream: Mapping[str, str] | None = None,
    data_version: str | None = None,
    deps: Sequence[str | Path] = (),
    declared: Settings | None = None,
    root: Path | None = None,
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage, nested under the pipeline run when DVC runs it.

    ``upstream`` maps earlier stages to the runs that produced this stage's inputs (read from
    those inputs); they become ``lineage.<stage>`` tags, and on the pipeline run ``run.<stage>``
    tags link every stage, including the ones DVC skipped because their outputs were cached.
    ``deps`` are input paths whose hashes are copied from ``dvc.lock``. ``declared`` is
    params.yaml as written, when the stage runs with some values replaced (train's tuned ones);
    the pipeline run records it, the stage run records ``settings``.

    The run ends FINISHED on success, FAILED with an ``error`` tag on an exception, and
    KILLED on Ctrl-C or SIGTERM.
    """
    upstream = dict(upstream or {})
    experiment_id = connect(settings.tracking.experiment, root)
    client = MlflowClient()
    close_orphaned_runs(client, experiment_id)
    parent = _pipeline_run(client, experiment_id, declared or settings)
    # the train stage runs with tuned values: its group is that of params.yaml as written
    tags = _stage_tags(stage, settings, upstream, data_version, deps) | {
        "seed_group": seed_group(declared or settings)}
    watched = stage in SYSTEM_METRICS_STAGES
    if watched:  # every second (not 10): a stage of a few seconds still gets its samples
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent,
                           tags=tags, log_system_metrics=watched)
    if parent:
        _link_pipeline(client, parent, stage, run.info.run_id, upstream, data_version)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        if sections := STAGE_SECTIONS.get(stage):
            mlflow.log_params(flatten(settings, sections))
        yield StageRun(run.info.run_id, experiment_id, stage, parent, upstream, tags)
        status = RunStatus.to_string(RunStatus.FINISHED)
    except (KeyboardInterrupt, Terminated):
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    except BaseException as exc:
        mlflow.set_tag("error", error_tag(exc))
        raise
    finally:
        mlflow.end_run(status)
        if parent:
            client.set_terminated(parent, status)


@contextlib.contextmanager
def trial_run(
    parent_run_id: str,
    experiment_id: str,
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, Any],
    pruned: tuple[type[BaseException], ...] = (),
) -> Iterator[StageRun]:
    """A child run of a tuning run for one trial, closed with the trial's outcome.

    Normal exit: FINISHED, ``trial_state=COMPLETE``. An exception of a ``pruned`` type:
    FINISHED too (pruning is a healthy search's outcome, not an error), ``trial_state=PRUNED``.
    Any other exception: FAILED, ``trial_state=FAIL`` and the error as a tag; KILLED is left
    for real kills. Works in worker processes that have no active run.
    """
    client = MlflowClient()
    # where the code came from, as on the tuning run
    source = {key: value for key, value in client.get_run(parent_run_id).data.tags.items()
              if key.startswith(("mlflow.source.", "git_"))}
    run = client.create_run(experiment_id, run_name=name, tags={
        **source, **{key: str(value) for key, value in tags.items()},
        "mlflow.parentRunId": parent_run_id, PROCESS_TAG: process_id()})
    handle = StageRun(run.info.run_id, experiment_id)
    handle.log_params(params)
    try:
        yield handle
    except pruned:
        handle.set_tags({"trial_state": "PRUNED"})
        client.set_terminated(run.info.run_id, "FINISHED")
        raise
    except BaseException as exc:
        handle.set_tags({"trial_state": "FAIL", "error": error_tag(exc)})
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    handle.set_tags({"trial_state": "COMPLETE"})
    client.set_terminated(run.info.run_id, "FINISHED")


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run (empty if the run is unknown)."""
    try:
        return dict(MlflowClient().get_run(run_id).data.metrics)
    except MlflowException:
        return {}


def used_values(run_id: str) -> dict[str, str]:
    """The tuned values a (train) run used, and the baselines it did not use (empty if the
    run is unknown)."""
    try:
        params = MlflowClient().get_run(run_id).data.params
    except MlflowException:
        return {}
    return {key: value for key, value in params.items()
            if key in TUNED or key.removeprefix(UNUSED) in TUNED}


def pipeline_runs(experiment: str, limit: int) -> list[dict[str, Any]]:
    """The latest ``limit`` pipeline runs as plain dicts: id, DVC experiment, params, metrics."""
    experiment_id = connect(experiment)
    runs = MlflowClient().search_runs([experiment_id], "tags.stage = 'pipeline'",
                                      order_by=["attributes.start_time DESC"],
                                      max_results=limit)
    return [{"run_id": run.info.run_id, "experiment": run.data.tags.get("dvc_exp_name"),
             "params": dict(run.data.params), "metrics": dict(run.data.metrics),
             "tags": dict(run.data.tags)}
            for run in runs]
