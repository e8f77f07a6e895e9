"""Choosing the champion: a new model takes over only when it is better on the same images,
and a paired test says the gain is real.

Selection uses the validation split by default: choosing on the test split would make the
test score of the chosen model an optimistic estimate (the test split becomes a selection
set), so the test numbers would no longer say how the champion does on new images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imgclf.common.settings import SOURCE_TAG, describe_source
from imgclf.common.stats import PairedTest, accuracies, paired_test
from imgclf.evaluation.scores import Predictions, macro_f1_statistic

DIGEST_TAG = "{split}_digest"  # registry version tag: the split a version was scored on


@dataclass(frozen=True)
class Decision:
    """Whether the champion alias moves to the new version, and why."""

    moves: bool
    outcome: str  # first | same version | moved | kept | not comparable
    reason: str
    test: PairedTest | None = None

    def tags(self, champion: str | None) -> dict[str, str]:
        """What the new version and the evaluate run record about the decision."""
        tags = {"champion_decision": self.outcome, "champion_reason": self.reason}
        if champion:
            tags["champion_compared_with"] = champion
        if self.test is not None:
            tags["champion_p_value"] = f"{self.test.p_value:.4g}"
        return tags


def split_of(metric: str) -> str:
    """``val`` for ``val/accuracy``."""
    return metric.split("/", 1)[0]


def compare(metric: str, classes: int, champion: Predictions, new: Predictions) -> PairedTest:
    """The new model against the champion on ``metric`` (accuracy: exact McNemar)."""
    name = metric.split("/", 1)[1]
    statistic = accuracies if name == "accuracy" else macro_f1_statistic(classes)
    return paired_test(statistic, new.labels, champion.predicted, new.predicted,
                       accuracy=name == "accuracy")


def decide(
    metric: str,
    alpha: float,
    new: Predictions,
    digest: str,
    champion: tuple[str, dict[str, str]] | None,
    version: str,
    score_champion: Callable[[], Predictions],
    classes: int,
    source: str = "",
) -> Decision:
    """The decision for a new ``version`` trained on ``source`` (a dataset's
    :meth:`~imgclf.common.settings.DataSettings.source`) and scored as ``new`` on a split
    with ``digest``.

    ``champion`` is the current champion's version and tags (``None``: there is none);
    ``score_champion`` scores it on the same split, called only when the two compare.
    """
    if champion is None:
        return Decision(True, "first", "no champion yet")
    current, tags = champion
    if current == version:
        return Decision(True, "same version", "this version is the champion already")
    split = split_of(metric)
    theirs = tags.get(DIGEST_TAG.format(split=split))
    trained_on = tags.get(SOURCE_TAG)
    if trained_on and source and trained_on != source:
        why = (f"the champion was trained on {describe_source(trained_on)}, this version on "
               f"{describe_source(source)}")
    elif theirs != digest:
        why = ("it was scored on other data" if theirs else
               "it records no scores on this split (registered by an earlier imgclf)")
    else:
        why = ""
    if why:
        return Decision(False, "not comparable",
                        f"champion version {current} and this version are not comparable on "
                        f"{metric}: {why}. The champion stays; to promote this version, add "
                        f"the alias 'champion' to it in the MLflow UI (Models page)")
    test = compare(metric, classes, score_champion(), new)
    words = (f"{metric} {test.delta:+.4f} against version {current} (95% CI "
             f"[{test.low:+.4f}, {test.high:+.4f}], p = {test.p_value:.3g}, alpha = {alpha:g})")
    if test.delta > 0 and test.p_value < alpha:
        return Decision(True, "moved", f"significantly better: {words}", test)
    verdict = "better, but not significantly" if test.delta > 0 else "not better"
    return Decision(False, "kept", f"{verdict}: {words}", test)
