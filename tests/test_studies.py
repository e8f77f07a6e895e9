"""The Optuna study: its name, storage, sampler and pruner from the params, resuming, and
trials left running by a dead worker."""

from __future__ import annotations

import subprocess

import numpy as np
import optuna
import psutil
import pytest
from optuna.trial import TrialState

from imgclf.common.processes import process_id
from imgclf.common.settings import parse_settings
from imgclf.tuning import studies

from .conftest import repo_params


def tune_settings(**overrides):
    return parse_settings(repo_params(**overrides)).tune


def test_settings_that_do_not_shape_trial_results_keep_the_study():
    def study_of(**overrides):
        settings = parse_settings(repo_params(**overrides))
        return studies.study_name(settings)

    default = study_of()
    assert study_of(**{"train.threads": 1, "train.eval_batch_size": 64, "train.epochs": 3,
                       "train.tta": "none", "train.keep": "best", "tune.n_trials": 9,
                       "tune.workers": 2, "tune.baseline_alpha": 0.5}) == default
    for changed in ({"train.weight_decay": 0.1}, {"train.augment": "none"},
                    {"tune.epochs": 3}, {"data.val_fraction": 0.2}):
        assert study_of(**changed) != default, changed


def test_a_named_study_keeps_its_name():
    assert studies.study_name(parse_settings(repo_params(**{"tune.study": "mine"}))) == "mine"


@pytest.mark.parametrize(("pruner", "kind"), [("median", optuna.pruners.MedianPruner),
                                              ("hyperband", optuna.pruners.HyperbandPruner),
                                              ("none", optuna.pruners.NopPruner)])
def test_pruner_comes_from_the_params(pruner, kind):
    cfg = tune_settings(**{"tune.pruner": pruner, "tune.epochs": 5})
    made = studies.make_pruner(cfg)
    assert type(made) is kind
    if pruner == "hyperband":
        assert made._max_resource == 5  # a trial's budget is tune.epochs


def test_no_trial_is_pruned_before_its_warmup_epochs():
    cfg = tune_settings(**{"tune.pruner": "median", "tune.epochs": 6, "tune.warmup_epochs": 3})
    study = optuna.create_study(direction="maximize", pruner=studies.make_pruner(cfg))
    for value in (0.9, 0.8):  # two finished trials: the median's startup
        trial = study.ask()
        for epoch in range(1, 7):
            trial.report(value, epoch)
        study.tell(trial, value)
    worst = study.ask()
    verdicts = []
    for epoch in range(1, 7):
        worst.report(0.1, epoch)
        verdicts.append(worst.should_prune())
    assert verdicts == [False, False, True, True, True, True]
    hyperband = studies.make_pruner(tune_settings(**{
        "tune.pruner": "hyperband", "tune.epochs": 6, "tune.warmup_epochs": 2}))
    assert (hyperband._min_resource, hyperband._max_resource) == (2, 6)


def test_sampler_comes_from_the_params_and_each_worker_draws_its_own_trials():
    cfg = tune_settings(**{"tune.sampler_seed": 3, "tune.startup_trials": 5})

    def proposals(worker: int) -> list[float]:
        study = optuna.create_study(sampler=studies.make_sampler(cfg, worker))
        return [study.ask().suggest_float("lr", 1e-3, 1e-1, log=True) for _ in range(3)]

    sampler = studies.make_sampler(cfg)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 5
    gp = studies.make_sampler(tune_settings(**{"tune.sampler": "gp", "tune.startup_trials": 5}))
    assert isinstance(gp, optuna.samplers.GPSampler)
    assert gp._n_startup_trials == 5
    assert proposals(0) == proposals(0)  # seeded: the same search every time
    assert proposals(0) != proposals(1)


def test_storage_is_a_journal_in_the_project_or_the_database_given(tmp_path):
    default = tune_settings()
    assert studies.storage_url(default, tmp_path, "s") == str(tmp_path / "optuna" / "s.journal")
    own = tune_settings(**{"tune.storage": "studies/all.journal"})
    assert studies.storage_url(own, tmp_path, "s") == str(tmp_path / "studies/all.journal")
    url = "postgresql://user@db.example/optuna"
    assert studies.storage_url(tune_settings(**{"tune.storage": url}), tmp_path, "s") == url


def test_an_opened_study_resumes_with_its_trials(tmp_path):
    cfg = tune_settings()
    storage = str(tmp_path / "optuna" / "s.journal")
    study = studies.open_study(cfg, storage, "s")
    study.optimize(lambda trial: trial.suggest_float("lr", 0.001, 0.1), n_trials=2)
    again = studies.open_study(cfg, storage, "s")
    assert again.direction == optuna.study.StudyDirection.MAXIMIZE
    assert [t.state for t in again.trials] == [TrialState.COMPLETE] * 2
    assert studies.count_states(again) == {"complete": 2, "pruned": 0, "fail": 0, "running": 0}


