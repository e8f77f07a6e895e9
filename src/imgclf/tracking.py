"""The one module that talks to MLflow.

Each stage opens :func:`stage_run`. The runs a single ``dvc repro`` / ``dvc exp run`` produces
are nested under one *pipeline* run: DVC starts every stage as a child of the same ``dvc``
process, so that process's identity names the pipeline run the stages share even though
each stage is a separate Python process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import psutil
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from imgclf.errors import Terminated, UserError
from imgclf.files import project_root
from imgclf.processes import is_alive, process_id
from imgclf.settings import Settings

PROCESS_TAG = "process"
STORE_DIR = "mlruns"
STORE_DB = "mlflow.db"
ERROR_TAG_LIMIT = 5000

# Which params.yaml sections each stage logs as MLflow params ("train.lr", ...), the same
# names ``dvc exp run -S`` and ``dvc params diff`` use.
STAGE_SECTIONS = {
    "download": ("data", "download"),
    "preprocess": ("data",),
    "tune": ("data", "train", "tune"),
    "train": ("data", "train"),
    "evaluate": ("data", "evaluate"),
}


class TrackingError(UserError):
    """The tracking store cannot be reached or used."""


def redact(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` replaced by ``***``."""
    return re.sub(r"(\w+://[^/\s:@]+:)[^@\s/]+@", r"\1***@", text)


