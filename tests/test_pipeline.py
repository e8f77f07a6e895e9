"""The pipeline as DVC runs it: dvc.yaml's declarations and a real ``dvc repro``."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from ruamel.yaml import YAML

from .conftest import FMNIST_DIR, PACKAGE, REPO, dvc, git, make_repo


def module_file(module: str) -> Path | None:
    """The file Python runs for ``imgclf...`` module ``module``, if it is one of ours."""
    base = PACKAGE.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_files(module: str) -> set[str]:
    """The files Python runs to import ``module``: it, every ``imgclf`` module it imports,
    transitively, and the ``__init__.py`` of every package on the way."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for depth in range(1, len(parts) + 1):  # a.b.c runs a, then a.b, then a.b.c
            path = module_file(".".join(parts[:depth]))
            if path is None or path in seen:
                continue
            seen.add(path)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgclf"):
                    todo.append(node.module)
                    # ``from imgclf.pkg import module`` imports a module, not just a name
                    todo += [f"{node.module}.{alias.name}" for alias in node.names
                             if module_file(f"{node.module}.{alias.name}")]
                elif isinstance(node, ast.Import):
                    todo += [a.name for a in node.names if a.name.startswith("imgclf")]
    return {path.relative_to(REPO).as_posix() for path in seen}


def test_each_stage_depends_on_exactly_the_files_it_imports():
    stages = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        declared = {dep for dep in stage["deps"] if dep.startswith("src/")}
        used = imported_files(f"imgclf.{name}")
        if name == "train":  # it logs the models-from-code file, which MLflow runs
            used |= imported_files("imgclf.tracking.pyfunc_model")
        assert declared == used, (name, sorted(declared ^ used))
        assert f"imgclf.{name} " in stage["cmd"]


def test_library_modules_are_imported_by_only_the_stages_that_use_them():
    stages = ("download", "preprocess", "tune", "train", "evaluate")
    users = {path: {name for name in stages if path in imported_files(f"imgclf.{name}")}
             for path in EDITED}
    assert users == EDITED


def all_runs(repo: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlruns/mlflow.db")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("imgclf")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], order_by=["start_time ASC"],
                              max_results=1000)


class History:
    """What each step of the session below ran, and what it printed."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.steps: dict[str, tuple[list, str]] = {}
        self.edits: dict[str, set[str]] = {}

    def edit(self, path: str) -> None:
        """Append a comment to ``path``; record which stages ``dvc status`` says changed."""
        source = self.repo / path
        original = source.read_text()
        source.write_text(original + "# an edit that changes no behaviour\n")
        try:
            self.edits[path] = set(json.loads(dvc(self.repo, "status", "--json").stdout))
        finally:
            source.write_text(original)

    def run(self, step: str, *args: str) -> None:
        seen = {run.info.run_id for run in all_runs(self.repo)}
        done = dvc(self.repo, *args)
        self.steps[step] = ([r for r in all_runs(self.repo) if r.info.run_id not in seen],
                            done.stdout)

    def queue(self, step: str, *experiments: list[str], jobs: int = 2) -> None:
        """Queue one experiment per ``-S`` list, run the queue with ``jobs`` workers."""
        seen = {run.info.run_id for run in all_runs(self.repo)}
        for sets in experiments:
            dvc(self.repo, "exp", "run", "--queue", *(arg for s in sets for arg in ("-S", s)))
        dvc(self.repo, "queue", "start", "-j", str(jobs))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = dvc(self.repo, "queue", "status").stdout
            if not any(word in status for word in ("Queued", "Running")):
                break
            time.sleep(2)
        else:
            pytest.fail("queued experiments did not finish")
        self.steps[step] = ([r for r in all_runs(self.repo) if r.info.run_id not in seen],
                            status)

    def runs(self, step: str, stage: str | None = None) -> list:
        runs = self.steps[step][0]
        return [r for r in runs if stage is None or r.data.tags["stage"] == stage]

    def stages(self, step: str) -> list[str]:
        return sorted(r.data.tags["stage"] for r in self.runs(step)
                      if r.data.tags["stage"] != "tune-trial")


QUEUED_LRS = ("0.002", "0.004")
# a library module, and the stages dvc status must name after an edit to it
EDITED = {"src/imgclf/tracking/registry.py": {"evaluate"},
          "src/imgclf/training/trainer.py": {"tune", "train"},
          "src/imgclf/train.py": {"train"},
          "src/imgclf/tuning/studies.py": {"tune"},
          "src/imgclf/common/settings.py": {"download", "preprocess", "tune", "train",
                                            "evaluate"}}
PIPELINE_RUNS = 7  # repro, the four experiments, the two queued ones


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    """A user's session: repro, repro again, experiments changing one thing each, a queue."""
    if not FMNIST_DIR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is missing")
    session = History(make_repo(tmp_path_factory.mktemp("pipeline") / "repo"))
    session.run("repro", "repro")
    session.run("again", "repro")
    for path in EDITED:
        session.edit(path)
    git(session.repo, "add", "-A")
    git(session.repo, "commit", "-qm", "first run")
    # the committed recipe under another seed, beside the workspace (which it leaves alone)
    session.run("seed", "exp", "run", "--temp", "-S", "train.seed=1")
    session.run("epochs", "exp", "run", "-S", "train.epochs=3")
    session.run("lr", "exp", "run", "-S", "train.lr=0.05")
    # raising n_trials resumes the lr=0.05 study of step "lr"
    session.run("more-trials", "exp", "run", "-S", "tune.n_trials=3")
    # two untuned experiments through DVC's queue, run side by side
    session.queue("queue", *(["tune.enabled=false", f"train.lr={lr}"] for lr in QUEUED_LRS))
    return session


