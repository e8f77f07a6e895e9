"""Serve the current study in optuna-dashboard: every trial, its per-epoch values, and the
plots Optuna draws, live while the tune stage runs.

    python -m imgclf.dashboard [--params params.yaml] [--host 127.0.0.1] [--port 8080]

The study is the one ``params.yaml`` names (its journal file under ``optuna/``, or the
database of ``tune.storage``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from optuna_dashboard import run_server

from imgclf.common.cli import project_folder, run_process, tool_parser
from imgclf.common.errors import UserError
from imgclf.common.settings import load_settings
from imgclf.tuning import studies


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8080,
                        help="the port to listen on (default: 8080)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = project_folder()
    settings = load_settings(args.params or root / "params.yaml")
    name = studies.study_name(settings)
    url = studies.storage_url(settings.tune, root, name)
    if "://" not in url and not Path(url).is_file():
        raise UserError(f"no study {name} yet ({url} does not exist): run the tune stage "
                        "first (make run)")
    print(f"optuna-dashboard for study {name} ({url}) at http://{args.host}:{args.port}/")
    run_server(studies.open_storage(url), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    run_process(main)
