"""Logging a trained classifier as an MLflow model that describes itself.

The model is a *models-from-code* pyfunc (:mod:`imgclf.inference.pyfunc_model`, logged as a
file, so loading it never unpickles anything) around a ``torch.export`` program, with the
preprocessing it was trained with as its configuration and the train stage's weights-only
file as an artifact, for fine-tuning from it.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from imgclf.data.images import png_bytes
from imgclf.inference.classifier import COLUMN, Preprocessing

PYFUNC_MODEL = Path(__file__).parents[1] / "inference" / "pyfunc_model.py"
# one optional string column: base64 image files, or (the tensor form) nested float lists
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", COLUMN, required=False)]))


def log_classifier(network: torch.nn.Module, preprocessing: Preprocessing, weights: Path,
                   examples: np.ndarray) -> str:
    """Log ``network`` in the active run as the model ``model``; return its URI.

    ``examples`` (uint8 images) become the input example, as base64 PNGs.
    """
    network = network.eval().to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    batch = torch.export.Dim("batch", min=1, max=2**16)
    program = torch.export.export(network, (torch.rand(2, *preprocessing.image_shape),),
                                  dynamic_shapes=({0: batch},))
    example = {COLUMN: [base64.b64encode(png_bytes(image)).decode("ascii")
                        for image in examples]}
    with tempfile.TemporaryDirectory() as folder:
        program_file = Path(folder) / "model.pt2"
        torch.export.save(program, program_file)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_MODEL),
            artifacts={"program": str(program_file), "weights": str(weights)},
            model_config=preprocessing.to_config(),
            signature=SIGNATURE,
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"mlflow=={mlflow.__version__}", "pillow", "pandas"],
        )
    return str(info.model_uri)
