"""The pipeline as DVC runs it: dvc.yaml's declarations and a real ``dvc repro``."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from ruamel.yaml import YAML

from .conftest import FMNIST_DIR, REPO, repo_params, write_yaml

PACKAGE = REPO / "src" / "imgclf"


def imported_modules(module: str) -> set[str]:
    """``module`` and every ``imgclf`` module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "imgclf":
                    todo += [alias.name for alias in node.names]
                elif node.module.startswith("imgclf."):
                    todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names if a.name.startswith("imgclf.")]
    return seen


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    stages = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        declared = {Path(dep).stem for dep in stage["deps"] if dep.startswith("src/imgclf/")}
        assert declared == imported_modules(name), name
        assert f"imgclf.{name} " in stage["cmd"]


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT") and not k.startswith("PYTEST")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
                   cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh clone-like project: the real dvc.yaml and code, params shrunk for speed."""
    root = tmp_path / "repo"
    shutil.copytree(PACKAGE, root / "src" / "imgclf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    write_yaml(root / "params.yaml", repo_params(**{
        "data.train_limit": 2000, "data.test_limit": 500, "train.epochs": 2,
        "train.width": 8, "train.threads": 2, "tune.n_trials": 2, "tune.epochs": 1,
        "tune.train_fraction": 0.5}))
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return root


def all_runs(repo: Path):
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlruns/mlflow.db")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("imgclf")
    return client.search_runs([experiment.experiment_id], order_by=["start_time ASC"],
                              max_results=1000)


def new_runs(repo: Path, seen: list) -> list:
    ids = {run.info.run_id for run in seen}
    return [run for run in all_runs(repo) if run.info.run_id not in ids]


def stages_of(runs: list) -> list[str]:
    return sorted(run.data.tags["stage"] for run in runs if run.data.tags["stage"] != "tune-trial")


def best_params(repo: Path) -> dict:
    return YAML(typ="safe").load((repo / "reports/best_params.yaml").read_text())["train"]


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_dvc_pipeline_end_to_end(repo):
    dvc(repo, "repro")

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.6
    assert (repo / "models/model.pt").is_file()
    found = all_runs(repo)
    by_stage = {r.data.tags["stage"]: r for r in found}
    assert stages_of(found) == ["download", "evaluate", "pipeline", "preprocess", "train",
                                "tune"]
    pipeline = by_stage["pipeline"]
    assert pipeline.info.status == "FINISHED"
    for stage in ("download", "preprocess", "tune", "train", "evaluate"):
        run = by_stage[stage]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
        assert run.data.tags["dvc_stage"] == stage
        assert len(run.data.tags["git_commit"]) == 40
    trials = [r for r in found if r.data.tags["stage"] == "tune-trial"]
    assert len(trials) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {by_stage["tune"].info.run_id}
    # the final model is trained with the tuned values
    train_run = by_stage["train"]
    assert float(train_run.data.params["train.lr"]) == best_params(repo)["lr"]
    assert train_run.data.params["train.batch_size"] == str(best_params(repo)["batch_size"])
    assert metrics["mlflow_run_id"] == by_stage["evaluate"].info.run_id

    again = dvc(repo, "repro")
    assert "Data and pipelines are up to date" in again.stdout
    assert new_runs(repo, found) == []
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first run")

    # training longer reruns train and evaluate, not the search
    seen = all_runs(repo)
    dvc(repo, "exp", "run", "-S", "train.epochs=3")
    runs = new_runs(repo, seen)
    assert stages_of(runs) == ["evaluate", "pipeline", "train"]
    assert next(r for r in runs if r.data.tags["stage"] == "pipeline").data.tags["dvc_exp_name"]

    # a new learning rate is tried as the baseline trial of a new search
    seen = all_runs(repo)
    dvc(repo, "exp", "run", "-S", "train.lr=0.05")
    runs = new_runs(repo, seen)
    assert stages_of(runs) == ["evaluate", "pipeline", "train", "tune"]
    baseline = [r for r in runs if r.data.tags.get("baseline") == "true"]
    assert [float(r.data.params["lr"]) for r in baseline] == [0.05]

    # the documented switch trains with params.yaml's own values
    seen = all_runs(repo)
    dvc(repo, "exp", "run", "-S", "tune.enabled=false", "-S", "train.lr=0.05")
    runs = new_runs(repo, seen)
    (train_run,) = [r for r in runs if r.data.tags["stage"] == "train"]
    assert train_run.data.params["train.lr"] == "0.05"
    assert not [r for r in runs if r.data.tags["stage"] == "tune-trial"]

    # raising n_trials adds only the new trials to the same (lr=0.05 baseline) study
    seen = all_runs(repo)
    dvc(repo, "exp", "run", "-S", "tune.enabled=true", "-S", "tune.n_trials=3")
    runs = new_runs(repo, seen)
    assert [r.data.tags["optuna_trial"] for r in runs if r.data.tags["stage"] == "tune-trial"
            ] == ["2"]

    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    workspace = shown[0]["data"]
    assert "reports/best_params.yaml" in workspace["params"]
    assert workspace["metrics"]["reports/metrics.json"]["data"]["mlflow_run_id"]

    plots = json.loads(dvc(repo, "plots", "show", "--json").stdout)
    assert {"Accuracy", "Loss", "Confusion matrix"} <= set(plots["data"])
