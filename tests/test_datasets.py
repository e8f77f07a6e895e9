from __future__ import annotations

import gzip
import hashlib

import pytest
import torch

from imgclf.datasets import (
    DATASETS,
    DataError,
    DataFile,
    read_cifar_binary,
    read_idx,
    read_raw,
    verify,
)

from .conftest import FMNIST_DIR, idx_bytes, learnable_images, write_cifar_archive


def test_idx_round_trip(tmp_path):
    images, _ = learnable_images(7, 10, (1, 28, 28), 0)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images[:, 0])))
    assert torch.equal(read_idx(path), images[:, 0])


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x0d\x01", idx_bytes(torch.zeros(5))[:-1]],
                         ids=["empty", "float-type", "truncated"])
def test_idx_rejects_bad_files(tmp_path, data):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError, match="bad-idx1-ubyte"):
        read_idx(path)


def test_cifar_binary_records(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar_archive(path, per_batch=3, n_test=4)
    splits = read_cifar_binary(path)
    assert splits["train"][0].shape == (15, 3, 32, 32)
    assert splits["test"][0].shape == (4, 3, 32, 32)
    expected, labels = learnable_images(4, 10, (3, 32, 32), 0)
    assert torch.equal(splits["test"][0], expected)
    assert torch.equal(splits["test"][1], labels)


def test_cifar_archive_missing_member(tmp_path):
    import io
    import tarfile

    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = 3073
        archive.addfile(info, io.BytesIO(bytes(3073)))
    with pytest.raises(DataError, match="missing member"):
        read_cifar_binary(path)


def test_verify_accepts_archive_or_payload_checksum(tmp_path):
    payload = b"payload bytes"
    upstream = gzip.compress(payload, mtime=1)
    repacked = gzip.compress(payload, mtime=2)  # same data, different gzip header
    assert upstream != repacked
    expected = DataFile("f.gz", hashlib.md5(upstream).hexdigest(),
                        hashlib.md5(payload).hexdigest())
    (tmp_path / "a.gz").write_bytes(upstream)
    (tmp_path / "b.gz").write_bytes(repacked)
    assert verify(tmp_path / "a.gz", expected) == "md5"
    assert verify(tmp_path / "b.gz", expected) == "payload-md5"
    (tmp_path / "c.gz").write_bytes(gzip.compress(b"other bytes"))
    with pytest.raises(DataError, match="MD5 mismatch"):
        verify(tmp_path / "c.gz", expected)


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_debian_fashion_mnist_passes_published_checksums():
    spec = DATASETS["fashion-mnist"]
    for expected in spec.files:
        assert verify(FMNIST_DIR / expected.name, expected) in ("md5", "payload-md5")
    splits = read_raw(spec, FMNIST_DIR)
    assert splits["train"][0].shape == (60000, 1, 28, 28)
    assert splits["test"][0].shape == (10000, 1, 28, 28)
    assert torch.bincount(splits["test"][1]).tolist() == [1000] * 10
