"""The preprocessed splits and the batch loader: sharding, shuffling, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclf.common.errors import UserError
from imgclf.data.batches import batches, random_crop, random_flip
from imgclf.data.splits import (
    Meta,
    Split,
    channel_stats,
    load_meta,
    load_split,
    save_splits,
    stratified_split,
)

from .conftest import learnable_images


@pytest.fixture
def split() -> Split:
    return Split(*learnable_images(103, 10, (1, 28, 28), seed=0))


def indices(split: Split, seen: list[torch.Tensor]) -> list[int]:
    """Which images of ``split`` the (un-augmented) batches hold, by matching pixels."""
    flat = split.images.flatten(1).float() / 255
    found = []
    for x in seen:
        for image in x.flatten(1):
            (match,) = torch.nonzero((flat == image).all(dim=1)).flatten().tolist()[:1]
            found.append(match)
    return found


def test_unshuffled_batches_keep_the_order_scale_and_labels(split):
    got = list(batches(split, 32))
    assert [len(y) for _, y in got] == [32, 32, 32, 7]
    x, _ = got[0]
    assert x.dtype == torch.float32 and x.shape == (32, 1, 28, 28)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, split.images[:32].float() / 255)
    assert torch.equal(torch.cat([y for _, y in got]), split.labels)


def test_each_rank_draws_a_disjoint_shard_and_together_they_cover_each_batch(split):
    world, batch_size = 3, 16
    whole = [y for _, y in batches(split, batch_size, generator=torch.Generator().manual_seed(7))]
    shards = {rank: list(batches(split, batch_size, shard=(rank, world),
                                 generator=torch.Generator().manual_seed(7)))
              for rank in range(world)}
    assert all(len(shard) == len(whole) for shard in shards.values())
    for step, expected in enumerate(whole):
        picked = [indices(split, [shards[rank][step][0]]) for rank in range(world)]
        flat = [i for rank in picked for i in rank]
        assert len(flat) == len(set(flat)), "ranks share an image"
        assert sorted(split.labels[flat].tolist()) == sorted(expected.tolist())
        assert len(flat) == len(expected)
    # over the epoch every image is seen exactly once, by exactly one rank
    every = [i for rank in range(world) for i in indices(split, [x for x, _ in shards[rank]])]
    assert sorted(every) == list(range(len(split)))


def test_shuffling_is_seeded(split):
    def order(seed: int) -> list[int]:
        return torch.cat([y for _, y in batches(
            split, 25, generator=torch.Generator().manual_seed(seed))]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == sorted(split.labels.tolist())


@pytest.mark.parametrize("augment", ["crop", "flip", "crop_flip"])
def test_augmentation_is_reproducible_under_a_seed(split, augment):
    def epoch(seed: int) -> list[torch.Tensor]:
        return [x for x, _ in batches(split, 32, generator=torch.Generator().manual_seed(0),
                                      augment=augment,
                                      augment_generator=torch.Generator().manual_seed(seed))]

    first, again, other = epoch(5), epoch(5), epoch(6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    plain = [x for x, _ in batches(split, 32, generator=torch.Generator().manual_seed(0))]
    assert not all(torch.equal(a, b) for a, b in zip(first, plain, strict=True))


def test_no_augmentation_without_a_generator(split):
    plain = next(batches(split, 8))[0]
    assert torch.equal(next(batches(split, 8, augment="crop_flip"))[0], plain)


def test_flip_mirrors_a_random_half_exactly():
    x = torch.rand(400, 1, 4, 5)
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    mirrored = (flipped == x.flip(-1)).flatten(1).all(dim=1)
    unchanged = (flipped == x).flatten(1).all(dim=1)
    assert bool((mirrored | unchanged).all())
    assert 150 < int(mirrored.sum()) < 250


def test_crop_shifts_each_image_within_the_padding():
    x = torch.zeros(50, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1  # a bright square in the middle
    cropped = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert cropped.shape == x.shape
    assert torch.equal(cropped.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # nothing cut off
    assert len({tuple(torch.nonzero(c[0])[0].tolist()) for c in cropped}) > 5  # many shifts


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = torch.arange(1000) % 10
    val, train = stratified_split(labels, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert torch.bincount(labels[val]).tolist() == [10] * 10
    assert set(val.tolist()).isdisjoint(train.tolist())
    again, _ = stratified_split(labels, 0.1, seed=3)
    other, _ = stratified_split(labels, 0.1, seed=4)
    assert torch.equal(val, again)
    assert not torch.equal(val, other)


def test_a_split_too_small_for_every_class_is_a_clear_error():
    with pytest.raises(UserError, match="cannot split 20 images stratified by class"):
        stratified_split(torch.arange(20) % 10, 5, seed=0)


def test_channel_stats_are_per_channel():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[:2, 2] = 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx([0.0, 1.0, 0.5])
    assert std[0] == pytest.approx(0.0) and std[2] > 0.4


def test_splits_and_meta_round_trip(tmp_path, split):
    meta = Meta("fashion-mnist", [str(i) for i in range(10)], [1, 28, 28], [0.2], [0.3],
                {"train": split.class_counts(10)}, "v1", {"preprocess": "run"})
    save_splits(tmp_path, {"train": split}, meta)
    loaded = load_split(tmp_path, "train")
    assert torch.equal(loaded.images, split.images) and torch.equal(loaded.labels, split.labels)
    assert load_meta(tmp_path) == meta


def test_a_file_that_is_not_a_split_is_refused(tmp_path, split):
    np.save(tmp_path / "train-images.npy", split.images.float().numpy())
    np.save(tmp_path / "train-labels.npy", split.labels.numpy())
    with pytest.raises(UserError, match="not a preprocessed split; rerun preprocess"):
        load_split(tmp_path, "train")
    np.save(tmp_path / "train-images.npy", np.array([object()]), allow_pickle=True)
    with pytest.raises(UserError, match="not an array the preprocess stage writes"):
        load_split(tmp_path, "train")  # a pickled array is never loaded
    (tmp_path / "train-images.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError, match="not an array the preprocess stage writes"):
        load_split(tmp_path, "train")
    with pytest.raises(UserError, match=r"meta\.json: unreadable"):
        load_meta(tmp_path)


def test_a_last_batch_too_small_to_train_on_is_left_out(split):
    sizes = [len(y) for _, y in batches(split, 34, min_batch=2)]  # 103 = 3 x 34 + 1
    assert sizes == [34, 34, 34]
    assert [len(y) for _, y in batches(split, 34)][-1] == 1  # scoring keeps every image


def test_loaded_splits_are_memory_mapped_and_batches_are_read_from_the_file(tmp_path, split,
                                                                           monkeypatch):
    meta = Meta("x", [str(i) for i in range(10)], [1, 28, 28], [0.2], [0.3], {}, "", {})
    save_splits(tmp_path, {"train": split}, meta)
    loaded = load_split(tmp_path, "train")
    assert loaded.mapped is not None
    reads = []
    take = loaded.mapped.take
    monkeypatch.setattr(loaded.mapped, "take", lambda index: reads.append(1) or take(index))
    theirs = [x for x, _ in batches(split, 10, generator=torch.Generator().manual_seed(3),
                                    augment="flip")]
    ours = [x for x, _ in batches(loaded, 10, generator=torch.Generator().manual_seed(3),
                                  augment="flip")]
    assert len(reads) == 11 and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert loaded.to("cpu").mapped is loaded.mapped
    taken = loaded.take(torch.tensor([5, 1]))
    assert taken.mapped is None and torch.equal(taken.images, split.images[[5, 1]])
