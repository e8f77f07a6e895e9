"""Process ids: stable for a process's whole life, distinct once it has gone."""

from __future__ import annotations

import subprocess

import psutil

from imgclf.common.processes import is_alive, process_id


def test_this_process_is_alive_and_a_finished_one_is_not():
    assert is_alive(process_id())
    child = subprocess.Popen(["sleep", "60"])
    gone = process_id(psutil.Process(child.pid))
    assert is_alive(gone)
    child.kill()
    child.wait()
    assert not is_alive(gone)
    assert is_alive("another-host:1:1")  # only that host can tell
    assert not is_alive("not an id")


def test_the_id_survives_an_adjustment_of_the_system_clock(monkeypatch):
    before = process_id()
    # psutil's wall-clock start time moves with the boot time when the clock is adjusted
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: 12345.0)
    assert process_id() == before
    assert is_alive(before)
