from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from imgclf import train
from imgclf.common.cli import run_stage
from imgclf.data.splits import load_split, split_digest
from imgclf.tracking.models import load
from imgclf.training.checkpoint import load_model

from .conftest import (
    DOWNLOAD_ARGS,
    EVALUATE_ARGS,
    FMNIST_DIR,
    PREPROCESS_ARGS,
    TRAIN_ARGS,
    runs_of,
)


def test_stage_outputs_and_mlflow_run(processed, project, client, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # it trains in 1 s
    assert run_stage(train.main, TRAIN_ARGS) == 0

    model, arch, info = load_model(project / "models/model.pt")
    assert arch.model == "convnet" and arch.width == 4 and len(arch.classes) == 10
    torch.load(project / "models/model.pt", weights_only=True)

    with open(project / "reports/train_history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr_schedule"} <= set(
        rows[0])

    metrics = json.loads((project / "reports/train_metrics.json").read_text())
    (run,) = runs_of(client, "train")
    assert metrics["mlflow_run_id"] == run.info.run_id == info["mlflow_run_id"]
    assert metrics["val"]["best_accuracy"] == max(float(r["val/accuracy"]) for r in rows)
    # params.yaml keeps the last epoch's weights: the model's val accuracy is that epoch's
    assert metrics["kept_epoch"] == 2
    assert metrics["val"]["accuracy"] == float(rows[-1]["val/accuracy"])

    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.01"
    assert run.data.params["train.batch_size"] == "32"
    # the run records how it was made repeatable: on CPU, by seed and thread count alone
    assert run.data.params["deterministic_algorithms"] == "False"
    assert run.data.params["training_precision"] in ("bf16", "fp32")
    assert run.data.params["train.seed"] == "0"
    assert run.data.tags["stage"] == "train"
    for name in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr_schedule",
                 "epoch_seconds", "images_per_s"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2], name
    assert run.data.metrics["val/best_accuracy"] == metrics["val"]["best_accuracy"]
    assert run.data.metrics["kept_epoch"] == 2
    assert run.data.metrics["val/kept_accuracy"] == metrics["val"]["accuracy"]
    # the splits it read are the run's MLflow datasets, named after the dataset, with the
    # split's content hash as digest and the shape in the profile
    inputs = {tag.value: d.dataset for d in run.inputs.dataset_inputs for tag in d.tags
              if tag.key == "mlflow.data.context"}
    assert set(inputs) == {"training", "validation"}
    assert {d.name for d in inputs.values()} == {"fashion-mnist"}
    assert inputs["validation"].digest == split_digest(project / "data/processed", "val")
    assert json.loads(inputs["training"].profile)["images"] == 240
    # the logged model carries the recipe, its epoch and its validation scores
    model_info = client.get_logged_model(info["mlflow_model_id"])
    assert model_info.source_run_id == run.info.run_id
    assert model_info.params["train.lr"] == "0.01"
    linked = {m.key: m for m in model_info.metrics}
    assert linked["val/kept_accuracy"].value == metrics["val"]["accuracy"]
    assert linked["val/kept_accuracy"].step == 2
    assert linked["val/kept_accuracy"].dataset_digest == inputs["validation"].digest
    # MLflow's own system metrics, sampled while it trained
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics)

    # the logged model is a models-from-code pyfunc around a pt2 program; it carries its
    # preprocessing and predicts like the local file
    logged = load(info["mlflow_model_uri"]).classifier
    assert logged.classes == arch.classes and logged.preprocessing == arch.preprocessing()
    x = load_split(project / "data/processed", "val").images[:8].float() / 255
    with torch.no_grad():
        assert torch.allclose(logged.probabilities(x), torch.softmax(model(x), 1), atol=1e-5)
    model_dir = Path(mlflow.artifacts.download_artifacts(info["mlflow_model_uri"]))
    assert (model_dir / "artifacts" / "model.pt2").is_file()
    assert (model_dir / "pyfunc_model.py").is_file()  # the model is code, not a pickle
    assert not list(model_dir.rglob("*.pkl")) and not list(model_dir.rglob("*.pth"))
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "classes:" in mlmodel and "resize:" in mlmodel
    assert "signature" in mlmodel and "input_example" in mlmodel


