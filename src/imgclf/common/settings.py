"""Typed, immutable settings loaded once from ``params.yaml``.

Every stage validates the whole file before doing any work, so a typo anywhere fails the
first stage DVC runs, with a message naming the key, instead of surfacing hours later.
The YAML is read with ruamel (YAML 1.2), the same parser DVC uses for ``dvc exp run -S``,
so ``lr: 1e-3`` means the same number to both.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from imgclf.common.errors import UserError

Dataset = Literal["fashion-mnist", "mnist", "cifar10", "folder"]
ModelName = Literal["mlp", "cnn", "convnet", "cifar_cnn", "resnet18", "mobilenet_v3_small",
                    "efficientnet_b0"]
# torchvision's classification models train.model takes (ImageNet weights exist for them)
TORCHVISION_MODELS = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")
URI_SCHEMES = ("models:/", "runs:/", "file:", "mlflow-artifacts:", "s3:", "gs:", "http")
# Whether a mirrored image keeps its class, which is what ``auto`` flips follow: clothes,
# objects and most photos do; digits do not (a mirrored 2 is no digit, a mirrored 7 no 7).
MIRROR_SAFE = {"fashion-mnist": True, "mnist": False, "cifar10": True, "folder": True}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
FOLDER_PREFIX = "folder:"
# the registry tag (on registered models and versions) naming the data they are for
SOURCE_TAG = "dataset"


def is_model_uri(source: str) -> bool:
    """Whether ``source`` is an MLflow model URI rather than a file path."""
    return source.startswith(URI_SCHEMES)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Finite = Annotated[float, AfterValidator(_finite)]


class _Section(BaseModel):
    # strict: no silent "3" -> 3 or true -> 1 coercion; frozen: settings never change after load.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataSettings(_Section):
    """Which dataset to use and how to split it (download, preprocess).

    ``path``, ``test_fraction``, ``image_size``, ``resize``, ``channels`` and ``dedupe``
    shape a ``folder`` dataset; the built-in datasets keep their published form.
    """

    dataset: Dataset
    path: str = Field(min_length=1)
    val_fraction: Finite = Field(gt=0, lt=1)
    test_fraction: Finite = Field(gt=0, lt=1)
    seed: int
    train_limit: int | None = Field(ge=10)
    test_limit: int | None = Field(ge=10)
    image_size: tuple[int, int] | None
    resize: Literal["squash", "crop", "pad"]
    channels: Literal["auto", 1, 3]
    dedupe: bool

    def source(self, root: Path) -> str:
        """Which data this is, as registered versions record it: a built-in dataset's name,
        or ``folder:<path>`` for a folder (relative to the project ``root`` when inside it).
        """
        if self.dataset != "folder":
            return self.dataset
        path = Path(os.path.normpath(self.path))
        if path.is_absolute() and path.is_relative_to(root):
            path = path.relative_to(root)
        return FOLDER_PREFIX + path.as_posix()

    def label(self, root: Path) -> str:
        """The dataset's short name, what ``{dataset}`` in a registered model name becomes:
        a built-in dataset's name, or a folder's (or archive's) own name, lowercased."""
        if self.dataset != "folder":
            return self.dataset
        name = PurePath(os.path.normpath(root / self.path)).name.lower()
        for suffix in ARCHIVE_SUFFIXES:
            name = name.removesuffix(suffix)
        return re.sub(r"[^a-z0-9_.]+", "-", name).strip("-_.") or "images"

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = tuple(value)
        if value is not None and (
                not isinstance(value, tuple) or len(value) != 2
                or any(not isinstance(v, int) or isinstance(v, bool) or not 8 <= v <= 1024
                       for v in value)):
            raise ValueError("must be [height, width] in pixels, each 8 to 1024, or null "
                             "(the size most images have, at most 64x64)")
        return value


class DownloadSettings(_Section):
    """Where the download stage looks for the dataset files, in order."""

    mirrors: tuple[str, ...]
    online: bool
    timeout_s: Finite = Field(gt=0)

    @field_validator("mirrors", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class TrainSettings(_Section):
    """Model and training recipe."""

    model: ModelName
    width: int = Field(ge=1, le=1024)
    optimizer: Literal["sgd", "adam", "adamw"]
    lr: Finite = Field(gt=0, le=10)
    momentum: Finite = Field(ge=0, lt=1)
    weight_decay: Finite = Field(ge=0, lt=1)
    batch_size: int = Field(ge=1, le=65536)
    epochs: int = Field(ge=1, le=10000)
    scheduler: Literal["none", "cosine", "onecycle"]
    label_smoothing: Finite = Field(ge=0, lt=1)
    # "auto" never reaches the code: Settings resolves it from data.dataset (MIRROR_SAFE)
    augment: Literal["auto", "none", "crop", "flip", "crop_flip"]
    tta: Literal["auto", "none", "flip"]
    keep: Literal["last", "best"]
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    threads: int = Field(ge=0, le=1024)
    processes: int = Field(ge=1, le=1024)
    eval_batch_size: int = Field(ge=1, le=65536)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    init: str = "random"
    freeze: Literal["none", "backbone"] = "none"

    @field_validator("init")
    @classmethod
    def _known_start(cls, value: str) -> str:
        if value in ("random", "imagenet") or is_model_uri(value) or value.endswith(".pt"):
            return value
        raise ValueError(f"{value!r}: use random, imagenet, an MLflow model URI "
                         "(models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/model) "
                         "or a train stage .pt file")

    @model_validator(mode="after")
    def _start_fits_model(self) -> TrainSettings:
        if self.init == "imagenet" and self.model not in TORCHVISION_MODELS:
            raise ValueError(f"train.init: imagenet weights exist only for "
                             f"{', '.join(TORCHVISION_MODELS)}, not {self.model!r}")
        if self.freeze == "backbone" and self.init == "random":
            raise ValueError("train.freeze: backbone trains only the head on a random "
                             "backbone; set train.init (imagenet, or a model to start from)")
        return self


class LogRange(_Section):
    """A positive range searched on a log scale."""

    low: Finite = Field(gt=0)
    high: Finite = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LogRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


# the databases whose drivers the project installs
STORAGE_SCHEMES = ("postgresql", "postgresql+psycopg", "sqlite")


class TuneSettings(_Section):
    """The Optuna search: space, budget, pruning and storage."""

    enabled: bool
    study: str | None = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    n_trials: int = Field(ge=1, le=100000)
    timeout_s: Finite | None = Field(gt=0)
    epochs: int = Field(ge=1, le=1000)
    train_fraction: Finite = Field(gt=0, le=1)
    lr: LogRange
    batch_size: tuple[int, ...] = Field(min_length=1)
    sampler: Literal["tpe", "gp"]
    startup_trials: int = Field(ge=0, le=1000)
    sampler_seed: int
    pruner: Literal["median", "hyperband", "none"]
    warmup_epochs: int = Field(default=1, ge=1, le=1000)
    baseline_alpha: Finite = Field(default=0.05, gt=0, le=1)
    storage: str | None
    workers: int = Field(ge=1, le=64)

    @model_validator(mode="after")
    def _prunable(self) -> TuneSettings:
        if self.pruner != "none" and self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) exceeds tune.epochs ({self.epochs}): "
                "no trial could be pruned; lower it, or set tune.pruner: none")
        return self

    @field_validator("batch_size", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple) and any(
                not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value):
            raise ValueError("must be a list of positive integers")
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "://" in value:
            scheme = value.split("://", 1)[0]
            if scheme not in STORAGE_SCHEMES:
                raise ValueError(f"unsupported database {scheme!r}; use a .journal file or "
                                 f"a URL starting with one of {', '.join(STORAGE_SCHEMES)}")
            credentials = value.split("://", 1)[1].split("@", 1)
            if len(credentials) == 2 and ":" in credentials[0]:
                raise ValueError("must not contain a password: params are logged and "
                                 "committed; set PGPASSWORD or use ~/.pgpass instead")
            return value
        path = Path(value)
        if path.suffix != ".journal":
            raise ValueError("must be a database URL or a path ending in .journal")
        if path.is_absolute() or ".." in path.parts:
            raise ValueError("a journal path must be relative and stay inside the project "
                             "(no '..')")
        return value


