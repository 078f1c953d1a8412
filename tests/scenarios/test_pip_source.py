"""cuda_source="pip": no NVIDIA apt repository; the pinned nvidia-*-cu12 CUDA 12.4 and cuDNN
9.1.1 wheels go into the Piper venv and the dynamic linker is pointed at them, so the service
(and ONNX Runtime's CUDA provider) resolve libcublasLt.so.12 and libcudnn.so.9 from there.
Then the same host moves to cuda_source="apt" and the wheels leave the venv."""

import json
import re

import pytest

from conftest import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("pip-source")]
SITE = "/home/piper/piper_env/.venv/lib/python3.11/site-packages/nvidia"


@pytest.fixture(scope="module")
def pip_host():
    lab = Lab("e2e-pip", 15011, extra={"cuda_source": "pip", "cuda_install": "runtime"})
    yield lab
    lab.box.destroy()


def test_converges_and_is_idempotent(pip_host):
    assert pip_host.deploy().changes > 20
    assert pip_host.deploy().changes == 0


def test_no_apt_repository_and_no_cuda_packages(pip_host):
    pkgs = pip_host.sh("dpkg-query -W -f='${Package}\\n'").stdout.split()
    assert not [p for p in pkgs if p.startswith(("cuda-", "libcudnn", "libcublas"))], pkgs
    assert not list((pip_host.root / "etc/apt/sources.list.d").glob("cuda-*"))


def test_libraries_resolve_from_the_venv_wheels(pip_host):
    cache = pip_host.sh("ldconfig -p").stdout
    assert f"libcublasLt.so.12 (libc6,x86-64) => {SITE}/cublas/lib/libcublasLt.so.12" in cache
    assert f"libcudnn.so.9 (libc6,x86-64) => {SITE}/cudnn/lib/libcudnn.so.9" in cache
    provider = pip_host.sh(f"ls {SITE}/../onnxruntime/capi/libonnxruntime_providers_cuda.so").stdout.strip()
    ldd = pip_host.sh(f"ldd {provider}").stdout
    assert "not found" not in ldd, ldd
    assert re.search(rf"libcudnn\.so\.9 => {SITE}/cudnn/lib/libcudnn\.so\.9", ldd), ldd
    conf = (pip_host.root / "etc/ld.so.conf.d/piper-gpu-cuda.conf").read_text()
    assert f"{SITE}/cuda_runtime/lib" in conf and "/usr/local/cuda" not in conf


def test_verify_covers_the_pip_source(pip_host, tmp_path):
    results = pip_host.diagnose(tmp_path)
    assert not [k for k, v in results.items() if v["outcome"] == "failed"], pip_host.last_screen
    assert results["toolkit_nvcc_version"]["reason"].startswith("cuda_source=pip")
    assert results["cudnn_package_pinned_and_held"]["reason"].startswith("cuda_source=pip")
    for check in ("venv_holds_every_pinned_distribution", "cudnn_version", "cudnn_built_for_this_cuda",
                  "cudnn_files_from_their_source",  # the nvidia-cudnn-cu12 wheel
                  "libraries_load_in_the_service_environment", "cuda_provider_library_dependencies_resolve",
                  "linker_config_lists_cuda", "library_resolves_in_linker_cache[cublasLt]",
                  "library_resolves_in_linker_cache[cudnn]", "tts_returns_a_valid_wav"):
        assert results[check]["outcome"] == "passed", (check, pip_host.last_screen)


def test_a_missing_wheel_library_names_the_wheel_to_reinstall(pip_host, tmp_path):
    lib = f"{SITE}/cublas/lib/libcublasLt.so.12"
    pip_host.sh(f"mv {lib} /root/ && ldconfig")  # out of the directory: ldconfig links any file by its soname
    try:
        result = pip_host.diagnose(tmp_path)["library_resolves_in_linker_cache[cublasLt]"]
        assert result["outcome"] == "failed"
        assert "libcublasLt.so.12: cannot open shared object file" in result["found"]
        assert "pip install --no-deps --force-reinstall nvidia-cublas-cu12==12.4.5.8" in result["fix"]
    finally:
        pip_host.sh(f"mv /root/libcublasLt.so.12 {lib} && ldconfig")


def test_switching_to_apt_moves_the_libraries_and_empties_the_venv_of_wheels(pip_host, tmp_path):
    data = json.loads(pip_host.box.data_file.read_text())
    data.pop("cuda_source")
    pip_host.box.data_file.write_text(json.dumps(data, indent=2))
    assert pip_host.deploy().changes > 0
    venv = pip_host.sh("/home/piper/piper_env/.venv/bin/python -m pip list --format json").stdout
    # NVIDIA's CUDA wheels (nvidia-*-cu12) gone; nvidia-ml-py is the server's NVML binding, not a CUDA wheel
    assert not [d["name"] for d in json.loads(venv) if d["name"].startswith("nvidia-") and d["name"].endswith("-cu12")]
    assert "nvidia-ml-py" in [d["name"] for d in json.loads(venv)]
    cache = pip_host.sh("ldconfig -p").stdout
    assert "libcublasLt.so.12 (libc6,x86-64) => /usr/local/cuda-12.4/targets/x86_64-linux/lib/libcublasLt.so.12" in cache
    results = pip_host.diagnose(tmp_path)
    assert not [k for k, v in results.items() if v["outcome"] == "failed"], pip_host.last_screen
    assert pip_host.deploy().changes == 0
