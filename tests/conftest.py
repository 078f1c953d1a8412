"""The suite's options: scenarios by name (tests/scenarios), in the order they run, and how scripts/test hands
the suite to its workers (pytest-xdist, ``--dist loadgroup``).

Each group of tests runs on one worker, in the collection's order: a scenario (its host, its module fixtures),
the scenarios that share the ``lab`` host (tests/scenarios/conftest.py, converged once by "default"), one server
or unit test module (its servers and fixtures made once). The groups are handed out in GROUP_ORDER's order, each
to the first worker free; the parts' minutes that order follows are in docs/testing.md."""

import pytest

#: Every scenario, in the order they run (within their worker's share).
SCENARIOS = ["default", "package", "dry-run", "faults", "variants", "ssh", "repair", "users-machine", "fleet", "resume", "undeploy",
             "upgrade", "pip-source", "bundle", "wsl2-ubuntu2204", "wsl2-ubuntu2404", "systemd"]
#: The group of the scenarios whose tests use the session's shared host (the ``lab`` fixture).
SHARED_LAB = "lab"
#: The order the groups are handed to the workers: the shared host first (on a fresh machine it also builds the
#: mirror), then the server's tests, which need no mirror (the other worker's share while the mirror is built),
#: then the other scenarios, longest first (minutes in a sequential run: docs/testing.md), and the unit tests,
#: short pieces that fill the end. A group not named goes where its kind ("unit/", "server/") or the scenarios go.
GROUP_ORDER = [SHARED_LAB, "server/", "systemd", "wsl2-ubuntu2204", "upgrade", "ssh", "undeploy", "resume", "pip-source",
               "wsl2-ubuntu2404", "bundle", "variants", "unit/"]


def pytest_addoption(parser):
    parser.addoption("--scenario", action="append", default=[], choices=SCENARIOS,
                     help="run only this scenario (repeatable); default: all")


def pytest_configure(config):
    config.addinivalue_line("markers", "scenario(name): the end-to-end scenario a module belongs to")
    if hasattr(config, "workerinput"):
        _keep_the_worker_s_threads()


def _keep_the_worker_s_threads():
    """In a pytest-xdist worker, importing pyinfra_cli (piper_gpu.fleet loads inventories with it) must not
    patch the standard library for gevent (its ``monkey.patch_all()``, run at import): the worker talks to
    the controller through execnet's threads, and patched queues and locks deadlock them ("LoopExit: This
    operation would block forever"). The tests that import it parse inventory files, which needs no patched
    I/O; every deploy the suite runs is a pyinfra process of its own, patched as always."""
    from gevent import monkey

    monkey.patch_all = lambda *args, **kwargs: None


def _scenario(item) -> str | None:
    mark = item.get_closest_marker("scenario")
    return mark.args[0] if mark else None


def _uses_shared_lab(item) -> bool:
    defs = item._fixtureinfo.name2fixturedefs.get("lab") if "lab" in item.fixturenames else None
    return bool(defs) and defs[-1].scope == "session"


def group_of(item, shared: set[str]) -> str:
    """The worker-sized group ``item`` belongs to: its scenario (SHARED_LAB for those in ``shared``), else
    "unit/<module>" or "server/<module>"."""
    scenario = _scenario(item)
    if scenario is not None:
        return SHARED_LAB if scenario in shared else scenario
    path = item.nodeid.split("::")[0]
    parts = path.split("/")
    return f"{parts[1]}/{parts[-1]}" if len(parts) > 2 and parts[0] == "tests" else path


def _rank(group: str) -> int:
    for n, name in enumerate(GROUP_ORDER):
        if group == name or (name.endswith("/") and group.startswith(name)):
            return n
    return GROUP_ORDER.index("unit/") - (0 if "/" in group else 1)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    wanted = set(config.getoption("--scenario"))
    if wanted:
        keep = [i for i in items if _scenario(i) is None or _scenario(i) in wanted]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    unknown = sorted({s for s in map(_scenario, items) if s is not None and s not in SCENARIOS})
    if unknown:
        raise pytest.UsageError(f"scenario(s) {unknown} are not in SCENARIOS (tests/scenarios/conftest.py)")
    order = {name: n for n, name in enumerate(SCENARIOS)}
    items.sort(key=lambda i: order.get(_scenario(i), -1))  # stable: unit tests and test order within a module kept
    shared = {_scenario(i) for i in items if _scenario(i) is not None and _uses_shared_lab(i)}
    groups = {}
    for item in items:
        groups[item.nodeid] = group = group_of(item, shared)
        item.add_marker(pytest.mark.xdist_group(group))
        scenario = _scenario(item)
        # read by tests/lab/durations.py, on the worker's side and, with xdist, in the controller's reports
        item.user_properties.append(("part", f"scenario {scenario}" if scenario else group.split("/")[0]))
    items.sort(key=lambda i: _rank(groups[i.nodeid]))  # stable: the scenarios' order within a group kept


@pytest.hookimpl(trylast=True)  # after pytest-xdist wrote each test's group into its node id
def pytest_collection_finish(session):
    """In an xdist worker with --dist loadgroup, every test's node id must carry its group ("...@lab"), which is
    all the controller sees: without it (pytest-dev/pytest-xdist#1386) the tests of one host would be spread
    over the workers and run against a host another worker is still making. Each test then fails, saying so."""
    config = session.config
    if not (hasattr(config, "workerinput") and config.getvalue("loadgroup")):
        return
    lost = [item.nodeid for item in session.items if "@" not in item.nodeid.rpartition("]")[2].rpartition("::")[2]]
    if lost:
        config.stash[LOST_GROUPS] = (f"pytest-xdist lost the group of {len(lost)} tests (first: {lost[0]}): this "
                                     "pytest does not keep the group --dist loadgroup writes into node ids "
                                     "(pytest-dev/pytest-xdist#1386); install the test extra's pins (scripts/bootstrap)")


LOST_GROUPS = pytest.StashKey[str]()


def pytest_runtest_setup(item):
    lost = item.config.stash.get(LOST_GROUPS, None)
    if lost:
        pytest.fail(lost, pytrace=False)
