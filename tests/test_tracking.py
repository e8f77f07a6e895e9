from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from imgclf.common.cli import run_stage
from imgclf.common.settings import load_settings
from imgclf.tracking.models import load
from imgclf.tracking.provenance import (
    changed_files,
    dvc_lock_hashes,
    pipeline_description,
    seed_group,
)
from imgclf.tracking.runs import StageRun, stage_run
from imgclf.tracking.store import TrackingError, connect, tracking_uri

from .conftest import REPO, runs_of


def test_default_store_is_under_the_project_root_not_the_cwd(project, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert tracking_uri() == f"sqlite:///{project}/mlruns/mlflow.db"
    monkeypatch.delenv("DVC_ROOT")
    (elsewhere / "sub").mkdir()
    (elsewhere / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(elsewhere / "sub")
    assert tracking_uri() == f"sqlite:///{elsewhere}/mlruns/mlflow.db"


def test_env_uri_overrides_the_default(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri() == "http://127.0.0.1:1"


def test_failed_stage_marks_run_failed_with_the_error(project, client):
    settings = load_settings(project / "params.yaml")
    with pytest.raises(ZeroDivisionError), stage_run("train", settings):
        1 / 0  # noqa: B018
    (run,) = runs_of(client, "train")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("ZeroDivisionError")
    assert mlflow.active_run() is None


def test_interrupted_stage_is_killed_not_running(project, client):
    settings = load_settings(project / "params.yaml")
    with pytest.raises(KeyboardInterrupt), stage_run("train", settings):
        raise KeyboardInterrupt
    (run,) = runs_of(client, "train")
    assert run.info.status == "KILLED"


def test_run_tags_name_stage_dataset_and_commit(project, client, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lamb")
    settings = load_settings(project / "params.yaml")
    with stage_run("evaluate", settings) as run:
        run_id = run.run_id
    tags = client.get_run(run_id).data.tags
    assert tags["stage"] == "evaluate"
    assert tags["dataset"] == "fashion-mnist"
    assert tags["dvc_exp_name"] == "brisk-lamb"
    logged = client.get_run(run_id).data.params
    assert logged["evaluate.batch_size"] == str(settings.evaluate.batch_size)
    assert tags["seed_group"] == seed_group(settings)
    # MLflow's own source tags: the UI's Source and git commit
    assert tags["mlflow.source.name"] == "python -m imgclf.evaluate"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert "git_commit" not in tags and "mlflow.source.git.commit" not in tags  # no git here


def test_runs_that_differ_only_in_the_seed_share_a_seed_group(project, set_params):
    def group(**overrides) -> str:
        return seed_group(load_settings(set_params(**overrides)))

    base = group(train__seed=0)
    assert group(train__seed=1) == base
    assert group(train__seed=0, tracking__experiment="other") == base
    assert group(train__seed=0, train__lr=0.02) != base
    assert group(train__seed=0, data__dataset="mnist") != base


def test_unreachable_server_fails_fast_naming_the_uri(project, monkeypatch):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings = load_settings(project / "params.yaml")
    started = time.monotonic()
    with pytest.raises(TrackingError, match=uri), stage_run("train", settings):
        pytest.fail("the stage body must not run")
    assert time.monotonic() - started < 30


def test_dvc_lock_hashes(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  preprocess:\n    outs:\n"
                    "    - path: data/processed\n      md5: abc.dir\n      size: 1\n")
    assert dvc_lock_hashes(["data/processed/", "models/model.pt"], lock) == {
        "data/processed": "abc.dir"}
    assert dvc_lock_hashes(["x"], tmp_path / "missing.lock") == {}


def _log_many(uri: str, run_id: str, worker: int, n: int) -> None:
    mlflow.set_tracking_uri(uri)
    run = StageRun(run_id, "0")
    for step in range(n):
        run.log_metrics({f"worker{worker}": step}, step=step)


@pytest.mark.slow
def test_concurrent_writers_to_the_sqlite_store(project, client):
    import multiprocessing

    settings = load_settings(project / "params.yaml")
    with stage_run("train", settings) as run:
        run_id = run.run_id
    uri = tracking_uri(project)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_log_many, args=(uri, run_id, i, 500)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]  # no "database is locked"
    for i in range(4):
        history = client.get_metric_history(run_id, f"worker{i}")
        assert sorted(m.step for m in history) == list(range(500))


def test_run_left_running_by_a_dead_process_is_closed_at_next_start(project, client):
    settings = load_settings(project / "params.yaml")
    experiment_id = connect("tests", project)
    dead = client.create_run(experiment_id, tags={"stage": "train",
                                                  "process": "somehost:1:1"}).info.run_id
    dead_here = client.create_run(experiment_id, tags={
        "stage": "train", "process": f"{socket.gethostname()}:999999999:1"}).info.run_id
    with stage_run("evaluate", settings):
        pass
    assert client.get_run(dead_here).info.status == "KILLED"
    assert client.get_run(dead).info.status == "RUNNING"  # another host: not ours to judge


def test_passwords_never_reach_messages(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://admin:hunter2@127.0.0.1:9")
    settings = load_settings(project / "params.yaml")
    with pytest.raises(TrackingError) as caught, stage_run("train", settings):
        pass
    assert "hunter2" not in str(caught.value)
    assert "http://admin:***@127.0.0.1:9" in str(caught.value)


POSTGRES = os.environ.get("IMGCLF_TEST_POSTGRES_URL")


@pytest.fixture
def team_server(tmp_path):
    """``make server``'s command on a fresh PostgreSQL database and a free loopback port."""
    import psycopg

    name = f"imgclf_server_{os.getpid()}_{time.time_ns()}"
    admin = psycopg.connect(POSTGRES, autocommit=True)
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    database = POSTGRES.rsplit("/", 1)[0] + "/" + name
    done = subprocess.run(["make", "-s", "-n", "server", f"DB={database}",
                           f"ARTIFACTS={tmp_path / 'artifacts'}", f"PORT={port}"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    command = done.stdout.replace("\\\n", " ").strip().splitlines()[-1]
    assert "--host 127.0.0.1" in command
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(command, shell=True, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        try:
            urllib.request.urlopen(url + "/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(server.pid, signal.SIGTERM)
        pytest.fail(f"mlflow server did not answer:\n{(tmp_path / 'server.log').read_text()}")
    yield url, tmp_path / "artifacts"
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES, reason="set IMGCLF_TEST_POSTGRES_URL (.ci/run does)")
def test_pipeline_against_a_team_server_on_postgresql(processed, project, team_server,
                                                       monkeypatch):
    from imgclf import evaluate, train

    from .conftest import EVALUATE_ARGS, TRAIN_ARGS

    url, artifacts = team_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert run_stage(train.main, TRAIN_ARGS) == 0
    assert run_stage(evaluate.main, EVALUATE_ARGS) == 0

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("tests")
    runs = {r.data.tags["stage"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"train", "evaluate"}
    assert len(client.get_metric_history(runs["train"].info.run_id, "val/accuracy")) == 2
    assert runs["evaluate"].data.metrics["test/accuracy"] > 0
    # artifacts went through the server into its artifact store, not to a local folder
    assert runs["evaluate"].info.artifact_uri.startswith("mlflow-artifacts:")
    png = client.download_artifacts(runs["evaluate"].info.run_id, "confusion.png",
                                    str(project))
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
    assert any(artifacts.rglob("confusion.png"))
    assert not (project / "mlruns/artifacts" / runs["evaluate"].info.run_id).exists()
    # the registry lives on the server too, and its champion loads through it
    champion = client.get_model_version_by_alias("fashion-mnist-classifier", "champion")
    mlflow.set_tracking_uri(url)
    loaded = load("models:/fashion-mnist-classifier@champion")
    probabilities = loaded.classifier.probabilities(torch.rand(2, 1, 28, 28))
    assert probabilities.shape == (2, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))
    assert champion.tags["evaluate_run_id"] == runs["evaluate"].info.run_id


def test_git_dirty_ignores_what_the_pipeline_writes_itself():
    outputs = {"reports/metrics.json", "models/model.pt", "data/processed"}
    status = (" M dvc.lock\n M reports/metrics.json\n M data/processed/meta.json\n"
              " M params.yaml\n M src/imgclf/train.py\n")
    assert changed_files(status, outputs, experiment=False) == [
        "params.yaml", "src/imgclf/train.py"]
    # a DVC experiment records its params itself
    assert changed_files(status, outputs, experiment=True) == ["src/imgclf/train.py"]
    assert changed_files(" M dvc.lock\n M reports/metrics.json\n", outputs, False) == []


def test_pipeline_description_names_the_changed_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    Path("params.yaml").write_text("train:\n  lr: 0.005\n  epochs: 4\n")
    subprocess.run(["git", "add", "params.yaml"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"],
                   check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert pipeline_description({"git_commit": commit}) == (
        f"dvc repro at {commit[:7]}: params.yaml as committed.")
    Path("params.yaml").write_text("train:\n  lr: 0.01\n  epochs: 4\n")
    assert pipeline_description({"git_commit": commit, "dvc_exp_name": "lofty-mare",
                                 "dvc_exp_baseline_rev": commit}) == (
        f"DVC experiment lofty-mare on {commit[:7]}. Changed against {commit[:7]}: "
        "train.lr: 0.005 → 0.01.")
