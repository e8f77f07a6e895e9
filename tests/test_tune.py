from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from ruamel.yaml import YAML

from imgclf import train, tune
from imgclf.commands import tune as tune_work
from imgclf.common.cli import run_stage
from imgclf.common.settings import SettingsError, load_settings, parse_settings
from imgclf.data.splits import load_split
from imgclf.training import trainer
from imgclf.tuning import studies

from .conftest import TRAIN_ARGS, repo_params, runs_of

TUNE_ARGS = ["--data", "data/processed", "--best", "reports/best_params.yaml",
             "--metrics", "reports/tune_metrics.json"]
FAST = {"tune__epochs": 2, "tune__train_fraction": 0.5, "tune__startup_trials": 1,
        "tune__timeout_s": None, "tune__lr": {"low": 0.003, "high": 0.05},
        "tune__batch_size": [32, 64], "train__batch_size": 32}


@pytest.fixture
def tune_params(processed, set_params):
    """Apply fast tuning settings on top of the tiny project; return a setter."""
    def apply(**overrides):
        return set_params(download__mirrors=[], **{**FAST, **overrides})
    return apply


def load_study(project, settings=None):
    settings = settings or load_settings(project / "params.yaml")
    name = studies.study_name(settings)
    storage = studies.storage_url(settings.tune, project, name)
    return optuna.load_study(study_name=name, storage=studies.open_storage(storage))


def states(study):
    return [t.state for t in study.trials]


def trial_runs(client, parent_id=None):
    runs = runs_of(client, "tune-trial")
    if parent_id:
        runs = [r for r in runs if r.data.tags["mlflow.parentRunId"] == parent_id]
    return sorted(runs, key=lambda r: int(r.data.tags["optuna_trial"]))


def test_train_keeps_the_baseline_unless_a_trial_beats_it_significantly(tune_params, project,
                                                                         capsys):
    # a baseline that barely moves from its random start, which every trial beats, and a
    # threshold no difference on these few validation images can pass
    tune_params(tune__n_trials=3, tune__pruner="none", tune__baseline_alpha=1e-30,
                train__lr=1e-7, tune__epochs=4, tune__train_fraction=1.0)

    assert run_stage(tune.main, TUNE_ARGS) == 0

    study = load_study(project)
    best = YAML(typ="safe").load((project / "reports/best_params.yaml").read_text())
    assert best["train"] == {"lr": 1e-7, "batch_size": 32}  # the baseline's values
    metrics = json.loads((project / "reports/tune_metrics.json").read_text())
    assert metrics["chosen_trial"] == 0 and metrics["baseline_kept"] is True
    assert metrics["best_trial"] == study.best_trial.number != 0
    assert 1e-30 <= metrics["p_value_vs_baseline"] <= 1
    assert "train keeps params.yaml's values" in capsys.readouterr().out
    # the baseline trial kept one bit per validation image: right or wrong
    size = len(load_split(project / "data/processed", "val"))
    right = studies.recorded_correct(study.trials[0])
    assert right is not None and len(right) == size
    assert right.mean() == pytest.approx(study.trials[0].value)


