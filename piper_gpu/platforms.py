"""The platform table: for each supported host, NVIDIA's repository for it, what that repository
carries for the pinned versions, the distro's Python, and where the deploy takes the CUDA libraries
and cuDNN from by default.

Each fact carries its source. What no source settles is ``None`` here and is checked on the host
at run time instead (``steps.cuda.check_sources``: after ``apt-get update`` the deploy asks apt
whether the configured sources offer each pinned package at its pinned version, and stops before
installing anything from them if not).

Sources of cuDNN, by setting (``cudnn_source``):
  repo        libcudnn9-cuda-12=<version>-1 from NVIDIA's CUDA repository for the platform, held
  local-repo  the operator's cudnn-local-repo-<distro>-<release>_1.0-1_amd64.deb (NVIDIA's local installer)
  archive     NVIDIA's redistributable cudnn-linux-x86_64-<version>_cuda12-archive.tar.xz (sha256 pinned)
  wheel       NVIDIA's nvidia-cudnn-cu12==<version> wheel in the Piper venv
  local-deb   an operator-supplied libcudnn9-cuda-12 .deb
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    key: str
    title: str
    distro: str  # os-release ID
    version: str  # os-release VERSION_ID
    wsl: bool
    #: NVIDIA's repository path under .../compute/cuda/repos/ (None: the deploy does not use one by default)
    repo_path: str | None
    #: The distro's python3 (what the venv gets; the lock is chosen by it)
    python: str
    #: Does ``repo_path`` carry cuda-toolkit-12-4 / libcudnn9-cuda-12 9.1.1? None: not settled by a
    #: source, checked on the host at run time.
    repo_has_cuda_12_4: bool | None
    repo_has_cudnn_9_1: bool | None
    #: Defaults: cuda_source ("apt" | "pip") and cudnn_source
    cuda_source: str
    cudnn_source: str
    #: Why these defaults, in one line (the README's platform table shows it)
    evidence: str
    #: Default cuda_install with cuda_source="apt": "toolkit", or "compiler" where the toolkit's
    #: profilers cannot install (piper_gpu/naming.py: cuda_packages)
    cuda_install: str = "toolkit"


PLATFORMS: tuple[Platform, ...] = (
    Platform(
        key="wsl2-ubuntu2204", title="WSL2, Ubuntu 22.04", distro="ubuntu", version="22.04", wsl=True,
        repo_path="wsl-ubuntu",
        # Python: Ubuntu 22.04 ships python3 3.10 (packages.ubuntu.com jammy python3 3.10.6-1~22.04).
        python="3.10",
        # NVIDIA's CUDA on WSL user guide: install the toolkit from the WSL-Ubuntu repository, whose
        # packages carry no Linux driver; its cuda-toolkit-12-x meta packages follow each release.
        repo_has_cuda_12_4=True,
        # NVIDIA/TransformerEngine#1404: the wsl-ubuntu repository has no cuDNN package (they took
        # cuDNN from the ubuntu2404 repository instead); the users' plan downloads cuDNN by hand.
        repo_has_cudnn_9_1=False,
        cuda_source="apt", cudnn_source="archive",
        evidence="toolkit from wsl-ubuntu (NVIDIA's WSL guide); wsl-ubuntu has no cuDNN (NVIDIA/TransformerEngine#1404): "
                 "cuDNN from NVIDIA's redistributable archive, sha256 from redistrib_9.1.1.json, or your local-repo installer",
    ),
    Platform(
        key="wsl2-ubuntu2404", title="WSL2, Ubuntu 24.04", distro="ubuntu", version="24.04", wsl=True,
        repo_path="wsl-ubuntu",
        python="3.12",  # Ubuntu 24.04 ships python3 3.12 (packages.ubuntu.com noble python3 3.12.3)
        # The WSL-Ubuntu repository is one for every Ubuntu release (NVIDIA's WSL guide), so it carries
        # CUDA 12.4, built before 24.04, and Ubuntu 24.04 no longer ships libtinfo5 (noble's Packages
        # indexes have libtinfo6 only): apt on 24.04 answers "nsight-systems-2023.4.4 : Depends: libtinfo5
        # but it is not installable" (distantmagic/paddler tutorial-installing-llamacpp-aws-cuda.md), and
        # the toolkit installs once jammy's libtinfo5 alone is added (Shimasaki2021/docker_pytorch's
        # ubuntu:24.04 Dockerfile with wsl-ubuntu's keyring; Bioconductor/Contributions#3672). On WSL2
        # 24.04 the compiler and library packages install without it (Kari-N0/space-catalogue setup-log.md).
        # So nvcc and the runtime libraries (cuda-compiler-12-4 + cuda-libraries-12-4), without the
        # toolkit's tools; apt's simulation checks it on the host.
        repo_has_cuda_12_4=True,
        repo_has_cudnn_9_1=False,  # as above: no cuDNN in wsl-ubuntu
        cuda_source="apt", cudnn_source="archive", cuda_install="compiler",
        evidence="CUDA 12.4 from wsl-ubuntu (one WSL repository for every Ubuntu) without its tools: the toolkit "
                 "pulls nsight-systems-2023.4.4, which depends on libtinfo5, which 24.04 no longer ships "
                 "(apt's answer in distantmagic/paddler's 24.04 tutorial; Bioconductor/Contributions#3672), "
                 "so cuda-compiler-12-4 + cuda-libraries-12-4; no cuDNN there: redistributable archive",
    ),
    Platform(
        key="ubuntu2204", title="Ubuntu 22.04", distro="ubuntu", version="22.04", wsl=False,
        repo_path="ubuntu2204",
        python="3.10",
        # NVIDIA's CUDA 12.4.1 container images for Ubuntu 22.04 install cuda-*-12-4 from this
        # repository and pin libcudnn9-cuda-12=9.1.0.70-1 from it (nvidia/container-images cuda
        # Dockerfiles). 9.1.1.17-1 itself: checked at run time.
        repo_has_cuda_12_4=True,
        repo_has_cudnn_9_1=None,
        cuda_source="apt", cudnn_source="repo",
        evidence="NVIDIA's CUDA 12.4.1 Ubuntu 22.04 images install CUDA 12.4 and libcudnn9-cuda-12 from ubuntu2204 "
                 "(9.1.1.17-1 confirmed on the host by the source check)",
    ),
    Platform(
        key="debian12", title="Debian 12", distro="debian", version="12", wsl=False,
        repo_path="debian12",
        python="3.11",  # Debian 12 ships python3 3.11 (python3 3.11.2-1+b1)
        # NVIDIA lists debian12 among its CUDA repositories (cuda-repo-management README, key 3bf863cc);
        # which 12.4 and cuDNN 9.1.1 packages it carries is not settled here: checked at run time.
        repo_has_cuda_12_4=None,
        repo_has_cudnn_9_1=None,
        cuda_source="apt", cudnn_source="repo",
        evidence="debian12 repository (NVIDIA's cuda-repo-management); its 12.4 and cuDNN 9.1.1 packages are "
                 "confirmed on the host by the source check",
    ),
    Platform(
        key="ubuntu2404", title="Ubuntu 24.04", distro="ubuntu", version="24.04", wsl=False,
        repo_path="ubuntu2404",
        python="3.12",
        # NVIDIA's CUDA 12.4.1 images have no Ubuntu 24.04 variant (24.04 appears from CUDA 12.5.1);
        # Ubuntu 24.04 first appears in cuDNN 9.5's support matrix. So neither CUDA 12.4 nor cuDNN 9.1.1
        # comes from the ubuntu2404 repository: NVIDIA's wheels from PyPI instead.
        repo_has_cuda_12_4=False,
        repo_has_cudnn_9_1=False,
        cuda_source="pip", cudnn_source="wheel",
        evidence="no CUDA 12.4 for 24.04 (NVIDIA's 12.4.1 images stop at 22.04) and no cuDNN 9.1.1 (24.04 from cuDNN 9.5): "
                 "NVIDIA's nvidia-*-cu12 wheels in the venv",
    ),
)

SUPPORTED_PYTHONS = tuple(sorted({p.python for p in PLATFORMS}, key=lambda v: tuple(int(x) for x in v.split("."))))


class UnsupportedPlatform(LookupError):
    pass


def find(distro: str, version: str, wsl: bool) -> Platform:
    for p in PLATFORMS:
        if (p.distro, p.version, p.wsl) == (distro, version, wsl):
            return p
    names = ", ".join(p.title for p in PLATFORMS)
    raise UnsupportedPlatform(
        f"{'WSL2 with ' if wsl else ''}{distro} {version} (/etc/os-release) is not in the platform table ({names}). "
        "Use a supported distro, or set cuda_repo_path and cudnn_source for what your mirror serves"
    )


def by_key(key: str) -> Platform:
    for p in PLATFORMS:
        if p.key == key:
            return p
    raise UnsupportedPlatform(f"platform {key!r}: known are {', '.join(p.key for p in PLATFORMS)}")
