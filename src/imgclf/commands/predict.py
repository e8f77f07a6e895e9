"""What ``imgclf-predict`` does: classify image files with a trained model. Its command
line is in ``imgclf/predict.py``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from imgclf.common.errors import UserError
from imgclf.common.files import atomic_open, project_root, write_text
from imgclf.common.settings import Settings, is_model_uri, load_settings
from imgclf.common.stats import accuracy_interval
from imgclf.data.datasets import DATASETS
from imgclf.data.images import BadImage, png_bytes
from imgclf.data.splits import META_FILE, load_meta, load_split
from imgclf.inference.classifier import Classifier, Preprocessing
from imgclf.tracking.models import load
from imgclf.tracking.registry import resolve_version, settings_champion
from imgclf.tracking.store import connect


def expand(paths: Iterable[str]) -> list[Path]:
    """The files that ``paths`` (files, folders, globs) name, in order, each once.

    Raises:
        UserError: a path that is neither a file, a folder nor a glob that matches.
    """
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found |= dict.fromkeys(sorted(p for p in path.rglob("*") if p.is_file()
                                          and not _hidden(p.relative_to(path))))
        elif path.is_file():
            found[path] = None
        elif matches := sorted(glob.glob(given, recursive=True)):
            found |= dict.fromkeys(Path(m) for m in matches if Path(m).is_file())
        else:
            raise UserError(f"{given}: no such file or folder, and no file matches it as a "
                            "glob")
    return list(found)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def predict_files(classifier: Classifier, files: list[Path], batch_size: int, top_k: int,
                  model: str = "") -> Iterator[dict[str, Any]]:
    """One row per file, in order; a file that is not a readable image gets an ``error``.
    Every row names the ``model`` that answered (a registered version, not an alias)."""
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        pixels: list[np.ndarray] = []
        errors: dict[int, str] = {}
        for i, path in enumerate(chunk):
            try:
                pixels.append(classifier.preprocessing.pixels(path))
            except BadImage as exc:
                errors[i] = str(exc)
        probabilities: Iterator[torch.Tensor] = iter(
            classifier.probabilities_of_pixels(np.stack(pixels)) if pixels else [])
        for i, path in enumerate(chunk):
            yield ({"path": str(path), "error": errors[i], "model": model} if i in errors
                   else {"path": str(path), **_top(classifier, next(probabilities), top_k),
                         "model": model})


def _top(classifier: Classifier, probabilities: torch.Tensor, top_k: int) -> dict[str, Any]:
    values, indices = probabilities.topk(top_k)
    row: dict[str, Any] = {"class": classifier.classes[int(indices[0])],
                           "probability": round(float(values[0]), 6)}
    for rank, (value, index) in enumerate(zip(values, indices, strict=True), start=1):
        row[f"class_{rank}"] = classifier.classes[int(index)]
        row[f"probability_{rank}"] = round(float(value), 6)
    return row


def rows_text(rows: list[dict[str, Any]], fmt: str, top_k: int) -> str:
    """The rows as CSV or JSON (``fmt`` is ``.csv`` or ``.json``)."""
    if fmt == ".json":
        return json.dumps(rows, indent=1) + "\n"
    ranks = [f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("class", "probability")]
    out = io.StringIO()
    writer = csv.DictWriter(out, ["path", "class", "probability", *ranks, "error", "model"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def folder_accuracy(rows: list[dict[str, Any]], classes: list[str]
                    ) -> tuple[float, tuple[float, float], int] | None:
    """Accuracy against the class folders' names (as :func:`export_samples` writes them, or
    as the pipeline reads them: subfolders of a class folder belong to it), with its 95%
    interval, when every readable file sits in a folder named after a class; else ``None``."""
    by_folder = {safe_name(name): name for name in classes} | {name: name for name in classes}
    read = [row for row in rows if "class" in row]
    truth = [next((by_folder[folder.name] for folder in Path(row["path"]).parents
                   if folder.name in by_folder), None) for row in read]
    if not read or None in truth:
        return None
    correct = sum(row["class"] == name for row, name in zip(read, truth, strict=True))
    return correct / len(read), accuracy_interval(correct, len(read)), len(read)


def export_samples(data: Path, split: str, out: Path) -> int:
    """Write ``split`` of the preprocessed ``data`` as ``out/<class>/<index>.png``."""
    meta, images = load_meta(data), load_split(data, split)
    folders = [out / safe_name(name) for name in meta.classes]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for index in range(len(images)):
        label = int(images.labels[index])
        pixels = images.gather(torch.tensor([index]))[0].numpy()
        with atomic_open(folders[label] / f"{index:06d}.png") as handle:
            handle.write(png_bytes(pixels))
    return len(images)


def safe_name(name: str) -> str:
    """A class name usable as one folder name."""
    cleaned = name.replace("/", "_").replace("\\", "_").strip()
    return "_" + cleaned if cleaned.startswith(".") or not cleaned else cleaned


def current_data(settings: Settings, data: Path) -> tuple[list[str], list[int]] | None:
    """The current dataset's class names and image shape: the preprocessed splits' when
    they exist, a built-in dataset's published ones otherwise (``None``: not known yet)."""
    folder = data if data.is_absolute() else project_root() / data
    if (folder / META_FILE).is_file():
        meta = load_meta(folder)
        return meta.classes, meta.image_shape
    spec = DATASETS.get(settings.data.dataset)
    return (list(spec.classes), list(spec.image_shape)) if spec else None


