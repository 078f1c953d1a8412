"""Fact parsers, fed the output their commands print."""

import subprocess

from pyinfra.facts.deb import DebPackages

from piper_gpu.facts import DpkgInterrupted, NvidiaDriver, PythonVersion, WslInfo


def test_pyinfras_installed_packages_include_held_ones():
    """The deploy decides on pyinfra's own deb.DebPackages (dpkg -l): held packages (a held cuDNN, a
    held Linux driver on WSL2) must count as installed, removed ones must not."""
    out = ["ii  curl           7.88.1-10    amd64  command line tool",
           "hi  libcudnn9-cuda-12 9.1.1.17-1 amd64  cuDNN runtime libraries",
           "ii  libnvidia-compute-550:amd64 550.120-0ubuntu0.22.04.1 amd64 NVIDIA libcompute package",
           "rc  oldpkg 1.0 amd64 gone", "iU  half 2.0 amd64 unpacked"]
    assert DebPackages().process(out) == {"curl": {"7.88.1-10"}, "libcudnn9-cuda-12": {"9.1.1.17-1"},
                                          "libnvidia-compute-550": {"550.120-0ubuntu0.22.04.1"}}


def test_nvidia_smi_parsing():
    out = ["path=/usr/lib/wsl/lib/nvidia-smi", "cuda=12.6", "gpu=NVIDIA GeForce RTX 4090, 560.94"]
    assert NvidiaDriver().process(out) == {"path": "/usr/lib/wsl/lib/nvidia-smi", "driver_version": "560.94",
                                           "cuda_version": "12.6", "gpus": ["NVIDIA GeForce RTX 4090"]}
    assert NvidiaDriver().process(["none"]) is None
    failed = NvidiaDriver().process(["path=/usr/bin/nvidia-smi", "gpu=NVIDIA-SMI has failed because it couldn't communicate"])
    assert failed["gpus"] == []


def test_wsl_detection():
    assert WslInfo().process(["kernel=5.15.153.1-microsoft-standard-WSL2", "wsl_lib=yes"])["is_wsl"] is True
    assert WslInfo().process(["kernel=6.1.0-26-amd64", "wsl_lib=no"]) == {"kernel": "6.1.0-26-amd64", "wsl_lib": False,
                                                                         "is_wsl": False}


def test_interrupted_dpkg_list():
    assert DpkgInterrupted().process(["libcurand-12-4", ""]) == ["libcurand-12-4"]


def test_python_version_from_python3_or_apts_candidate():
    out = subprocess.run(["sh", "-c", PythonVersion().command()], capture_output=True, text=True).stdout.splitlines()
    assert PythonVersion().process(out) == subprocess.run(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True).stdout.strip()
    assert PythonVersion().process(["3.12"]) == "3.12"
    assert PythonVersion().process([]) is None
