from __future__ import annotations

import re
import shlex

import pytest
from ruamel.yaml import YAML

from imgclf import presets
from imgclf.common.cli import run_stage
from imgclf.common.settings import SettingsError, parse_settings

from .conftest import REPO


def repo_yaml(path):
    return YAML(typ="safe").load((REPO / path).read_text())


def set_dotted(params: dict, assignment: str) -> None:
    """Apply one ``-S key=value`` the way DVC does: the value is YAML."""
    key, value = assignment.split("=", 1)
    *sections, leaf = key.split(".")
    for section in sections:
        params = params[section]
    params[leaf] = YAML(typ="safe").load(value)


def test_long_preset_is_valid_and_its_values_round_trip_through_dvc_syntax():
    params = repo_yaml("params.yaml")
    settings, values = presets.apply(params, repo_yaml("presets/long.yaml"), "long.yaml")
    assert settings.train.epochs > parse_settings(params).train.epochs
    for value in values:
        set_dotted(params, value)
    assert parse_settings(params) == settings


def test_nested_values_and_strings_with_spaces_survive_the_shell(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    preset = tmp_path / "p.yaml"
    preset.write_text("tune:\n  lr: {low: 0.002, high: 0.01}\n  batch_size: [64, 128]\n"
                      "tracking:\n  experiment: my runs\n")
    assert run_stage(presets.main, [str(preset)]) == 0
    args = shlex.split(capsys.readouterr().out)
    assert args[::2] == ["-S"] * 4
    params = repo_yaml("params.yaml")
    for value in args[1::2]:
        set_dotted(params, value)
    settings = parse_settings(params)
    assert (settings.tune.lr.low, settings.tune.lr.high) == (0.002, 0.01)
    assert list(settings.tune.batch_size) == [64, 128]
    assert settings.tracking.experiment == "my runs"


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  widht: 32\n", "train.widht: unknown key (did you mean 'width'?)"),
    ("train:\n  epochs: -1\n", "train.epochs"),
    ("epochs: 30\n", "expected params sections"),
    ("- train\n", "expected params sections"),
])
def test_bad_preset_is_refused_naming_the_key(text, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        presets.apply(repo_yaml("params.yaml"), YAML(typ="safe").load(text), "p.yaml")


def test_unknown_preset_lists_the_known_ones(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert run_stage(presets.main, ["longest"]) == 2
    assert "no preset 'longest' in presets/ (known: long)" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "message"), [
    ("train: [width\n", "not valid YAML"),
    (None, "file not found"),
])
def test_unreadable_preset_file_is_named_with_the_problem(tmp_path, capsys, monkeypatch, text,
                                                           message):
    monkeypatch.chdir(REPO)
    preset = tmp_path / "mine.yaml"
    if text is not None:
        preset.write_text(text)
    assert run_stage(presets.main, [str(preset)]) == 2
    err = capsys.readouterr().err
    assert str(preset) in err and message in err
    assert "Traceback" not in err
