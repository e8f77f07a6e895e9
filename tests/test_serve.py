"""make serve: which model it serves."""

from __future__ import annotations

import argparse

import pytest

from imgclf.commands.serve import served_model
from imgclf.common.errors import UserError
from imgclf.common.settings import load_settings
from imgclf.tracking.store import TrackingError

from .test_registry import _register


def args(**given) -> argparse.Namespace:
    return argparse.Namespace(params="params.yaml", model=given.get("model"))


def test_serve_takes_the_current_datas_champion_as_a_version(project, set_params, client,
                                                             tmp_path):
    set_params(data__dataset="folder", data__path="data/digits")
    with pytest.raises(TrackingError, match="no model for the folder data/digits yet"):
        served_model(args())
    _register(load_settings(project / "params.yaml"), tmp_path)
    assert served_model(args()) == "models:/digits-classifier/1"
    assert served_model(args(model="models:/digits-classifier@champion")) == (
        "models:/digits-classifier/1")
    set_params(data__dataset="folder", data__path="data/shapes")
    with pytest.raises(TrackingError):  # never the digits' model for the shapes
        served_model(args())
    with pytest.raises(UserError, match="serve a logged model"):
        served_model(args(model="models/model.pt"))

