"""Intervals, paired tests, calibration and seed spread against their closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from imgclf.common.stats import (
    Spread,
    accuracies,
    accuracy_interval,
    bootstrap_interval,
    calibration,
    macro_f1s,
    mcnemar,
    paired_test,
    spread,
)


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


# --- paired tests ----------------------------------------------------------------------------

def pairs(a_only: int, b_only: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Right/wrong answers of two models with the given counts of each combination."""
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize(("a_only", "b_only", "p_value"), [
    (0, 0, 1.0),  # no discordant image: nothing to tell them apart
    (3, 3, 1.0),
    (0, 5, 2 * 0.5 ** 5),  # all 5 favour B: two-sided exact binomial
    (1, 9, 2 * (1 + 10) / 2 ** 10),
    (9, 1, 2 * (1 + 10) / 2 ** 10),
])
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs(a_only, b_only, p_value):
    a, b = pairs(a_only, b_only, both=50, neither=7)
    found, counted_a, counted_b = mcnemar(a, b)
    assert found == pytest.approx(p_value)
    assert (counted_a, counted_b) == (a_only, b_only)


def test_concordant_images_do_not_change_mcnemar():
    assert mcnemar(*pairs(2, 12, 10, 0))[0] == mcnemar(*pairs(2, 12, 9000, 500))[0]


def test_paired_test_of_accuracy_reports_delta_interval_and_significance():
    labels = np.zeros(1000, dtype=int)
    a_right, b_right = pairs(10, 60, 900, 30)
    a, b = np.where(a_right, 0, 1), np.where(b_right, 0, 1)
    result = paired_test(accuracies, labels, a, b, accuracy=True)
    assert result.delta == pytest.approx(0.05)
    assert result.low < 0.05 < result.high and result.low > 0
    assert result.significant() and result.p_value == mcnemar(a_right, b_right)[0]
    same = paired_test(accuracies, labels, a, a, accuracy=True)
    assert (same.delta, same.low, same.high, same.p_value) == (0, 0, 0, 1.0)
    assert not same.significant()


def test_macro_f1_matches_scikit_learn_row_by_row():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (5, 200))
    predictions = np.where(rng.random((5, 200)) < 0.6, labels, rng.integers(0, 4, (5, 200)))
    predictions[0] = 0  # a row that never predicts three of the classes
    expected = [f1_score(y, p, average="macro", labels=range(4), zero_division=0)
                for y, p in zip(labels, predictions, strict=True)]
    assert macro_f1s(labels, predictions, 4) == pytest.approx(expected)


def test_bootstrap_interval_of_accuracy_agrees_with_wilson_on_a_large_split():
    labels = np.zeros(10000, dtype=int)
    predictions = (np.arange(10000) % 100 >= 93).astype(int)  # 93% right
    low, high = bootstrap_interval(accuracies, labels, predictions)
    assert (low, high) == pytest.approx(accuracy_interval(9300, 10000), abs=0.001)
    # seeded: the same every time
    assert bootstrap_interval(accuracies, labels, predictions) == (low, high)


# --- calibration and seed spread -------------------------------------------------------------

def test_a_model_sure_and_always_right_is_perfectly_calibrated():
    probabilities = np.eye(3)[[0, 1, 2, 0]]
    assert calibration(probabilities, np.array([0, 1, 2, 0])).ece == 0


def test_expected_calibration_error_is_the_weighted_confidence_gap():
    # 10 images at confidence 0.9 of which 6 right; 10 at 0.6 of which 6 right
    probabilities = np.array([[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10)
    labels = np.array([0] * 6 + [1] * 4 + [0] * 6 + [1] * 4)
    found = calibration(probabilities, labels, bins=10)
    assert found.ece == pytest.approx(0.5 * 0.3 + 0.5 * 0.0)
    assert found.count == [10, 10] and found.accuracy == pytest.approx([0.6, 0.6])


def test_spread_gives_mean_std_and_the_t_interval_of_the_mean():
    found = spread([0.930, 0.932, 0.934])
    assert (found.mean, found.std, found.n) == pytest.approx((0.932, 0.002, 3))
    half = 4.302652729911275 * 0.002 / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (found.low, found.high) == pytest.approx((0.932 - half, 0.932 + half))
    assert found.predicts(0.935) and not found.predicts(0.95)
    assert spread([0.9]) == Spread(0.9, 0.0, 0.9, 0.9, 1)
    with pytest.raises(ValueError, match="no values"):
        spread([])
