"""How scripts/test shares the suite between its workers (tests/conftest.py): the tests of one host stay on one
worker, in their order, and the groups go out in GROUP_ORDER's order. Read from the suite's real collection."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest as suite
from tests.lab import durations

REPO = Path(__file__).resolve().parents[2]
#: a plugin for the collection below: each item's group (its xdist_group mark), part, scenario and whether it
#: uses the session's shared host, in the collection's final order
DUMP = '''
import json, os, pytest

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    rows = []
    for item in items:
        defs = item._fixtureinfo.name2fixturedefs.get("lab") if "lab" in item.fixturenames else None
        mark = item.get_closest_marker("scenario")
        rows.append({"nodeid": item.nodeid, "group": item.get_closest_marker("xdist_group").args[0],
                     "part": dict(item.user_properties)["part"], "scenario": mark.args[0] if mark else None,
                     "shared_lab": bool(defs) and defs[-1].scope == "session"})
    with open(os.environ["PIPER_GROUPS_OUT"], "w") as fh:
        json.dump(rows, fh)
'''


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    where = tmp_path_factory.mktemp("groups")
    (where / "groups_dump.py").write_text(DUMP)
    out = where / "groups.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-p", "groups_dump"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{where}:{REPO}", "PIPER_GROUPS_OUT": str(out)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_each_scenario_and_each_module_is_in_one_group(collected):
    by_scenario, by_module = {}, {}
    for row in collected:
        by_module.setdefault(row["nodeid"].split("::")[0], set()).add(row["group"])
        if row["scenario"]:
            by_scenario.setdefault(row["scenario"], set()).add(row["group"])
    assert set(by_scenario) == set(suite.SCENARIOS)
    assert {s: g for s, g in by_scenario.items() if len(g) != 1} == {}
    assert {m: g for m, g in by_module.items() if len(g) != 1} == {}


def test_every_user_of_the_shared_host_is_in_its_group_and_nothing_else_is(collected):
    sharing = {row["scenario"] for row in collected if row["shared_lab"]}
    assert "default" in sharing  # the scenario that converges it
    for row in collected:
        assert (row["group"] == suite.SHARED_LAB) == (row["scenario"] in sharing), row


def test_the_groups_go_out_in_group_order_and_keep_the_scenarios_order(collected):
    groups = list(dict.fromkeys(row["group"] for row in collected))  # in the order the workers are handed them
    assert groups[0] == suite.SHARED_LAB and groups[1].startswith("server/") and groups[-1].startswith("unit/")
    ranks = [suite._rank(g) for g in groups]
    assert ranks == sorted(ranks)
    # a group comes out whole: its tests are one run of the collection
    starts = [n for n, row in enumerate(collected) if n == 0 or row["group"] != collected[n - 1]["group"]]
    assert len(starts) == len(groups)
    shared = [row["scenario"] for row in collected if row["group"] == suite.SHARED_LAB]
    assert shared == sorted(shared, key=suite.SCENARIOS.index) and shared[0] == "default"


def test_every_named_group_exists(collected):
    groups = {row["group"] for row in collected}
    for name in suite.GROUP_ORDER:
        assert any(g == name or (name.endswith("/") and g.startswith(name)) for g in groups), name


def test_each_test_says_its_part_for_the_durations(collected):
    for row in collected:
        expected = f"scenario {row['scenario']}" if row["scenario"] else row["nodeid"].split("/")[1]
        assert row["part"] == expected, row


def test_durations_read_the_part_and_the_worker_from_the_report():
    report = SimpleNamespace(nodeid="tests/scenarios/test_ssh.py::test_x@ssh", user_properties=[("part", "scenario ssh")],
                             node=SimpleNamespace(gateway=SimpleNamespace(id="gw1")))
    assert durations.part_of(report) == "scenario ssh" and durations.worker_of(report) == "gw1"
    plain = SimpleNamespace(nodeid="tests/unit/test_ini.py::test_y", user_properties=[])
    assert durations.part_of(plain) == "unit" and durations.worker_of(plain) == "main"
