"""The stages on a folder dataset: ingest, audit, train and evaluate, with bad input refused
before any work."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from imgclf import download, evaluate, predict, preprocess, train
from imgclf.common.cli import EXIT_USER_ERROR, run_stage
from imgclf.data.splits import load_meta

from .conftest import (
    DOWNLOAD_ARGS,
    EVALUATE_ARGS,
    PREPROCESS_ARGS,
    TRAIN_ARGS,
    runs_of,
    write_image_folder,
)

# Enough training for the colour folders to be learnt in float32 as in bf16: 15 steps of
# the 8-channel convnet leave fp32 (CPUs without AMX) at 0.83 test accuracy.
LEARNS = {"train__width": 8, "train__epochs": 6}


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
               train__augment="flip", **LEARNS)
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


def _pipeline(set_params, path, **overrides) -> dict:
    """Every stage on the folder at ``path``; the evaluate stage's metrics."""
    set_params(data__dataset="folder", data__path=str(path), data__image_size=[16, 16],
               **LEARNS, **overrides)
    for main, args in ((download.main, DOWNLOAD_ARGS), (preprocess.main, PREPROCESS_ARGS),
                       (train.main, TRAIN_ARGS), (evaluate.main, EVALUATE_ARGS)):
        assert run_stage(main, args) == 0
    return json.loads(Path("reports/metrics.json").read_text())


@pytest.fixture
def paints(tmp_path):
    """A second folder dataset: the same colours under other class names."""
    root = tmp_path / "paints"
    write_image_folder(root, per_class=30, split="train", seed=2)
    write_image_folder(root, per_class=8, split="test", seed=3)
    for split in ("train", "test"):
        for old, new in (("red", "brick"), ("green", "moss"), ("blue", "sky")):
            (root / split / old).rename(root / split / new)
    return root


def test_two_folders_in_one_project_each_get_their_own_model_and_champion(
        photos, paints, project, set_params, client, capsys):
    first = _pipeline(set_params, photos)
    assert first["model_version"] == 1 and first["champion"]
    second = _pipeline(set_params, paints)
    assert second["model_version"] == 1 and second["champion"]  # its own registered model
    photos_champion = client.get_model_version_by_alias("photos-classifier", "champion")
    assert str(photos_champion.version) == "1"  # untouched
    assert len(client.search_model_versions("name = 'photos-classifier'")) == 1
    version = client.get_model_version_by_alias("paints-classifier", "champion")
    assert version.tags["dataset"] == f"folder:{paints}"

    # the default model answers with the current data's classes, as well as evaluate scored
    capsys.readouterr()
    assert run_stage(predict.main, [str(paints / "test")]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {row["class"] for row in rows} <= {"brick", "moss", "sky"}
    assert {row["model"] for row in rows} == {"models:/paints-classifier/1"}
    accuracy = float(re.search(r"accuracy against the folder names: ([0-9.]+)", err).group(1))
    assert abs(accuracy - second["test"]["accuracy"]) <= 0.005
    assert "warning" not in err

    # another dataset's model, named explicitly: one line of warning, then answers
    assert run_stage(predict.main, [str(paints / "test"), "--model",
                                    "models:/photos-classifier@champion"]) == 0
    out, err = capsys.readouterr()
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "classes 3 (blue, green, red) against 3 (brick, moss, sky)" in warning
    assert {row["model"] for row in csv.DictReader(io.StringIO(out))} == {
        "models:/photos-classifier/1"}


def test_a_shared_name_keeps_the_champion_and_names_both_datasets(
        photos, paints, project, set_params, client, capsys):
    _pipeline(set_params, photos, evaluate__registered_model="shared")
    second = _pipeline(set_params, paints, evaluate__registered_model="shared")
    assert second["champion_decision"] == "not comparable" and not second["champion"]
    version = client.get_model_version("shared", "2")
    assert version.tags["dataset"] == f"folder:{paints}"
    assert (f"the champion was trained on the folder {photos}, this version on the folder "
            f"{paints}") in version.tags["champion_reason"]
    assert str(client.get_model_version_by_alias("shared", "champion").version) == "1"
    # the champion is the other folder's: the default model refuses it rather than answer
    capsys.readouterr()
    assert run_stage(predict.main, [str(paints / "test")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"was trained on the folder {photos}, not on the folder {paints}" in err
    assert err.count("\n") == 1


def test_predict_without_a_champion_for_the_data_stops_with_the_fix(
        photos, project, set_params, client, capsys):
    set_params(data__dataset="folder", data__path=str(photos))
    assert run_stage(predict.main, [str(photos / "test")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"no model for the folder {photos} yet" in err and "make run" in err
