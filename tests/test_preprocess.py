from __future__ import annotations

import mlflow
import pytest
import torch

from imgclf import preprocess
from imgclf.cli import run_stage
from imgclf.data import channel_stats, load_meta, load_split, stratified_split
from imgclf.datasets import DATASETS

from .conftest import PREPROCESS_ARGS, runs_of, write_cifar_archive


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = torch.arange(1000) % 10
    val, train = stratified_split(labels, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert torch.bincount(labels[val]).tolist() == [10] * 10
    assert set(val.tolist()).isdisjoint(train.tolist())
    again, _ = stratified_split(labels, 0.1, seed=3)
    other, _ = stratified_split(labels, 0.1, seed=4)
    assert torch.equal(val, again)
    assert not torch.equal(val, other)


def test_channel_stats_are_per_channel():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[:2, 2] = 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx([0.0, 1.0, 0.5])
    assert std[0] == pytest.approx(0.0) and std[2] > 0.4


def test_stage_writes_weights_only_splits_and_logs(processed, client):
    meta = load_meta(processed)
    splits = {name: load_split(processed, name) for name in ("train", "val", "test")}
    assert len(splits["train"]) == 240 and len(splits["val"]) == 60
    assert len(splits["test"]) == 100
    assert splits["train"].images.dtype == torch.uint8
    assert splits["train"].images.shape[1:] == (1, 28, 28)
    # statistics come from the training split alone
    assert meta.mean == pytest.approx(channel_stats(splits["train"].images)[0])
    assert meta.counts["val"] == [6] * 10
    for name in ("train", "val", "test"):
        torch.load(processed / f"{name}.pt", weights_only=True)

    (run,) = runs_of(client, "preprocess")
    assert run.info.status == "FINISHED"
    assert run.data.params["data.val_fraction"] == "0.2"
    assert run.data.params["train_size"] == "240"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples.png", "class_counts.json"} <= artifacts
    counts = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/class_counts.json")
    assert counts["val"]["Trouser"] == 6


def test_limits_take_stratified_subsets(processed, set_params, project):
    set_params(data__train_limit=100, data__test_limit=50)
    assert run_stage(preprocess.main, PREPROCESS_ARGS) == 0
    meta = load_meta(processed)
    assert sum(meta.counts["train"]) + sum(meta.counts["val"]) == 100
    assert meta.counts["test"] == [5] * 10


def test_raw_folder_of_another_dataset_is_refused(processed, set_params, project, capsys):
    set_params(data__dataset="mnist")
    assert run_stage(preprocess.main, ["--raw", "data/raw", "--out", "data/out2",
                                       "--metrics", "reports/p.json"]) == 2
    assert "holds fashion-mnist but data.dataset is mnist" in capsys.readouterr().err
    assert not (project / "data/out2").exists()


def test_cifar10_binary_archive(tmp_path):
    raw = tmp_path / "raw"
    write_cifar_archive(raw / "cifar-10-binary.tar.gz", per_batch=20, n_test=40)
    from imgclf.settings import DataSettings

    cfg = DataSettings(dataset="cifar10", val_fraction=0.2, seed=0, train_limit=None,
                       test_limit=None)
    splits, meta = preprocess.preprocess(raw, DATASETS["cifar10"], cfg)
    assert splits["train"].images.shape == (80, 3, 32, 32)
    assert len(meta.mean) == 3 and len(meta.std) == 3
    assert meta.classes[0] == "airplane"
