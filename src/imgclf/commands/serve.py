"""What ``make serve`` runs: ``mlflow models serve`` on a local copy of the current data's
champion (or of ``--model``). Its command line is in ``imgclf/serve.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from imgclf.common.errors import UserError
from imgclf.common.settings import is_model_uri, load_settings
from imgclf.inference.classifier import SERVED_MODEL_ENV
from imgclf.tracking.models import local_copy
from imgclf.tracking.registry import resolve_version, settings_champion
from imgclf.tracking.store import connect, tracking_uri

BIN = Path(sys.executable).parent


def serve_command(model: str, host: str, port: int) -> list[str]:
    """The ``mlflow models serve`` command line for ``model`` (a URI or a model folder)."""
    return [str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
            "--host", host, "--port", str(port)]


def served_model(args: argparse.Namespace) -> str:
    """The registered version (or run model) to serve: ``--model``, or the champion of the
    registered model for params.yaml's data."""
    settings = load_settings(args.params)
    if not args.model:
        return settings_champion(settings).uri
    if not is_model_uri(args.model):
        raise UserError(f"--model {args.model}: serve a logged model (models:/<name>@<alias>, "
                        "models:/<name>/<version> or runs:/<id>/model), not a file")
    connect(settings.tracking.experiment)
    return resolve_version(args.model)


def execute(args: argparse.Namespace) -> int:
    model_uri = served_model(args)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
    os.environ[SERVED_MODEL_ENV] = model_uri  # the server's answers name it
    # mlflow starts its web server (uvicorn) from PATH: use this environment's
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="imgclf-serve-") as folder:
        # a copy: the server then never touches the tracking store
        command = serve_command(str(local_copy(model_uri, Path(folder))), args.host, args.port)
        print(f"serving {model_uri} at http://{args.host}:{args.port}/invocations", flush=True)
        return subprocess.run(command, check=False).returncode
