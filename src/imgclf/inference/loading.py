"""Loading the model a user names: an MLflow model URI, the train stage's ``.pt`` file, or
the registry's champion for the current params."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException

from imgclf.common.errors import UserError, one_line
from imgclf.common.settings import Settings
from imgclf.inference.classifier import Classifier
from imgclf.training.checkpoint import Architecture, load_model

URI_SCHEMES = ("models:/", "runs:/", "file:", "mlflow-artifacts:", "s3:", "gs:", "http")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to classify, with where it came from and its weights-only file."""

    classifier: Classifier
    source: str  # the URI or path as given
    weights: Path  # the train stage's weights file (architecture, weights, provenance)


def is_uri(source: str) -> bool:
    return source.startswith(URI_SCHEMES)


def champion(settings: Settings) -> str:
    """The registry URI of the champion model for ``settings``' dataset.

    Raises:
        UserError: no model is registered for these params.
    """
    from imgclf.tracking.registry import champion_uri
    from imgclf.tracking.store import connect

    name = settings.evaluate.model_name(settings.data.dataset)
    if name is None:
        raise UserError("evaluate.registered_model is null: no champion model to use; pass "
                        "--model models:/<name>@<alias> or a models/model.pt file")
    connect(settings.tracking.experiment)
    return champion_uri(name)


def load(source: str, device: torch.device | None = None) -> LoadedModel:
    """The model at ``source``: an MLflow model URI or a train stage ``.pt`` file.

    Raises:
        UserError: nothing there, or not a model the train stage logged.
    """
    device = device or torch.device("cpu")
    if not is_uri(source):
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


def _load_logged(uri: str, device: torch.device) -> LoadedModel:
    try:
        model = mlflow.pyfunc.load_model(uri)
        wrapped = model.unwrap_python_model()
    except (MlflowException, OSError) as exc:
        raise UserError(f"cannot load model {uri}: {one_line(exc)}. Check the name, version "
                        "or alias (the MLflow UI's Models page lists them)") from None
    classifier = getattr(wrapped, "classifier", None)
    if not isinstance(classifier, Classifier):
        raise UserError(f"{uri}: not an image classifier logged by the train stage (it carries "
                        "no preprocessing); retrain it with dvc repro train")
    if device.type != "cpu":
        classifier = Classifier(classifier.network.to(device),  # type: ignore[attr-defined]
                                classifier.preprocessing, device)
    return LoadedModel(classifier, uri, Path(wrapped.weights))