def mismatch(preprocessing: Preprocessing, classes: list[str], shape: list[int]) -> str | None:
    """In words, how a model's input and classes differ from a dataset's (``None``: they
    agree)."""
    differences = []
    if preprocessing.classes != classes:
        differences.append(f"classes {_names(preprocessing.classes)} against "
                           f"{_names(classes)}")
    if preprocessing.image_shape[0] != shape[0]:
        differences.append(f"{preprocessing.image_shape[0]} channels against {shape[0]}")
    if preprocessing.image_shape[1:] != shape[1:]:
        differences.append("size {}x{} against {}x{}".format(*preprocessing.image_shape[1:],
                                                             *shape[1:]))
    return "; ".join(differences) or None


def _names(classes: list[str], shown: int = 4) -> str:
    listed = ", ".join(classes[:shown]) + (", ..." if len(classes) > shown else "")
    return f"{len(classes)} ({listed})"


def warn_on_other_data(classifier: Classifier, source: str, settings: Settings, data: Path
                       ) -> None:
    """One line on stderr when the model's classes, channels or size are not the current
    dataset's: its answers may not mean what the user expects, but the user chose it."""
    current = current_data(settings, data)
    if current is not None and (differs := mismatch(classifier.preprocessing, *current)):
        print(f"warning: {source} was trained on other data than params.yaml's ({differs}); "
              "going on with the model given", file=sys.stderr)


def choose_model(args: argparse.Namespace) -> tuple[str, Settings | None]:
    """The model to load, as a concrete URI or path: ``--model`` (a registry alias resolved
    to its version), else the champion of the current data's registered model."""
    try:
        settings = load_settings(args.params)
    except UserError:
        if not args.model:
            raise
        return args.model, None  # no project params: nothing to compare the model with
    if not args.model:
        return settings_champion(settings).uri, settings
    if is_model_uri(args.model):
        connect(settings.tracking.experiment)  # the project's store, where its models are
        return resolve_version(args.model), settings
    return args.model, settings


def execute(args: argparse.Namespace) -> int:
    if args.export_samples is not None:
        count = export_samples(args.data, args.split, args.export_samples)
        print(f"wrote {count} {args.split} images to {args.export_samples}", file=sys.stderr)
        return 0
    files = expand(args.paths)
    if not files:
        raise UserError(f"no files in {' '.join(args.paths)}")
    source, settings = choose_model(args)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our bar only
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier = load(source, device).classifier
    if settings is not None:
        warn_on_other_data(classifier, source, settings, args.data)
    top_k = min(args.top_k, len(classifier.classes))
    bar = tqdm(total=len(files), unit="image", file=sys.stderr, disable=not sys.stderr.isatty())
    rows = []
    for row in predict_files(classifier, files, args.batch_size, top_k, source):
        rows.append(row)
        bar.update()
    bar.close()
    if not any("class" in row for row in rows):
        raise UserError(f"none of the {len(files)} files is a readable image "
                        f"(first: {rows[0]['path']}: {rows[0]['error']})")
    fmt = args.output.suffix.lower() if args.output else ".csv"
    text = rows_text(rows, fmt, top_k)
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    report(rows, classifier.classes, source, args.output)
    return 0


def report(rows: list[dict[str, Any]], classes: list[str], source: str, output: Path | None
           ) -> None:
    failed = sum("error" in row for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} files classified with {source}"
          + (f"; {failed} could not be read (see the error column)" if failed else "")
          + (f"; rows in {output}" if output else ""), file=sys.stderr)
    if found := folder_accuracy(rows, classes):
        accuracy, (low, high), n = found
        print(f"accuracy against the folder names: {accuracy:.4f} (95% interval "
              f"{low:.4f}-{high:.4f}, {n} images)", file=sys.stderr)
