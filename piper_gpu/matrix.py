"""The version matrix: which releases of ONNX Runtime, CUDA and cuDNN fit together, and for which
Python. Facts about NVIDIA's and Microsoft's published binaries, each with its source; the deploy
checks them before anything on a host changes (``Settings.validate`` and ``for_host``).
"""

from __future__ import annotations

from dataclasses import dataclass

from piper_gpu.errors import SettingsError
from piper_gpu.naming import major_minor, release


@dataclass(frozen=True)
class OrtBuild:
    cuda: int  # CUDA major its CUDA provider links (libcublasLt.so.<cuda>)
    cudnn: int  # cuDNN major it links (libcudnn.so.<cudnn>)
    pythons: tuple[str, ...]  # Python versions with a manylinux x86_64 wheel that Requires-Python admits


_PY_38_312 = ("3.8", "3.9", "3.10", "3.11", "3.12")
_PY_310_313 = ("3.10", "3.11", "3.12", "3.13")
_PY_311_314 = ("3.11", "3.12", "3.13", "3.14")

#: onnxruntime-gpu releases on PyPI. Python columns: the cp tags of each release's manylinux x86_64
#: wheels and their Requires-Python, read from PyPI's simple index (PEP 691 JSON) on 2026-11-25:
#: 1.18-1.19 cp38-cp312 (no Requires-Python); 1.20 cp310-cp313 (none); 1.21-1.23 cp310-cp313
#: (>=3.10); 1.24.1 cp311-cp314 (>=3.10, but no cp310 wheel); 1.24.4 and later cp311-cp314 (>=3.11).
#: CUDA/cuDNN columns: the sonames the wheel's libonnxruntime_providers_cuda.so links (objdump -p):
#: the PyPI 1.18.0 and 1.18.1 wheels link libcublasLt.so.11 and libcudnn.so.8 (CUDA 11.8 builds; the
#: CUDA 12 builds of 1.18 were on a separate feed, not PyPI); 1.19.0 is the first CUDA 12 / cuDNN 9
#: build on PyPI; 1.27.0 and later link CUDA 13 (their metadata names nvidia-*-cu13 extras).
ORT_GPU_BUILDS: dict[str, OrtBuild] = {
    "1.18.0": OrtBuild(11, 8, _PY_38_312),
    "1.18.1": OrtBuild(11, 8, _PY_38_312),
    "1.19.0": OrtBuild(12, 9, _PY_38_312),
    "1.19.2": OrtBuild(12, 9, _PY_38_312),
    "1.20.0": OrtBuild(12, 9, _PY_310_313),
    "1.20.2": OrtBuild(12, 9, _PY_310_313),
    "1.21.0": OrtBuild(12, 9, _PY_310_313),
    "1.21.1": OrtBuild(12, 9, _PY_310_313),
    "1.22.0": OrtBuild(12, 9, _PY_310_313),
    "1.23.0": OrtBuild(12, 9, _PY_310_313),
    "1.23.2": OrtBuild(12, 9, _PY_310_313),
    "1.24.1": OrtBuild(12, 9, _PY_311_314),
    "1.24.4": OrtBuild(12, 9, _PY_311_314),
    "1.25.0": OrtBuild(12, 9, _PY_311_314),
    "1.25.1": OrtBuild(12, 9, _PY_311_314),
    "1.27.0": OrtBuild(13, 9, _PY_311_314),
    "1.31.1": OrtBuild(13, 9, _PY_311_314),
}

#: The default: the newest release whose CUDA provider links the CUDA 12 libraries and cuDNN 9
#: directly (ldd shows every dependency, so verify sees a missing one), imports only cuDNN symbols
#: that cuDNN 9.1.1 exports (tests/unit/test_matrix.py checks this against the real wheels), and has
#: wheels for every supported Python (3.10 to 3.12). 1.21-1.23 load cuDNN's sub-libraries only at
#: run time; 1.24 and later have no cp310 wheel (Ubuntu 22.04's Python). From 1.20 on, the CUDA
#: Conv/ConvTranspose kernels keep one cuDNN plan per node and rebuild it on every new input shape
#: (microsoft/onnxruntime PR 19470, issue 23006); the server's shape-stable synthesis (server stable.py)
#: never gives a session a second shape, so that costs nothing there. 1.19.2 would cache Conv plans per
#: shape but benchmarks ConvTranspose exhaustively on each new shape, which hurts the whole-model fallback.
#: Against the pinned cuDNN 9.1.1 this is outside NVIDIA's guarantee (an application built against 9.z only on
#: 9.y, y >= z: https://docs.nvidia.com/deeplearning/cudnn/backend/latest/developer/forward-compatibility.html):
#: the 1.20.2 wheel was built against cuDNN >= 9.5 (its CUDA provider holds a string that cudnn-frontend compiles
#: only under CUDNN_VERSION >= 90500: https://github.com/NVIDIA/cudnn-frontend/blob/v1.7.0/include/cudnn_frontend/backend/kernel_cache.h#L84-L90),
#: 9.5 by its build images (https://github.com/microsoft/onnxruntime/pull/23244,
#: https://github.com/microsoft/onnxruntime/pull/26267). No CUDA 12 wheel on PyPI is provably inside it (1.19.2
#: records no cuDNN minor). It is kept on the evidence in docs/server.md ("The onnxruntime-gpu pin and cuDNN
#: 9.1.1"): it imports only symbols 9.1.1 exports, and cudnn-frontend checks the loaded cuDNN before newer
#: features; verify's CUDA-session inference names a cuDNN failure with its fix (verify/checks.py cudnn_failure).
DEFAULT_ORT_GPU = "1.20.2"

