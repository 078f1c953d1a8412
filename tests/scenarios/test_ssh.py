"""Remote hosts the way operators reach them: pyinfra over SSH as a non-root user with sudo, to a
real sshd (inside a sandbox on 127.0.0.1), then verify over testinfra's SSH backend."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.lab.sandbox import provision

from conftest import REPO, Lab

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("ssh")]
SSH_PORT = int(os.environ.get("PIPER_E2E_SSH_PORT", "2222"))


@pytest.fixture(scope="module")
def remote():
    lab = Lab("e2e-ssh", 15007)
    ssh = lab.box.start_sshd(SSH_PORT)
    env = {"PIPER_SSH_PORT": str(ssh["port"]), "PIPER_SSH_USER": ssh["user"], "PIPER_SSH_KEY": ssh["key"]}
    yield lab, ssh, env
    lab.box.destroy()


def deploy(lab, env):
    result = provision(lab.box, lab.mirror_url, echo=False, inventory="inventory/sandbox_ssh.py", env_extra=env)
    assert result.returncode == 0, result.output[-5000:]
    return result


def test_deploy_over_ssh_converges_and_is_idempotent(remote):
    lab, ssh, env = remote
    first = deploy(lab, env)
    assert "[127.0.0.1] Connected" in first.output and first.changes > 20
    assert deploy(lab, env).changes == 0


def test_ssh_user_is_not_root_and_the_service_runs_as_its_own_user(remote):
    lab, ssh, _ = remote
    out = subprocess.run(["ssh", "-F", ssh["ssh_config"], "127.0.0.1", "id -un; sudo -n id -un; "
                          "ps -o user= -p $(sudo cat /home/piper/piper_env/run/piper-tts.pid); "
                          "test -r /home/piper/piper_env/run/piper-tts.pid || echo private"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["deploy", "root", "piper", "private"], out.stderr


def test_verify_over_ssh(remote, tmp_path):
    """diagnose logs in once: all its commands share one SSH connection (verify/conftest.py SSH_MASTERS)."""
    lab, ssh, _ = remote
    out = tmp_path / "results.json"
    logins = lab.box.ssh_logins()
    proc = subprocess.run([sys.executable, "-m", "piper_gpu", "diagnose", "--hosts=ssh://127.0.0.1",
                           f"--ssh-config={ssh['ssh_config']}", "--sudo", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcomes = [r["outcome"] for r in json.loads(out.read_text())]
    assert "failed" not in outcomes and outcomes.count("passed") > 0, outcomes
    assert re.search(r"^(\d+) passed, 0 failed, \d+ skipped$", proc.stdout, re.M), proc.stdout[-500:]
    assert lab.box.ssh_logins() - logins == 1


def test_limit_restricts_the_run_to_the_named_group(remote, tmp_path):
    """An inventory with two groups, one host unreachable: --limit runs only the named group."""
    lab, _, env = remote
    inventory = tmp_path / "two_groups.py"
    inventory.write_text(
        "import runpy\n"
        f"gpu_lab = runpy.run_path({str(REPO / 'inventory/sandbox.py')!r})['sandbox']\n"
        "unreachable = [('gpu-02', {'ssh_hostname': '127.0.0.1', 'ssh_port': 1, 'allow_no_gpu': True})]\n"
    )
    limited = provision(lab.box, lab.mirror_url, echo=False, inventory=str(inventory), env_extra=env,
                        extra_args=["--limit", "gpu_lab"])
    assert limited.returncode == 0, limited.output[-3000:]
    assert "gpu-02" not in limited.output and f"[@chroot/{lab.root}] Connected" in limited.output
    other = provision(lab.box, lab.mirror_url, echo=False, inventory=str(inventory), env_extra=env,
                      extra_args=["--limit", "unreachable"])
    assert other.returncode != 0 and "[gpu-02]" in other.output and str(lab.root) not in other.output