def test_study_runs_trials_logs_them_nested_and_writes_best_params(tune_params, project,
                                                                    client):
    tune_params(tune__n_trials=3, tune__pruner="none", tune__baseline_alpha=1)

    assert run_stage(tune.main, TUNE_ARGS) == 0

    study = load_study(project)
    assert states(study) == [TrialState.COMPLETE] * 3
    assert study.trials[0].params == {"lr": 0.01, "batch_size": 32}  # the untuned baseline
    best = YAML(typ="safe").load((project / "reports/best_params.yaml").read_text())
    assert best["train"] == study.best_params
    metrics = json.loads((project / "reports/tune_metrics.json").read_text())
    assert best["lineage"]["tune"] == metrics["mlflow_run_id"]
    assert set(best["lineage"]) == {"download", "preprocess", "tune"}
    assert metrics["val"]["best_accuracy"] == study.best_value
    assert metrics["trials"] == {"complete": 3, "pruned": 0, "fail": 0, "running": 0}

    (parent,) = runs_of(client, "tune")
    assert metrics["mlflow_run_id"] == parent.info.run_id
    assert parent.data.metrics["val/best_accuracy"] == study.best_value
    assert parent.data.params["trials.complete"] == "3"
    # the winner under the names the trials and the train run use; the baseline it beat
    # is labelled as unused
    assert float(parent.data.params["train.lr"]) == study.best_params["lr"]
    assert parent.data.params["train.batch_size"] == str(study.best_params["batch_size"])
    if study.best_trial.number != 0:
        assert parent.data.params["unused_baseline/train.lr"] == "0.01"
    assert "best/lr" not in parent.data.params
    inputs = {d.dataset.name for d in parent.inputs.dataset_inputs}
    assert inputs == {"fashion-mnist"} and len(parent.inputs.dataset_inputs) == 2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_history.png", "intermediate_values.png", "timeline.png",
            "slice_lr_batch_size.png"} <= artifacts
    assert "param_importances.png" not in artifacts  # from 3 trials: not drawn

    children = trial_runs(client, parent.info.run_id)
    assert len(children) == 3
    for trial, run in zip(study.trials, children, strict=True):
        assert run.info.status == "FINISHED"
        assert run.data.tags["trial_state"] == "COMPLETE"
        # named as the train and pipeline runs name them
        assert float(run.data.params["train.lr"]) == trial.params["lr"]
        assert run.data.params["train.batch_size"] == str(trial.params["batch_size"])
        assert "lr" not in run.data.params
        assert run.data.metrics["val/best_accuracy"] == trial.value
        assert [m.step for m in client.get_metric_history(run.info.run_id,
                                                          "val/accuracy")] == [1, 2]
        assert client.list_artifacts(run.info.run_id) == []  # no model per trial
    assert children[0].data.tags["baseline"] == "true"


def test_plots_of_trials_that_share_a_batch_size_log_without_warnings(recwarn):
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
                     "batch_size": optuna.distributions.CategoricalDistribution([32, 64])}
    study = optuna.create_study(direction="maximize")
    for lr, accuracy in [(0.01, 0.80), (0.003, 0.85)]:
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "batch_size": 32}, distributions=distributions, value=accuracy))
    logged = []

    tags = {}

    class Run:
        def log_figure(self, figure, name):
            logged.append(name)

        def set_tags(self, values):
            tags.update(values)

    tune_work.log_plots(Run(), study)

    assert {"slice_lr_batch_size.png", "intermediate_values.png", "timeline.png"} <= set(logged)
    # two completed trials say nothing about importances: not drawn, and the run says why
    assert "param_importances.png" not in logged
    assert tags["param_importances"] == "not drawn: 2 completed trials, 5 needed"
    assert [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)] == []


def test_same_params_same_trial_sequence(tune_params, project):
    tune_params(tune__n_trials=3, tune__pruner="none", tune__study="first")
    assert run_stage(tune.main, TUNE_ARGS) == 0
    tune_params(tune__n_trials=3, tune__pruner="none", tune__study="second")
    assert run_stage(tune.main, TUNE_ARGS) == 0
    first, second = (optuna.load_study(study_name=name, storage=studies.open_storage(
        str(project / "optuna" / f"{name}.journal"))) for name in ("first", "second"))
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.value for t in first.trials] == [t.value for t in second.trials]


