"""Serve the registry's champion model over HTTP with ``mlflow models serve``.

    python -m imgclf.serve [--host 127.0.0.1] [--port 5001]

The model is loaded in the current environment (``--env-manager local``) from its code and
its ``torch.export`` program: nothing is unpickled, and nothing is written to the tracking
store or the project. Requests are MLflow's scoring protocol: POST ``/invocations`` with
images in a column named ``image`` (base64-encoded PNG or JPEG bytes, or floats in [0, 1]
shaped channels x height x width) in any of MLflow's forms, e.g.
``{"inputs": {"image": ["<base64>"]}}``; each image is answered with its ``class``, that
class's ``probability`` and every class's ``probabilities``. Bad input gets HTTP 400 with
a message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from imgclf.common.cli import run_process, stage_parser
from imgclf.common.settings import load_settings
from imgclf.tracking.models import local_copy
from imgclf.tracking.registry import settings_champion_uri
from imgclf.tracking.store import tracking_uri

BIN = Path(sys.executable).parent


def serve_command(model: str, host: str, port: int) -> list[str]:
    """The ``mlflow models serve`` command line for ``model`` (a URI or a model folder)."""
    return [str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
            "--host", host, "--port", str(port)]


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)

    model_uri = settings_champion_uri(load_settings(args.params))
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
    # mlflow starts its web server (uvicorn) from PATH: use this environment's
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="imgclf-serve-") as folder:
        # a copy: the server then never touches the tracking store
        command = serve_command(str(local_copy(model_uri, Path(folder))), args.host, args.port)
        print(f"serving {model_uri} at http://{args.host}:{args.port}/invocations", flush=True)
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    run_process(main)
