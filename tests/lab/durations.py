"""Where a test run's minutes go: a pytest plugin (``-p tests.lab.durations``, as scripts/test loads it) that
writes every test's duration (setup + call + teardown) and the seconds of each part of the suite (unit, server,
and each scenario by name) to a JSON file: ``$PIPER_TEST_DURATIONS``, else
``$PIPER_RESULTS_DIR/test-durations.json``, else ``build/test-durations.json``.

    .venv/bin/python -m tests.lab.durations build/test-durations.json    # the parts and the 15 slowest tests
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def report_path() -> Path:
    if os.environ.get("PIPER_TEST_DURATIONS"):
        return Path(os.environ["PIPER_TEST_DURATIONS"])
    if os.environ.get("PIPER_RESULTS_DIR"):
        return Path(os.environ["PIPER_RESULTS_DIR"], "test-durations.json")
    return REPO / "build" / "test-durations.json"


def part_of(report) -> str:
    """"scenario <name>" for a scenario's test, else the suite's directory under tests/ ("unit", "server"): the
    "part" tests/conftest.py gives each item (carried in the report, so also from an xdist worker)."""
    for key, value in getattr(report, "user_properties", ()):
        if key == "part":
            return value
    parts = report.nodeid.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else parts[0]


def worker_of(report) -> str:
    """The pytest-xdist worker that ran the test ("gw0", ...), or "main" without workers."""
    node = getattr(report, "node", None)
    return getattr(getattr(node, "gateway", None), "id", None) or "main"


class Durations:
    def __init__(self):
        self.started = time.monotonic()
        self.tests: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report):
        test = self.tests.setdefault(report.nodeid, {"seconds": 0.0, "outcome": "passed", "part": part_of(report),
                                                     "worker": worker_of(report)})
        test["seconds"] += report.duration
        if report.outcome != "passed" and test["outcome"] == "passed":
            test["outcome"] = report.outcome if report.when == "call" else f"{report.outcome} in {report.when}"

    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(session.config, "workerinput"):
            return  # an xdist worker: the controller, which gets every report, writes the file
        parts: dict[str, float] = {}
        workers: dict[str, float] = {}
        for test in self.tests.values():
            parts[test["part"]] = parts.get(test["part"], 0.0) + test["seconds"]
            workers[test["worker"]] = workers.get(test["worker"], 0.0) + test["seconds"]
        out = report_path()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "wall_seconds": round(time.monotonic() - self.started, 1),
            "exit_status": int(exitstatus),
            "parts": {k: round(v, 1) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
            # each worker's seconds in tests: beside wall_seconds, how evenly the work was shared
            "workers": {k: round(v, 1) for k, v in sorted(workers.items())},
            "tests": {k: {**v, "seconds": round(v["seconds"], 2)}
                      for k, v in sorted(self.tests.items(), key=lambda kv: -kv[1]["seconds"])},
        }, indent=1) + "\n")
        terminal = session.config.pluginmanager.get_plugin("terminalreporter")
        if terminal:
            terminal.ensure_newline()
            terminal.write_line(f"test durations: {out}")


def pytest_configure(config):
    config.pluginmanager.register(Durations(), "piper-durations")


def summary(path: Path, slowest: int = 15) -> str:
    data = json.loads(path.read_text())
    lines = [f"{path}: {data['wall_seconds'] / 60:.1f} min wall"]
    lines += [f"  {seconds / 60:6.1f} min  in tests on worker {worker}" for worker, seconds in data.get("workers", {}).items()]
    lines += [f"  {seconds / 60:6.1f} min  {part}" for part, seconds in data["parts"].items()]
    lines += [f"  {t['seconds']:7.1f} s  {nodeid}" for nodeid, t in list(data["tests"].items())[:slowest]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1]) if len(sys.argv) > 1 else report_path()))
