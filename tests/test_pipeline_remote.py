"""The pipeline shared through DVC: its run lock, its remote, a fresh clone of the project."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from .conftest import DVC, FMNIST_DIR, REPO, dvc, dvc_env, git, make_repo


@pytest.mark.slow
def test_concurrent_repro_is_refused_then_a_pulled_clone_needs_no_retraining(tmp_path):
    if not FMNIST_DIR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is missing")
    repo = make_repo(tmp_path / "repo", **{"tune.enabled": False, "train.epochs": 1})
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the default remote
    assert dvc(repo, "remote", "default").stdout.strip() == "local"
    storage = tmp_path / "remote"
    dvc(repo, "remote", "modify", "--local", "local", "url", str(storage))

    # a second `dvc repro` while the first runs is refused by DVC's lock
    first = subprocess.Popen([DVC, "repro"], cwd=repo, env=dvc_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (repo / ".dvc/tmp/rwlock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    second = subprocess.run([DVC, "repro"], cwd=repo, env=dvc_env(), capture_output=True,
                            text=True)
    assert first.wait(timeout=600) == 0, first.stdout.read()
    assert second.returncode != 0
    assert "lock" in (second.stdout + second.stderr).lower()
    # the first finished with outputs that match its dvc.lock
    assert "Data and pipelines are up to date" in dvc(repo, "status").stdout + dvc(
        repo, "repro").stdout
    assert json.loads((repo / "reports/metrics.json").read_text())["test"]["accuracy"] > 0.3

    # push to the remote; a fresh clone pulls every output and has nothing to rerun
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "trained")
    dvc(repo, "push")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    dvc(clone, "remote", "modify", "--local", "local", "url", str(storage))
    dvc(clone, "pull")

    assert "Data and pipelines are up to date" in dvc(clone, "status").stdout
    assert "Data and pipelines are up to date" in dvc(clone, "repro").stdout
    assert not (clone / "mlruns").exists()  # no stage ran
    for path in ("models/model.pt", "data/processed/train-images.npy", "reports/metrics.json"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes()
