"""Plan step 1: the NVIDIA driver (from Windows on WSL2) and what it supports."""

import pytest

from conftest import expect
from piper_gpu.settings import _major_minor


def test_driver_is_visible(needs_gpu):
    expect(bool(needs_gpu["gpus"]), "nvidia-smi lists no GPU", "at least one GPU",
           "install/update the NVIDIA driver (on WSL2: the Windows driver; never a Linux driver inside WSL2)")


def test_driver_supports_the_cuda_version(needs_gpu, applied):
    have = needs_gpu["cuda_version"] or "0.0"
    expect(_major_minor(have, "driver") >= _major_minor(applied.cuda_version, "cuda"),
           f"driver {needs_gpu['driver_version']} supports CUDA {have}",
           f"a driver supporting CUDA >= {applied.cuda_version}",
           "update the NVIDIA driver (on WSL2: the Windows driver)")


def test_wsl2_gpu_library_path(host, target):
    if not target["is_wsl"]:
        pytest.skip("not a WSL2 host")
    expect(host.file("/usr/lib/wsl/lib").is_directory, "no /usr/lib/wsl/lib", "/usr/lib/wsl/lib (WSL2 GPU support)",
           "run `wsl --update` on Windows and use a WSL2 distro")
    cache = host.run("ldconfig -p").stdout
    expect("libcuda.so.1" in cache, "libcuda.so.1 not in the linker cache", "libcuda.so.1 from /usr/lib/wsl/lib",
           "check /etc/ld.so.conf.d/ld.wsl.conf lists /usr/lib/wsl/lib, then sudo ldconfig")