class EvaluateSettings(_Section):
    """Test-set evaluation and the Model Registry."""

    batch_size: int = Field(ge=1, le=65536)
    registered_model: str | None = Field(pattern=r"^[A-Za-z0-9{][A-Za-z0-9_.{}-]{0,199}$")
    champion_metric: Literal["val/accuracy", "val/macro_f1", "test/accuracy", "test/macro_f1"]
    champion_alpha: Finite = Field(gt=0, le=1)


class TrackingSettings(_Section):
    """MLflow experiment the stages log to."""

    experiment: str = Field(min_length=1, max_length=200)

    @field_validator("experiment")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable() or value.strip() != value:
            raise ValueError("must be printable text without leading or trailing spaces")
        return value


class Settings(_Section):
    """The whole ``params.yaml``."""

    data: DataSettings
    download: DownloadSettings
    train: TrainSettings
    tune: TuneSettings
    evaluate: EvaluateSettings
    tracking: TrackingSettings

    @model_validator(mode="before")
    @classmethod
    def _flips_for_the_data(cls, raw: Any) -> Any:
        """``train.augment`` and ``train.tta`` ``auto``: flips where mirroring keeps the class
        (:data:`MIRROR_SAFE`), none elsewhere. Every stage, log and trial sees the value used.
        """
        if not isinstance(raw, dict) or not all(isinstance(raw.get(key), dict)
                                                 for key in ("data", "train")):
            return raw  # the shape's own error follows
        mirror = MIRROR_SAFE.get(raw["data"].get("dataset"))
        if mirror is None:
            return raw
        train = dict(raw["train"])
        if train.get("augment") == "auto":
            train["augment"] = "flip" if mirror else "none"
        if train.get("tta") == "auto":
            train["tta"] = "flip" if mirror else "none"
        return {**raw, "train": train}

    @model_validator(mode="after")
    def _model_fits_dataset(self) -> Settings:
        data = self.data
        colour_32 = data.dataset == "cifar10" or (
            data.dataset == "folder" and data.image_size == (32, 32) and data.channels == 3)
        if not colour_32 and self.train.model == "cifar_cnn":
            raise ValueError(
                f"train.model: 'cifar_cnn' is built for 32x32 colour images; use 'cnn' or "
                f"'mlp' for {data.dataset} (or, for a folder, set data.image_size: [32, 32] "
                "and data.channels: 3)"
            )
        if (self.tune.workers > 1 and self.tune.storage
                and self.tune.storage.startswith("sqlite")):
            raise ValueError(
                "tune.storage: SQLite cannot take several workers writing at once; for "
                "tune.workers > 1 use a journal file (tune.storage: null, the default) or "
                "PostgreSQL (postgresql://user@host/db)")
        return self


