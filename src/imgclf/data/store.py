"""The on-disk form of the preprocessed images: ``.npy`` arrays that training memory-maps.

An array is written in chunks, so a dataset never has to fit in memory, and read back
through a private (copy-on-write) mapping whose pages come from the file when touched.
Batches of rows are read with positioned reads instead (:meth:`MappedArray.take`): they
leave the file's pages in the page cache, outside this process, so a store larger than
memory trains with flat memory. NumPy's ``.npy`` header is plain text; nothing is ever
unpickled.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from imgclf.common.errors import UserError
from imgclf.common.files import atomic_open

CHUNK = 4096  # images written or read per step


class StoreError(UserError):
    """A stored array is missing or not what the preprocess stage writes."""


def write_array(path: Path, shape: tuple[int, ...], chunks: Iterable[np.ndarray],
                dtype: type = np.uint8) -> None:
    """Atomically write a ``.npy`` of ``shape`` from ``chunks`` (consecutive rows)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape}
    rows = 0
    with atomic_open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for chunk in chunks:
            handle.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
            rows += len(chunk)
        if rows != shape[0]:  # inside: the half-written file is never renamed into place
            raise ValueError(f"{path}: wrote {rows} rows, expected {shape[0]}")


def save_array(path: Path, array: np.ndarray) -> None:
    """Atomically write ``array`` as a ``.npy``."""
    write_array(path, array.shape, (array[i:i + CHUNK] for i in range(0, len(array), CHUNK)),
                array.dtype.type)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a missing or malformed ``.npy`` into a :class:`StoreError` naming the fix."""
    try:
        yield
    except FileNotFoundError:
        raise StoreError(f"{path}: not found; run the stage that writes it (dvc repro)"
                         ) from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not an array the preprocess stage writes ({exc}); "
                         "rerun preprocess") from None


class MappedArray:
    """A ``.npy`` file mapped copy-on-write: a writable array whose pages are read lazily."""

    def __init__(self, path: Path) -> None:
        with _reading(path):
            handle = open(path, "rb")  # noqa: SIM115 (stays open, for take())
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
            if fortran or dtype.hasobject:
                raise ValueError("not a plain C-ordered array")
            count = int(np.prod(shape))
            if offset + count * dtype.itemsize > os.fstat(handle.fileno()).st_size:
                raise ValueError("the file is shorter than its header says")
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) \
                if count else None
        buffer = self._map if self._map is not None else b""
        self.array = np.frombuffer(buffer, dtype, count, offset if count else 0).reshape(shape)
        self._file, self._offset = handle, offset
        self._row_bytes = dtype.itemsize * int(np.prod(shape[1:]))

    def take(self, index: np.ndarray) -> np.ndarray:
        """The rows at ``index``, copied from the file with positioned reads.

        Unlike indexing :attr:`array`, this maps none of the file's pages into the process
        (the kernel may map far more than was read around each touched row), so memory stays
        flat however large the file is.
        """
        index = np.asarray(index, dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= len(self.array)):
            raise IndexError(f"row index out of range for {len(self.array)} rows")
        out = np.empty((len(index), *self.array.shape[1:]), self.array.dtype)
        fd = self._file.fileno()
        for row, i in zip(out, index.tolist(), strict=True):
            if os.preadv(fd, [row], self._offset + i * self._row_bytes) != self._row_bytes:
                raise StoreError(f"{self._file.name}: shorter than its header says; "
                                 "rerun preprocess")
        return out


def load_array(path: Path) -> np.ndarray:
    """A small ``.npy`` read whole (labels)."""
    with _reading(path):
        array: np.ndarray = np.load(path, allow_pickle=False)
    return array
