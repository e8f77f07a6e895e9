from __future__ import annotations

from imgclf import compare
from imgclf.common.cli import run_stage


def run(run_id, lr, test, exp="exp", dataset="fashion-mnist"):
    return {"run_id": run_id, "experiment": exp,
            "params": {"train.lr": lr, "data.dataset": dataset},
            "metrics": {"test/accuracy": test, "val/kept_accuracy": test + 0.01}}


def test_leaderboard_ranks_and_keeps_only_differing_params():
    columns, rows = compare.leaderboard(
        [run("a", "0.1", 0.80, "one"), run("b", "0.01", 0.90, None)], "test/accuracy")
    assert columns == ["run", "experiment", "train.lr", "val/kept_accuracy", "test/accuracy"]
    assert rows == [["b", "-", "0.01", "0.9100", "0.9000"],
                    ["a", "one", "0.1", "0.8100", "0.8000"]]


def test_empty_store_says_how_to_get_runs(project, capsys):
    assert run_stage(compare.main, []) == 0
    assert "no pipeline runs yet" in capsys.readouterr().out
