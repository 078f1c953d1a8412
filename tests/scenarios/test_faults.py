"""Break a provisioned host one way at a time (what hurt the users), and prove the verify suite
fails on the right check with the right fix; then repair it and prove the host passes again."""

import re
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.lab.mirror import fetch_fault_wheels

from conftest import record

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("faults")]

VENV = "/home/piper/piper_env/.venv"
LIB = "/usr/local/cuda-12.4/targets/x86_64-linux/lib"
MULTIARCH = "/usr/lib/x86_64-linux-gnu"
CTL = "/usr/local/bin/piper-tts-ctl"
SERVER_CONFIG = "/etc/piper-gpu/server.toml"
VOICE = "/home/piper/piper_models/en/en_US-joe-medium/en_US-joe-medium.onnx"

def put_cudnn_for_cuda11(lab):
    """Overwrite the pinned cuDNN files with NVIDIA's cuDNN 9.1.1 built for CUDA 11.8: the whole set,
    since libcudnn.so.9 itself is the same in both builds and its sub-libraries carry the CUDA target."""
    wheel = fetch_fault_wheels()["nvidia-cudnn-cu11"]
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith("nvidia/cudnn/lib/libcudnn") and name.endswith(".so.9"):
                target = lab.root / MULTIARCH.lstrip("/") / (Path(name).name + ".1.1")
                assert target.exists(), target
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def install_cpu_onnxruntime(lab):
    wheel = fetch_fault_wheels()["onnxruntime"]
    shutil.copy(wheel, lab.root / "tmp" / wheel.name)
    lab.sh(f"runuser -u piper -- {VENV}/bin/pip install --no-deps --no-index -q /tmp/{wheel.name}")


def switch_server_to_cpu_by_hand(lab):
    """What a user tries when the GPU misbehaves: the server's config edited to the CPU, restarted."""
    lab.sh(f"sed -i 's/^use_gpu = true$/use_gpu = false/' {SERVER_CONFIG} && grep -q '^use_gpu = false$' {SERVER_CONFIG}"
           f" && {CTL} restart")


def corrupt_voice(lab):
    with open(lab.root / VOICE.lstrip("/"), "ab") as fh:
        fh.write(b"\0garbage")


FAULTS = {
    "libcublasLt.so.12 removed": dict(
        apply=f"rm -f {LIB}/libcublasLt.so.12* && ldconfig",
        check="library_resolves_in_linker_cache[cublasLt]", fix="apt-get install --reinstall libcublas-12-4",
        repair="printed fix"),
    "libcudnn.so.9 removed": dict(
        apply=f"rm -f {MULTIARCH}/libcudnn.so.9* && ldconfig",
        check="library_resolves_in_linker_cache[cudnn]", fix="libcudnn9-cuda-12=9.1.1.17-1 && sudo apt-mark hold",
        repair="printed fix"),
    "cuDNN built for another CUDA major": dict(
        apply=put_cudnn_for_cuda11,
        check="cudnn_built_for_this_cuda", fix="libcudnn9-cuda-12=9.1.1.17-1", found="built for CUDA 11.8",
        repair="printed fix"),
    "CPU onnxruntime beside the GPU one": dict(
        apply=install_cpu_onnxruntime,
        check="exactly_one_onnxruntime_the_gpu_build", fix="uninstall -y onnxruntime", repair="deploy"),
    "linker config removed": dict(
        apply="rm /etc/ld.so.conf.d/piper-gpu-cuda.conf && ldconfig",
        check="linker_config_lists_cuda", fix="re-run the deploy", repair="deploy"),
    "service stopped": dict(
        apply=f"{CTL} stop",
        check="service_running", fix=f"{CTL} start", repair="deploy"),
    "server switched to the CPU by hand (use_gpu = false in server.toml)": dict(
        apply=switch_server_to_cpu_by_hand,
        check="server_runs_with_the_deployed_config", fix="re-run the deploy", found="use_gpu=False", repair="deploy"),
    "voice file corrupted": dict(
        apply=corrupt_voice,
        check="voice_files_match_checksums", fix="re-run the deploy", found="sha256", repair="deploy"),
}
DETECTED: dict[str, dict] = {}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_detected_named_and_fixed(lab, tmp_path, fault):
    spec = FAULTS[fault]
    apply = spec["apply"]
    apply(lab) if callable(apply) else lab.sh(apply)

    results = lab.diagnose(tmp_path, only=[spec["check"]])
    hit = results.get(spec["check"], {})
    DETECTED[fault] = {"check": spec["check"], "detected": hit.get("outcome") == "failed",
                       "found": hit.get("found"), "fix": hit.get("fix")}
    assert hit.get("outcome") == "failed", f"{fault}: {spec['check']} did not fail\n{lab.last_screen}"
    assert spec["fix"] in hit.get("fix", ""), hit
    if "found" in spec:  # the cause the failure must name, where the fault has one to check
        assert spec["found"] in (hit.get("found") or ""), hit
    check = re.escape(spec["check"])
    assert re.search(rf"^  x \S+ / {check}$", lab.last_screen, re.M), lab.last_screen  # in "What is wrong"
    assert re.search(rf"^  \S+\s+{check}\s+FAIL$", lab.last_screen, re.M), lab.last_screen
    assert lab.last_returncode == 1

    if spec["repair"] == "deploy":
        assert lab.deploy().changes > 0
        # The deploy converges the whole host, and what it leaves wrong it leaves wrong on every run: the full
        # verify after the last fault (test_every_fault_detected_and_host_converged) sees it. Here: the check.
        after = lab.diagnose(tmp_path, only=[spec["check"]])
    else:  # run exactly the fix the suite printed (as root, non-interactive): the whole suite must pass after it
        command = hit["fix"].split(" (or re-run the deploy)")[0].split("then ")[-1]
        lab.sh(command.replace("sudo ", "").replace("apt-get install", "apt-get install -y"))
        after = lab.diagnose(tmp_path)
    still = {k: v for k, v in after.items() if v["outcome"] == "failed"}
    assert not still, f"after repairing '{fault}':\n{lab.last_screen}"
    assert after[spec["check"]]["outcome"] == "passed", after[spec["check"]]


def test_every_fault_detected_and_host_converged(lab, tmp_path):
    detected = sum(d["detected"] for d in DETECTED.values())
    print(f"\nfault matrix: {detected}/{len(FAULTS)} faults detected by the named check with the named fix")
    record("fault-matrix", detected=detected, faults=len(FAULTS), results=DETECTED)
    assert detected == len(FAULTS), DETECTED
    assert lab.deploy().changes == 0
    failed = {k: v for k, v in lab.diagnose(tmp_path).items() if v["outcome"] == "failed"}
    assert not failed, f"after the fault matrix:\n{lab.last_screen}"
