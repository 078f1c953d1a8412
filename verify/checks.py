"""The decisions of every verify check, as pure functions: each takes what the host answered (nvidia-smi
text, cuInit's answer, `ldconfig -p`, `ldd`, `nvcc --version`, `dpkg-query`/`apt-mark`/`dpkg -L` output,
`pip list` JSON, `ss`, `systemctl show`, `systemd-analyze security`, /health JSON, /metrics text, the server's log,
a response's headers) and returns the problem (found, expected, fix: one line each, the cause and the fix named)
or None. The testinfra checks gather the host's real output and call them; tests/unit/test_verify_checks.py
proves each both ways on canned outputs. Nothing here imports verify's conftest or touches a host."""

from __future__ import annotations

import json
import re
from typing import NamedTuple

CUDA = "CUDAExecutionProvider"


class Problem(NamedTuple):
    found: str
    expected: str
    fix: str


# --- the driver (plan step 1) ----------------------------------------------------------------------

def driver_fix(is_wsl: bool) -> str:
    if is_wsl:
        return ("install or update the NVIDIA driver on Windows (it provides /usr/lib/wsl/lib/nvidia-smi and "
                "libcuda.so.1 inside WSL2), then run `wsl --shutdown`; never install a Linux NVIDIA driver inside WSL2")
    return ("install the NVIDIA driver for this GPU (e.g. sudo apt-get install nvidia-driver on Debian, "
            "sudo ubuntu-drivers install on Ubuntu) and reboot")


def parse_gpu_query(text: str) -> list[tuple[str, str]]:
    """`nvidia-smi --query-gpu=name,driver_version --format=csv,noheader` -> [(name, driver version)]."""
    rows = []
    for line in text.strip().splitlines():
        name, sep, version = line.rpartition(",")
        if sep and name.strip() and re.fullmatch(r"\d+(\.\d+)+", version.strip()):
            rows.append((name.strip(), version.strip()))
    return rows


def parse_cuda_version(table: str) -> str | None:
    """The "CUDA Version: 12.6" of nvidia-smi's table header (the newest CUDA the driver supports)."""
    m = re.search(r"CUDA Version:\s*(\d+\.\d+)", table)
    return m.group(1) if m else None


def cuinit_fix(cuinit, is_wsl: bool) -> str:
    """What cuInit(0)'s answer means: 100 no device, 999/804/803 a driver mismatch, a string: libcuda.so.1 does
    not load."""
    if isinstance(cuinit, str):
        return f"libcuda.so.1 does not load ({cuinit}): " + driver_fix(is_wsl)
    if cuinit == 100:
        return "CUDA_ERROR_NO_DEVICE: the driver sees no GPU (passed through? visible?): " + driver_fix(is_wsl)
    if cuinit in (803, 804):
        return ("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH / COMPAT_NOT_SUPPORTED: libcuda.so.1 and the kernel driver are of "
                "different releases: " + driver_fix(is_wsl))
    return f"CUDA error {cuinit}: " + driver_fix(is_wsl)


def gpu_gate(gpus: list, smi_error: str, cuinit, *, use_gpu: bool, allow_no_gpu: bool,
             is_wsl: bool) -> tuple[str | None, Problem | None]:
    """(skip reason, problem) for the GPU-only checks. They are skipped only where no GPU is allowed:
    use_gpu=False, or a host provisioned with allow_no_gpu=True; anywhere else a missing nvidia-smi, an
    empty GPU list or a failing cuInit(0) (``cuinit`` None: not tried) is a failure naming the cause."""
    if not use_gpu:
        return "use_gpu=False in the applied settings", None
    allowed = "; provisioned with allow_no_gpu=True"
    if not gpus:
        reason = f"nvidia-smi missing or lists no GPU: {smi_error}" if smi_error else "nvidia-smi missing or lists no GPU"
        if allow_no_gpu:
            return f"no NVIDIA GPU on this host ({reason}){allowed}", None
        return None, Problem(f"no NVIDIA GPU on this host ({reason})",
                             "nvidia-smi lists at least one GPU (allow_no_gpu=False: this host must have one)",
                             driver_fix(is_wsl))
    if cuinit not in (None, 0):
        names = [g[0] if isinstance(g, (list, tuple)) else g for g in gpus]
        if allow_no_gpu:
            return (f"no usable NVIDIA GPU on this host: nvidia-smi lists {names} but cuInit(0) gives {cuinit!r}"
                    f"{allowed}"), None
        return None, Problem(f"nvidia-smi lists {names} but the CUDA driver fails: cuInit(0) gives {cuinit!r}",
                             "cuInit(0) = 0 (CUDA_SUCCESS) for the service user", cuinit_fix(cuinit, is_wsl))
    return None, None


def driver_cuda_problem(driver_version: str, cuda_found: str | None, cuda_needed: str, is_wsl: bool) -> Problem | None:
    if cuda_found and version_tuple(cuda_found) >= version_tuple(cuda_needed):
        return None
    return Problem(f"driver {driver_version} supports CUDA {cuda_found or 'unknown (no CUDA Version in nvidia-smi)'}",
                   f"a driver supporting CUDA >= {cuda_needed}", "update the driver: " + driver_fix(is_wsl))


def wsl2_gpu_library_path_problem(lib_dir_is_directory: bool, ldconfig: str) -> Problem | None:
    """WSL2's GPU support: /usr/lib/wsl/lib a directory, and the libcuda.so.1 the linker takes (the first of
    `ldconfig -p`'s entries for that soname) is the one in /usr/lib/wsl/lib."""
    if not lib_dir_is_directory:
        return Problem("no /usr/lib/wsl/lib", "/usr/lib/wsl/lib (WSL2 GPU support)",
                       "run `wsl --update` on Windows and use a WSL2 distro")
    cached = parse_ldconfig(ldconfig).get("libcuda.so.1", [])
    if not cached:
        return Problem("libcuda.so.1 not in the linker cache", "libcuda.so.1 from /usr/lib/wsl/lib",
                       "check /etc/ld.so.conf.d/ld.wsl.conf lists /usr/lib/wsl/lib, then sudo ldconfig")
    if cached[0] != "/usr/lib/wsl/lib/libcuda.so.1":
        return Problem(f"the linker takes libcuda.so.1 from {cached[0]} (the cache lists {cached})",
                       "libcuda.so.1 from /usr/lib/wsl/lib",
                       f"remove {cached[0]} (a Linux NVIDIA driver's: wsl2_libcuda_is_the_windows_drivers names its "
                       "package), then sudo ldconfig; /etc/ld.so.conf.d/ld.wsl.conf must list /usr/lib/wsl/lib")
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", str(version))[:2])


# --- the CUDA toolkit and its environment (plan step 3) ----------------------------------------------

