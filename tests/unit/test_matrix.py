"""The default onnxruntime-gpu against the pinned cuDNN, from the real wheels: every cuDNN symbol its
CUDA provider imports is exported by cuDNN 9.1.1's libraries (an ORT built against a newer cuDNN
minor could import one that 9.1.1 lacks, and fail to load with "undefined symbol")."""

import subprocess
import zipfile

from tests.lab.mirror import NVIDIA_WHEELS, _py_subdir, fetch_wheels
from piper_gpu.matrix import DEFAULT_ORT_GPU

PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"


def _symbols(path, defined: bool) -> set[str]:
    args = ["nm", "-D", "--defined-only" if defined else "--undefined-only", str(path)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def test_default_ort_imports_only_cudnn_symbols_that_cudnn_9_1_1_exports(tmp_path):
    ort = fetch_wheels(_py_subdir("3.11"), {"onnxruntime-gpu": DEFAULT_ORT_GPU}, "onnxruntime-gpu")["onnxruntime-gpu"]
    cudnn = fetch_wheels("wheels", {"nvidia-cudnn-cu12": NVIDIA_WHEELS["nvidia-cudnn-cu12"]}, "cuDNN")["nvidia-cudnn-cu12"]
    with zipfile.ZipFile(ort) as zf:
        zf.extract(PROVIDER, tmp_path)
    imported = {s for s in _symbols(tmp_path / PROVIDER, defined=False) if s.startswith("cudnn")}
    exported = set()
    with zipfile.ZipFile(cudnn) as zf:
        for name in zf.namelist():
            if name.startswith("nvidia/cudnn/lib/libcudnn") and name.endswith(".so.9"):
                zf.extract(name, tmp_path)
                exported |= _symbols(tmp_path / name, defined=True)
                (tmp_path / name).unlink()
    assert len(imported) > 50, sorted(imported)  # the provider really links cuDNN
    assert imported <= exported, sorted(imported - exported)
