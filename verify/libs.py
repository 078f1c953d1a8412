"""Which shared libraries ONNX Runtime's CUDA provider loads, and which package provides each."""

from __future__ import annotations

from conftest import Record as Settings

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
    cudnn_owner = f"{s.cudnn_package}={s.cudnn_apt_version}"
    if s.cudnn_source == "wheel":
        cudnn_owner = f"pip:{s.cudnn_wheel}=={s.cudnn_version}"
    elif s.cudnn_source == "archive" or s.cudnn_deb_extract:
        cudnn_owner = f"unpacked:cuDNN {s.cudnn_version} ({s.cudnn_source})"
    for part in CUDNN_PARTS:
        libs[f"cudnn{part}"] = (f"libcudnn{part}.so.{s.cudnn_major}", cudnn_owner)
    if s.cuda_source == "pip":  # the owners are NVIDIA's wheels in the venv
        wheels = {"cudart": "cuda-runtime", "cublas": "cublas", "cublasLt": "cublas", "cufft": "cufft",
                  "curand": "curand", "nvrtc": "cuda-nvrtc"}
        pins = s.cuda_wheel_requirements
        for role, (soname, _) in libs.items():
            wheel = s.cudnn_wheel if role.startswith("cudnn") else f"nvidia-{wheels[role]}-cu{m}"
            libs[role] = (soname, f"pip:{wheel}=={pins.get(wheel, '?')}")
    return libs


def reinstall_fix(package: str) -> str:
    """The command that puts a package's files back; a pinned (held) package keeps its hold,
    which ``apt-get install --reinstall`` drops. ``pip:NAME==VERSION``: a wheel in the venv."""
    if package.startswith("unpacked:"):
        return (f"{package[9:]} is unpacked under /opt by the deploy: delete that directory and re-run the deploy "
                "(it unpacks the checksummed file again and runs ldconfig)")
    if package.startswith("pip:"):
        return (f"reinstall the wheel into the Piper venv: <venv>/bin/pip install --no-deps --force-reinstall "
                f"{package[4:]} && sudo ldconfig (or re-run the deploy)")
    if "=" in package:
        name = package.split("=")[0]
        return (f"sudo apt-get install --reinstall --allow-change-held-packages {package} && "
                f"sudo apt-mark hold {name} && sudo ldconfig (or re-run the deploy)")
    return f"sudo apt-get install --reinstall {package} && sudo ldconfig (or re-run the deploy)"


def cudnn_fix(s: Settings) -> str:
    return reinstall_fix(provider_libraries(s)["cudnn"][1])


def fix_for_missing(s: Settings, sonames: list[str]) -> str:
    """The fix for libraries that do not load: reinstall the packages that ship them."""
    owners = {soname: package for soname, package in provider_libraries(s).values()}
    packages = sorted({owners[n] for n in sonames if n in owners})
    if not packages:
        return "install the missing libraries and run sudo ldconfig (or re-run the deploy)"
    return "; ".join(reinstall_fix(p).split(" (or re-run")[0] for p in packages) + " (or re-run the deploy)"
