"""The one module that owns the Optuna study: its name, storage, sampler, pruner, opening,
winner, orphaned trials and state counts.

The embedded default storage is a journal file per study under ``optuna/`` at the project
root (safe for several processes on one machine). A database URL (PostgreSQL) lets workers
on many machines share a study. Journal storage has no heartbeat, so every worker records
which process runs each trial; at the next start, trials whose process is gone are marked
FAIL. Database storage additionally uses Optuna's heartbeat for workers on other machines.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from imgclf.common.processes import is_alive
from imgclf.common.settings import Settings, TuneSettings
from imgclf.common.stats import mcnemar

STUDY_DIR = "optuna"
HEARTBEAT_S = 10
GRACE_S = 60
WORKER_ATTR = "worker"
RUN_ATTR = "mlflow_run_id"
FAIL_ATTR = "fail_reason"
CORRECT_ATTR = "val_correct"  # which validation images the trial's model gets right
STATES = ("complete", "pruned", "fail", "running")


def fingerprint(settings: Settings) -> dict[str, Any]:
    """Everything that shapes a trial's result; a change starts a new study.

    Left out: what trials replace (epochs, tta), which epoch's weights training keeps (a
    trial scores its best epoch), and where and how fast they run (device, threads,
    processes, evaluation batch size), which moves results by float rounding only.
    """
    search = settings.tune.model_dump(
        mode="json", exclude={"enabled", "study", "n_trials", "timeout_s", "storage", "workers",
                              "baseline_alpha"})
    recipe = settings.train.model_dump(
        mode="json",
        exclude={"epochs", "device", "threads", "processes", "tta", "keep", "eval_batch_size"})
    return {"dataset": settings.data.dataset, "model": settings.train.model,
            "data": settings.data.model_dump(mode="json"), "train": recipe, "tune": search}


def study_name(settings: Settings) -> str:
    """``tune.study``, or a name that changes whenever the search itself changes.

    The :func:`fingerprint` holds everything that shapes a trial's result; raising
    ``n_trials`` or adding workers keeps the name, so the study resumes, while a new search
    space starts a new study.
    """
    if settings.tune.study:
        return settings.tune.study
    found = fingerprint(settings)
    digest = hashlib.sha1(json.dumps(found, sort_keys=True).encode()).hexdigest()[:8]
    return f"{found['dataset']}-{found['model']}-{digest}"


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


def make_sampler(cfg: TuneSettings, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The seeded ``tune.sampler`` (TPE or a Gaussian process) after ``tune.startup_trials``
    random trials.

    Each worker gets its own seed, or parallel workers would propose the same trials.
    """
    seed = cfg.sampler_seed + worker
    if cfg.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.startup_trials)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.startup_trials)


def make_pruner(cfg: TuneSettings) -> optuna.pruners.BasePruner:
    """The ``tune.pruner``. Every trial trains ``tune.warmup_epochs`` epochs before it may be
    pruned (the median pruner's warm-up steps, hyperband's smallest budget); hyperband's
    largest budget is ``tune.epochs``.

    Under a one-cycle schedule the first epochs rank learning rates badly (the high ones are
    still climbing), so a search of several epochs wants a warm-up of a few.
    """
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.warmup_epochs)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.warmup_epochs,
                                              max_resource=cfg.epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(cfg: TuneSettings, storage: str, name: str, worker: int = 0) -> optuna.Study:
    """Create the study or resume it, maximising validation accuracy."""
    return optuna.create_study(
        study_name=name, storage=open_storage(storage), direction="maximize",
        sampler=make_sampler(cfg, worker), pruner=make_pruner(cfg), load_if_exists=True)


def record_correct(trial: optuna.Trial, correct: np.ndarray) -> None:
    """Keep which validation images the trial's model gets right (one bit each), for
    :func:`winner`'s paired test."""
    correct = np.asarray(correct, dtype=bool)
    packed = base64.b64encode(np.packbits(correct).tobytes()).decode()
    trial.set_user_attr(CORRECT_ATTR, {"images": len(correct), "bits": packed})


