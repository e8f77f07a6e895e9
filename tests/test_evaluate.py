from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest

from imgclf import evaluate, train
from imgclf.common.cli import run_stage
from imgclf.common.stats import accuracy_interval
from imgclf.evaluation.predictions import from_csv
from imgclf.training.checkpoint import load_model

from .conftest import EVALUATE_ARGS, TRAIN_ARGS, runs_of


@pytest.fixture
def trained(processed, project):
    assert run_stage(train.main, TRAIN_ARGS) == 0
    return project / "models" / "model.pt"


def test_stage_writes_reports_and_logs(trained, project, client):
    assert run_stage(evaluate.main, EVALUATE_ARGS) == 0

    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "loss", "macro_f1"}
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    per_class = json.loads((project / "reports/per_class.json").read_text())
    assert list(per_class)[:2] == ["T-shirt/top", "Trouser"]
    assert set(per_class["Bag"]) == {"precision", "precision_ci95", "recall", "recall_ci95",
                                     "support"}
    low, high = per_class["Bag"]["recall_ci95"]
    assert low <= per_class["Bag"]["recall"] <= high
    with open(project / "reports/confusion.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 100 and set(rows[0]) == {"actual", "predicted"}
    correct = sum(r["actual"] == r["predicted"] for r in rows) / len(rows)
    assert correct == pytest.approx(metrics["test"]["accuracy"])
    # its 95% interval: Wilson's, on the 100 test images
    assert (metrics["test"]["accuracy_ci95_low"], metrics["test"]["accuracy_ci95_high"]) == \
        pytest.approx(accuracy_interval(round(correct * 100), 100))
    assert (project / "reports/confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (project / "reports/calibration.png").read_bytes()[:4] == b"\x89PNG"
    # validation scores too, each with its interval
    for split in ("val", "test"):
        scores = metrics[split]
        assert scores["accuracy_ci95_low"] <= scores["accuracy"] <= scores["accuracy_ci95_high"]
        assert scores["macro_f1_ci95_low"] <= scores["macro_f1"] <= scores["macro_f1_ci95_high"]
        assert 0 <= scores["ece"] <= 1
    # every image's prediction, in split order, agrees with the scores
    found, classes = from_csv(project / "reports/predictions.csv")
    assert classes[:2] == ["T-shirt/top", "Trouser"]
    assert {split: len(p) for split, p in found.items()} == {"val": 60, "test": 100}
    assert found["test"].correct.mean() == pytest.approx(metrics["test"]["accuracy"])
    assert found["test"].probabilities.sum(axis=1) == pytest.approx(1, abs=1e-3)

    (run,) = runs_of(client, "evaluate")
    (train_run,) = runs_of(client, "train")
    assert metrics["mlflow_run_id"] == run.info.run_id
    assert run.data.tags["lineage.train"] == train_run.info.run_id
    assert run.data.metrics["test/accuracy"] == metrics["test"]["accuracy"]
    assert run.data.metrics["test/macro_f1"] == metrics["test"]["macro_f1"]
    assert run.data.metrics["test/accuracy_ci95_high"] == metrics["test"]["accuracy_ci95_high"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion.png", "calibration.png", "per_class.json", "predictions.csv",
            "per_class_test.json"} <= artifacts
    # per-class scores are one table, not two metrics per class
    assert not [key for key in run.data.metrics if "/recall/" in key or "/precision/" in key]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "per_class_test.json"))
                       .read_text())
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    assert row["class"] == "T-shirt/top"
    assert row["recall"] == per_class["T-shirt/top"]["recall"]
    assert [row["recall_ci95_low"], row["recall_ci95_high"]] == pytest.approx(
        per_class["T-shirt/top"]["recall_ci95"])
    assert row["support"] == per_class["T-shirt/top"]["support"]
    assert run.data.metrics["val/accuracy"] == metrics["val"]["accuracy"]
    assert metrics["champion_decision"] == "first"

    # the run read the validation and test datasets and the train stage's logged model; its
    # scores are that model's scores on them, and the registered version points at it
    model_id = load_model(project / "models/model.pt")[2]["mlflow_model_id"]
    inputs = client.get_run(run.info.run_id).inputs
    assert [m.model_id for m in inputs.model_inputs] == [model_id]
    datasets = {d.dataset.digest: d.dataset for d in inputs.dataset_inputs}
    assert set(datasets) == set(metrics["digests"].values())
    linked = {(m.key, m.dataset_digest): m.value
              for m in client.get_logged_model(model_id).metrics}
    assert linked["test/accuracy", metrics["digests"]["test"]] == metrics["test"]["accuracy"]
    assert linked["val/accuracy", metrics["digests"]["val"]] == metrics["val"]["accuracy"]
    version = client.get_model_version("fashion-mnist-classifier", str(metrics["model_version"]))
    assert version.source == f"models:/{model_id}"


