"""Resolving ``train.init``: the weights a training run starts from, fetched and checked
before any work (a registered model's are downloaded from the tracking store)."""

from __future__ import annotations

from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf.common.errors import UserError
from imgclf.common.settings import is_model_uri
from imgclf.tracking.models import local_copy
from imgclf.tracking.store import connect
from imgclf.training.checkpoint import WEIGHTS_ARTIFACT
from imgclf.training.transfer import Start, file_start, imagenet_start


def start_from(init: str, model: str, experiment: str, online: bool = False,
               timeout_s: float = 60) -> Start | None:
    """The weights ``train.init`` names for ``model``, checked before any work; ``None`` for
    ``random``. A model URI is resolved in the project's tracking store (``experiment``'s);
    ImageNet weights missing from torch's hub cache are downloaded when ``online``
    (``download.online``, with ``download.timeout_s``).

    Raises:
        UserError: the weights are missing, unreachable or for another network.
    """
    if init == "random":
        return None
    if init == "imagenet":
        return imagenet_start(model, online, timeout_s)
    if not is_model_uri(init):
        path = Path(init)
        if not path.is_file():
            raise UserError(f"train.init {init}: no such file; give a train stage .pt file "
                            "or a model URI (models:/<name>@<alias>)")
        return file_start(path, init, model)
    connect(experiment)
    try:
        folder = local_copy(init)
    except UserError as exc:
        raise UserError(f"train.init: {exc}") from None
    weights = folder / "artifacts" / WEIGHTS_ARTIFACT
    if not weights.is_file():
        raise UserError(f"train.init {init}: not a model the train stage logged (it has no "
                        "weights.pt); retrain it, or start from its .pt file")
    return file_start(weights, init, model, _registry_tags(init))


def _registry_tags(uri: str) -> dict[str, str]:
    """The registry version a ``models:/name@alias`` or ``models:/name/N`` URI points at."""
    if not uri.startswith("models:/"):
        return {}
    name, _, ref = uri.removeprefix("models:/").partition("@")
    client = MlflowClient()
    try:
        if ref:
            version = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = name.rpartition("/")
            version = client.get_model_version(name, number)
    except MlflowException:
        return {}  # a logged model's own id (models:/m-...): no registry version
    return {"init_model": version.name, "init_version": str(version.version)}
