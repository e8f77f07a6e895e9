"""A folder dataset, from the first stage's manifest to the train, validation and test
splits and their audit.

The test split is the folder's ``test/`` when it has one, else a seeded, stratified share
(``data.test_fraction``); validation comes from the training images as for every dataset. A
test image whose exact pixels also appear on the training side is leakage: with
``data.dedupe`` those training copies are dropped. Everything found goes in the audit.

The decoded images live in one array (a memory-mapped file for large folders); the splits
are lists of its rows, so nothing is copied until the splits are written.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.common.errors import UserError
from imgclf.common.settings import DataSettings
from imgclf.data.audit import (
    DecodedFiles,
    auto_channels,
    auto_size,
    decode_all,
    headers,
    shared_zeros,
)
from imgclf.data.folders import ImageFile
from imgclf.data.splits import stratified_split

MAX_LISTED = 1000  # entries per list in the audit
Allocate = Callable[[tuple[int, ...]], np.ndarray]


class FolderDataError(UserError):
    """The folder's images cannot make a dataset."""


@dataclass
class FolderData:
    """The decoded images (``images[rows[i]]`` is ``files[i]``) and what the audit found."""

    classes: list[str]
    images: np.ndarray
    rows: np.ndarray
    labels: np.ndarray  # per decoded file
    files: list[ImageFile]
    hashes: list[str]
    audit: dict[str, Any]

    @property
    def given_split(self) -> list[str | None]:
        return [f.split for f in self.files]


@dataclass
class FolderSplits:
    """Each split's rows of :attr:`FolderData.images`, and the label of every row."""

    rows: dict[str, np.ndarray]
    labels: np.ndarray  # by row of the images array; -1 for a file that did not decode
    audit: dict[str, Any]

    def counts(self, num_classes: int) -> dict[str, list[int]]:
        return {name: np.bincount(self.labels[rows], minlength=num_classes).tolist()
                for name, rows in self.rows.items()}


def load(root: Path, files: list[ImageFile], cfg: DataSettings, source: str,
         workers: int | None = None, allocate: Allocate | None = None) -> FolderData:
    """Decode every file of the manifest at the size and channels asked (or found);
    ``allocate(shape)`` gives the array they go into (default: shared memory).

    Raises:
        FolderDataError: no file could be read, or a class has no readable image.
    """
    found = headers(root, files) if cfg.image_size is None or cfg.channels == "auto" else []
    size = cfg.image_size or auto_size(found)
    channels = auto_channels(found) if cfg.channels == "auto" else cfg.channels
    shape = (len(files), channels, *size)
    out = allocate(shape) if allocate else shared_zeros(shape)
    decoded = decode_all(root, files, size, cfg.resize, channels, workers, out)
    classes = sorted({f.label for f in files})
    _check_readable(source, classes, files, decoded)
    index = {name: i for i, name in enumerate(classes)}
    audit = {
        "files": len(files), "images": len(decoded.files), "skipped": len(decoded.skipped),
        "image_size": list(size), "channels": channels, "resize": cfg.resize,
        "original_sizes": dict(Counter(f"{h.size[1]}x{h.size[0]}" for h in found if h)
                               .most_common(20)),
        "original_modes": dict(Counter(h.mode for h in found if h)),
        "skipped_files": decoded.skipped[:MAX_LISTED],
    }
    return FolderData(classes, decoded.images, decoded.rows,
                      np.array([index[f.label] for f in decoded.files], dtype=np.int64),
                      decoded.files, decoded.hashes, audit)


def _check_readable(source: str, classes: list[str], files: list[ImageFile],
                    decoded: DecodedFiles) -> None:
    if not decoded.files:
        reasons = Counter(s["reason"].split(":")[0] for s in decoded.skipped).most_common(3)
        raise FolderDataError(
            f"{source}: none of the {len(files)} image files could be read "
            f"({'; '.join(f'{n} {why}' for why, n in reasons)}); check that they are images")
    readable = {f.label for f in decoded.files}
    if missing := [name for name in classes if name not in readable]:
        raise FolderDataError(f"{source}: class(es) {', '.join(missing)} have no readable "
                              "image; add images or remove the class folder(s)")


