"""The suite's options: scenarios by name (tests/scenarios), in the order they run."""

import pytest

#: Every scenario, in the order they run.
SCENARIOS = ["default", "package", "dry-run", "faults", "variants", "ssh", "repair", "users-machine", "fleet", "resume", "undeploy",
             "upgrade", "pip-source", "bundle", "wsl2-ubuntu2204", "wsl2-ubuntu2404", "systemd"]


def pytest_addoption(parser):
    parser.addoption("--scenario", action="append", default=[], choices=SCENARIOS,
                     help="run only this scenario (repeatable); default: all")


def pytest_configure(config):
    config.addinivalue_line("markers", "scenario(name): the end-to-end scenario a module belongs to")


def _scenario(item) -> str | None:
    mark = item.get_closest_marker("scenario")
    return mark.args[0] if mark else None


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