def toolkit_nvcc_version_problem(rc: int, stdout: str, stderr: str, cuda_version: str,
                                 packages: list[str]) -> Problem | None:
    """`<cuda_home>/bin/nvcc --version` runs and says "release <cuda_version>" ("Cuda compilation tools,
    release 12.4, V12.4.131")."""
    found = re.search(r"release (\d+\.\d+)", stdout)
    if rc == 0 and found and found.group(1) == cuda_version:
        return None
    return Problem(f"nvcc: {found.group(0) if found else (stderr.strip() or 'not runnable')}",
                   f"release {cuda_version}", f"sudo apt-get install {' '.join(packages)} (or re-run the deploy)")


def login_shell_finds_nvcc_problem(stdout: str, cuda_home: str) -> Problem | None:
    """`bash -lc 'command -v nvcc'` prints <cuda_home>/bin/nvcc (the profile snippet puts it on PATH)."""
    found = stdout.strip()
    if found == f"{cuda_home}/bin/nvcc":
        return None
    return Problem(f"login shell: {found or 'nvcc not on PATH'}", f"{cuda_home}/bin/nvcc",
                   "re-run the deploy (restores /etc/profile.d/piper-gpu-cuda.sh), then open a new shell")


LINKER_CONFIG = "/etc/ld.so.conf.d/piper-gpu-cuda.conf"


def linker_config_problem(conf: str | None, lib_dirs: list[str], gone: list[str]) -> Problem | None:
    """The deploy's linker config (``conf``: its text, None when the file is missing) lists every recorded
    library directory, and none of them is gone (``gone``: those that are no directory on the host)."""
    listed = conf.split() if conf is not None else []
    missing = [d for d in lib_dirs if d not in listed]
    if conf is None or missing:
        return Problem(f"no {LINKER_CONFIG}" if conf is None else f"it does not list {missing}",
                       f"{lib_dirs} in {LINKER_CONFIG}", "re-run the deploy (writes the linker config and runs ldconfig)")
    if gone:
        return Problem(f"listed library directories missing: {gone}", "each directory present",
                       "re-run the deploy (installs the CUDA/cuDNN packages or wheels that own them)")
    return None


def libraries_load_problem(rc: int, failed, stderr: str, fix_for) -> Problem | None:
    """Every library loads with ctypes as the service: ``failed`` is the probe's JSON, soname -> the
    OSError it raised ({} when all load); ``fix_for(missing sonames) -> fix``."""
    if rc == 0 and failed == {}:
        return None
    missing = sorted({m for err in (failed if isinstance(failed, dict) else {}).values()
                      for m in re.findall(r"(lib[\w.+-]+\.so\.\d+): cannot open", str(err))})
    return Problem(f"as the service: {failed if failed else stderr.strip()}",
                   "every CUDA/cuDNN library loads for the service user with the service environment",
                   fix_for(missing) + "; the service must not rely on a shell's LD_LIBRARY_PATH")


# --- the dynamic linker --------------------------------------------------------------------------

_CACHE_LINE = re.compile(r"^\s+(\S+) \(([^)]*)\) => (\S+)\s*$")


def parse_ldconfig(text: str) -> dict[str, list[str]]:
    """`ldconfig -p` -> soname -> its paths in the cache's order (the first is what the linker loads);
    64-bit x86/ARM entries only."""
    cache: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = _CACHE_LINE.match(line)
        if m and ("x86-64" in m.group(2) or "AArch64" in m.group(2) or "aarch64" in m.group(2)):
            cache.setdefault(m.group(1), []).append(m.group(3))
    return cache


def ldd_missing(text: str) -> list[str]:
    """`ldd FILE` -> the sonames it prints as "not found"."""
    return sorted({line.split()[0] for line in text.splitlines() if "=> not found" in line or line.strip().endswith("not found")})


def linker_resolves_problem(soname: str, cache: dict, on_disk: str, reinstall: str) -> Problem | None:
    """``soname`` in `ldconfig -p`; if not, the fix depends on whether the file is on disk (``on_disk``: its
    path, from `ls` of the recorded library directories) but outside the linker's search path."""
    if cache.get(soname):
        return None
    fix = ("the file exists but the linker does not search its directory: re-run the deploy (linker config + ldconfig)"
           if on_disk else reinstall)
    return Problem(f"{soname}: cannot open shared object file (not in `ldconfig -p`)"
                   + (f"; file at {on_disk}" if on_disk else ""), f"{soname} resolvable by the dynamic linker", fix)


# --- cuDNN (plan step 4) ---------------------------------------------------------------------------

def cudnn_number(version: str) -> int:
    """9.1.1(.17) -> 90101, as cudnnGetVersion() answers."""
    major, minor, patch = (int(x) for x in version.split(".")[:3])
    return major * 10000 + minor * 100 + patch


def cudnn_version_problem(found: int, release: str, fix: str) -> Problem | None:
    if found == cudnn_number(release):
        return None
    have = f"{found // 10000}.{found % 10000 // 100}.{found % 100}"
    return Problem(f"cudnnGetVersion() = {found} (cuDNN {have})", f"cuDNN {release} ({cudnn_number(release)})",
                   "remove other cuDNN copies earlier in the linker path, then " + fix)


def cudnn_cudart_problem(cudart: int, cuda_version: str, major: int, fix: str) -> Problem | None:
    cuda_major, cuda_minor = (int(x) for x in cuda_version.split(".")[:2])
    if cudart // 1000 == cuda_major and cudart % 1000 // 10 <= cuda_minor:
        return None
    return Problem(f"the loaded libcudnn.so.{major} is built for CUDA {cudart // 1000}.{cudart % 1000 // 10} "
                   f"(cudnnGetCudartVersion() = {cudart})",
                   f"cuDNN built for CUDA {cuda_major}.x, no newer than the {cuda_version} toolkit",
                   "a cuDNN for another CUDA is in the linker path or over the pinned files: remove it, then " + fix)


