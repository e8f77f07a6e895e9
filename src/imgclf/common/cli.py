"""What every stage's command line shares: user errors become one message and an exit code."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from imgclf.common.errors import Terminated, UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the module docstring, with ``--params``."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the params file (default: params.yaml)")
    return parser


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
    SQLAlchemy) that live until it exits, yet every full garbage collection walks them again,
    and so does the one at interpreter shutdown: over a second per stage. ``gc.freeze()`` once
    they are loaded, and again when the stage is done, takes them out of collection.
    """
    signal.signal(signal.SIGTERM, raise_terminated)
    gc.freeze()
    code = run_stage(main)
    gc.freeze()
    sys.exit(code)
