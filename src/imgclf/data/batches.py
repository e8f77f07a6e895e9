"""The batch loader: batches gathered from a split, augmented as whole batches.

Images stay uint8, in one tensor on the training device or in a memory-mapped file, and each
batch is gathered from them at once: no per-sample Python objects, no PIL transforms, no
worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from imgclf.data.splits import Split


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
    min_batch: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(float images in [0, 1], labels)`` batches; shuffled when given a generator.

    Images come channels-last (NHWC in memory, NCHW in shape): oneDNN's and cuDNN's
    convolutions run markedly faster on that layout. With ``shard=(rank, world)`` each of
    ``world`` processes gets its own share of every batch of ``batch_size`` (data-parallel
    training); all processes must pass generators in the same state. A last batch of fewer
    than ``min_batch`` images is left out.
    """
    n = len(split)
    rank, world = shard
    if generator is None:
        order = torch.arange(n, device=split.labels.device)
    else:
        order = torch.randperm(n, generator=generator).to(split.labels.device)
    augment_generator = augment_generator or generator
    for start in range(0, n, batch_size):
        if n - start < min_batch:  # a last batch too small to train on (batch norm needs 2)
            break
        index = order[start:start + batch_size][rank::world]
        x = split.gather(index).float().div_(255)
        if augment_generator is not None and augment in ("crop", "crop_flip"):
            x = random_crop(x, max(1, x.shape[-1] // 8), augment_generator)
        if augment_generator is not None and augment in ("flip", "crop_flip"):
            x = random_flip(x, augment_generator)
        yield x.contiguous(memory_format=torch.channels_last), split.labels[index]