def splits(data: FolderData, cfg: DataSettings, source: str) -> FolderSplits:
    """Train, validation and test rows, leakage removed per ``data.dedupe``; the audit.

    Positions below count the decoded files; rows count the images array.
    """
    test, train = _test_split(data, cfg, source)
    leaks = _leaks(data, train, test)
    leaked_train = {i for leak in leaks for i in leak["train"]}
    if cfg.dedupe:
        train = [i for i in train if i not in leaked_train]
    train = _limit(data, train, cfg.train_limit, cfg.seed)
    test = _limit(data, test, cfg.test_limit, cfg.seed)
    val_local, train_local = _stratified(torch.from_numpy(data.labels[train]),
                                         cfg.val_fraction, cfg.seed, source, "data.val_fraction")
    positions = {"train": np.array(train)[train_local.numpy()],
                 "val": np.array(train)[val_local.numpy()], "test": np.array(test, dtype=int)}
    labels = np.full(len(data.images), -1, dtype=np.int64)
    labels[data.rows] = data.labels
    rows = {name: data.rows[pos] for name, pos in positions.items()}
    audit = {**data.audit, **_class_audit(data.classes, rows, labels), **_duplicates(data),
             "leaked": len(leaks), "removed": len(leaked_train) if cfg.dedupe else 0,
             "leaks": [{"test": data.files[leak["test"]].path,
                        "train": [data.files[i].path for i in leak["train"]]}
                       for leak in leaks][:MAX_LISTED]}
    return FolderSplits(rows, labels, audit)


def _stratified(labels: torch.Tensor, first: float | int, seed: int, source: str, key: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return stratified_split(labels, first, seed)
    except UserError as exc:
        raise FolderDataError(f"{source}: too few images for the splits asked ({exc}); add "
                              f"images to the small classes or change {key}") from None


def _test_split(data: FolderData, cfg: DataSettings, source: str
                ) -> tuple[list[int], list[int]]:
    given = data.given_split
    if any(split is not None for split in given):
        return ([i for i, split in enumerate(given) if split == "test"],
                [i for i, split in enumerate(given) if split == "train"])
    test, train = _stratified(torch.from_numpy(data.labels), cfg.test_fraction, cfg.seed,
                              source, "data.test_fraction")
    return test.tolist(), train.tolist()


def _limit(data: FolderData, positions: list[int], limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= len(positions):
        return positions
    chosen, _ = stratified_split(torch.from_numpy(data.labels[positions]), limit, seed)
    return [positions[i] for i in chosen.tolist()]


def _leaks(data: FolderData, train: list[int], test: list[int]) -> list[dict[str, Any]]:
    """Each test image with the training-side images that hold exactly its pixels."""
    on_train: dict[str, list[int]] = defaultdict(list)
    for i in train:
        on_train[data.hashes[i]].append(i)
    return [{"test": i, "train": on_train[data.hashes[i]]}
            for i in test if data.hashes[i] in on_train]


def _duplicates(data: FolderData) -> dict[str, Any]:
    """How many images repeat another's exact pixels (anywhere in the folder), and which."""
    groups: dict[str, list[str]] = defaultdict(list)
    for file, pixel_hash in zip(data.files, data.hashes, strict=True):
        groups[pixel_hash].append(file.path)
    repeated = [paths for paths in groups.values() if len(paths) > 1]
    return {"duplicates": sum(len(paths) - 1 for paths in repeated),
            "duplicate_files": repeated[:MAX_LISTED]}


def _class_audit(classes: list[str], rows: dict[str, np.ndarray], labels: np.ndarray
                 ) -> dict[str, Any]:
    totals = np.bincount(labels[np.concatenate(list(rows.values()))],
                         minlength=len(classes)).tolist()
    return {"classes": dict(zip(classes, totals, strict=True)),
            "split_sizes": {name: len(split_rows) for name, split_rows in rows.items()},
            "imbalance_ratio": max(totals) / max(min(totals), 1)}
