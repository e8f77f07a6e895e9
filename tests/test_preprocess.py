from __future__ import annotations

import gzip

import mlflow
import numpy as np
import pytest
import torch

from imgclf import preprocess
from imgclf.commands import preprocess as preprocess_work
from imgclf.commands.preprocess import read_cifar_binary, read_idx, read_raw
from imgclf.common.cli import run_stage
from imgclf.common.settings import parse_settings
from imgclf.data.datasets import DATASETS, DataError
from imgclf.data.splits import Split, channel_stats, load_meta, load_split

from .conftest import (
    FMNIST_DIR,
    PREPROCESS_ARGS,
    idx_bytes,
    learnable_images,
    repo_params,
    runs_of,
    write_cifar_archive,
)


@pytest.mark.parametrize("channels", [1, 3])
def test_sample_grid_shows_each_class_in_its_labelled_row(channels):
    # every image of class c is filled with the value 20 * c, so each row can be recognised
    labels = torch.arange(30) % 3
    images = (labels * 20).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, channels, 4, 5)
    figure = preprocess_work.sample_grid(Split(images.contiguous(), labels), ["a", "b", "c"],
                                    per_class=2)
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    shown = torch.as_tensor(ax.get_images()[0].get_array())
    cell_h, cell_w = 4 + 2, 5 + 2
    assert shown.shape[:2] == (3 * cell_h, 2 * cell_w)
    for row in range(3):
        for col in range(2):
            cell = shown[row * cell_h:row * cell_h + 4, col * cell_w:col * cell_w + 5]
            assert (cell == 20 * row).all(), (row, col)


def test_stage_writes_plain_arrays_and_logs(processed, client):
    meta = load_meta(processed)
    splits = {name: load_split(processed, name) for name in ("train", "val", "test")}
    assert len(splits["train"]) == 240 and len(splits["val"]) == 60
    assert len(splits["test"]) == 100
    assert splits["train"].images.dtype == torch.uint8
    assert splits["train"].images.shape[1:] == (1, 28, 28)
    # statistics come from the training split alone
    assert meta.mean == pytest.approx(channel_stats(splits["train"].images)[0])
    assert meta.counts["val"] == [6] * 10
    for name in ("train", "val", "test"):  # plain .npy arrays: they load without pickle
        assert np.load(processed / f"{name}-images.npy", allow_pickle=False).dtype == np.uint8
        assert len(np.load(processed / f"{name}-labels.npy", allow_pickle=False)) == len(
            splits[name])

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
                                       "--metrics", "reports/p.json",
                                       "--audit", "reports/a.json"]) == 2
    assert "holds fashion-mnist but data.dataset is mnist" in capsys.readouterr().err
    assert not (project / "data/out2").exists()


def test_cifar10_binary_archive(tmp_path):
    raw = tmp_path / "raw"
    write_cifar_archive(raw / "cifar-10-binary.tar.gz", per_batch=20, n_test=40)
    cfg = parse_settings(repo_params(**{"data.dataset": "cifar10", "data.val_fraction": 0.2,
                                        "train.model": "cifar_cnn"})).data
    splits, meta = preprocess_work.preprocess(raw, DATASETS["cifar10"], cfg)
    assert splits["train"].images.shape == (80, 3, 32, 32)
    assert len(meta.mean) == 3 and len(meta.std) == 3
    assert meta.classes[0] == "airplane"


def test_idx_round_trip(tmp_path):
    images, _ = learnable_images(7, 10, (1, 28, 28), 0)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images[:, 0])))
    assert torch.equal(read_idx(path), images[:, 0])


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x0d\x01", idx_bytes(torch.zeros(5))[:-1]],
                         ids=["empty", "float-type", "truncated"])
def test_idx_rejects_bad_files(tmp_path, data):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError, match="bad-idx1-ubyte"):
        read_idx(path)


def test_cifar_binary_records(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar_archive(path, per_batch=3, n_test=4)
    splits = read_cifar_binary(path)
    assert splits["train"][0].shape == (15, 3, 32, 32)
    assert splits["test"][0].shape == (4, 3, 32, 32)
    expected, labels = learnable_images(4, 10, (3, 32, 32), 0)
    assert torch.equal(splits["test"][0], expected)
    assert torch.equal(splits["test"][1], labels)


def test_cifar_archive_missing_member(tmp_path):
    import io
    import tarfile

    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = 3073
        archive.addfile(info, io.BytesIO(bytes(3073)))
    with pytest.raises(DataError, match="missing member"):
        read_cifar_binary(path)


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_debian_fashion_mnist_decodes():
    splits = read_raw(DATASETS["fashion-mnist"], FMNIST_DIR)
    assert splits["train"][0].shape == (60000, 1, 28, 28)
    assert splits["test"][0].shape == (10000, 1, 28, 28)
    assert torch.bincount(splits["test"][1]).tolist() == [1000] * 10
