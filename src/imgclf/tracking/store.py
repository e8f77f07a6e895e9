"""The tracking store: where MLflow writes, and connecting to it before any work starts.

The embedded default is SQLite at ``mlruns/mlflow.db`` in the project root, with artifacts in
``mlruns/artifacts/``; ``MLFLOW_TRACKING_URI`` points every stage at a team server instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf.common.errors import UserError, one_line
from imgclf.common.files import project_root

STORE_DIR = "mlruns"
STORE_DB = "mlflow.db"


class TrackingError(UserError):
    """The tracking store cannot be reached or used."""


# MLflow's experiment tag for the kind of work an experiment holds
KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def redact(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` replaced by ``***``."""
    return re.sub(r"(\w+://[^/\s:@]+:)[^@\s/]+@", r"\1***@", text)


def tracking_uri(root: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, or the project's SQLite store ``mlruns/mlflow.db``."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{(root or project_root()) / STORE_DIR / STORE_DB}"


def uses_default_store() -> bool:
    """Whether runs go to the project's own SQLite store (no ``MLFLOW_TRACKING_URI``)."""
    return "MLFLOW_TRACKING_URI" not in os.environ


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


def store_lock(root: Path | None = None) -> contextlib.AbstractContextManager[None]:
    """Exclusive use of the default store (a no-op for a tracking server)."""
    if uses_default_store():
        return _default_store(root or project_root())
    return contextlib.nullcontext()


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
    try:
        with store_lock(root):
            return _experiment_id(uri, experiment, root)
    except (MlflowException, OSError, sqlite3.Error) as exc:
        raise TrackingError(
            f"cannot use the MLflow tracking store at {redact(uri)}: {redact(one_line(exc))}. "
            "Start the server or fix MLFLOW_TRACKING_URI (unset it to use mlruns/mlflow.db)."
        ) from None


def _experiment_id(uri: str, experiment: str, root: Path) -> str:
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    with _fail_fast_http():
        found = client.get_experiment_by_name(experiment)
    if found is not None:
        if KIND_TAG not in found.tags:  # made by an earlier version
            client.set_experiment_tag(found.experiment_id, KIND_TAG, MODEL_TRAINING)
        return str(found.experiment_id)
    location = (root / STORE_DIR / "artifacts").as_uri() if uses_default_store() else None
    try:
        # the UI opens a model-training experiment on its training runs, not the GenAI view
        return str(client.create_experiment(experiment, artifact_location=location,
                                            tags={KIND_TAG: MODEL_TRAINING}))
    except MlflowException:  # created meanwhile by a concurrent stage
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return str(found.experiment_id)
