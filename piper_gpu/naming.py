"""NVIDIA's naming rules, as functions of the pinned versions, a voice's URL in Hugging Face's layout,
and the layout of this project's offline bundle. No settings, no host: the same versions always give
the same names.

NVIDIA's names, with where they come from:
- apt meta packages ``cuda-toolkit-X-Y`` / ``cuda-compiler-X-Y`` / ``cuda-libraries-X-Y`` (NVIDIA's
  cuda-meta-X-Y source package; e.g. packages.ubuntu.com's cuda-toolkit-13-2, repackaged from it,
  depends on cuda-libraries-13-2 and cuda-compiler-13-2) and the prefix /usr/local/cuda-X.Y (NVIDIA's CUDA Installation Guide for Linux,
  post-installation actions: ``export PATH=/usr/local/cuda-12.5/bin...`` in the 12.5.1 edition);
- ``libcudnn9-cuda-12`` at ``<version>-1`` (NVIDIA's CUDA 12.4.1 Ubuntu 22.04 Dockerfile pins
  libcudnn9-cuda-12=9.1.0.70-1; ../shared/DESIGN.md);
- the redistributable ``cudnn-linux-x86_64-9.1.1.17_cuda12-archive.tar.xz`` under
  ``cudnn/redist/cudnn/linux-x86_64/`` (NVIDIA's redistrib_9.1.1.json);
- the wheels ``nvidia-cudnn-cu12`` and their ``nvidia/<name>/lib`` directories (PyPI).
"""

from __future__ import annotations

import re

from piper_gpu.errors import SettingsError


def major_minor(version: str, what: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)\.(\d+)", str(version))
    if not m:
        raise SettingsError(f"{what}: {version!r} is not a version like 12.4")
    return int(m.group(1)), int(m.group(2))


def release(version: str, parts: int = 3) -> str:
    """9.1.1.17 -> 9.1.1"""
    return ".".join(str(version).split(".")[:parts])


def cuda_dash(cuda_version: str) -> str:
    """12.4 -> 12-4, as in cuda-toolkit-12-4."""
    return "{}-{}".format(*major_minor(cuda_version, "cuda_version"))


def cuda_home(cuda_version: str) -> str:
    return "/usr/local/cuda-{}.{}".format(*major_minor(cuda_version, "cuda_version"))


def cuda_lib_dir(cuda_version: str, arch: str = "x86_64") -> str:
    return f"{cuda_home(cuda_version)}/targets/{arch}-linux/lib"


def cuda_packages(cuda_version: str, install: str) -> list[str]:
    """The apt meta-packages for an install level (NVIDIA's cuda-meta-X-Y grouping: cuda-toolkit-X-Y
    depends on cuda-compiler-X-Y, cuda-libraries-X-Y and cuda-tools-X-Y, the profilers among them):

      toolkit   cuda-toolkit-X-Y: everything, nvcc and the profilers (Nsight Systems) included
      compiler  cuda-compiler-X-Y + cuda-libraries-X-Y: nvcc and the runtime libraries, no profilers
                and no -dev packages (headers): enough for the service, not to build CUDA programs
      runtime   cuda-libraries-X-Y: the runtime libraries only

    "auto" (the platform's level, resolved by Settings.for_host) counts as toolkit until resolved.
    Never ``cuda`` or ``cuda-runtime-X-Y``: both depend on cuda-drivers, a Linux driver."""
    dash = cuda_dash(cuda_version)
    if install == "runtime":
        return [f"cuda-libraries-{dash}"]
    if install == "compiler":
        return [f"cuda-compiler-{dash}", f"cuda-libraries-{dash}"]
    return [f"cuda-toolkit-{dash}"]


def cudnn_package(cudnn_version: str, cuda_version: str) -> str:
    """libcudnn9-cuda-12"""
    return (f"libcudnn{major_minor(cudnn_version, 'cudnn_version')[0]}"
            f"-cuda-{major_minor(cuda_version, 'cuda_version')[0]}")


def cudnn_apt_version(cudnn_version: str) -> str:
    return f"{cudnn_version}-1"


def cudnn_wheel(cuda_version: str) -> str:
    """nvidia-cudnn-cu12"""
    return f"nvidia-cudnn-cu{major_minor(cuda_version, 'cuda_version')[0]}"


def cudnn_archive_name(cudnn_version: str, cuda_version: str, arch: str = "x86_64") -> str:
    """cudnn-linux-x86_64-9.1.1.17_cuda12-archive.tar.xz"""
    return f"cudnn-linux-{arch}-{cudnn_version}_cuda{major_minor(cuda_version, 'cuda_version')[0]}-archive.tar.xz"


def cudnn_archive_url(redist_url: str, cudnn_version: str, cuda_version: str, arch: str = "x86_64") -> str:
    return f"{redist_url.rstrip('/')}/cudnn/linux-{arch}/{cudnn_archive_name(cudnn_version, cuda_version, arch)}"


def voice_url(base_url: str, voice, suffix: str) -> str:
    """A voice's file: under its own ``url``, else under ``base_url`` in Hugging Face's layout of
    rhasspy/piper-voices (``voice.hf_path()``: zh/zh_CN/huayan/medium)."""
    base = voice.url or f"{base_url.rstrip('/')}/{voice.hf_path()}"
    return f"{base.rstrip('/')}/{voice.name}{suffix}"


def wheel_lib_dir(wheel: str) -> str:
    """nvidia-cuda-runtime-cu12 -> nvidia/cuda_runtime/lib (relative to site-packages)."""
    return f"nvidia/{re.sub(r'^nvidia-|-cu[0-9]+$', '', wheel).replace('-', '_')}/lib"


# --- this project's offline bundle (piper_gpu.bundle writes it, bundle_url reads it) ------------
BUNDLE_CUDA_REPOS = "cuda/repos"
BUNDLE_WHEELS = "pypi"


def bundle_voice_dir(name: str) -> str:
    return f"voices/{name}"


def file_name(source: str) -> str:
    """The file name a source (URL, file:// URL, path, Windows path) ends in, percent-decoded for URLs."""
    from urllib.parse import unquote, urlsplit

    if re.match(r"^[a-z][a-z0-9+.-]*://", source, re.I):
        source = unquote(urlsplit(source).path)
    return re.split(r"[\\/]", source.rstrip("/\\"))[-1]


def bundle_cudnn_file(url: str) -> str:
    return f"cudnn/{file_name(url)}"
