"""Plan step 1: the NVIDIA driver (from Windows on WSL2) and what it supports."""

import pytest

import checks
from conftest import gpu_verdict, report


def test_driver_is_visible(driver, applied, target, service_env):
    """nvidia-smi lists a GPU and the CUDA driver initialises (cuInit(0) = 0) for the service user; skipped
    only where the settings allow no GPU, a failure (naming the driver to install) anywhere else."""
    skip, problem = gpu_verdict(driver, applied, target, service_env)
    if skip:
        pytest.skip(skip)
    report(problem)


def test_driver_supports_the_cuda_version(needs_gpu, applied, target):
    report(checks.driver_cuda_problem(needs_gpu["driver_version"], needs_gpu["cuda_version"], applied.cuda_version,
                                      target["is_wsl"]))


def test_wsl2_gpu_library_path(host, target):
    if not target["is_wsl"]:
        pytest.skip("not a WSL2 host")
    report(checks.wsl2_gpu_library_path_problem(host.file("/usr/lib/wsl/lib").is_directory,
                                                host.run("ldconfig -p").stdout))


LOADED_LIBCUDA = """
import ctypes, json, os
ctypes.CDLL("libcuda.so.1")
maps = open("/proc/self/maps").read().split()
print(json.dumps(sorted({os.path.realpath(p) for p in maps if os.path.basename(p).startswith("libcuda.so")})))
"""


def test_wsl2_libcuda_is_the_windows_drivers(host, target, service_env):
    """On WSL2 the CUDA driver is the Windows driver's /usr/lib/wsl/lib/libcuda.so.1. A Linux driver
    package's libcuda.so.1 earlier in the linker path shadows it: CUDA then fails with error 100."""
    if not target["is_wsl"]:
        pytest.skip("not a WSL2 host")
    cached = checks.parse_ldconfig(host.run("ldconfig -p").stdout).get("libcuda.so.1", [])
    rc, loaded, res = service_env.python(LOADED_LIBCUDA)
    loaded = loaded if rc == 0 and isinstance(loaded, list) else None
    owners = set()
    for path in sorted({p for p in cached + (loaded or []) if not p.startswith("/usr/lib/wsl/")}):
        out = host.run(f"dpkg -S {path} 2>/dev/null || dpkg -S $(realpath {path}) 2>/dev/null").stdout
        owners.update(line.split(":")[0].strip() for line in out.splitlines() if ":" in line)
    report(checks.wsl_libcuda_problem(cached, loaded, res.stderr.strip(), sorted(owners)))