def recorded_correct(trial: FrozenTrial) -> np.ndarray | None:
    """What :func:`record_correct` kept for ``trial``; None when it kept nothing readable (a
    trial of an earlier version of the stage, resumed in the same study)."""
    kept = trial.user_attrs.get(CORRECT_ATTR)
    if not (isinstance(kept, dict) and isinstance(kept.get("images"), int)
            and isinstance(kept.get("bits"), str)):
        return None
    try:
        packed = base64.b64decode(kept["bits"], validate=True)
    except ValueError:
        return None
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8))
    if not 0 <= kept["images"] <= len(bits):
        return None
    return bits[:kept["images"]].astype(bool)


@dataclass(frozen=True)
class Winner:
    """The trial whose values the train stage gets, and why."""

    trial: FrozenTrial
    best: FrozenTrial
    p_value: float | None  # the best trial against the baseline's, on the same images,
    #                        corrected for the number of challengers

    @property
    def kept_baseline(self) -> bool:
        return self.trial.number != self.best.number


def winner(study: optuna.Study, alpha: float) -> Winner:
    """The best trial, unless params.yaml's baseline trial does not fall significantly behind
    it: then the baseline.

    A short trial's validation accuracy moves by a point between neighbouring learning rates
    by chance alone, and a winner by chance is no better than the baseline in full training.
    The two trials' models answered the same validation images, so exact McNemar on their
    right and wrong answers decides (``alpha`` = 1 always takes the best). The best trial was
    picked as the top of every completed challenger, so its p-value is Bonferroni-corrected
    for their number: with ``m`` challengers, ``min(1, m * p)``. Otherwise the more trials a
    study runs, the likelier the top one beats the baseline by chance. Without both trials'
    answers (trials of an earlier version, resumed in the same study) nothing shows the best
    is better, so the baseline stays unless ``alpha`` is 1.
    """
    best = study.best_trial
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    baselines = [t for t in complete if t.user_attrs.get("baseline")]
    if not baselines or baselines[0].number == best.number:
        return Winner(best, best, None)
    best_correct, base_correct = (recorded_correct(t) for t in (best, baselines[0]))
    if best_correct is None or base_correct is None or len(best_correct) != len(base_correct):
        # nothing to test with (trials of an earlier version): no evidence against the baseline
        return Winner(best if alpha >= 1 else baselines[0], best, None)
    challengers = sum(1 for t in complete if not t.user_attrs.get("baseline"))
    p_value = min(1.0, challengers * mcnemar(base_correct, best_correct)[0])
    return Winner(best if p_value < alpha else baselines[0], best, p_value)


def fail_orphaned_trials(study: optuna.Study) -> list[FrozenTrial]:
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


def outcome(study: optuna.Study, trial: FrozenTrial) -> str:
    """One line on how a trial ended, e.g. ``trial 2 pruned after epoch 1: val 0.814 < median
    0.831`` (under the median pruner: the median of the completed trials at that epoch)."""
    params = ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                       for key, value in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        return f"trial {trial.number} complete: val {trial.value:.3f} ({params})"
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        epoch = max(trial.intermediate_values)
        line = (f"trial {trial.number} pruned after epoch {epoch}: "
                f"val {trial.intermediate_values[epoch]:.3f}")
        if isinstance(study.pruner, optuna.pruners.MedianPruner):
            others = [t.intermediate_values[epoch] for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,))
                if t.number != trial.number and epoch in t.intermediate_values]
            if others:
                line += f" < median {float(np.median(others)):.3f}"
        return f"{line} ({params})"
    reason = trial.user_attrs.get(FAIL_ATTR, "")
    return f"trial {trial.number} {trial.state.name.lower()}" + (f": {reason}" if reason else "")
