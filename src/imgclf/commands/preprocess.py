"""The preprocess stage's work: decode the raw files into uint8 splits and audit a folder
dataset. Its command line is in ``imgclf/preprocess.py``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import posixpath
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from imgclf.common.files import write_json
from imgclf.common.settings import DataSettings, load_settings
from imgclf.data import folder
from imgclf.data.datasets import DATASETS, DataError, DatasetSpec
from imgclf.data.folders import ImageFile
from imgclf.data.splits import (
    Meta,
    Split,
    channel_stats,
    chunked_channel_stats,
    save_indexed_splits,
    save_meta,
    save_splits,
    stratified_split,
)
from imgclf.tracking.runs import StageRun, stage_run

SAMPLES_PER_CLASS = 8
GALLERY_GROUPS = 6
GALLERY_SKIPPED = 20
AUDIT_COUNTS = ("files", "images", "skipped", "duplicates", "leaked", "removed",
                "imbalance_ratio")


_IDX_UBYTE = 0x08


def read_idx(path: Path) -> torch.Tensor:
    """Read a (gzipped) IDX file of unsigned bytes into a uint8 tensor."""
    try:
        data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read IDX file: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != header + (torch.tensor(dims).prod().item() if dims else 0):
        raise DataError(f"{path}: IDX header says {dims} but the file holds {len(data) - header}"
                        " bytes of data")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_MEMBERS = {
    "train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["cifar-10-batches-bin/test_batch.bin"],
}


def read_cifar_binary(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read CIFAR-10's binary archive: fixed 3073-byte records (label, 3x32x32 pixels).

    Only the known batch members are read, straight from the archive; nothing is extracted
    to disk and nothing is unpickled.
    """
    splits = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for split, members in _CIFAR_MEMBERS.items():
                chunks = []
                for member in members:
                    handle = archive.extractfile(member)
                    if handle is None:
                        raise DataError(f"{path}: {member} is not a regular file")
                    chunks.append(handle.read())
                raw = b"".join(chunks)
                if len(raw) % _CIFAR_RECORD:
                    raise DataError(f"{path}: {split} batches are not whole 3073-byte records")
                records = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
                records = records.reshape(-1, _CIFAR_RECORD)
                splits[split] = (records[:, 1:].reshape(-1, 3, 32, 32).clone(),
                                 records[:, 0].long())
    except KeyError as exc:
        raise DataError(f"{path}: missing member {exc}") from None
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read CIFAR-10 archive: {exc}") from None
    return splits


