from __future__ import annotations

import gzip
import hashlib

import pytest

from imgclf.data.datasets import DATASETS, DataError, DataFile, verify

from .conftest import FMNIST_DIR


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
