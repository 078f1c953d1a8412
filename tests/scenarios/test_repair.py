"""Repair, in one run, what users leave behind in a provisioned host (the shared ``lab`` host, in
profile mode): a `sudo pip install` in the service venv, pip's debris of an interrupted run, another
ONNX Runtime installed and removed again, a half-written module of the server package. Each time:
verify names the damage and the fix, the next deploy converges in one run, the run after it changes nothing, and
verify passes again."""

import re
import shutil

import pytest

from piper_gpu.server_wheel import DIST, source_version
from piper_gpu.settings import Settings
from tests.lab.mirror import fetch_fault_wheels

from conftest import record

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("repair")]

VENV = "/home/piper/piper_env/.venv"
SITE = f"{VENV}/lib/python3.11/site-packages"
SERVER_MODULE = f"{SITE}/piper_gpu_server/app.py"
ORT = Settings().venv.onnxruntime_gpu_version
#: the venv step's name (piper/steps/piper.py): what it holds, then what this run changes in it
VENV_STEP = (f"Venv holds piper-tts {Settings().venv.piper_tts_version}, only onnxruntime-gpu {ORT} and "
             f"{DIST} {source_version()}")
REPAIRS: dict[str, dict] = {}


def cpu_wheel(lab) -> str:
    wheel = fetch_fault_wheels()["onnxruntime"]
    shutil.copy(wheel, lab.root / "tmp" / wheel.name)
    return f"/tmp/{wheel.name}"


def sudo_pip_install(lab):
    """What a user types to "fix" a missing module: root's pip, into the service's venv."""
    lab.sh(f"{VENV}/bin/pip install -q --no-deps --no-index {cpu_wheel(lab)}")


def interrupted_pip(lab):
    """pip stashes a distribution it removes under a ``~``-prefixed name beside it (pip's
    AdjacentTempDirectory) and renames it back or deletes it at the end; a run killed or failed in
    between leaves the stash: pip then warns "Ignoring invalid distribution ~nnxruntime-gpu" and
    lists no onnxruntime-gpu, while importlib.metadata still does."""
    lab.sh(f"cd {SITE} && mv onnxruntime ~nnxruntime && mv onnxruntime_gpu-*.dist-info "
           "\"$(ls -d onnxruntime_gpu-*.dist-info | sed 's/^o/~/')\"")


def other_ort_installed_and_removed(lab):
    """The CPU build installed over the GPU build and uninstalled again: pip deletes the files they
    share, and onnxruntime-gpu is still listed at its pinned version."""
    wheel = cpu_wheel(lab)
    lab.sh(f"runuser -u piper -- {VENV}/bin/pip install -q --no-deps --no-index {wheel} && "
           f"runuser -u piper -- {VENV}/bin/pip uninstall -q -y onnxruntime")


def half_written_server(lab):
    """A file of the server package cut short (a full disk, an editor's crash)."""
    lab.sh(f"truncate -s 2000 {SERVER_MODULE}")


DAMAGE = {
    "sudo pip install (root's files, a CPU onnxruntime)": dict(
        apply=sudo_pip_install, checks=["venv_files_owned_by_the_service_user", "exactly_one_onnxruntime_the_gpu_build"],
        fix="not with `sudo pip`",
        operation=r"Venv files owned by piper \(\d+ were not, e\.g\. /home/piper/piper_env/\.venv/\S+ \(uid 0\): "
                  r"a `sudo pip install`\?\)"),
    "pip interrupted (~-prefixed debris)": dict(
        apply=interrupted_pip, checks=["pip_sees_no_invalid_distribution"], fix="removes the ~-prefixed debris",
        operation=re.escape(f"No debris of an interrupted pip run in site-packages (removing ~nnxruntime, "
                            f"~nnxruntime_gpu-{ORT}.dist-info)")),
    "another ONNX Runtime installed and removed": dict(
        apply=other_ort_installed_and_removed, checks=["pinned_distributions_match_their_record"],
        fix="--force-reinstall --no-deps onnxruntime-gpu==",
        operation=re.escape(f"{VENV_STEP}: install onnxruntime-gpu=={ORT} (files missing or changed)")),
    "half-written server module": dict(
        apply=half_written_server, checks=["pinned_distributions_match_their_record"],
        fix="--force-reinstall --no-deps",
        operation=re.escape(f"{VENV_STEP}: install {DIST}=={source_version()} (files missing or changed)")),
}
STARTED = re.compile(r"^--> Starting operation: (.+?)\s*$", re.M)


def operations_run(output: str) -> list[str]:
    """The names of the operations a pyinfra run started (each one's own name, the last part)."""
    return [m.group(1).rsplit(" | ", 1)[-1] for m in STARTED.finditer(output)]


def ran(operation: str, output: str) -> bool:
    """An operation whose whole name matches the pattern ``operation`` ran."""
    return any(re.fullmatch(operation, name) for name in operations_run(output))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_the_next_run_repairs_it_and_the_one_after_changes_nothing(lab, tmp_path, damage):
    spec = DAMAGE[damage]
    lab.converged()
    spec["apply"](lab)
    before = lab.diagnose(tmp_path, only=spec["checks"])
    for check in spec["checks"]:
        assert before[check]["outcome"] == "failed", f"{damage}: {check} passed\n{lab.last_screen}"
    assert spec["fix"] in before[spec["checks"][0]]["fix"], before[spec["checks"][0]]

    repair = lab.deploy()
    assert ran(spec["operation"], repair.output), (spec["operation"], operations_run(repair.output))
    again = lab.deploy()
    assert again.changes == 0, again.output[-4000:]
    # the checks that named the damage; the whole suite once after the last repair (test_record_repairs): a
    # deploy that left something else wrong leaves it wrong on every later run
    after = lab.diagnose(tmp_path, only=spec["checks"])
    still = {k: v for k, v in after.items() if v["outcome"] == "failed"}
    assert not still, f"after repairing '{damage}':\n{lab.last_screen}"
    assert all(after[check]["outcome"] == "passed" for check in spec["checks"]), after
    REPAIRS[damage] = {"checks_failed": spec["checks"], "repair_changes": repair.changes,
                       "repair_seconds": round(repair.seconds, 1), "next_run_changes": again.changes}


def test_record_repairs(lab, tmp_path):
    record("repair", repairs=REPAIRS)
    assert len(REPAIRS) == len(DAMAGE), REPAIRS
    failed = {k: v for k, v in lab.diagnose(tmp_path).items() if v["outcome"] == "failed"}
    assert not failed, f"after the repairs:\n{lab.last_screen}"
