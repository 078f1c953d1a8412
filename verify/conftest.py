"""testinfra checks for a host provisioned by piper-gpu-deploy.

    pytest verify/ --hosts=local://              # this machine (WSL2)
    pytest verify/ --hosts=ssh://user@gpu-01 --sudo
    pytest verify/ --hosts=/path/to/root --connection=chroot

The checks stand alone: they read what the deploy recorded on the host (the applied settings with
NVIDIA's names and the venv lock derived from them, /etc/piper-gpu/settings.json; the resolved paths
and the sha256 of every file it rendered, /etc/piper-gpu/target.json) and never import the deploy.
Each failure says what was found, what was expected, and the fix (the users' troubleshooting
section). GPU-only checks are skipped, with the reason, only where the settings allow no GPU; on any
other host without a usable GPU they fail. Each check's decision is a function in checks.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile

import pytest

import checks

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
def driver(host) -> dict:
    return read_driver(host)


def read_driver(host) -> dict:
    """What nvidia-smi answers: {'path', 'gpus': [(name, driver version)], 'driver_version', 'cuda_version',
    'error'}; 'gpus' is empty (and 'error' says why) when no nvidia-smi works."""
    errors = []
    for smi in ("nvidia-smi", "/usr/lib/wsl/lib/nvidia-smi"):
        where = host.run(f"command -v {smi}")
        if where.rc != 0:
            errors.append(f"{smi}: not found")
            continue
        path = where.stdout.strip()
        query = host.run(f"{path} --query-gpu=name,driver_version --format=csv,noheader")
        gpus = checks.parse_gpu_query(query.stdout) if query.rc == 0 else []
        if gpus:
            return {"path": path, "gpus": gpus, "driver_version": gpus[0][1],
                    "cuda_version": checks.parse_cuda_version(host.run(path).stdout), "error": ""}
        errors.append(f"{path}: rc {query.rc}: {(query.stderr or query.stdout).strip()[-200:] or 'lists no GPU'}")
    return {"path": None, "gpus": [], "driver_version": None, "cuda_version": None, "error": "; ".join(errors)}


CUINIT = """
import ctypes, json
try:
    print(json.dumps(ctypes.CDLL("libcuda.so.1").cuInit(0)))
except (OSError, AttributeError) as exc:
    print(json.dumps(str(exc)))
"""


def report(problem) -> None:
    """Fail with a verify/checks.py Problem (FOUND / EXPECTED / FIX); nothing when it is None."""
    if problem is not None:
        raise Expectation(f"FOUND: {problem.found}\nEXPECTED: {problem.expected}\nFIX: {problem.fix}")


def gpu_verdict(driver, applied, target, service_env) -> tuple[str | None, object]:
    """(skip reason, problem) of checks.gpu_gate for this host: cuInit(0) tried as the service when
    nvidia-smi lists a GPU."""
    cuinit = None
    if driver["gpus"] and applied.use_gpu:
        rc, cuinit, res = service_env.python(CUINIT)
        if rc != 0 or cuinit is None:
            cuinit = f"the venv's Python fails: {res.stderr.strip()[-200:]}"
    return checks.gpu_gate(driver["gpus"], driver["error"], cuinit, use_gpu=applied.use_gpu,
                           allow_no_gpu=applied.allow_no_gpu, is_wsl=target["is_wsl"])


@pytest.fixture(scope="module")
def needs_gpu(driver, applied, target, service_env):
    """GPU-only checks are skipped, with the reason, only where the settings allow no GPU (use_gpu=False,
    or a host provisioned with allow_no_gpu=True). On any other host a missing nvidia-smi, an empty GPU
    list or a failing cuInit(0) fails them, naming the cause and the fix (checks.gpu_gate)."""
    skip, problem = gpu_verdict(driver, applied, target, service_env)
    if skip:
        pytest.skip(skip)
    report(problem)
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


#: The performance results measured by this run (test_performance.py appends; also JSON on the host).
PERF_RESULTS: list[dict] = []


def pytest_terminal_summary(terminalreporter):
    """Show the performance results measured by this run."""
    for data in PERF_RESULTS:
        terminalreporter.write_sep("-", f"performance: voice {data['voice']}, service on {data['service_provider']}")
        for size, r in data["sizes"].items():
            terminalreporter.write_line(
                f"{size:6} {r['chars']:4} chars  service {r['service_median_ms']:8.1f} ms  "
                f"CPU {r['cpu_median_ms']:8.1f} ms  x{r['speedup']}  ({data['runs']} runs)")


#: The plan's steps, in the order the deploy takes them: checks run (and diagnose lists them) in it.
PLAN = ["driver", "cuda", "cudnn", "venv", "voices", "server", "service", "performance"]


#: One SSH connection for a whole run. testinfra's ssh backend asks ssh for ``ControlMaster=auto`` but gives
#: no ``ControlPath``, and without one ssh shares nothing: each command of a run opened a connection
#: of its own (key exchange, login, a new sshd process). A host reached over ssh:// whose run names no
#: ControlPath gets one in a private directory; its master connection is closed when the run ends.
SSH_MASTERS: list[tuple[object, str]] = []


def ssh_backends(items) -> list:
    """The testinfra ssh backends (``ssh://``, ``safe-ssh://``) the collected checks run on."""
    found = {}
    for item in items:
        host = getattr(item, "callspec", None) and item.callspec.params.get("_testinfra_host")
        backend = getattr(host, "backend", None)
        if getattr(backend, "NAME", None) in ("ssh", "safe-ssh"):
            found[id(backend)] = backend
    return list(found.values())


def pytest_collection_finish(session):
    for backend in ssh_backends(session.items):
        if backend.controlpath is None and backend.controlpersist:
            directory = tempfile.mkdtemp(prefix="piper-gpu-ssh-")
            # a directory per host, so no ssh %-token in the path: testinfra puts the path in its own %-format
            backend.controlpath = os.path.join(directory, "master")
            SSH_MASTERS.append((backend, directory))


def pytest_sessionfinish(session):
    """Close each master connection this run opened (``ssh -O exit``) instead of leaving it for ControlPersist."""
    while SSH_MASTERS:
        backend, directory = SSH_MASTERS.pop()
        cmd, args = backend._build_ssh_command("")
        cmd[-1], args = "-O exit %s", args[:-1]  # the host, without a command
        try:
            backend.run_local(" ".join(cmd), *args)
        finally:
            backend.controlpath = None
            shutil.rmtree(directory, ignore_errors=True)


def pytest_collection_modifyitems(items):
    def step(item) -> int:
        name = item.module.__name__.removeprefix("test_")
        return PLAN.index(name) if name in PLAN else len(PLAN)
    items.sort(key=step)  # stable: the checks of one step keep their order
