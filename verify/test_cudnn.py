"""Plan step 4: cuDNN, exact version, built for this CUDA major, held."""

import shlex

import pytest

import checks
from conftest import expect, report
from libs import CUDNN_PARTS, cudnn_fix

CUDNN_PROBE = """
import ctypes, json
lib = ctypes.CDLL("libcudnn.so.{major}")
lib.cudnnGetVersion.restype = ctypes.c_size_t
lib.cudnnGetCudartVersion.restype = ctypes.c_size_t
print(json.dumps({{"version": lib.cudnnGetVersion(), "cudart": lib.cudnnGetCudartVersion()}}))
"""


def _probe(service_env, applied):
    rc, data, res = service_env.python(CUDNN_PROBE.format(major=applied.cudnn_major))
    expect(rc == 0 and data is not None, f"libcudnn.so.{applied.cudnn_major} does not load: {res.stderr.strip()[-300:]}",
           f"cuDNN {applied.cudnn_version} loadable", cudnn_fix(applied))
    return data


def test_cudnn_version(service_env, applied):
    report(checks.cudnn_version_problem(_probe(service_env, applied)["version"], applied.cudnn_release,
                                        cudnn_fix(applied)))


def test_cudnn_built_for_this_cuda(service_env, applied):
    report(checks.cudnn_cudart_problem(_probe(service_env, applied)["cudart"], applied.cuda_version,
                                       applied.cudnn_major, cudnn_fix(applied)))


def cudnn_kind(applied) -> str:
    """How the deploy put cuDNN on the host: "package" (repo, local-repo, local-deb: the held apt package),
    "unpacked" (the archive, or a .deb unpacked under /opt), "wheel" (nvidia-cudnn-cuN in the venv)."""
    if applied.cudnn_source == "wheel" or applied.cuda_source == "pip":
        return "wheel"
    if applied.cudnn_source == "archive" or applied.cudnn_deb_extract:
        return "unpacked"
    return "package"


def _linker_cache(host) -> dict:
    return checks.parse_ldconfig(host.run("ldconfig -p").stdout)


def _realpaths(host, paths) -> dict:
    paths = [p for p in paths if p]
    out = host.run("realpath -e " + " ".join(shlex.quote(p) for p in paths) + " 2>/dev/null").stdout.split()
    return dict(zip(paths, out)) if len(out) == len(paths) else {}


def test_cudnn_package_pinned_and_held(host, applied):
    """repo, local-repo and local-deb (not unpacked) install the same apt package: exactly the pinned
    version, held, every library in its file list and on disk, the linker's libcudnn.so.N its own."""
    if applied.cuda_source == "pip":
        pytest.skip(f"cuda_source=pip: cuDNN is the {applied.cudnn_wheel} wheel, pinned in the venv "
                    "(cudnn_files_from_their_source checks it)")
    if cudnn_kind(applied) != "package":
        pytest.skip(f"cudnn_source={applied.cudnn_source}: no apt package, unpacked under /opt "
                    "(cudnn_files_from_their_source checks it)")
    pkg, fix = applied.cudnn_package, cudnn_fix(applied)
    query = host.run(f"dpkg-query -W -f='${{db:Status-Abbrev}}|${{Version}}\\n' {pkg}")
    report(checks.cudnn_package_problem(pkg, applied.cudnn_apt_version, query.stdout,
                                        host.run("apt-mark showhold").stdout, fix))
    listing = host.run(f"dpkg -L {pkg}").stdout
    wanted = [line.strip() for line in listing.splitlines() if "/libcudnn" in line and ".so." in line]
    missing = [p for p in wanted if not host.file(p).exists]
    cache = _linker_cache(host)
    main = f"libcudnn.so.{applied.cudnn_major}"
    listed = [p for p in wanted if p.endswith("/" + main)]
    real = _realpaths(host, [(cache.get(main) or [None])[0], *listed[:1]])
    report(checks.cudnn_package_files_problem(pkg, listing, missing, cache, applied.cudnn_major, CUDNN_PARTS, fix,
                                              real))


def _lib_dir(applied, target, leaf: str) -> str:
    """The recorded linker directory that is cuDNN's (ending in ``leaf``)."""
    dirs = [d for d in target["lib_dirs"] if "cudnn" in d and d.rstrip("/").endswith(leaf)]
    expect(bool(dirs), f"no cuDNN directory ending in {leaf} in target.json lib_dirs {target['lib_dirs']}",
           f"the directory the deploy put cuDNN ({applied.cudnn_source}) in", "re-run the deploy")
    return dirs[0].rstrip("/")


def _listing(host, directory: str) -> list[str]:
    return host.run(f"ls -1 {shlex.quote(directory)} 2>/dev/null").stdout.split()


WHEEL_VERSION = """
import importlib.metadata as m, json
try:
    print(json.dumps(m.version({wheel!r})))
except m.PackageNotFoundError:
    print(json.dumps(None))
"""


def test_cudnn_files_from_their_source(host, service_env, applied, target):
    """The archive and unpacked .deb sources: every library in the directory the deploy unpacked to, the
    release from cudnn_version.h (archive) or the file names (.deb), the linker's libcudnn.so.N from there.
    The wheel: nvidia-cudnn-cuN at its pin (wheel metadata), its libraries in nvidia/cudnn/lib, found first."""
    kind, m, fix = cudnn_kind(applied), applied.cudnn_major, cudnn_fix(applied)
    if kind == "package":
        pytest.skip(f"cudnn_source={applied.cudnn_source}: the apt package {applied.cudnn_package} "
                    "(cudnn_package_pinned_and_held checks it)")
    cache = _linker_cache(host)
    if kind == "wheel":
        lib_dir = _lib_dir(applied, target, "/nvidia/cudnn/lib")
        rc, have, res = service_env.python(WHEEL_VERSION.format(wheel=applied.cudnn_wheel))
        pinned = applied.cuda_wheel_requirements.get(applied.cudnn_wheel, applied.cudnn_version)
        report(checks.cudnn_wheel_problem(applied.cudnn_wheel, pinned, have if rc == 0 else None, lib_dir,
                                          _listing(host, lib_dir), cache, m, CUDNN_PARTS, fix))
        return
    source = "archive" if applied.cudnn_source == "archive" else f"{applied.cudnn_source} .deb unpacked"
    lib_dir = _lib_dir(applied, target, "/lib" if applied.cudnn_source == "archive" else f"/usr/lib/{_multiarch(target)}")
    header = host.file(f"{lib_dir.rsplit('/', 1)[0]}/include/cudnn_version.h")
    report(checks.cudnn_unpacked_problem(source, lib_dir, _listing(host, lib_dir),
                                         header.content_string if header.exists else None, cache,
                                         applied.cudnn_release, m, CUDNN_PARTS, fix))


def _multiarch(target) -> str:
    return "aarch64-linux-gnu" if target.get("arch") == "aarch64" else "x86_64-linux-gnu"


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
    home = host.run(f"dirname $(realpath {main})").stdout.strip() if main else None
    elsewhere = {n: p for n, p in resolved.items() if host.run(f"dirname $(realpath {p})").stdout.strip() != home}
    rc, found, res = service_env.python(SUBLIB_PROBE.format(checks=VERSION_CHECKS, major=m))
    version_checks = found if rc == 0 and isinstance(found, dict) else {"probe": res.stderr.strip()[-200:]}
    report(checks.cudnn_sublibraries_problem(home, elsewhere, version_checks, applied.cudnn_release, m,
                                             cudnn_fix(applied)))