def test_only_trials_of_dead_workers_are_failed(tmp_path):
    study = studies.open_study(tune_settings(), str(tmp_path / "s.journal"), "s")
    dead = subprocess.Popen(["sleep", "60"])
    dead_worker = process_id(psutil.Process(dead.pid))
    dead.kill()
    dead.wait()
    for worker in (dead_worker, process_id(), "another-host:1:1"):
        study.ask().set_user_attr(studies.WORKER_ATTR, worker)
    study.ask()  # a trial whose worker is unknown

    failed = studies.fail_orphaned_trials(study)

    assert [t.number for t in failed] == [0]
    assert [t.state for t in study.trials] == [TrialState.FAIL] + [TrialState.RUNNING] * 3
    assert "died while the trial was running" in study.trials[0].user_attrs[studies.FAIL_ATTR]
    assert studies.count_states(study) == {"complete": 0, "pruned": 0, "fail": 1, "running": 3}
    assert studies.fail_orphaned_trials(study) == []  # nothing left to fail


def test_each_trial_outcome_is_one_line_with_the_median_it_fell_below():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                     "batch_size": optuna.distributions.CategoricalDistribution([128, 256])}
    for first, final in ((0.82, 0.86), (0.84, 0.88)):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.005, "batch_size": 128}, distributions=distributions, value=final,
            intermediate_values={1: first, 2: final}))
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.05, "batch_size": 256}, distributions=distributions,
        state=TrialState.PRUNED, intermediate_values={1: 0.814}))
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01, "batch_size": 128}, distributions=distributions,
        state=TrialState.FAIL, user_attrs={studies.FAIL_ATTR: "RuntimeError: nan loss"}))
    lines = [studies.outcome(study, trial) for trial in study.trials]
    assert lines == [
        "trial 0 complete: val 0.860 (lr 0.005, batch_size 128)",
        "trial 1 complete: val 0.880 (lr 0.005, batch_size 128)",
        "trial 2 pruned after epoch 1: val 0.814 < median 0.830 (lr 0.05, batch_size 256)",
        "trial 3 fail: RuntimeError: nan loss"]


def _search_with_baseline(base_right: int, best_right: int, size: int = 1000,
                          others: tuple[int, ...] = (), best_kept: object = None
                          ) -> optuna.Study:
    """A finished study: the baseline trial, a better one, then ``others`` (each with the
    validation images its model got right; the better one's are a superset of the
    baseline's). ``best_kept``: what the better trial keeps instead of its answers."""
    study = optuna.create_study(direction="maximize")
    trials = [(base_right, True), (best_right, False), *((right, False) for right in others)]
    for number, (right, baseline) in enumerate(trials):
        trial = study.ask()
        trial.set_user_attr("baseline", baseline)
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        if number == 1 and best_kept is not None:
            trial.set_user_attr(studies.CORRECT_ATTR, best_kept)
        else:
            studies.record_correct(trial, np.arange(size) < right)
        study.tell(trial, right / size)
    return study


@pytest.mark.parametrize(("best_right", "alpha", "kept"), [
    (805, 0.05, True),   # 5 more right of 1000: chance
    (840, 0.05, False),  # 40 more right, none fewer: real
    (805, 1.0, False),   # alpha 1: always the best
])
def test_the_best_trial_wins_only_when_it_beats_the_baseline_significantly(best_right, alpha,
                                                                           kept):
    study = _search_with_baseline(800, best_right)
    chosen = studies.winner(study, alpha)
    assert chosen.best.number == 1 and chosen.kept_baseline is kept
    assert chosen.trial.number == (0 if kept else 1)
    assert chosen.p_value is not None and (chosen.p_value < 0.05) is (best_right == 840)


def test_the_best_of_several_challengers_must_beat_the_baseline_by_more():
    # 6 more right, none fewer: exact McNemar p = 2 / 2**6 = 0.031, a win over one challenger
    alone = studies.winner(_search_with_baseline(800, 806), 0.05)
    assert not alone.kept_baseline and alone.p_value == pytest.approx(0.03125)
    # the same best trial picked from two challengers: p doubles to 0.0625, chance
    picked = studies.winner(_search_with_baseline(800, 806, others=(790,)), 0.05)
    assert picked.best.number == 1 and picked.kept_baseline and picked.trial.number == 0
    assert picked.p_value == pytest.approx(0.0625)


@pytest.mark.parametrize("kept", [
    "AAAA",                          # an earlier version's bare string
    {"images": 1000},                # no bits
    {"images": 9000, "bits": "AAAA"},  # more images than bits
    {"images": 3, "bits": "not base64!"},
])
def test_answers_that_cannot_be_read_are_no_evidence_against_the_baseline(kept):
    study = _search_with_baseline(800, 840, best_kept=kept)  # a real difference, were it kept
    assert studies.recorded_correct(study.trials[1]) is None
    chosen = studies.winner(study, 0.05)
    assert chosen.kept_baseline and chosen.trial.number == 0 and chosen.p_value is None
    assert studies.winner(study, 1.0).trial.number == 1  # alpha 1: always the best


def test_without_a_baseline_trial_the_best_wins():
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    chosen = studies.winner(study, 0.05)
    assert chosen.trial.number == study.best_trial.number and chosen.p_value is None
