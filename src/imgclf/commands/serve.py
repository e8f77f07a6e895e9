"""What ``make serve`` runs: ``mlflow models serve`` on a local copy of the champion. Its
command line is in ``imgclf/serve.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from imgclf.common.settings import load_settings
from imgclf.tracking.models import local_copy
from imgclf.tracking.registry import settings_champion_uri
from imgclf.tracking.store import tracking_uri

BIN = Path(sys.executable).parent


def serve_command(model: str, host: str, port: int) -> list[str]:
    """The ``mlflow models serve`` command line for ``model`` (a URI or a model folder)."""
    return [str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
            "--host", host, "--port", str(port)]


def execute(args: argparse.Namespace) -> int:
    model_uri = settings_champion_uri(load_settings(args.params))
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
    # mlflow starts its web server (uvicorn) from PATH: use this environment's
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="imgclf-serve-") as folder:
        # a copy: the server then never touches the tracking store
        command = serve_command(str(local_copy(model_uri, Path(folder))), args.host, args.port)
        print(f"serving {model_uri} at http://{args.host}:{args.port}/invocations", flush=True)
        return subprocess.run(command, check=False).returncode
