"""imgclf-predict: image files, folders and globs in; one row per file out."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

from imgclf import predict
from imgclf.commands import predict as predict_work
from imgclf.common.cli import EXIT_USER_ERROR, run_stage
from imgclf.common.errors import UserError
from imgclf.data.splits import Meta, Split, load_split, save_splits
from imgclf.training.checkpoint import Architecture, save_model

from .conftest import photo

ARCH = Architecture("cnn", 4, [3, 16, 16], ["blue", "red/ish"], [0.5] * 3, [0.25] * 3)


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_model(path, ARCH.build().eval(), ARCH, {})
    return path


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    photo((200, 20, 20), (30, 20), 0).save(root / "a.png")
    photo((20, 20, 200), (50, 50), 1).save(root / "sub" / "b.jpg", quality=90)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    return root


def test_paths_expand_to_files_folders_and_globs_once_each(images):
    found = predict_work.expand([str(images), str(images / "a.png"), str(images / "**" / "*.jpg")])
    assert [p.relative_to(images).as_posix() for p in found] == ["a.png", "notes.txt",
                                                                 "sub/b.jpg"]
    with pytest.raises(UserError, match="no such file or folder"):
        predict_work.expand([str(images / "missing.png")])


def test_rows_name_classes_and_bad_files_get_an_error(images, model_file, tmp_path, capsys):
    out = tmp_path / "rows.json"
    code = run_stage(predict.main, [str(images), "--model", str(model_file), "--output",
                                    str(out), "--top-k", "5", "--batch-size", "1"])
    assert code == 0
    rows = {row["path"].split("/")[-1]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"a.png", "b.jpg", "notes.txt"}
    assert "not a readable image" in rows["notes.txt"]["error"]
    good = rows["a.png"]
    assert good["class"] in ARCH.classes and good["class"] == good["class_1"]
    assert good["probability_1"] + good["probability_2"] == pytest.approx(1, abs=1e-5)
    assert "class_3" not in good  # top-k is capped at the class count
    assert "2 of 3 files classified" in capsys.readouterr().err


def test_rows_go_to_stdout_as_csv(images, model_file, capsys):
    assert run_stage(predict.main, [str(images / "a.png"), "--model", str(model_file)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["class"] in ARCH.classes and rows[0]["error"] == ""
    assert rows[0]["model"] == str(model_file)  # which model answered, on every row


def test_a_model_of_other_data_than_the_current_gets_one_line_of_warning(
        images, model_file, project, set_params, capsys):
    set_params(data__dataset="fashion-mnist")  # 10 grey classes; the model has 2 colour ones
    assert run_stage(predict.main, [str(images / "a.png"), "--model", str(model_file)]) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning.startswith(f"warning: {model_file} was trained on other data")
    assert "classes 2 (blue, red/ish) against 10 (T-shirt/top, Trouser, Pullover, Dress, ...)" \
        in warning
    assert "3 channels against 1" in warning and "size 16x16 against 28x28" in warning


def test_no_readable_file_or_a_bad_output_name_fails_before_writing(images, model_file,
                                                                    tmp_path, capsys):
    out = tmp_path / "rows.csv"
    code = run_stage(predict.main, [str(images / "notes.txt"), "--model", str(model_file),
                                    "--output", str(out)])
    assert code == EXIT_USER_ERROR and not out.exists()
    assert "none of the 1 files is a readable image" in capsys.readouterr().err
    code = run_stage(predict.main, [str(images), "--model", str(model_file), "--output",
                                    str(tmp_path / "rows.xlsx")])
    assert code == EXIT_USER_ERROR and ".csv or .json" in capsys.readouterr().err
    code = run_stage(predict.main, [str(images), "--model", str(tmp_path / "nope.pt")])
    assert code == EXIT_USER_ERROR and "no such model file" in capsys.readouterr().err


def test_exported_samples_come_back_with_their_labels_and_accuracy(tmp_path, model_file,
                                                                   capsys):
    rng = np.random.default_rng(0)
    split = Split(torch.from_numpy(rng.integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)),
                  torch.tensor([0, 1, 1, 0, 1, 0]))
    meta = Meta("folder", ARCH.classes, ARCH.in_shape, ARCH.mean, ARCH.std, {})
    save_splits(tmp_path / "data", {"test": split}, meta)
    out = tmp_path / "exported"
    assert run_stage(predict.main, ["--export-samples", str(out), "--data",
                                    str(tmp_path / "data")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["blue", "red_ish"]
    back = predict_work.expand([str(out)])
    assert len(back) == 6
    capsys.readouterr()
    assert run_stage(predict.main, [str(out), "--model", str(model_file)]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    network = ARCH.build()
    network.load_state_dict(torch.load(model_file, weights_only=True)["state_dict"])
    expected = network.eval()(load_split(tmp_path / "data", "test").images.float() / 255)
    truth = {f"{i:06d}.png": ARCH.classes[int(label)] for i, label in enumerate(split.labels)}
    predicted = {row["path"].split("/")[-1]: row["class"] for row in rows}
    assert predicted == {f"{i:06d}.png": ARCH.classes[int(k)]
                         for i, k in enumerate(expected.argmax(1))}
    accuracy = sum(predicted[name] == truth[name] for name in truth) / 6
    assert f"accuracy against the folder names: {accuracy:.4f} (95% interval " in captured.err
