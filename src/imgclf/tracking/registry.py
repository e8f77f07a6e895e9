"""The Model Registry: registered versions and the ``champion`` alias that serving follows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


# given the current champion (version and tags, or None) and the new version: whether the
# alias moves to the new version, and tags recording why
Chooser = Callable[[tuple[str, dict[str, str]] | None, str], tuple[bool, Mapping[str, str]]]


def register_model(
    name: str,
    model_uri: str,
    tags: Mapping[str, str],
    choose: Chooser,
    root: Path | None = None,
) -> Registration:
    """Register ``model_uri`` as a version of ``name`` with ``tags``; move ``champion`` to it
    when ``choose`` says so, and tag the version with the decision.

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
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        moves, decision = choose(current_champion(name, client), version)
        for key, value in decision.items():
            client.set_model_version_tag(name, version, key, value)
        if moves:
            client.set_registered_model_alias(name, CHAMPION, version)
    return Registration(name, version, moves)


def current_champion(name: str, client: MlflowClient | None = None
                     ) -> tuple[str, dict[str, str]] | None:
    """The champion's version and its tags; ``None`` when there is no champion."""
    try:
        found = (client or MlflowClient()).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return str(found.version), dict(found.tags)


def version_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


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
