"""The training core: builds the recipe's network, trains it repeatably, resumes only the
same run, and never unpickles a training state."""

from __future__ import annotations

import pickle

import pytest
import torch

from imgclf.common.settings import load_settings
from imgclf.data.splits import load_meta, load_split
from imgclf.training import trainer
from imgclf.training.checkpoint import save_training_state
from imgclf.training.engine import DivergedError


def core_inputs(processed, project, **recipe):
    settings = load_settings(project / "params.yaml")
    return (load_split(processed, "train"), load_split(processed, "val"), load_meta(processed),
            settings.train.model_copy(update=recipe))


def test_same_seed_gives_identical_results_on_cpu(processed, project):
    inputs = core_inputs(processed, project, epochs=2, threads=2)
    first = trainer.train(*inputs)
    second = trainer.train(*inputs)
    assert first.history == [
        type(s)(**{**s.__dict__, "seconds": f.seconds, "images_per_s": f.images_per_s})
        for s, f in zip(second.history, first.history, strict=True)]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_learns_and_finds_the_best_epoch(processed, project):
    result = trainer.train(*core_inputs(processed, project, epochs=4, lr=0.02))
    accuracies = [s.val_accuracy for s in result.history]
    assert result.best_epoch == accuracies.index(max(accuracies)) + 1
    assert max(accuracies) > 0.5  # ten classes: chance is 0.1


def test_nan_loss_stops_training(processed, project):
    with pytest.raises(DivergedError, match=r"lower train\.lr"):
        # an absurd rate (past what params.yaml allows) overflows the weights within steps
        trainer.train(*core_inputs(processed, project, model="mlp", lr=1e30, optimizer="sgd",
                                 scheduler="none"))


@pytest.mark.parametrize("recipe", [
    {"optimizer": "sgd", "scheduler": "cosine", "augment": "crop_flip"},
    {"optimizer": "adam", "scheduler": "none", "label_smoothing": 0.1, "augment": "crop"},
    {"model": "mlp", "augment": "flip", "tta": "flip"},
])
def test_recipes_run(processed, project, recipe):
    result = trainer.train(*core_inputs(processed, project, epochs=1, **recipe))
    assert len(result.history) == 1


def test_checkpoint_of_other_settings_is_not_resumed(processed, project):
    checkpoint = project / "checkpoints/train.pt"
    save_training_state(checkpoint, "another-recipe", {"epoch": 1})
    result = trainer.train(*core_inputs(processed, project), checkpoint=checkpoint)
    assert [s.epoch for s in result.history] == [1, 2]
    assert not checkpoint.exists()


def test_malicious_training_state_is_never_unpickled(processed, project, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    checkpoint = project / "checkpoints/train.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(pickle.dumps({"key": Exploit()}))
    result = trainer.train(*core_inputs(processed, project), checkpoint=checkpoint)
    assert [s.epoch for s in result.history] == [1, 2]  # trained from scratch
    assert not marker.exists()
