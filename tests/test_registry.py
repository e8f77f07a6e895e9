"""The Model Registry: versions, the champion alias and its URI."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.common.settings import load_settings
from imgclf.tracking.models import log_classifier
from imgclf.tracking.registry import champion_uri, current_champion, register_model
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


def test_champion_uri_needs_a_champion(project, client):
    with pytest.raises(TrackingError, match="no 'champion' version yet"):
        champion_uri("nothing-registered")
