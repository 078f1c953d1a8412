"""testinfra checks for a host provisioned by piper-gpu-deploy.

    pytest verify/ --hosts=local://              # this machine (WSL2)
    pytest verify/ --hosts=ssh://user@gpu-01 --sudo
    pytest verify/ --hosts=/path/to/root --connection=chroot

The checks stand alone: they read what the deploy recorded on the host (the applied settings with
NVIDIA's names and the venv lock derived from them, /etc/piper-gpu/settings.json; the resolved paths
and the sha256 of every file it rendered, /etc/piper-gpu/target.json) and never import the deploy.
Each failure says what was found, what was expected, and the fix (the users' troubleshooting
section). GPU-only checks are skipped, with the reason, on a host without a usable GPU.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest


SETTINGS_FILE = "/etc/piper-gpu/settings.json"
TARGET_FILE = "/etc/piper-gpu/target.json"
ENV_FILE = "/etc/piper-gpu/piper-tts.env"


class Expectation(AssertionError):
    """A failed check: FOUND / EXPECTED / FIX, one line each (diagnose prints them)."""


def expect(ok: bool, found: str, expected: str, fix: str) -> None:
    if not ok:
        raise Expectation(f"FOUND: {found}\nEXPECTED: {expected}\nFIX: {fix}")


class Record(dict):
    """A recorded JSON object with attribute access (``applied.cudnn_package``, ``voice.name``)."""

    def __getattr__(self, key):
        try:
            return _wrap(self[key])
        except KeyError:
            raise AttributeError(key) from None


def _wrap(value):
    if isinstance(value, dict):
        return Record(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", str(version))[:2])


@pytest.fixture(scope="module")
def applied(host) -> Record:
    """The applied settings, with the names derived from them ("derived"), as the deploy recorded them."""
    f = host.file(SETTINGS_FILE)
    if not f.exists:
        pytest.fail(f"FOUND: no {SETTINGS_FILE}\nEXPECTED: a host provisioned by piper-gpu-deploy\n"
                    "FIX: run the deploy: pyinfra inventory/wsl.py deploy.py", pytrace=False)
    data = json.loads(f.content_string)
    if "derived" not in data:
        pytest.fail(f"FOUND: {SETTINGS_FILE} from an older piper-gpu-deploy (no derived names)\nEXPECTED: a record "
                    "this verify reads\nFIX: re-run the deploy", pytrace=False)
    return Record({**data, **data["derived"]})


@pytest.fixture(scope="module")
def target(host) -> dict:
    return json.loads(host.file(TARGET_FILE).content_string)


@pytest.fixture(scope="module")
def driver(host) -> dict | None:
    """{'gpus': [...], 'cuda_version': ..., 'driver_version': ...} or None (no working nvidia-smi)."""
    for smi in ("nvidia-smi", "/usr/lib/wsl/lib/nvidia-smi"):
        query = host.run(f"{smi} --query-gpu=name,driver_version --format=csv,noheader")
        if query.rc == 0 and query.stdout.strip():
            header = host.run(smi).stdout
            cuda = next((line.split("CUDA Version:")[1].split()[0] for line in header.splitlines()
                         if "CUDA Version:" in line), None)
            rows = [r.rsplit(",", 1) for r in query.stdout.strip().splitlines()]
            return {"path": smi, "gpus": [r[0].strip() for r in rows], "driver_version": rows[0][1].strip(),
                    "cuda_version": cuda}
    return None


CUINIT = """
import ctypes, json
try:
    print(json.dumps(ctypes.CDLL("libcuda.so.1").cuInit(0)))
except (OSError, AttributeError) as exc:
    print(json.dumps(str(exc)))
"""


@pytest.fixture(scope="module")
def needs_gpu(driver, applied, service_env):
    """Skip GPU-only checks, with the reason, where no GPU can be used: no nvidia-smi, or (only on a
    host provisioned with allow_no_gpu=True) a CUDA driver that reports no device. On any other host
    a failing driver fails the checks instead."""
    if driver is None:
        pytest.skip("no NVIDIA GPU on this host (nvidia-smi missing or lists no GPU)"
                    + ("; provisioned with allow_no_gpu=True" if applied.allow_no_gpu else ""))
    if not applied.use_gpu:
        pytest.skip("use_gpu=False in the applied settings")
    if applied.allow_no_gpu:
        _, cuinit, _ = service_env.python(CUINIT)
        if cuinit != 0:
            pytest.skip(f"no usable NVIDIA GPU on this host: nvidia-smi lists {driver['gpus']} but cuInit(0) gives "
                        f"{cuinit!r}; provisioned with allow_no_gpu=True")
    return driver


class ServiceEnv:
    """Run commands the way the service runs: its user, its environment file, its venv."""

    def __init__(self, host, applied: Record, target: dict):
        self.host, self.applied, self.target = host, applied, target

    def wrap(self, command: str) -> str:
        user = self.applied.service_user
        env = (f"env -i HOME={shlex.quote(self.target['home'])} "
               f"$(grep -v '^#' {ENV_FILE} 2>/dev/null | xargs)")
        inner = f"cd {shlex.quote(self.target['piper_dir'])} && {env} {command}"
        if user == "root":
            return f"sh -c {shlex.quote(inner)}"
        return f"runuser -u {shlex.quote(user)} -- sh -c {shlex.quote(inner)}"

    def run(self, command: str):
        return self.host.run(self.wrap(command))

    def python(self, code: str):
        """Run Python in the venv as the service; returns (rc, parsed JSON of the last stdout line or None, result)."""
        python = f"{self.target['venv_dir']}/bin/python"
        result = self.run(f"{shlex.quote(python)} -c {shlex.quote(code)}")
        lines = result.stdout.strip().splitlines()
        try:
            data = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            data = None
        return result.rc, data, result


def health(service_env, base_url) -> dict | None:
    """GET /health from the host, as the service user; None when it does not answer."""
    code = f"import urllib.request; print(urllib.request.urlopen({base_url + '/health'!r}, timeout=10).read().decode())"
    rc, data, res = service_env.python(code)
    return data if rc == 0 else None


@pytest.fixture(scope="module")
def service_env(host, applied, target) -> ServiceEnv:
    return ServiceEnv(host, applied, target)


@pytest.fixture(scope="module")
def base_url(target) -> str:
    return target["base_url"]


@pytest.fixture(scope="module")
def server_log(host, target):
    def read() -> str:
        f = host.file(target["log_path"])
        return f.content_string if f.exists else ""
    return read


def pytest_terminal_summary(terminalreporter):
    """Show the performance results measured by this run (they are also JSON on the host)."""
    try:
        from test_performance import RESULTS
    except ImportError:
        return
    for data in RESULTS:
        terminalreporter.write_sep("-", f"performance: voice {data['voice']}, service on {data['service_provider']}")
        for size, r in data["sizes"].items():
            terminalreporter.write_line(
                f"{size:6} {r['chars']:4} chars  service {r['service_median_ms']:8.1f} ms  "
                f"CPU {r['cpu_median_ms']:8.1f} ms  x{r['speedup']}  ({data['runs']} runs)")


#: The plan's steps, in the order the deploy takes them: checks run (and diagnose lists them) in it.
PLAN = ["driver", "cuda", "cudnn", "venv", "voices", "server", "service", "performance"]


def pytest_collection_modifyitems(items):
    def step(item) -> int:
        name = item.module.__name__.removeprefix("test_")
        return PLAN.index(name) if name in PLAN else len(PLAN)
    items.sort(key=step)  # stable: the checks of one step keep their order
