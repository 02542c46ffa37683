"""pytest plugin: each test's CPU seconds, to choose the ``slow`` markers on a shared machine.

Wall times (``--durations``) grow with whatever else runs on the cores; CPU time (this process
and the child processes it waited for: CLI subprocesses, data-loader workers) does not. Usage:
``python -m pytest -p cpu_time_plugin -p no:randomly`` appends one tab-separated line per test
(CPU s, wall s, ``slow`` or ``-``, node id) to ``$PETFLARE_CPU_TIMES`` (default
``pytest_cpu_times.tsv``). ``make test-fast`` leaves out the tests marked slow: those over about
1.5 s of CPU each.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Generator

import pytest


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """Time the whole protocol of one test (setup, call, teardown)."""
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    yield
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    slow = "slow" if item.get_closest_marker("slow") else "-"
    path = os.environ.get("PETFLARE_CPU_TIMES", "pytest_cpu_times.tsv")
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{cpu:.2f}\t{wall:.2f}\t{slow}\t{item.nodeid}\n")