def champion_version(client) -> str:
    return str(client.get_model_version_by_alias("fashion-mnist-classifier", "champion").version)


def train_and_evaluate(set_params, **overrides) -> dict:
    set_params(**overrides)
    assert run_stage(train.main, TRAIN_ARGS) == 0
    assert run_stage(evaluate.main, EVALUATE_ARGS) == 0
    return json.loads(Path("reports/metrics.json").read_text())


def test_the_champion_moves_only_for_a_significantly_better_model_on_validation(
        processed, project, client, set_params):
    # a barely trained first champion
    weak = train_and_evaluate(set_params, train__lr=1e-6, train__epochs=1)
    assert weak["champion_decision"] == "first" and weak["val"]["accuracy"] < 0.5
    # a clearly better one takes over: McNemar on the 60 validation images
    strong = train_and_evaluate(set_params)
    assert strong["champion_decision"] == "moved" and strong["champion"]
    assert strong["champion_p_value"] < 0.001
    assert champion_version(client) == "2"
    version = client.get_model_version("fashion-mnist-classifier", "2")
    assert version.tags["champion_decision"] == "moved"
    assert float(version.tags["champion_p_value"]) == pytest.approx(strong["champion_p_value"],
                                                                    rel=1e-3)
    (_, run) = sorted(runs_of(client, "evaluate"), key=lambda r: r.info.start_time)
    assert run.data.metrics["champion/p_value"] == pytest.approx(strong["champion_p_value"])
    # an equal model (the same recipe trained again) does not
    equal = train_and_evaluate(set_params)
    assert equal["champion_decision"] == "kept" and not equal["champion"]
    assert equal["champion_p_value"] == 1.0
    assert champion_version(client) == "2"


def test_a_champion_scored_on_other_images_is_not_comparable_and_stays(
        processed, project, client, set_params):
    train_and_evaluate(set_params, train__lr=1e-6, train__epochs=1)
    client.set_model_version_tag("fashion-mnist-classifier", "1", "val_digest", "other")
    found = train_and_evaluate(set_params)
    assert found["champion_decision"] == "not comparable"
    assert champion_version(client) == "1"
    version = client.get_model_version("fashion-mnist-classifier", "2")
    assert "not comparable" in version.tags["champion_reason"]
    assert "MLflow UI" in version.tags["champion_reason"]


def test_champion_metric_test_is_allowed_but_loss_is_not(project, set_params):
    from imgclf.common.errors import UserError
    from imgclf.common.settings import load_settings

    assert load_settings(set_params(evaluate__champion_metric="test/accuracy"))
    with pytest.raises(UserError, match="champion_metric"):
        load_settings(set_params(evaluate__champion_metric="test/loss"))


def test_malicious_checkpoint_is_refused_without_running_it(processed, project, tmp_path,
                                                             capsys, client):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (project / "models").mkdir(exist_ok=True)
    (project / "models/model.pt").write_bytes(pickle.dumps({"state_dict": Exploit()}))

    assert run_stage(evaluate.main, EVALUATE_ARGS) == 2

    err = capsys.readouterr().err
    assert "models/model.pt: refused: not a weights-only tensor file" in err
    assert not marker.exists()
    assert not (project / "reports/metrics.json").exists()
    assert runs_of(client, "evaluate") == []
