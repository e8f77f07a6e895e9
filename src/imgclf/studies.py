"""The one module that owns Optuna storage: where studies live and how they resume.

The embedded default is a journal file per study under ``optuna/`` at the project root
(safe for several processes on one machine). A database URL (PostgreSQL) lets workers on
many machines share a study. Journal storage has no heartbeat, so every worker records which
process runs each trial; at the next start, trials whose process is gone are marked FAIL.
Database storage additionally uses Optuna's heartbeat for workers on other machines.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from imgclf.processes import is_alive
from imgclf.settings import TuneSettings

STUDY_DIR = "optuna"
HEARTBEAT_S = 10
GRACE_S = 60
WORKER_ATTR = "worker"
RUN_ATTR = "mlflow_run_id"
FAIL_ATTR = "fail_reason"
STATES = ("complete", "pruned", "fail", "running")


def study_name(cfg: TuneSettings, fingerprint: dict) -> str:
    """``tune.study``, or a name that changes whenever the search itself changes.

    ``fingerprint`` holds everything that shapes a trial's result (data, fixed recipe, search
    space, trial budget per trial); raising ``n_trials`` or adding workers keeps the name, so
    the study resumes, while a new search space starts a new study.
    """
    if cfg.study:
        return cfg.study
    digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:8]
    return f"{fingerprint['dataset']}-{fingerprint['model']}-{digest}"


def storage_url(cfg: TuneSettings, root: Path, name: str) -> str:
    """The database URL or the journal file path of study ``name``."""
    if cfg.storage is None:
        return str(root / STUDY_DIR / f"{name}.journal")
    if "://" in cfg.storage:
        return cfg.storage
    return str(root / cfg.storage)


def open_storage(url: str) -> BaseStorage:
    """Journal-file storage for a path, RDB storage (with heartbeat) for a URL."""
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                      engine_kwargs={"pool_pre_ping": True})


def fail_orphaned_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Mark FAIL the RUNNING trials whose worker process on this machine has died.

    Returns the trials it failed, so their tracking runs can be closed too.
    """
    orphans = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        # another machine's worker counts as alive: the database heartbeat judges it
        if worker is None or is_alive(worker):
            continue
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, FAIL_ATTR,
                                    f"worker {worker} died while the trial was running")
        if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            orphans.append(trial)
    return orphans


def count_states(study: optuna.Study) -> dict[str, int]:
    """Trials per state: ``{"complete": n, "pruned": n, "fail": n, "running": n}``."""
    counts = dict.fromkeys(STATES, 0)
    for trial in study.get_trials(deepcopy=False):
        name = trial.state.name.lower()
        if name in counts:
            counts[name] += 1
    return counts
