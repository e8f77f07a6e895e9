"""The Model Registry: versions, the champion alias and its URI."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.common.files import project_root
from imgclf.common.settings import SOURCE_TAG, load_settings
from imgclf.tracking.models import log_classifier
from imgclf.tracking.registry import (
    LEGACY_FOLDER_MODEL,
    current_champion,
    model_tags,
    register_model,
    registered_name,
    resolve_version,
    settings_champion,
)
from imgclf.tracking.runs import stage_run
from imgclf.tracking.store import TrackingError
from imgclf.training.checkpoint import Architecture, save_model


def logged_model(settings, tmp_path) -> str:
    """A real (tiny) model logged the way the train stage logs it."""
    arch = Architecture("mlp", 2, [1, 28, 28], [str(i) for i in range(10)], [0.5], [0.5])
    model = arch.build()
    save_model(tmp_path / "weights.pt", model, arch, {})
    with stage_run("train", settings):
        return log_classifier(model, arch.preprocessing(), tmp_path / "weights.pt",
                              np.zeros((2, 1, 28, 28), dtype=np.uint8), {}, 1).model_uri


def test_the_alias_moves_only_when_the_chooser_says_so_and_the_decision_is_tagged(
        project, client, tmp_path):
    settings = load_settings(project / "params.yaml")
    seen = []

    def choose(champion, version):
        seen.append(champion)
        moves = version != "2"  # versions 1 and 3 win, 2 loses
        return moves, {"champion_decision": "moved" if moves else "kept"}

    for version in ("1", "2", "3"):
        uri = logged_model(settings, tmp_path)
        registered = register_model("clf", uri, {"val/accuracy": "0.9"}, choose)
        assert registered.version == version and registered.champion == (version != "2")
        tags = client.get_model_version("clf", version).tags
        assert tags["val/accuracy"] == "0.9"
        assert tags["champion_decision"] == ("kept" if version == "2" else "moved")
    # the chooser saw the champion of the time, with its tags
    assert seen[0] is None
    assert [champion[0] for champion in seen[1:]] == ["1", "1"]
    assert seen[1][1]["champion_decision"] == "moved"
    assert current_champion("clf")[0] == "3"
    # registering the same model again reuses its version
    again = register_model("clf", uri, {}, lambda champion, version: (False, {}))
    assert again.version == "3"
    assert len(client.search_model_versions("name = 'clf'")) == 3
    assert client.get_registered_model("clf").description == "Trained by the imgclf pipeline"
    assert current_champion("no-such-model") is None


def _register(settings, tmp_path, name=None, champion=True):
    """Register a tiny model for ``settings``' data, as the evaluate stage does."""
    name = name or registered_name(settings)
    source = settings.data.source(project_root())
    return register_model(name, logged_model(settings, tmp_path), {SOURCE_TAG: source},
                          lambda current, version: (champion, {}),
                          model_tags=model_tags(settings))


@pytest.mark.parametrize(("data", "name"), [
    ({"dataset": "fashion-mnist"}, "fashion-mnist-classifier"),
    ({"dataset": "mnist"}, "mnist-classifier"),
    ({"dataset": "folder", "path": "data/digits"}, "digits-classifier"),
    ({"dataset": "folder", "path": "data/Leaf Photos/"}, "leaf-photos-classifier"),
    ({"dataset": "folder", "path": "/srv/shapes.tar.gz"}, "shapes-classifier"),
    ({"dataset": "folder", "path": "pets.zip"}, "pets-classifier"),
])
def test_each_dataset_has_a_registered_model_named_after_it(project, set_params, data, name):
    set_params(**{f"data__{key}": value for key, value in data.items()})
    assert registered_name(load_settings(project / "params.yaml")) == name


def test_two_folders_of_one_name_never_share_a_registered_model(project, set_params, client,
                                                                tmp_path):
    set_params(data__dataset="folder", data__path="data/a/images")
    first = load_settings(project / "params.yaml")
    assert _register(first, tmp_path).name == "images-classifier"
    assert client.get_registered_model("images-classifier").tags[SOURCE_TAG] == (
        "folder:data/a/images")
    assert registered_name(first) == "images-classifier"  # the same folder keeps its name
    set_params(data__dataset="folder", data__path=str(project / "data/b/images"))
    second = load_settings(project / "params.yaml")
    other = registered_name(second)
    assert other != "images-classifier" and other.startswith("images-")
    assert other.endswith("-classifier")
    assert registered_name(second) == other  # stable
    # a legacy shared registered model, untagged, is not taken for a folder's own
    set_params(data__dataset="folder", data__path="data/folder")
    register_model(LEGACY_FOLDER_MODEL, logged_model(first, tmp_path), {},
                   lambda current, version: (True, {}))
    assert registered_name(load_settings(project / "params.yaml")) != LEGACY_FOLDER_MODEL


def test_a_name_the_user_gives_is_shared_and_untagged(project, set_params):
    set_params(data__dataset="folder", data__path="data/digits",
               evaluate__registered_model="team-model")
    settings = load_settings(project / "params.yaml")
    assert registered_name(settings) == "team-model" and model_tags(settings) == {}


def test_the_default_model_is_the_current_datas_champion(project, set_params, client,
                                                          tmp_path):
    set_params(data__dataset="folder", data__path="data/digits")
    digits = load_settings(project / "params.yaml")
    _register(digits, tmp_path)
    champion = settings_champion(digits)
    assert (champion.name, champion.version) == ("digits-classifier", "1")
    assert champion.uri == "models:/digits-classifier/1"  # the version, not the alias
    assert resolve_version("models:/digits-classifier@champion") == champion.uri
    assert resolve_version("runs:/abc/model") == "runs:/abc/model"

    set_params(data__dataset="folder", data__path="data/shapes")
    with pytest.raises(TrackingError) as raised:  # never the digits' model
        settings_champion(load_settings(project / "params.yaml"))
    message = str(raised.value)
    assert "no model for the folder data/shapes yet" in message
    assert "'shapes-classifier'" in message and "make run" in message and "--model" in message


def test_a_shared_name_never_serves_another_datasets_champion(project, set_params, client,
                                                              tmp_path):
    set_params(data__dataset="folder", data__path="data/digits",
               evaluate__registered_model="team-model")
    _register(load_settings(project / "params.yaml"), tmp_path)
    set_params(data__dataset="folder", data__path="data/shapes",
               evaluate__registered_model="team-model")
    with pytest.raises(TrackingError) as raised:
        settings_champion(load_settings(project / "params.yaml"))
    assert ("was trained on the folder data/digits, not on the folder data/shapes"
            in str(raised.value))


def test_no_champion_points_to_the_legacy_shared_model(project, set_params, client, tmp_path):
    settings = load_settings(project / "params.yaml")
    register_model(LEGACY_FOLDER_MODEL, logged_model(settings, tmp_path), {},
                   lambda current, version: (True, {}))
    set_params(data__dataset="folder", data__path="data/digits")
    with pytest.raises(TrackingError, match=f"models:/{LEGACY_FOLDER_MODEL}@champion"):
        settings_champion(load_settings(project / "params.yaml"))
    # the legacy versions stay where they were, readable
    assert current_champion(LEGACY_FOLDER_MODEL)[0] == "1"
