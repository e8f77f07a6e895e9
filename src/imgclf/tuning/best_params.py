"""The hand-off file from the tune stage to the train stage (``reports/best_params.yaml``).

It holds the winning ``train.lr`` and ``train.batch_size`` and the runs behind them. DVC
tracks it as a params file of the train stage, so ``dvc exp show`` shows the tuned values.
The writer and the reader live here side by side.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from imgclf.common.files import write_text
from imgclf.common.settings import Settings, SettingsError, parse_settings

TUNED_KEYS = ("lr", "batch_size")


@dataclass(frozen=True)
class BestParams:
    """The tuned values and the ``lineage`` (stage -> MLflow run id) that produced them."""

    lr: float
    batch_size: int
    lineage: dict[str, str]

    def apply(self, settings: Settings, source: str) -> Settings:
        """``settings`` with the tuned ``train.lr`` and ``train.batch_size``, validated.

        Raises:
            SettingsError: a tuned value is invalid (named with ``source``).
        """
        merged = settings.model_dump()
        merged["train"].update(lr=self.lr, batch_size=self.batch_size)
        return parse_settings(merged, source)


def write(path: str | Path, best: BestParams, source: str) -> None:
    """Atomically write ``best``, with a comment saying where the values came from."""
    yaml = YAML(typ="rt")  # keeps the keys in the order given: train first
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump({"train": {"lr": best.lr, "batch_size": best.batch_size},
               "lineage": dict(best.lineage)}, out)
    write_text(path, f"# Written by the tune stage ({source}); train reads it.\n"
               + out.getvalue())


def read(path: str | Path) -> BestParams:
    """The file :func:`write` wrote.

    Raises:
        SettingsError: the file is missing, unreadable or not a best-params file.
    """
    path = Path(path)
    try:
        raw: Any = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
        values = {key: raw["train"][key] for key in TUNED_KEYS}
    except FileNotFoundError:
        raise SettingsError(f"{path}: not found; run the tune stage first (dvc repro tune)"
                            ) from None
    except (OSError, YAMLError, KeyError, TypeError) as exc:
        raise SettingsError(f"{path}: not a best-params file ({exc}); rerun the tune stage"
                            ) from None
    lineage = raw.get("lineage")
    lineage = {str(k): str(v) for k, v in lineage.items()} if isinstance(lineage, dict) else {}
    return BestParams(values["lr"], values["batch_size"], lineage)
