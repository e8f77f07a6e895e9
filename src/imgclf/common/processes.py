"""Naming processes so that work they leave unfinished can be recognised after a crash.

An id is host, pid and start time (pids are reused); a process on this host is alive when a
process with that pid and start time still exists. Processes on other hosts are assumed
alive: only they, or a heartbeat, can say otherwise.

On Linux the start time is the kernel's count of clock ticks since boot. The wall-clock
start time that ``psutil`` reports is derived from the boot time, which moves whenever the
system clock is adjusted (seconds at a time on virtual machines), so the same process could
get two ids.
"""

from __future__ import annotations

import socket
from pathlib import Path

import psutil


def start_time(process: psutil.Process) -> int:
    """When ``process`` started: clock ticks since boot on Linux, else ms since the epoch."""
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
        # the fields after the command name, which is in parentheses and may hold spaces;
        # the start time is field 22 of the line, the 20th after the name
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return int(process.create_time() * 1000)


def process_id(process: psutil.Process | None = None) -> str:
    """``host:pid:start`` of ``process`` (default: this one)."""
    process = process or psutil.Process()
    return f"{socket.gethostname()}:{process.pid}:{start_time(process)}"


def is_alive(process: str) -> bool:
    """Whether the process named by :func:`process_id` may still be running."""
    try:
        host, pid, started = process.rsplit(":", 2)
        if host != socket.gethostname():
            return True
        return start_time(psutil.Process(int(pid))) == int(started)
    except (psutil.Error, ValueError):
        return False
