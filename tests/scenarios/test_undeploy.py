"""undeploy.py removes what deploy.py added and leaves the host as it was before: a host with the basics
and the users' CPU server running (no autostart line), whose script the deploy moves aside and undeploy
puts back."""

import pytest

from tests.lab.sandbox import provision

from conftest import Lab, record
from tests.lab import users

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("undeploy")]
EVERYTHING = ["--data", "piper_gpu_undeploy_voices=true", "--data", "piper_gpu_undeploy_system=true"]
VOLATILE = ["/proc", "/sys", "/dev", "/run", "/tmp", "/var/cache", "/var/log", "/var/lib/apt", "/var/lib/dpkg"]
# /etc/shadow- and friends are the backups useradd/userdel themselves write.
TREE = ("find / -xdev \\( " + " -o ".join(f"-path {p}" for p in VOLATILE) + " -o -path '/etc/*-' \\) -prune -o -print | sort")
ETC = "cd /etc && find . -xdev -type f ! -name '*-' ! -name ld.so.cache -exec sha256sum {} + | sort"
PACKAGES = "dpkg-query -W -f='${Package}=${Version} ${db:Status-Abbrev}\\n' | sort"


@pytest.fixture(scope="module")
def box():
    lab = Lab("e2e-undeploy", 15009)
    # A machine that already has the basics (curl, python3-venv, ...), as users' machines do.
    lab.sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
           "ca-certificates curl python3 python3-venv procps iproute2 >/dev/null")
    # their CPU server, started by hand as root from /root/piper_env, on this host's port
    lab.users = users.manual_setup(lab.box, "root", lab.port, host="127.0.0.1", venv=False)
    yield lab
    lab.box.destroy()


def snapshot(lab) -> dict:
    return {"tree": set(lab.sh(TREE).stdout.splitlines()), "etc": set(lab.sh(ETC).stdout.splitlines()),
            "packages": set(lab.sh(PACKAGES).stdout.splitlines())}


def diff(before: dict, after: dict) -> dict:
    return {k: {"added": sorted(after[k] - before[k])[:40], "removed": sorted(before[k] - after[k])[:40]}
            for k in before if before[k] != after[k]}


def undeploy(lab, args):
    result = provision(lab.box, lab.mirror_url, args, echo=False, deploy_file="undeploy.py")
    assert result.returncode == 0, result.output[-5000:]
    return result


def test_undeploy_everything_leaves_the_host_as_before(box):
    before = snapshot(box)
    script = box.users["script"]
    assert f"{script}" in before["tree"]
    deployed = box.deploy()
    assert f"Move the old server's script {script} to /var/lib/piper-gpu/backups/" in deployed.output
    assert box.sh(f"kill -0 {box.users['pid']}", check=False).returncode != 0  # stopped
    assert not (box.root / script.lstrip("/")).exists()
    assert diff(before, snapshot(box))  # the deploy did change the host
    removed = undeploy(box, EVERYTHING)
    assert removed.changes > 10
    record("lifecycle", undeploy_everything={"seconds": round(removed.seconds, 1), "changes": removed.changes})
    assert diff(before, snapshot(box)) == {}
    assert undeploy(box, EVERYTHING).changes == 0  # idempotent


def test_the_host_can_be_provisioned_again(box):
    assert box.deploy().changes > 20
    assert box.deploy().changes == 0


def test_default_undeploy_keeps_voices_packages_and_user(box):
    undeploy(box, [])
    assert (box.root / "home/piper/piper_models/en/en_US-joe-medium/en_US-joe-medium.onnx").exists()
    pkgs = box.sh(PACKAGES).stdout
    assert "cuda-toolkit-12-4=" in pkgs and "libcudnn9-cuda-12=" in pkgs
    assert not (box.root / "home/piper/piper_env").exists() and not (box.root / "etc/piper-gpu").exists()
    assert not (box.root / "etc/ld.so.conf.d/piper-gpu-cuda.conf").exists()
    assert "cuda-keyring" not in box.sh("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' | grep ' ii'").stdout
    assert box.sh("id -u piper").returncode == 0
