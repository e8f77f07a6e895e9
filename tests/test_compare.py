from __future__ import annotations

import numpy as np
import pytest

from imgclf import compare
from imgclf.commands import compare as board_work
from imgclf.common.cli import run_stage
from imgclf.evaluation.comparison import groups_verdict
from imgclf.evaluation.scores import Predictions
from imgclf.tracking.results import Result

CLASSES = 4


def predictions(labels: np.ndarray, wrong: int, seed: int = 0) -> Predictions:
    """Predictions on ``labels`` that get exactly ``wrong`` of them wrong (the first ones)."""
    predicted = labels.copy()
    predicted[:wrong] = (labels[:wrong] + 1) % CLASSES
    probabilities = np.full((len(labels), CLASSES), 0.1, dtype=np.float32)
    probabilities[np.arange(len(labels)), predicted] = 0.7
    return Predictions(labels, probabilities)


def result(run_id: str, test: float, lr: str = "0.01", seed: str = "0", group: str = "",
           digest: str = "abc", half: float = 0.005, exp: str = "") -> Result:
    tags = {"test_digest": digest, "val_digest": digest}
    if group:
        tags["seed_group"] = group
    if exp:
        tags["dvc_exp_name"] = exp
    metrics = {"test/accuracy": test, "val/accuracy": test,
               "test/accuracy_ci95_low": test - half, "test/accuracy_ci95_high": test + half}
    return Result(run_id, run_id, {"train.lr": lr, "train.seed": seed, "data.dataset": "f"},
                  metrics, tags, run_id, None)


def board(entries: list[board_work.Entry], sort: str = "test/accuracy") -> list[dict[str, str]]:
    columns, rows = board_work.leaderboard(entries, sort)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_a_single_run_shows_its_interval_and_only_params_that_differ():
    rows = board(board_work.entries([result("a" * 32, 0.80, "0.1", exp="one"),
                                     result("b" * 32, 0.9303, "0.01", half=0.0050)]))
    assert list(rows[0]) == ["run", "experiment", "train.lr", "val/accuracy", "test/accuracy",
                             "vs best (test/accuracy)"]
    assert rows[0]["run"] == "b" * 32 and rows[0]["test/accuracy"] == "0.9303 ± 0.0050"
    assert rows[0]["vs best (test/accuracy)"] == "best"
    assert rows[1]["experiment"] == "one"
    # no stored predictions: the pair cannot be tested
    assert rows[1]["vs best (test/accuracy)"] == "not comparable"


def test_runs_on_the_same_images_are_marked_by_a_paired_test():
    labels = np.arange(400) % CLASSES
    best, close, worse = (board_work.Entry([result(f"{i}" * 32, acc)]) for i, acc in
                          ((1, 0.95), (2, 0.94), (3, 0.80)))
    best.predictions = predictions(labels, 20)
    close.predictions = predictions(labels, 24)  # 4 more mistakes of 400: noise
    worse.predictions = predictions(labels, 80)
    rows = board([worse, close, best])
    assert [row["run"][0] for row in rows] == ["1", "2", "3"]
    assert rows[1]["vs best (test/accuracy)"].startswith("≈ best (p=")
    assert rows[2]["vs best (test/accuracy)"].startswith("worse (p=")


def test_runs_scored_on_other_images_are_not_comparable():
    labels = np.arange(100) % CLASSES
    best = board_work.Entry([result("1" * 32, 0.9)], predictions(labels, 10))
    other = board_work.Entry([result("2" * 32, 0.5, digest="other")], predictions(labels, 50))
    assert board([best, other])[1]["vs best (test/accuracy)"] == "not comparable"


def test_seed_groups_are_one_row_with_mean_sd_and_interval_of_the_mean():
    found = board_work.entries([
        result("1" * 32, 0.930, seed="0", group="g"),
        result("2" * 32, 0.931, seed="1", group="g"),
        result("3" * 32, 0.929, seed="2", group="g"),
        result("4" * 32, 0.999, seed="1", group="g"),  # an older run of seed 1: not counted
        result("5" * 32, 0.900, lr="0.1", group="h"),
    ])
    assert [len(entry.members) for entry in found] == [3, 1]
    rows = board(found)
    assert rows[0]["run"] == "seed group g"
    assert rows[0]["test/accuracy"].startswith("0.9300 ± 0.0010 sd (n=3), mean in [0.9275, ")
    assert rows[0]["train.lr"] == "0.01"
    # one run of another recipe against the group: outside its prediction interval
    assert rows[1]["vs best (test/accuracy)"] == "worse"
    (note,) = board_work.group_notes(found, "test/accuracy")
    assert note.startswith("seed group g: 3 runs of one recipe (train.seed 0, 1, 2), "
                           "test/accuracy 0.9300 ± 0.0010 sd.")
    assert "not significant as a change of recipe" in note


def test_groups_that_overlap_are_not_significantly_different():
    assert not groups_verdict([0.930, 0.931, 0.929], [0.931, 0.929, 0.932]).significant
    verdict = groups_verdict([0.930, 0.931, 0.929], [0.900, 0.902, 0.899])
    assert verdict.significant and verdict.p_value == pytest.approx(0.0001, abs=0.001)
    # a single run within the group's spread is no evidence of a difference
    assert not groups_verdict([0.930, 0.931, 0.929], [0.9305]).significant


def test_empty_store_says_how_to_get_runs(project, capsys):
    assert run_stage(compare.main, []) == 0
    assert "no finished pipeline runs yet" in capsys.readouterr().out


def test_it_finds_the_project_from_a_subfolder(project, monkeypatch, capsys):
    monkeypatch.delenv("DVC_ROOT")
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(project / "src" / "deep")
    assert run_stage(compare.main, []) == 0
    assert "no finished pipeline runs yet" in capsys.readouterr().out
    assert not (project / "src" / "deep" / "mlruns").exists()


def test_outside_a_project_it_says_so_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert run_stage(compare.main, []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not inside an imgclf project" in err
    assert list(tmp_path.iterdir()) == []


def test_a_broken_params_file_is_one_error_line(project, capsys):
    (project / "params.yaml").write_text("train: {lr: [unclosed\n")
    assert run_stage(compare.main, []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "params.yaml" in err and len(err.splitlines()) == 1
