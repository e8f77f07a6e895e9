"""A folder dataset's splits and audit: bad files skipped and listed, leakage removed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from imgclf.common.settings import parse_settings
from imgclf.data import folder
from imgclf.data.audit import Header, auto_channels, auto_size, decode_all
from imgclf.data.folder import FolderDataError
from imgclf.data.folders import scan

from .conftest import photo, repo_params, write_image_folder


def cfg(**changes):
    return parse_settings(repo_params(**{"data.dataset": "folder", **{
        f"data.{k}": v for k, v in changes.items()}})).data


def build(root, **changes):
    """The decoded folder, each split's labels (by name), and the audit."""
    settings = cfg(**changes)
    data = folder.load(root, scan(root), settings, str(root), workers=1)
    found = folder.splits(data, settings, str(root))
    labels = {name: found.labels[rows] for name, rows in found.rows.items()}
    assert all((found.labels[rows] >= 0).all() for rows in found.rows.values())
    return data, labels, found.audit


def test_a_folder_becomes_stratified_splits_at_the_common_size(tmp_path):
    write_image_folder(tmp_path / "p", per_class=20, sizes=((40, 30), (40, 30), (50, 40)))
    data, splits, audit = build(tmp_path / "p", val_fraction=0.25, test_fraction=0.2)
    assert data.classes == ["blue", "green", "red"]
    assert data.images.shape[1:] == (3, 30, 40)  # 40x30 is the most common; RGB
    assert {name: len(s) for name, s in splits.items()} == {"train": 36, "val": 12, "test": 12}
    assert np.bincount(splits["test"]).tolist() == [4, 4, 4]
    assert audit["classes"] == {"blue": 20, "green": 20, "red": 20}
    assert audit["imbalance_ratio"] == 1.0
    assert audit["original_sizes"] == {"40x30": 14 * 3, "50x40": 6 * 3}
    assert audit["skipped"] == 0 and audit["leaked"] == 0


def test_given_train_and_test_folders_are_kept(tmp_path):
    write_image_folder(tmp_path / "p", per_class=8, split="train")
    write_image_folder(tmp_path / "p", per_class=3, split="test", seed=1)
    data, splits, _ = build(tmp_path / "p", image_size=[16, 16], resize="crop")
    assert len(splits["test"]) == 9 and len(splits["train"]) + len(splits["val"]) == 24
    assert data.images.shape[2:] == (16, 16)


