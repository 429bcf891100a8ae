"""The benchmark harness's load record: steal time from /proc/stat counts against a run as load does."""

import os
import sys

import pytest

from benchmarks import harness
from r1jax import host


def test_steal_fraction_from_two_cpu_lines():
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = [100, 0, 50, 800, 0, 0, 0, 50, 7, 0]
    after = [300, 0, 100, 900, 0, 0, 0, 350, 9, 0]  # +200 +50 +100 +300 steal: 650 ticks, 300 stolen
    assert host.steal_fraction(before, after) == pytest.approx(300 / 650)
    assert host.steal_fraction(before, before) == 0.0
    assert host.steal_fraction(None, after) is None
    if sys.platform.startswith("linux"):  # the real counters parse
        assert len(host.cpu_times()) >= 8


def test_steal_marks_a_run_loaded(monkeypatch):
    lines = iter([[0] * 10, [100, 0, 0, 0, 0, 0, 0, 100, 0, 0]])  # half the run's CPU time stolen
    monkeypatch.setattr(host, "cpu_times", lambda: next(lines))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle load average
    record = harness.LoadMonitor(own_threads=2, every_s=60).record()
    assert record["steal_fraction"] == pytest.approx(0.5) and record["loaded"]
    assert "steal 50%" in harness.loaded_banner(record) and "LOADED" in harness.loaded_banner(record)
