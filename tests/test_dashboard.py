from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna

from imgclf import dashboard
from imgclf.common.cli import EXIT_USER_ERROR, run_stage
from imgclf.common.settings import load_settings
from imgclf.tuning import studies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serves_the_study_params_yaml_names_on_loopback(project):
    settings = load_settings(project / "params.yaml")
    name = studies.study_name(settings)
    url = studies.storage_url(settings.tune, project, name)
    study = optuna.create_study(study_name=name, storage=studies.open_storage(url),
                                direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-3, 1e-1, log=True), n_trials=2)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgclf.dashboard", "--port", str(port)],
                              cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        found = None
        for _ in range(300):  # it imports optuna-dashboard first: slow on a busy machine
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as response:
                    found = json.loads(response.read())
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.2)
        assert found is not None, server.stdout.read() if server.poll() is not None else ""
        (listed,) = found["study_summaries"]
        assert listed["study_name"] == name
        with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/studies/{listed['study_id']}", timeout=5) as response:
            trials = json.loads(response.read())["trials"]
        assert [t["values"] for t in trials] == [[t.value] for t in study.trials]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_no_study_yet_is_one_clear_error(project, capsys):
    assert run_stage(dashboard.main, ["--port", str(free_port())]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: no study ") and "run the tune stage first" in err
    assert not (project / "optuna").exists()
