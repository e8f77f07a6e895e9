"""The training core shared by the train stage and every tuning trial.

It builds the network a recipe names for the preprocessed data, trains it with the engine,
and, given a checkpoint path, resumes an interrupted run of the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from imgclf.common.settings import TrainSettings
from imgclf.data.splits import Meta, Split
from imgclf.training.checkpoint import Architecture, load_training_state, save_training_state
from imgclf.training.distributed import distributed
from imgclf.training.engine import EpochStats, FitResult, fit, resolve_device, set_determinism
from imgclf.training.transfer import Start, apply_start, freeze_backbone

log = logging.getLogger(__name__)


def architecture(recipe: TrainSettings, meta: Meta) -> Architecture:
    """The network ``recipe`` names, sized for the images and classes ``meta`` describes."""
    return Architecture(recipe.model, recipe.width, meta.image_shape, meta.classes,
                        meta.mean, meta.std, recipe.tta, meta.resize)


def train(
    train_split: Split,
    val_split: Split,
    meta: Meta,
    recipe: TrainSettings,
    on_epoch: Callable[[EpochStats], None] | None = None,
    checkpoint: Path | None = None,
    start: Start | None = None,
) -> FitResult:
    """Build the network ``recipe`` names, load the weights it ``start``s from, and train it
    (only its head, with ``train.freeze: backbone``).

    With a ``checkpoint`` path the training state is saved there after every epoch, and a
    state left by an interrupted run of the same recipe on the same data is resumed.
    """
    device = resolve_device(recipe.device)
    set_determinism(recipe.seed, recipe.threads, device)
    model = architecture(recipe, meta).build()
    if start is not None:
        done = apply_start(model, start)
        log.info("starting from %s: %d tensors loaded%s%s", start.source,
                 done["init_tensors_loaded"],
                 "; a new head for these classes" if done["init_head_replaced"] else "",
                 f"; {done['init_reinitialised']} starts afresh"
                 if done["init_reinitialised"] else "")
    if recipe.freeze == "backbone":
        freeze_backbone(model)
    if checkpoint is None:
        return fit(model, train_split, val_split, recipe, device=device, on_epoch=on_epoch)
    path = checkpoint
    key = training_key(recipe, meta, len(train_split), start.digest if start else "")
    result = fit(model, train_split, val_split, recipe, device=device, on_epoch=on_epoch,
                 resume=load_training_state(path, key),
                 on_checkpoint=lambda state: save_training_state(path, key, state))
    if distributed()[0] == 0:
        path.unlink(missing_ok=True)  # finished: nothing left to resume
    return result


def training_key(recipe: TrainSettings, meta: Meta, train_size: int, start: str = "") -> str:
    """Identifies a training run's inputs, so only the same run is ever resumed.

    It covers ``train.keep`` too: only a ``keep: best`` run's states hold the best weights;
    ``start`` is the hash of the weights it started from (an alias may move).
    """
    inputs = {"recipe": recipe.model_dump(mode="json", exclude={"device"}),
              "meta": asdict(meta) | {"lineage": None}, "train_size": train_size,
              "start": start}
    return hashlib.sha1(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
