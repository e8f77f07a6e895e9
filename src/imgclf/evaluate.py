"""Stage 5: score the trained model on the held-out test split.

    python -m imgclf.evaluate --params params.yaml --data data/processed \\
        --model models/model.pt --metrics reports/metrics.json \\
        --per-class reports/per_class.json --confusion reports/confusion.csv \\
        --confusion-png reports/confusion.png
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_fscore_support

from imgclf.common.cli import run_process, stage_parser
from imgclf.common.files import atomic_open, write_json, write_text
from imgclf.common.settings import load_settings
from imgclf.common.stats import accuracy_interval
from imgclf.data.splits import Split, load_split
from imgclf.tracking.registry import register_model
from imgclf.tracking.runs import StageRun, run_metrics, stage_run
from imgclf.training.checkpoint import load_model
from imgclf.training.engine import score

# the train run's validation numbers that the pipeline run shows beside the test scores
VALIDATION = ("val/best_accuracy", "val/kept_accuracy")


@dataclass(frozen=True)
class TestReport:
    """Test-set scores of one model."""

    loss: float
    accuracy: float
    macro_f1: float
    precision: list[float]
    recall: list[float]
    predictions: torch.Tensor
    accuracy_ci95: tuple[float, float] = (0.0, 1.0)  # Wilson interval

    def scores(self) -> dict[str, float]:
        """The headline metrics under their MLflow names."""
        low, high = self.accuracy_ci95
        return {"test/accuracy": self.accuracy, "test/accuracy_ci95_low": low,
                "test/accuracy_ci95_high": high, "test/loss": self.loss,
                "test/macro_f1": self.macro_f1}


def evaluate(model: torch.nn.Module, test: Split, num_classes: int, batch_size: int
             ) -> TestReport:
    """Loss, accuracy, macro F1 and per-class precision/recall of ``model`` on ``test``."""
    scored = score(model, test, batch_size)
    precision, recall, f1, _ = precision_recall_fscore_support(
        test.labels.numpy(), scored.predictions.numpy(), labels=list(range(num_classes)),
        zero_division=0)
    correct = int((scored.predictions == test.labels).sum())
    return TestReport(scored.loss, scored.accuracy, float(f1.mean()), precision.tolist(),
                      recall.tolist(), scored.predictions,
                      accuracy_interval(correct, len(test)))


def confusion_csv(labels: torch.Tensor, predictions: torch.Tensor, classes: list[str]) -> str:
    """One ``actual,predicted`` row per image: the input of DVC's confusion-matrix template."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[a], classes[p])
                     for a, p in zip(labels.tolist(), predictions.tolist(), strict=True))
    return out.getvalue()


def confusion_figure(labels: torch.Tensor, predictions: torch.Tensor, classes: list[str]
                     ) -> Figure:
    size = max(5.0, 0.6 * len(classes))
    figure = Figure(figsize=(size, size))
    ax = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels.numpy(), predictions.numpy(), labels=list(range(len(classes))),
        display_labels=classes, ax=ax, colorbar=False, xticks_rotation=45)
    figure.tight_layout()
    return figure


def metric_key(name: str) -> str:
    """A class name as an MLflow metric-name part (``T-shirt/top`` -> ``t-shirt_top``)."""
    return re.sub(r"[^0-9a-z_.-]+", "_", name.lower())


def register(name: str, info: dict[str, Any], scores: dict[str, float], metric: str,
             run: StageRun) -> dict[str, Any]:
    """Register the trained model; return what the metrics file records about it."""
    registered = register_model(
        name, info["mlflow_model_uri"], scores, metric,
        tags={"data_version": info.get("data_version", ""),
              "git_commit": run.tags.get("git_commit", ""),
              "train_run_id": info.get("mlflow_run_id", ""), "evaluate_run_id": run.run_id})
    run.set_tags({"registered_model": name, "model_version": registered.version,
                  "champion": str(registered.champion).lower()})
    print(f"registered {name} version {registered.version}"
          + (" (champion)" if registered.champion else ""))
    return {"model_version": int(registered.version), "champion": registered.champion}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder from preprocess")
    parser.add_argument("--model", type=Path, required=True, help="model from the train stage")
    parser.add_argument("--metrics", type=Path, required=True, help="output DVC metrics file")
    parser.add_argument("--per-class", type=Path, required=True, help="output per-class JSON")
    parser.add_argument("--confusion", type=Path, required=True, help="output DVC plot data")
    parser.add_argument("--confusion-png", type=Path, required=True, help="output image")
    return parser.parse_args(argv)


def write_reports(args: argparse.Namespace, run: StageRun, test: Split, report: TestReport,
                  classes: list[str]) -> None:
    """Log and write the per-class scores and the confusion matrix (CSV for DVC, PNG)."""
    per_class = {name: {"precision": p, "recall": r}
                 for name, p, r in zip(classes, report.precision, report.recall, strict=True)}
    run.log_metrics({**report.scores(), **{f"test/{kind}/{metric_key(name)}": value
                                           for name, values in per_class.items()
                                           for kind, value in values.items()}})
    figure = confusion_figure(test.labels, report.predictions, classes)
    with atomic_open(args.confusion_png, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    run.log_artifact(args.confusion_png)
    run.log_dict(per_class, "per_class.json")
    write_text(args.confusion, confusion_csv(test.labels, report.predictions, classes))
    write_json(args.per_class, per_class)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings(args.params)
    model, arch, info = load_model(args.model)
    test = load_split(args.data, "test")

    with stage_run("evaluate", settings, upstream=info.get("lineage"),
                   data_version=info.get("data_version"), deps=[args.data, args.model]) as run:
        report = evaluate(model, test, len(arch.classes), settings.evaluate.batch_size)
        scores = report.scores()
        write_reports(args, run, test, report, arch.classes)
        # the pipeline run shows validation and test side by side
        validation = run_metrics(info.get("mlflow_run_id", ""))
        run.log_to_pipeline(metrics={**scores, **{k: v for k, v in validation.items()
                                                  if k in VALIDATION}})
        summary: dict[str, Any] = {
            "test": {key.removeprefix("test/"): value for key, value in scores.items()},
            "mlflow_run_id": run.run_id}
        name = settings.evaluate.model_name(settings.data.dataset)
        if name and "mlflow_model_uri" in info:  # a model the train stage logged to MLflow
            summary |= register(name, info, scores, settings.evaluate.champion_metric, run)
        write_json(args.metrics, summary)
        print(f"test accuracy {report.accuracy:.4f}, loss {report.loss:.4f}, "
              f"macro F1 {report.macro_f1:.4f} (MLflow run {run.run_id})")
    return 0


if __name__ == "__main__":
    run_process(main)