def test_forced_pruner_prunes_every_trial(tune_params, project, client, monkeypatch, capsys,
                                          caplog):
    tune_params(tune__n_trials=3)
    caplog.set_level(logging.INFO, logger="imgclf.commands.tune")
    # accuracy never exceeds 1.0, so this pruner stops every trial after its first epoch
    monkeypatch.setattr(studies, "make_pruner",
                        lambda cfg: optuna.pruners.ThresholdPruner(lower=1.01))

    assert run_stage(tune.main, TUNE_ARGS) == 2

    assert "no tuning trial completed (3 pruned, 0 failed)" in capsys.readouterr().err
    assert states(load_study(project)) == [TrialState.PRUNED] * 3
    children = trial_runs(client)
    # pruning is not a failure: the runs end FINISHED, with the value they reached
    assert [r.info.status for r in children] == ["FINISHED"] * 3
    assert {r.data.tags["trial_state"] for r in children} == {"PRUNED"}
    assert all(0 <= r.data.metrics["val/best_accuracy"] <= 1 for r in children)
    assert {r.data.tags["pruned_at_epoch"] for r in children} == {"1"}
    # one line per trial says how it ended
    assert [line.split(":")[0] for line in caplog.messages if line.startswith("trial ")] == [
        f"trial {n} pruned after epoch 1" for n in range(3)]
    assert not (project / "reports/best_params.yaml").exists()
    (parent,) = runs_of(client, "tune")
    assert parent.info.status == "FAILED"


def test_nan_or_crashing_trial_fails_and_the_study_goes_on(tune_params, project, client,
                                                            monkeypatch):
    tune_params(tune__n_trials=3, tune__pruner="none")
    calls = []

    def diverging_second_trial(train_split, val_split, meta, recipe, on_epoch=None,
                               start=None):
        calls.append(recipe)
        if len(calls) == 2:  # a learning rate no params.yaml allows: the weights overflow
            recipe = recipe.model_copy(update={"lr": 1e30, "optimizer": "sgd",
                                               "scheduler": "none", "model": "mlp"})
        return trainer.train(train_split, val_split, meta, recipe, on_epoch=on_epoch)

    monkeypatch.setattr(tune_work, "train", diverging_second_trial)

    assert run_stage(tune.main, TUNE_ARGS) == 0

    study = load_study(project)
    assert states(study) == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "DivergedError: training loss became nan" in study.trials[1].user_attrs[
        studies.FAIL_ATTR]
    failed = trial_runs(client)[1]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["trial_state"] == "FAIL"
    assert "training loss became nan" in failed.data.tags["error"]


def test_raising_n_trials_resumes_the_study(tune_params, project, client):
    tune_params(tune__n_trials=2, tune__pruner="none")
    assert run_stage(tune.main, TUNE_ARGS) == 0
    first_parent = runs_of(client, "tune")[0].info.run_id

    tune_params(tune__n_trials=4, tune__pruner="none")
    assert run_stage(tune.main, TUNE_ARGS) == 0

    study = load_study(project)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert states(study) == [TrialState.COMPLETE] * 4
    second_parent = runs_of(client, "tune")[0].info.run_id
    assert len(trial_runs(client, first_parent)) == 2
    assert [r.data.tags["optuna_trial"] for r in trial_runs(client, second_parent)] == ["2", "3"]

    tune_params(tune__n_trials=4, tune__pruner="none")
    assert run_stage(tune.main, TUNE_ARGS) == 0  # nothing left to do
    assert len(load_study(project).trials) == 4


