"""The Model Registry: versions, the champion alias and its URI."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.common.settings import load_settings
from imgclf.tracking.models import log_classifier
from imgclf.tracking.registry import champion_uri, register_model
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
                              np.zeros((2, 1, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize(("metric", "values", "champions"), [
    ("test/accuracy", [0.80, 0.70, 0.90], ["1", "1", "3"]),
    ("test/loss", [0.50, 0.60, 0.40], ["1", "1", "3"]),
])
def test_champion_moves_only_to_a_better_model(project, client, tmp_path, metric, values,
                                               champions):
    settings = load_settings(project / "params.yaml")
    for value, champion in zip(values, champions, strict=True):
        uri = logged_model(settings, tmp_path)
        registered = register_model("clf", uri, {metric: value}, metric,
                                    {"data_version": "d1"})
        current = client.get_model_version_by_alias("clf", "champion")
        assert str(current.version) == champion
        assert registered.champion == (registered.version == champion)
        assert client.get_model_version("clf", registered.version).tags[metric] == str(value)
    # registering the same model again reuses its version
    again = register_model("clf", uri, {metric: values[-1]}, metric, {})
    assert again.version == "3"
    assert len(client.search_model_versions("name = 'clf'")) == 3
    assert client.get_registered_model("clf").description == "Trained by the imgclf pipeline"


def test_champion_uri_needs_a_champion(project, client):
    with pytest.raises(TrackingError, match="no 'champion' version yet"):
        champion_uri("nothing-registered")
