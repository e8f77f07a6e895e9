"""Tensor files: every ``.pt`` file the project writes or reads.

They hold only tensors and plain values, so they load with ``torch.load(weights_only=True)``;
a file carrying code is refused instead of executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imgclf.common.errors import UserError, one_line
from imgclf.common.files import atomic_open


def save_tensors(path: str | Path, data: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a dict of tensors and plain values (weights-only loadable)."""
    with atomic_open(path, "wb") as handle:
        torch.save(data, handle)


def load_tensors(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a file written by :func:`save_tensors` without unpickling arbitrary objects.

    Anything else (a pickle carrying code, a truncated or foreign file) is refused.
    """
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the stage that writes it (dvc repro)") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise _refused(path, one_line(exc)) from None
    if not isinstance(data, dict):
        raise _refused(path, f"it holds a {type(data).__name__}, not a dict")
    return data


def _refused(path: str | Path, reason: str) -> UserError:
    return UserError(f"{path}: refused: not a weights-only tensor file ({reason}). "
                     "Delete it and rerun the stage that writes it (dvc repro).")
