"""Plan step 1: the NVIDIA driver (from Windows on WSL2) and what it supports."""

import pytest

from conftest import expect, version_tuple


def test_driver_is_visible(needs_gpu):
    expect(bool(needs_gpu["gpus"]), "nvidia-smi lists no GPU", "at least one GPU",
           "install/update the NVIDIA driver (on WSL2: the Windows driver; never a Linux driver inside WSL2)")


def test_driver_supports_the_cuda_version(needs_gpu, applied):
    have = needs_gpu["cuda_version"] or "0.0"
    expect(version_tuple(have) >= version_tuple(applied.cuda_version),
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
    cached = [line.split("=>")[-1].strip() for line in host.run("ldconfig -p").stdout.splitlines()
              if line.strip().startswith("libcuda.so.1 ")]
    first = cached[0] if cached else None
    rc, loaded, res = service_env.python(LOADED_LIBCUDA)
    # any Linux libcuda.so.1 the linker knows shadows WSL's for some process (cache order, LD_LIBRARY_PATH)
    wrong = sorted({p for p in cached + (loaded or []) if not p.startswith("/usr/lib/wsl/")})
    owners = set()
    for path in wrong:
        out = host.run(f"dpkg -S {path} 2>/dev/null || dpkg -S $(realpath {path}) 2>/dev/null").stdout
        owners.update(line.split(":")[0].strip() for line in out.splitlines() if ":" in line)
    expect(rc == 0 and first and not wrong,
           f"libcuda.so.1 in the linker cache: {cached}; the service loads {loaded or res.stderr.strip()[-200:]}"
           + (f" (from the package {', '.join(sorted(owners))})" if owners else ""),
           "libcuda.so.1 from /usr/lib/wsl/lib (the Windows driver's)",
           (f"sudo apt-get purge {' '.join(sorted(owners))} && sudo ldconfig: a Linux NVIDIA driver package must not be "
            "installed inside WSL2" if owners else
            f"remove {', '.join(wrong) or 'the other libcuda.so.1'} and run sudo ldconfig; "
            "/etc/ld.so.conf.d/ld.wsl.conf must list /usr/lib/wsl/lib"))
