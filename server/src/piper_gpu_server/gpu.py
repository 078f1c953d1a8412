"""The GPU as the driver shows it: a probe of the CUDA driver before the CUDA provider is asked for,
and NVML (nvidia-ml-py) for the name, utilisation and memory in /health and /metrics.

WSL2 keeps the driver's libraries in /usr/lib/wsl/lib, which is not always in the linker path of a
service: both the probe and NVML fall back to that directory."""

from __future__ import annotations

import ctypes
import subprocess

WSL_LIB_DIR = "/usr/lib/wsl/lib"


def cuda_driver_problem() -> str | None:
    """None when the CUDA driver library loads and cuInit(0) succeeds; else why not.

    onnxruntime-gpu's CUDA provider loads libcuda.so.1 while it initialises and crashes the process
    (SIGSEGV, seen with 1.20.2) when the driver is absent, instead of falling back to the CPU. So the
    CUDA provider is only requested once the driver loads and reports a device (error 100, "no
    CUDA-capable device", is what a Linux libcuda.so.1 shadowing WSL2's gives)."""
    errors = []
    for lib in ("libcuda.so.1", f"{WSL_LIB_DIR}/libcuda.so.1"):
        try:
            driver = ctypes.CDLL(lib)
        except OSError as exc:
            errors.append(str(exc))
            continue
        try:
            rc = driver.cuInit(0)
        except AttributeError:
            return f"{lib} has no cuInit: it is not an NVIDIA driver library"
        if rc != 0:
            return (f"the CUDA driver ({lib}) loads but cuInit(0) fails with CUDA error {rc}"
                    + (" (no CUDA-capable device: on WSL2 a Linux libcuda.so.1 may shadow /usr/lib/wsl/lib's; "
                       "ldconfig -p | grep libcuda)" if rc == 100 else ""))
        return None
    return ("the CUDA driver library libcuda.so.1 does not load (" + "; ".join(errors) + "): "
            "on WSL2 /usr/lib/wsl/lib must be in the linker path (ldconfig -p | grep libcuda) and the "
            "Windows NVIDIA driver installed; on Linux install the NVIDIA driver")


class Gpu:
    """GPU 0 through NVML when the driver has it, else nvidia-smi for its name, else none."""

    def __init__(self):
        self.handle = None
        self.name: str | None = None
        self.how = "no NVIDIA driver found (libnvidia-ml.so.1 / nvidia-smi missing)"
        if self._nvml():
            return
        for smi in ("nvidia-smi", f"{WSL_LIB_DIR}/nvidia-smi"):
            try:
                out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if out.returncode == 0 and out.stdout.strip():
                self.name, self.how = out.stdout.strip().splitlines()[0], f"nvidia-smi ({smi})"
                return

    def _nvml(self) -> bool:
        try:
            import pynvml
        except ImportError:
            return False
        for preload in (None, f"{WSL_LIB_DIR}/libnvidia-ml.so.1"):
            try:
                if preload:
                    # loaded by path, the library answers pynvml's later dlopen by its soname
                    ctypes.CDLL(preload, mode=ctypes.RTLD_GLOBAL)
                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                name = pynvml.nvmlDeviceGetName(self.handle)
                self.name = name.decode(errors="replace") if isinstance(name, bytes) else name
                self.how = f"NVML ({preload or 'libnvidia-ml.so.1'}, nvidia-ml-py)"
                return True
            except (OSError, pynvml.NVMLError):
                self.handle = None
        return False

    def process_mib(self, pid: int | None = None) -> int | None:
        """The GPU memory NVML gives for this process (``pid``) over every GPU, in MiB; None where NVML is
        absent, lists the process on no GPU (before it holds any, on WSL2, in a container with its own pids)
        or gives no figure for it."""
        if self.handle is None:
            return None
        import os

        import pynvml

        pid = os.getpid() if pid is None else pid
        used, listed = 0, False
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.pid == pid:
                        if process.usedGpuMemory is None:  # nvidia-ml-py's NVML_VALUE_NOT_AVAILABLE
                            return None
                        used, listed = used + process.usedGpuMemory, True
        except pynvml.NVMLError:
            return None
        return used // (1 << 20) if listed else None

    def sample(self) -> dict:
        """{'utilization_percent', 'memory_used_bytes', 'memory_total_bytes'}; {} without NVML."""
        if self.handle is None:
            return {}
        import pynvml

        out = {}
        try:
            out["utilization_percent"] = pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        except pynvml.NVMLError:
            pass
        try:
            mem = pynvml.nvmlDeviceGetMemoryInfo(self.handle)
            out.update(memory_used_bytes=mem.used, memory_total_bytes=mem.total)
        except pynvml.NVMLError:
            pass
        return out
