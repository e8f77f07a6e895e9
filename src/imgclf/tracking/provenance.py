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


def run_tags(stage: str, settings: Settings) -> dict[str, str]:
    """Tags that say where a run came from: stage, code version, dataset, DVC experiment."""
    tags = {"stage": stage, "dataset": settings.data.dataset, PROCESS_TAG: process_id()}
    if commit := _git("rev-parse", "HEAD"):
        tags["git_commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["git_dirty"] = str(bool(status)).lower()
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp_name"),
                     ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if value := os.environ.get(env):
            tags[tag] = value
    return tags


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
