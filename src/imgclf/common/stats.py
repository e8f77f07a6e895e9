"""The uncertainty of a score: how far a measured accuracy may be from the true one."""

from __future__ import annotations

from scipy.stats import binomtest

CONFIDENCE = 0.95


def accuracy_interval(correct: int, total: int, confidence: float = CONFIDENCE
                      ) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of ``correct`` out of ``total``.

    Raises:
        ValueError: ``total`` is not positive or ``correct`` is outside ``[0, total]``.
    """
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"an accuracy of {correct} out of {total} has no interval")
    interval = binomtest(correct, total).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)