def best_params(repo: Path) -> dict:
    return YAML(typ="safe").load((repo / "reports/best_params.yaml").read_text())["train"]


@pytest.mark.slow
def test_repro_runs_every_stage_tracked_and_nested(history):
    repo = history.repo
    assert history.stages("repro") == ["download", "evaluate", "pipeline", "preprocess",
                                       "train", "tune"]
    (pipeline,) = history.runs("repro", "pipeline")
    assert pipeline.info.status == "FINISHED"
    # no DVC experiment: named after the commit
    assert pipeline.info.run_name == f"pipeline · {pipeline.data.tags['git_commit'][:7]}"
    # the saved model's validation and test scores side by side
    (trained,), (evaluated,) = history.runs("repro", "train"), history.runs("repro", "evaluate")
    assert (pipeline.data.metrics["val/kept_accuracy"]
            == trained.data.metrics["val/kept_accuracy"])
    assert pipeline.data.metrics["test/accuracy"] == evaluated.data.metrics["test/accuracy"]
    for stage in ("download", "preprocess", "tune", "train", "evaluate"):
        (run,) = history.runs("repro", stage)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
        assert run.data.tags["dvc_stage"] == stage
        assert len(run.data.tags["git_commit"]) == 40
        # a fresh commit: dvc.lock and the reports differ from it, but the pipeline writes
        # those itself
        assert run.data.tags["git_dirty"] == "false", run.data.tags.get("git_changed")
        assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git_commit"]
        assert run.data.tags["mlflow.source.name"] == f"python -m imgclf.{stage}"
        assert run.data.tags["data_version"] == pipeline.data.tags["data_version"]
        assert pipeline.data.tags[f"run.{stage}"] == run.info.run_id
    # the pipeline run: the command that ran it, a description with its result, the files
    # behind it, the datasets and the model
    assert pipeline.data.tags["mlflow.source.name"].startswith("dvc repro")
    assert pipeline.data.tags["git_dirty"] == "false"
    description = pipeline.data.tags["mlflow.note.content"]
    assert description.startswith(f"dvc repro at {pipeline.data.tags['git_commit'][:7]}")
    assert "Result: val accuracy" in description and "test accuracy" in description
    artifacts = {a.path for a in MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db").list_artifacts(
        pipeline.info.run_id, "pipeline")}
    assert artifacts == {"pipeline/params.yaml", "pipeline/dvc.yaml", "pipeline/dvc.lock"}
    full = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db").get_run(pipeline.info.run_id)
    assert {d.dataset.name for d in full.inputs.dataset_inputs} == {"fashion-mnist"}
    assert {t.value for d in full.inputs.dataset_inputs for t in d.tags} == {
        "training", "validation", "test"}
    assert len(full.outputs.model_outputs) == 1
    trials = history.runs("repro", "tune-trial")
    (tune_run,) = history.runs("repro", "tune")
    assert {r.data.tags["mlflow.source.git.commit"] for r in trials} == {
        pipeline.data.tags["git_commit"]}
    assert len(trials) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {tune_run.info.run_id}
    # the data version: dvc.lock's hash of each input, copied onto the stage that read it
    (train_run,) = history.runs("repro", "train")
    lock = YAML(typ="safe").load((repo / "dvc.lock").read_text())["stages"]
    processed = next(o for o in lock["preprocess"]["outs"] if o["path"] == "data/processed")
    assert train_run.data.tags["dvc.md5/data/processed"] == processed["md5"]
    # every stage's metrics file names the MLflow run that wrote it (the latest of its stage)
    # experiments run in temporary folders are never applied to the workspace
    queued = {r.info.run_id for step in ("queue", "seed") for r in history.runs(step)}
    latest = {r.data.tags["stage"]: r.info.run_id for r in all_runs(repo)
              if r.info.run_id not in queued}
    for stage, name in (("download", "download_metrics"), ("preprocess", "preprocess_metrics"),
                        ("tune", "tune_metrics"), ("train", "train_metrics"),
                        ("evaluate", "metrics")):
        metrics = json.loads((repo / f"reports/{name}.json").read_text())
        assert metrics["mlflow_run_id"] == latest[stage], stage


