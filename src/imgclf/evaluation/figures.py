"""The evaluate stage's figures and DVC plot data: confusion matrix and reliability diagram."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from imgclf.common.stats import Calibration


def confusion_csv(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> str:
    """One ``actual,predicted`` row per image: the input of DVC's confusion-matrix template."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[a], classes[p])
                     for a, p in zip(labels.tolist(), predictions.tolist(), strict=True))
    return out.getvalue()


def confusion_figure(labels: np.ndarray, predictions: np.ndarray, classes: list[str]
                     ) -> Figure:
    size = max(5.0, 0.6 * len(classes))
    figure = Figure(figsize=(size, size))
    ax = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels, predictions, labels=list(range(len(classes))),
        display_labels=classes, ax=ax, colorbar=False, xticks_rotation=45)
    figure.tight_layout()
    return figure


def reliability_figure(calibrations: Mapping[str, Calibration]) -> Figure:
    """Accuracy against confidence per bin, for each split: a calibrated model sits on the
    diagonal."""
    figure = Figure(figsize=(5, 5))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for split, found in calibrations.items():
        ax.plot(found.confidence, found.accuracy, marker="o",
                label=f"{split} (ECE {found.ece:.4f})")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="Reliability diagram")
    ax.legend(loc="upper left")
    figure.tight_layout()
    return figure
