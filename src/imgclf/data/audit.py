"""Decoding a folder dataset in parallel, and auditing it on the way.

A bad file among many good ones never stops the work: it is skipped and listed with its
reason. The audit also counts classes, original sizes and modes, and finds exact duplicates
by their decoded pixels.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
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


Job = tuple[int, Path, tuple[int, int], str, int]
Result = tuple[int, str, str]  # index, pixel hash, error
_work: tuple[list[Job], np.ndarray] | None = None  # a worker's jobs and shared output


@dataclass(frozen=True)
class Outcome:
    """One file decoded, or why it was not."""

    index: int
    pixels: np.ndarray | None = None
    pixel_hash: str = ""
    error: str = ""


def _decode_one(job: Job) -> Outcome:
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


def shared_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array in memory shared with the processes forked after it."""
    buffer = mmap.mmap(-1, max(1, int(np.prod(shape))))
    return np.frombuffer(buffer, dtype=np.uint8, count=int(np.prod(shape))).reshape(shape)


def decode_all(root: Path, files: list[ImageFile], size: tuple[int, int], how: str,
               channels: int, workers: int | None = None, out: np.ndarray | None = None
               ) -> DecodedFiles:
    """Decode, orient, convert and resize every file on all cores; skip the bad ones.

    ``out`` (``len(files) x channels x height x width`` uint8) receives the pixels: a
    memory-mapped file or :func:`shared_zeros`, which the workers write straight into; by
    default shared memory.
    """
    workers = workers or os.cpu_count() or 1
    jobs = [(i, root / f.path, size, how, channels) for i, f in enumerate(files)]
    if out is None:
        out = shared_zeros((len(files), channels, *size))
    results: dict[int, tuple[str, str]] = {}  # index -> (pixel hash, error)
    step = max(1, len(jobs) // 10)
    bar = tqdm(total=len(jobs), desc="decoding", unit="image", file=sys.stderr,
               disable=not sys.stderr.isatty(), leave=False)
    for done, (index, pixel_hash, error) in enumerate(_decoded(jobs, out, workers), start=1):
        results[index] = (pixel_hash, error)
        bar.update()
        if bar.disable and (done % step == 0 or done == len(jobs)):
            log.info("decoded %d of %d images", done, len(jobs))
    bar.close()
    kept = [i for i in sorted(results) if not results[i][1]]
    return DecodedFiles(out, np.array(kept, dtype=np.int64), [files[i] for i in kept],
                        [results[i][0] for i in kept],
                        [{"path": files[i].path, "reason": results[i][1]}
                         for i in sorted(results) if results[i][1]])


def _decoded(jobs: list[Job], out: np.ndarray, workers: int) -> Iterator[Result]:
    """Each job's result as it finishes; the pixels go into ``out`` in place."""
    if workers == 1 or len(jobs) < 2 * CHUNK:  # a handful of files: not worth the processes
        yield from _decode_span(range(len(jobs)), jobs, out)
        return
    if not _shared(out):
        raise ValueError("out must be shared with the workers: a np.memmap or shared_zeros")
    # fork: the workers inherit the jobs and the shared output without pickling, run
    # Pillow and NumPy only, and start without re-importing torch; only the small results
    # come back
    spans = [range(start, min(start + CHUNK, len(jobs))) for start in range(0, len(jobs), CHUNK)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_adopt, initargs=(jobs, out)) as pool:
        for results in pool.map(_decode_inherited, spans):
            yield from results


def _shared(array: np.ndarray) -> bool:
    """Whether writes to ``array`` in a forked process reach this one."""
    base: object = array
    while isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, (np.memmap, mmap.mmap))


def _adopt(jobs: list[Job], out: np.ndarray) -> None:
    global _work
    _work = (jobs, out)


def _decode_inherited(span: range) -> list[Result]:
    assert _work is not None, "runs only in a worker started by _decoded"
    return list(_decode_span(span, *_work))


def _decode_span(span: range, jobs: list[Job], out: np.ndarray) -> Iterator[Result]:
    for index in span:
        outcome = _decode_one(jobs[index])
        if outcome.pixels is not None:
            out[index] = outcome.pixels
        yield index, outcome.pixel_hash, outcome.error


def headers(root: Path, files: list[ImageFile]) -> list[Header | None]:
    return [read_header(root / f.path) for f in files]