def parse_dpkg_query(text: str) -> tuple[str, str] | None:
    """`dpkg-query -W -f='${db:Status-Abbrev}|${Version}\\n' PKG` -> (status, version); None when dpkg knows
    no such package. The status is dpkg's three letters, the last (error flag) blank when all is well: wanted
    state (i install, h hold, r remove...), package state (i installed; c config-files, U unpacked, F
    half-configured...), error flag (R reinstall required)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if "|" not in line:
        return None
    status, _, version = line.partition("|")
    return status.strip(), version.strip()


def cudnn_package_problem(package: str, version: str, dpkg_query: str, showhold: str, fix: str) -> Problem | None:
    """The package installed at exactly the pinned version (dpkg-query) and held (apt-mark showhold)."""
    state = parse_dpkg_query(dpkg_query)
    if state is None or state[0][1:] != "i" or state[1] != version:
        have = "not installed" if state is None else f"{state[1]} (dpkg status {state[0]!r})"
        return Problem(f"{package} {have}", f"{package} {version} installed (dpkg status 'hi': held, installed)", fix)
    if package not in showhold.split():
        return Problem(f"{package} {version} installed but not held (not in `apt-mark showhold`)",
                       f"{package} held at {version}, so an upgrade cannot move it",
                       f"sudo apt-mark hold {package} (or re-run the deploy)")
    return None


def cudnn_sonames(major: int, parts) -> list[str]:
    return [f"libcudnn{p}.so.{major}" for p in parts]


def cudnn_package_files_problem(package: str, dpkg_files: str, missing_on_disk: list[str], cache: dict,
                                major: int, parts, fix: str, realpath: dict | None = None) -> Problem | None:
    """The package's file list (`dpkg -L`) holds every libcudnn*.so.N, each is on disk, and the linker's
    libcudnn.so.N is the package's (compared through ``realpath``, path -> `realpath` on the host: with
    merged /usr, `ldconfig -p` may name /lib/<multiarch>/... for dpkg's /usr/lib/<multiarch>/...)."""
    real = realpath or {}
    listed = {line.strip().rsplit("/", 1)[-1]: line.strip() for line in dpkg_files.splitlines() if "/" in line}
    absent = [s for s in cudnn_sonames(major, parts) if s not in listed]
    if absent:
        return Problem(f"`dpkg -L {package}` lists no {', '.join(absent)}", f"every cuDNN library in {package}", fix)
    if missing_on_disk:
        return Problem(f"{package}'s files deleted: {', '.join(missing_on_disk)}", f"every file of {package} on disk", fix)
    main = f"libcudnn.so.{major}"
    resolved = (cache.get(main) or [None])[0]
    if resolved is None or real.get(resolved, resolved) != real.get(listed[main], listed[main]):
        return Problem(f"the linker resolves {main} to {resolved or 'nothing (not in `ldconfig -p`)'}",
                       f"{listed[main]} (from {package})",
                       "remove the other cuDNN copy earlier in the linker path, then sudo ldconfig; " + fix)
    return None


def _linker_problem(lib_dir: str, cache: dict, major: int, fix: str) -> Problem | None:
    main = f"libcudnn.so.{major}"
    resolved = (cache.get(main) or [None])[0]
    if resolved and resolved.rsplit("/", 1)[0] == lib_dir.rstrip("/"):
        return None
    return Problem(f"the linker resolves {main} to {resolved or 'nothing (not in `ldconfig -p`)'}",
                   f"{lib_dir}/{main} first in `ldconfig -p`",
                   f"{lib_dir} must be in /etc/ld.so.conf.d/piper-gpu-cuda.conf and no other cuDNN before it: "
                   "re-run the deploy (writes the linker config, runs ldconfig)")


def _absent(listing: list[str], major: int, parts) -> list[str]:
    return [s for s in cudnn_sonames(major, parts) if s not in listing]


def header_version(header: str) -> str | None:
    """cudnn_version.h's CUDNN_MAJOR / CUDNN_MINOR / CUDNN_PATCHLEVEL -> "9.1.1"."""
    got = dict(re.findall(r"#define\s+CUDNN_(MAJOR|MINOR|PATCHLEVEL)\s+(\d+)", header))
    if len(got) != 3:
        return None
    return f"{got['MAJOR']}.{got['MINOR']}.{got['PATCHLEVEL']}"


def filename_version(listing: list[str], major: int) -> str | None:
    """The release in the real file's name beside libcudnn.so.N: libcudnn.so.9.1.1 -> "9.1.1"."""
    for name in listing:
        m = re.fullmatch(rf"libcudnn\.so\.({major}\.\d+\.\d+)", name)
        if m:
            return m.group(1)
    return None


def cudnn_unpacked_problem(source: str, lib_dir: str, listing: list[str], header: str | None, cache: dict,
                           release: str, major: int, parts, fix: str) -> Problem | None:
    """cuDNN unpacked by the deploy (the archive's lib/ and include/, or a .deb's usr/lib/<multiarch>): every
    library in ``lib_dir``, its release from cudnn_version.h (archive) or the file names (.deb), found first
    by the linker."""
    absent = _absent(listing, major, parts)
    if absent:
        return Problem(f"{lib_dir}: no {', '.join(absent)}" + ("" if listing else " (directory empty or missing)"),
                       f"cuDNN {release} unpacked there ({source})", fix)
    if source == "archive":
        have, where = (header_version(header) if header else None), f"{lib_dir.rsplit('/', 1)[0]}/include/cudnn_version.h"
    else:
        have, where = filename_version(listing, major), f"the file names in {lib_dir}"
    if have != release:
        return Problem(f"{where}: cuDNN {have or 'unknown (no version found)'}", f"cuDNN {release}", fix)
    return _linker_problem(lib_dir, cache, major, fix)


def cudnn_wheel_problem(wheel: str, pinned: str, installed: str | None, lib_dir: str, listing: list[str],
                        cache: dict, major: int, parts, fix: str) -> Problem | None:
    """cuDNN from NVIDIA's wheel in the venv: the wheel at the pin (its metadata's Version), every library in
    its nvidia/cudnn/lib, found first by the linker."""
    if installed != pinned:
        return Problem(f"{wheel} {installed or 'not installed'} in the venv (importlib.metadata)",
                       f"{wheel}=={pinned}", fix)
    absent = _absent(listing, major, parts)
    if absent:
        return Problem(f"{lib_dir}: no {', '.join(absent)}", f"every cuDNN library of {wheel}=={pinned}", fix)
    return _linker_problem(lib_dir, cache, major, fix)


def cudnn_sublibraries_problem(home: str | None, elsewhere: dict, version_checks: dict, release: str, major: int,
                               fix: str) -> Problem | None:
    """Every libcudnn*.so.N the linker resolves lies in libcudnn.so.N's directory, and cuDNN's own
    cudnn<Sub>VersionCheck() answers 0 for each (1002: CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)."""
    if home is None:
        return Problem(f"libcudnn.so.{major} not in the linker cache", f"cuDNN {release}", fix)
    mismatched = {lib: r for lib, r in version_checks.items() if r != 0}
    if not elsewhere and not mismatched:
        return None
    return Problem((f"sub-libraries outside {home}: {elsewhere}; " if elsewhere else "")
                   + (f"version checks: {mismatched}" if mismatched else ""),
                   f"every libcudnn*.so.{major} from one cuDNN {release} in {home}, its version checks 0",
                   "another cuDNN's sub-libraries are mixed in: remove them, then " + fix)


# --- ONNX Runtime in the venv (plan step 5) --------------------------------------------------------

def available_providers_problem(providers: list | None, error: str) -> Problem | None:
    if providers and CUDA in providers:
        return None
    return Problem(f"onnxruntime.get_available_providers() = {providers if providers else error}",
                   f"{CUDA} available",
                   "the CPU onnxruntime is installed instead of (or over) onnxruntime-gpu: re-run the deploy")


