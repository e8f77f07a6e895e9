"""Typed, immutable settings loaded once from ``params.yaml``.

Every stage validates the whole file before doing any work, so a typo anywhere fails the
first stage DVC runs, with a message naming the key, instead of surfacing hours later.
The YAML is read with ruamel (YAML 1.2), the same parser DVC uses for ``dvc exp run -S``,
so ``lr: 1e-3`` means the same number to both.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
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
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from imgclf.errors import UserError

Dataset = Literal["fashion-mnist", "mnist", "cifar10"]
ModelName = Literal["mlp", "cnn", "cifar_cnn"]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Finite = Annotated[float, AfterValidator(_finite)]


class _Section(BaseModel):
    # strict: no silent "3" -> 3 or true -> 1 coercion; frozen: settings never change after load.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataSettings(_Section):
    """Which dataset to use and how to split it (download, preprocess)."""

    dataset: Dataset
    val_fraction: Finite = Field(gt=0, lt=1)
    seed: int
    train_limit: int | None = Field(ge=10)
    test_limit: int | None = Field(ge=10)


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
    augment: Literal["none", "crop", "flip", "crop_flip"]
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    threads: int = Field(ge=0, le=1024)
    eval_batch_size: int = Field(ge=1, le=65536)


class EvaluateSettings(_Section):
    """Test-set evaluation."""

    batch_size: int = Field(ge=1, le=65536)


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
    evaluate: EvaluateSettings
    tracking: TrackingSettings

    @model_validator(mode="after")
    def _model_fits_dataset(self) -> Settings:
        colour = self.data.dataset == "cifar10"
        if colour and self.train.model == "cnn":
            raise ValueError(
                "train.model: 'cnn' is built for 28x28 grey images; use 'cifar_cnn' or 'mlp' "
                "for cifar10"
            )
        if not colour and self.train.model == "cifar_cnn":
            raise ValueError(
                f"train.model: 'cifar_cnn' is built for 32x32 colour images; use 'cnn' or "
                f"'mlp' for {self.data.dataset}"
            )
        return self


class SettingsError(UserError):
    """``params.yaml`` is missing, unreadable or invalid."""


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
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


def load_settings(path: str | Path = "params.yaml") -> Settings:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{path}: file not found; run from the project root") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}") from None
    try:
        raw = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_settings(raw, str(path))
