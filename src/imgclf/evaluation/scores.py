"""A model's answers on one split, and every score drawn from them with its uncertainty."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.common.stats import (
    Calibration,
    Statistic,
    accuracy_interval,
    bootstrap_interval,
    calibration,
    macro_f1s,
    proportion_interval,
)
from imgclf.data.batches import batches
from imgclf.data.splits import Split
from imgclf.training.engine import autocast


@dataclass(frozen=True)
class Predictions:
    """A model's class probabilities for every image of a split, with the true labels."""

    labels: np.ndarray  # N
    probabilities: np.ndarray  # N x classes

    @property
    def predicted(self) -> np.ndarray:
        return np.asarray(self.probabilities.argmax(axis=1))

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.predicted == self.labels)

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def predict(network: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int
            ) -> tuple[Predictions, float]:
    """``network``'s class probabilities on every image of ``split`` (in order), and its mean
    cross-entropy. A module must be in eval mode already."""
    probabilities, loss_sum = [], 0.0
    for x, y in batches(split, batch_size):
        with autocast(x.device):
            logits = network(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        probabilities.append(torch.softmax(logits, dim=1).cpu())
    joined = (torch.cat(probabilities).numpy() if probabilities
              else np.zeros((0, 0), dtype=np.float32))
    return Predictions(split.labels.cpu().numpy(), joined), loss_sum / max(len(split), 1)


def macro_f1_statistic(num_classes: int) -> Statistic:
    return partial(macro_f1s, num_classes=num_classes)


@dataclass(frozen=True)
class SplitReport:
    """Scores of one model on one split (``val`` or ``test``)."""

    split: str
    predictions: Predictions
    loss: float
    classes: list[str]

    @cached_property
    def accuracy(self) -> float:
        return float(self.predictions.correct.mean())

    @cached_property
    def macro_f1(self) -> float:
        p = self.predictions
        return float(macro_f1s(p.labels, p.predicted, len(self.classes))[0])

    @cached_property
    def calibration(self) -> Calibration:
        return calibration(self.predictions.probabilities, self.predictions.labels)

    def scores(self) -> dict[str, float]:
        """The headline metrics with their 95% intervals, under their MLflow names."""
        p = self.predictions
        accuracy_low, accuracy_high = accuracy_interval(int(p.correct.sum()), len(p))
        f1_low, f1_high = bootstrap_interval(macro_f1_statistic(len(self.classes)), p.labels,
                                             p.predicted)
        values = {"accuracy": self.accuracy, "accuracy_ci95_low": accuracy_low,
                  "accuracy_ci95_high": accuracy_high, "loss": self.loss,
                  "macro_f1": self.macro_f1, "macro_f1_ci95_low": f1_low,
                  "macro_f1_ci95_high": f1_high, "ece": self.calibration.ece}
        return {f"{self.split}/{key}": value for key, value in values.items()}

    def per_class(self) -> dict[str, dict[str, Any]]:
        """Per class: precision and recall with their Wilson intervals, and the support."""
        p = self.predictions
        out = {}
        for index, name in enumerate(self.classes):
            actual, chosen = p.labels == index, p.predicted == index
            hits = int((actual & chosen).sum())
            out[name] = {
                "precision": hits / int(chosen.sum()) if chosen.any() else 0.0,
                "precision_ci95": list(proportion_interval(hits, int(chosen.sum()))),
                "recall": hits / int(actual.sum()) if actual.any() else 0.0,
                "recall_ci95": list(proportion_interval(hits, int(actual.sum()))),
                "support": int(actual.sum()),
            }
        return out