def provider_ldd_problem(ldd_rc: int, ldd_out: str, ldd_err: str, fix_for) -> Problem | None:
    """``fix_for(missing sonames) -> fix``."""
    missing = ldd_missing(ldd_out)
    if ldd_rc == 0 and not missing:
        return None
    return Problem(f"ldd: {', '.join(missing)} not found" if missing else f"ldd fails: {ldd_err.strip()[-200:]}",
                   "every dependency of libonnxruntime_providers_cuda.so resolves", fix_for(missing))


#: cuDNN's own statuses for sub-libraries (libcudnn_*.so.9) of another release, or one that did not load
#: (cudnn_graph.h of cuDNN 9.1.1: CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH = 1002; LOADING_FAILED is a later 9.x's).
CUDNN_SUBLIBRARY_STATUS = re.compile(r"CUDNN_STATUS_SUBLIBRARY_(?:VERSION_MISMATCH|LOADING_FAILED)")
#: onnxruntime-gpu 1.20 and later run Conv/ConvTranspose through cuDNN's frontend; when it cannot build the
#: graph or plan with the loaded cuDNN the node fails with "Failed to initialize CUDNN Frontend ... CUDNN_FE
#: failure 11: CUDNN_BACKEND_API_FAILED ; GPU=0 ; ..." (onnxruntime's cudnn_fe_call.cc; microsoft/onnxruntime
#: issues 23301 and 26274 quote it).
CUDNN_FRONTEND_FAILURE = (re.compile(r"CUDNN_FE failure \d+: \w+"), re.compile(r"Failed to initialize CUDNN Frontend"))
#: Where the evidence on onnxruntime-gpu's cuDNN against the pinned cuDNN 9.1.1 is written down.
ORT_CUDNN_DOC = "docs/server.md, 'The onnxruntime-gpu pin and cuDNN 9.1.1'"


def cudnn_failure(said: str) -> tuple[str, str] | None:
    """(cause, fix) when onnxruntime's error or log shows cuDNN failing its CUDA provider; None otherwise."""
    status = CUDNN_SUBLIBRARY_STATUS.search(said)
    if status:
        return (f"cuDNN reports {status.group(0)}: its sub-libraries (libcudnn_*.so.9) are not all from the release "
                "of libcudnn.so.9, or one failed to load",
                "keep exactly one cuDNN release's libcudnn*.so.9 together where the linker finds them (remove another "
                "cuDNN's copies, e.g. a pip nvidia-cudnn-cu12 or files in /usr/local/cuda/lib64) and re-run the deploy; "
                "`python -m piper_gpu diagnose` runs verify's cuDNN checks (the release, the sub-libraries' place and versions)")
    frontend = next(filter(None, (p.search(said) for p in CUDNN_FRONTEND_FAILURE)), None)  # the code when it is there
    if frontend:
        return (f"cuDNN's frontend could not build the convolution with the loaded cuDNN ({frontend.group(0)}): "
                "likely a cuDNN older than the one onnxruntime-gpu was built against (its PyPI wheels 1.20 to 1.23 "
                f"against cuDNN 9.5; 9.1.1 is outside NVIDIA's guarantee for them: {ORT_CUDNN_DOC})",
                "install a cuDNN 9 for CUDA 12 no older than the one onnxruntime-gpu was built against (9.5 or newer "
                "for 1.20-1.23: piper_gpu_cudnn_version) or pin piper_gpu_onnxruntime_gpu_version=1.19.2, whose CUDA "
                "provider does not use cuDNN's frontend; then re-run the deploy")
    return None


def session_problem(voice: str, answer: dict | None, error: str) -> Problem | None:
    """A CUDA session of the voice that ran an inference: CUDA first in get_providers(), audio out. The run
    is what loads cuDNN's sub-libraries (they are loaded lazily, on the first convolution). A failure that
    onnxruntime's error or log shows as cuDNN's (``cudnn_failure``) is named with its cause and fix."""
    cudnn = cudnn_failure(((answer or {}).get("error") or "") + "\n" + error)
    because, fix = (f"; {cudnn[0]}", cudnn[1]) if cudnn else (
        "", "see the onnxruntime error: a CUDA/cuDNN library failed to load or a kernel failed "
            "(run `python -m piper_gpu diagnose`)")
    if not answer:
        return Problem(f"voice {voice}: the CUDA session fails: {error.strip()[-300:]}{because}",
                       f"an inference on {CUDA}", fix)
    providers = answer.get("providers") or []
    if not providers or providers[0] != CUDA:
        said = error.strip().splitlines()[-2:] if error.strip() else []
        return Problem(f"voice {voice}: session providers {providers}" + (f"; onnxruntime: {' '.join(said)[-300:]}" if said else "")
                       + because,
                       f"{CUDA} first in get_providers()",
                       f"onnxruntime fell back to the CPU: {fix}" if cudnn else
                       "onnxruntime fell back to the CPU: read the warning it printed (a CUDA/cuDNN library failed to "
                       "load); run `python -m piper_gpu diagnose`")
    if answer.get("error"):
        return Problem(f"voice {voice}: the inference on {CUDA} fails: {answer['error'][-300:]}{because}",
                       f"an inference on {CUDA}", fix)
    if not answer.get("samples"):
        return Problem(f"voice {voice}: the inference on {CUDA} gave no audio ({answer})", "audio samples", fix)
    return None


# --- the venv as pip sees it (plan step 5) -----------------------------------------------------------

def parse_pip_list(text: str) -> dict[str, str]:
    """`pip list --format=json` -> name (lower case, "_" as "-") -> version."""
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(text)}


def pip_sees_no_invalid_distribution_problem(stderr: str, venv_dir: str) -> Problem | None:
    """`pip list` warns "Ignoring invalid distribution ~..." for the ~-prefixed debris of an interrupted or
    failed install (and no longer lists the distribution it was removing)."""
    warnings = [line.strip() for line in stderr.splitlines() if "invalid distribution" in line]
    if not warnings:
        return None
    return Problem("; ".join(warnings), "no warning from `pip list`",
                   "re-run the deploy: it removes the ~-prefixed debris in site-packages and reinstalls what it hid "
                   f"(by hand: rm -rf {venv_dir}/lib/python3*/site-packages/~*, then reinstall)")


def venv_files_owned_problem(rc: int, stdout: str, stderr: str, user: str, venv_dir: str) -> Problem | None:
    """`find VENV ! -user USER -printf '%p (%u)\n' | head -3` prints nothing: every file is the service user's."""
    if rc == 0 and not stdout.strip():
        return None
    return Problem(f"files not owned by {user}: " + (stdout.strip().replace("\n", "; ") or stderr.strip()),
                   f"every venv file owned by {user}",
                   f"re-run the deploy (or sudo chown -R {user}: {venv_dir}); install into the venv "
                   f"as {user}, not with `sudo pip` (the next pip run fails with a permission error)")


