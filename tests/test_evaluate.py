from __future__ import annotations

import csv
import json
import pickle

import pytest

from imgclf import evaluate, train
from imgclf.common.cli import run_stage
from imgclf.common.stats import accuracy_interval

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
    assert set(per_class["Bag"]) == {"precision", "recall"}
    with open(project / "reports/confusion.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 100 and set(rows[0]) == {"actual", "predicted"}
    correct = sum(r["actual"] == r["predicted"] for r in rows) / len(rows)
    assert correct == pytest.approx(metrics["test"]["accuracy"])
    # its 95% interval: Wilson's, on the 100 test images
    assert (metrics["test"]["accuracy_ci95_low"], metrics["test"]["accuracy_ci95_high"]) == \
        pytest.approx(accuracy_interval(round(correct * 100), 100))
    assert (project / "reports/confusion.png").read_bytes()[:4] == b"\x89PNG"

    (run,) = runs_of(client, "evaluate")
    (train_run,) = runs_of(client, "train")
    assert metrics["mlflow_run_id"] == run.info.run_id
    assert run.data.tags["lineage.train"] == train_run.info.run_id
    assert run.data.metrics["test/accuracy"] == metrics["test"]["accuracy"]
    assert run.data.metrics["test/macro_f1"] == metrics["test"]["macro_f1"]
    assert run.data.metrics["test/accuracy_ci95_high"] == metrics["test"]["accuracy_ci95_high"]
    assert run.data.metrics["test/recall/t-shirt_top"] == per_class["T-shirt/top"]["recall"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion.png", "per_class.json"} <= artifacts


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