def test_missing_cuda_is_a_clear_error(processed, project, set_params, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    set_params(train__device="cuda", download__mirrors=[])
    assert run_stage(train.main, TRAIN_ARGS) == 2
    assert "no CUDA device is available" in capsys.readouterr().err
    assert not (project / "models/model.pt").exists()


def stage(project, *extra, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgclf.train", *TRAIN_ARGS, *extra],
                            cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def wait_for_epoch(path, epoch, process, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        if path.is_file() and torch.load(path, weights_only=True)["epoch"] >= epoch:
            return
        time.sleep(0.05)
    pytest.fail(f"epoch {epoch} never checkpointed")


def history_without_timing(project):
    with open(project / "reports/train_history.csv") as handle:
        return [{k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_s")}
                for row in csv.DictReader(handle)]


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["last", "best"])
def test_killed_training_resumes_to_the_same_result(processed, project, set_params, client,
                                                    keep):
    set_params(download__mirrors=[], train__epochs=12, train__keep=keep)
    checkpoint = project / "checkpoints/train.pt"

    process = stage(project, "--checkpoint", str(checkpoint))
    wait_for_epoch(checkpoint, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (project / "models/model.pt").exists()  # nothing half-written to cache
    (killed,) = runs_of(client, "train")
    assert killed.info.status == "RUNNING"

    assert run_stage(train.main, [*TRAIN_ARGS, "--checkpoint", str(checkpoint)]) == 0
    resumed_metrics = json.loads((project / "reports/train_metrics.json").read_text())
    resumed_history = history_without_timing(project)
    resumed_weights = torch.load(project / "models/model.pt", weights_only=True)["state_dict"]
    assert not checkpoint.exists()  # finished: nothing left to resume

    resumed_run, killed = runs_of(client, "train")
    assert killed.info.status == "KILLED"  # closed at the next start
    assert "without closing the run" in killed.data.tags["error"]
    assert int(resumed_run.data.tags["resumed_after_epoch"]) >= 3
    assert len(client.get_metric_history(resumed_run.info.run_id, "val/accuracy")) == 12

    # an uninterrupted run of the same recipe ends identically
    assert run_stage(train.main, TRAIN_ARGS) == 0
    uninterrupted = json.loads((project / "reports/train_metrics.json").read_text())
    for key in ("val", "best_epoch", "kept_epoch", "epochs"):
        assert resumed_metrics[key] == uninterrupted[key]
    assert resumed_history == history_without_timing(project)
    weights = torch.load(project / "models/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)


@pytest.mark.slow
def test_sigterm_marks_the_run_killed(processed, project, set_params, client):
    set_params(download__mirrors=[], train__epochs=200)
    process = stage(project)
    deadline = time.monotonic() + 60
    while not runs_of(client, "train") and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    (run,) = runs_of(client, "train")
    assert run.info.status == "KILLED"
    assert not (project / "models/model.pt").exists()


@pytest.mark.slow
def test_two_processes_same_seed_identical_metrics_and_plain_logs(processed, project):
    results = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "imgclf.train", *TRAIN_ARGS],
                              cwd=project, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        # not a terminal: one plain line per epoch, no progress-bar redraws
        assert "epoch 1/2  train loss" in done.stderr and "epoch 2/2" in done.stderr
        assert "\r" not in done.stderr
        results.append((json.loads((project / "reports/train_metrics.json").read_text())["val"],
                        history_without_timing(project)))
    assert results[0] == results[1]


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_data_parallel_training_matches_one_process(project, set_params, client):
    from imgclf import download, evaluate, preprocess

    set_params(download__mirrors=[str(FMNIST_DIR)], data__train_limit=3000,
               data__test_limit=1000, train__epochs=3, train__width=8, train__threads=0)
    assert run_stage(download.main, DOWNLOAD_ARGS) == 0
    assert run_stage(preprocess.main, PREPROCESS_ARGS) == 0
    accuracy = {}
    for processes in (1, 2):
        set_params(download__mirrors=[str(FMNIST_DIR)], data__train_limit=3000,
                   data__test_limit=1000, train__epochs=3, train__width=8, train__threads=0,
                   train__processes=processes)
        done = subprocess.run([sys.executable, "-m", "imgclf.train", *TRAIN_ARGS], cwd=project,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert run_stage(evaluate.main, EVALUATE_ARGS) == 0
        accuracy[processes] = json.loads(
            (project / "reports/metrics.json").read_text())["test"]["accuracy"]
        # the logged epoch numbers cover the whole training split, not one shard
        (run, *_) = runs_of(client, "train")
        assert run.data.params["train.processes"] == str(processes)
        assert run.data.params["train_size"] == "2400"
    assert abs(accuracy[1] - accuracy[2]) <= 0.01, accuracy
    assert len(runs_of(client, "train")) == 2  # one per training, none per extra process


def test_mnist_trains_without_flips_by_default_and_the_run_logs_what_was_used(
        tmp_path, project, set_params, client, monkeypatch):
    from imgclf import download, preprocess
    from imgclf.data import datasets

    from .conftest import spec_for, write_idx_dataset

    mirror = tmp_path / "mnist"
    monkeypatch.setitem(datasets.DATASETS, "mnist",
                        spec_for(datasets.DATASETS["mnist"], write_idx_dataset(mirror)))
    set_params(data__dataset="mnist", download__mirrors=[str(mirror)], train__epochs=1,
               train__augment="auto", train__tta="auto")
    for main, args in ((download.main, DOWNLOAD_ARGS), (preprocess.main, PREPROCESS_ARGS),
                       (train.main, TRAIN_ARGS)):
        assert run_stage(main, args) == 0
    (run,) = runs_of(client, "train")
    assert run.data.params["train.augment"] == "none"  # mirrored digits are other glyphs
    assert run.data.params["train.tta"] == "none"
    assert load_model(project / "models/model.pt")[1].tta == "none"
