"""The tune stage's work: an Optuna search over the learning rate and batch size, each trial
a nested MLflow run. Its command line is in ``imgclf/tune.py``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
from matplotlib import ticker
from optuna.visualization import matplotlib as optuna_plots

from imgclf.common.errors import UserError
from imgclf.common.files import project_root, write_json
from imgclf.common.processes import process_id
from imgclf.common.settings import Settings, load_settings
from imgclf.data.splits import Meta, Split, load_meta, load_split, split_digest, stratified_split
from imgclf.tracking.datasets import split_dataset
from imgclf.tracking.orphans import close_orphaned_run, error_tag
from imgclf.tracking.runs import StageRun, stage_run, trial_run
from imgclf.tracking.starts import start_from
from imgclf.tracking.store import connect
from imgclf.training.engine import EpochStats
from imgclf.training.trainer import train
from imgclf.training.transfer import Start
from imgclf.tuning import best_params, studies

log = logging.getLogger(__name__)
OBJECTIVE = "val/best_accuracy"
# parameter importances from fewer completed trials than this are not drawn
IMPORTANCE_TRIALS = 5


@dataclass(frozen=True)
class Job:
    """What one worker process needs to run its share of the trials."""

    settings: Settings
    data_dir: Path
    root: Path
    storage: str
    study: str
    n_trials: int
    parent_run_id: str
    experiment_id: str
    worker: int
    threads: int


def trial_data(train_split: Split, fraction: float, seed: int) -> Split:
    """The stratified share of the training split every trial trains on."""
    if fraction >= 1:
        return train_split
    return train_split.take(stratified_split(train_split.labels, fraction, seed)[0])


def objective(trial: optuna.Trial, job: Job, train_split: Split, val_split: Split,
              meta: Meta, start: Start | None = None) -> float:
    """Train one trial's recipe; report validation accuracy per epoch for pruning."""
    cfg, base = job.settings.tune, job.settings.train
    with warnings.catch_warnings():
        # the baseline trial's learning rate may lie outside the searched range
        warnings.filterwarnings("ignore", "Fixed parameter", UserWarning)
        params = {
            "lr": trial.suggest_float("lr", cfg.lr.low, cfg.lr.high, log=True),
            "batch_size": trial.suggest_categorical("batch_size", list(cfg.batch_size)),
        }
    # Trials rank learning rates and batch sizes; test-time flip averaging would double
    # their validation cost without changing that ranking. The model keeps its best epoch,
    # the one the objective scores.
    recipe = base.model_copy(update={**params, "epochs": cfg.epochs, "threads": job.threads,
                                     "processes": 1, "tta": "none", "keep": "best"})
    trial.set_user_attr(studies.WORKER_ATTR, process_id())
    tags = {"stage": "tune-trial", "dataset": job.settings.data.dataset,
            "optuna_study": job.study, "optuna_trial": trial.number,
            "baseline": str(trial.user_attrs.get("baseline", False)).lower()}
    # the names the train and pipeline runs use, so the UI charts them in one view
    logged = {**{f"train.{key}": value for key, value in params.items()},
              "tune.epochs": cfg.epochs, "train_size": len(train_split)}
    with trial_run(job.parent_run_id, job.experiment_id, f"trial {trial.number}", logged, tags,
                   pruned=(optuna.TrialPruned,)) as run:
        trial.set_user_attr(studies.RUN_ATTR, run.run_id)

        reached: list[float] = []

        def report(stats: EpochStats) -> None:
            run.log_metrics(stats.metrics(), step=stats.epoch)
            trial.report(stats.val_accuracy, stats.epoch)
            reached.append(stats.val_accuracy)
            # after the last epoch the work is done: keep the result instead of pruning it
            if stats.epoch < cfg.epochs and trial.should_prune():
                # the objective it reached, so a pruned trial has a value in the runs table
                run.log_metrics({OBJECTIVE: max(reached)})
                run.set_tags({"pruned_at_epoch": stats.epoch})
                trial.set_user_attr("pruned_at_epoch", stats.epoch)
                raise optuna.TrialPruned(f"pruned after epoch {stats.epoch}")

        try:
            result = train(train_split, val_split, meta, recipe, on_epoch=report, start=start)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr(studies.FAIL_ATTR, error_tag(exc))
            raise
        run.log_metrics({OBJECTIVE: result.best.val_accuracy, "best_epoch": result.best_epoch})
        answers = result.val_predictions
        assert answers is not None  # a trial trains at least one epoch
        studies.record_correct(trial, (answers == val_split.labels.cpu()).numpy())
        return result.best.val_accuracy