def pinned_distributions_record_problem(rc: int, bad, stderr: str, requirements: dict, venv_dir: str,
                                        server_wheels: str | None) -> Problem | None:
    """The RECORD probe's JSON (``bad``: name -> [files that differ, the first three]) is empty: each pinned
    distribution's files hash as its RECORD says."""
    if rc != 0 or not isinstance(bad, dict):
        return Problem(f"RECORD check fails: {stderr.strip()[-300:]}", "a working venv", "re-run the deploy")
    if not bad:
        return None
    pip = f"{venv_dir}/bin/pip"
    return Problem("; ".join(f"{n}: {count} file(s) differ from its RECORD, e.g. {', '.join(some)}"
                             for n, (count, some) in sorted(bad.items())),
                   "every pinned distribution's files as its RECORD lists them",
                   "re-run the deploy (it reinstalls them), or " + "; ".join(
                       f"{pip} install --force-reinstall --no-deps {n}=={requirements.get(n, '?')}"
                       + (f" --find-links {server_wheels}" if n == "piper-gpu-server" else "") for n in sorted(bad)))


def one_onnxruntime_problem(dists: dict, ort_distributions, ort_gpu_version: str, venv_dir: str) -> Problem | None:
    """Of ONNX Runtime's distributions (``ort_distributions``) the venv (``dists``: parse_pip_list) holds
    only onnxruntime-gpu, at the pinned version: the CPU build shadows the GPU one."""
    ort = {d: v for d, v in dists.items() if d in ort_distributions}
    if ort == {"onnxruntime-gpu": ort_gpu_version}:
        return None
    pip = f"{venv_dir}/bin/pip"
    return Problem(f"ONNX Runtime distributions in the venv: {ort}", f"only onnxruntime-gpu {ort_gpu_version}",
                   f"{pip} uninstall -y {' '.join(sorted(set(ort) - {'onnxruntime-gpu'})) or 'onnxruntime'} && "
                   f"{pip} install --force-reinstall --no-deps onnxruntime-gpu=={ort_gpu_version} "
                   "(or re-run the deploy): the CPU build shadows the GPU one and CUDA is silently ignored")


def piper_tts_version_problem(dists: dict, version: str) -> Problem | None:
    if dists.get("piper-tts") == version:
        return None
    return Problem(f"piper-tts {dists.get('piper-tts')}", f"piper-tts {version}", "re-run the deploy")


def venv_lock_problem(dists: dict, requirements: dict, piper_dir: str) -> Problem | None:
    """Every pin of the lock (NVIDIA's CUDA wheels included when cuda_source=pip) at its version."""
    wrong = {n: dists.get(n, "missing") for n, v in requirements.items() if dists.get(n) != v}
    if not wrong:
        return None
    return Problem(f"venv distributions off the lock: {wrong}", f"every pin in {piper_dir}/requirements.lock",
                   "re-run the deploy (installs the lock)")


# --- the voices (plan step 6) ---------------------------------------------------------------------

def voice_files_problem(files: list[tuple[str, str, str | None]]) -> Problem | None:
    """(path, pinned sha256, the host's sha256 or None when missing) for each voice file: the first that
    differs."""
    for path, digest, found in files:
        if found != digest:
            return Problem(f"{path}: " + (f"sha256 {found}" if found else "missing"), f"sha256 {digest}",
                           "re-run the deploy (downloads the voice again and checks it)")
    return None


# --- the server (plan step 7) ---------------------------------------------------------------------

def rendered_files_problem(recorded: dict, found: dict, record: str) -> Problem | None:
    """Every file the deploy rendered (``recorded``: path -> the sha256 it wrote) has that sha256 on the host
    (``found``: path -> sha256, None when missing)."""
    if not recorded:
        return Problem(f"no installed_files in {record}", "the sha256 of every rendered file, recorded by the deploy",
                       "re-run the deploy")
    wrong = []
    for path, want in sorted(recorded.items()):
        have = found.get(path)
        if have != want:
            wrong.append(f"{path} " + ("missing" if have is None else f"sha256 {have[:12]}... (deploy wrote {want[:12]}...)"))
    if not wrong:
        return None
    return Problem("; ".join(wrong) + " (hand-edited, half-written or replaced?)",
                   f"the {len(recorded)} files as the deploy rendered them",
                   "re-run the deploy (restores them and restarts the service when its files change)")


def server_package_problem(rc: int, found, stderr: str, venv_dir: str, server_version: str) -> Problem | None:
    """The probe's JSON ({"version", "file"} of piper_gpu_server as the venv imports it): the deployed build,
    from the venv's own site-packages."""
    if rc != 0 or not found:
        return Problem(f"{venv_dir}/bin/python cannot import piper_gpu_server: {stderr.strip()[-300:]}",
                       "the server package in the venv", "re-run the deploy")
    if found.get("version") != server_version:
        return Problem(f"piper-gpu-server {found.get('version')} in the venv",
                       f"{server_version} (built from this deploy's server/)", "re-run the deploy")
    if not str(found.get("file")).startswith(venv_dir + "/"):
        return Problem(f"piper_gpu_server imported from {found.get('file')}",
                       f"the venv's site-packages under {venv_dir}",
                       "remove the other copy (PYTHONPATH, a .pth file, a file in the working directory)")
    return None


def server_config_problem(health: dict | None, config_file: str, want: dict) -> Problem | None:
    """/health's config_file is the deploy's, and its config holds every value the deploy wrote."""
    h = health or {}
    if h.get("config_file") != config_file:
        return Problem(f"the service runs with config {h.get('config_file')}", config_file,
                       "re-run the deploy (the unit runs python -m piper_gpu_server --config FILE)")
    have = h.get("config") or {}
    wrong = sorted(k for k in want if have.get(k) != want[k])
    if not wrong:
        return None
    return Problem("; ".join(f"{k}={have.get(k)!r}" for k in wrong) + " in the running server",
                   "; ".join(f"{k}={want[k]!r}" for k in wrong),
                   "re-run the deploy (restores the file, restarts the service)")


def last_start(log: str) -> str:
    """The server log from its last start-up line ("start: pid=...") on; "" when there is none."""
    starts = [m.start() for m in re.finditer(r"start: pid=", log)]
    return log[log.rfind("\n", 0, starts[-1]) + 1:] if starts else ""


