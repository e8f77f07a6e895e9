"""A folder of labelled images: its layout, which files count, and its manifest."""

from __future__ import annotations

import os

import pytest

from imgclf.data import folders
from imgclf.data.folders import FolderError, data_version, ingest, scan

from .conftest import write_image_folder


def test_class_folders_give_sorted_classes_and_nested_files_count(tmp_path):
    written = write_image_folder(tmp_path / "photos", per_class=5)
    (tmp_path / "photos/red/notes.txt").write_text("not an image")
    (tmp_path / "photos/red/.DS_Store").write_bytes(b"\0\1")
    (tmp_path / "photos/.hidden").mkdir()
    (tmp_path / "photos/.hidden/x.png").write_bytes(b"")
    files = scan(tmp_path / "photos")
    assert sorted({f.label for f in files}) == ["blue", "green", "red"]
    assert len(files) == 15
    assert {f.path for f in files} == {p.relative_to(tmp_path / "photos").as_posix()
                                       for paths in written.values() for p in paths}
    assert any("/more/" in f.path for f in files)
    assert all(f.split is None and len(f.sha256) == 64 for f in files)


def test_train_and_test_folders_keep_their_split(tmp_path):
    write_image_folder(tmp_path / "photos", per_class=4, split="train")
    write_image_folder(tmp_path / "photos", per_class=2, split="test", seed=1)
    files = scan(tmp_path / "photos")
    assert sorted({(f.split, f.label) for f in files}) == [
        (s, c) for s in ("test", "train") for c in ("blue", "green", "red")]
    assert sum(f.split == "test" for f in files) == 6


def test_the_version_follows_content_not_modification_times(tmp_path):
    root = tmp_path / "photos"
    written = write_image_folder(root, per_class=3)
    version = data_version(scan(root))
    some = written["red"][0]
    os.utime(some, ns=(1, 1))  # touched
    assert data_version(scan(root)) == version
    some.write_bytes(written["red"][1].read_bytes())  # changed
    assert data_version(scan(root)) != version


def test_unchanged_files_are_not_hashed_again(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    write_image_folder(root, per_class=3)
    first = scan(root)
    previous = {f.path: f for f in first}
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: opened.append(p) or real_open(
        p, *a, **k))
    assert scan(root, previous) == first
    assert opened == []


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: None, "no such folder"),
    (lambda root: (root / "only").mkdir(parents=True), "0 class folder"),
    (lambda root: write_image_folder(root / "train", per_class=2), "train/ but no test/"),
])
def test_a_folder_that_is_no_dataset_names_the_fix(tmp_path, make, message):
    make(tmp_path / "photos")
    with pytest.raises(FolderError, match=message):
        scan(tmp_path / "photos")


def test_one_class_or_an_empty_class_is_refused(tmp_path):
    root = tmp_path / "photos"
    write_image_folder(root, per_class=2)
    (root / "empty").mkdir()
    with pytest.raises(FolderError, match="empty hold no image files"):
        scan(root)
    single = tmp_path / "single"
    (single / "cats").mkdir(parents=True)
    (write_image_folder(tmp_path / "src", per_class=1)["red"][0]).rename(single / "cats/a.png")
    with pytest.raises(FolderError, match="1 class folder"):
        scan(single)


def test_ingest_lists_a_folder_and_keeps_hashes_for_next_time(tmp_path):
    root = tmp_path / "photos"
    write_image_folder(root, per_class=2)
    cache = tmp_path / "cache" / "hashes.json"
    manifest = ingest(root, tmp_path / "raw", cache)
    assert manifest["dataset"] == "folder" and manifest["root"] == str(root.resolve())
    assert manifest["classes"] == ["blue", "green", "red"] and len(manifest["files"]) == 6
    assert folders.read_manifest_files(cache).keys() == {f["path"] for f in manifest["files"]}
    assert not (tmp_path / "raw" / "images").exists()  # a folder is read where it is


def test_ingest_extracts_an_archive(tmp_path):
    import shutil

    write_image_folder(tmp_path / "photos", per_class=2)
    archive = shutil.make_archive(str(tmp_path / "photos"), "gztar", tmp_path / "photos")
    manifest = ingest(tmp_path / "photos.tar.gz", tmp_path / "raw", tmp_path / "c.json")
    assert archive.endswith(".tar.gz")
    assert manifest["root"] == str((tmp_path / "raw" / "images").resolve())
    assert len(manifest["files"]) == 6


@pytest.mark.parametrize(("name", "message"), [("missing", "not found"),
                                               ("notes.txt", "not a .zip, .tar or .tar.gz")])
def test_ingest_refuses_what_is_neither_folder_nor_archive(tmp_path, name, message):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FolderError, match=message):
        ingest(tmp_path / name, tmp_path / "raw", tmp_path / "c.json")
