"""The evaluate stage's work: score the model on validation and test, with intervals, and
register it. Its command line is in ``imgclf/evaluate.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from imgclf.common.files import atomic_open, project_root, write_json, write_text
from imgclf.common.settings import SOURCE_TAG, EvaluateSettings, Settings, load_settings
from imgclf.data.splits import Split, load_meta, load_split, split_digest
from imgclf.evaluation.figures import confusion_csv, confusion_figure, reliability_figure
from imgclf.evaluation.predictions import to_csv
from imgclf.evaluation.scores import Predictions, SplitReport, predict
from imgclf.evaluation.selection import DIGEST_TAG, Decision, decide, split_of
from imgclf.tracking.datasets import SplitDataset, split_dataset
from imgclf.tracking.models import load
from imgclf.tracking.registry import model_tags, register_model, registered_name, version_uri
from imgclf.tracking.runs import StageRun, run_metrics, stage_run, used_values
from imgclf.training.checkpoint import load_model

SPLITS = ("val", "test")
# what the pipeline run keeps beside the scores (params.yaml and dvc.yaml it has already)
PIPELINE_FILES = (Path("dvc.lock"),)
# the train run's validation numbers that the pipeline run shows beside evaluate's
VALIDATION = ("val/best_accuracy", "val/kept_accuracy")


def evaluate(network: Callable[[torch.Tensor], torch.Tensor], split: Split, name: str,
             classes: list[str], batch_size: int) -> SplitReport:
    """``network``'s scores on ``split`` (called ``name``: ``val`` or ``test``)."""
    predictions, loss = predict(network, split, batch_size)
    return SplitReport(name, predictions, loss, classes)


