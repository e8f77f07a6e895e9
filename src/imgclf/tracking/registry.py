"""The Model Registry: registered versions and the ``champion`` alias that serving follows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf.common.errors import UserError
from imgclf.common.settings import Settings
from imgclf.tracking.store import TrackingError, connect, store_lock

CHAMPION = "champion"
DESCRIPTION = "Trained by the imgclf pipeline"


@dataclass(frozen=True)
class Registration:
    """Where a model landed in the Model Registry."""

    name: str
    version: str
    champion: bool


def register_model(
    name: str,
    model_uri: str,
    scores: Mapping[str, float],
    metric: str,
    tags: Mapping[str, str],
    root: Path | None = None,
) -> Registration:
    """Register ``model_uri`` as a version of ``name``; move ``champion`` to it if it wins.

    The model's test ``scores`` become version tags. The ``champion`` alias moves only when
    the new version beats the current champion on ``metric`` (lower is better for a loss).
    Registering the same model again reuses its version.
    """
    client = MlflowClient()
    # one process at a time may compare and move the alias (queued experiments)
    with store_lock(root):
        same = [v for v in client.search_model_versions(f"name = '{name}'")
                if v.source == model_uri]
        # creates the registered model on first use, and says so; the tags follow below
        found = same[0] if same else mlflow.register_model(model_uri, name)
        if not client.get_registered_model(name).description:
            client.update_registered_model(name, description=DESCRIPTION)
        version = str(found.version)
        for key, value in {**tags, **{k: str(v) for k, v in scores.items()}}.items():
            client.set_model_version_tag(name, version, key, value)
        champion = _champion_after(client, name, version, scores[metric], metric)
    return Registration(name, version, champion == version)


def _champion_after(client: MlflowClient, name: str, version: str, score: float,
                    metric: str) -> str | None:
    """Move the alias to ``version`` if its ``score`` beats the champion's; return the
    champion's version afterwards."""
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        champion, best = str(current.version), float(current.tags[metric])
    except (MlflowException, KeyError, ValueError):
        champion, best = None, None
    better = best is None or (score < best if metric.endswith("loss") else score > best)
    if better:
        client.set_registered_model_alias(name, CHAMPION, version)
        return version
    return champion


def champion_uri(name: str) -> str:
    """``models:/<name>@champion``, after checking that the alias exists."""
    try:
        MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise TrackingError(f"registered model {name!r} has no '{CHAMPION}' version yet; "
                            "run the pipeline first (make run)") from None
    return f"models:/{name}@{CHAMPION}"


def settings_champion_uri(settings: Settings) -> str:
    """The champion's URI for the model ``settings`` register (its dataset's name).

    Raises:
        UserError: ``evaluate.registered_model`` is null, so nothing is registered.
        TrackingError: no champion yet.
    """
    name = settings.evaluate.model_name(settings.data.dataset)
    if name is None:
        raise UserError("evaluate.registered_model is null: nothing is registered; name a "
                        "model instead (models:/<name>@<alias>, or a models/model.pt file)")
    connect(settings.tracking.experiment)
    return champion_uri(name)
