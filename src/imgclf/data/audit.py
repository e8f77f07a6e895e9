"""Decoding a folder dataset in parallel, and auditing it on the way.

A bad file among many good ones never stops the work: it is skipped and listed with its
reason. The audit also counts classes, original sizes and modes, and finds exact duplicates
by their decoded pixels.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from imgclf.data.folders import ImageFile
from imgclf.data.images import GREY_MODES, BadImage, decode, resize, to_array

log = logging.getLogger(__name__)
MAX_AUTO_SIDE = 64
CHUNK = 64


@dataclass(frozen=True)
class Header:
    """What an image file's header says, read without decoding the pixels."""

    size: tuple[int, int]  # (height, width), upright
    mode: str


def read_header(path: Path) -> Header | None:
    """The upright size and the mode of ``path``, or ``None`` when it cannot be opened."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                orientation = image.getexif().get(0x0112, 1)
                if orientation in (5, 6, 7, 8):  # rotated a quarter turn
                    width, height = height, width
                return Header((height, width), image.mode)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None


def auto_size(headers: Iterable[Header | None]) -> tuple[int, int]:
    """The most common size, scaled down to fit 64x64 when larger."""
    sizes = Counter(header.size for header in headers if header is not None)
    if not sizes:
        return (MAX_AUTO_SIDE, MAX_AUTO_SIDE)
    height, width = sizes.most_common(1)[0][0]
    scale = min(1.0, MAX_AUTO_SIDE / max(height, width))
    return (max(8, round(height * scale)), max(8, round(width * scale)))


def auto_channels(headers: Iterable[Header | None]) -> int:
    """1 when every readable image is grey, else 3."""
    modes = {header.mode for header in headers if header is not None}
    return 1 if modes and modes <= GREY_MODES else 3


@dataclass(frozen=True)
class Outcome:
    """One file decoded, or why it was not."""

    index: int
    pixels: np.ndarray | None = None
    pixel_hash: str = ""
    error: str = ""


def _decode_one(job: tuple[int, Path, tuple[int, int], str, int]) -> Outcome:
    index, path, size, how, channels = job
    try:
        decoded = decode(path, at_least=max(size))
    except BadImage as exc:
        return Outcome(index, error=str(exc))
    except Exception as exc:  # a decoder's own bug must not stop the other files
        return Outcome(index, error=f"cannot decode: {type(exc).__name__}: {exc}")
    pixels = to_array(resize(decoded.image, size, how), channels)
    return Outcome(index, pixels, decoded.pixel_hash())


@dataclass
class DecodedFiles:
    """Row ``i`` of ``images`` holds file ``i``; ``rows`` are those that decoded, aligned
    with their ``files`` and pixel ``hashes``; ``skipped`` lists the others and why."""

    images: np.ndarray  # N x C x H x W, uint8
    rows: np.ndarray
    files: list[ImageFile]
    hashes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)


def decode_all(root: Path, files: list[ImageFile], size: tuple[int, int], how: str,
               channels: int, workers: int | None = None, out: np.ndarray | None = None
               ) -> DecodedFiles:
    """Decode, orient, convert and resize every file on all cores; skip the bad ones.

    ``out`` (``len(files) x channels x height x width`` uint8, e.g. a memory-mapped file)
    receives the pixels; by default an array in memory.
    """
    workers = workers or os.cpu_count() or 1
    jobs = [(i, root / f.path, size, how, channels) for i, f in enumerate(files)]
    if out is None:
        out = np.zeros((len(files), channels, *size), dtype=np.uint8)
    results: dict[int, tuple[str, str]] = {}  # index -> (pixel hash, error); no pixels kept
    step = max(1, len(jobs) // 10)
    bar = tqdm(total=len(jobs), desc="decoding", unit="image", file=sys.stderr,
               disable=not sys.stderr.isatty(), leave=False)
    with _pool(workers) as pool:
        for done, outcome in enumerate(_map(pool, jobs), start=1):
            if outcome.pixels is not None:
                out[outcome.index] = outcome.pixels
            results[outcome.index] = (outcome.pixel_hash, outcome.error)
            bar.update()
            if bar.disable and (done % step == 0 or done == len(jobs)):
                log.info("decoded %d of %d images", done, len(jobs))
    bar.close()
    kept = [i for i in sorted(results) if not results[i][1]]
    return DecodedFiles(out, np.array(kept, dtype=np.int64), [files[i] for i in kept],
                        [results[i][0] for i in kept],
                        [{"path": files[i].path, "reason": results[i][1]}
                         for i in sorted(results) if results[i][1]])


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork: the workers run Pillow and NumPy only, and start without re-importing torch
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def _map(pool: ProcessPoolExecutor, jobs: list[tuple[int, Path, tuple[int, int], str, int]]
         ) -> Iterable[Outcome]:
    if len(jobs) < 2 * CHUNK:  # a handful of files: not worth the processes
        return map(_decode_one, jobs)
    return pool.map(_decode_one, jobs, chunksize=CHUNK)


def headers(root: Path, files: list[ImageFile]) -> list[Header | None]:
    return [read_header(root / f.path) for f in files]