def per_class_table(per_class: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Per-class scores as table columns: the class, precision and recall each with its 95%
    interval, and the number of test images."""
    table: dict[str, list[Any]] = {"class": list(per_class)}
    for values in per_class.values():
        for kind in ("precision", "recall"):
            low, high = values[f"{kind}_ci95"]
            for column, value in ((kind, values[kind]), (f"{kind}_ci95_low", low),
                                  (f"{kind}_ci95_high", high)):
                table.setdefault(column, []).append(value)
        table.setdefault("support", []).append(values["support"])
    return table


def champion_predictions(name: str, version: str, split: Split, batch_size: int
                         ) -> Predictions:
    """Registered ``version``'s predictions on ``split`` (loaded from a copy of the model)."""
    classifier = load(version_uri(name, version)).classifier
    return predict(classifier.network, split, batch_size)[0]


def register(name: str, info: dict[str, Any], reports: Mapping[str, SplitReport],
             all_settings: Settings, run: StageRun, data: Path, digests: dict[str, str]
             ) -> dict[str, Any]:
    """Register the trained model, and let the paired test decide whether it becomes the
    champion; return what the metrics file records about it."""
    settings: EvaluateSettings = all_settings.evaluate
    metric, split = settings.champion_metric, split_of(settings.champion_metric)
    source = all_settings.data.source(project_root())
    made: list[Decision] = []

    def choose(champion: tuple[str, dict[str, str]] | None, version: str
               ) -> tuple[bool, dict[str, str]]:
        decision = decide(metric, settings.champion_alpha, reports[split].predictions,
                          digests[DIGEST_TAG.format(split=split)], champion, version,
                          lambda: champion_predictions(name, champion[0],  # type: ignore[index]
                                                       load_split(data, split),
                                                       settings.batch_size),
                          len(reports[split].classes), source)
        made.append(decision)
        return decision.moves, decision.tags(champion[0] if champion else None)

    scores = {k: f"{v:.6g}" for report in reports.values() for k, v in report.scores().items()}
    registered = register_model(name, info["mlflow_model_uri"], {
        **scores, **digests, SOURCE_TAG: source,
        "data_version": info.get("data_version", ""),
        "git_commit": run.tags.get("git_commit", ""),
        "train_run_id": info.get("mlflow_run_id", ""), "evaluate_run_id": run.run_id}, choose,
        model_tags=model_tags(all_settings))
    decision = made[-1]
    run.set_tags({"registered_model": name, "model_version": registered.version,
                  "champion": str(registered.champion).lower(), **decision.tags(None)})
    if decision.test is not None:
        run.log_metrics({"champion/p_value": decision.test.p_value,
                         "champion/delta": decision.test.delta})
    print(f"registered {name} version {registered.version}"
          + (" (champion)" if registered.champion else "") + f": {decision.reason}")
    return {"model_version": int(registered.version), "champion": registered.champion,
            "champion_decision": decision.outcome,
            **({"champion_p_value": decision.test.p_value} if decision.test else {})}


def write_reports(args: argparse.Namespace, run: StageRun, reports: Mapping[str, SplitReport],
                  datasets: Mapping[str, SplitDataset], model_id: str | None) -> None:
    """Log and write the scores, per-class scores, confusion matrix (CSV for DVC, PNG),
    reliability diagram and per-image predictions.

    Each split's scores are also the logged model's scores on that split's dataset.
    """
    test = reports["test"]
    per_class = test.per_class()
    for name, report in reports.items():
        run.log_metrics(report.scores(), model_id=model_id, dataset=datasets[name])
    # one table for the UI's artifact view, not 2 metrics per class in the chart view
    run.log_table(per_class_table(per_class), "per_class_test.json")
    labels, predicted = test.predictions.labels, test.predictions.predicted
    for path, figure in ((args.confusion_png, confusion_figure(labels, predicted, test.classes)),
                         (args.calibration_png, reliability_figure(
                             {name: r.calibration for name, r in reports.items()}))):
        with atomic_open(path, "wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
        run.log_artifact(path)
    run.log_dict(per_class, "per_class.json")
    write_text(args.confusion, confusion_csv(labels, predicted, test.classes))
    write_json(args.per_class, per_class)
    write_text(args.predictions, to_csv({n: r.predictions for n, r in reports.items()},
                                        test.classes))
    run.log_artifact(args.predictions)


def summary_line(report: SplitReport) -> str:
    scores = report.scores()
    return (f"{report.split} accuracy {report.accuracy:.4f} (95% CI "
            f"{scores[report.split + '/accuracy_ci95_low']:.4f}-"
            f"{scores[report.split + '/accuracy_ci95_high']:.4f}), macro F1 "
            f"{report.macro_f1:.4f}, ECE {report.calibration.ece:.4f}")


def execute(args: argparse.Namespace) -> int:
    settings = load_settings(args.params)
    model, arch, info = load_model(args.model)
    splits = {name: load_split(args.data, name) for name in SPLITS}

    meta = load_meta(args.data)
    model_id = info.get("mlflow_model_id")

    with stage_run("evaluate", settings, upstream=info.get("lineage"),
                   data_version=info.get("data_version"), deps=[args.data, args.model]) as run:
        # which images were scored: runs with equal digests can be compared image by image
        hashes = {s: split_digest(args.data, s) for s in SPLITS}
        digests = {DIGEST_TAG.format(split=s): digest for s, digest in hashes.items()}
        run.set_tags(digests)
        datasets = {s: split_dataset(meta, s, digest) for s, digest in hashes.items()}
        run.log_datasets(datasets)
        if model_id:
            run.use_model(model_id)
        reports = {name: evaluate(model, split, name, arch.classes, settings.evaluate.batch_size)
                   for name, split in splits.items()}
        write_reports(args, run, reports, datasets, model_id)
        scores = {k: v for report in reports.values() for k, v in report.scores().items()}
        # the pipeline run shows the train stage's validation numbers beside these, and
        # the values it was trained with
        validation = run_metrics(info.get("mlflow_run_id", ""))
        run.log_to_pipeline(metrics={**scores, **{k: v for k, v in validation.items()
                                                  if k in VALIDATION}},
                            params=used_values(info.get("mlflow_run_id", "")),
                            artifacts=[(args.confusion_png, None),
                                       *[(path, "pipeline") for path in PIPELINE_FILES
                                         if path.is_file()]])
        summary: dict[str, Any] = {
            split: {key.removeprefix(f"{split}/"): value for key, value in scores.items()
                    if key.startswith(f"{split}/")} for split in SPLITS}
        summary["mlflow_run_id"] = run.run_id
        summary["digests"] = {split: digests[DIGEST_TAG.format(split=split)] for split in SPLITS}
        name = registered_name(settings)
        if name and "mlflow_model_uri" in info:  # a model the train stage logged to MLflow
            summary |= register(name, info, reports, settings, run, args.data, digests)
        write_json(args.metrics, summary)
        lines = [summary_line(report) for report in reports.values()]
        if "model_version" in summary:
            lines.append(f"registered as {name} version {summary['model_version']}"
                         + (" (champion)" if summary["champion"] else ""))
        run.describe_result("; ".join(lines) + ".")
        print("\n".join(lines))
        print(f"MLflow run {run.run_id}")
    return 0
