"""Scenarios by name, as molecule lays them out: each module is one scenario (``pytest.mark.scenario``)
on a real sandbox host: create (cached debootstrap) -> converge (the real deploy through pyinfra, from
the local NVIDIA mirror) -> idempotence -> verify -> destroy.

    pytest tests/scenarios --scenario bundle          # one scenario (repeatable)

Several share the ``lab`` host (converged once by "default"): they run on one worker, in the order of SCENARIOS
(tests/conftest.py); every other scenario has its own host, service port and SSH port, and may run beside them."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.mirror import cache_lock
from tests.lab.sandbox import MIRROR_PORT, Sandbox, provision, up


REPO = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("PIPER_E2E_PORT", "15005"))


class Lab:
    def __init__(self, name: str, port: int, extra=None, persona: str = "debian12", booted: bool = False,
                 ssh_port: int = 2231, apt_cache: bool = True, mirror_port: int = MIRROR_PORT):
        """A fresh sandbox host; ``extra``: settings, or a function of the served mirror's URL.
        ``booted``: Debian 12 booted with systemd (tests/lab/booted.py), reached over SSH on ``ssh_port``.
        ``apt_cache``: apt's archives shared with the suite's other hosts of its persona (tests/lab/sandbox.py
        APT_ARCHIVES; a booted host has its own). ``mirror_port``: the port of the mirror's HTTP server this
        host is given (the suite's shared one unless a scenario needs its own access log)."""
        if booted:
            from tests.lab.booted import BootedSandbox

            BootedSandbox(name).destroy()
        else:
            Sandbox(name, persona).destroy()  # fresh host every run
        self.booted = booted
        self.box, self.mirror_url = up(name, extra={"port": port}, persona=persona, booted=booted, ssh_port=ssh_port,
                                       apt_cache=apt_cache and not booted, mirror_port=mirror_port)
        if callable(extra):
            extra = extra(self.mirror_url)
        if extra:
            data = json.loads(self.box.data_file.read_text())
            self.box.data_file.write_text(json.dumps({**data, **extra}, indent=2))
        self.root = self.box.root
        self.port = port
        self.runs = []

    def deploy(self, check: bool = True, deploy_file: str = "deploy.py"):
        if self.booted:
            result = provision(self.box, self.mirror_url, echo=False, inventory="inventory/sandbox_ssh.py",
                               env_extra=self.box.ssh_env, deploy_file=deploy_file)
        else:
            result = provision(self.box, self.mirror_url, echo=False, deploy_file=deploy_file)
        self.runs.append(result)
        if check:
            assert result.returncode == 0, result.output[-6000:]
        return result

    def converged(self):
        """This host provisioned (by an earlier scenario, else now): for scenarios run on their own."""
        if not self.runs:
            self.deploy()
        return self

    def deploy_with(self, check: bool = False, **settings):
        """One run with these settings changed, the host's data put back afterwards."""
        before = json.loads(self.box.data_file.read_text())
        self.set_data(**settings)
        try:
            return self.deploy(check=check)
        finally:
            self.box.data_file.write_text(json.dumps(before, indent=2))

    def set_data(self, **settings):
        """Change this host's inventory data (None removes a key)."""
        data = json.loads(self.box.data_file.read_text())
        data.update(settings)
        data = {k: v for k, v in data.items() if v is not None}
        self.box.data_file.write_text(json.dumps(data, indent=2))

    def sh(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.box.chroot(command, check=check)

    def diagnose(self, tmp_path, only: list[str] | None = None) -> dict[str, dict]:
        """The verify suite's results by check, through ``python -m piper_gpu diagnose``; ``only``: just the
        checks whose names contain one of these (pytest's -k), for the loops that break one thing at a time."""
        out = tmp_path / f"diagnose-{len(list(tmp_path.iterdir()))}.json"
        started = time.monotonic()
        where = (["--hosts=ssh://127.0.0.1", f"--ssh-config={self.box.ssh_config}", "--sudo"] if self.booted
                 else [f"--hosts={self.root}", "--connection=chroot"])
        select = ["-k", " or ".join(map(_selecting, only))] if only else []
        proc = subprocess.run([sys.executable, "-m", "piper_gpu", "diagnose", *where, "--json", str(out), *select],
                              cwd=REPO, capture_output=True, text=True)
        self.diagnose_seconds = time.monotonic() - started
        results = {r["check"]: r for r in json.loads(out.read_text())}
        self.last_screen = proc.stdout
        self.last_returncode = proc.returncode
        missing = [name for name in only or [] if name not in results]
        assert not missing, f"diagnose -k ran no check named {missing}:\n{proc.stdout}\n{proc.stderr}"
        return results


def _selecting(check: str) -> str:
    """pytest's -k expression for a check as diagnose names it: ``name[a,b]`` (its parameters' values, while the
    test's id also holds testinfra's host) is the test whose name holds ``name``, ``a`` and ``b``."""
    name, _, params = check.partition("[")
    return "(" + " and ".join([name, *filter(None, params.rstrip("]").split(","))]) + ")"


@pytest.fixture(scope="session")
def lab():
    lab = Lab("e2e", PORT)
    yield lab
    if not os.environ.get("PIPER_E2E_KEEP"):
        lab.box.destroy()


def record(name: str, **figures) -> None:
    """Add measured figures to $PIPER_RESULTS_DIR/<name>.json (when set)."""
    out = os.environ.get("PIPER_RESULTS_DIR")
    if not out:
        return
    path = Path(out, f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(f"results-{name}"):  # the suite's workers record side by side
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(figures)
        path.write_text(json.dumps(data, indent=2) + "\n")