def run_worker(job: Job) -> None:
    """Run ``job.n_trials`` trials of the shared study (in this process)."""
    connect(job.settings.tracking.experiment, job.root)
    cfg = job.settings.tune
    study = studies.open_study(cfg, job.storage, job.study, job.worker)
    meta = load_meta(job.data_dir)
    train_split = trial_data(load_split(job.data_dir, "train"), cfg.train_fraction,
                             job.settings.data.seed)
    val_split = load_split(job.data_dir, "val")
    start = start_from(job.settings.train.init, job.settings.train.model,
                       job.settings.tracking.experiment, job.settings.download.online,
                       job.settings.download.timeout_s)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda trial: objective(trial, job, train_split, val_split, meta, start),
                   n_trials=job.n_trials, timeout=cfg.timeout_s, catch=(Exception,),
                   gc_after_trial=False,
                   callbacks=[lambda study, trial: log.info(studies.outcome(study, trial))])


def _run_worker_process(job: Job) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[worker {job.worker}] %(message)s")
    run_worker(job)


def run_workers(jobs: list[Job]) -> list[int | None]:
    """Run one job in this process, or each in its own process; return their exit codes."""
    if len(jobs) == 1:
        run_worker(jobs[0])
        return [0]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_run_worker_process, args=(job,)) for job in jobs]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return [process.exitcode for process in processes]


