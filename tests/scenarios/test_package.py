"""The packaged deploy, as a pyinfra user gets it: the wheel built from pyproject.toml, installed
into a fresh venv outside the checkout, used as a library from the operator's own deploy file, with
voice pins made by its own ``pin-voices`` into the operator's group data; the host converged by the
default scenario then changes only by the operator's own step, and the wheel's verify passes."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from piper_gpu.settings import data_keys
from tests.lab.mirror import source_settings
from tests.lab.sandbox import count_changes

from conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("package")]

OPERATOR_DEPLOY = '''\
"""The operator's own deploy: one step of theirs, then Piper on the GPU from the installed package."""
from pyinfra.operations import files

from piper_gpu import deploy_piper_gpu

files.directory(name="The operator's own step: /srv/operator", path="/srv/operator")
deploy_piper_gpu()
'''


def run(cmd, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, wheel): the wheel built from the checkout, installed alone into a fresh venv."""
    dist = tmp_path_factory.mktemp("dist")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, REPO], cwd=dist)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next(dist.glob("piper_gpu_deploy-*.whl"))
    venv = tmp_path_factory.mktemp("operator-venv")
    assert run([sys.executable, "-m", "venv", venv], cwd=venv).returncode == 0
    pip = run([venv / "bin/python", "-m", "pip", "install", "--disable-pip-version-check", wheel], cwd=venv)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return venv, wheel


def test_the_wheel_holds_what_deploy_verify_and_diagnose_need_and_not_the_lab(installed):
    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    templates = {n.rsplit("/", 1)[1] for n in names if n.startswith("piper_gpu/templates/")}
    assert {"piper-tts-server.toml.j2", "piper-tts.service.j2", "piper-tts-ctl.sh.j2", "ld.so.conf.j2"} <= templates
    # the server's sources, which the deploy builds into the server's own wheel
    assert {"piper_gpu/server/pyproject.toml", "piper_gpu/server/src/piper_gpu_server/app.py",
            "piper_gpu/server/src/piper_gpu_server/serve.py"} <= set(names)
    verify = {n.rsplit("/", 1)[1] for n in names if n.startswith("piper_gpu/verify/")}
    assert {"conftest.py", "libs.py", "test_driver.py", "test_service.py", "test_performance.py"} <= verify
    assert {"piper_gpu/texts.json", "piper_gpu/locks/python3.10.txt", "piper_gpu/deploys.py"} <= set(names)
    assert not [n for n in names if n.startswith("tests/") or "/lab/" in n]


def test_the_venv_imports_the_package_from_itself(installed):
    venv, _ = installed
    where = run([venv / "bin/python", "-c", "import piper_gpu.deploys, piper_gpu.render as r; "
                 "print(piper_gpu.deploys.__file__); print(r.TEMPLATES)"], cwd=venv)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout


@pytest.fixture(scope="module")
def operator(lab, installed, tmp_path_factory):
    """The operator's project: inventory + group data + their deploy file, outside the checkout."""
    lab.converged()
    venv, _ = installed
    project = tmp_path_factory.mktemp("operator-project")
    (project / "group_data").mkdir()
    data = json.loads(lab.box.data_file.read_text())
    data.pop("voices")  # pinned by pin-voices into group data below
    host_data = data_keys({"allow_no_gpu": True, **source_settings(lab.mirror_url), **data})
    (project / "inventory.py").write_text(f"hosts = [({f'@chroot/{lab.root}'!r}, {host_data!r})]\n")
    (project / "site.py").write_text(OPERATOR_DEPLOY)
    (project / "group_data" / "all.py").write_text('"""The operator\'s group data."""\n')
    return venv, project


def test_pin_voices_writes_the_voice_digests_into_group_data(operator, lab):
    venv, project = operator
    base = source_settings(lab.mirror_url)["voices_base_url"]
    for _ in range(2):  # a re-run replaces its block
        pinned = run([venv / "bin/python", "-m", "piper_gpu", "pin-voices", "--voice", "en_US-joe-medium",
                      "--data", f"piper_gpu_voices_base_url={base}", "--write", "group_data/all.py"], cwd=project)
        assert pinned.returncode == 0, pinned.stderr
    text = (project / "group_data" / "all.py").read_text()
    scope = {}
    exec(text, scope)
    want = json.loads(lab.box.data_file.read_text())["voices"]
    assert scope["piper_gpu_voices"] == want and text.count("BEGIN piper-gpu pin-voices") == 1, text


def test_a_deploy_of_the_operators_own_calls_the_packaged_one(operator, lab):
    venv, project = operator
    result = run([venv / "bin/pyinfra", "-y", "inventory.py", "site.py"], cwd=project, timeout=1800)
    output = result.stdout + result.stderr  # pyinfra logs to stderr
    assert result.returncode == 0, output[-5000:]
    assert "Piper TTS on the GPU | Base system: packages, service user | Install base packages" in output
    assert count_changes(output) == 1, output[-5000:]  # only /srv/operator: the host was converged
    assert (lab.root / "srv/operator").is_dir()


def test_the_wheels_verify_passes_on_the_host(operator, lab):
    venv, project = operator
    out = project / "diagnose.json"
    diag = run([venv / "bin/python", "-m", "piper_gpu", "diagnose", f"--hosts={lab.root}", "--connection=chroot",
                "--json", out], cwd=project)
    assert diag.returncode == 0, diag.stdout[-5000:] + diag.stderr[-2000:]
    results = json.loads(out.read_text())
    assert sum(r["outcome"] == "passed" for r in results) > 30 and not [r for r in results if r["outcome"] == "failed"]
    lab.sh("rmdir /srv/operator")