def read_raw(spec: DatasetSpec, raw_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Decode the downloaded files into ``{"train"|"test": (uint8 NCHW images, int64 labels)}``."""
    if spec.name == "cifar10":
        splits = read_cifar_binary(raw_dir / spec.files[0].name)
    else:
        splits = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte.gz")
            labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte.gz").long()
            if images.ndim != 3 or labels.ndim != 1:
                raise DataError(f"{raw_dir}: {split} IDX files have unexpected dimensions")
            splits[split] = (images.unsqueeze(1), labels)
    for split, (images, labels) in splits.items():
        if tuple(images.shape[1:]) != spec.image_shape:
            raise DataError(f"{raw_dir}: {split} images are {tuple(images.shape[1:])}, "
                            f"{spec.name} has {spec.image_shape}")
        if len(images) != len(labels):
            raise DataError(f"{raw_dir}: {split} has {len(images)} images but "
                            f"{len(labels)} labels")
        if len(labels) and int(labels.max()) >= len(spec.classes):
            raise DataError(f"{raw_dir}: {split} labels exceed the {len(spec.classes)} classes")
    return splits


def preprocess(raw_dir: Path, spec: DatasetSpec, cfg: DataSettings
               ) -> tuple[dict[str, Split], Meta]:
    """Decode ``raw_dir`` and return the train/val/test splits and their metadata."""
    decoded = read_raw(spec, raw_dir)
    full_train = Split(*decoded["train"])
    test = Split(*decoded["test"])
    if cfg.train_limit is not None and cfg.train_limit < len(full_train):
        full_train = full_train.take(stratified_split(full_train.labels, cfg.train_limit,
                                                      cfg.seed)[0])
    if cfg.test_limit is not None and cfg.test_limit < len(test):
        test = test.take(stratified_split(test.labels, cfg.test_limit, cfg.seed)[0])
    val_index, train_index = stratified_split(full_train.labels, cfg.val_fraction, cfg.seed)
    splits = {"train": full_train.take(train_index), "val": full_train.take(val_index),
              "test": test}
    mean, std = channel_stats(splits["train"].images)
    meta = Meta(
        dataset=spec.name,
        classes=list(spec.classes),
        image_shape=list(spec.image_shape),
        mean=mean,
        std=std,
        counts={name: split.class_counts(len(spec.classes)) for name, split in splits.items()},
        resize=cfg.resize,
    )
    return splits, meta


def sample_grid(split: Split, classes: list[str], per_class: int = SAMPLES_PER_CLASS) -> Figure:
    """A figure with one row of sample images per class, labelled with the class names.

    The samples are tiled into one image first: one axes draws in a fraction of the time
    of one axes per sample.
    """
    channels, height, width = split.images.shape[1:]
    cell_h, cell_w = height + 2, width + 2  # a 2-pixel white gap between samples
    canvas = torch.full((len(classes) * cell_h, per_class * cell_w, channels), 255,
                        dtype=torch.uint8)
    for row in range(len(classes)):
        picks = torch.nonzero(split.labels == row).flatten()[:per_class]
        for col, index in enumerate(picks.tolist()):
            top, left = row * cell_h, col * cell_w
            canvas[top:top + height, left:left + width] = split.images[index].permute(1, 2, 0)
    figure = Figure(figsize=(per_class * 0.7 + 1.2, len(classes) * 0.7))
    ax = figure.add_subplot()
    ax.imshow(canvas.squeeze(-1).numpy(), cmap="gray" if channels == 1 else None,
              vmin=0, vmax=255)
    ax.set_yticks([row * cell_h + height / 2 for row in range(len(classes))], classes,
                  fontsize=7)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    figure.tight_layout()
    return figure


def read_manifest(raw_dir: Path, dataset: str) -> dict[str, Any]:
    """The download stage's manifest, checked to describe ``dataset``."""
    try:
        manifest: dict[str, Any] = json.loads((raw_dir / "manifest.json").read_text())
        found = manifest["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{raw_dir}: no download manifest; run the download stage first "
                        "(dvc repro download)") from None
    if found != dataset:
        raise DataError(f"{raw_dir} holds {found} but data.dataset is {dataset}; "
                        "rerun the download stage (dvc repro)")
    return manifest


def manifest_source(manifest: dict[str, Any]) -> str:
    """Where the downloaded files came from: the folder dataset's path, or the folder (or
    URL) the built-in dataset's files were copied from."""
    if "root" in manifest:
        return str(manifest.get("source", manifest["root"]))
    sources = {posixpath.dirname(str(entry.get("source", ""))) for entry in manifest["files"]}
    return sources.pop() if len(sources) == 1 else ""


def preprocess_folder(manifest: dict[str, Any], cfg: DataSettings, out_dir: Path
                      ) -> tuple[Meta, dict[str, Any], dict[str, Split], Figure]:
    """Decode a folder dataset listed in ``manifest`` and write its splits to ``out_dir``.

    The images are decoded into a memory-mapped file beside the splits and copied from it a
    chunk at a time, so the folder need not fit in memory. Returns the metadata, the
    audit, a few images of each split (for the sample grid) and the audit's gallery.
    """
    files = [ImageFile(**entry) for entry in manifest["files"]]
    source = manifest.get("source", manifest["root"])
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / ".decoded.npy"
    try:
        data = folder.load(Path(manifest["root"]), files, cfg, source, allocate=lambda shape:
                           np.lib.format.open_memmap(scratch, "w+", np.uint8, shape))
        found = folder.splits(data, cfg, source)
        mean, std = chunked_channel_stats(data.images, found.rows["train"])
        meta = Meta(dataset="folder", classes=data.classes,
                    image_shape=list(data.images.shape[1:]), mean=mean, std=std,
                    counts=found.counts(len(data.classes)), resize=cfg.resize)
        save_indexed_splits(out_dir, data.images, found.labels, found.rows, meta)
        samples = {name: _samples(data.images, found.labels, rows, len(data.classes))
                   for name, rows in found.rows.items()}
        return meta, found.audit, samples, audit_gallery(data, found.audit)
    finally:
        scratch.unlink(missing_ok=True)


def _samples(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, classes: int) -> Split:
    """Up to :data:`SAMPLES_PER_CLASS` images of each class, copied into memory."""
    picked = np.concatenate([rows[labels[rows] == c][:SAMPLES_PER_CLASS]
                             for c in range(classes)])
    picked.sort()
    return Split(torch.from_numpy(images[picked].copy()), torch.from_numpy(labels[picked]))


def builtin_audit(splits: dict[str, Split], meta: Meta) -> dict[str, Any]:
    """The audit of a published dataset: its checksums already vouch for every file."""
    totals = [sum(counts[c] for counts in meta.counts.values())
              for c in range(len(meta.classes))]
    return {"images": sum(len(split) for split in splits.values()), "skipped": 0,
            "image_size": meta.image_shape[1:], "channels": meta.image_shape[0],
            "classes": dict(zip(meta.classes, totals, strict=True)),
            "split_sizes": {name: len(split) for name, split in splits.items()},
            "imbalance_ratio": max(totals) / max(min(totals), 1)}


def audit_gallery(data: folder.FolderData, audit: dict[str, Any]) -> Figure:
    """Thumbnails of duplicate images, two per group, and the skipped files with why."""
    by_path = {file.path: int(row) for file, row in zip(data.files, data.rows, strict=True)}
    groups = [paths[:2] for paths in audit["duplicate_files"][:GALLERY_GROUPS]]
    skipped = audit["skipped_files"][:GALLERY_SKIPPED]
    rows = max(1, len(groups))
    figure = Figure(figsize=(9, 1.4 * rows + 0.25 * len(skipped) + 0.6))
    grid = figure.add_gridspec(rows + 1, 3, height_ratios=[*([1.4] * rows),
                                                           0.25 * len(skipped) + 0.4])
    for row, paths in enumerate(groups):
        for col, path in enumerate(paths):
            ax = figure.add_subplot(grid[row, col])
            image = np.asarray(data.images[by_path[path]]).transpose(1, 2, 0)
            image = image[..., 0] if image.shape[-1] == 1 else image
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(path, fontsize=6)
            ax.axis("off")
    text = figure.add_subplot(grid[rows, :])
    text.axis("off")
    lines = [f"skipped {entry['path']}: {entry['reason'][:90]}" for entry in skipped]
    title = (f"{audit['duplicates']} duplicate(s), {audit['leaked']} leaked into test, "
             f"{audit['skipped']} skipped")
    text.text(0, 1, "\n".join([title, *lines]), fontsize=7, va="top", family="monospace")
    return figure


def execute(args: argparse.Namespace) -> int:
    settings = load_settings(args.params)
    manifest = read_manifest(args.raw, settings.data.dataset)
    with stage_run("preprocess", settings, upstream=manifest.get("lineage"),
                   data_version=manifest.get("data_version"), deps=[args.raw]) as run:
        gallery = None
        if settings.data.dataset == "folder":
            meta, audit, splits, gallery = preprocess_folder(manifest, settings.data, args.out)
            sizes = audit["split_sizes"]
        else:
            splits, meta = preprocess(args.raw, DATASETS[settings.data.dataset], settings.data)
            audit = builtin_audit(splits, meta)
            sizes = {name: len(split) for name, split in splits.items()}
        meta = replace(meta, data_version=manifest.get("data_version", ""),
                       lineage=run.lineage, source=manifest_source(manifest))
        save_meta(args.out, meta)
        if gallery is None:
            save_splits(args.out, splits, meta)
        write_json(args.audit, audit)
        log_outputs(run, args, meta, audit, sizes, splits["train"], gallery)
    return 0


def log_outputs(run: StageRun, args: argparse.Namespace, meta: Meta, audit: dict[str, Any],
                sizes: dict[str, int], train: Split, gallery: Figure | None) -> None:
    """The metrics file, and the params, audit and figures on the MLflow run."""
    counts = {key: audit[key] for key in AUDIT_COUNTS if key in audit}
    sized = {f"{name}_size": size for name, size in sizes.items()}
    write_json(args.metrics, {**sized, **counts, "mlflow_run_id": run.run_id})
    run.log_params({"mean": meta.mean, "std": meta.std, **sized,
                    "image_shape": meta.image_shape, "classes": len(meta.classes),
                    **{f"audit/{key}": value for key, value in counts.items()}})
    run.log_dict({name: dict(zip(meta.classes, split_counts, strict=True))
                  for name, split_counts in meta.counts.items()}, "class_counts.json")
    run.log_dict(audit, "audit.json")
    run.log_figure(sample_grid(train, meta.classes), "samples.png")
    if gallery is not None:
        run.log_figure(gallery, "audit.png")
    print(f"{meta.dataset}: {', '.join(f'{n} {size}' for n, size in sizes.items())}; "
          f"mean {meta.mean}, std {meta.std}"
          + (f"; {audit['skipped']} skipped, {audit['leaked']} leaked"
             if gallery is not None else ""))
