"""Named sets of params.yaml values (``presets/NAME.yaml``) as ``dvc exp run -S`` arguments.

    make exp PRESET=long
    eval dvc exp run $(python -m imgclf.presets long)     # what that runs

A preset holds only the keys it changes, in params.yaml's layout. It is checked against
params.yaml before anything runs, so a mistyped key stops here with the usual message.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from imgclf.common.cli import run_process, stage_parser
from imgclf.common.errors import UserError
from imgclf.common.settings import Settings, SettingsError, parse_settings, read_yaml

PRESETS_DIR = Path("presets")


def _leaves(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve(name: str, presets_dir: Path = PRESETS_DIR) -> Path:
    """The preset file for ``name`` (a name in ``presets/`` or a path to a YAML file)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = presets_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in presets_dir.glob("*.yaml"))) or "none"
        raise UserError(f"no preset {name!r} in {presets_dir}/ (known: {known})")
    return path


def apply(params: Mapping[str, Any], preset: Any, source: str) -> tuple[Settings, list[str]]:
    """Validate ``preset`` over ``params``; return the settings and the ``-S`` values.

    Raises:
        SettingsError: the preset is not a mapping of params sections, or a value is invalid.
    """
    if not isinstance(preset, Mapping) or not all(isinstance(v, Mapping) for v in preset.values()):
        raise SettingsError(f"{source}: expected params sections (train:, tune:, ...) holding "
                            "the keys to change")
    parse_settings(params)  # a problem in params.yaml itself is reported as such
    settings = parse_settings(_merge(params, preset), source)
    return settings, [f"{key}={json.dumps(value)}" for key, value in _leaves(preset)]


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("preset", help="a name in presets/ (e.g. long) or a YAML file")
    parser.add_argument("--presets-dir", type=Path, default=PRESETS_DIR)
    args = parser.parse_args(argv)
    path = resolve(args.preset, args.presets_dir)
    params = read_yaml(args.params, "; run from the project root") or {}
    _, values = apply(params, read_yaml(path), str(path))
    print(" ".join(shlex.quote(arg) for value in values for arg in ("-S", value)))
    return 0


if __name__ == "__main__":
    run_process(main)
