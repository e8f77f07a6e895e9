from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imgclf import evaluate, report, train
from imgclf.commands import report as report_work
from imgclf.common.cli import run_stage
from imgclf.common.errors import UserError
from imgclf.evaluation.document import Document, Image, markdown, to_html

from .conftest import EVALUATE_ARGS, TRAIN_ARGS


def train_and_evaluate(set_params, **overrides) -> str:
    """Train and evaluate; the evaluate run's id."""
    set_params(**overrides)
    assert run_stage(train.main, TRAIN_ARGS) == 0
    assert run_stage(evaluate.main, EVALUATE_ARGS) == 0
    return json.loads(Path("reports/metrics.json").read_text())["mlflow_run_id"]


def row(text: str, score: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {score} |")]
    return line


def test_report_of_a_better_model_shows_what_changed_and_that_it_is_real(
        processed, project, client, set_params):
    weak = train_and_evaluate(set_params, train__lr=1e-6, train__epochs=1)
    strong = train_and_evaluate(set_params)

    assert run_stage(report.main, ["--base", weak, "--head", strong]) == 0
    text = (project / "reports/report.md").read_text()
    assert "| train.lr | 1e-06 | 0.01 |" in text
    assert "| train.epochs | 1 | 2 |" in text
    accuracy = row(text, "test/accuracy")
    assert re.search(r"\+\d+\.\d\d points, 95% CI \[\+\d+\.\d\d, \+\d+\.\d\d\], "
                     r"significantly better \(p [<=] ", accuracy), accuracy
    assert "Training curves" in text and "Confusion matrix: change" in text
    # the gallery of flipped test images, with both answers
    won = re.search(r"wrong → right: (\d+) images", text)
    assert won and int(won[1]) > 10
    assert re.search(r"!\[#\d+ [^:]+: \w+ said [^,]+, \w+ says [^\]]+\]\(report_files/flip-won-\d+"
                     r"\.png", text)
    for name in re.findall(r"\]\((report_files/[^ )]+)", text):
        assert (project / "reports" / name).read_bytes()[:4] == b"\x89PNG"
    # one self-contained HTML file: every image inlined
    page = (project / "reports/report.html").read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 2 + min(int(won[1]), 24)  # curves, confusion change, gallery
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http" not in page
    # the other way round: significantly worse
    assert run_stage(report.main, ["--base", strong, "--head", weak]) == 0
    assert ", significantly worse (p " in row((project / "reports/report.md").read_text(),
                                              "test/accuracy")
    # attached to the head result's run
    artifacts = {a.path for a in client.list_artifacts(strong, "report")}
    assert {"report/report.md", "report/report.html"} <= artifacts


def test_report_of_another_seed_calls_the_difference_not_significant(
        processed, project, set_params):
    first = train_and_evaluate(set_params, train__seed=0)
    train_and_evaluate(set_params, train__seed=1)

    # the workspace's reports against the first run
    assert run_stage(report.main, ["--base", first, "--head", "workspace"]) == 0
    text = (project / "reports/report.md").read_text()
    assert "| train.seed | 0 | 1 |" in text
    for score in ("test/accuracy", "val/accuracy"):
        assert ", not significant: only the seed differs (these two models alone: p = " \
            in row(text, score)
    assert "Both are runs of one recipe (seed group " in text
    assert "over its 2 seeds, test accuracy is " in text


def test_an_unknown_reference_is_refused_with_what_to_give(project, capsys):
    assert run_stage(report.main, ["--base", "no-such-thing", "--head", "workspace"]) != 0
    assert "no-such-thing: not a run id, DVC experiment name or git revision" in \
        capsys.readouterr().err
    assert not (project / "reports/report.md").exists()


def test_document_renders_markdown_with_files_and_html_with_inlined_images():
    document = Document("title")
    document.paragraph("a <b> & c")
    document.table(["x", "y|z"], [["1", "2"]])
    document.gallery([Image("one.png", b"\x89PNG1", "first"), Image("two.png", b"\x89PNG2")])
    text = markdown(document, "files")
    assert "| x | y\\|z |" in text and "![first](files/one.png \"first\")" in text
    page = to_html(document)
    assert "a &lt;b&gt; &amp; c" in page
    assert "data:image/png;base64,iVBORzE=" in page and "one.png" not in page


def test_unknown_references_raise_before_anything_is_written(project):
    with pytest.raises(UserError, match="imgclf-compare lists the runs"):
        report_work.side("0" * 32, "tests", project)