def describe_source(source: str) -> str:
    """A :meth:`DataSettings.source` in words: ``mnist`` or ``the folder data/digits``."""
    if source.startswith(FOLDER_PREFIX):
        return f"the folder {source.removeprefix(FOLDER_PREFIX)}"
    return source


class SettingsError(UserError):
    """``params.yaml`` is missing, unreadable or invalid."""


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
        return f"{loc}: unknown key ({hint})"
    if error["type"] == "missing":
        return f"{loc}: missing key (every setting must be given in params.yaml)"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return f"{loc}: {message}" if loc else message


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return list(model.model_fields)


def parse_settings(raw: Any, source: str = "params.yaml") -> Settings:
    """Validate already-parsed params into :class:`Settings` or raise :class:`SettingsError`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err, Settings) for err in exc.errors()]
        raise SettingsError(
            f"{source} is invalid:\n  " + "\n  ".join(problems)
            + f"\nFix the key(s) above in {source} (or the -S override you passed)."
        ) from None


def read_yaml(path: str | Path, if_missing: str = "") -> Any:
    """The data in a YAML file; a missing, unreadable or malformed file is a SettingsError.

    ``if_missing`` is appended to the message for a missing file (what to do about it).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{path}: file not found{if_missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}") from None
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None


def load_settings(path: str | Path = "params.yaml") -> Settings:
    """Read and validate ``params.yaml``."""
    return parse_settings(read_yaml(path, "; run from the project root"), str(path))