def test_bad_files_are_skipped_and_listed_with_their_reason(tmp_path):
    root = tmp_path / "p"
    write_image_folder(root, per_class=20)
    (root / "red/empty.png").write_bytes(b"")
    (root / "green/words.jpg").write_text("not a picture")
    good = (root / "blue/blue1.jpg").read_bytes()
    (root / "blue/cut.jpg").write_bytes(good[: len(good) // 3])
    _data, splits, audit = build(root)
    assert audit["files"] == 63 and audit["images"] == 60 and audit["skipped"] == 3
    assert {s["path"] for s in audit["skipped_files"]} == {"red/empty.png", "green/words.jpg",
                                                           "blue/cut.jpg"}
    assert all("not a readable image" in s["reason"] for s in audit["skipped_files"])
    assert sum(len(s) for s in splits.values()) == 60


@pytest.mark.parametrize("dedupe", [True, False])
def test_a_test_image_also_in_training_is_leakage(tmp_path, dedupe):
    root = tmp_path / "p"
    write_image_folder(root, per_class=8, split="train")
    write_image_folder(root, per_class=3, split="test", seed=1)
    shutil.copy(root / "test/red/red1.jpg", root / "train/red/copy-of-test.jpg")
    shutil.copy(root / "train/red/red2.png", root / "train/red/twin.png")
    _data, splits, audit = build(root, dedupe=dedupe)
    assert audit["leaked"] == 1
    assert audit["leaks"] == [{"test": "test/red/red1.jpg",
                               "train": ["train/red/copy-of-test.jpg"]}]
    assert audit["duplicates"] == 2  # the leak and the twin within train
    assert sorted(map(sorted, audit["duplicate_files"])) == [
        ["test/red/red1.jpg", "train/red/copy-of-test.jpg"],
        ["train/red/red2.png", "train/red/twin.png"]]
    assert audit["removed"] == (1 if dedupe else 0)
    assert len(splits["train"]) + len(splits["val"]) == 26 - (1 if dedupe else 0)


def test_grey_only_when_every_image_is_grey(tmp_path):
    root = tmp_path / "p"
    for name, value in (("dark", 30), ("light", 220)):
        (root / name).mkdir(parents=True)
        for i in range(12):
            photo((value,) * 3, (20, 20), i).convert("L").save(root / name / f"{i}.png")
    data, _, audit = build(root, val_fraction=0.25)
    assert data.images.shape[1] == 1 and audit["channels"] == 1
    photo((200, 30, 30), (20, 20), 99).save(root / "dark/colour.png")
    assert build(root, val_fraction=0.25)[0].images.shape[1] == 3
    assert build(root, val_fraction=0.25, channels=1)[0].images.shape[1] == 1


def test_a_folder_of_unreadable_files_is_a_clear_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "p" / name).mkdir(parents=True)
        (tmp_path / "p" / name / "x.png").write_text("no")
    with pytest.raises(FolderDataError, match="none of the 2 image files could be read"):
        build(tmp_path / "p")


def test_a_class_without_a_readable_image_is_a_clear_error(tmp_path):
    root = tmp_path / "p"
    write_image_folder(root, per_class=4)
    (root / "grey").mkdir()
    (root / "grey/x.png").write_text("no")
    with pytest.raises(FolderDataError, match="class\\(es\\) grey have no readable image"):
        build(root)


def test_too_few_images_for_the_splits_is_a_clear_error(tmp_path):
    write_image_folder(tmp_path / "p", per_class=2)
    with pytest.raises(FolderDataError, match="too few images for the splits asked"):
        build(tmp_path / "p", test_fraction=0.1)


def test_auto_size_and_channels():
    assert auto_size([Header((480, 640), "RGB"), Header((480, 640), "RGB"),
                      Header((28, 28), "L"), None]) == (48, 64)
    assert auto_size([Header((20, 30), "L")]) == (20, 30)
    assert auto_channels([Header((1, 1), "L"), Header((1, 1), "I;16")]) == 1
    assert auto_channels([Header((1, 1), "L"), Header((1, 1), "P")]) == 3


def test_parallel_decoding_matches_one_process(tmp_path):
    root = tmp_path / "p"
    write_image_folder(root, per_class=50)
    (root / "red/bad.png").write_text("no")
    files = scan(root)
    one = decode_all(root, files, (12, 12), "pad", 3, workers=1)
    two = decode_all(root, files, (12, 12), "pad", 3, workers=2)
    assert (one.images == two.images).all() and one.hashes == two.hashes
    assert one.files == two.files and one.skipped == two.skipped and len(one.skipped) == 1


def test_parallel_decoding_writes_into_shared_memory_only(tmp_path):
    root = tmp_path / "p"
    write_image_folder(root, per_class=80)
    files = scan(root)
    private = np.zeros((len(files), 3, 12, 12), dtype=np.uint8)
    with pytest.raises(ValueError, match="must be shared with the workers"):
        decode_all(root, files, (12, 12), "squash", 3, workers=2, out=private)
    mapped = np.lib.format.open_memmap(tmp_path / "out.npy", "w+", np.uint8, private.shape)
    decoded = decode_all(root, files, (12, 12), "squash", 3, workers=2, out=mapped)
    assert decoded.images is mapped and len(decoded.rows) == len(files)
    assert (np.load(tmp_path / "out.npy")[decoded.rows].reshape(len(files), -1).max(1) > 0).all()
