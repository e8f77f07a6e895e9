"""The preprocessed splits: uint8 image tensors with their labels, and what is known of them.

A split is one tensor of images (N x C x H x W, uint8) and one of labels, kept whole in
memory; :mod:`imgclf.data.batches` slices batches from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from imgclf.common.errors import UserError
from imgclf.common.files import write_json
from imgclf.common.tensorfiles import load_tensors, save_tensors


@dataclass(frozen=True)
class Split:
    """Images (uint8, N x C x H x W) and their integer labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        """The split on ``device``; on a GPU it is copied once, from pinned memory, and stays."""
        device = torch.device(device)
        if device.type == "cuda" and self.images.device.type == "cpu":
            return Split(self.images.pin_memory().to(device, non_blocking=True),
                         self.labels.pin_memory().to(device, non_blocking=True))
        return Split(self.images.to(device), self.labels.to(device))

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

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


def save_splits(folder: Path, splits: dict[str, Split], meta: Meta) -> None:
    """Write ``{train,val,test}.pt`` (weights-only loadable) and ``meta.json``."""
    for name, split in splits.items():
        save_tensors(folder / f"{name}.pt", {"images": split.images, "labels": split.labels})
    write_json(folder / "meta.json", asdict(meta))


def load_split(folder: Path, name: str) -> Split:
    """Load one split written by :func:`save_splits`, checking its shape."""
    data = load_tensors(folder / f"{name}.pt")
    images, labels = data.get("images"), data.get("labels")
    if (not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor)
            or images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels)):
        raise UserError(f"{folder / name}.pt: not a preprocessed split; rerun preprocess")
    return Split(images, labels.long())


def load_meta(folder: Path) -> Meta:
    try:
        return Meta(**json.loads((folder / "meta.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{folder / 'meta.json'}: unreadable ({exc}); rerun preprocess") from None