def startup_log_problem(log: str, voices: list[str], use_gpu: bool, log_path: str) -> Problem | None:
    """The last start-up in the server's log names the available providers, the GPU detection and each
    voice's active provider; a voice off CUDA where the GPU is wanted has a WARN line naming the cause."""
    log = last_start(log)
    if "available_providers=" not in log or "GPU detection:" not in log:
        return Problem("no start-up lines with available providers and GPU detection in " + log_path,
                       "start-up lines: available providers, GPU detection, active provider per voice",
                       "the running server is not the deployed one: re-run the deploy")
    for voice in voices:
        m = re.search(rf"voice {re.escape(voice)}: active provider (\S+)", log)
        if not m:
            return Problem(f"no 'active provider' line for voice {voice}", "one line per voice", "re-run the deploy")
        if use_gpu and m.group(1) != CUDA and f"voice {voice}: GPU wanted but the session runs on" not in log:
            return Problem(f"voice {voice} on {m.group(1)} without a WARN line", "a WARN naming the cause",
                           "re-run the deploy (the server logs the cause)")
    return None


# --- the service (plan step 8) ---------------------------------------------------------------------

def health_cuda_problem(health: dict | None, voices: list[str]) -> Problem | None:
    if not health:
        return Problem("GET /health does not answer", "the service answering", "start the service; see its log")
    wrong = {v: (health.get("voices") or {}).get(v, {}).get("provider") for v in voices}
    wrong = {v: p for v, p in wrong.items() if p != CUDA}
    if not wrong:
        return None
    return Problem(f"/health: {', '.join(f'voice {v} on {p}' for v, p in wrong.items())}", f"every voice on {CUDA}",
                   "read the WARN line in the server log for the cause; run `python -m piper_gpu diagnose`")


def response_provider_problem(answer: dict | None) -> Problem | None:
    """The request's own answer: 200 and X-Provider: CUDAExecutionProvider."""
    if answer and answer.get("status") == 200 and answer.get("provider") == CUDA:
        return None
    return Problem(f"POST /tts answered {answer}", f"200 with the header X-Provider: {CUDA}",
                   "the server synthesised on the CPU: read its WARN line; run `python -m piper_gpu diagnose`")


def parse_compute_apps(text: str) -> dict[str, int]:
    """`nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader[,nounits]` -> pid -> MiB."""
    apps = {}
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            m = re.match(r"\d+", parts[1])
            apps[parts[0]] = int(m.group(0)) if m else 0
    return apps


def parse_pmon(text: str) -> dict[str, int]:
    """`nvidia-smi pmon -c 1 -s um` -> pid -> SM utilisation % ("-" counts as 0). The columns are read from
    its header ("# gpu pid type sm mem enc dec ... command"; their set and order vary by driver)."""
    columns = ["gpu", "pid", "type", "sm"]
    use = {}
    for line in text.splitlines():
        fields = line.split()
        if line.lstrip().startswith("#"):
            names = line.lstrip("# ").split()
            if "pid" in names and "sm" in names:
                columns = names
            continue
        pid, sm = columns.index("pid"), columns.index("sm")
        if len(fields) > max(pid, sm) and fields[pid].isdigit():
            use[fields[pid]] = int(fields[sm]) if fields[sm].isdigit() else 0
    return use


def parse_gpu_use(text: str) -> list[tuple[int, int]]:
    """`nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits` -> [(util %, MiB)]."""
    rows = []
    for line in text.strip().splitlines():
        parts = [re.match(r"\s*(\d+)", p) for p in line.split(",")]
        if len(parts) == 2 and all(parts):
            rows.append((int(parts[0].group(1)), int(parts[1].group(1))))
    return rows


def gpu_use_problem(pid: str, sampled: dict, is_wsl: bool) -> Problem | None:
    """The server's process did GPU work while it answered requests: its SM utilisation in `nvidia-smi pmon`
    above 0, or its memory grown, in a sample taken during the requests. WSL2's driver lists no processes:
    there the whole GPU's utilisation or memory must rise. ``sampled``: before_apps, before_gpu, samples
    [{pmon, apps, gpu}], answers [...] as the sampler on the host wrote them."""
    fix = "the server runs on the CPU: read its WARN line; run `python -m piper_gpu diagnose`"
    problem = response_provider_problem((sampled.get("answers") or [None])[0])
    if problem:
        return problem
    samples = sampled.get("samples") or []
    if not samples:
        return Problem("no nvidia-smi sample taken while the requests ran", "a sample during a request",
                       "nvidia-smi must answer for the service user (is it on the service's PATH?)")
    before = parse_compute_apps(sampled.get("before_apps", "")).get(pid, 0)
    sm = [parse_pmon(s.get("pmon", "")).get(pid) for s in samples]
    mem = [parse_compute_apps(s.get("apps", "")).get(pid) for s in samples]
    if any(u for u in sm if u) or any(m is not None and m > before for m in mem):
        return None
    listed = any(u is not None for u in sm + mem) or pid in parse_compute_apps(sampled.get("before_apps", ""))
    if is_wsl and not listed:
        idle = parse_gpu_use(sampled.get("before_gpu", ""))
        during = [row for s in samples for row in parse_gpu_use(s.get("gpu", ""))]
        if any(u > 0 for u, _ in during) or (idle and any(m > idle[0][1] for _, m in during)):
            return None
        return Problem(f"whole-GPU utilisation/memory during the requests {during}, before {idle}",
                       "the GPU busier during the requests (WSL2 lists no processes)", fix)
    if not listed:
        return Problem(f"server pid {pid} not among the GPU's compute processes while it answered", "the server on the GPU", fix)
    return Problem(f"server pid {pid}: SM utilisation {sm} and memory {mem} MiB (before {before} MiB) while it answered",
                   "SM utilisation above 0 or more memory during a request",
                   "the server holds a CUDA context but did the work elsewhere: read its log; run `python -m piper_gpu diagnose`")


def systemd_service_running_problem(unit: str, running: bool, enabled: bool) -> Problem | None:
    """systemd's word on the unit (`systemctl is-active` / `is-enabled`, as testinfra's host.service reads them)."""
    if running and enabled:
        return None
    return Problem(f"{unit}: running={running} enabled={enabled}", "enabled and running",
                   f"sudo systemctl enable --now {unit}; journalctl -u {unit}")


AUTOSTART = "/etc/profile.d/piper-tts-autostart.sh"


def profile_service_running_problem(ctl: str, status_rc: int, status_out: str, status_err: str,
                                    autostart: str | None) -> Problem | None:
    """Without systemd: `piper-tts-ctl status` exits 0 (pid file, live process), and the profile start
    (``autostart``: its text, None when missing) runs that control script."""
    if status_rc != 0:
        return Problem(status_out.strip() or status_err.strip(), "piper-tts running (pid file, live process)",
                       f"sudo {ctl} start (prints the log tail if it fails); or re-run the deploy")
    if autostart is None or ctl not in autostart:
        return Problem(f"no {AUTOSTART}", "the profile start (how the service is enabled without systemd)",
                       "re-run the deploy")
    return None


