"""The Model Registry: registered versions and the ``champion`` alias that serving follows.

Each dataset has its own registered model: ``{dataset}`` in ``evaluate.registered_model``
becomes a built-in dataset's name or a folder's own name, so a model is never compared with,
nor served in place of, another dataset's. The registered model and each version record
which data they are for (``SOURCE_TAG``, a :meth:`DataSettings.source`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf.common.errors import UserError
from imgclf.common.files import project_root
from imgclf.common.settings import SOURCE_TAG, Settings, describe_source
from imgclf.tracking.store import TrackingError, connect, store_lock

CHAMPION = "champion"
DESCRIPTION = "Trained by the imgclf pipeline"
# where folder datasets' versions went before each folder had its own registered model
LEGACY_FOLDER_MODEL = "folder-classifier"


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
    model_tags: Mapping[str, str] | None = None,
) -> Registration:
    """Register ``model_uri`` as a version of ``name`` with ``tags``; move ``champion`` to it
    when ``choose`` says so, and tag the version with the decision.

    ``model_tags`` go on the registered model when it has none of that key yet.
    Registering the same model again reuses its version.
    """
    client = MlflowClient()
    # one process at a time may compare and move the alias (queued experiments)
    with store_lock(root):
        same = [v for v in client.search_model_versions(f"name = '{name}'")
                if v.source == model_uri]
        # creates the registered model on first use, and says so; the tags follow below
        found = same[0] if same else mlflow.register_model(model_uri, name)
        registered = client.get_registered_model(name)
        if not registered.description:
            client.update_registered_model(name, description=DESCRIPTION)
        for key, value in (model_tags or {}).items():
            if key not in registered.tags:
                client.set_registered_model_tag(name, key, value)
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


def registered_name(settings: Settings, root: Path | None = None,
                    client: MlflowClient | None = None) -> str | None:
    """The registered model for the data in ``settings`` (``None``: do not register).

    A folder's name fills ``{dataset}`` (``data/digits`` gives ``digits-classifier``). When
    a registered model of that name exists for other data (another folder of the same name,
    or one registered by hand or by an earlier imgclf), a short hash of this folder's path
    is added, so two folders never share a registered model unless the user names one.
    The store must be connected.
    """
    template, data = settings.evaluate.registered_model, settings.data
    if template is None:
        return None
    root = root or project_root()
    name = template.replace("{dataset}", data.label(root))
    if data.dataset != "folder" or "{dataset}" not in template:
        return name
    source = data.source(root)
    try:
        owner = (client or MlflowClient()).get_registered_model(name).tags.get(SOURCE_TAG)
    except MlflowException:
        return name  # not registered yet: this data's first version will create it
    if owner == source:
        return name
    digest = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()[:6]
    return template.replace("{dataset}", f"{data.label(root)}-{digest}")


def model_tags(settings: Settings, root: Path | None = None) -> dict[str, str]:
    """What a registered model made from a name template records: the data it is for."""
    if "{dataset}" not in (settings.evaluate.registered_model or ""):
        return {}  # a name the user gave: it may hold several datasets' versions
    return {SOURCE_TAG: settings.data.source(root or project_root())}


@dataclass(frozen=True)
class Champion:
    """The champion of the current data's registered model."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        """The version itself, not the alias: a later alias move changes nothing here."""
        return version_uri(self.name, self.version)


def settings_champion(settings: Settings) -> Champion:
    """The champion of the registered model for the data ``settings`` name, and never
    another dataset's model.

    Raises:
        UserError: ``evaluate.registered_model`` is null, so nothing is registered.
        TrackingError: no champion yet, or (a name shared by several datasets) the champion
            was trained on other data.
    """
    connect(settings.tracking.experiment)
    root = project_root()
    name = registered_name(settings, root)
    if name is None:
        raise UserError("evaluate.registered_model is null: nothing is registered; name a "
                        "model instead (--model models:/<name>@<alias>, or models/model.pt)")
    source = settings.data.source(root)
    client = MlflowClient()
    try:
        found = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise TrackingError(f"no model for {describe_source(source)} yet: registered model "
                            f"{name!r} has no '{CHAMPION}' version. Train and evaluate one "
                            "on this data (make run, or dvc repro), or name a model with "
                            f"--model{_legacy_hint(settings, client)}") from None
    theirs = found.tags.get(SOURCE_TAG)
    if theirs and theirs != source:
        raise TrackingError(f"the champion of {name!r} (version {found.version}) was trained "
                            f"on {describe_source(theirs)}, not on {describe_source(source)} "
                            "(params.yaml's data): train one on this data (dvc repro), or "
                            "name a model with --model")
    return Champion(name, str(found.version))


def _legacy_hint(settings: Settings, client: MlflowClient) -> str:
    if settings.data.dataset != "folder":
        return ""
    try:
        client.get_registered_model(LEGACY_FOLDER_MODEL)
    except MlflowException:
        return ""
    return (f" (versions an earlier imgclf registered for every folder are still in "
            f"{LEGACY_FOLDER_MODEL!r}: --model models:/{LEGACY_FOLDER_MODEL}@{CHAMPION} if its "
            "champion was trained on this folder)")


def resolve_version(uri: str) -> str:
    """``models:/<name>@<alias>`` as the version it points at now (``models:/<name>/3``);
    any other URI or path unchanged. The store must be connected."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    name, _, alias = uri.removeprefix("models:/").partition("@")
    try:
        found = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return uri  # loading it will say what is wrong
    return version_uri(name, str(found.version))
