"""Plan step 3: CUDA toolkit and runtime libraries, on PATH and in the dynamic linker."""

import pytest

import checks
from conftest import report
from libs import ROLES, fix_for_missing, provider_libraries, reinstall_fix


def _skip_without_nvcc(applied):
    if applied.cuda_source == "pip":
        pytest.skip("cuda_source=pip: CUDA libraries from NVIDIA's wheels, no nvcc by design")
    if applied.cuda_install == "runtime":
        pytest.skip("cuda_install=runtime: no nvcc by design")


def test_toolkit_nvcc_version(host, applied):
    _skip_without_nvcc(applied)
    out = host.run(f"{applied.cuda_home}/bin/nvcc --version")
    report(checks.toolkit_nvcc_version_problem(out.rc, out.stdout, out.stderr, applied.cuda_version,
                                               applied.cuda_packages))


def test_login_shell_finds_nvcc(host, applied):
    _skip_without_nvcc(applied)
    out = host.run("bash -lc 'command -v nvcc'")
    report(checks.login_shell_finds_nvcc_problem(out.stdout, applied.cuda_home))


def test_linker_config_lists_cuda(host, target):
    conf = host.file(checks.LINKER_CONFIG)
    gone = [d for d in target["lib_dirs"] if not host.file(d).is_directory]
    report(checks.linker_config_problem(conf.content_string if conf.exists else None, target["lib_dirs"], gone))


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
    rc, failed, res = service_env.python(code)
    report(checks.libraries_load_problem(rc, failed, res.stderr, lambda missing: fix_for_missing(applied, missing)))
