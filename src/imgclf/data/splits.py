"""The preprocessed splits: uint8 images with their labels, and what is known of them.

A split is one array of images (N x C x H x W, uint8) and one of labels. On disk they are
``<split>-images.npy`` and ``<split>-labels.npy``; the images are memory-mapped when loaded
(:mod:`imgclf.data.store`), so the dataset need not fit in memory, and
:mod:`imgclf.data.batches` gathers batches from them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgclf.common.errors import UserError
from imgclf.common.files import write_json
from imgclf.data.store import CHUNK, MappedArray, load_array, save_array, write_array

META_FILE = "meta.json"  # beside the splits: what preprocess recorded of them (Meta)


@dataclass(frozen=True)
class Split:
    """Images (uint8, N x C x H x W) and their integer labels."""

    images: torch.Tensor
    labels: torch.Tensor
    mapped: MappedArray | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        """The split on ``device``; on a GPU it is copied once, from pinned memory, and stays."""
        device = torch.device(device)
        if device.type == "cuda" and self.images.device.type == "cpu":
            return Split(self.images.pin_memory().to(device, non_blocking=True),
                         self.labels.pin_memory().to(device, non_blocking=True))
        return Split(self.images.to(device), self.labels.to(device), self.mapped)

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """The images at ``index``, copied; a memory-mapped split reads them from its file
        without growing this process's memory (:meth:`MappedArray.take`)."""
        if self.mapped is not None and self.images.device.type == "cpu":
            return torch.from_numpy(self.mapped.take(index.cpu().numpy()))
        return self.images[index]

    def take(self, index: torch.Tensor) -> Split:
        """The images at ``index``, copied into memory."""
        return Split(self.gather(index), self.labels[index])

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels.cpu(), minlength=num_classes).tolist()


@dataclass(frozen=True)
class Meta:
    """What the preprocess stage records beside the splits."""

    dataset: str
    classes: list[str]
    image_shape: list[int]
    mean: list[float]
    std: list[float]
    counts: dict[str, list[int]]
    data_version: str = ""
    lineage: dict[str, str] = field(default_factory=dict)
    resize: str = "squash"  # how an image of another size is brought to image_shape
    source: str = ""  # where the images came from: a folder, an archive or a mirror's URL


def stratified_split(labels: torch.Tensor, first: int | float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a seeded, class-stratified split: ``first`` items (or fraction), the rest.

    Raises:
        UserError: the requested size leaves some class with no member on one side.
    """
    # imported here: scikit-learn takes seconds to import and only two stages split data
    from sklearn.model_selection import train_test_split

    index = torch.arange(len(labels))
    try:
        rest, chosen = train_test_split(index.numpy(), test_size=first, random_state=seed,
                                        stratify=labels.numpy())
    except ValueError as exc:
        raise UserError(f"cannot split {len(labels)} images stratified by class: {exc}") from None
    return torch.from_numpy(chosen).sort().values, torch.from_numpy(rest).sort().values


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1]."""
    channels = images.shape[1]
    pixels = images.transpose(0, 1).reshape(channels, -1).double() / 255
    return pixels.mean(dim=1).tolist(), pixels.std(dim=1).tolist()


def chunked_channel_stats(images: np.ndarray, index: np.ndarray
                          ) -> tuple[list[float], list[float]]:
    """:func:`channel_stats` of ``images[index]``, read a chunk at a time (exact sums)."""
    channels = images.shape[1]
    total = np.zeros(channels, dtype=np.int64)
    squares = np.zeros(channels, dtype=np.int64)
    for start in range(0, len(index), CHUNK):
        chunk = images[np.sort(index[start:start + CHUNK])].astype(np.int64)
        total += chunk.sum(axis=(0, 2, 3))
        squares += (chunk * chunk).sum(axis=(0, 2, 3))
    n = max(len(index) * images.shape[2] * images.shape[3], 2)
    mean = total / n
    var = (squares - n * mean * mean) / (n - 1)
    return (mean / 255).tolist(), (np.sqrt(np.maximum(var, 0)) / 255).tolist()


def _paths(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / f"{name}-images.npy", folder / f"{name}-labels.npy"


def save_meta(folder: Path, meta: Meta) -> None:
    write_json(folder / META_FILE, asdict(meta))


def save_splits(folder: Path, splits: dict[str, Split], meta: Meta) -> None:
    """Write each split's images and labels as ``.npy`` arrays, and ``meta.json``."""
    for name, split in splits.items():
        images, labels = _paths(folder, name)
        save_array(images, split.images.numpy())
        save_array(labels, split.labels.numpy().astype(np.int64))
    save_meta(folder, meta)


def save_indexed_splits(folder: Path, images: np.ndarray, labels: np.ndarray,
                        index: dict[str, np.ndarray], meta: Meta) -> None:
    """Write the splits made of ``images[index[split]]``, copying a chunk at a time."""
    for name, rows in index.items():
        images_path, labels_path = _paths(folder, name)
        write_array(images_path, (len(rows), *images.shape[1:]),
                    (images[rows[i:i + CHUNK]] for i in range(0, len(rows), CHUNK)))
        save_array(labels_path, labels[rows].astype(np.int64))
    save_meta(folder, meta)


def load_split(folder: Path, name: str) -> Split:
    """Load one split written by :func:`save_splits`: its images memory-mapped."""
    images_path, labels_path = _paths(folder, name)
    mapped = MappedArray(images_path)
    labels = load_array(labels_path)
    if (mapped.array.dtype != np.uint8 or mapped.array.ndim != 4 or labels.ndim != 1
            or labels.dtype.kind not in "iu" or len(labels) != len(mapped.array)):
        raise UserError(f"{folder}/{name}-*.npy: not a preprocessed split; rerun preprocess")
    return Split(torch.from_numpy(mapped.array), torch.from_numpy(labels).long(), mapped)


def split_digest(folder: Path, name: str) -> str:
    """A short content hash of one split's images and labels: two models scored on splits
    with the same digest were scored on the same images, in the same order."""
    digest = hashlib.sha256()
    for path in _paths(folder, name):
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def load_meta(folder: Path) -> Meta:
    try:
        return Meta(**json.loads((folder / META_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{folder / META_FILE}: unreadable ({exc}); rerun preprocess") from None
