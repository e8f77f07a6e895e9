"""What every stage's command line shares: user errors become one message and an exit code."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from imgclf.common.errors import Terminated, UserError
from imgclf.common.files import project_root

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def program_name(argv0: str | None = None) -> str:
    """How the user ran this command: ``python -m imgclf.train`` or ``imgclf-compare``."""
    path = Path(argv0 if argv0 is not None else sys.argv[0])
    if path.suffix == ".py" and path.parent.name == "imgclf":
        return f"python -m imgclf.{path.stem}"
    return path.name or "imgclf"


def description(doc: str | None) -> str:
    """The first paragraph of a module docstring, as ``--help`` prints it."""
    paragraph = (doc or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split()).replace("``", "`")


def _parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=program_name(), description=description(doc))


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the module docstring, with ``--params``."""
    parser = _parser(doc)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the params file (default: params.yaml)")
    return parser


def tool_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser for a tool run from anywhere inside the project: ``--params`` defaults to the
    project root's ``params.yaml`` (see :func:`project_folder`)."""
    parser = _parser(doc)
    parser.add_argument("--params", type=Path, default=None,
                        help="the params file (default: params.yaml at the project root)")
    return parser


def project_folder() -> Path:
    """The project this command runs in: the nearest folder up from here with a ``dvc.yaml``.

    Raises:
        UserError: not inside a project, so there is no store or params file to use.
    """
    root = project_root()
    if not (os.environ.get("DVC_ROOT") or (root / "dvc.yaml").is_file()):
        raise UserError(f"{Path.cwd()} is not inside an imgclf project (no dvc.yaml here or "
                        "in a folder above): cd into the project")
    return root


def run_stage(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a stage's ``main``; report a :class:`UserError` as ``error: ...`` without a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("terminated", file=sys.stderr)
        return EXIT_TERMINATED


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so open runs close as KILLED and temp files go."""
    raise Terminated(f"received signal {signum}")


def run_process(main: Callable[[list[str] | None], int]) -> NoReturn:
    """The ``python -m imgclf.<stage>`` entry point: :func:`run_stage`, then exit with its code.

    SIGTERM (from ``dvc``, ``torchrun`` or a job scheduler) raises :class:`Terminated` in the
    main thread, so the stage unwinds and exits with 143.

    A stage process holds millions of objects from the libraries it loaded (torch, MLflow,
    SQLAlchemy) that live until it exits, yet the full garbage collection at interpreter
    shutdown walks them all again: over a second per stage. ``gc.freeze()`` when the stage is
    done takes them out of it. (The libraries load inside ``main``, once the arguments parse,
    so that ``--help`` is quick.)
    """
    signal.signal(signal.SIGTERM, raise_terminated)
    code = run_stage(main)
    gc.freeze()
    sys.exit(code)
