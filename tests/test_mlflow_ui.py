"""The MLflow UI over a real (small) pipeline, as a user sees it in headless Chromium.

Debian's ``chromium`` is driven by Playwright (``executable_path``; no browser download).
With ``IMGCLF_SCREENSHOTS=docs`` the test also writes the README's screenshots there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import FMNIST_DIR, dvc, dvc_env, make_repo
from .test_dashboard import free_port

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
EXPERIMENT_NAME = "lofty-mare"
PIPELINE = f"pipeline · {EXPERIMENT_NAME}"
STAGES = ("download", "preprocess", "tune", "train", "evaluate")
# the UI's model-training view (the runs table, Models tab and Model registry link)
VIEW = "?workflowType=machine_learning"


@dataclass
class Store:
    repo: Path
    url: str
    client: MlflowClient
    experiment_id: str

    def run(self, name: str):
        (found,) = self.client.search_runs([self.experiment_id],
                                           f"attributes.run_name = '{name}'")
        return found


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A DVC experiment of the real pipeline, and ``mlflow ui`` on its store."""
    if not FMNIST_DIR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is missing")
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is missing (.ci/run installs it)")
    repo = make_repo(tmp_path_factory.mktemp("ui") / "repo",
                     **{"tune.n_trials": 5, "tune.epochs": 2})
    dvc(repo, "exp", "run", "-n", EXPERIMENT_NAME)
    uri = f"sqlite:///{repo}/mlruns/mlflow.db"
    port = free_port()
    log = (repo.parent / "ui.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port)],
        env=dvc_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (repo.parent / "ui.log").read_text()
                time.sleep(0.5)
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("imgclf")
        yield Store(repo, url, client, experiment.experiment_id)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    """Write the README's screenshot ``name`` when asked to (IMGCLF_SCREENSHOTS=folder)."""
    if folder := os.environ.get("IMGCLF_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def open_page(page, store: Store, path: str) -> None:
    page.goto(f"{store.url}/#/experiments/{store.experiment_id}{path}{VIEW}")
    page.get_by_text("imgclf", exact=True).first.wait_for()
    page.wait_for_timeout(1500)  # the assistant's panel opens a moment later: close it
    close = page.get_by_label("Close", exact=True)
    if close.count():
        close.first.click()


def expand(page, row_name: str) -> None:
    """Unfold a parent run's row in the runs table."""
    row = page.locator(".ag-row", has=page.get_by_text(row_name, exact=True))
    row.locator('[data-component-id*="runnamecellrenderer"]').first.click()


def test_runs_table_shows_the_pipeline_its_stages_trials_datasets_and_test_accuracy(
        store, page):
    open_page(page, store, "/runs")
    page.get_by_text(PIPELINE, exact=True).wait_for()
    expand(page, PIPELINE)
    for stage in STAGES:
        page.get_by_text(stage, exact=True).wait_for()
    expand(page, "tune")
    for number in range(5):
        page.get_by_text(f"trial {number}", exact=True).wait_for()
    # the test-accuracy column, added the way a user adds it
    page.get_by_role("button", name="Columns", exact=True).click()
    page.get_by_placeholder("Search columns").fill("test/accuracy")
    page.get_by_text("test/accuracy", exact=True).first.click()
    page.keyboard.press("Escape")
    header = page.locator(".ag-header-cell", has_text="test/accuracy")
    header.first.wait_for()
    accuracy = store.run(PIPELINE).data.metrics["test/accuracy"]
    index = page.locator(".ag-row", has=page.get_by_text(PIPELINE, exact=True)).first \
        .get_attribute("row-index")
    cells = page.locator(f'.ag-center-cols-container .ag-row[row-index="{index}"]')
    assert f"{accuracy:.3g}" in cells.inner_text()
    # the Dataset column names the dataset
    assert page.get_by_text("fashion-mnist (", exact=False).count() >= 1
    screenshot(page, "mlflow-runs.png")


def test_pipeline_run_page_has_description_source_datasets_and_model(store, page):
    pipeline = store.run(PIPELINE)
    open_page(page, store, f"/runs/{pipeline.info.run_id}")
    page.get_by_text(f"DVC experiment {EXPERIMENT_NAME} on", exact=False).wait_for()
    text = page.inner_text("body")
    assert "Result: val accuracy" in text
    assert f"dvc exp run -n {EXPERIMENT_NAME}" in text  # the Source
    assert pipeline.data.tags["git_commit"][:7] in text
    assert "fashion-mnist (" in text  # Datasets
    assert "fashion-mnist-classifier" in text  # Registered models
    for stage in STAGES:
        assert stage in text  # Child runs


def test_pruned_trials_are_finished_not_failed(store, page):
    trials = [r for r in store.client.search_runs(
        [store.experiment_id], "tags.stage = 'tune-trial'")]
    assert {r.info.status for r in trials} == {"FINISHED"}
    pruned = [r for r in trials if r.data.tags["trial_state"] == "PRUNED"]
    for trial in pruned[:1] or trials[:1]:  # the median pruner cut some; a page each
        open_page(page, store, f"/runs/{trial.info.run_id}")
        page.get_by_text("About this run").wait_for()
        text = page.inner_text("body")
        assert "Finished" in text and "Failed" not in text and "Killed" not in text
        assert "val/best_accuracy" in text  # the objective it reached
        assert "python -m imgclf.tune" in text


def test_train_run_shows_its_curves_and_system_metrics(store, page):
    train = store.run("train")
    open_page(page, store, f"/runs/{train.info.run_id}/model-metrics")
    for name in ("train/accuracy", "train/loss", "val/accuracy"):  # a chart each
        page.get_by_text(f"train ({name})", exact=True).first.wait_for()
    screenshot(page, "mlflow-train-curves.png")
    open_page(page, store, f"/runs/{train.info.run_id}/system-metrics")
    page.get_by_text("cpu_utilization_percentage", exact=True).first.wait_for()


def test_tune_run_shows_optunas_plots(store, page):
    tune = store.run("tune")
    open_page(page, store, f"/runs/{tune.info.run_id}/artifacts")
    for name in ("optimization_history.png", "intermediate_values.png", "timeline.png",
                 "slice_lr_batch_size.png"):
        page.get_by_text(name, exact=True).wait_for()
    page.get_by_text("intermediate_values.png", exact=True).click()
    page.wait_for_timeout(2000)
    screenshot(page, "mlflow-tune.png")


def test_models_tab_lists_the_logged_model_with_its_test_scores(store, page):
    (model,) = store.client.search_logged_models([store.experiment_id])
    open_page(page, store, "/models")
    page.get_by_text("fashion-mnist-classifier", exact=False).first.wait_for()
    assert "Ready" in page.inner_text("body")
    open_page(page, store, f"/models/{model.model_id}")
    page.get_by_text("test/accuracy", exact=True).first.wait_for()
    screenshot(page, "mlflow-model.png")
    text = page.inner_text("body")
    test_accuracy = next(m for m in model.metrics if m.key == "test/accuracy")
    assert f"fashion-mnist (#{test_accuracy.dataset_digest})" in text
    assert "evaluate" in text  # the run that scored it


def test_registered_model_has_its_champion(store, page):
    page.goto(f"{store.url}/#/models/fashion-mnist-classifier{VIEW}")
    page.get_by_text("Version 1", exact=True).first.wait_for()
    assert "champion" in page.inner_text("body")
