"""Create -> converge -> idempotence -> verify, on a fresh Debian 12 sandbox (issue: done-when)."""

import io
import json
import os
import platform
import re
import wave

import pytest
import requests

from conftest import record

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("default")]
TEXTS = json.loads(open("piper_gpu/texts.json").read())
VENV = "/home/piper/piper_env/.venv"


def test_converge(lab):
    first = lab.deploy()
    assert first.changes and first.changes > 20, first.output[-3000:]


def test_second_run_changes_nothing(lab):
    second = lab.deploy()
    assert second.changes == 0, re.findall(r".*\| .*Success.*", second.output)
    first = lab.runs[0]
    record("lifecycle", machine=f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}",
           converge={"seconds": round(first.seconds, 1), "changes": first.changes},
           second_run={"seconds": round(second.seconds, 1), "changes": second.changes})


def test_nvcc_is_12_4(lab):
    out = lab.sh("/usr/local/cuda-12.4/bin/nvcc --version").stdout
    assert "release 12.4, V12.4.131" in out


@pytest.mark.parametrize("lib", ["libcublasLt.so.12", "libcudnn.so.9"])
def test_linker_resolves(lab, lib):
    cache = lab.sh("ldconfig -p").stdout
    assert re.search(rf"^\s+{re.escape(lib)} \(libc6,x86-64\) => /\S+", cache, re.M), cache[-2000:]


def test_cudnn_is_9_1_1_for_cuda_12(lab):
    code = ("import ctypes; l = ctypes.CDLL('libcudnn.so.9'); l.cudnnGetVersion.restype = ctypes.c_size_t; "
            "l.cudnnGetCudartVersion.restype = ctypes.c_size_t; print(l.cudnnGetVersion(), l.cudnnGetCudartVersion())")
    assert lab.sh(f'{VENV}/bin/python -c "{code}"').stdout.split() == ["90101", "12040"]


def test_venv_has_the_gpu_onnxruntime_only(lab):
    dists = lab.sh(f"{VENV}/bin/python -m pip list --format=json").stdout
    names = {d["name"].lower(): d["version"] for d in json.loads(dists)}
    assert names.get("onnxruntime-gpu") == "1.20.2"
    assert "onnxruntime" not in names


def test_cuda_provider_library_dependencies_resolve(lab):
    out = lab.sh(f"ldd {VENV}/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so").stdout
    assert "libcublasLt.so.12 => /usr/local/cuda-12.4/targets/x86_64-linux/lib/libcublasLt.so.12" in out
    assert re.search(r"libcudnn\.so\.9 => (/usr)?/lib/x86_64-linux-gnu/libcudnn\.so\.9 ", out), out  # merged /usr
    assert "not found" not in out


def test_service_answers_tts_with_a_wav(lab):
    r = requests.post(f"http://127.0.0.1:{lab.port}/tts", json={"text": TEXTS["en_medium"], "voice": "en_US-joe-medium"},
                      timeout=120)
    assert r.status_code == 200 and r.headers["X-Provider"] == "CPUExecutionProvider"
    with wave.open(io.BytesIO(r.content)) as w:
        seconds = w.getnframes() / w.getframerate()
    assert 5.0 < seconds < 20.0


def test_server_warns_it_is_on_cpu(lab):
    log = (lab.root / "home/piper/piper_env/logs/piper-tts.log").read_text()
    assert "WARN piper_gpu_server: voice en_US-joe-medium: GPU wanted but the session runs on CPUExecutionProvider" in log


def test_verify_suite_passes_with_gpu_checks_skipped(lab, tmp_path):
    results = lab.diagnose(tmp_path)
    failed = {k: v for k, v in results.items() if v["outcome"] == "failed"}
    assert not failed, lab.last_screen
    record("lifecycle", verify={"seconds": round(lab.diagnose_seconds, 1), "checks": len(results)})
    skipped = {k: v["reason"] for k, v in results.items() if v["outcome"] == "skipped"}
    for gpu_check in ("driver_is_visible", "real_session_uses_cuda", "health_reports_cuda",
                      "server_uses_the_gpu_during_a_request", "gpu_faster_than_cpu"):
        assert "no NVIDIA GPU on this host" in skipped[gpu_check]
    for must_pass in ("toolkit_nvcc_version", "library_resolves_in_linker_cache[cublasLt]",
                      "library_resolves_in_linker_cache[cudnn]", "cudnn_version", "cudnn_built_for_this_cuda",
                      "exactly_one_onnxruntime_the_gpu_build", "cuda_provider_library_dependencies_resolve",
                      "libraries_load_in_the_service_environment", "tts_returns_a_valid_wav",
                      "startup_log_names_providers_and_gpu", "performance_script_runs_and_writes_json"):
        assert results[must_pass]["outcome"] == "passed", lab.last_screen
