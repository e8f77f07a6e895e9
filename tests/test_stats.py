"""Intervals of scores against their closed forms."""

from __future__ import annotations

import math

import pytest

from imgclf.common.stats import accuracy_interval


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(93, 100), (9303, 10000), (0, 10), (10, 10), (1, 2)])
def test_accuracy_interval_is_wilsons(k, n):
    low, high = accuracy_interval(k, n)
    assert (low, high) == pytest.approx(wilson(k, n), abs=1e-9)
    assert 0 <= low <= k / n <= high <= 1


def test_ten_thousand_test_images_pin_accuracy_to_about_half_a_point():
    low, high = accuracy_interval(9300, 10000)
    assert 0.0095 < high - low < 0.0105


@pytest.mark.parametrize(("k", "n"), [(1, 0), (-1, 5), (6, 5)])
def test_impossible_counts_are_refused(k, n):
    with pytest.raises(ValueError, match="has no interval"):
        accuracy_interval(k, n)