@pytest.mark.slow
def test_final_model_uses_the_tuned_values(history):
    # the workspace's model: from step "lr", or "more-trials" if its extra trial won
    run_id = json.loads((history.repo / "reports/train_metrics.json").read_text())[
        "mlflow_run_id"]
    (train_run,) = [r for r in all_runs(history.repo) if r.info.run_id == run_id]
    tuned = best_params(history.repo)
    assert float(train_run.data.params["train.lr"]) == tuned["lr"]
    assert train_run.data.params["train.batch_size"] == str(tuned["batch_size"])
    (pipeline,) = history.runs("more-trials", "pipeline")
    # the values used, under the names the trials use
    assert float(pipeline.data.params["train.lr"]) == tuned["lr"]
    assert pipeline.data.params["train.batch_size"] == str(tuned["batch_size"])


@pytest.mark.slow
def test_second_repro_does_nothing(history):
    assert "Data and pipelines are up to date" in history.steps["again"][1]
    assert history.runs("again") == []


@pytest.mark.slow
def test_an_edit_reruns_only_the_stages_that_import_the_edited_file(history):
    assert history.edits == EDITED
    assert json.loads(dvc(history.repo, "status", "--json").stdout) == {}  # edits undone


@pytest.mark.slow
def test_training_longer_reuses_cached_stages_and_links_them(history):
    assert history.stages("epochs") == ["evaluate", "pipeline", "train"]
    (pipeline,) = history.runs("epochs", "pipeline")
    assert pipeline.data.tags["dvc_exp_name"]
    assert pipeline.info.run_name == f"pipeline · {pipeline.data.tags['dvc_exp_name']}"
    assert pipeline.data.tags["dvc_exp_baseline_rev"]
    # cached stages point to the runs of the first repro that produced their outputs
    for stage in ("download", "preprocess", "tune"):
        (original,) = history.runs("repro", stage)
        assert pipeline.data.tags[f"run.{stage}"] == original.info.run_id
        assert pipeline.data.tags[f"reused.{stage}"] == "true"
    # and from the evaluate run one can walk back to every run behind its model
    (evaluate_run,) = history.runs("epochs", "evaluate")
    (train_run,) = history.runs("epochs", "train")
    assert evaluate_run.data.tags["lineage.train"] == train_run.info.run_id
    for stage in ("download", "preprocess", "tune"):
        (original,) = history.runs("repro", stage)
        assert evaluate_run.data.tags[f"lineage.{stage}"] == original.info.run_id
        assert train_run.data.tags[f"lineage.{stage}"] == original.info.run_id
    assert train_run.data.params["train.epochs"] == "3"


@pytest.mark.slow
def test_new_learning_rate_is_the_baseline_trial_of_a_new_search(history):
    assert history.stages("lr") == ["evaluate", "pipeline", "train", "tune"]
    baseline = [r for r in history.runs("lr", "tune-trial")
                if r.data.tags.get("baseline") == "true"]
    assert [float(r.data.params["train.lr"]) for r in baseline] == [0.05]


@pytest.mark.slow
def test_disabled_tuning_trains_with_params_yaml_values(history):
    trained = sorted(r.data.params["train.lr"] for r in history.runs("queue", "train"))
    assert trained == list(QUEUED_LRS)
    assert history.runs("queue", "tune-trial") == []


