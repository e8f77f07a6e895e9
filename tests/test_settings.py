from __future__ import annotations

from pathlib import Path

import pytest

from imgclf import download, preprocess, train
from imgclf.cli import run_stage
from imgclf.settings import Settings, SettingsError, load_settings, parse_settings

from .conftest import DOWNLOAD_ARGS, PREPROCESS_ARGS, REPO, repo_params, runs_of


def test_repository_params_are_valid():
    settings = load_settings(REPO / "params.yaml")
    assert isinstance(settings, Settings)
    assert settings.data.dataset == "fashion-mnist"
    assert "/usr/share/datasets/{dataset}" in settings.download.mirrors


def test_settings_are_immutable():
    settings = parse_settings(repo_params())
    with pytest.raises(Exception, match="frozen"):
        settings.train.lr = 1.0  # type: ignore[misc]


def test_yaml_1_2_numbers_match_dvc():
    # ruamel (like DVC) reads 1e-3 as a float; a YAML 1.1 loader would give the string "1e-3".
    path = Path(REPO / "params.yaml").read_text().replace("lr: 0.003", "lr: 1e-3")
    from ruamel.yaml import YAML

    settings = parse_settings(YAML(typ="safe", pure=True).load(path))
    assert settings.train.lr == pytest.approx(0.001)


BAD = [
    ({"train.lr": 0}, "train.lr", "greater than 0"),
    ({"train.lr": -0.1}, "train.lr", "greater than 0"),
    ({"train.lr": "fast"}, "train.lr", "valid number"),
    ({"train.lr": float("nan")}, "train.lr", "nan"),
    ({"train.batch_size": 0}, "train.batch_size", "greater than or equal to 1"),
    ({"train.batch_size": 3.5}, "train.batch_size", "valid integer"),
    ({"train.batch_size": "64"}, "train.batch_size", "valid integer"),
    ({"train.batch_size": True}, "train.batch_size", "valid integer"),
    ({"train.epochs": None}, "train.epochs", "valid integer"),
    ({"data.dataset": "imagenet"}, "data.dataset", "'fashion-mnist', 'mnist' or 'cifar10'"),
    ({"train.model": "resnet"}, "train.model", "'mlp', 'cnn' or 'cifar_cnn'"),
    ({"data.val_fraction": 0}, "data.val_fraction", "greater than 0"),
    ({"data.val_fraction": 1}, "data.val_fraction", "less than 1"),
    ({"data.val_fraction": 1.5}, "data.val_fraction", "less than 1"),
    ({"train.lrr": 0.1}, "train.lrr", "did you mean 'lr'"),
    ({"data.dataset": "cifar10"}, "train.model", "cifar_cnn"),
    ({"download.mirrors": "/data"}, "download.mirrors", "valid tuple"),
    ({"tracking.experiment": ""}, "tracking.experiment", "at least 1 character"),
]


@pytest.mark.parametrize(("overrides", "key", "phrase"), BAD)
def test_bad_values_name_the_key(overrides, key, phrase):
    raw = repo_params()
    for dotted, value in overrides.items():
        section, name = dotted.split(".")
        raw[section][name] = value
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw)
    message = str(caught.value)
    assert f"{key}:" in message
    assert phrase in message


def test_missing_key_and_unknown_section():
    raw = repo_params()
    del raw["train"]["epochs"]
    raw["trian"] = {}
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw)
    message = str(caught.value)
    assert "train.epochs: missing key" in message
    assert "trian: unknown key (did you mean 'train'?)" in message


@pytest.mark.parametrize("text", ["train: [1, 2", "- a\n- b\n", "just a string"])
def test_unreadable_yaml(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=str(path)):
        load_settings(path)


def test_missing_file(tmp_path):
    with pytest.raises(SettingsError, match="file not found"):
        load_settings(tmp_path / "params.yaml")


@pytest.mark.parametrize("stage", [download, preprocess, train])
def test_stage_refuses_bad_params_before_any_work(project, set_params, client, capsys, stage):
    set_params(train__lr=-1)
    argv = {
        download: DOWNLOAD_ARGS,
        preprocess: PREPROCESS_ARGS,
        train: ["--data", "data/processed", "--model", "models/model.pt", "--metrics",
                "reports/m.json", "--plots", "reports/h.csv"],
    }[stage]
    before = sorted(p.relative_to(project) for p in project.rglob("*"))

    code = run_stage(stage.main, argv)

    err = capsys.readouterr().err
    assert code == 2
    assert "train.lr: Input should be greater than 0 (got -1)" in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
    assert runs_of(client) == []