def parse_ss_listening(text: str) -> set[tuple[str, int]]:
    """`ss --numeric --listening --tcp` (what testinfra's host.socket runs) -> {(address, port)} of the
    listening sockets; "*" (old ss) counts as both 0.0.0.0 and ::, "[::]" is read as "::"."""
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] not in ("LISTEN", "UNCONN") or ":" not in fields[3]:
            continue
        host, _, port = fields[3].rpartition(":")
        if not port.isdigit():
            continue
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        found.update({("::", int(port)), ("0.0.0.0", int(port))} if host == "*" else {(host, int(port))})
    return found


def parse_ss_processes(text: str) -> dict[tuple[str, int], set[int]]:
    """`ss --numeric --listening --tcp --processes` -> {(address, port): {pid, ...}} of the listening
    sockets whose process ss shows (users:(("python",pid=123,fd=3)); none without root)."""
    found: dict[tuple[str, int], set[int]] = {}
    for line in text.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        sockets = parse_ss_listening(line)
        for socket in sockets:
            found.setdefault(socket, set()).update(pids)
    return found


def service_listens_problem(rc: int, ss: str, stderr: str, address: str, port: int,
                            service_pid: str = "", pid_source: str = "") -> Problem | None:
    """The service's own process listens on address:port, or on [::]:port (every address, both
    families): a socket there as testinfra's socket(...).is_listening decides it, held by
    ``service_pid`` (the pid file's or the unit's MainPID, named by ``pid_source``) as `ss --processes`
    shows it, so that another process answering the port (an old server, another host's service) fails
    here. Unlike testinfra, no fallback to netstat where ss is missing: the deploy installs iproute2 (a
    base package), so a host without ss is itself a fault, named here."""
    holders = parse_ss_processes(ss) if rc == 0 else {}
    socket = next((s for s in ((address, int(port)), ("::", int(port))) if s in holders), None)
    if socket is None:
        return Problem(f"nothing listens on {address}:{port}" + (f" (ss fails: {stderr.strip()[-200:]})" if rc else ""),
                       f"the service on {address}:{port}",
                       "start the service (see test_service_running); check the port is not taken")
    pids = holders[socket]
    where = f"{socket[0]}:{socket[1]}"
    if not pids:
        return Problem(f"{where} listens, but ss shows no process for it (run verify as root: --sudo)",
                       f"the service's process ({pid_source}) holding {where}", "run verify with --sudo")
    if not service_pid.strip().isdigit() or int(service_pid) == 0:
        return Problem(f"{where} is held by pid {', '.join(map(str, sorted(pids)))}, and the service has no pid "
                       f"({pid_source}: {service_pid.strip() or 'empty'})", f"the service's process holding {where}",
                       "start the service (see test_service_running); free the port from the other process")
    if int(service_pid) in pids:
        return None
    return Problem(f"{where} is held by pid {', '.join(map(str, sorted(pids)))}, not by the service (pid {service_pid.strip()}, "
                   f"{pid_source})", f"the service's process holding {where}",
                   "stop the other process (an old server? `ss -ltnp` names it), then restart the service; or set "
                   "piper_gpu_port to a free port and re-run the deploy")


def health_names_a_provider_problem(health: dict | None, url: str, voices: list[str]) -> Problem | None:
    """GET /health answers status ok and names a provider for each voice."""
    if not health or health.get("status") != "ok":
        return Problem(f"GET {url}: {health}", "status ok", "start the service")
    loaded = health.get("voices") or {}
    for voice in voices:
        if voice not in loaded or not (loaded[voice] or {}).get("provider"):
            return Problem(f"/health voices: {list(loaded)}", f"{voice} with its provider", "re-run the deploy")
    return None


def running_service_problem(health: dict | None, wanted: dict, voices: list[dict], restart: str) -> Problem | None:
    """What the running service reports in /health is what was deployed: onnxruntime, piper-tts and
    piper-gpu-server at the recorded versions (``wanted``), each voice loaded with its pinned sha256
    (``voices``: the recorded {"name", "onnx_sha256", "json_sha256"}). A missed restart fails here."""
    h = health or {}
    running = {"onnxruntime": h.get("onnxruntime"), "piper-tts": h.get("piper_tts"), "piper-gpu-server": h.get("server")}
    if running != wanted:
        return Problem(f"the service (started {h.get('started')}) runs {running}", f"{wanted}",
                       f"{restart} (or re-run the deploy, which restarts it when its inputs change)")
    for voice in voices:
        loaded = (h.get("voices") or {}).get(voice["name"], {})
        have = (loaded.get("onnx_sha256"), loaded.get("json_sha256"))
        if have != (voice["onnx_sha256"], voice["json_sha256"]):
            return Problem(f"voice {voice['name']} loaded with sha256 {have[0]} / {have[1]}",
                           f"the pinned files {voice['onnx_sha256']} / {voice['json_sha256']}", restart)
    return None


def tts_wav_problem(voice: str, text: str, answer: dict) -> Problem | None:
    """POST /tts's answer as the request probe read it (status, the WAV's channels, sample width and
    seconds): 200, mono 16-bit, 0.02-0.6 s of audio per character of text."""
    if not (answer.get("status") == 200 and answer.get("channels") == 1 and answer.get("width") == 2):
        return Problem(f"POST /tts ({voice}): {answer}", "200 with a mono 16-bit WAV",
                       "see the server log; re-run the deploy")
    seconds = answer.get("seconds") or 0.0
    if 0.02 <= seconds / len(text) <= 0.6:
        return None
    return Problem(f"{seconds:.2f} s of audio for {len(text)} characters",
                   "a plausible duration (0.02-0.6 s per character)",
                   "the voice files may not match the voice: re-run the deploy")


def tts_requires_the_api_key_problem(answer: dict, api_key_file: str) -> Problem | None:
    """POST /tts without the key is refused with 401."""
    if answer.get("status") == 401:
        return None
    return Problem(f"POST /tts without the key: {answer.get('status')}", "401",
                   f"re-run the deploy (the server reads the key from {api_key_file})")


def metrics_problem(metrics: str, stderr: str, voices: list[str]) -> Problem | None:
    """GET /metrics (Prometheus text) has a piper_tts_voice_provider series per voice (labels in any order)
    and the request counters."""
    providers = [line for line in metrics.splitlines() if line.startswith("piper_tts_voice_provider{")]
    for voice in voices:
        if not any(f'voice="{voice}"' in line and 'provider="' in line for line in providers):
            return Problem(f"GET /metrics: {' | '.join(providers) or metrics[:200] or stderr.strip()[-200:]}",
                           f"piper_tts_voice_provider naming {voice}'s provider",
                           "re-run the deploy (the server serves /metrics)")
    if "piper_tts_requests_total" not in metrics:
        return Problem("no piper_tts_requests_total", "request counters", "re-run the deploy")
    return None