@pytest.mark.slow
def test_queued_experiments_land_in_the_workspace_store(history):
    status = history.steps["queue"][1]
    assert status.count("Success") == len(QUEUED_LRS), status
    names = [line.split()[1] for line in status.splitlines() if "Success" in line]
    for name in names:
        assert "database is locked" not in dvc(history.repo, "queue", "logs", name).stdout
    runs = history.runs("queue")
    pipelines = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    assert len(pipelines) == len(QUEUED_LRS)
    assert {r.data.tags["dvc_exp_name"] for r in pipelines} == set(names)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert not (history.repo / ".dvc" / "tmp" / "exps" / "mlruns").exists()


@pytest.mark.slow
def test_raising_n_trials_adds_only_the_new_trials(history):
    trials = history.runs("more-trials", "tune-trial")
    assert [r.data.tags["optuna_trial"] for r in trials] == ["2"]
    # unless the new trial beat the best, the tuned values and so the model are unchanged:
    # DVC then skips training and evaluation
    assert history.stages("more-trials") in (["pipeline", "tune"],
                                             ["evaluate", "pipeline", "train", "tune"])


@pytest.mark.slow
def test_exp_show_lists_tuned_params_and_run_ids(history):
    shown = json.loads(dvc(history.repo, "exp", "show", "--json").stdout)
    workspace = shown[0]["data"]
    assert "reports/best_params.yaml" in workspace["params"]
    for name in ("metrics", "train_metrics", "tune_metrics"):
        assert workspace["metrics"][f"reports/{name}.json"]["data"]["mlflow_run_id"]
    experiments = [exp for rev in shown for exp in rev.get("experiments") or []]
    assert len(experiments) >= 4


@pytest.mark.slow
def test_plots_render_curves_and_confusion_matrix(history):
    plots = json.loads(dvc(history.repo, "plots", "show", "--json").stdout)
    assert {"Accuracy", "Loss", "Confusion matrix"} <= set(plots["data"])


@pytest.mark.slow
def test_registry_champion_moved_only_for_significant_gains_on_validation(history):
    mlflow.set_tracking_uri(f"sqlite:///{history.repo}/mlruns/mlflow.db")
    client = MlflowClient()
    versions = sorted(client.search_model_versions("name = 'fashion-mnist-classifier'"),
                      key=lambda v: int(v.version))
    trained = [r for r in all_runs(history.repo) if r.data.tags["stage"] == "train"]
    assert len(versions) == len(trained)  # one per trained model
    assert versions[0].tags["champion_decision"] == "first"
    champion = versions[0]
    for version in versions[1:]:
        decision = version.tags["champion_decision"]
        assert decision in ("moved", "kept"), version.tags["champion_reason"]
        assert version.tags["champion_compared_with"] == str(champion.version)
        p_value = float(version.tags["champion_p_value"])
        better = float(version.tags["val/accuracy"]) > float(champion.tags["val/accuracy"])
        assert (decision == "moved") == (better and p_value < 0.05)
        if decision == "moved":
            champion = version
    alias = client.get_model_version_by_alias("fashion-mnist-classifier", "champion")
    assert str(alias.version) == str(champion.version)
    for version in versions:
        assert {"data_version", "git_commit", "train_run_id", "test/accuracy", "val_digest",
                "test_digest", "test/macro_f1"} <= set(version.tags)


def report_of(repo: Path, base: str, head: str) -> str:
    subprocess.run([str(Path(sys.executable).parent / "imgclf-report"), "--base", base,
                    "--head", head], cwd=repo, capture_output=True, text=True, check=True,
                   env={k: v for k, v in os.environ.items() if k != "DVC_ROOT"})
    return (repo / "reports/report.md").read_text()


