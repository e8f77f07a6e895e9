"""Saving and loading trained models as weights plus the recipe to rebuild the network.

Files hold only tensors and plain values, so they load with ``torch.load(weights_only=True)``
and a file carrying code is refused instead of executed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from imgclf.common.errors import UserError
from imgclf.common.settings import ModelName
from imgclf.common.tensorfiles import load_tensors, save_tensors
from imgclf.inference.classifier import Preprocessing
from imgclf.training.models import build_model

log = logging.getLogger(__name__)
WEIGHTS_ARTIFACT = "weights.pt"  # a logged model's copy of this file, under artifacts/


@dataclass(frozen=True)
class Architecture:
    """Everything :func:`imgclf.training.models.build_model` needs besides the weights."""

    model: ModelName
    width: int
    in_shape: list[int]
    classes: list[str]
    mean: list[float]
    std: list[float]
    tta: str = "none"
    resize: str = "squash"

    def build(self) -> nn.Module:
        return build_model(self.model, self.in_shape, len(self.classes), self.width,
                           self.mean, self.std, self.tta)

    def preprocessing(self) -> Preprocessing:
        """How an image file becomes this network's input."""
        return Preprocessing(self.classes, self.in_shape, self.resize, self.mean, self.std)


def save_model(path: Path, model: nn.Module, arch: Architecture, info: Mapping[str, Any]
               ) -> None:
    """Atomically write ``model``'s weights, its architecture and provenance ``info``."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    save_tensors(path, {"state_dict": state, "arch": asdict(arch), "info": dict(info)})


def load_model(path: Path) -> tuple[nn.Module, Architecture, dict[str, Any]]:
    """Rebuild the network saved by :func:`save_model`, in eval mode, on the CPU."""
    data = load_tensors(path)
    try:
        arch = Architecture(**data["arch"])
        model = arch.build()
        model.load_state_dict(data["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a model saved by the train stage ({exc}); "
                        "rerun training (dvc repro train)") from None
    return model.eval(), arch, dict(data.get("info", {}))


def save_training_state(path: Path, key: str, state: dict) -> None:
    """Atomically write the engine's per-epoch training state, labelled with ``key``."""
    save_tensors(path, {"key": key, **state})


def load_training_state(path: Path, key: str) -> dict | None:
    """The state saved under ``key`` at ``path``, or ``None`` when there is nothing to resume.

    A state saved for other settings or data is ignored. A file that is not a weights-only
    tensor file is refused (never unpickled) and ignored, with a warning.
    """
    if not path.is_file():
        return None
    try:
        state = load_tensors(path)
    except UserError as exc:
        log.warning("not resuming: %s", exc)
        return None
    if state.get("key") != key:
        log.info("not resuming: %s was saved for other settings or data", path)
        return None
    return state
