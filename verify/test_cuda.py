"""Plan step 3: CUDA toolkit and runtime libraries, on PATH and in the dynamic linker."""

import re

import pytest

import checks
from conftest import expect, report
from libs import ROLES, fix_for_missing, provider_libraries, reinstall_fix


def _skip_without_nvcc(applied):
    if applied.cuda_source == "pip":
        pytest.skip("cuda_source=pip: CUDA libraries from NVIDIA's wheels, no nvcc by design")
    if applied.cuda_install == "runtime":
        pytest.skip("cuda_install=runtime: no nvcc by design")


def test_toolkit_nvcc_version(host, applied):
    _skip_without_nvcc(applied)
    out = host.run(f"{applied.cuda_home}/bin/nvcc --version")
    found = re.search(r"release (\d+\.\d+)", out.stdout)
    expect(out.rc == 0 and found and found.group(1) == applied.cuda_version,
           f"nvcc: {found.group(0) if found else (out.stderr.strip() or 'not runnable')}",
           f"release {applied.cuda_version}", f"sudo apt-get install {' '.join(applied.cuda_packages)} (or re-run the deploy)")


def test_login_shell_finds_nvcc(host, applied):
    _skip_without_nvcc(applied)
    out = host.run("bash -lc 'command -v nvcc'")
    expect(out.stdout.strip() == f"{applied.cuda_home}/bin/nvcc", f"login shell: {out.stdout.strip() or 'nvcc not on PATH'}",
           f"{applied.cuda_home}/bin/nvcc", "re-run the deploy (restores /etc/profile.d/piper-gpu-cuda.sh), then open a new shell")


def test_linker_config_lists_cuda(host, target):
    conf = host.file("/etc/ld.so.conf.d/piper-gpu-cuda.conf")
    listed = conf.content_string.split() if conf.exists else []
    missing = [d for d in target["lib_dirs"] if d not in listed]
    expect(conf.exists and not missing,
           "no /etc/ld.so.conf.d/piper-gpu-cuda.conf" if not conf.exists else f"it does not list {missing}",
           f"{target['lib_dirs']} in /etc/ld.so.conf.d/piper-gpu-cuda.conf",
           "re-run the deploy (writes the linker config and runs ldconfig)")
    gone = [d for d in target["lib_dirs"] if not host.file(d).is_directory]
    expect(not gone, f"listed library directories missing: {gone}", "each directory present",
           "re-run the deploy (installs the CUDA/cuDNN packages or wheels that own them)")


@pytest.mark.parametrize("role", ROLES)
def test_library_resolves_in_linker_cache(host, applied, target, role):
    lib, package = provider_libraries(applied)[role]
    cache = checks.parse_ldconfig(host.run("ldconfig -p").stdout)
    on_disk = ""
    if lib not in cache:
        places = " ".join(f"{d}/{lib}" for d in target["lib_dirs"])
        on_disk = host.run(f"ls {places} /usr/lib/*-linux-gnu/{lib} 2>/dev/null").stdout.strip()
    report(checks.linker_resolves_problem(lib, cache, on_disk, reinstall_fix(package)))


def test_libraries_load_in_the_service_environment(service_env, applied):
    libs = [soname for soname, _ in provider_libraries(applied).values()]
    code = ("import ctypes, json; bad = {}\n"
            f"for lib in {libs!r}:\n"
            "    try: ctypes.CDLL(lib)\n"
            "    except OSError as e: bad[lib] = str(e)\n"
            "print(json.dumps(bad))")
    rc, bad, res = service_env.python(code)
    missing = sorted({m for err in (bad or {}).values() for m in re.findall(r"(lib[\w.+-]+\.so\.\d+): cannot open", err)})
    expect(rc == 0 and bad == {}, f"as the service: {bad if bad else res.stderr.strip()}",
           "every CUDA/cuDNN library loads for the service user with the service environment",
           fix_for_missing(applied, missing) + "; the service must not rely on a shell's LD_LIBRARY_PATH")
