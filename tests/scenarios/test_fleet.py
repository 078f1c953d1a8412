"""The fleet (``python -m piper_gpu fleet``) on two chroot hosts of one inventory, served by one mirror, each
with its own port. Host a is the shared ``lab`` host, already converged: its fleet run is a no-op converge
and the health gate (its own process answers /health, diagnose passes). Host b is a fresh Debian 12 root
whose cuDNN installer path does not exist: preflight refuses it before anything changes, which costs
seconds. With plain pyinfra that refusal, raised while pyinfra prepares the deploy, stops every host.

All at once, b's refusal leaves a provisioned and healthy, the run exits 1 and the retry file names b.
With ``--serial 1``, b listed first and no ``--keep-going``, a is not started."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.fleet import host_entry, write_inventory
from tests.lab.sandbox import Sandbox, up

from conftest import REPO, record

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("fleet")]

#: Host b's service port (it never starts a server; a port of its own all the same, as in a real fleet).
B_PORT = int(os.environ.get("PIPER_FLEET_PORT", "15016"))
MISSING_INSTALLER = "/srv/installers/cudnn-local-repo-debian12-9.1.1_1.0-1_amd64.deb"


@pytest.fixture(scope="module")
def hosts(lab):
    """(a, b) as inventory entries: a the converged lab host, b a fresh root that preflight refuses."""
    lab.converged()
    Sandbox("e2e-fleet-b").destroy()
    b, url = up("e2e-fleet-b", extra={"port": B_PORT})
    a_entry = host_entry(lab.box, lab.mirror_url)
    b_entry = host_entry(b, url, cudnn_source="local-repo", cudnn_local_repo_url=MISSING_INSTALLER,
                         cudnn_local_repo_sha256="0" * 64)
    yield a_entry, b_entry, b
    if not os.environ.get("PIPER_E2E_KEEP"):
        b.destroy()


def fleet(tmp_path: Path, entries, *options) -> tuple[subprocess.CompletedProcess, dict, Path]:
    inventory = write_inventory(tmp_path / "inventory.py", entries)
    out, retry = tmp_path / "fleet.json", tmp_path / "fleet.retry"
    proc = subprocess.run([sys.executable, "-m", "piper_gpu", "fleet", str(inventory), *options, "--json", str(out),
                           "--retry-file", str(retry), "--log-dir", str(tmp_path / "logs")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, {h["host"]: h for h in json.loads(out.read_text())["hosts"]}, retry


def summary_row(stdout: str, host: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(host + " "))


def test_a_refused_host_leaves_the_other_provisioned_and_healthy(hosts, tmp_path):
    a, b, b_box = hosts
    proc, results, retry = fleet(tmp_path, [a, b])
    screen = proc.stdout
    assert proc.returncode == 1, screen[-3000:]
    assert results[a[0]]["status"] == "ok", results[a[0]]
    assert results[a[0]]["changes"] == 0, results[a[0]]  # converged before: the fleet's run changes nothing
    assert results[b[0]]["status"] == "refused", results[b[0]]
    assert f"cudnn_local_repo_url='{MISSING_INSTALLER}': no such file" in results[b[0]]["detail"]
    assert " ok " in summary_row(screen, a[0]) and " refused by preflight " in summary_row(screen, b[0])
    assert retry.read_text().splitlines() == [b[0]]
    assert f"--limit @{retry}" in screen
    assert not (b_box.root / "etc/piper-gpu").exists()  # refused before any change
    a_log = Path(results[a[0]]["log"]).read_text()
    assert "piper_gpu diagnose" in a_log and ", 0 failed," in a_log  # the gate's diagnose ran and passed
    record("fleet", all_at_once={h: {"status": r["status"], "seconds": r["seconds"], "changes": r["changes"]}
                                 for h, r in results.items()})


def test_serial_stops_after_the_refused_host_and_the_next_is_not_started(hosts, tmp_path):
    a, b, _ = hosts
    proc, results, retry = fleet(tmp_path, [b, a], "--serial", "1")
    screen = proc.stdout
    assert proc.returncode == 1, screen[-3000:]
    assert results[b[0]]["status"] == "refused"
    assert results[a[0]]["status"] == "not started", results[a[0]]
    assert results[a[0]]["detail"].startswith("stopped after batch 1: 1 of 2 hosts not ok")
    assert " not started " in summary_row(screen, a[0])
    assert retry.read_text().splitlines() == [b[0], a[0]]
    assert [log.name for log in (tmp_path / "logs").iterdir()] == [Path(results[b[0]]["log"]).name]  # a never ran
