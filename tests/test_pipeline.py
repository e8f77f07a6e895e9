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
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    write_yaml(root / "params.yaml", repo_params(**{
        "data.train_limit": 2000, "data.test_limit": 500, "train.epochs": 2,
        "train.width": 8, "train.threads": 2}))
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return root


def runs(repo: Path):
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlruns/mlflow.db")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("imgclf")
    return client, client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_dvc_repro_runs_every_stage_tracked_then_does_nothing(repo):
    dvc(repo, "repro")

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.6
    assert (repo / "models/model.pt").is_file()
    _, found = runs(repo)
    stages = {r.data.tags["stage"]: r for r in found}
    assert set(stages) == {"pipeline", "download", "preprocess", "train", "evaluate"}
    pipeline = stages.pop("pipeline")
    assert pipeline.info.status == "FINISHED"
    for stage, run in stages.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
        assert run.data.tags["dvc_stage"] == stage
        assert len(run.data.tags["git_commit"]) == 40
    assert stages["train"].data.params["train.epochs"] == "2"
    assert metrics["mlflow_run_id"] == stages["evaluate"].info.run_id

    again = dvc(repo, "repro")
    assert "Data and pipelines are up to date" in again.stdout
    assert len(runs(repo)[1]) == len(found)

    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first run")
    dvc(repo, "exp", "run", "-S", "train.lr=0.05")
    _, after = runs(repo)
    new = [r for r in after if r.info.run_id not in {f.info.run_id for f in found}]
    assert sorted(r.data.tags["stage"] for r in new) == ["evaluate", "pipeline", "train"]
    (train_run,) = [r for r in new if r.data.tags["stage"] == "train"]
    assert train_run.data.params["train.lr"] == "0.05"
    assert train_run.data.tags["dvc_exp_name"]

    shown = dvc(repo, "plots", "show", "--json")
    plots = json.loads(shown.stdout)
    assert {"Accuracy", "Loss", "Confusion matrix"} <= set(plots["data"])
