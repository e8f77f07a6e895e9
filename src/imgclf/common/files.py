"""Filesystem helpers: the project root and atomic writes.

Every output goes through a temporary file in the same directory followed by ``os.replace``,
so a killed stage never leaves a half-written file for DVC to cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def project_root() -> Path:
    """The project root: ``$DVC_ROOT`` under DVC, else the nearest folder holding ``dvc.yaml``.

    DVC sets ``DVC_ROOT`` to the workspace even when an experiment runs in a temporary copy,
    so every run lands in the workspace's one tracking store.
    """
    if root := os.environ.get("DVC_ROOT"):
        return Path(root).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "dvc.yaml").is_file() or (folder / ".dvc").is_dir():
            return folder
    return cwd


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new, uniquely named temporary file beside ``path``.

    It gets the mode any new file gets (0644 under umask 022), unlike ``tempfile.mkstemp``'s
    private 0600, so teammates on a shared machine can read the outputs.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8)."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