def tracking_uri(root: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, or the project's SQLite store ``mlruns/mlflow.db``."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{(root or project_root()) / STORE_DIR / STORE_DB}"


@contextlib.contextmanager
def _default_store(root: Path) -> Iterator[None]:
    """Create ``mlruns/`` with its SQLite store in WAL mode, one process at a time.

    WAL lets concurrent stages (queued experiments) read while one writes; the lock keeps
    two first-time stages from creating MLflow's tables at once.
    """
    store = root / STORE_DIR
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.closing(sqlite3.connect(store / STORE_DB, timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")
        yield


@contextlib.contextmanager
def _fail_fast_http() -> Iterator[None]:
    """Let one probe of a remote server fail in seconds instead of after minutes of retries."""
    saved = {key: os.environ.get(key) for key in
             ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def connect(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at the project store, make sure it answers, and return the experiment id.

    Raises:
        TrackingError: the store cannot be reached; raised before any work starts.
    """
    root = root or project_root()
    uri = tracking_uri(root)
    default_store = "MLFLOW_TRACKING_URI" not in os.environ
    try:
        with _default_store(root) if default_store else contextlib.nullcontext():
            return _experiment_id(uri, experiment, root, default_store)
    except (MlflowException, OSError, sqlite3.Error) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(
            f"cannot use the MLflow tracking store at {redact(uri)}: {redact(reason)}. "
            "Start the server or fix MLFLOW_TRACKING_URI (unset it to use mlruns/mlflow.db)."
        ) from None


def _experiment_id(uri: str, experiment: str, root: Path, default_store: bool) -> str:
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    with _fail_fast_http():
        found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = (root / STORE_DIR / "artifacts").as_uri() if default_store else None
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent stage
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def run_tags(stage: str, settings: Settings) -> dict[str, str]:
    """Tags that say where a run came from: stage, code version, dataset, DVC experiment."""
    tags = {"stage": stage, "dataset": settings.data.dataset, PROCESS_TAG: process_id()}
    if commit := _git("rev-parse", "HEAD"):
        tags["git_commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["git_dirty"] = str(bool(status)).lower()
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp_name"),
                     ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if value := os.environ.get(env):
            tags[tag] = value
    return tags


def flatten(settings: Settings, sections: tuple[str, ...]) -> dict[str, Any]:
    """``{"train.lr": 0.003, ...}`` for the given sections."""
    dumped = settings.model_dump(mode="json")
    return {f"{section}.{key}": value
            for section in sections for key, value in dumped[section].items()}


def _dvc_process() -> psutil.Process | None:
    """The ``dvc`` process (``repro``, ``exp run``, a queue worker) this stage runs under."""
    try:
        for proc in psutil.Process().parents():
            argv = proc.cmdline()
            if any(Path(arg).name == "dvc" for arg in argv[:2]) or argv[1:3] == ["-m", "dvc"]:
                return proc
    except psutil.Error:
        pass
    return None


def _pipeline_run(client: MlflowClient, experiment_id: str, settings: Settings) -> str | None:
    """The id of the pipeline run shared by the stages of the current DVC invocation."""
    proc = _dvc_process()
    if proc is None:
        return None
    key = f"{proc.pid}-{int(proc.create_time() * 1000)}"
    found = client.search_runs([experiment_id], f"tags.pipeline_key = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = run_tags("pipeline", settings) | {"pipeline_key": key, PROCESS_TAG: process_id(proc)}
    name = f"pipeline {tags['dvc_exp_name']}" if "dvc_exp_name" in tags else "pipeline"
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=[
        Param(key, str(value))
        for key, value in flatten(settings, tuple(type(settings).model_fields)).items()
    ])
    return run.info.run_id


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

    def log_to_pipeline(self, metrics: Mapping[str, float] | None = None,
                        params: Mapping[str, Any] | None = None) -> None:
        """Summarise on the pipeline run (when DVC runs the stage) so runs compare at a glance."""
        if self.pipeline_run_id is None:
            return
        pipeline = StageRun(self.pipeline_run_id, self.experiment_id)
        if metrics:
            pipeline.log_metrics(metrics)
        if params:
            existing = self._client.get_run(self.pipeline_run_id).data.params
            pipeline.log_params({k: v for k, v in params.items() if k not in existing})

    @property
    def _client(self) -> MlflowClient:
        return MlflowClient()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._client.log_batch(self.run_id, params=[
            Param(key, str(value)) for key, value in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log several metrics in one call (one batch request per epoch)."""
        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), now, step or 0) for key, value in metrics.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._client.log_batch(self.run_id, tags=[
            RunTag(key, str(value)) for key, value in tags.items()])

    def log_dict(self, data: Any, name: str) -> None:
        self._client.log_dict(self.run_id, data, name)

    def log_figure(self, figure: Any, name: str) -> None:
        self._client.log_figure(self.run_id, figure, name)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), folder)

    def log_model(self, model: Any, input_example: np.ndarray) -> str:
        """Log a PyTorch model in MLflow's pickle-free ``pt2`` format; return its URI.

        Must be called while this run is the active one (inside :func:`stage_run`).
        """
        import torch

        model = model.eval().to("cpu", memory_format=torch.contiguous_format)
        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(input_example, output),
            input_example=input_example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"mlflow=={mlflow.__version__}"],
        )
        return info.model_uri


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
    tags = run_tags(stage, settings)
    tags |= {f"lineage.{name}": run_id for name, run_id in upstream.items()}
    tags |= {f"dvc.md5/{path}": md5 for path, md5 in dvc_lock_hashes(deps).items()}
    if data_version:
        tags["data_version"] = data_version
    run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent,
                           tags=tags)
    if parent:
        _link_pipeline(client, parent, stage, run.info.run_id, upstream, data_version)
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_terminated)
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
        mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:ERROR_TAG_LIMIT])
        raise
    finally:
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        mlflow.end_run(status)
        if parent:
            client.set_terminated(parent, status)


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


def dvc_lock_hashes(paths: Sequence[str | Path], lock: Path = Path("dvc.lock")
                    ) -> dict[str, str]:
    """The MD5s ``dvc.lock`` records for the given paths (outputs of earlier stages)."""
    wanted = {Path(path).as_posix().rstrip("/") for path in paths}
    try:
        stages = YAML(typ="safe", pure=True).load(lock.read_text()).get("stages", {})
    except (OSError, YAMLError, AttributeError):
        return {}
    found = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") in wanted and "md5" in out:
                found[out["path"]] = out["md5"]
    return found


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"received signal {signum}")


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
    KILLED, ``trial_state=PRUNED``. Any other exception: FAILED, ``trial_state=FAIL`` and the
    error as a tag. Works in worker processes that have no active run.
    """
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=name, tags={
        **{key: str(value) for key, value in tags.items()},
        "mlflow.parentRunId": parent_run_id, PROCESS_TAG: process_id()})
    handle = StageRun(run.info.run_id, experiment_id)
    handle.log_params(params)
    try:
        yield handle
    except pruned:
        handle.set_tags({"trial_state": "PRUNED"})
        client.set_terminated(run.info.run_id, "KILLED")
        raise
    except BaseException as exc:
        handle.set_tags({"trial_state": "FAIL",
                         "error": f"{type(exc).__name__}: {exc}"[:ERROR_TAG_LIMIT]})
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    handle.set_tags({"trial_state": "COMPLETE"})
    client.set_terminated(run.info.run_id, "FINISHED")


def close_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED the runs left RUNNING by a process on this machine that no longer exists.

    A SIGKILL (or a power cut) gives a process no chance to close its run; the next stage
    to start closes it, so no run stays RUNNING forever.
    """
    closed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                  max_results=1000):
        process = run.data.tags.get(PROCESS_TAG)
        if process and not is_alive(process):
            client.set_tag(run.info.run_id, "error",
                           f"process {process} died without closing the run (killed?)")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


