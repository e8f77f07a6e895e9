"""In-memory dataset splits and the batch loader.

Images stay uint8 in one tensor (on the training device) and batches are sliced from it:
no per-sample Python objects, no PIL transforms, no worker processes. Augmentation runs on
whole batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from imgclf.errors import UserError
from imgclf.files import write_json
from imgclf.tensorfiles import load_tensors, save_tensors

SPLITS = ("train", "val", "test")
AUGMENTATIONS = ("none", "crop", "flip", "crop_flip")


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


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad each image by ``pad`` black pixels and cut a random window of the original size."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator).to(x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left-right."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def batches(
    split: Split,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    augment: str = "none",
    augment_generator: torch.Generator | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(float images in [0, 1], labels)`` batches; shuffled when given a generator.

    Images come channels-last (NHWC in memory, NCHW in shape): oneDNN's and cuDNN's
    convolutions run markedly faster on that layout. With ``shard=(rank, world)`` each of
    ``world`` processes gets its own share of every batch of ``batch_size`` (data-parallel
    training); all processes must pass generators in the same state.
    """
    n = len(split)
    rank, world = shard
    if generator is None:
        order = torch.arange(n, device=split.labels.device)
    else:
        order = torch.randperm(n, generator=generator).to(split.labels.device)
    augment_generator = augment_generator or generator
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size][rank::world]
        x = split.images[index].float().div_(255)
        if augment_generator is not None and augment in ("crop", "crop_flip"):
            x = random_crop(x, max(1, x.shape[-1] // 8), augment_generator)
        if augment_generator is not None and augment in ("flip", "crop_flip"):
            x = random_flip(x, augment_generator)
        yield x.contiguous(memory_format=torch.channels_last), split.labels[index]
