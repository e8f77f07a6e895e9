"""The supported datasets: their published files, checksums and classes.

Decoding the files is the preprocess stage's job; this module stays free of torch so that
the download stage starts quickly.

Checksums are the ones torchvision ships for each archive. Debian's ``dataset-fashion-mnist``
package normalises the gzip headers of the archives it installs (dropping the stored file name),
so those bytes differ from upstream while the decompressed data is identical; each IDX file
therefore also carries the published MD5 of its decompressed payload, and either match is
accepted. No file is ever trusted without one of the two.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

from imgclf.common.errors import UserError


class DataError(UserError):
    """A dataset file is missing, corrupt or not what it claims to be."""


@dataclass(frozen=True)
class DataFile:
    """One published file: its name, archive MD5 and (for gzip files) payload MD5."""

    name: str
    md5: str
    payload_md5: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset is published and what its images look like."""

    name: str
    urls: tuple[str, ...]
    files: tuple[DataFile, ...]
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    debian_package: str | None = None


def _idx_files(md5s: dict[str, tuple[str, str]]) -> tuple[DataFile, ...]:
    return tuple(DataFile(f"{stem}.gz", md5, payload) for stem, (md5, payload) in md5s.items())


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=_idx_files({
            "train-images-idx3-ubyte": (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            "train-labels-idx1-ubyte": (
                "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
            "t10k-images-idx3-ubyte": (
                "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
            "t10k-labels-idx1-ubyte": (
                "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
        }),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        image_shape=(1, 28, 28),
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
        files=_idx_files({
            "train-images-idx3-ubyte": (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
            "train-labels-idx1-ubyte": (
                "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
            "t10k-images-idx3-ubyte": (
                "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
            "t10k-labels-idx1-ubyte": (
                "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
        }),
        classes=tuple(str(digit) for digit in range(10)),
        image_shape=(1, 28, 28),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        urls=("https://www.cs.toronto.edu/~kriz/",),
        files=(DataFile("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),),
        classes=("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"),
        image_shape=(3, 32, 32),
    ),
}


def data_version(spec: DatasetSpec) -> str:
    """A short id of the dataset's published content: the MD5 of its files' published MD5s.

    The same for every verified copy (upstream or a re-packed mirror), and different for any
    other release of the files.
    """
    listing = "\n".join(f"{file.name} {file.payload_md5 or file.md5}" for file in spec.files)
    return hashlib.md5(listing.encode(), usedforsecurity=False).hexdigest()


def md5sum(path: Path, *, decompress: bool = False) -> str:
    """MD5 of a file's bytes, or of its gzip payload with ``decompress=True``."""
    digest = hashlib.md5(usedforsecurity=False)
    with (gzip.open if decompress else open)(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected: DataFile) -> str:
    """Check ``path`` against ``expected``; return which checksum matched.

    Raises:
        DataError: neither the archive MD5 nor the payload MD5 matches.
    """
    actual = md5sum(path)
    if actual == expected.md5:
        return "md5"
    if expected.payload_md5:
        try:
            if md5sum(path, decompress=True) == expected.payload_md5:
                return "payload-md5"
        except (OSError, EOFError, zlib.error):
            pass  # not a readable gzip file: reported as the archive mismatch below
    raise DataError(f"MD5 mismatch: got {actual}, expected {expected.md5}")