def split_trials(total: int, workers: int) -> list[int]:
    """Share ``total`` trials among workers as evenly as possible, dropping idle ones."""
    shares = [total // workers + (i < total % workers) for i in range(workers)]
    return [share for share in shares if share]


def enqueue_baseline(study: optuna.Study, settings: Settings) -> None:
    """Make the untuned ``train.lr``/``train.batch_size`` the first trial of a new study.

    The search then can only match or beat the values in params.yaml on its own objective.
    The learning rate may lie outside the searched range; the batch size must be one of the
    choices.
    """
    cfg, base = settings.tune, settings.train
    if study.trials:
        return
    if base.batch_size not in cfg.batch_size:
        log.info("train.batch_size %d is not among tune.batch_size %s: no baseline trial",
                 base.batch_size, list(cfg.batch_size))
        return
    study.enqueue_trial({"lr": base.lr, "batch_size": base.batch_size},
                        user_attrs={"baseline": True})


def log_plots(run: StageRun, study: optuna.Study) -> None:
    """Optuna's plots of the study: optimization history, each trial's per-epoch values,
    the timeline, the lr / batch size slice plot and, once enough trials completed,
    parameter importances."""
    plots = {
        "optimization_history.png": lambda: optuna_plots.plot_optimization_history(study),
        "intermediate_values.png": lambda: optuna_plots.plot_intermediate_values(study),
        "timeline.png": lambda: optuna_plots.plot_timeline(study),
        "slice_lr_batch_size.png": lambda: optuna_plots.plot_slice(
            study, params=["lr", "batch_size"]),
    }
    completed = studies.count_states(study)["complete"]
    if completed >= IMPORTANCE_TRIALS:
        plots["param_importances.png"] = lambda: optuna_plots.plot_param_importances(study)
    else:  # importances from a couple of trials are noise that looks like an answer
        log.info("no parameter importances: %d completed trial(s), %d needed", completed,
                 IMPORTANCE_TRIALS)
        run.set_tags({"param_importances": f"not drawn: {completed} completed trials, "
                                           f"{IMPORTANCE_TRIALS} needed"})
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # a value every finished trial shares (one batch size) gets a zero-width axis
                warnings.filterwarnings("ignore", "Attempting to set identical low and high")
                axes = plot()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            # e.g. importances need two finished trials with different values
            log.info("skipped %s: %s", name, exc)
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure(root=True)
        if figure is None:
            continue
        figure.set_size_inches(max(figure.get_size_inches()[0], 8), 5)
        for ax in figure.axes:  # a log axis gets a few labels, not one per power crowding in
            if ax.get_xscale() == "log":
                ax.xaxis.set_major_locator(ticker.LogLocator(numticks=4))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
                ax.tick_params(axis="x", labelrotation=30)
        with warnings.catch_warnings():  # colour bars keep their own place
            warnings.filterwarnings("ignore", "This figure includes Axes that are not")
            figure.tight_layout()
        run.log_figure(figure, name)
        plt.close(figure)


def recover_orphans(study: optuna.Study) -> None:
    """Mark FAIL the trials a dead worker left running, and close their MLflow runs."""
    for trial in studies.fail_orphaned_trials(study):
        if run_id := trial.user_attrs.get(studies.RUN_ATTR):
            close_orphaned_run(run_id, "its tuning worker died mid-trial")
        log.info("trial %d was left running by a dead worker: marked FAIL", trial.number)


def run_trials(settings: Settings, study: optuna.Study, data_dir: Path, root: Path,
               storage: str, run: StageRun) -> None:
    """Run the trials still missing from ``tune.n_trials`` on ``tune.workers`` workers."""
    cfg = settings.tune
    counts = studies.count_states(study)
    remaining = cfg.n_trials - counts["complete"] - counts["pruned"]
    log.info("study %s: %d trials done, %d to run with %d worker(s)", study.study_name,
             counts["complete"] + counts["pruned"], max(remaining, 0), cfg.workers)
    if remaining <= 0:
        return
    threads = settings.train.threads or max(1, (os.cpu_count() or 1) // cfg.workers)
    jobs = [Job(settings, data_dir, root, storage, study.study_name, share, run.run_id,
                run.experiment_id, worker, threads)
            for worker, share in enumerate(split_trials(remaining, cfg.workers))]
    codes = run_workers(jobs)
    if any(codes):
        log.warning("worker exit codes %s; their unfinished trials are marked FAIL", codes)
    recover_orphans(study)


def tune(settings: Settings, data_dir: Path, root: Path, run: StageRun
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run (or resume) the study; return the best params and a summary for the metrics file."""
    cfg = settings.tune
    name = studies.study_name(settings)
    storage = studies.storage_url(cfg, root, name)
    study = studies.open_study(cfg, storage, name)
    recover_orphans(study)
    enqueue_baseline(study, settings)
    run.set_tags({"optuna_study": name, "optuna_storage": storage})
    run_trials(settings, study, data_dir, root, storage, run)

    counts = studies.count_states(study)
    if counts["complete"] == 0:
        raise UserError(f"no tuning trial completed ({counts['pruned']} pruned, "
                        f"{counts['fail']} failed); see the failed trial runs under MLflow run "
                        f"{run.run_id} for the reasons")
    chosen = studies.winner(study, cfg.baseline_alpha)
    value = chosen.trial.value
    summary = {"val": {"best_accuracy": study.best_value, "chosen_accuracy": value},
               "best_trial": chosen.best.number, "chosen_trial": chosen.trial.number,
               "baseline_kept": chosen.kept_baseline, "p_value_vs_baseline": chosen.p_value,
               "trials": counts, "study": name}
    run.log_metrics({OBJECTIVE: study.best_value})
    # facts of the search, not scores
    run.log_params({"best_trial": chosen.best.number, "chosen_trial": chosen.trial.number,
                    **{f"trials.{state}": n for state, n in counts.items()}})
    if chosen.kept_baseline:
        why = ("but one of them kept no validation answers to test the difference with (a "
               "trial of an earlier version of this stage; name a new tune.study to search "
               "afresh)" if chosen.p_value is None else
               f"by chance as far as McNemar can tell (p = {chosen.p_value:.2f} over all the "
               f"challengers, >= tune.baseline_alpha {cfg.baseline_alpha:g})")
        print(f"trial {chosen.best.number} (val {study.best_value:.4f}) beats the baseline "
              f"trial (val {value:.4f}) {why}: train keeps params.yaml's values")
    log_plots(run, study)
    return chosen.trial.params, summary


def execute(args: argparse.Namespace) -> int:
    settings = load_settings(args.params)
    meta = load_meta(args.data)  # fail on missing inputs before a run is opened
    start = start_from(settings.train.init, settings.train.model,
                       settings.tracking.experiment, settings.download.online,
                       settings.download.timeout_s)
    root = project_root()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    with stage_run("tune", settings, upstream=meta.lineage, data_version=meta.data_version,
                   deps=[args.data]) as run:
        if start is not None:
            run.set_tags(start.tags)
        run.log_datasets({name: split_dataset(meta, name, split_digest(args.data, name))
                          for name in ("train", "val")})
        if settings.tune.enabled:
            best, summary = tune(settings, args.data.resolve(), root, run)
            source = (f"params.yaml's values: no trial of study {summary['study']} beat them "
                      "significantly" if summary["baseline_kept"]
                      else f"best of study {summary['study']}")
        else:
            best = {"lr": settings.train.lr, "batch_size": settings.train.batch_size}
            summary = {"trials": dict.fromkeys(studies.STATES, 0)}
            source = "tuning disabled: train.lr and train.batch_size from params.yaml"
            run.set_tags({"tuning": "disabled"})
        summary["mlflow_run_id"] = run.run_id
        best_params.write(args.best, best_params.BestParams(
            best["lr"], best["batch_size"], run.lineage), source)
        write_json(args.metrics, summary)
        # the chosen values, under the names the trials and the train run use
        run.log_used({"train.lr": best["lr"], "train.batch_size": best["batch_size"]},
                     settings)
        print(f"lr {best['lr']:.6g}, batch size {best['batch_size']} ({source})")
    return 0
