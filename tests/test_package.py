"""The package's shape: stages apart from the library, MLflow behind tracking, short
functions."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from .conftest import PACKAGE

STAGES = ("download", "preprocess", "tune", "train", "evaluate")
TOOLS = ("serve", "compare", "presets", "predict", "report", "dashboard")
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    return {".".join(("imgclf", *path.relative_to(PACKAGE).with_suffix("").parts))
            .removesuffix(".__init__"): ast.parse(path.read_text())
            for path in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_the_top_level_holds_only_the_commands():
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == {*STAGES, *TOOLS}
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir()} - {"__pycache__"} == {
        "commands", "common", "data", "evaluation", "inference", "training", "tuning",
        "tracking"}
    assert {path.stem for path in (PACKAGE / "commands").glob("*.py")} - {"__init__"} <= top


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_command_is_imported_by_another_module(name):
    commands = {f"imgclf.{command}" for command in (*STAGES, *TOOLS)}
    assert not imports(modules()[name]) & (commands - {name})
    # a command's work is imported by its own command line only
    work = {f"imgclf.commands.{command}" for command in (*STAGES, *TOOLS)}
    assert not imports(modules()[name]) & (work - {name.replace("imgclf.", "imgclf.commands.")})


@pytest.mark.parametrize("name", sorted(modules()))
def test_only_tracking_talks_to_mlflow(name):
    uses_mlflow = any(module.split(".")[0] == "mlflow" for module in imports(modules()[name]))
    assert not uses_mlflow or name.startswith("imgclf.tracking")


def test_model_and_training_code_know_nothing_of_mlflow_optuna_or_dvc():
    for name, tree in modules().items():
        if name.startswith("imgclf.training"):
            assert not {m.split(".")[0] for m in imports(tree)} & {"mlflow", "optuna", "dvc"}


def test_no_function_is_longer_than_60_lines():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - first + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []


def test_nothing_happens_at_import_time():
    # a module's top level only imports, defines and assigns constants
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign,
               ast.AnnAssign, ast.If, ast.Expr)
    for name, tree in modules().items():
        for node in tree.body:
            assert isinstance(node, allowed), f"{name}: {ast.dump(node)[:80]}"
            if isinstance(node, ast.Expr):  # only the docstring, and MLflow's models-from-code
                # file hands over its model (it is run by MLflow, never imported)
                assert isinstance(node.value, ast.Constant) or (
                    name == "imgclf.tracking.pyfunc_model"
                    and ast.unparse(node).startswith("mlflow.models.set_model(")), name
            if isinstance(node, ast.If):  # only the __main__ guard
                assert "__main__" in ast.unparse(node.test), name



@pytest.mark.parametrize("command", [*STAGES, *TOOLS])
def test_help_names_the_command_as_typed_and_describes_it_in_a_sentence(command):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", f"imgclf.{command}",
                           "--help"], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parents[1])
    assert done.returncode == 0, done.stderr
    # answered without loading torch or MLflow (seconds each): importtime names every module
    loaded = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()}
    assert not loaded & {"torch", "mlflow"}, command
    usage, _, rest = done.stdout.partition("\n\n")
    assert usage.startswith(f"usage: python -m imgclf.{command} ")
    summary = " ".join(rest.split("\n\n")[0].split())
    assert summary[0].isupper() and summary.endswith("."), summary
    assert "``" not in done.stdout
