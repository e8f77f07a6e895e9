"""What changed between two pipeline results, and whether it is real: the report's content.

Every delta is paired image by image when both results were scored on the same images
(exact McNemar for accuracy, a paired bootstrap for macro F1), with its 95% interval.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from PIL import Image as PILImage

from imgclf.common.stats import spread
from imgclf.evaluation.comparison import (
    ALPHA,
    delta_words,
    groups_verdict,
    paired,
    points,
    seed_words,
)
from imgclf.evaluation.document import Document, Image
from imgclf.evaluation.scores import Predictions, SplitReport

SCORES = (("test", "accuracy"), ("test", "macro_f1"), ("val", "accuracy"), ("val", "macro_f1"))
GALLERY = 24  # flipped images shown in each direction
THUMBNAIL = 84  # pixels: small images are scaled up to this size, without smoothing


@dataclass(frozen=True)
class Side:
    """One of the two results, with what the report draws from it."""

    label: str
    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    predictions: dict[str, Predictions]  # by split; empty when none were stored
    classes: list[str]
    digests: dict[str, str]  # by split: which images were scored
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    group: list[float] = field(default_factory=list)  # the seed group's test accuracies
    seed_group: str = ""

    def paired_with(self, other: Side, split: str) -> bool:
        """Whether both were scored on the same ``split`` images, with stored predictions."""
        return (split in self.predictions and split in other.predictions
                and bool(self.digests.get(split))
                and self.digests.get(split) == other.digests.get(split)
                and self.classes == other.classes)


def png(figure: Figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=90)
    return out.getvalue()


def params_section(document: Document, base: Side, head: Side) -> None:
    document.heading("Params that differ")
    # params.yaml's settings (section.key) that both results recorded
    keys = sorted(key for key in set(base.params) & set(head.params) if "." in key)
    rows = [[key, base.params[key], head.params[key]] for key in keys
            if base.params[key] != head.params[key]]
    if rows:
        document.table(["param", base.label, head.label], rows)
    else:
        document.paragraph("None: both results ran with the same params.")


def scores_section(document: Document, base: Side, head: Side) -> None:
    document.heading("Scores")
    document.paragraph(f"Deltas are {head.label} minus {base.label}, in percentage points, "
                       f"with 95% intervals; significant means p < {ALPHA:g} in a paired test "
                       "on the same images (exact McNemar for accuracy, paired bootstrap for "
                       "macro F1).")
    reseeded = bool(base.seed_group) and base.seed_group == head.seed_group
    if reseeded:
        document.paragraph("Only the seed differs: both are runs of one recipe, so a difference "
                           "between them is seed variation, not the effect of a change. The "
                           "paired test's p-value says how much these two models alone differ.")
    rows = []
    for split, metric in SCORES:
        key = f"{split}/{metric}"
        values = [_value(side, key) for side in (base, head)]
        if base.paired_with(head, split):
            test = paired(base.predictions[split], head.predictions[split], metric)
            words = seed_words(test) if reseeded else delta_words(test)
        elif None in values:
            words = "not measured on both"
        else:
            words = (f"{points(values[1] - values[0])} points, not comparable: scored on "  # type: ignore[operator]
                     "different images or without stored predictions")
        rows.append([key, *(_with_interval(side, key) for side in (base, head)), words])
    for split in ("test", "val"):
        key = f"{split}/ece"
        rows.append([key, *(_format(_value(side, key)) for side in (base, head)),
                     "calibration error: lower is better"])
    document.table(["score", base.label, head.label, "delta"], rows)


def _value(side: Side, key: str) -> float | None:
    return side.metrics.get(key)


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _with_interval(side: Side, key: str) -> str:
    low, high = side.metrics.get(f"{key}_ci95_low"), side.metrics.get(f"{key}_ci95_high")
    text = _format(_value(side, key))
    return f"{text} [{low:.4f}, {high:.4f}]" if low is not None and high is not None else text


def seeds_section(document: Document, base: Side, head: Side) -> None:
    if max(len(base.group), len(head.group)) < 2:
        return
    document.heading("Seed groups (test accuracy)")
    if base.seed_group and base.seed_group == head.seed_group:
        found = spread(head.group)
        document.paragraph(
            f"Both are runs of one recipe (seed group {head.seed_group}) under different seeds: "
            f"over its {found.n} seeds, test accuracy is {found.mean:.4f} ± {found.std:.4f} "
            f"(sd), the mean within [{found.low:.4f}, {found.high:.4f}]. A difference of "
            "this size between two of its runs is seed noise.")
        return
    rows = []
    for side in (base, head):
        found = spread(side.group)
        rows.append([side.label, str(found.n), f"{found.mean:.4f} ± {found.std:.4f}",
                     f"[{found.low:.4f}, {found.high:.4f}]"])
    document.table(["result", "seeds", "mean ± sd", "95% CI of the mean"], rows)
    verdict = groups_verdict(base.group, head.group)
    words = "not significant"
    if verdict.significant:
        better = spread(head.group).mean > spread(base.group).mean
        words = "significantly " + ("better" if better else "worse")
    p = f", p = {verdict.p_value:.2g}" if verdict.p_value is not None else ""
    document.paragraph(f"Between the groups: {words} ({verdict.method}{p}).")


def curves_section(document: Document, base: Side, head: Side) -> None:
    if not base.curves and not head.curves:
        return
    document.heading("Training curves")
    figure = Figure(figsize=(10, 4))
    for ax, kind in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for side, style in ((base, "--"), (head, "-")):
            for split, colour in (("train", "tab:blue"), ("val", "tab:orange")):
                points_ = side.curves.get(f"{split}/{kind}", [])
                if points_:
                    steps, values = zip(*points_, strict=True)
                    ax.plot(steps, values, style, color=colour, label=f"{side.label} {split}")
        ax.set(xlabel="epoch", ylabel=kind, title=kind)
        ax.legend(fontsize="small")
    figure.tight_layout()
    document.image(Image("curves.png", png(figure),
                         f"loss and accuracy per epoch: {base.label} dashed, {head.label} solid"))


def confusion_section(document: Document, base: Side, head: Side) -> None:
    document.heading("Confusion matrix: change on the test split")
    if not base.paired_with(head, "test"):
        document.paragraph("Not comparable: the two results were not scored on the same test "
                           "images.")
        return
    k = len(head.classes)
    counts = [np.bincount(p.labels * k + p.predicted, minlength=k * k).reshape(k, k)
              for p in (base.predictions["test"], head.predictions["test"])]
    delta = counts[1] - counts[0]
    size = max(5.0, 0.6 * k)
    figure = Figure(figsize=(size + 1, size))
    ax = figure.subplots()
    limit = max(1, int(np.abs(delta).max()))
    # coloured by whether the change is for the better: more right, or fewer mistakes
    better = np.where(np.eye(k, dtype=bool), delta, -delta)
    shown = ax.imshow(better, cmap="RdBu", vmin=-limit, vmax=limit)
    for (row, column), value in np.ndenumerate(delta):
        if value:
            ax.text(column, row, f"{value:+d}", ha="center", va="center", fontsize="small")
    ax.set_xticks(range(k), head.classes, rotation=45, ha="right")
    ax.set_yticks(range(k), head.classes)
    ax.set(xlabel="predicted", ylabel="actual",
           title=f"{head.label} minus {base.label} (counts)")
    figure.colorbar(shown, ax=ax, label="images: worse (red) or better (blue)")
    figure.tight_layout()
    document.image(Image("confusion-change.png", png(figure),
                         "change in the test confusion matrix"))
    document.paragraph("Each cell is the change in the number of test images; blue cells are "
                       "changes for the better (more right on the diagonal, fewer mistakes off "
                       "it), red ones for the worse.")


def per_class_section(document: Document, base: Side, head: Side) -> None:
    if not base.paired_with(head, "test"):
        return
    document.heading("Per class (test)")
    reports = [SplitReport("test", side.predictions["test"], 0.0, side.classes).per_class()
               for side in (base, head)]
    rows = []
    for name in head.classes:
        old, new = reports[0][name], reports[1][name]
        rows.append([name, str(new["support"]),
                     *(f"{old[kind]:.3f} → {new[kind]:.3f} ({points(new[kind] - old[kind])})"
                       for kind in ("recall", "precision"))])
    document.table(["class", "images", "recall (points)", "precision (points)"], rows)


def thumbnail(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 pixels (channels x height x width), scaled up without smoothing."""
    array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    image = PILImage.fromarray(np.ascontiguousarray(array))
    scale = max(1, THUMBNAIL // max(image.size))
    out = io.BytesIO()
    image.resize((image.width * scale, image.height * scale),
                 PILImage.Resampling.NEAREST).save(out, format="PNG")
    return out.getvalue()


def gallery_section(document: Document, base: Side, head: Side, images: np.ndarray | None
                    ) -> None:
    """The test images whose prediction flipped, in both directions, with both answers."""
    document.heading("Test images whose prediction flipped")
    if not base.paired_with(head, "test"):
        document.paragraph("Not comparable: the two results were not scored on the same test "
                           "images.")
        return
    old, new = base.predictions["test"], head.predictions["test"]
    for title, flipped in (("right → wrong", old.correct & ~new.correct),
                           ("wrong → right", ~old.correct & new.correct)):
        index = np.flatnonzero(flipped)
        shown = f", the first {GALLERY} shown" if len(index) > GALLERY else ""
        document.paragraph(f"{title}: {len(index)} images{shown}.")
        if images is None or not len(index):
            continue
        document.gallery([Image(
            f"flip-{'lost' if title.startswith('right') else 'won'}-{i}.png",
            thumbnail(np.asarray(images[i])),
            f"#{i} {head.classes[old.labels[i]]}: {base.label} said "
            f"{head.classes[old.predicted[i]]}, {head.label} says {head.classes[new.predicted[i]]}")
            for i in index[:GALLERY]])
    if images is None:
        document.paragraph("The images are not shown: the workspace's data/processed holds "
                           "other test images (dvc checkout or dvc repro brings them back).")


def build(base: Side, head: Side, images: np.ndarray | None) -> Document:
    """The report comparing ``head`` with ``base``; ``images`` is the test split they were
    scored on (``None``: not at hand, so the gallery lists counts only)."""
    document = Document(f"imgclf report: {base.label} → {head.label}")
    document.paragraph(f"Base: {base.label} (MLflow run {base.run_id}). Head: {head.label} "
                       f"(MLflow run {head.run_id}).")
    for section in (params_section, scores_section, seeds_section, curves_section,
                    confusion_section, per_class_section):
        section(document, base, head)
    gallery_section(document, base, head, images)
    return document