@pytest.mark.slow
def test_killed_worker_trial_is_failed_at_next_start(tune_params, project, client):
    # a fixed study name lets the rerun use shorter trials on the same study
    tune_params(tune__n_trials=3, tune__pruner="none", tune__study="killed", tune__epochs=400)
    process = subprocess.Popen([sys.executable, "-m", "imgclf.tune", *TUNE_ARGS], cwd=project,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = studies.open_storage(str(project / "optuna/killed.journal"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        trials = optuna.load_study(study_name="killed", storage=storage).trials \
            if (project / "optuna/killed.journal").stat().st_size else []
        running = [t for t in trials if t.state == TrialState.RUNNING
                   and studies.RUN_ATTR in t.user_attrs]
        if running:
            break
    else:
        process.kill()
        pytest.fail("no trial started")
    time.sleep(1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_run = running[0].user_attrs[studies.RUN_ATTR]

    tune_params(tune__n_trials=3, tune__pruner="none", tune__study="killed", tune__epochs=1)
    assert run_stage(tune.main, TUNE_ARGS) == 0

    study = optuna.load_study(study_name="killed", storage=storage)
    assert states(study) == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert "died while the trial was running" in study.trials[0].user_attrs[studies.FAIL_ATTR]
    run = client.get_run(killed_run)
    assert run.info.status == "KILLED"
    assert "died" in run.data.tags["error"]


@pytest.mark.slow
def test_two_local_workers_share_the_journal(tune_params, project, client):
    tune_params(tune__n_trials=4, tune__pruner="none", tune__workers=2, train__threads=1)

    assert run_stage(tune.main, TUNE_ARGS) == 0

    study = load_study(project)
    assert states(study) == [TrialState.COMPLETE] * 4
    assert len({t.user_attrs[studies.WORKER_ATTR] for t in study.trials}) == 2
    (parent,) = runs_of(client, "tune")
    assert len(trial_runs(client, parent.info.run_id)) == 4


POSTGRES = os.environ.get("IMGCLF_TEST_POSTGRES_URL")


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES, reason="set IMGCLF_TEST_POSTGRES_URL (.ci/run does)")
def test_workers_share_a_postgresql_study(tune_params, project, client):
    k = 2
    study_name = f"pg-{os.getpid()}-{time.time_ns()}"
    tune_params(tune__n_trials=3 * k, tune__workers=3, tune__storage=POSTGRES,
                tune__study=study_name, tune__pruner="median", train__threads=1)

    assert run_stage(tune.main, TUNE_ARGS) == 0

    study = optuna.load_study(study_name=study_name, storage=studies.open_storage(POSTGRES))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 * k == len(study.trials)
    assert len({t.user_attrs[studies.WORKER_ATTR] for t in study.trials}) == 3


def test_disabled_tuning_writes_params_yaml_values_through(tune_params, project, client):
    tune_params(tune__enabled=False, train__lr=0.007, train__batch_size=48)

    assert run_stage(tune.main, TUNE_ARGS) == 0

    best = YAML(typ="safe").load((project / "reports/best_params.yaml").read_text())
    assert best["train"] == {"lr": 0.007, "batch_size": 48}
    assert not (project / "optuna").exists()
    (parent,) = runs_of(client, "tune")
    assert parent.data.tags["tuning"] == "disabled"
    assert trial_runs(client) == []


def test_best_params_drive_training(tune_params, project, client):
    tune_params(tune__n_trials=2, tune__pruner="none")
    assert run_stage(tune.main, TUNE_ARGS) == 0
    best = load_study(project).best_params

    assert run_stage(train.main, [*TRAIN_ARGS, "--best-params",
                                  "reports/best_params.yaml"]) == 0

    (run,) = runs_of(client, "train")
    assert float(run.data.params["train.lr"]) == best["lr"]
    assert run.data.params["train.batch_size"] == str(best["batch_size"])
    assert run.data.params["hyperparams_from"] == "reports/best_params.yaml"


def test_bad_best_params_file_is_refused(tune_params, project, capsys):
    tune_params()
    (project / "reports/best_params.yaml").write_text("train:\n  lr: -1\n  batch_size: 32\n")
    assert run_stage(train.main, [*TRAIN_ARGS, "--best-params",
                                  "reports/best_params.yaml"]) == 2
    assert "train.lr: Input should be greater than 0" in capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "phrase"), [
    ({"tune.workers": 2, "tune.storage": "sqlite:///optuna.db"}, "SQLite cannot take several"),
    ({"tune.storage": "postgresql://me:secret@db/optuna"}, "must not contain a password"),
    ({"tune.storage": "../elsewhere.journal"}, "stay inside the project"),
    ({"tune.storage": "redis://localhost"}, "unsupported database 'redis'"),
    # no MySQL driver is installed: refused up front rather than failing at import
    ({"tune.storage": "mysql://optuna@db/optuna"}, "unsupported database 'mysql'"),
    ({"tune.lr": {"low": 0.1, "high": 0.01}}, "must be below high"),
    ({"tune.batch_size": [32, 0]}, "positive integers"),
    ({"tune.pruner": "asha"}, "'median', 'hyperband' or 'none'"),
])
def test_bad_tune_settings(overrides, phrase):
    raw = repo_params(**overrides)
    with pytest.raises(SettingsError, match=phrase):
        parse_settings(raw)
