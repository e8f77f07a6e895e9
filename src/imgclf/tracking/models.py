"""Logged classifiers: logging a trained one as an MLflow model that describes itself, and
loading the model a user names (an MLflow model URI or the train stage's ``.pt`` file).

The logged model is a *models-from-code* pyfunc (:mod:`imgclf.tracking.pyfunc_model`,
logged as a file, so loading it never unpickles anything) around a ``torch.export`` program,
with the preprocessing it was trained with as its configuration and the train stage's
weights-only file as an artifact, for fine-tuning from it.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import ColSpec, Schema

from imgclf.common.errors import UserError, one_line
from imgclf.common.settings import is_model_uri
from imgclf.data.images import png_bytes
from imgclf.inference.classifier import COLUMN, Classifier, Preprocessing
from imgclf.training.checkpoint import WEIGHTS_ARTIFACT, Architecture, load_model

PYFUNC_MODEL = Path(__file__).with_name("pyfunc_model.py")
# one optional string column: base64 image files, or (the tensor form) nested float lists
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", COLUMN, required=False)]))


def log_classifier(network: torch.nn.Module, preprocessing: Preprocessing, weights: Path,
                   examples: np.ndarray, params: Mapping[str, Any], step: int) -> ModelInfo:
    """Log ``network`` in the active run as the model ``model``, with the recipe ``params``
    it was trained with and the epoch (``step``) its weights are from.

    ``examples`` (uint8 images) become the input example, as base64 PNGs.
    """
    network = network.eval().to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    batch = torch.export.Dim("batch", min=1, max=2**16)
    program = torch.export.export(network, (torch.rand(2, *preprocessing.image_shape),),
                                  dynamic_shapes=({0: batch},))
    example = {COLUMN: [base64.b64encode(png_bytes(image)).decode("ascii")
                        for image in examples]}
    with tempfile.TemporaryDirectory() as folder:
        program_file, weights_file = Path(folder) / "model.pt2", Path(folder) / WEIGHTS_ARTIFACT
        torch.export.save(program, program_file)
        shutil.copyfile(weights, weights_file)
        info: ModelInfo = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_MODEL),
            artifacts={"program": str(program_file), "weights": str(weights_file)},
            model_config=preprocessing.to_config(),
            signature=SIGNATURE,
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"mlflow=={mlflow.__version__}", "pillow", "pandas"],
            params={key: str(value) for key, value in params.items()},
            step=step,
        )
    return info


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to classify, with where it came from and its weights-only file."""

    classifier: Classifier
    source: str  # the URI or path as given
    weights: Path  # the train stage's weights file (architecture, weights, provenance)


def load(source: str, device: torch.device | None = None) -> LoadedModel:
    """The model at ``source``: an MLflow model URI or a train stage ``.pt`` file.

    Raises:
        UserError: nothing there, or not a model the train stage logged.
    """
    device = device or torch.device("cpu")
    if not is_model_uri(source):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{source}: no such model file; give a models/model.pt file or "
                            "an MLflow model URI (models:/<name>@<alias>, runs:/<id>/model)")
        network, arch, _ = load_model(path)
        return LoadedModel(_classifier(network, arch, device), source, path)
    return _load_logged(source, device)


def _classifier(network: torch.nn.Module, arch: Architecture, device: torch.device
                ) -> Classifier:
    return Classifier(network.to(device), arch.preprocessing(), device)


def local_copy(uri: str, folder: Path | None = None) -> Path:
    """A copy of the logged model at ``uri`` in ``folder`` (default: a new temporary one).

    Loading from a copy keeps the tracking store untouched: MLflow writes a file into a
    registered model's folder when it loads it in place.

    Raises:
        UserError: no such model.
    """
    folder = folder or Path(tempfile.mkdtemp(prefix="imgclf-model-"))
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    except (MlflowException, OSError) as exc:
        raise UserError(f"cannot load model {uri}: {one_line(exc)}. Check the name, version "
                        "or alias (the MLflow UI's Models page lists them)") from None


def _load_logged(uri: str, device: torch.device) -> LoadedModel:
    try:
        model = mlflow.pyfunc.load_model(str(local_copy(uri)))
    except (MlflowException, OSError) as exc:
        raise UserError(f"cannot load model {uri}: {one_line(exc)}") from None
    try:
        wrapped = model.unwrap_python_model()
    except MlflowException:
        wrapped = None
    classifier = getattr(wrapped, "classifier", None)
    if not isinstance(classifier, Classifier):
        raise UserError(f"{uri}: not an image classifier that carries its preprocessing (it "
                        "was logged some other way, or by an earlier version of imgclf); use "
                        "a version trained since (models:/<name>/<version>) or --model "
                        "models/model.pt")
    if device.type != "cpu":
        classifier = Classifier(classifier.network.to(device),  # type: ignore[attr-defined]
                                classifier.preprocessing, device)
    return LoadedModel(classifier, uri, Path(wrapped.weights))
