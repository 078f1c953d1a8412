"""The platform table and the version matrix: every listed platform, with the defaults, ends with
exactly the pinned toolkit and cuDNN 9.1.1 for CUDA 12, from a source the table says is there."""

import pytest

from piper_gpu import locks, platforms
from piper_gpu.matrix import DEFAULT_ORT_GPU, ORT_GPU_BUILDS
from piper_gpu.settings import SettingsError, from_fields

VOICES = [{"name": "zh_CN-huayan-medium", "onnx_sha256": "a" * 64, "json_sha256": "a" * 64}]


@pytest.mark.parametrize("platform", platforms.PLATFORMS, ids=lambda p: p.key)
def test_defaults_on_each_platform_give_the_pinned_cuda_and_cudnn(platform):
    s = from_fields({"voices": VOICES}).for_host(platform, platform.python).validate()
    assert (s.cuda.cuda_version, s.cuda.cudnn_version, s.cudnn_built_for) == ("12.4", "9.1.1.17", "12.4")
    assert s.venv.python_version == platform.python and s.venv.python_lock == locks.load(platform.python)
    if s.cuda.cuda_source == "apt":  # the toolkit from a repository not known to lack it
        assert platform.repo_path and platform.repo_has_cuda_12_4 is not False
    else:
        assert s.python_requirements()["nvidia-cuda-runtime-cu12"].startswith("12.4.")
    if s.cuda.cudnn_source == "repo":  # cuDNN from the repository only where it is not known to be missing
        assert platform.repo_has_cudnn_9_1 is not False
    elif s.cuda.cudnn_source == "wheel":
        assert s.python_requirements()["nvidia-cudnn-cu12"] == "9.1.1.17"
    else:
        assert s.cuda.cudnn_source == "archive" and s.cudnn_archive[1]  # NVIDIA's manifest digest


def test_the_users_host_takes_cudnn_from_outside_the_wsl_repository():
    wsl = platforms.find("ubuntu", "22.04", wsl=True)
    assert (wsl.repo_path, wsl.python, wsl.repo_has_cudnn_9_1) == ("wsl-ubuntu", "3.10", False)
    assert wsl.cudnn_source != "repo"
    assert platforms.find("ubuntu", "22.04", wsl=False).repo_path == "ubuntu2204"


def test_ubuntu_2404_without_wsl_uses_wheels_not_a_repository_without_12_4():
    p = platforms.find("ubuntu", "24.04", wsl=False)
    s = from_fields({"voices": VOICES}).for_host(p, "3.12")
    assert (s.cuda.cuda_source, s.cuda.cudnn_source) == ("pip", "wheel")


def test_the_install_level_follows_the_platform_unless_set():
    """WSL2 Ubuntu 24.04 installs nvcc and the libraries without the profilers (their libtinfo5 is gone
    from 24.04); the other apt platforms the whole toolkit; an operator's own level always wins."""
    new_wsl = platforms.find("ubuntu", "24.04", wsl=True)
    s = from_fields({"voices": VOICES}).for_host(new_wsl, "3.12")
    assert s.cuda.cuda_install == "compiler"
    assert s.cuda_packages == ["cuda-compiler-12-4", "cuda-libraries-12-4"]
    users = from_fields({"voices": VOICES}).for_host(platforms.find("ubuntu", "22.04", wsl=True), "3.10")
    assert (users.cuda.cuda_install, users.cuda_packages) == ("toolkit", ["cuda-toolkit-12-4"])
    chosen = from_fields({"voices": VOICES, "cuda_install": "toolkit"}).for_host(new_wsl, "3.12")
    assert chosen.cuda_packages == ["cuda-toolkit-12-4"]
    runtime = from_fields({"voices": VOICES, "cuda_install": "runtime"}).for_host(new_wsl, "3.12")
    assert runtime.cuda_packages == ["cuda-libraries-12-4"]


def test_unknown_distro_names_the_table():
    with pytest.raises(platforms.UnsupportedPlatform, match="not in the platform table .*WSL2, Ubuntu 22.04"):
        platforms.find("fedora", "40", wsl=False)


def test_every_platform_python_has_a_lock_and_the_default_ort_has_its_wheel():
    for p in platforms.PLATFORMS:
        assert p.python in locks.available()
        assert p.python in ORT_GPU_BUILDS[DEFAULT_ORT_GPU].pythons


def test_an_ort_release_without_a_wheel_for_the_host_python_is_refused_naming_the_fitting_ones():
    wsl = platforms.find("ubuntu", "22.04", wsl=True)
    with pytest.raises(SettingsError) as err:
        from_fields({"voices": VOICES, "onnxruntime_gpu_version": "1.25.1"}).for_host(wsl, "3.10").validate()
    assert "onnxruntime-gpu 1.25.1 has no wheel for this host's Python 3.10" in str(err.value)
    assert "1.20.2" in str(err.value) and "1.23.2" in str(err.value)


def test_lock_for_3_10_keeps_numpy_below_2_3():
    # numpy 2.3+ requires Python >= 3.11; the resolver picked the last release with cp310 wheels
    major, minor = (int(x) for x in locks.load("3.10")["numpy"].split(".")[:2])
    assert (major, minor) < (2, 3)
