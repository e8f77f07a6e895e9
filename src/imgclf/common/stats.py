"""The uncertainty of a score, and whether a difference between two models is real.

Accuracies get Wilson intervals; other scores (macro F1, differences of scores) get
percentile bootstrap intervals over the images. Two models scored on the *same* images are
compared with paired tests: exact McNemar for accuracy, a paired bootstrap otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, ttest_ind
from scipy.stats import t as student_t

CONFIDENCE = 0.95
RESAMPLES = 1000  # bootstrap resamples: the interval's ends move by well under 0.1 point
SEED = 0  # bootstrap resampling is seeded, so a report reads the same every time

# a score of (labels, predictions), both R x N: one value per row
Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


def proportion_interval(hits: int, total: int) -> tuple[float, float]:
    """Wilson interval of ``hits / total``; ``(0, 1)`` when there is nothing to count."""
    return accuracy_interval(hits, total) if total > 0 else (0.0, 1.0)


def accuracies(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Accuracy of each row."""
    return np.asarray((labels == predictions).mean(axis=-1))


def macro_f1s(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-averaged F1 of each row (a class absent from a row's labels and predictions
    scores 0, as scikit-learn's ``zero_division=0`` has it)."""
    labels, predictions = np.atleast_2d(labels), np.atleast_2d(predictions)
    cells = np.arange(len(labels))[:, None] * num_classes  # each row's own bincount range

    def counts(index: np.ndarray) -> np.ndarray:
        return np.bincount(index.ravel(), minlength=len(labels) * num_classes
                           ).reshape(-1, num_classes).astype(float)

    true_positive = counts((cells + labels)[labels == predictions])
    denominator = counts(cells + labels) + counts(cells + predictions)  # 2TP + FP + FN
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive),
                   where=denominator > 0)
    return np.asarray(f1.mean(axis=1))


def bootstrap(statistic: Statistic, labels: np.ndarray, *predictions: np.ndarray,
              resamples: int = RESAMPLES, seed: int = SEED) -> list[np.ndarray]:
    """``statistic`` of each prediction set on the same ``resamples`` bootstrap samples of the
    images (drawn in blocks, so memory stays small on large splits)."""
    rng = np.random.default_rng(seed)
    values: list[list[np.ndarray]] = [[] for _ in predictions]
    for start in range(0, resamples, 100):
        index = rng.integers(0, len(labels), size=(min(100, resamples - start), len(labels)))
        for out, predicted in zip(values, predictions, strict=True):
            out.append(statistic(labels[index], predicted[index]))
    return [np.concatenate(out) for out in values]


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(statistic: Statistic, labels: np.ndarray, predictions: np.ndarray,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the images."""
    return _percentiles(bootstrap(statistic, labels, predictions)[0], confidence)


@dataclass(frozen=True)
class PairedTest:
    """Model B against model A on the same images."""

    delta: float  # B's score minus A's
    low: float  # the delta's 95% interval
    high: float
    p_value: float
    a_only: int = 0  # images only A gets right (McNemar's discordant pairs)
    b_only: int = 0  # images only B gets right

    def significant(self, alpha: float = 1 - CONFIDENCE) -> bool:
        return self.p_value < alpha


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[float, int, int]:
    """Exact McNemar test of two models' right/wrong answers on the same images.

    Only the discordant images count: those exactly one model gets right. Under the null
    hypothesis each of them is equally likely to favour either model, so the count favouring
    one is binomial(n, 1/2). Returns the two-sided p-value and both discordant counts.
    """
    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    a_only = int((a_correct & ~b_correct).sum())
    b_only = int((b_correct & ~a_correct).sum())
    if a_only + b_only == 0:
        return 1.0, 0, 0
    return float(binomtest(b_only, a_only + b_only, 0.5).pvalue), a_only, b_only


def paired_test(statistic: Statistic, labels: np.ndarray, a: np.ndarray, b: np.ndarray,
                accuracy: bool = False, confidence: float = CONFIDENCE) -> PairedTest:
    """B's ``statistic`` minus A's on the same images, with a paired bootstrap interval.

    The p-value is exact McNemar when ``accuracy``; otherwise the paired bootstrap's
    two-sided p-value (twice the share of resamples on the far side of zero).
    """
    on_a, on_b = bootstrap(statistic, labels, a, b)
    deltas = on_b - on_a
    delta = float(statistic(labels[None], b[None])[0] - statistic(labels[None], a[None])[0])
    low, high = _percentiles(deltas, confidence)
    a_right, b_right = labels == a, labels == b
    p_value, a_only, b_only = mcnemar(a_right, b_right)
    if not accuracy:
        far_side = (deltas <= 0).mean() if delta > 0 else (deltas >= 0).mean()
        p_value = 1.0 if delta == 0 else float(min(1.0, 2 * far_side))
    return PairedTest(delta, float(low), float(high), p_value, a_only, b_only)


@dataclass(frozen=True)
class Calibration:
    """How well confidence matches accuracy: expected calibration error and its bins."""

    ece: float
    confidence: list[float]  # mean top probability in each non-empty bin
    accuracy: list[float]  # accuracy in each non-empty bin
    count: list[int]
    edges: list[float]  # the bins' lower edges


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
                ) -> Calibration:
    """Expected calibration error over ``bins`` equal-width confidence bins (Guo et al.,
    2017): the count-weighted mean gap between confidence and accuracy."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    used = count > 0
    mean_confidence = np.divide(np.bincount(which, confidence, bins), count,
                                out=np.zeros(bins), where=used)
    mean_accuracy = np.divide(np.bincount(which, correct.astype(float), bins), count,
                              out=np.zeros(bins), where=used)
    ece = float((count * np.abs(mean_confidence - mean_accuracy)).sum() / max(len(labels), 1))
    return Calibration(ece, mean_confidence[used].tolist(), mean_accuracy[used].tolist(),
                       count[used].tolist(), (np.arange(bins)[used] / bins).tolist())


@dataclass(frozen=True)
class Spread:
    """Scores of one recipe under several seeds."""

    mean: float
    std: float  # sample standard deviation (0 for one run)
    low: float  # 95% t interval of the mean
    high: float
    n: int

    def predicts(self, value: float, confidence: float = CONFIDENCE) -> bool:
        """Whether ``value`` lies within the 95% prediction interval of one more seed's run
        (true when there is too little to say)."""
        if self.n < 2:
            return True
        half = student_t.ppf((1 + confidence) / 2, self.n - 1) * self.std * np.sqrt(1 + 1 / self.n)
        return bool(abs(value - self.mean) <= half)


def spread(values: Sequence[float], confidence: float = CONFIDENCE) -> Spread:
    """Mean, standard deviation and the t interval of the mean of ``values``.

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("no values to summarise")
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if len(array) < 2:
        return Spread(mean, 0.0, mean, mean, 1)
    std = float(array.std(ddof=1))
    half = float(student_t.ppf((1 + confidence) / 2, len(array) - 1) * std / np.sqrt(len(array)))
    return Spread(mean, std, mean - half, mean + half, len(array))


def welch(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test that two groups of runs have the same mean (1 when
    either group has fewer than two runs or neither varies)."""
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return 1.0 if np.mean(a) == np.mean(b) or len(a) < 2 or len(b) < 2 else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)
