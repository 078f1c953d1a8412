"""Which shared libraries ONNX Runtime's CUDA provider loads, and which package provides each."""

from __future__ import annotations

from piper_gpu.settings import Settings

CUDNN_PARTS = ["", "_adv", "_cnn", "_engines_precompiled", "_engines_runtime_compiled", "_graph", "_heuristic", "_ops"]
ROLES = ["cudart", "cublas", "cublasLt", "cufft", "curand", "nvrtc"] + [f"cudnn{p}" for p in CUDNN_PARTS]


def provider_libraries(s: Settings) -> dict[str, tuple[str, str]]:
    """role -> (soname, apt package that ships it, NVIDIA's names) for the configured versions."""
    m, dash = s.cuda_major, s.cuda_dash
    libs = {
        "cudart": (f"libcudart.so.{m}", f"cuda-cudart-{dash}"),
        "cublas": (f"libcublas.so.{m}", f"libcublas-{dash}"),
        "cublasLt": (f"libcublasLt.so.{m}", f"libcublas-{dash}"),
        "cufft": (f"libcufft.so.{m - 1}", f"libcufft-{dash}"),
        "curand": ("libcurand.so.10", f"libcurand-{dash}"),
        "nvrtc": (f"libnvrtc.so.{m}", f"cuda-nvrtc-{dash}"),
    }
    for part in CUDNN_PARTS:
        libs[f"cudnn{part}"] = (f"libcudnn{part}.so.{s.cudnn_major}", f"{s.cudnn_package}={s.cudnn_apt_version}")
    return libs


def reinstall_fix(package: str) -> str:
    held = " --allow-change-held-packages" if "=" in package else ""
    return f"sudo apt-get install --reinstall{held} {package} && sudo ldconfig (or re-run the deploy)"
