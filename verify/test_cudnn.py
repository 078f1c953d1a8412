"""Plan step 4: cuDNN, exact version, built for this CUDA major, held."""

import pytest

from conftest import expect
from libs import cudnn_fix

CUDNN_PROBE = """
import ctypes, json
lib = ctypes.CDLL("libcudnn.so.{major}")
lib.cudnnGetVersion.restype = ctypes.c_size_t
lib.cudnnGetCudartVersion.restype = ctypes.c_size_t
print(json.dumps({{"version": lib.cudnnGetVersion(), "cudart": lib.cudnnGetCudartVersion()}}))
"""


def _expected(version: str) -> int:
    major, minor, patch = (int(x) for x in version.split(".")[:3])
    return major * 10000 + minor * 100 + patch


def _probe(service_env, applied):
    rc, data, res = service_env.python(CUDNN_PROBE.format(major=applied.cudnn_major))
    expect(rc == 0 and data is not None, f"libcudnn.so.{applied.cudnn_major} does not load: {res.stderr.strip()[-300:]}",
           f"cuDNN {applied.cudnn_version} loadable", cudnn_fix(applied))
    return data


def test_cudnn_version(service_env, applied):
    data = _probe(service_env, applied)
    v = data["version"]
    found = f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    expect(v == _expected(applied.cudnn_version), f"cudnnGetVersion() = {v} (cuDNN {found})",
           f"cuDNN {applied.cudnn_release} ({_expected(applied.cudnn_version)})",
           "remove other cuDNN copies earlier in the linker path, then " + cudnn_fix(applied))


def test_cudnn_built_for_this_cuda(service_env, applied):
    data = _probe(service_env, applied)
    cudart = data["cudart"]
    built = f"{cudart // 1000}.{cudart % 1000 // 10}"
    major, minor = (int(x) for x in applied.cudnn_built_for.split(".")[:2])
    cuda_major, cuda_minor = (int(x) for x in applied.cuda_version.split(".")[:2])
    expect(cudart // 1000 == cuda_major and cudart % 1000 // 10 <= cuda_minor,
           f"the loaded libcudnn.so.{applied.cudnn_major} is built for CUDA {built} (cudnnGetCudartVersion() = {cudart})",
           f"cuDNN built for CUDA {major}.{minor} (CUDA {cuda_major}.x, no newer than the {applied.cuda_version} toolkit)",
           "a cuDNN for another CUDA (e.g. 9.12 for 12.9) is in the linker path or over the pinned files: "
           "remove it, then " + cudnn_fix(applied))


def test_cudnn_package_pinned_and_held(host, applied):
    if applied.cuda_source == "pip":
        pytest.skip(f"cuda_source=pip: cuDNN is the {applied.cudnn_wheel} wheel, pinned in the venv")
    if applied.cudnn_source != "repo" and not (applied.cudnn_source == "local-deb" and not applied.cudnn_deb_extract):
        return
    pkg = host.package(applied.cudnn_package)
    expect(pkg.is_installed and pkg.version == applied.cudnn_apt_version,
           f"{applied.cudnn_package} {pkg.version if pkg.is_installed else 'not installed'}",
           f"{applied.cudnn_package} {applied.cudnn_apt_version}", "re-run the deploy")
    held = host.run("apt-mark showhold").stdout.split()
    expect(applied.cudnn_package in held, f"{applied.cudnn_package} not held", "held (apt-mark hold)",
           f"sudo apt-mark hold {applied.cudnn_package} (or re-run the deploy)")


#: cuDNN 9's sub-libraries with a version check in its API (cudnn<Sub>VersionCheck(): 0 when the
#: sub-library is of the same release as the others, CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH if not).
VERSION_CHECKS = {"libcudnn_graph": "cudnnGraphVersionCheck", "libcudnn_ops": "cudnnOpsVersionCheck",
                  "libcudnn_cnn": "cudnnCnnVersionCheck", "libcudnn_adv": "cudnnAdvVersionCheck"}
SUBLIB_PROBE = """
import ctypes, json
out = {{}}
for lib, fn in {checks!r}.items():
    try:
        out[lib] = getattr(ctypes.CDLL(lib + ".so.{major}"), fn)()
    except (OSError, AttributeError) as exc:
        out[lib] = str(exc)
print(json.dumps(out))
"""


def test_cudnn_sublibraries_from_one_release(host, service_env, applied):
    """Every libcudnn_*.so.N the linker resolves lies beside libcudnn.so.N, and cuDNN's own version
    checks agree: mixed sub-libraries fail at run time with "undefined symbol"."""
    m = applied.cudnn_major
    resolved = {}
    for line in host.run("ldconfig -p").stdout.splitlines():
        name = line.strip().split(" ", 1)[0]
        if name.startswith("libcudnn") and name.endswith(f".so.{m}") and "=>" in line and name not in resolved:
            resolved[name] = line.split("=>")[-1].strip()
    main = resolved.get(f"libcudnn.so.{m}")
    expect(main is not None, f"libcudnn.so.{m} not in the linker cache", f"cuDNN {applied.cudnn_version}", cudnn_fix(applied))
    home = host.run(f"dirname $(realpath {main})").stdout.strip()
    elsewhere = {n: p for n, p in resolved.items() if host.run(f"dirname $(realpath {p})").stdout.strip() != home}
    rc, checks, res = service_env.python(SUBLIB_PROBE.format(checks=VERSION_CHECKS, major=m))
    mismatched = {lib: r for lib, r in (checks or {}).items() if r != 0}
    expect(rc == 0 and not elsewhere and not mismatched,
           (f"sub-libraries outside {home}: {elsewhere}; " if elsewhere else "")
           + (f"version checks: {mismatched}" if mismatched else "") + (res.stderr.strip()[-200:] if rc else ""),
           f"every libcudnn*.so.{m} from one cuDNN {applied.cudnn_release} in {home}, its version checks 0",
           "another cuDNN's sub-libraries are mixed in: remove them, then " + cudnn_fix(applied))