#: cuDNN releases -> the CUDA version the CUDA-12 build of that release targets.
#: NVIDIA's cuDNN 9.1.0/9.1.1 support matrix: "the recommended configuration ... CUDA 12.4".
CUDNN_BUILT_FOR: dict[str, str] = {
    "9.1.0": "12.4",
    "9.1.1": "12.4",
    "9.12.0": "12.9",
}

#: sha256 of NVIDIA's redistributable cuDNN archives (cudnn-linux-<arch>-<version>_cuda<major>-archive.tar.xz),
#: as NVIDIA's manifest redistrib_<release>.json lists them (quoted for 9.1.1 in TensorFlow/XLA's
#: hermetic-CUDA mirror script). An operator with another release sets cudnn_archive_sha256 from
#: https://developer.download.nvidia.com/compute/cudnn/redist/redistrib_<release>.json.
CUDNN_ARCHIVE_SHA256: dict[tuple[str, str, int], str] = {
    ("9.1.1.17", "x86_64", 12): "992b4be26899cc4c618bb1f6989261df7d0a9f9032b2217bf1fce9dd3228c904",
    ("9.1.1.17", "x86_64", 11): "15a8b77123c1911606b45703691ad0990892c6098070ffab0bcaa003183a7dcb",
}

#: NVIDIA's PyPI wheels of the CUDA 12.4 libraries ONNX Runtime's CUDA provider links (cuda_source
#: "pip"); cuDNN's wheel comes from ``cudnn_version``. Versions are CUDA 12.4.1's (NVIDIA's
#: CUDA 12.4.1 component manifest; each a published nvidia-*-cu12 release).
CUDA_WHEELS_12_4: dict[str, str] = {
    "nvidia-cuda-runtime-cu12": "12.4.127",
    "nvidia-cublas-cu12": "12.4.5.8",
    "nvidia-cufft-cu12": "11.2.1.3",
    "nvidia-curand-cu12": "10.3.5.147",
    "nvidia-cuda-nvrtc-cu12": "12.4.127",
}

#: Every distribution that provides the ``onnxruntime`` module. Exactly one may be installed.
ONNXRUNTIME_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-training",
    "ort-nightly",
    "ort-nightly-gpu",
)


def cudnn_built_for(cudnn_version: str) -> str:
    """The CUDA version the CUDA-12 build of a cuDNN release targets (CUDNN_BUILT_FOR)."""
    try:
        return CUDNN_BUILT_FOR[release(cudnn_version)]
    except KeyError:
        raise SettingsError(
            f"cuDNN {cudnn_version}: the CUDA version this build targets is not in the matrix "
            f"({', '.join(sorted(CUDNN_BUILT_FOR))}); set piper_gpu_cudnn_cuda_version "
            "(NVIDIA's cuDNN release notes name it, e.g. '12.4')"
        ) from None


def check(ort: str, cuda: str, cudnn: str, cudnn_built: str, python: str | None, error: type[Exception]) -> None:
    """Raise ``error`` naming the conflict and the fix unless onnxruntime-gpu ``ort``, CUDA ``cuda``,
    cuDNN ``cudnn`` (built for CUDA ``cudnn_built``) and the host's ``python`` (None: not known yet)
    fit together."""
    cuda_major, cuda_minor = major_minor(cuda, "cuda_version")
    cudnn_major = major_minor(cudnn, "cudnn_version")[0]
    build = ORT_GPU_BUILDS.get(ort)
    if build is None:
        raise error(
            f"onnxruntime-gpu {ort} is not in the version matrix (known: {', '.join(ORT_GPU_BUILDS)}); pick a known "
            "release or add it to ORT_GPU_BUILDS (piper_gpu/matrix.py) with the CUDA and cuDNN majors its PyPI "
            "wheel links")
    if python and python not in build.pythons:
        fits = [v for v, b in ORT_GPU_BUILDS.items() if python in b.pythons and (b.cuda, b.cudnn) == (cuda_major, cudnn_major)]
        raise error(
            f"onnxruntime-gpu {ort} has no wheel for this host's Python {python} (its wheels: Python "
            f"{', '.join(build.pythons)}); releases for CUDA {cuda_major} / cuDNN {cudnn_major} with a Python "
            f"{python} wheel: {', '.join(fits) or 'none'}")
    if build.cuda != cuda_major:
        raise error(
            f"onnxruntime-gpu {ort} is built for CUDA {build.cuda}, but cuda_version is {cuda}: its CUDA provider "
            f"would look for libcublasLt.so.{build.cuda} and fail. Use an onnxruntime-gpu release built for CUDA "
            f"{cuda_major} (e.g. {DEFAULT_ORT_GPU}) or a CUDA {build.cuda} toolkit")
    if build.cudnn != cudnn_major:
        raise error(
            f"onnxruntime-gpu {ort} is built for cuDNN {build.cudnn}, but cudnn_version is {cudnn} (cuDNN "
            f"{cudnn_major}); ONNX Runtime built with cuDNN {build.cudnn}.x cannot load libcudnn.so.{cudnn_major}")
    built_major, built_minor = major_minor(cudnn_built, "cudnn_cuda_version")
    if built_major != cuda_major or built_minor > cuda_minor:
        raise error(
            f"cuDNN {cudnn} is built for CUDA {cudnn_built}, but cuda_version is {cuda}: pick a cuDNN built for "
            f"CUDA {cuda_major}.x no newer than {cuda} (cuDNN 9.1.1 for 12.4)")