def close_orphaned_run(run_id: str, reason: str) -> None:
    """Mark a run left RUNNING by a process that died as KILLED, recording why."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return
    if run.info.status == "RUNNING":
        client.set_tag(run_id, "error", reason[:ERROR_TAG_LIMIT])
        client.set_terminated(run_id, "KILLED")


@dataclass(frozen=True)
class Registration:
    """Where a model landed in the Model Registry."""

    name: str
    version: str
    champion: bool


CHAMPION = "champion"


def register_model(
    name: str,
    model_uri: str,
    scores: Mapping[str, float],
    metric: str,
    tags: Mapping[str, str],
    root: Path | None = None,
) -> Registration:
    """Register ``model_uri`` as a version of ``name``; move ``champion`` to it if it wins.

    The model's test ``scores`` become version tags. The ``champion`` alias moves only when
    the new version beats the current champion on ``metric`` (lower is better for a loss).
    Registering the same model again reuses its version.
    """
    client = MlflowClient()
    lower_is_better = metric.endswith("loss")
    default_store = "MLFLOW_TRACKING_URI" not in os.environ
    # one process at a time may compare and move the alias (queued experiments)
    with _default_store(root or project_root()) if default_store else contextlib.nullcontext():
        same = [v for v in client.search_model_versions(f"name = '{name}'")
                if v.source == model_uri]
        # creates the registered model on first use, and says so; the tags follow below
        found = same[0] if same else mlflow.register_model(model_uri, name)
        if not client.get_registered_model(name).description:
            client.update_registered_model(name, description="Trained by the imgclf pipeline")
        version = str(found.version)
        for key, value in {**tags, **{k: str(v) for k, v in scores.items()}}.items():
            client.set_model_version_tag(name, version, key, value)
        try:
            current = client.get_model_version_by_alias(name, CHAMPION)
            champion, best = str(current.version), float(current.tags[metric])
        except (MlflowException, KeyError, ValueError):
            champion, best = None, None
        new = scores[metric]
        if best is None or (new < best if lower_is_better else new > best):
            client.set_registered_model_alias(name, CHAMPION, version)
            champion = version
    return Registration(name, version, champion == version)


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run (empty if the run is unknown)."""
    try:
        return dict(MlflowClient().get_run(run_id).data.metrics)
    except MlflowException:
        return {}


def champion_uri(name: str) -> str:
    """``models:/<name>@champion``, after checking that the alias exists."""
    try:
        MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise TrackingError(f"registered model {name!r} has no '{CHAMPION}' version yet; "
                            "run the pipeline first (make run)") from None
    return f"models:/{name}@{CHAMPION}"


def pipeline_runs(experiment: str, limit: int) -> list[dict[str, Any]]:
    """The latest ``limit`` pipeline runs as plain dicts: id, DVC experiment, params, metrics."""
    experiment_id = connect(experiment)
    runs = MlflowClient().search_runs([experiment_id], "tags.stage = 'pipeline'",
                                      order_by=["attributes.start_time DESC"],
                                      max_results=limit)
    return [{"run_id": run.info.run_id, "experiment": run.data.tags.get("dvc_exp_name"),
             "params": dict(run.data.params), "metrics": dict(run.data.metrics)}
            for run in runs]
