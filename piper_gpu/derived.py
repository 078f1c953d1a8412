"""What follows from the operator's inputs (inputs.py), as functions of the groups each needs:
NVIDIA's names for the pinned versions, what the venv must hold (the lock, the CUDA wheels), pip's
source arguments, the cuDNN archive, a voice's URL, the sources an offline bundle replaces. Nothing
here is set by an operator, so none of it is in the input classes; ``Settings`` (settings.py) exposes
these for the composed settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import quote

from piper_gpu import locks, matrix, naming, sources
from piper_gpu.inputs import Cuda, Sources, Venv, Voice, Voices
from piper_gpu.matrix import CUDNN_ARCHIVE_SHA256


# --- NVIDIA's names for these versions (naming.py) ------------------------------------------
def cuda_major(cuda: Cuda) -> int:
    return naming.major_minor(cuda.cuda_version, "cuda_version")[0]


def cuda_dash(cuda: Cuda) -> str:
    return naming.cuda_dash(cuda.cuda_version)


def cuda_home(cuda: Cuda) -> str:
    return naming.cuda_home(cuda.cuda_version)


def cuda_lib_dir(cuda: Cuda, arch: str = "x86_64") -> str:
    return naming.cuda_lib_dir(cuda.cuda_version, arch)


def cuda_packages(cuda: Cuda) -> list[str]:
    return naming.cuda_packages(cuda.cuda_version, cuda.cuda_install)


def cudnn_major(cuda: Cuda) -> int:
    return naming.major_minor(cuda.cudnn_version, "cudnn_version")[0]


def cudnn_release(cuda: Cuda) -> str:
    return naming.release(cuda.cudnn_version)


def cudnn_built_for(cuda: Cuda) -> str:
    """The CUDA version the cuDNN build targets: the setting, else the matrix's."""
    return cuda.cudnn_cuda_version or matrix.cudnn_built_for(cuda.cudnn_version)


def cudnn_package(cuda: Cuda) -> str:
    return naming.cudnn_package(cuda.cudnn_version, cuda.cuda_version)


def cudnn_apt_version(cuda: Cuda) -> str:
    return naming.cudnn_apt_version(cuda.cudnn_version)


def cudnn_wheel(cuda: Cuda) -> str:
    return naming.cudnn_wheel(cuda.cuda_version)


def cudnn_archive_name(cuda: Cuda) -> str:
    return naming.cudnn_archive_name(cuda.cudnn_version, cuda.cuda_version)


def cudnn_apt_installed(cuda: Cuda) -> bool:
    """cuDNN is an apt package on the host (pinned and held): from NVIDIA's repository, or from the
    local installer's repository unless its .deb is unpacked under /opt (cudnn_deb_extract)."""
    return cuda.cudnn_source == "repo" or (cuda.cudnn_source == "local-repo" and not cuda.cudnn_deb_extract)


# --- sources ----------------------------------------------------------------------------------
def cudnn_archive(cuda: Cuda, src: Sources) -> tuple[str, str | None]:
    """(URL, sha256) of the redistributable archive: the settings, else NVIDIA's layout under
    ``cudnn_redist_url`` (cudnn/linux-x86_64/<name>) and the digest of NVIDIA's manifest."""
    url = src.cudnn_archive_url or naming.cudnn_archive_url(src.cudnn_redist_url, cuda.cudnn_version,
                                                            cuda.cuda_version)
    digest = src.cudnn_archive_sha256 or CUDNN_ARCHIVE_SHA256.get((cuda.cudnn_version, "x86_64", cuda_major(cuda)))
    return url, digest


def pip_source_args(src: Sources) -> list[str]:
    args = ["--no-index"] if src.pip_no_index else ["--index-url", src.pip_index_url]
    if src.pip_find_links:
        args += ["--find-links", src.pip_find_links]
    return args


def voice_url(voices: Voices, voice: Voice, suffix: str) -> str:
    return naming.voice_url(voices.voices_base_url, voice, suffix)


