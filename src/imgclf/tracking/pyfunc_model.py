"""The MLflow model every train run logs, as *models from code*: MLflow runs this file to
build the model, so loading one never unpickles anything.

The network is a ``torch.export`` program (artifact ``program``); the model configuration
carries its :class:`~imgclf.inference.classifier.Preprocessing`. Requests give images in a
column named ``image``, in any of MLflow's request forms (``dataframe_records``,
``dataframe_split``, ``inputs``), each either

- a base64 string of an image file's bytes (PNG, JPEG, or any format Pillow reads), or
- a nested list of floats in [0, 1], channels x height x width (``{"inputs": [...]}``).

The answer for each image is its ``class``, that class's ``probability``, the
``probabilities`` of every class by name and, when ``make serve`` serves it, the ``model``
version that answered. Input that cannot be answered raises an
``MlflowException`` with ``INVALID_PARAMETER_VALUE``: HTTP 400 from the server, which keeps
serving.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from imgclf.data.images import BadImage
from imgclf.inference.classifier import (
    COLUMN,
    SERVED_MODEL_ENV,
    Classifier,
    InvalidInput,
    Preprocessing,
)


class ImageClassifierModel(PythonModel):
    """Images (base64 files or float tensors) in, class names and probabilities out."""

    classifier: Classifier
    weights: str  # the train stage's weights-only file, for fine-tuning from this model
    served: str = ""  # the registered version ``make serve`` serves

    def load_context(self, context: Any) -> None:
        program = torch.export.load(context.artifacts["program"])
        self.weights = context.artifacts["weights"]
        self.served = os.environ.get(SERVED_MODEL_ENV, "")
        self.classifier = Classifier(program.module(),
                                     Preprocessing.from_config(context.model_config))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> list[dict[str, Any]]:
        try:
            images = batch(model_input, self.classifier.preprocessing)
            answers = self.classifier.answers(self.classifier.probabilities(images))
        except (InvalidInput, BadImage) as exc:
            raise MlflowException(str(exc), INVALID_PARAMETER_VALUE) from None
        if self.served:
            for answer in answers:
                answer["model"] = self.served
        return answers


def batch(model_input: Any, preprocessing: Preprocessing) -> torch.Tensor:
    """The float images of a request's ``image`` column.

    Raises:
        InvalidInput: no ``image`` column, an empty batch, or a cell that is neither base64
            nor a tensor of the model's shape.
        BadImage: bytes that are not a readable image, or a decompression bomb.
    """
    columns = list(getattr(model_input, "columns", []))
    if COLUMN not in columns:
        raise InvalidInput(f"send the images in a column named {COLUMN!r} (base64 PNG/JPEG "
                           f"bytes, or floats in [0, 1]); got columns {columns}")
    cells = list(model_input[COLUMN])
    if not cells:
        raise InvalidInput("the batch is empty: send at least one image")
    return torch.stack([_image(cell, i, preprocessing) for i, cell in enumerate(cells)])


def _image(cell: Any, i: int, preprocessing: Preprocessing) -> torch.Tensor:
    if isinstance(cell, str | bytes):
        try:
            data = base64.b64decode(cell, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"image {i}: not valid base64; send the file's bytes "
                               "base64-encoded (e.g. base64 -w0 image.png)") from None
        try:
            return torch.from_numpy(preprocessing.pixels(data).copy()).float().div_(255)
        except BadImage as exc:
            raise BadImage(f"image {i}: {exc}") from None
    try:
        values = np.asarray(cell, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInput(f"image {i}: neither a base64 string nor a tensor of numbers"
                           ) from None
    shape = " x ".join(str(v) for v in preprocessing.image_shape)
    if list(values.shape) != preprocessing.image_shape:
        raise InvalidInput(f"image {i}: a tensor image must be {shape} (channels, height, "
                           f"width); got {' x '.join(str(v) for v in values.shape) or 'a number'}")
    return torch.from_numpy(values)


mlflow.models.set_model(ImageClassifierModel())
