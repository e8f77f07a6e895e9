"""Benchmarks of predictions: ``make serve`` under concurrent load, and ``imgclf-predict`` on
a folder of PNGs.

Both use the project of the pipeline section: its registered champion (served by the same
command ``make serve`` runs) and its test split exported as PNG files.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.run import BIN, user_env

CLIENTS, REQUESTS = 8, 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer")


def _client(url: str, body: bytes, latencies: list[float], errors: list[str]) -> None:
    for _ in range(REQUESTS):
        request = urllib.request.Request(url, data=body,
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
            if "class" not in answer["predictions"][0]:
                errors.append(f"no class in {answer}")
        except (OSError, ValueError, KeyError) as exc:
            errors.append(str(exc))
        latencies.append(time.perf_counter() - started)


def bench_load(project: Path, image: Path) -> dict:
    """``CLIENTS`` concurrent clients each sending ``REQUESTS`` single-image requests."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgclf.serve", "--port", str(port)],
                              cwd=project, env=user_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(base + "/ping", server)
        body = json.dumps({"inputs": {"image": [
            base64.b64encode(image.read_bytes()).decode()]}}).encode()
        _client(base + "/invocations", body, [], [])  # warm-up
        latencies: list[float] = []
        errors: list[str] = []
        threads = [threading.Thread(target=_client, args=(base + "/invocations", body,
                                                          latencies, errors))
                   for _ in range(CLIENTS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    ordered = sorted(latencies)
    return {"clients": CLIENTS, "requests": len(latencies), "errors": len(errors),
            "first_errors": errors[:3], "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
            "requests_per_s": len(latencies) / wall}


def bench_predict(project: Path, folder: Path) -> dict:
    """Images per second of ``imgclf-predict`` on the test split exported as PNGs."""
    command = [str(BIN / "imgclf-predict")]
    if not folder.is_dir():
        subprocess.run([*command, "--export-samples", str(folder)], cwd=project,
                       env=user_env(), check=True, capture_output=True)
    files = sum(1 for _ in folder.rglob("*.png"))
    started = time.perf_counter()
    done = subprocess.run([*command, str(folder), "--model", "models/model.pt", "--output",
                           str(folder.parent / "predictions.csv")], cwd=project,
                          env=user_env(), check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    accuracy = done.stderr.split("accuracy against the folder names: ")[1].split()[0]
    test = json.loads((project / "reports/metrics.json").read_text())["test"]["accuracy"]
    return {"images": files, "seconds": seconds, "images_per_s": files / seconds,
            "accuracy": float(accuracy), "evaluate_accuracy": test}


def bench_serving(project: Path, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[1]
    return {"load": bench_load(project, root / "examples" / "ankle-boot.png"),
            "predict": bench_predict(project, workdir / "test-pngs")}
