"""Closing runs whose process died without closing them (SIGKILL, a power cut).

Every run records the process that opened it (``process`` tag); the next stage to start
marks KILLED the runs left RUNNING by a process on this machine that no longer exists, so
no run stays RUNNING forever.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf.common.processes import is_alive
from imgclf.tracking.provenance import PROCESS_TAG

ERROR_TAG_LIMIT = 5000


def error_tag(exc: BaseException | str) -> str:
    """The ``error`` tag of a run that failed: the exception's type and message, capped."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text[:ERROR_TAG_LIMIT]


def close_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED the runs left RUNNING by a process on this machine that no longer exists."""
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
        client.set_tag(run_id, "error", error_tag(reason))
        client.set_terminated(run_id, "KILLED")
