"""Naming processes so that work they leave unfinished can be recognised after a crash.

An id is host, pid and start time (pids are reused); a process on this host is alive when a
process with that pid and start time still exists. Processes on other hosts are assumed
alive: only they, or a heartbeat, can say otherwise.
"""

from __future__ import annotations

import socket

import psutil


def process_id(process: psutil.Process | None = None) -> str:
    """``host:pid:start-ms`` of ``process`` (default: this one)."""
    process = process or psutil.Process()
    return f"{socket.gethostname()}:{process.pid}:{int(process.create_time() * 1000)}"


def is_alive(process: str) -> bool:
    """Whether the process named by :func:`process_id` may still be running."""
    try:
        host, pid, started = process.rsplit(":", 2)
        if host != socket.gethostname():
            return True
        return int(psutil.Process(int(pid)).create_time() * 1000) == int(started)
    except (psutil.Error, ValueError):
        return False
