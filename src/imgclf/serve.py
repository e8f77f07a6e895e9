"""Serve the champion model of params.yaml's data over HTTP with ``mlflow models serve``.

    python -m imgclf.serve [--model URI] [--host 127.0.0.1] [--port 5001]

The model is loaded in the current environment (``--env-manager local``) from its code and
its ``torch.export`` program: nothing is unpickled, and nothing is written to the tracking
store or the project. Requests are MLflow's scoring protocol: POST ``/invocations`` with
images in a column named ``image`` (base64-encoded PNG or JPEG bytes, or floats in [0, 1]
shaped channels x height x width) in any of MLflow's forms, e.g.
``{"inputs": {"image": ["<base64>"]}}``; each image is answered with its ``class``, that
class's ``probability``, every class's ``probabilities`` and the ``model`` version that
answered. Bad input gets HTTP 400 with a message. ``--model`` serves another logged model
(``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model``) instead.
"""

from __future__ import annotations

import argparse

from imgclf.common.cli import run_process, stage_parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--model", help="a logged model's URI (default: the champion)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.commands import serve  # torch and MLflow load only once the arguments parse

    return serve.execute(args)


if __name__ == "__main__":
    run_process(main)
