"""The stages on a folder dataset: ingest, audit, train and evaluate, with bad input refused
before any work."""

from __future__ import annotations

import json
import shutil

import pytest

from imgclf import download, evaluate, preprocess, train
from imgclf.common.cli import run_stage
from imgclf.data.splits import load_meta

from .conftest import (
    DOWNLOAD_ARGS,
    EVALUATE_ARGS,
    PREPROCESS_ARGS,
    TRAIN_ARGS,
    runs_of,
    write_image_folder,
)


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    write_image_folder(root, per_class=30, split="train")
    write_image_folder(root, per_class=8, split="test", seed=1)
    (root / "train/red/broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (root / "train/green/readme.txt").write_text("not an image")
    shutil.copy(root / "test/blue/blue3.jpg", root / "train/blue/leaked.jpg")
    return root


def test_a_folder_trains_and_evaluates_with_its_audit(photos, project, set_params, client):
    set_params(data__dataset="folder", data__path=str(photos), data__image_size=[16, 16],
               train__augment="flip", train__epochs=3,
               train__width=8)  # the convnet learns these colours from 8 channels up
    assert run_stage(download.main, DOWNLOAD_ARGS) == 0
    manifest = json.loads((project / "data/raw/manifest.json").read_text())
    assert manifest["classes"] == ["blue", "green", "red"]
    assert len(manifest["files"]) == 30 * 3 + 8 * 3 + 2  # the .txt is not listed

    assert run_stage(preprocess.main, PREPROCESS_ARGS) == 0
    audit = json.loads((project / "reports/audit.json").read_text())
    assert audit["skipped_files"][0]["path"] == "train/red/broken.jpg"
    assert audit["leaks"] == [{"test": "test/blue/blue3.jpg", "train": ["train/blue/leaked.jpg"]}]
    assert audit["removed"] == 1
    meta = load_meta(project / "data/processed")
    assert meta.classes == ["blue", "green", "red"] and meta.image_shape == [3, 16, 16]
    assert sorted(p.name for p in (project / "data/processed").iterdir()) == [
        "meta.json", *(f"{s}-{k}.npy" for s in ("test", "train", "val")
                       for k in ("images", "labels"))]  # the decoding scratch file is gone
    assert meta.data_version == manifest["data_version"]
    metrics = json.loads((project / "reports/preprocess_metrics.json").read_text())
    assert (metrics["skipped"], metrics["leaked"], metrics["test_size"]) == (1, 1, 24)
    (run,) = runs_of(client, "preprocess")
    assert run.data.tags["data_version"] == manifest["data_version"]
    assert run.data.params["data.path"] == str(photos)
    assert run.data.params["audit/skipped"] == "1"
    assert {"audit.json", "audit.png", "samples.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)}

    assert run_stage(train.main, TRAIN_ARGS) == 0
    assert run_stage(evaluate.main, EVALUATE_ARGS) == 0
    scores = json.loads((project / "reports/metrics.json").read_text())
    assert scores["test"]["accuracy"] >= 0.9  # one colour per class: easy to tell apart
    per_class = json.loads((project / "reports/per_class.json").read_text())
    assert list(per_class) == ["blue", "green", "red"]


def test_an_archive_of_the_folder_works_the_same(photos, project, set_params, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "photos"), "zip", photos)
    set_params(data__dataset="folder", data__path=archive, data__image_size=[16, 16])
    assert run_stage(download.main, DOWNLOAD_ARGS) == 0
    assert (project / "data/raw/images/train/red").is_dir()
    assert run_stage(preprocess.main, PREPROCESS_ARGS) == 0
    assert load_meta(project / "data/processed").classes == ["blue", "green", "red"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: None, "not found"),
    (lambda root: (root / "cats").mkdir(parents=True), "0 class folder"),
    (lambda root: write_image_folder(root / "test", per_class=2), "test/ but no train/"),
])
def test_an_invalid_folder_stops_before_any_work(tmp_path, project, set_params, client, capsys,
                                                 make, message):
    make(tmp_path / "bad")
    set_params(data__dataset="folder", data__path=str(tmp_path / "bad"))
    assert run_stage(download.main, DOWNLOAD_ARGS) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line
    assert not (project / "data/raw").exists()
    assert runs_of(client) == []  # nothing logged


@pytest.mark.slow
def test_dvc_repro_on_a_folder_reruns_only_for_real_changes(tmp_path, photos):
    import os

    from .conftest import dvc, make_repo

    repo = make_repo(tmp_path / "repo", **{
        "data.dataset": "folder", "data.path": str(photos), "data.image_size": [16, 16],
        "data.train_limit": None, "data.test_limit": None, "train.epochs": 6})
    dvc(repo, "repro")
    audit = json.loads((repo / "reports/audit.json").read_text())
    assert audit["skipped"] == 1 and audit["leaked"] == 1
    assert json.loads((repo / "reports/metrics.json").read_text())["test"]["accuracy"] >= 0.9
    assert "Data and pipelines are up to date" in dvc(repo, "repro").stdout

    os.utime(photos / "train/red/red1.jpg", ns=(10**18, 10**18))  # touched, not changed
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
    shutil.copy(photos / "train/red/red2.png", photos / "train/red/new.png")  # one file more
    assert set(json.loads(dvc(repo, "status", "--json").stdout)) == {"download"}
    dvc(repo, "repro")
    audit = json.loads((repo / "reports/audit.json").read_text())
    assert audit["files"] == 30 * 3 + 8 * 3 + 3 and audit["duplicates"] == 2


def test_images_exported_to_png_folders_come_back_pixel_for_pixel(tmp_path, project,
                                                                   set_params):
    from PIL import Image

    from imgclf.data.splits import load_split

    from .conftest import learnable_images

    images, labels = learnable_images(300, 10, (1, 28, 28), seed=5)  # Fashion-MNIST's form
    names = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot"]
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        folder = tmp_path / "exported" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{i:04d}.png")
    set_params(data__dataset="folder", data__path=str(tmp_path / "exported"))
    assert run_stage(download.main, DOWNLOAD_ARGS) == 0
    assert run_stage(preprocess.main, PREPROCESS_ARGS) == 0

    meta = load_meta(project / "data/processed")
    assert meta.image_shape == [1, 28, 28]  # grey at the images' own size: nothing resized
    assert meta.classes == sorted(names)
    original = {bytes(image.numpy()): names[label]
                for image, label in zip(images, labels.tolist(), strict=True)}
    for split in ("train", "val", "test"):
        loaded = load_split(project / "data/processed", split)
        for image, label in zip(loaded.images, loaded.labels.tolist(), strict=True):
            assert original[bytes(image.numpy())] == meta.classes[label]
