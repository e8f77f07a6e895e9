from __future__ import annotations

import socket
import time

import mlflow
import pytest

from imgclf import tracking
from imgclf.settings import load_settings

from .conftest import runs_of


def test_default_store_is_under_the_project_root_not_the_cwd(project, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert tracking.tracking_uri() == f"sqlite:///{project}/mlruns/mlflow.db"
    monkeypatch.delenv("DVC_ROOT")
    (elsewhere / "sub").mkdir()
    (elsewhere / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(elsewhere / "sub")
    assert tracking.tracking_uri() == f"sqlite:///{elsewhere}/mlruns/mlflow.db"


def test_env_uri_overrides_the_default(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri() == "http://127.0.0.1:1"


def test_failed_stage_marks_run_failed_with_the_error(project, client):
    settings = load_settings(project / "params.yaml")
    with pytest.raises(ZeroDivisionError), tracking.stage_run("train", settings):
        1 / 0  # noqa: B018
    (run,) = runs_of(client, "train")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("ZeroDivisionError")
    assert mlflow.active_run() is None


def test_interrupted_stage_is_killed_not_running(project, client):
    settings = load_settings(project / "params.yaml")
    with pytest.raises(KeyboardInterrupt), tracking.stage_run("train", settings):
        raise KeyboardInterrupt
    (run,) = runs_of(client, "train")
    assert run.info.status == "KILLED"


def test_run_tags_name_stage_dataset_and_commit(project, client, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lamb")
    settings = load_settings(project / "params.yaml")
    with tracking.stage_run("evaluate", settings) as run:
        run_id = run.run_id
    tags = client.get_run(run_id).data.tags
    assert tags["stage"] == "evaluate"
    assert tags["dataset"] == "fashion-mnist"
    assert tags["dvc_exp_name"] == "brisk-lamb"
    assert client.get_run(run_id).data.params["evaluate.batch_size"] == "1024"


def test_unreachable_server_fails_fast_naming_the_uri(project, monkeypatch):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings = load_settings(project / "params.yaml")
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=uri), tracking.stage_run("train", settings):
        pytest.fail("the stage body must not run")
    assert time.monotonic() - started < 30
