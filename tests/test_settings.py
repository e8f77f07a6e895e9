from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgclf import download, preprocess, train
from imgclf.common.cli import run_stage
from imgclf.common.settings import Settings, SettingsError, load_settings, parse_settings

from .conftest import (
    DOWNLOAD_ARGS,
    PREPROCESS_ARGS,
    REPO,
    TINY,
    repo_params,
    runs_of,
    write_yaml,
)


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
    path = Path(REPO / "params.yaml").read_text().replace("lr: 0.005 ", "lr: 1e-3 ")
    from ruamel.yaml import YAML

    settings = parse_settings(YAML(typ="safe", pure=True).load(path))
    assert settings.train.lr == pytest.approx(0.001)


@pytest.mark.parametrize(("dataset", "flips"), [
    ("fashion-mnist", "flip"), ("cifar10", "flip"), ("folder", "flip"), ("mnist", "none")])
def test_auto_flips_only_where_a_mirrored_image_keeps_its_class(dataset, flips):
    raw = repo_params(**{"data.dataset": dataset, "train.model": "cnn"})
    assert (raw["train"]["augment"], raw["train"]["tta"]) == ("auto", "auto")
    train = parse_settings(raw).train
    assert (train.augment, train.tta) == (flips, flips)  # what every stage and log sees
    # a value given is kept, for MNIST too
    raw["train"]["augment"], raw["train"]["tta"] = "crop_flip", "flip"
    assert (parse_settings(raw).train.augment, parse_settings(raw).train.tta) == (
        "crop_flip", "flip")


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
    ({"train.keep": "final"}, "train.keep", "'last' or 'best'"),
    ({"data.dataset": "imagenet"}, "data.dataset",
     "'fashion-mnist', 'mnist', 'cifar10' or 'folder'"),
    ({"train.model": "resnet"}, "train.model", "'mlp', 'cnn', 'convnet', 'cifar_cnn'"),
    ({"train.precision": "fp16"}, "train.precision", "'auto', 'bf16' or 'fp32'"),
    ({"data.val_fraction": 0}, "data.val_fraction", "greater than 0"),
    ({"data.val_fraction": 1}, "data.val_fraction", "less than 1"),
    ({"data.val_fraction": 1.5}, "data.val_fraction", "less than 1"),
    ({"train.lrr": 0.1}, "train.lrr", "did you mean 'lr'"),
    ({"train.model": "cifar_cnn"}, "train.model", "built for 32x32 colour images"),
    ({"train.init": "imagenet"}, "train", "imagenet weights exist only for resnet18"),
    ({"train.init": "pretrained"}, "train.init", "random, imagenet, an MLflow model URI"),
    ({"train.freeze": "backbone"}, "train", "set train.init"),
    ({"train.freeze": "head"}, "train.freeze", "'none' or 'backbone'"),
    ({"train.augment": "mirror"}, "train.augment", "'auto', 'none', 'crop', 'flip' or"),
    ({"train.tta": True}, "train.tta", "'auto', 'none' or 'flip'"),
    ({"data.dataset": "folder", "train.model": "cifar_cnn"}, "train.model",
     "data.image_size: [32, 32]"),
    ({"data.image_size": [64]}, "data.image_size", "[height, width]"),
    ({"data.image_size": [4, 64]}, "data.image_size", "each 8 to 1024"),
    ({"data.image_size": "64x64"}, "data.image_size", "[height, width]"),
    ({"data.resize": "stretch"}, "data.resize", "'squash', 'crop' or 'pad'"),
    ({"data.channels": 2}, "data.channels", "'auto', 1 or 3"),
    ({"data.channels": "3"}, "data.channels", "'auto', 1 or 3"),
    ({"data.test_fraction": 1}, "data.test_fraction", "less than 1"),
    ({"data.path": ""}, "data.path", "at least 1 character"),
    ({"data.dedupe": "yes"}, "data.dedupe", "valid boolean"),
    ({"tune.sampler": "cmaes"}, "tune.sampler", "'tpe' or 'gp'"),
    ({"tune.warmup_epochs": 0}, "tune.warmup_epochs", "greater than or equal to 1"),
    ({"tune.warmup_epochs": 3, "tune.epochs": 2}, "tune", "no trial could be pruned"),
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


# --- fuzzing ---------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(-5, 300), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                st.integers(), max_size=2))


@st.composite
def mutated_params(draw):
    """The repository's params with a few keys changed, removed or added."""
    raw = repo_params(**TINY)
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([*raw, "extra", "ünïcødé"]))
        action = draw(st.sampled_from(["set", "delete", "add", "replace-section"]))
        keys = list(raw.get(section, {}) or {}) if isinstance(raw.get(section), dict) else []
        if action == "replace-section":
            raw[section] = draw(SCALARS)
        elif action == "delete" and keys:
            del raw[section][draw(st.sampled_from(keys))]
        elif action == "set" and keys:
            raw[section][draw(st.sampled_from(keys))] = draw(SCALARS)
        elif isinstance(raw.get(section), dict):
            raw[section][draw(st.text(min_size=1, max_size=8))] = draw(SCALARS)
    return raw


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=mutated_params())
def test_fuzzed_params_give_a_clean_error_or_a_clean_run(project, tiny_mirror, client, raw,
                                                         capsys):
    for section in raw.values():  # the tiny mirror is the only source
        if isinstance(section, dict) and "mirrors" in section:
            section["mirrors"] = [str(tiny_mirror)]
    write_yaml(project / "params.yaml", raw)
    shutil.rmtree(project / "data", ignore_errors=True)
    shutil.rmtree(project / "reports", ignore_errors=True)

    code = run_stage(download.main, DOWNLOAD_ARGS)  # must never raise

    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 0:
        assert (project / "data/raw/manifest.json").is_file()
    else:
        assert code == 2 and err.startswith("error: ")
        assert not (project / "data/raw/manifest.json").exists()
        assert not (project / "reports/download_metrics.json").exists()
    assert all(r.info.status != "RUNNING" for r in runs_of(client))