def report_row(text: str, score: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {score} |")]
    return line


@pytest.mark.slow
def test_another_seed_is_not_significantly_different_and_keeps_the_champion(history):
    (first,), (other,) = history.runs("repro", "pipeline"), history.runs("seed", "pipeline")
    assert other.data.tags["seed_group"] == first.data.tags["seed_group"]
    (evaluated,) = history.runs("seed", "evaluate")
    assert evaluated.data.tags["champion_decision"] == "kept"
    assert evaluated.data.metrics["champion/p_value"] >= 0.05
    # the committed result (its predictions from the DVC cache) against the experiment's
    text = report_of(history.repo, "HEAD", other.data.tags["dvc_exp_name"])
    assert "| train.seed | 0 | 1 |" in text
    for score in ("test/accuracy", "val/accuracy", "test/macro_f1"):
        assert ", not significant: only the seed differs" in report_row(text, score)
    assert "Both are runs of one recipe (seed group" in text
    assert re.search(r"right → wrong: [1-9]\d* images", text)  # some flip either way
    assert re.search(r"wrong → right: [1-9]\d* images", text)
    mlflow.set_tracking_uri(f"sqlite:///{history.repo}/mlruns/mlflow.db")
    logged = {a.path for a in MlflowClient().list_artifacts(other.info.run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= logged


@pytest.mark.slow
def test_report_of_a_longer_training_against_the_workspace_by_run_id(history):
    (longer,) = history.runs("epochs", "pipeline")
    (first,) = history.runs("repro", "pipeline")
    text = report_of(history.repo, first.info.run_id, longer.info.run_id)
    assert "| train.epochs | 2 | 3 |" in text
    assert re.search(r"points, 95% CI \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\], "
                     r"(not significant|significantly (better|worse)) \(p [=<] ",
                     report_row(text, "test/accuracy"))
    page = (history.repo / "reports/report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer")


@pytest.fixture
def server(history):
    """Start a server command on a free loopback port; stop it afterwards."""
    processes = []

    def start(command: list[str], health: str) -> str:
        port = free_port()
        log = open(history.repo.parent / f"server-{port}.log", "w")  # noqa: SIM115
        process = subprocess.Popen([*command, "--port", str(port)], cwd=history.repo,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        wait_for(base + health, process)
        return base

    yield start
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_served_champion_answers_image_files_and_refuses_bad_requests(history, server):
    import base64

    from imgclf.data.images import png_bytes
    from imgclf.data.splits import load_split
    from imgclf.tracking.models import load

    def files() -> dict[str, tuple[int, int]]:
        # SQLite readers touch only its -shm file; .dvc/tmp is the experiment queue's
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in history.repo.rglob("*") if p.is_file() and not p.name.endswith("-shm")
                and ".dvc/tmp" not in p.as_posix()}

    before = files()
    base = server([sys.executable, "-m", "imgclf.serve"], "/ping")
    test = load_split(history.repo / "data/processed", "test")
    pixels = test.images[:6].numpy()
    pngs = [base64.b64encode(png_bytes(image)).decode() for image in pixels]
    mlflow.set_tracking_uri(f"sqlite:///{history.repo}/mlruns/mlflow.db")
    local = load("models:/fashion-mnist-classifier@champion").classifier
    expected = local.answers(local.probabilities_of_pixels(pixels))
    champion = mlflow.MlflowClient().get_model_version_by_alias("fashion-mnist-classifier",
                                                                "champion").version
    served = f"models:/fashion-mnist-classifier/{champion}"  # the version, not the alias
    for body in ({"dataframe_records": [{"image": png} for png in pngs]},
                 {"dataframe_split": {"columns": ["image"], "data": [[png] for png in pngs]}},
                 {"inputs": {"image": pngs}},
                 {"inputs": (pixels / 255).tolist()}):  # the float-tensor form
        status, answer = post(base + "/invocations", body)
        assert status == 200, answer
        assert [a["class"] for a in answer["predictions"]] == [a["class"] for a in expected]
        assert {a["model"] for a in answer["predictions"]} == {served}  # lineage on answers
        assert answer["predictions"][0]["probabilities"]["Ankle boot"] == pytest.approx(
            expected[0]["probabilities"]["Ankle boot"], abs=1e-4)
    for body, message in [({"inputs": pixels.tolist()}, "divide them by 255"),
                          ({"inputs": {"image": ["not base64!"]}}, "not valid base64"),
                          ({"inputs": {"image": [base64.b64encode(b"GIF89a?").decode()]}},
                           "not a readable image"),
                          ({"inputs": [[[0.5, 0.5]]]}, "must be 1 x 28 x 28"),
                          ({"inputs": {"image": []}}, "empty")]:
        status, answer = post(base + "/invocations", body)
        assert status == 400 and message in answer["message"], answer
    assert urllib.request.urlopen(base + "/ping").status == 200  # still serving
    assert files() == before  # serving wrote nothing to the store or the project

    # the README's curl command, exactly as written but for the port
    readme = (REPO / "README.md").read_text()
    command = readme[readme.index("curl -s http://127.0.0.1:5001"):]
    command = command[:command.index("\n```")].replace("5001", base.rsplit(":", 1)[1])
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True,
                          check=True)
    answer = json.loads(done.stdout)["predictions"][0]
    assert answer["class"] == local.answers(local.probabilities_of_pixels(
        local.preprocessing.pixels(REPO / "examples/ankle-boot.png")[None]))[0]["class"]


@pytest.mark.slow
def test_predicting_the_exported_test_split_reproduces_the_test_accuracy(history, tmp_path):
    exported = tmp_path / "test-pngs"
    command = [str(Path(sys.executable).parent / "imgclf-predict")]
    subprocess.run([*command, "--export-samples", str(exported)], cwd=history.repo, check=True)
    (exported / "notes.txt").write_text("not an image")
    done = subprocess.run([*command, str(exported), "--model", "models/model.pt",
                           "--output", str(tmp_path / "p.csv")],
                          cwd=history.repo, capture_output=True, text=True, check=True)
    accuracy = float(done.stderr.split("accuracy against the folder names: ")[1].split()[0])
    metrics = json.loads((history.repo / "reports/metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=0.001)
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    classes = json.loads((history.repo / "data/processed/meta.json").read_text())["classes"]
    assert len(rows) == len(list(exported.rglob("*.png"))) + 1
    assert {row["class"] for row in rows if not row["error"]} <= set(classes)
    bad = [row for row in rows if row["error"]]
    assert [Path(row["path"]).name for row in bad] == ["notes.txt"]


@pytest.mark.slow
def test_tracking_server_rest_api_ranks_pipeline_runs(history, server):
    store = f"sqlite:///{history.repo}/mlruns/mlflow.db"
    base = server([str(Path(sys.executable).parent / "mlflow"), "server",
                   "--backend-store-uri", store, "--host", "127.0.0.1", "--workers", "1"],
                  "/health")
    experiment = json.loads(urllib.request.urlopen(
        base + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=imgclf").read())
    query = {"experiment_ids": [experiment["experiment"]["experiment_id"]],
             "filter": "tags.stage = 'pipeline'",
             "order_by": ["metrics.`test/accuracy` DESC"], "max_results": 50}
    request = urllib.request.Request(base + "/api/2.0/mlflow/runs/search",
                                     data=json.dumps(query).encode(),
                                     headers={"Content-Type": "application/json"})
    runs = json.loads(urllib.request.urlopen(request).read())["runs"]

    assert len(runs) == PIPELINE_RUNS
    # a pipeline run whose model DVC found up to date has no test scores of its own: last
    evaluated = [run for run in runs if "test/accuracy" in {
        m["key"] for m in run["data"].get("metrics", [])}]
    assert runs[:len(evaluated)] == evaluated
    assert len(evaluated) == len([r for r in all_runs(history.repo)
                                  if r.data.tags["stage"] == "evaluate"])
    accuracies = [{m["key"]: m["value"] for m in run["data"]["metrics"]}["test/accuracy"]
                  for run in evaluated]
    assert accuracies == sorted(accuracies, reverse=True)
    for run in evaluated:
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert params["data.dataset"] == "fashion-mnist"
        assert "train.lr" in params and "tuned/lr" not in params
        assert tags["stage"] == "pipeline" and "run.evaluate" in tags


@pytest.mark.slow
def test_compare_prints_a_leaderboard(history):
    done = subprocess.run([str(Path(sys.executable).parent / "imgclf-compare"), "-n", "10"],
                          cwd=history.repo, capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items() if k != "DVC_ROOT"})
    out = done.stdout
    assert f"last {PIPELINE_RUNS} pipeline runs" in out
    assert "train.lr" in out and "train.epochs" in out  # params that differ
    assert "data.dataset" not in out  # params that don't
    for run in history.runs("epochs", "pipeline") + history.runs("lr", "pipeline"):
        assert run.info.run_id in out
        assert run.data.tags["dvc_exp_name"] in out
    # the first run and its other seed are one row: their mean ± sd
    (first,) = history.runs("repro", "pipeline")
    assert f"seed group {first.data.tags['seed_group']}" in out
    assert "(n=2)" in out
    assert "2 runs of one recipe (train.seed 0, 1)" in out
