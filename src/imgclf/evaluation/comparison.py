"""Is a difference between two results real? Verdicts, and the words a report uses for them.

Two single runs scored on the same images are paired image by image (exact McNemar for
accuracy, a paired bootstrap for other scores). Two seed groups are compared by their
per-seed scores (Welch's t-test); a single run against a group, by whether it lies within
the group's 95% prediction interval for one more seed. Runs scored on different images are
not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imgclf.common.stats import CONFIDENCE, PairedTest, accuracies, paired_test, spread, welch
from imgclf.evaluation.scores import Predictions, macro_f1_statistic

ALPHA = 1 - CONFIDENCE


@dataclass(frozen=True)
class Verdict:
    """Whether one result differs significantly from another."""

    comparable: bool
    significant: bool = False
    p_value: float | None = None
    method: str = ""
    why: str = ""  # why not comparable

    def mark(self, worse: bool) -> str:
        """A leaderboard cell: ``≈ best (p=0.41)``, ``worse (p=0.003)``, ``not comparable``."""
        if not self.comparable:
            return "not comparable"
        p = f" (p={self.p_value:.2g})" if self.p_value is not None else ""
        if not self.significant:
            return f"≈ best{p}"
        return ("worse" if worse else "better") + p


def paired(a: Predictions, b: Predictions, metric: str = "accuracy") -> PairedTest:
    """B against A on the same images: accuracy (McNemar) or ``macro_f1`` (bootstrap)."""
    if metric == "accuracy":
        return paired_test(accuracies, a.labels, a.predicted, b.predicted, accuracy=True)
    classes = a.probabilities.shape[1]
    return paired_test(macro_f1_statistic(classes), a.labels, a.predicted, b.predicted)


def same_images(a: Predictions | None, b: Predictions | None, a_digest: str | None,
                b_digest: str | None) -> str:
    """Why two runs' predictions cannot be paired (empty when they can)."""
    if a is None or b is None:
        return "no stored predictions (runs from before per-image predictions were kept)"
    if not a_digest or a_digest != b_digest or len(a) != len(b):
        return "scored on different images"
    return ""


def runs_verdict(a: Predictions | None, b: Predictions | None, a_digest: str | None,
                 b_digest: str | None) -> Verdict:
    """Single run B against single run A on accuracy."""
    if why := same_images(a, b, a_digest, b_digest):
        return Verdict(False, why=why)
    test = paired(a, b)  # type: ignore[arg-type]
    return Verdict(True, test.significant(ALPHA), test.p_value, "exact McNemar")


def groups_verdict(a: Sequence[float], b: Sequence[float]) -> Verdict:
    """Seed groups (or a group and a single run) compared by their per-seed scores."""
    if len(a) >= 2 and len(b) >= 2:
        p_value = welch(a, b)
        return Verdict(True, p_value < ALPHA, p_value, "Welch t-test")
    group, single = (a, b) if len(a) >= 2 else (b, a)
    inside = spread(group).predicts(single[0])
    return Verdict(True, not inside, None, "95% prediction interval of the group")


def points(value: float) -> str:
    """A difference of two scores in percentage points: ``+0.31``."""
    return f"{100 * value:+.2f}"


def delta_words(test: PairedTest, alpha: float = ALPHA) -> str:
    """``+0.31 points, 95% CI [+0.05, +0.58], significantly better (p = 0.012)`` (or
    ``significantly worse``, or ``not significant``)."""
    verdict = "not significant"
    if test.significant(alpha):
        verdict = "significantly " + ("better" if test.delta > 0 else "worse")
    return (f"{points(test.delta)} points, 95% CI [{points(test.low)}, {points(test.high)}], "
            f"{verdict} ({p_words(test.p_value)})")


def seed_words(test: PairedTest) -> str:
    """A delta between two runs of one recipe that differ only in the seed: by construction
    no change of recipe caused it."""
    return (f"{points(test.delta)} points, 95% CI [{points(test.low)}, {points(test.high)}], "
            f"not significant: only the seed differs (these two models alone: "
            f"{p_words(test.p_value)})")


def p_words(p_value: float) -> str:
    """``p = 0.012``, or ``p < 0.001`` (a bootstrap's p-value of 0 only bounds it)."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.2g}"