def bundle_sources(src: Sources, voices: Voices, cuda: Cuda) -> dict[str, Any]:
    """The source settings of a deploy from ``src.bundle_url`` (the layout ``piper_gpu.bundle`` writes)."""
    b = src.bundle_url.rstrip("/")
    return {
        "cuda_repo_url": f"{b}/{naming.BUNDLE_CUDA_REPOS}",
        "pip_no_index": True,
        "pip_find_links": f"{b}/{naming.BUNDLE_WHEELS}/",
        "voices": tuple(dataclasses.replace(v, url=f"{b}/{naming.bundle_voice_dir(v.name)}") for v in voices.voices),
        # the file names as the bundle holds them, percent-encoded in its URL (bundle_url is one)
        "cudnn_deb_url": f"{b}/{quote(naming.bundle_cudnn_file(src.cudnn_deb_url))}" if src.cudnn_deb_url else None,
        "cudnn_local_repo_url": (f"{b}/{quote(naming.bundle_cudnn_file(src.cudnn_local_repo_url))}"
                                 if src.cudnn_local_repo_url else None),
        "cudnn_archive_url": f"{b}/{quote(naming.bundle_cudnn_file(cudnn_archive(cuda, src)[0]))}",
    }


#: The cuDNN files a cudnn_source does not read (their settings are left out of ``local_sources``).
_UNUSED_CUDNN_FILES = {
    "local-repo": {"cudnn_deb_url", "cudnn_archive_url"},
    "local-deb": {"cudnn_local_repo_url", "cudnn_archive_url"},
    "archive": {"cudnn_local_repo_url", "cudnn_deb_url"},
}


def local_sources(cuda: Cuda, src: Sources, voices: Voices) -> dict[str, tuple[str, str]]:
    """The sources this deploy reads that are files or directories on the host: setting -> (path,
    "file" | "dir") (after ``for_host``, which turned Windows paths into the host's); the cuDNN
    files of the sources not chosen are left out."""
    unused = _UNUSED_CUDNN_FILES.get(cuda.cudnn_source, {"cudnn_local_repo_url", "cudnn_deb_url", "cudnn_archive_url"})
    groups = (src, voices)
    named = [(name, getattr(g, name), kind) for name, kind in sources.SOURCE_SETTINGS.items()
             for g in groups if hasattr(g, name) and kind != "url" and name not in unused]
    named += [(f"voices[{v.name}].url", v.url, "dir") for v in voices.voices]
    out = {}
    for name, value, kind in named:
        path = sources.local_path(value) if value and not sources.problem(name, value, kind) else None
        if path is not None:
            out[name] = (path, kind)
    return out


# --- the install plan for a host --------------------------------------------------------------
def cuda_wheel_requirements(cuda: Cuda) -> dict[str, str]:
    """NVIDIA's wheels the venv holds: the CUDA libraries with cuda_source="pip", cuDNN with
    cudnn_source="wheel" (which cuda_source="pip" implies)."""
    wheels = dict(cuda.cuda_wheels) if cuda.cuda_source == "pip" else {}
    if cuda.cudnn_source == "wheel" or cuda.cuda_source == "pip":
        wheels[cudnn_wheel(cuda)] = cuda.cudnn_version
    return wheels


def lock(venv: Venv) -> dict[str, str]:
    """The venv lock without the top-level pins: the resolved lock for ``python_version`` under
    the ``python_lock`` pins (after ``for_host``, ``python_lock`` is the whole lock)."""
    base = locks.load(venv.python_version) if venv.python_version in locks.available() else {}
    return {**base, **venv.python_lock}


def python_requirements(venv: Venv, cuda: Cuda) -> dict[str, str]:
    """Every distribution the venv must hold, pinned (name -> version)."""
    reqs = lock(venv)
    reqs["piper-tts"] = venv.piper_tts_version
    reqs["onnxruntime-gpu"] = venv.onnxruntime_gpu_version
    reqs.update(cuda_wheel_requirements(cuda))
    return reqs


def venv_requirements(venv: Venv, cuda: Cuda) -> dict[str, str]:
    """``python_requirements`` and the server package (built from server/ by the deploy, not on PyPI)."""
    from piper_gpu import server_wheel

    return {**python_requirements(venv, cuda), server_wheel.DIST: server_wheel.source_version()}
