"""Where a run came from: the stage, the code version, the DVC invocation and its inputs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from imgclf.common.processes import process_id
from imgclf.common.settings import Settings

PROCESS_TAG = "process"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def dvc_outputs(dvc_yaml: Path = Path("dvc.yaml")) -> set[str]:
    """The paths the pipeline's stages write (outs, metrics, plots), as ``dvc.yaml`` names
    them."""
    try:
        stages = YAML(typ="safe", pure=True).load(dvc_yaml.read_text()).get("stages", {})
    except (OSError, YAMLError, AttributeError):
        return set()
    found = set()
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                found.add(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return {path.rstrip("/") for path in found}


def changed_files(status: str, outputs: set[str], experiment: bool) -> list[str]:
    """The tracked files ``git status --porcelain`` lists, except what the pipeline writes
    itself: ``dvc.lock``, the stages' outputs, and, in a DVC experiment (which records its
    params), ``params.yaml``."""
    ignored = {"dvc.lock", *(["params.yaml"] if experiment else [])}
    changed = []
    for line in status.splitlines():
        path = line[3:].split(" -> ")[-1].strip('"')
        if path in ignored or any(path == out or path.startswith(out + "/") for out in outputs):
            continue
        changed.append(path)
    return changed


def source_tags(name: str) -> dict[str, str]:
    """MLflow's own source tags (the UI's "Source" and git commit) and ``git_dirty``: true
    when tracked files other than the pipeline's own outputs differ from the commit."""
    tags = {"mlflow.source.name": name, "mlflow.source.type": "LOCAL"}
    if commit := _git("rev-parse", "HEAD"):
        tags |= {"git_commit": commit, "mlflow.source.git.commit": commit}
        status = _git("status", "--porcelain", "--untracked-files=no") or ""
        changed = changed_files(status, dvc_outputs(), "DVC_EXP_NAME" in os.environ)
        tags["git_dirty"] = str(bool(changed)).lower()
        if changed:
            tags["git_changed"] = ", ".join(changed)[:500]
    return tags


def run_tags(stage: str, settings: Settings, source: str | None = None) -> dict[str, str]:
    """Tags that say where a run came from: stage, code version, dataset, DVC experiment.

    ``source`` is the command that ran (default: the stage's module).
    """
    tags = {"stage": stage, "dataset": settings.data.dataset, PROCESS_TAG: process_id()}
    tags |= source_tags(source or f"python -m imgclf.{stage}")
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp_name"),
                     ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if value := os.environ.get(env):
            tags[tag] = value
    return tags


def flat_params(tree: object, prefix: str = "") -> dict[str, object]:
    """Nested params as ``{"train.lr": 0.005, ...}``."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, object] = {}
    for key, value in tree.items():
        flat |= flat_params(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def params_changes(rev: str, params: Path = Path("params.yaml")) -> list[str] | None:
    """``params.yaml``'s values that differ from those at ``rev``, as ``key: old → new``;
    ``None`` when either cannot be read."""
    before = _git("show", f"{rev}:{params.as_posix()}")
    try:
        old = flat_params(YAML(typ="safe", pure=True).load(before)) if before else None
        new = flat_params(YAML(typ="safe", pure=True).load(params.read_text()))
    except (OSError, YAMLError):
        return None
    if old is None:
        return None
    return [f"{key}: {old.get(key, '(unset)')} → {new.get(key, '(unset)')}"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def pipeline_description(tags: dict[str, str]) -> str:
    """What a pipeline run is: its DVC experiment or commit, and how its params differ from
    its baseline's."""
    commit = tags.get("git_commit", "")
    baseline = tags.get("dvc_exp_baseline_rev") or commit
    name = tags.get("dvc_exp_name")
    head = (f"DVC experiment {name} on {baseline[:7]}" if name
            else f"dvc repro at {commit[:7]}" if commit else "dvc repro outside git")
    changes = params_changes(baseline) if baseline else None
    if changes is None:
        return f"{head}."
    if not changes:
        return f"{head}: params.yaml as committed."
    return f"{head}. Changed against {baseline[:7]}: " + "; ".join(changes) + "."


def seed_group(settings: Settings) -> str:
    """The recipe without its seed: runs whose params differ only in ``train.seed`` share it.

    A short hash of every param except ``train.seed`` and the ``tracking`` section.
    """
    params = settings.model_dump(mode="json")
    params.pop("tracking")
    params["train"].pop("seed")
    text = json.dumps(params, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def dvc_process() -> psutil.Process | None:
    """The ``dvc`` process (``repro``, ``exp run``, a queue worker) this stage runs under.

    DVC starts every stage of one invocation as a child of the same ``dvc`` process, so its
    identity names the pipeline run those stages share.
    """
    try:
        for proc in psutil.Process().parents():
            argv = proc.cmdline()
            if any(Path(arg).name == "dvc" for arg in argv[:2]) or argv[1:3] == ["-m", "dvc"]:
                return proc
    except psutil.Error:
        pass
    return None


def dvc_command(proc: psutil.Process) -> str:
    """The ``dvc`` command line a process runs, e.g. ``dvc exp run -S train.lr=0.01``."""
    try:
        argv = proc.cmdline()
    except psutil.Error:
        return "dvc"
    for i, arg in enumerate(argv[:3]):
        if Path(arg).name == "dvc":
            return " ".join(["dvc", *argv[i + 1:]])
    return " ".join(argv)


def dvc_lock_hashes(paths: Sequence[str | Path], lock: Path = Path("dvc.lock")
                    ) -> dict[str, str]:
    """The MD5s ``dvc.lock`` records for the given paths (outputs of earlier stages)."""
    wanted = {Path(path).as_posix().rstrip("/") for path in paths}
    try:
        stages = YAML(typ="safe", pure=True).load(lock.read_text()).get("stages", {})
    except (OSError, YAMLError, AttributeError):
        return {}
    found = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") in wanted and "md5" in out:
                found[out["path"]] = out["md5"]
    return found
