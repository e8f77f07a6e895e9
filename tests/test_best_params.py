"""The tune -> train hand-off file: written and read in one place, values exact."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from imgclf.common.settings import SettingsError, parse_settings
from imgclf.tuning import best_params
from imgclf.tuning.best_params import BestParams

from .conftest import repo_params


def test_what_is_written_is_read_back_exactly(tmp_path):
    path = tmp_path / "best_params.yaml"
    best = BestParams(0.005176340429875837, 256, {"download": "a1", "tune": "b2"})
    best_params.write(path, best, "best of study s")

    assert best_params.read(path) == best
    text = path.read_text()
    assert text.startswith("# Written by the tune stage (best of study s); train reads it.\n")
    # DVC reads it as a params file: train.lr and train.batch_size are plain YAML keys
    assert YAML(typ="safe").load(text)["train"] == {"lr": 0.005176340429875837,
                                                    "batch_size": 256}


def test_tuned_values_replace_params_yaml_and_are_validated(tmp_path):
    settings = parse_settings(repo_params())
    tuned = BestParams(0.0123, 256, {}).apply(settings, "reports/best_params.yaml")
    assert (tuned.train.lr, tuned.train.batch_size) == (0.0123, 256)
    assert tuned.train.epochs == settings.train.epochs
    with pytest.raises(SettingsError, match=r"reports/best_params\.yaml is invalid:\n"
                                            r"  train\.lr: Input should be greater than 0"):
        BestParams(-1.0, 256, {}).apply(settings, "reports/best_params.yaml")


@pytest.mark.parametrize(("text", "message"), [
    (None, "not found; run the tune stage first"),
    ("train: [1, 2]\n", "not a best-params file"),
    ("lineage: {}\n", "not a best-params file"),
    ("train: {lr: 0.1\n", "not a best-params file"),
])
def test_a_missing_or_broken_file_names_the_fix(tmp_path, text, message):
    path = tmp_path / "best_params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SettingsError, match=message):
        best_params.read(path)


def test_a_file_without_lineage_still_gives_its_values(tmp_path):
    path = tmp_path / "best_params.yaml"
    path.write_text("train:\n  lr: 0.01\n  batch_size: 64\n")
    assert best_params.read(path) == BestParams(0.01, 64, {})