# --- the systemd unit's sandbox --------------------------------------------------------------------

def parse_systemctl_show(text: str) -> dict[str, str]:
    """`systemctl show UNIT -p A -p B` -> {A: value}; a property printed on several lines (DeviceAllow=,
    one line per entry) keeps them all, one per line."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        values[key] = value if key not in values else values[key] + "\n" + value
    return values


def unit_sandbox_problem(show: str, unit: str, hardening: dict) -> Problem | None:
    """Each sandboxing property in `systemctl show` has the value the deploy wrote (``hardening``)."""
    have = parse_systemctl_show(show)
    wrong = {k: have.get(k) for k, v in hardening.items() if have.get(k) != v}
    if not wrong:
        return None
    return Problem(f"{unit}: {wrong}", f"{hardening}",
                   f"re-run the deploy; look for a drop-in that overrides the unit: systemctl cat {unit}")


def unit_gpu_devices_problem(show: str, unit: str, gpu_devices: set) -> Problem | None:
    """`systemctl show -p DeviceAllow` keeps every device CUDA needs (``gpu_devices``)."""
    allowed = set(parse_systemctl_show(show).get("DeviceAllow", "").splitlines())
    if gpu_devices <= allowed:
        return None
    return Problem(f"DeviceAllow: {sorted(allowed)}", f"{sorted(gpu_devices)} (and no PrivateDevices)",
                   f"re-run the deploy; a drop-in with PrivateDevices=yes or DeviceAllow= hides the GPU: systemctl cat {unit}")


def service_user_problem(show: str, ps_user: str, unit: str, user: str) -> Problem | None:
    """The unit's main process (`systemctl show -p MainPID`) runs as the service user (`ps -o user= -p PID`)."""
    pid = parse_systemctl_show(show).get("MainPID", "0")
    found = ps_user.strip()
    if pid != "0" and found == user:
        return None
    return Problem(f"{unit} main process {pid} runs as {found or 'nobody'}", f"user {user}",
                   f"re-run the deploy (User= in the unit); systemctl cat {unit}")


def service_writes_problem(rc: int, probe: str, stderr: str, wanted: dict, unit: str) -> Problem | None:
    """The write probe run as the service inside its mount namespace prints DIR=yes/no for each directory;
    ``wanted``: DIR -> whether the service may write there (only its log directory and state)."""
    have = {line.rsplit("=", 1)[0]: line.rsplit("=", 1)[1] == "yes" for line in probe.splitlines() if "=" in line}
    wrong = {d: ("writable" if have.get(d) else "not writable") for d, w in wanted.items() if have.get(d) != w}
    if rc == 0 and not wrong:
        return None
    found = ", ".join(filter(None, [str(wrong) if wrong else "", f"the probe failed ({rc}): {stderr.strip()[-300:]}" if rc else ""]))
    return Problem(f"as the service: {found}", "writes only to its log directory and /var/lib/piper-tts",
                   f"re-run the deploy (ProtectSystem=strict, ProtectHome=read-only, ReadWritePaths= in {unit}); "
                   f"systemctl cat {unit}")


def unit_exposure_problem(stdout: str, stderr: str, unit: str, max_exposure: float) -> Problem | None:
    """`systemd-analyze security UNIT`'s last line, "→ Overall exposure level for UNIT: 1.6 OK 🙂", gives an
    exposure of at most ``max_exposure``."""
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", stdout)
    if m and float(m.group(1)) <= max_exposure:
        return None
    return Problem((stdout.strip().splitlines() or [stderr.strip()])[-1], f"an exposure of at most {max_exposure}",
                   f"re-run the deploy; compare `systemctl cat {unit}` with the table in docs/operating.md")


# --- the performance test (plan step 9) ------------------------------------------------------------

def perf_provider_problem(service_provider: str | None) -> Problem | None:
    """A speed figure counts only for the service on CUDA."""
    if service_provider == CUDA:
        return None
    return Problem(f"the service runs on {service_provider}", f"the service on {CUDA} before it is timed",
                   "read the server's WARN line for the cause; run `python -m piper_gpu diagnose`")



def perf_run_problem(rc: int, stdout: str, stderr: str, perf: str) -> Problem | None:
    """`piper-tts-perf ...` exits 0 and its last line is the JSON result."""
    if rc != 0:
        return Problem(f"{perf} failed: {(stderr or stdout).strip()[-400:]}", "a performance run",
                       "start the service; re-run the deploy (installs the script)")
    try:
        json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Problem(f"{perf} printed no JSON result: {stdout.strip()[-400:]}", "a performance run",
                       "start the service; re-run the deploy (installs the script)")
    return None


def perf_results_problem(saved: str | None, data: dict, perf_out: str) -> Problem | None:
    """The results file the script wrote on the host (``saved``: its text, None when missing) has a service
    median for the medium texts, and the run (``data``) a CPU median."""
    try:
        stored = json.loads(saved)["sizes"]["medium"]["service_median_ms"] > 0 if saved is not None else False
    except (ValueError, KeyError, TypeError):
        stored = False
    if not stored:
        return Problem(f"{perf_out}: {'missing' if saved is None else 'no medians'}", "results JSON on the host",
                       "re-run the deploy")
    medium = ((data.get("sizes") or {}).get("medium") or {})
    if not (medium.get("cpu_median_ms") or 0) > 0:
        return Problem(str(data), "a CPU median", "see the script's error")
    return None


# --- WSL2's libcuda --------------------------------------------------------------------------------

def wsl_libcuda_problem(cached: list[str], loaded: list[str] | None, load_error: str, owners: list[str]) -> Problem | None:
    """On WSL2 every libcuda.so.1 the linker knows or the service loads is the Windows driver's, under
    /usr/lib/wsl/: a Linux driver package's libcuda.so.1 shadows it and CUDA fails with error 100.
    ``loaded``: the real paths the service's process mapped, None when loading failed (``load_error``)."""
    wrong = sorted({p for p in cached + (loaded or []) if not p.startswith("/usr/lib/wsl/")})
    if cached and loaded is not None and not wrong:
        return None
    found = (f"libcuda.so.1 in the linker cache: {cached}; the service loads {loaded or load_error[-200:]}"
             + (f" (from the package {', '.join(sorted(owners))})" if owners else ""))
    if owners:
        fix = (f"sudo apt-get purge {' '.join(sorted(owners))} && sudo ldconfig: a Linux NVIDIA driver package must "
               "not be installed inside WSL2")
    else:
        fix = (f"remove {', '.join(wrong) or 'the other libcuda.so.1'} and run sudo ldconfig; "
               "/etc/ld.so.conf.d/ld.wsl.conf must list /usr/lib/wsl/lib")
    return Problem(found, "libcuda.so.1 from /usr/lib/wsl/lib (the Windows driver's)", fix)
