"""Saved models and training states: weights plus plain values, never unpickled code."""

from __future__ import annotations

import pickle

import pytest
import torch

from imgclf.common.errors import UserError
from imgclf.common.tensorfiles import save_tensors
from imgclf.training.checkpoint import (
    Architecture,
    load_model,
    load_training_state,
    save_model,
    save_training_state,
)

ARCH = Architecture("cnn", 4, [1, 28, 28], [f"class {i}" for i in range(10)], [0.3], [0.2],
                    "flip")


class Exploit:
    """Unpickling this runs ``open(marker, "w")``: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_saved_model_loads_as_the_same_network(tmp_path):
    model = ARCH.build().eval()
    info = {"mlflow_run_id": "abc", "data_version": "v1"}
    save_model(tmp_path / "model.pt", model, ARCH, info)

    loaded, arch, loaded_info = load_model(tmp_path / "model.pt")

    assert arch == ARCH and loaded_info == info
    assert not loaded.training
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    torch.load(tmp_path / "model.pt", weights_only=True)  # tensors and plain values only


def test_a_model_file_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"arch": Exploit(marker)}))
    with pytest.raises(UserError, match="refused: not a weights-only tensor file"):
        load_model(path)
    assert not marker.exists()


def test_a_tensor_file_that_is_not_a_model_says_how_to_fix_it(tmp_path):
    save_tensors(tmp_path / "model.pt", {"weights": torch.zeros(2)})
    with pytest.raises(UserError, match=r"not a model saved by the train stage .*dvc repro train"):
        load_model(tmp_path / "model.pt")
    with pytest.raises(UserError, match="not found; run the stage that writes it"):
        load_model(tmp_path / "missing.pt")


def test_training_state_resumes_only_under_its_own_key(tmp_path):
    path = tmp_path / "state.pt"
    assert load_training_state(path, "key") is None  # nothing to resume
    save_training_state(path, "key", {"epoch": 3, "weights": torch.ones(2)})
    state = load_training_state(path, "key")
    assert state is not None and state["epoch"] == 3 and torch.equal(state["weights"],
                                                                      torch.ones(2))
    assert load_training_state(path, "other settings") is None


def test_a_training_state_carrying_code_is_ignored_not_run(tmp_path, caplog):
    marker = tmp_path / "pwned"
    path = tmp_path / "state.pt"
    path.write_bytes(pickle.dumps({"key": Exploit(marker)}))
    assert load_training_state(path, "key") is None
    assert not marker.exists()
    assert "not resuming" in caplog.text
