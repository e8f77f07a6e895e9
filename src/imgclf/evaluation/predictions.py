"""Per-image predictions as a CSV file: what paired comparisons of two runs are made from.

One row per image of each split: ``split``, ``index`` (the image's position in the split),
``label``, ``predicted`` (class names), then ``p_<class>``, the probability of each class.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from imgclf.common.errors import UserError
from imgclf.evaluation.scores import Predictions

FIXED = ["split", "index", "label", "predicted"]
PREFIX = "p_"


def to_csv(predictions: Mapping[str, Predictions], classes: list[str]) -> str:
    """The CSV text of each split's predictions."""
    frames = []
    names = np.asarray(classes, dtype=object)
    for split, found in predictions.items():
        frame = pd.DataFrame({"split": split, "index": np.arange(len(found)),
                              "label": names[found.labels], "predicted": names[found.predicted]})
        probabilities = pd.DataFrame(found.probabilities, columns=[PREFIX + c for c in classes])
        frames.append(pd.concat([frame, probabilities], axis=1))
    out = io.StringIO()
    pd.concat(frames, ignore_index=True).to_csv(out, index=False, float_format="%.5g",
                                                lineterminator="\n")
    return out.getvalue()


def from_csv(path: Path) -> tuple[dict[str, Predictions], list[str]]:
    """Each split's predictions and the class names from a file :func:`to_csv` wrote.

    Raises:
        UserError: not such a file.
    """
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype={"label": str, "predicted": str})
        classes = [c.removeprefix(PREFIX) for c in frame.columns[len(FIXED):]]
        if list(frame.columns[:len(FIXED)]) != FIXED or not classes:
            raise ValueError(f"expected the columns {', '.join(FIXED)}, p_<class>...")
        lookup = {name: index for index, name in enumerate(classes)}
        out = {}
        for split, rows in frame.groupby("split", sort=False):
            rows = rows.sort_values("index")
            out[str(split)] = Predictions(
                rows["label"].map(lookup).to_numpy(dtype=np.int64),
                rows[frame.columns[len(FIXED):]].to_numpy(dtype=np.float32))
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: not a predictions file written by the evaluate stage "
                        f"({exc}); rerun it (dvc repro evaluate)") from None
    return out, classes
