"""The on-disk arrays: written in chunks, read through a mapping, never unpickled."""

from __future__ import annotations

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
    mapped.release()
    assert np.array_equal(mapped.array, data)  # pages come back from the file
    assert np.array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), data)


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
