"""The on-disk arrays: written in chunks, read through a mapping, never unpickled."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf.data.splits import channel_stats, chunked_channel_stats
from imgclf.data.store import MappedArray, StoreError, load_array, save_array, write_array


def test_an_array_written_in_chunks_maps_back_unchanged(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (50, 3, 4, 5), dtype=np.uint8)
    write_array(tmp_path / "a.npy", data.shape, (data[i:i + 7] for i in range(0, 50, 7)))
    mapped = MappedArray(tmp_path / "a.npy")
    assert np.array_equal(mapped.array, data) and mapped.array.flags.writeable
    assert np.array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), data)


def test_rows_taken_from_the_file_match_indexing_and_bounds_are_checked(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, (40, 3, 5, 6), dtype=np.uint8)
    save_array(tmp_path / "a.npy", data)
    mapped = MappedArray(tmp_path / "a.npy")
    index = np.array([39, 0, 7, 7, 12])
    assert np.array_equal(mapped.take(index), data[index])
    assert mapped.take(np.array([], dtype=np.int64)).shape == (0, 3, 5, 6)
    with pytest.raises(IndexError, match="out of range for 40 rows"):
        mapped.take(np.array([40]))


def _rss_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_taking_every_row_of_a_large_file_keeps_memory_flat(tmp_path):
    rows, row = 2048, np.full((3, 64, 64), 7, dtype=np.uint8)  # 24 MiB
    write_array(tmp_path / "big.npy", (rows, *row.shape), (np.broadcast_to(row, (256, *row.shape))
                                                           for _ in range(rows // 256)))
    mapped = MappedArray(tmp_path / "big.npy")
    before = _rss_file_bytes()
    order = np.random.default_rng(0).permutation(rows)
    for start in range(0, rows, 128):
        assert (mapped.take(order[start:start + 128]) == 7).all()
    assert _rss_file_bytes() - before < 4 * 2**20  # none of the file's 24 MiB got mapped


def test_a_short_write_is_an_error_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="wrote 2 rows, expected 3"):
        write_array(tmp_path / "a.npy", (3, 2), [np.zeros((2, 2), dtype=np.uint8)])
    assert list(tmp_path.iterdir()) == []


def test_truncated_or_missing_arrays_are_refused(tmp_path):
    save_array(tmp_path / "a.npy", np.zeros((10, 10), dtype=np.uint8))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:-20])
    with pytest.raises(StoreError, match="shorter than its header says"):
        MappedArray(tmp_path / "a.npy")
    with pytest.raises(StoreError, match="not found"):
        MappedArray(tmp_path / "missing.npy")
    with pytest.raises(StoreError, match="not found"):
        load_array(tmp_path / "missing.npy")


def test_chunked_statistics_match_the_whole_array():
    images = np.random.default_rng(1).integers(0, 256, (9000, 3, 4, 4), dtype=np.uint8)
    index = np.arange(0, 9000, 2)
    whole = channel_stats(torch.from_numpy(images[index]))
    chunked = chunked_channel_stats(images, index)
    assert chunked[0] == pytest.approx(whole[0], rel=1e-12)
    assert chunked[1] == pytest.approx(whole[1], rel=1e-9)
