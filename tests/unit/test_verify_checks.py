"""verify's decisions (verify/checks.py), every check's, proven both ways on canned host outputs in the real
tools' formats: each check passes on a healthy host's answer and fails on the fault it exists for, naming the
cause and the fix. No GPU, no host."""

import ast
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("verify_checks", Path(__file__).parents[2] / "verify" / "checks.py")
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
PARTS = ["", "_adv", "_cnn", "_engines_precompiled", "_engines_runtime_compiled", "_graph", "_heuristic", "_ops"]
LIB = "/usr/lib/x86_64-linux-gnu"
FIX = "sudo apt-get install --reinstall --allow-change-held-packages libcudnn9-cuda-12=9.1.1.17-1"


def text(problem) -> str:
    assert problem is not None, "the check passed on a fault"
    return " | ".join(problem)


# --- nvidia-smi ------------------------------------------------------------------------------------

SMI_TABLE_LINUX = """\
Thu Dec  3 11:40:02 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA H200                    On  |   00000000:19:00.0 Off |                    0 |
| N/A   31C    P0             76W /  700W |       4MiB / 143771MiB |      0%      Default |
|                                         |                        |             Disabled |
+-----------------------------------------+------------------------+----------------------+
"""
SMI_TABLE_OLD_DRIVER = SMI_TABLE_LINUX.replace("550.54.15      CUDA Version: 12.4", "470.223.02     CUDA Version: 11.4")
SMI_NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
                 "latest NVIDIA driver is installed and running.")


def test_gpu_query_and_cuda_version_are_read_from_nvidia_smi():
    assert checks.parse_gpu_query("NVIDIA H200, 550.54.15\nNVIDIA GeForce RTX 4070, 560.94\n") == [
        ("NVIDIA H200", "550.54.15"), ("NVIDIA GeForce RTX 4070", "560.94")]
    assert checks.parse_gpu_query(SMI_NO_DRIVER) == []
    assert checks.parse_cuda_version(SMI_TABLE_LINUX) == "12.4"
    assert checks.parse_cuda_version(SMI_NO_DRIVER) is None


H200 = [("NVIDIA H200", "550.54.15")]


def gate(gpus, cuinit=0, error="", **kw):
    settings = {"use_gpu": True, "allow_no_gpu": False, "is_wsl": False, **kw}
    return checks.gpu_gate(gpus, error, cuinit, **settings)


def test_gpu_gate_passes_with_a_gpu_that_initialises():
    assert gate(H200, 0) == (None, None)


def test_gpu_gate_fails_without_nvidia_smi_unless_no_gpu_is_allowed():
    skip, problem = gate([], None, error="nvidia-smi: not found; /usr/lib/wsl/lib/nvidia-smi: not found")
    assert skip is None
    msg = text(problem)
    assert "no NVIDIA GPU on this host" in msg and "nvidia-smi: not found" in msg
    assert "install the NVIDIA driver" in msg and "allow_no_gpu=False" in msg


def test_gpu_gate_names_the_windows_driver_on_wsl2_and_forbids_a_linux_one():
    msg = text(gate([], None, error="nvidia-smi: not found", is_wsl=True)[1])
    assert "NVIDIA driver on Windows" in msg and "never install a Linux NVIDIA driver inside WSL2" in msg


def test_gpu_gate_fails_when_nvidia_smi_cannot_reach_the_driver():
    msg = text(gate([], None, error=f"/usr/bin/nvidia-smi: rc 9: {SMI_NO_DRIVER}")[1])
    assert "couldn't communicate with the NVIDIA driver" in msg and "install the NVIDIA driver" in msg


def test_gpu_gate_fails_when_cuinit_fails_on_a_gpu_host():
    msg = text(gate(H200, 100)[1])
    assert "cuInit(0) gives 100" in msg and "CUDA_ERROR_NO_DEVICE" in msg and "NVIDIA driver" in msg
    assert "libcuda.so.1 does not load" in text(gate(H200, "libcuda.so.1: cannot open shared object file")[1])


def test_gpu_gate_skips_only_where_the_settings_allow_no_gpu():
    skip, problem = gate([], None, error="nvidia-smi: not found", allow_no_gpu=True)
    assert problem is None and "no NVIDIA GPU on this host" in skip and "allow_no_gpu=True" in skip
    skip, problem = gate([("NVIDIA GeForce RTX 4070", "560.94")], 100, allow_no_gpu=True, is_wsl=True)
    assert problem is None and "cuInit(0) gives 100" in skip
    skip, problem = gate([], None, use_gpu=False)
    assert problem is None and "use_gpu=False" in skip


def test_driver_cuda_version_both_ways():
    assert checks.driver_cuda_problem("550.54.15", checks.parse_cuda_version(SMI_TABLE_LINUX), "12.4", False) is None
    msg = text(checks.driver_cuda_problem("470.223.02", checks.parse_cuda_version(SMI_TABLE_OLD_DRIVER), "12.4", False))
    assert "supports CUDA 11.4" in msg and ">= 12.4" in msg and "update the driver" in msg
    assert "Windows" in text(checks.driver_cuda_problem("560.94", None, "12.4", True))


# --- ldconfig -p, ldd --------------------------------------------------------------------------------

LDCONFIG = f"""\
412 libs found in cache `/etc/ld.so.cache'
\tlibcudnn_ops.so.9 (libc6,x86-64) => {LIB}/libcudnn_ops.so.9
\tlibcudnn.so.9 (libc6,x86-64) => {LIB}/libcudnn.so.9
\tlibcudnn.so.9 (libc6,x86-64) => /lib/x86_64-linux-gnu/libcudnn.so.9
\tlibcublasLt.so.12 (libc6,x86-64) => /usr/local/cuda-12.4/targets/x86_64-linux/lib/libcublasLt.so.12
\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/wsl/lib/libcuda.so.1
\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => {LIB}/libc.so.6
\tlibc.so.6 (libc6) => /usr/lib/i386-linux-gnu/libc.so.6
"""


def test_ldconfig_cache_is_read_in_order_64_bit_only():
    cache = checks.parse_ldconfig(LDCONFIG)
    assert cache["libcudnn.so.9"] == [f"{LIB}/libcudnn.so.9", "/lib/x86_64-linux-gnu/libcudnn.so.9"]
    assert cache["libc.so.6"] == [f"{LIB}/libc.so.6"]
    assert "412" not in " ".join(cache)


def test_linker_resolves_both_ways():
    cache = checks.parse_ldconfig(LDCONFIG)
    assert checks.linker_resolves_problem("libcublasLt.so.12", cache, "", "reinstall libcublas-12-4") is None
    msg = text(checks.linker_resolves_problem("libcufft.so.11", cache, "", "sudo apt-get install --reinstall libcufft-12-4"))
    assert "libcufft.so.11: cannot open shared object file" in msg and "--reinstall libcufft-12-4" in msg
    msg = text(checks.linker_resolves_problem("libcufft.so.11", cache, "/usr/local/cuda-12.4/lib64/libcufft.so.11", "x"))
    assert "file at /usr/local/cuda-12.4/lib64/libcufft.so.11" in msg and "linker config + ldconfig" in msg


LDD_GOOD = f"""\
\tlinux-vdso.so.1 (0x00007ffd7b5f2000)
\tlibcublasLt.so.12 => /usr/local/cuda-12.4/targets/x86_64-linux/lib/libcublasLt.so.12 (0x00007f3c1c000000)
\tlibcudnn.so.9 => {LIB}/libcudnn.so.9 (0x00007f3c1bc00000)
\tlibc.so.6 => {LIB}/libc.so.6 (0x00007f3c1ba1f000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f3c4a1e5000)
"""
LDD_BAD = LDD_GOOD.replace("libcublasLt.so.12 => /usr/local/cuda-12.4/targets/x86_64-linux/lib/libcublasLt.so.12 "
                           "(0x00007f3c1c000000)", "libcublasLt.so.12 => not found")


def test_provider_ldd_both_ways():
    fix_for = lambda missing: f"reinstall the owners of {missing}"  # noqa: E731
    assert checks.provider_ldd_problem(0, LDD_GOOD, "", fix_for) is None
    msg = text(checks.provider_ldd_problem(0, LDD_BAD, "", fix_for))
    assert "libcublasLt.so.12 not found" in msg and "reinstall the owners of ['libcublasLt.so.12']" in msg
    assert "ldd fails" in text(checks.provider_ldd_problem(1, "", "ldd: ./x.so: No such file or directory", fix_for))


# --- cuDNN -----------------------------------------------------------------------------------------

def test_cudnn_version_and_cudart_both_ways():
    assert checks.cudnn_version_problem(90101, "9.1.1", FIX) is None
    msg = text(checks.cudnn_version_problem(90100, "9.1.1", FIX))
    assert "cudnnGetVersion() = 90100 (cuDNN 9.1.0)" in msg and FIX in msg
    assert checks.cudnn_cudart_problem(12040, "12.4", 9, FIX) is None
    assert checks.cudnn_cudart_problem(12020, "12.4", 9, FIX) is None
    msg = text(checks.cudnn_cudart_problem(11080, "12.4", 9, FIX))
    assert "built for CUDA 11.8" in msg and FIX in msg
    assert "built for CUDA 12.9" in text(checks.cudnn_cudart_problem(12090, "12.4", 9, FIX))


SHOWHOLD = "cuda-keyring\nlibcudnn9-cuda-12\n"


def test_cudnn_package_pinned_and_held_both_ways():
    pkg, ver = "libcudnn9-cuda-12", "9.1.1.17-1"
    # dpkg-query's ${db:Status-Abbrev} is three letters, padded: "hi " held+installed (apt-mark hold), "ii " installed
    assert checks.cudnn_package_problem(pkg, ver, "hi |9.1.1.17-1\n", SHOWHOLD, FIX) is None
    assert checks.cudnn_package_problem(pkg, ver, "ii |9.1.1.17-1\n", SHOWHOLD, FIX) is None
    msg = text(checks.cudnn_package_problem(pkg, ver, "hi |9.1.0.70-1\n", SHOWHOLD, FIX))
    assert "libcudnn9-cuda-12 9.1.0.70-1" in msg and "9.1.1.17-1 installed" in msg and FIX in msg
    assert "not installed" in text(checks.cudnn_package_problem(pkg, ver, "", SHOWHOLD, FIX))
    assert "dpkg status 'rc'" in text(checks.cudnn_package_problem(pkg, ver, "rc |9.1.1.17-1\n", SHOWHOLD, FIX))
    assert "dpkg status 'hiR'" in text(checks.cudnn_package_problem(pkg, ver, "hiR|9.1.1.17-1\n", SHOWHOLD, FIX))
    assert "dpkg status 'iF'" in text(checks.cudnn_package_problem(pkg, ver, "iF |9.1.1.17-1\n", SHOWHOLD, FIX))
    msg = text(checks.cudnn_package_problem(pkg, ver, "ii |9.1.1.17-1\n", "cuda-keyring\n", FIX))
    assert "not held" in msg and "sudo apt-mark hold libcudnn9-cuda-12" in msg


DPKG_L = "/.\n/usr\n/usr/lib\n/usr/lib/x86_64-linux-gnu\n" + "".join(
    f"{LIB}/libcudnn{p}.so.9.1.1\n" for p in PARTS) + "/usr/share/doc/libcudnn9-cuda-12/copyright\n" + "".join(
    f"{LIB}/libcudnn{p}.so.9\n" for p in PARTS)


def test_cudnn_package_files_both_ways():
    pkg, cache = "libcudnn9-cuda-12", checks.parse_ldconfig(LDCONFIG)
    real = {f"{LIB}/libcudnn.so.9": f"{LIB}/libcudnn.so.9.1.1"}
    assert checks.cudnn_package_files_problem(pkg, DPKG_L, [], cache, 9, PARTS, FIX, real) is None
    msg = text(checks.cudnn_package_files_problem(pkg, DPKG_L.replace("libcudnn_ops.so.9\n", "x\n"), [], cache, 9,
                                                  PARTS, FIX, real))
    assert "`dpkg -L libcudnn9-cuda-12` lists no libcudnn_ops.so.9" in msg and FIX in msg
    msg = text(checks.cudnn_package_files_problem(pkg, DPKG_L, [f"{LIB}/libcudnn_cnn.so.9.1.1"], cache, 9, PARTS, FIX))
    assert "files deleted" in msg and "libcudnn_cnn.so.9.1.1" in msg
    other = checks.parse_ldconfig("\tlibcudnn.so.9 (libc6,x86-64) => /usr/local/lib/libcudnn.so.9\n")
    msg = text(checks.cudnn_package_files_problem(pkg, DPKG_L, [], other, 9, PARTS, FIX))
    assert "resolves libcudnn.so.9 to /usr/local/lib/libcudnn.so.9" in msg and "remove the other cuDNN" in msg
    assert "nothing (not in `ldconfig -p`)" in text(checks.cudnn_package_files_problem(pkg, DPKG_L, [], {}, 9, PARTS, FIX))


ARCHIVE_LIB = "/opt/cudnn-9.1.1.17-cuda12/lib"
ARCHIVE_LISTING = [f"libcudnn{p}.so.9" for p in PARTS] + [f"libcudnn{p}.so.9.1.1" for p in PARTS] + ["libcudnn.so"]
HEADER = """/* cudnn_version.h */
#ifndef CUDNN_VERSION_H_
#define CUDNN_VERSION_H_

#define CUDNN_MAJOR 9
#define CUDNN_MINOR 1
#define CUDNN_PATCHLEVEL 1

#define CUDNN_VERSION (CUDNN_MAJOR * 10000 + CUDNN_MINOR * 100 + CUDNN_PATCHLEVEL)
#endif
"""
ARCHIVE_CACHE = checks.parse_ldconfig(f"\tlibcudnn.so.9 (libc6,x86-64) => {ARCHIVE_LIB}/libcudnn.so.9\n")


def test_cudnn_archive_both_ways():
    args = ("archive", ARCHIVE_LIB)
    assert checks.cudnn_unpacked_problem(*args, ARCHIVE_LISTING, HEADER, ARCHIVE_CACHE, "9.1.1", 9, PARTS, FIX) is None
    msg = text(checks.cudnn_unpacked_problem(*args, [], HEADER, ARCHIVE_CACHE, "9.1.1", 9, PARTS, FIX))
    assert f"{ARCHIVE_LIB}: no libcudnn.so.9" in msg and "directory empty or missing" in msg and FIX in msg
    msg = text(checks.cudnn_unpacked_problem(*args, ARCHIVE_LISTING, HEADER.replace("PATCHLEVEL 1", "PATCHLEVEL 0"),
                                             ARCHIVE_CACHE, "9.1.1", 9, PARTS, FIX))
    assert "/opt/cudnn-9.1.1.17-cuda12/include/cudnn_version.h: cuDNN 9.1.0" in msg
    assert "no version found" in text(checks.cudnn_unpacked_problem(*args, ARCHIVE_LISTING, None, ARCHIVE_CACHE,
                                                                    "9.1.1", 9, PARTS, FIX))
    msg = text(checks.cudnn_unpacked_problem(*args, ARCHIVE_LISTING, HEADER, checks.parse_ldconfig(LDCONFIG), "9.1.1",
                                             9, PARTS, FIX))
    assert f"resolves libcudnn.so.9 to {LIB}/libcudnn.so.9" in msg and "piper-gpu-cuda.conf" in msg


def test_cudnn_deb_unpacked_takes_the_release_from_the_file_names():
    lib = "/opt/cudnn-9.1.1.17-cuda12/usr/lib/x86_64-linux-gnu"
    cache = checks.parse_ldconfig(f"\tlibcudnn.so.9 (libc6,x86-64) => {lib}/libcudnn.so.9\n")
    assert checks.cudnn_unpacked_problem("local-deb .deb unpacked", lib, ARCHIVE_LISTING, None, cache, "9.1.1", 9,
                                         PARTS, FIX) is None
    old = [n.replace("9.1.1", "9.1.0") for n in ARCHIVE_LISTING]
    msg = text(checks.cudnn_unpacked_problem("local-deb .deb unpacked", lib, old, None, cache, "9.1.1", 9, PARTS, FIX))
    assert f"the file names in {lib}: cuDNN 9.1.0" in msg and FIX in msg


def test_cudnn_wheel_both_ways():
    lib = "/home/piper/piper_env/.venv/lib/python3.11/site-packages/nvidia/cudnn/lib"
    cache = checks.parse_ldconfig(f"\tlibcudnn.so.9 (libc6,x86-64) => {lib}/libcudnn.so.9\n")
    listing = [f"libcudnn{p}.so.9" for p in PARTS] + ["__init__.py"]
    wheel, fix = "nvidia-cudnn-cu12", "pip install --no-deps --force-reinstall nvidia-cudnn-cu12==9.1.1.17"
    assert checks.cudnn_wheel_problem(wheel, "9.1.1.17", "9.1.1.17", lib, listing, cache, 9, PARTS, fix) is None
    msg = text(checks.cudnn_wheel_problem(wheel, "9.1.1.17", "9.1.0.70", lib, listing, cache, 9, PARTS, fix))
    assert "nvidia-cudnn-cu12 9.1.0.70 in the venv" in msg and fix in msg
    assert "not installed" in text(checks.cudnn_wheel_problem(wheel, "9.1.1.17", None, lib, listing, cache, 9, PARTS, fix))
    msg = text(checks.cudnn_wheel_problem(wheel, "9.1.1.17", "9.1.1.17", lib, listing[1:], cache, 9, PARTS, fix))
    assert "no libcudnn.so.9" in msg
    msg = text(checks.cudnn_wheel_problem(wheel, "9.1.1.17", "9.1.1.17", lib, listing, {}, 9, PARTS, fix))
    assert "nothing (not in `ldconfig -p`)" in msg and "re-run the deploy" in msg


def test_cudnn_sublibraries_both_ways():
    ok = {"libcudnn_graph": 0, "libcudnn_ops": 0, "libcudnn_cnn": 0, "libcudnn_adv": 0}
    assert checks.cudnn_sublibraries_problem(LIB, {}, ok, "9.1.1", 9, FIX) is None
    msg = text(checks.cudnn_sublibraries_problem(LIB, {}, {**ok, "libcudnn_ops": 1002}, "9.1.1", 9, FIX))
    assert "'libcudnn_ops': 1002" in msg and "mixed in" in msg and FIX in msg
    msg = text(checks.cudnn_sublibraries_problem(LIB, {"libcudnn_ops.so.9": "/usr/local/lib/libcudnn_ops.so.9"}, ok,
                                                 "9.1.1", 9, FIX))
    assert f"sub-libraries outside {LIB}" in msg
    assert "not in the linker cache" in text(checks.cudnn_sublibraries_problem(None, {}, ok, "9.1.1", 9, FIX))


# --- ONNX Runtime ------------------------------------------------------------------------------------

def test_available_providers_both_ways():
    assert checks.available_providers_problem(["TensorrtExecutionProvider", CUDA, CPU], "") is None
    msg = text(checks.available_providers_problem(["AzureExecutionProvider", CPU], ""))
    assert "['AzureExecutionProvider', 'CPUExecutionProvider']" in msg and "CPU onnxruntime" in msg
    assert "No module named 'onnxruntime'" in text(checks.available_providers_problem(
        None, "ModuleNotFoundError: No module named 'onnxruntime'"))


def test_session_runs_an_inference_on_cuda_both_ways():
    voice = "en_US-joe-medium"
    assert checks.session_problem(voice, {"providers": [CUDA, CPU], "samples": 30976}, "") is None
    msg = text(checks.session_problem(voice, {"providers": [CPU], "samples": 30976}, ""))
    assert "session providers ['CPUExecutionProvider']" in msg and "fell back to the CPU" in msg
    lazy = ("onnxruntime.capi.onnxruntime_pybind11_state.Fail: [ONNXRuntimeError] : 1 : FAIL : "
            "Could not load library libcudnn_engines_precompiled.so.9")
    msg = text(checks.session_problem(voice, {"providers": [CUDA, CPU], "error": lazy}, ""))
    assert "libcudnn_engines_precompiled.so.9" in msg and "inference on CUDAExecutionProvider fails" in msg
    assert "gave no audio" in text(checks.session_problem(voice, {"providers": [CUDA, CPU], "samples": 0}, ""))
    assert "Traceback" in text(checks.session_problem(voice, None, "Traceback (most recent call last): ..."))


# What onnxruntime-gpu >= 1.20 raises when cuDNN's frontend cannot build a Conv with the loaded cuDNN, as the
# SESSION script's traceback.format_exc(limit=2) would hold it. The message is quoted from
# https://github.com/microsoft/onnxruntime/issues/23301 (onnxruntime built from source, its cuDNN at run time in
# /usr/local/cuda-12.4), up to where the quote there is cut; EPFail is the Python class of code 11, EP_FAIL.
CUDNN_FE_RUN_ERROR = (
    "Traceback (most recent call last):\n"
    '  File "<stdin>", line 12, in <module>\n'
    '  File "/home/piper/piper_env/.venv/lib/python3.10/site-packages/onnxruntime/capi/onnxruntime_inference_collection.py", '
    "line 266, in run\n"
    "    return self._sess.run(output_names, input_feed, run_options)\n"
    "onnxruntime.capi.onnxruntime_pybind11_state.EPFail: [ONNXRuntimeError] : 11 : EP_FAIL : Non-zero status code "
    "returned while running Conv node. Name:'/features/features.0/Conv' Status Message: Failed to initialize CUDNN "
    "Frontend/home/ec2-user/onnxruntime/onnxruntime/core/providers/cuda/cudnn_fe_call.cc:99 std::conditional_t<THRW, "
    "void, onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, const char*, SUCCTYPE, const "
    "char*, const char*, int) [with ERRTYPE = cudnn_frontend::error_object; bool THRW = true; SUCCTYPE = "
    "cudnn_frontend::error_code_t; std::conditional_t<THRW, void, onnxruntime::common::Status> = void] "
    "/home/ec2-user/onnxruntime/onnxruntime/core/providers/cuda/cudnn_fe_call.cc:91 std::conditional_t<THRW, void, "
    "onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, const char*, SUCCTYPE, const char*, "
    "const char*, int) [with ERRTYPE = cudnn_frontend::error_object; bool THRW = true; SUCCTYPE = "
    "cudnn_frontend::error_code_t; std::conditional_t<THRW, void, onnxruntime::common::Status> = void] CUDNN_FE "
    "failure 11: CUDNN_BACKEND_API_FAILED ; GPU=0 ; hostname=sg-gpu-1 ; "
    "file=/home/ec2-user/onnxruntime/onnxruntime/core/providers/cuda/nn/conv.cc ; line=224 ;\n")

# onnxruntime's own log line (stderr) for a plan cuDNN's frontend could not find, quoted from
# https://github.com/microsoft/onnxruntime/issues/26274 (the release build's pipeline, cuDNN 9.8).
CUDNN_FE_LOG = (
    "2025-10-10 02:11:48.266220354 [E:onnxruntime:YOLOv4, sequential_executor.cc:572 ExecuteKernel] Non-zero status "
    "code returned while running Conv node. Name:'StatefulPartitionedCall/model/conv2d_1/Conv2D' Status Message: "
    "Failed to initialize CUDNN Frontend/onnxruntime_src/onnxruntime/core/providers/cuda/cudnn_fe_call.cc:99 "
    "std::conditional_t<THRW, void, onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, const "
    "char*, SUCCTYPE, const char*, const char*, int) [with ERRTYPE = cudnn_frontend::error_object; bool THRW = true; "
    "SUCCTYPE = cudnn_frontend::error_code_t; std::conditional_t<THRW, void, common::Status> = void] CUDNN_FE failure "
    "8: HEURISTIC_QUERY_FAILED ; GPU=0 ; hostname=177c8d853272 ; "
    "file=/onnxruntime_src/onnxruntime/core/providers/cuda/nn/conv.cc ; line=238 ; "
    "expr=s_.cudnn_fe_graph->create_execution_plans({heur_mode}); \n")

# cuDNN's status for a sub-library that did not load, as onnxruntime logs it (stderr), quoted from
# https://github.com/bytedeco/javacpp-presets/issues/1797 (onnxruntime 1.27/1.28 with a cuDNN redistributable).
CUDNN_SUBLIBRARY_LOG = (
    "2026-07-31 10:03:34.439074469 [E:onnxruntime:default, cudnn_fe_call.cc:39 CudaErrString<cudnn_frontend::"
    "error_object>] CUDNN_BACKEND_TENSOR_DESCRIPTOR cudnnFinalize failedptrDesc->finalize() cudnn_status: "
    "CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED\n")


def test_session_names_a_cudnn_frontend_failure_and_its_fix():
    """The failure an onnxruntime-gpu built against a newer cuDNN (1.20-1.23: 9.5) shows on an older one: the
    Conv's cuDNN frontend graph or plan cannot be built. The check names that cause, the cuDNN the build needs
    and the pin that avoids the frontend."""
    msg = text(checks.session_problem("en_US-joe-medium", {"providers": [CUDA, CPU], "error": CUDNN_FE_RUN_ERROR}, ""))
    assert "inference on CUDAExecutionProvider fails" in msg
    assert "cuDNN's frontend could not build the convolution" in msg
    assert "(CUDNN_FE failure 11: CUDNN_BACKEND_API_FAILED)" in msg
    assert "built against (its PyPI wheels 1.20 to 1.23 against cuDNN 9.5" in msg
    assert "9.5 or newer for 1.20-1.23: piper_gpu_cudnn_version" in msg
    assert "piper_gpu_onnxruntime_gpu_version=1.19.2" in msg
    assert "The onnxruntime-gpu pin and cuDNN 9.1.1" in msg


def test_session_names_a_cudnn_frontend_failure_from_the_log():
    """The same failure read from onnxruntime's log on stderr: when the run's error holds only a short summary,
    and when the session died (no answer)."""
    summary = {"providers": [CUDA, CPU], "error": "onnxruntime.capi.onnxruntime_pybind11_state.EPFail: ..."}
    msg = text(checks.session_problem("en_US-joe-medium", summary, CUDNN_FE_LOG))
    assert "(CUDNN_FE failure 8: HEURISTIC_QUERY_FAILED)" in msg and "piper_gpu_onnxruntime_gpu_version=1.19.2" in msg
    msg = text(checks.session_problem("en_US-joe-medium", None, CUDNN_FE_LOG + "Traceback (most recent call last): ..."))
    assert "the CUDA session fails" in msg and "cuDNN's frontend could not build the convolution" in msg


def test_session_names_cudnn_sublibraries_of_another_release():
    """cuDNN's own sub-library status comes before the frontend's failure it causes: the fix is one cuDNN
    release, not another onnxruntime; on a CPU fallback the same cause replaces the generic advice."""
    run = {"providers": [CUDA, CPU], "error": "EPFail: ... Status Message: Failed to initialize CUDNN Frontend: ..."}
    msg = text(checks.session_problem("en_US-joe-medium", run, CUDNN_SUBLIBRARY_LOG))
    assert "cuDNN reports CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED" in msg and "exactly one cuDNN release" in msg
    assert "1.19.2" not in msg
    fallback = text(checks.session_problem("en_US-joe-medium", {"providers": [CPU], "samples": 30976},
                                           CUDNN_SUBLIBRARY_LOG.replace("LOADING_FAILED", "VERSION_MISMATCH")))
    assert "cuDNN reports CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH" in fallback
    assert "fell back to the CPU: keep exactly one cuDNN release" in fallback
    assert "read the warning it printed" not in fallback


def test_session_keeps_the_generic_advice_for_other_failures():
    """A failure that is not cuDNN's (a sub-library that is not found, an out-of-memory) keeps the generic fix."""
    for error in ("onnxruntime.capi.onnxruntime_pybind11_state.Fail: [ONNXRuntimeError] : 1 : FAIL : "
                  "Could not load library libcudnn_engines_precompiled.so.9",
                  "CUDA failure 2: out of memory ; GPU=0 ; hostname=h ; file=cuda_allocator.cc ; line=47"):
        msg = text(checks.session_problem("en_US-joe-medium", {"providers": [CUDA, CPU], "error": error}, ""))
        assert "a CUDA/cuDNN library failed to load or a kernel failed" in msg and "cuDNN's frontend" not in msg


# --- the service ---------------------------------------------------------------------------------------

def health(provider):
    return {"status": "ok", "provider": provider,
            "voices": {"en_US-joe-medium": {"provider": provider, "onnx_sha256": "5b3e..."}}}


def test_health_reports_cuda_both_ways():
    assert checks.health_cuda_problem(health(CUDA), ["en_US-joe-medium"]) is None
    msg = text(checks.health_cuda_problem(health(CPU), ["en_US-joe-medium"]))
    assert "voice en_US-joe-medium on CPUExecutionProvider" in msg and "WARN line" in msg
    assert "voice zh_CN-huayan-medium on None" in text(checks.health_cuda_problem(health(CUDA), ["zh_CN-huayan-medium"]))
    assert "does not answer" in text(checks.health_cuda_problem(None, ["en_US-joe-medium"]))


def test_the_answer_itself_names_the_provider():
    assert checks.response_provider_problem({"status": 200, "provider": CUDA}) is None
    assert "X-Provider: CUDAExecutionProvider" in text(checks.response_provider_problem({"status": 200, "provider": CPU}))
    assert "'status': 503" in text(checks.response_provider_problem({"status": 503, "body": "busy"}))
    assert "None" in text(checks.response_provider_problem(None))


PMON_HEADER = ("# gpu         pid   type     sm    mem    enc    dec    jpg    ofa     fb   ccpm    command \n"
               "# Idx           #    C/G      %      %      %      %      %      %     MB     MB    name \n")
PMON_BUSY = PMON_HEADER + "    0      41234     C     37      9      -      -      -      -    812      0    python \n"
PMON_IDLE = PMON_HEADER + "    0      41234     C      -      -      -      -      -      -    812      0    python \n"
PMON_NONE = PMON_HEADER + "    0          -     -      -      -      -      -      -      -      -      -    -      \n"
PMON_OLD_LAYOUT = ("# gpu        pid  type    fb    sm   mem   enc   dec   command\n"
                   "# Idx          #   C/G    MB     %     %     %     %   name\n"
                   "    0      41234     C   812    52    14     -     -   python\n")


def test_pmon_is_read_by_its_header():
    assert checks.parse_pmon(PMON_BUSY) == {"41234": 37}
    assert checks.parse_pmon(PMON_IDLE) == {"41234": 0}
    assert checks.parse_pmon(PMON_NONE) == {}
    assert checks.parse_pmon(PMON_OLD_LAYOUT) == {"41234": 52}
    assert checks.parse_compute_apps("41234, 812\n") == {"41234": 812}
    assert checks.parse_compute_apps("41234, 812 MiB\n") == {"41234": 812}
    assert checks.parse_gpu_use("0, 4\n") == [(0, 4)]


def sampled(pmon, apps="41234, 812\n", before_apps="41234, 812\n", answer=None, gpu="0, 820\n", before_gpu="0, 812\n"):
    return {"before_apps": before_apps, "before_gpu": before_gpu,
            "answers": [answer or {"status": 200, "provider": CUDA}],
            "samples": [{"pmon": pmon, "apps": apps, "gpu": gpu}] * 3}


def test_gpu_used_during_the_request_both_ways():
    assert checks.gpu_use_problem("41234", sampled(PMON_BUSY), False) is None
    assert checks.gpu_use_problem("41234", sampled(PMON_IDLE, apps="41234, 1460\n"), False) is None  # memory grew
    msg = text(checks.gpu_use_problem("41234", sampled(PMON_IDLE), False))
    assert "SM utilisation [0, 0, 0]" in msg and "holds a CUDA context but did the work elsewhere" in msg
    msg = text(checks.gpu_use_problem("41234", sampled(PMON_NONE, apps="", before_apps=""), False))
    assert "server pid 41234 not among the GPU's compute processes" in msg and "WARN line" in msg
    msg = text(checks.gpu_use_problem("41234", sampled(PMON_BUSY, answer={"status": 200, "provider": CPU}), False))
    assert "X-Provider: CUDAExecutionProvider" in msg
    assert "no nvidia-smi sample" in text(checks.gpu_use_problem("41234", {**sampled(PMON_BUSY), "samples": []}, False))


def test_gpu_used_during_the_request_on_wsl2_reads_the_whole_gpu():
    assert checks.gpu_use_problem("41234", sampled(PMON_NONE, apps="", before_apps="", gpu="23, 1400\n"), True) is None
    msg = text(checks.gpu_use_problem("41234", sampled(PMON_NONE, apps="", before_apps="", gpu="0, 812\n"), True))
    assert "whole-GPU utilisation/memory" in msg and "WSL2 lists no processes" in msg


def test_perf_requires_the_service_on_cuda():
    assert checks.perf_provider_problem(CUDA) is None
    msg = text(checks.perf_provider_problem(CPU))
    assert "the service runs on CPUExecutionProvider" in msg and "WARN line" in msg


# --- WSL2's libcuda ----------------------------------------------------------------------------------

def test_wsl2_libcuda_both_ways():
    wsl = ["/usr/lib/wsl/lib/libcuda.so.1"]
    assert checks.wsl_libcuda_problem(wsl, ["/usr/lib/wsl/drivers/nvmdi.inf_amd64_0123/libcuda.so.1.1"], "", []) is None
    linux = [f"{LIB}/libcuda.so.1", *wsl]
    msg = text(checks.wsl_libcuda_problem(linux, [f"{LIB}/libcuda.so.550.127.05"], "", ["libnvidia-compute-550"]))
    assert "from the package libnvidia-compute-550" in msg and "sudo apt-get purge libnvidia-compute-550" in msg
    msg = text(checks.wsl_libcuda_problem(linux, None, "OSError: libcuda.so.1: cannot open shared object file", []))
    assert f"remove {LIB}/libcuda.so.1" in msg and "ld.wsl.conf" in msg
    assert "ld.wsl.conf" in text(checks.wsl_libcuda_problem([], None, "OSError", []))


# --- the driver on WSL2, the CUDA toolkit and its environment ---------------------------------------

def test_wsl2_gpu_library_path_both_ways():
    assert checks.wsl2_gpu_library_path_problem(True, LDCONFIG) is None
    msg = text(checks.wsl2_gpu_library_path_problem(False, LDCONFIG))
    assert "no /usr/lib/wsl/lib" in msg and "wsl --update" in msg
    no_wsl = "".join(line + "\n" for line in LDCONFIG.splitlines() if "libcuda.so.1" not in line)
    msg = text(checks.wsl2_gpu_library_path_problem(True, no_wsl))
    assert "libcuda.so.1 not in the linker cache" in msg and "ld.wsl.conf lists /usr/lib/wsl/lib" in msg


def test_wsl2_gpu_library_path_fails_on_a_linux_drivers_libcuda():
    """A Linux driver package's libcuda.so.1 (libnvidia-compute-550's, say) first in the cache: the linker takes
    it, not the Windows driver's, whether or not /usr/lib/wsl/lib's copy is listed after it."""
    linux = f"\tlibcuda.so.1 (libc6,x86-64) => {LIB}/libcuda.so.1\n"
    only_linux = "".join(line + "\n" for line in LDCONFIG.splitlines() if "libcuda.so.1" not in line) + linux
    msg = text(checks.wsl2_gpu_library_path_problem(True, only_linux))
    assert f"the linker takes libcuda.so.1 from {LIB}/libcuda.so.1" in msg and "wsl2_libcuda_is_the_windows_drivers" in msg
    first = LDCONFIG.replace("\tlibcuda.so.1", linux + "\tlibcuda.so.1")
    assert checks.parse_ldconfig(first)["libcuda.so.1"] == [f"{LIB}/libcuda.so.1", "/usr/lib/wsl/lib/libcuda.so.1"]
    assert f"from {LIB}/libcuda.so.1" in text(checks.wsl2_gpu_library_path_problem(True, first))
    i386 = LDCONFIG.replace("\tlibcuda.so.1", "\tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1\n\tlibcuda.so.1")
    assert checks.wsl2_gpu_library_path_problem(True, i386) is None


NVCC_12_4 = """\
nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2024 NVIDIA Corporation
Built on Thu_Mar_28_02:18:24_PDT_2024
Cuda compilation tools, release 12.4, V12.4.131
Build cuda_12.4.r12.4/compiler.34097967_0
"""
CUDA_PACKAGES = ["cuda-toolkit-12-4"]


def test_toolkit_nvcc_version_both_ways():
    assert checks.toolkit_nvcc_version_problem(0, NVCC_12_4, "", "12.4", CUDA_PACKAGES) is None
    older = NVCC_12_4.replace("release 12.4, V12.4.131", "release 12.3, V12.3.107")
    msg = text(checks.toolkit_nvcc_version_problem(0, older, "", "12.4", CUDA_PACKAGES))
    assert "nvcc: release 12.3" in msg and "release 12.4" in msg and "sudo apt-get install cuda-toolkit-12-4" in msg
    msg = text(checks.toolkit_nvcc_version_problem(127, "", "sh: 1: /usr/local/cuda-12.4/bin/nvcc: not found\n", "12.4",
                                                   ["cuda-compiler-12-4", "cuda-libraries-12-4"]))
    assert "nvcc: not found" in msg and "sudo apt-get install cuda-compiler-12-4 cuda-libraries-12-4" in msg


def test_login_shell_finds_nvcc_both_ways():
    home = "/usr/local/cuda-12.4"
    assert checks.login_shell_finds_nvcc_problem(f"{home}/bin/nvcc\n", home) is None
    msg = text(checks.login_shell_finds_nvcc_problem("", home))
    assert "nvcc not on PATH" in msg and "/etc/profile.d/piper-gpu-cuda.sh" in msg
    msg = text(checks.login_shell_finds_nvcc_problem("/usr/bin/nvcc\n", home))  # Debian's nvidia-cuda-toolkit first
    assert "login shell: /usr/bin/nvcc" in msg and f"{home}/bin/nvcc" in msg


LIB_DIRS = ["/usr/local/cuda-12.4/targets/x86_64-linux/lib", LIB]
LINKER_CONF = "".join(d + "\n" for d in LIB_DIRS)


def test_linker_config_both_ways():
    assert checks.linker_config_problem(LINKER_CONF, LIB_DIRS, []) is None
    msg = text(checks.linker_config_problem(None, LIB_DIRS, []))
    assert "no /etc/ld.so.conf.d/piper-gpu-cuda.conf" in msg and "writes the linker config" in msg
    msg = text(checks.linker_config_problem(LIB_DIRS[1] + "\n", LIB_DIRS, []))
    assert "it does not list ['/usr/local/cuda-12.4/targets/x86_64-linux/lib']" in msg and "re-run the deploy" in msg
    msg = text(checks.linker_config_problem(LINKER_CONF, LIB_DIRS, LIB_DIRS[:1]))
    assert "listed library directories missing" in msg and "installs the CUDA/cuDNN packages" in msg


def test_libraries_load_as_the_service_both_ways():
    fix_for = lambda missing: f"reinstall the owners of {missing}"  # noqa: E731
    assert checks.libraries_load_problem(0, {}, "", fix_for) is None
    failed = {"libcublasLt.so.12": "libcublasLt.so.12: cannot open shared object file: No such file or directory"}
    msg = text(checks.libraries_load_problem(0, failed, "", fix_for))
    assert "as the service: {'libcublasLt.so.12'" in msg and "reinstall the owners of ['libcublasLt.so.12']" in msg
    assert "must not rely on a shell's LD_LIBRARY_PATH" in msg
    msg = text(checks.libraries_load_problem(1, None, "runuser: user piper does not exist\n", fix_for))
    assert "runuser: user piper does not exist" in msg


# --- the venv as pip sees it -------------------------------------------------------------------------

VENV = "/home/piper/piper_env/.venv"
PIP_LIST = ('[{"name": "numpy", "version": "2.4.6"}, {"name": "onnxruntime-gpu", "version": "1.20.2"}, '
            '{"name": "piper-tts", "version": "1.8.0"}, {"name": "typing_extensions", "version": "4.16.0"}]')
PIP_LIST_CPU_TOO = PIP_LIST.replace("]", ', {"name": "onnxruntime", "version": "1.20.1"}]')
ORT_DISTS = ["onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"]
LOCK = {"numpy": "2.4.6", "onnxruntime-gpu": "1.20.2", "piper-tts": "1.8.0", "typing-extensions": "4.16.0"}


def test_pip_list_is_read_with_normalised_names():
    assert checks.parse_pip_list(PIP_LIST)["typing-extensions"] == "4.16.0"


def test_pip_sees_no_invalid_distribution_both_ways():
    assert checks.pip_sees_no_invalid_distribution_problem("", VENV) is None
    warned = f"WARNING: Ignoring invalid distribution ~nnxruntime-gpu ({VENV}/lib/python3.11/site-packages)\n"
    msg = text(checks.pip_sees_no_invalid_distribution_problem(warned, VENV))
    assert "Ignoring invalid distribution ~nnxruntime-gpu" in msg and f"rm -rf {VENV}/lib/python3*/site-packages/~*" in msg


def test_venv_files_owned_by_the_service_user_both_ways():
    assert checks.venv_files_owned_problem(0, "", "", "piper", VENV) is None
    found = f"{VENV}/lib/python3.11/site-packages/numpy (root)\n{VENV}/bin/f2py (root)\n"
    msg = text(checks.venv_files_owned_problem(0, found, "", "piper", VENV))
    assert "files not owned by piper" in msg and "numpy (root); " in msg and f"sudo chown -R piper: {VENV}" in msg
    assert "not with `sudo pip`" in msg
    msg = text(checks.venv_files_owned_problem(1, "", f"find: '{VENV}': No such file or directory", "piper", VENV))
    assert "No such file or directory" in msg


def test_pinned_distributions_match_their_record_both_ways():
    args = (LOCK | {"piper-gpu-server": "0.4.0+src.5b3e0c1a"}, VENV, "/var/lib/piper-gpu/wheels")
    assert checks.pinned_distributions_record_problem(0, {}, "", *args) is None
    bad = {"onnxruntime-gpu": [2, ["onnxruntime/capi/libonnxruntime_providers_cuda.so (missing)",
                                   "onnxruntime/capi/onnxruntime_pybind11_state.so (changed)"]],
           "piper-gpu-server": [1, ["piper_gpu_server/app.py (changed)"]]}
    msg = text(checks.pinned_distributions_record_problem(0, bad, "", *args))
    assert "onnxruntime-gpu: 2 file(s) differ from its RECORD" in msg and "libonnxruntime_providers_cuda.so (missing)" in msg
    assert f"{VENV}/bin/pip install --force-reinstall --no-deps onnxruntime-gpu==1.20.2" in msg
    assert "piper-gpu-server==0.4.0+src.5b3e0c1a --find-links /var/lib/piper-gpu/wheels" in msg
    msg = text(checks.pinned_distributions_record_problem(1, None, "ModuleNotFoundError: No module named 'x'", *args))
    assert "RECORD check fails: ModuleNotFoundError" in msg


def test_exactly_one_onnxruntime_the_gpu_build_both_ways():
    assert checks.one_onnxruntime_problem(checks.parse_pip_list(PIP_LIST), ORT_DISTS, "1.20.2", VENV) is None
    msg = text(checks.one_onnxruntime_problem(checks.parse_pip_list(PIP_LIST_CPU_TOO), ORT_DISTS, "1.20.2", VENV))
    assert "'onnxruntime': '1.20.1'" in msg and f"{VENV}/bin/pip uninstall -y onnxruntime &&" in msg
    assert "CUDA is silently ignored" in msg
    only_cpu = PIP_LIST.replace('"onnxruntime-gpu", "version": "1.20.2"', '"onnxruntime", "version": "1.20.1"')
    msg = text(checks.one_onnxruntime_problem(checks.parse_pip_list(only_cpu), ORT_DISTS, "1.20.2", VENV))
    assert "only onnxruntime-gpu 1.20.2" in msg and "--no-deps onnxruntime-gpu==1.20.2" in msg
    older = PIP_LIST.replace('"version": "1.20.2"', '"version": "1.19.2"')
    assert "'onnxruntime-gpu': '1.19.2'" in text(checks.one_onnxruntime_problem(checks.parse_pip_list(older), ORT_DISTS,
                                                                               "1.20.2", VENV))


def test_piper_tts_version_both_ways():
    assert checks.piper_tts_version_problem(checks.parse_pip_list(PIP_LIST), "1.8.0") is None
    msg = text(checks.piper_tts_version_problem(checks.parse_pip_list(PIP_LIST.replace("1.8.0", "1.3.0")), "1.8.0"))
    assert "piper-tts 1.3.0" in msg and "piper-tts 1.8.0" in msg and "re-run the deploy" in msg
    assert "piper-tts None" in text(checks.piper_tts_version_problem({}, "1.8.0"))


def test_venv_holds_every_pinned_distribution_both_ways():
    assert checks.venv_lock_problem(checks.parse_pip_list(PIP_LIST), LOCK, "/home/piper/piper_env") is None
    lock = LOCK | {"nvidia-cudnn-cu12": "9.1.1.17"}
    msg = text(checks.venv_lock_problem(checks.parse_pip_list(PIP_LIST.replace("2.4.6", "2.2.6")), lock,
                                        "/home/piper/piper_env"))
    assert "'numpy': '2.2.6'" in msg and "'nvidia-cudnn-cu12': 'missing'" in msg
    assert "/home/piper/piper_env/requirements.lock" in msg and "installs the lock" in msg


# --- the voices and the server -----------------------------------------------------------------------

ONNX_SHA = "5b3e8fd5a02c2e4e1b2a9f5f3b2d9c4e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
JSON_SHA = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
MODEL = "/home/piper/piper_models/en/en_US-joe-medium/en_US-joe-medium.onnx"


def test_voice_files_match_checksums_both_ways():
    assert checks.voice_files_problem([(MODEL, ONNX_SHA, ONNX_SHA), (MODEL + ".json", JSON_SHA, JSON_SHA)]) is None
    other = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    msg = text(checks.voice_files_problem([(MODEL, ONNX_SHA, other), (MODEL + ".json", JSON_SHA, JSON_SHA)]))
    assert f"{MODEL}: sha256 {other}" in msg and f"sha256 {ONNX_SHA}" in msg and "downloads the voice again" in msg
    msg = text(checks.voice_files_problem([(MODEL, ONNX_SHA, ONNX_SHA), (MODEL + ".json", JSON_SHA, None)]))
    assert f"{MODEL}.json: missing" in msg


def test_rendered_files_are_what_the_deploy_wrote_both_ways():
    recorded = {"/etc/piper-gpu/server.toml": ONNX_SHA, "/etc/ld.so.conf.d/piper-gpu-cuda.conf": JSON_SHA}
    assert checks.rendered_files_problem(recorded, dict(recorded), "/etc/piper-gpu/target.json") is None
    msg = text(checks.rendered_files_problem(recorded, {**recorded, "/etc/piper-gpu/server.toml": JSON_SHA},
                                             "/etc/piper-gpu/target.json"))
    assert "/etc/piper-gpu/server.toml sha256 0a1b2c3d4e5f... (deploy wrote 5b3e8fd5a02c...)" in msg
    assert "hand-edited" in msg and "restores them" in msg
    msg = text(checks.rendered_files_problem(recorded, {"/etc/piper-gpu/server.toml": ONNX_SHA}, "target.json"))
    assert "/etc/ld.so.conf.d/piper-gpu-cuda.conf missing" in msg
    assert "no installed_files in target.json" in text(checks.rendered_files_problem({}, {}, "target.json"))


def test_server_package_is_the_deployed_build_both_ways():
    site = f"{VENV}/lib/python3.11/site-packages"
    good = {"version": "0.4.0+src.5b3e0c1a", "file": f"{site}/piper_gpu_server/__init__.py"}
    assert checks.server_package_problem(0, good, "", VENV, "0.4.0+src.5b3e0c1a") is None
    msg = text(checks.server_package_problem(0, {**good, "version": "0.4.0+src.0c9d8e7f"}, "", VENV, "0.4.0+src.5b3e0c1a"))
    assert "piper-gpu-server 0.4.0+src.0c9d8e7f in the venv" in msg and "built from this deploy's server/" in msg
    msg = text(checks.server_package_problem(0, {**good, "file": "/home/piper/piper_gpu_server/__init__.py"}, "", VENV,
                                             "0.4.0+src.5b3e0c1a"))
    assert "imported from /home/piper/piper_gpu_server/__init__.py" in msg and "PYTHONPATH, a .pth file" in msg
    msg = text(checks.server_package_problem(1, None, "ModuleNotFoundError: No module named 'piper_gpu_server'\n", VENV,
                                             "0.4.0+src.5b3e0c1a"))
    assert "cannot import piper_gpu_server: ModuleNotFoundError" in msg


SERVER_TOML = "/etc/piper-gpu/server.toml"
SERVER_VALUES = {"use_gpu": True, "port": 5005, "cuda_options": "cudnn_conv_algo_search=HEURISTIC"}


def test_server_runs_with_the_deployed_config_both_ways():
    running = {"status": "ok", "config_file": SERVER_TOML, "config": {**SERVER_VALUES, "warmup": True}}
    assert checks.server_config_problem(running, SERVER_TOML, SERVER_VALUES) is None
    msg = text(checks.server_config_problem({**running, "config": {**SERVER_VALUES, "use_gpu": False}}, SERVER_TOML,
                                            SERVER_VALUES))
    assert "use_gpu=False in the running server" in msg and "use_gpu=True" in msg and "restarts the service" in msg
    msg = text(checks.server_config_problem({**running, "config_file": None}, SERVER_TOML, SERVER_VALUES))
    assert "the service runs with config None" in msg and "--config FILE" in msg
    assert "the service runs with config None" in text(checks.server_config_problem(None, SERVER_TOML, SERVER_VALUES))


LOG_START = """\
2026-12-03 11:40:02,101 INFO piper_gpu_server: start: pid=41234 server=0.4.0+src.5b3e0c1a onnxruntime=1.20.2 \
piper-tts=1.8.0 available_providers=['CUDAExecutionProvider', 'CPUExecutionProvider'] config=/etc/piper-gpu/server.toml
2026-12-03 11:40:02,180 INFO piper_gpu_server: GPU detection: NVIDIA H200 (nvidia-smi (/usr/bin/nvidia-smi)); use_gpu=True
"""
LOG_CUDA = LOG_START + ("2026-12-03 11:40:03,002 INFO piper_gpu_server: voice en_US-joe-medium: active provider "
                        "CUDAExecutionProvider (session providers ['CUDAExecutionProvider', 'CPUExecutionProvider']), "
                        "loaded in 812 ms\n")
LOG_CPU = LOG_START + ("2026-12-03 11:40:03,002 INFO piper_gpu_server: voice en_US-joe-medium: active provider "
                       "CPUExecutionProvider (session providers ['CPUExecutionProvider']), loaded in 640 ms\n")
LOG_WARN = LOG_CPU + ("2026-12-03 11:40:03,003 WARNING piper_gpu_server: voice en_US-joe-medium: GPU wanted but the "
                      "session runs on CPUExecutionProvider: libcudnn.so.9: cannot open shared object file\n")


def test_startup_log_names_providers_and_gpu_both_ways():
    voices, log = ["en_US-joe-medium"], "/var/log/piper-tts/server.log"
    assert checks.startup_log_problem(LOG_CUDA, voices, True, log) is None
    assert checks.startup_log_problem(LOG_WARN, voices, True, log) is None  # off CUDA, the cause logged
    assert checks.startup_log_problem(LOG_CPU, voices, False, log) is None  # use_gpu=False: the CPU is wanted
    msg = text(checks.startup_log_problem(LOG_CPU, voices, True, log))
    assert "voice en_US-joe-medium on CPUExecutionProvider without a WARN line" in msg and "re-run the deploy" in msg
    msg = text(checks.startup_log_problem(LOG_START, voices, True, log))
    assert "no 'active provider' line for voice en_US-joe-medium" in msg
    msg = text(checks.startup_log_problem("2026-12-03 11:40:02,101 INFO x: serving\n", voices, True, log))
    assert f"no start-up lines with available providers and GPU detection in {log}" in msg
    assert "not the deployed one" in msg
    # only the last start counts: an older start's WARN does not excuse the current one
    assert checks.startup_log_problem(LOG_WARN + LOG_CPU, voices, True, log) is not None
    assert checks.last_start(LOG_WARN + LOG_CUDA) == LOG_CUDA


# --- the service ---------------------------------------------------------------------------------------

CTL = "/usr/local/bin/piper-tts-ctl"


def test_service_running_both_ways():
    assert checks.systemd_service_running_problem("piper-tts.service", True, True) is None
    msg = text(checks.systemd_service_running_problem("piper-tts.service", False, True))
    assert "running=False enabled=True" in msg and "sudo systemctl enable --now piper-tts.service" in msg
    assert "enabled=False" in text(checks.systemd_service_running_problem("piper-tts.service", True, False))
    autostart = f"# Managed by piper-gpu-deploy\n{CTL} start >/dev/null 2>&1 || true\n"
    assert checks.profile_service_running_problem(CTL, 0, "piper-tts running (pid 41234)\n", "", autostart) is None
    msg = text(checks.profile_service_running_problem(CTL, 3, "piper-tts stopped\n", "", autostart))
    assert "piper-tts stopped" in msg and f"sudo {CTL} start" in msg
    msg = text(checks.profile_service_running_problem(CTL, 0, "piper-tts running (pid 41234)\n", "", None))
    assert "no /etc/profile.d/piper-tts-autostart.sh" in msg and "re-run the deploy" in msg


SS_LTN = """\
State  Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess
LISTEN 0      4096         0.0.0.0:5005       0.0.0.0:*
LISTEN 0      128        127.0.0.1:631        0.0.0.0:*
LISTEN 0      4096            [::]:22            [::]:*
"""
SS_OLD = """\
State      Recv-Q Send-Q Local Address:Port               Peer Address:Port
LISTEN     0      128          *:5005                     *:*
"""


def test_ss_listening_sockets_are_read():
    assert checks.parse_ss_listening(SS_LTN) == {("0.0.0.0", 5005), ("127.0.0.1", 631), ("::", 22)}
    assert checks.parse_ss_listening(SS_OLD) == {("0.0.0.0", 5005), ("::", 5005)}


#: `ss --numeric --listening --tcp --processes` as root (iproute2 6.1)
SS_LTNP = """\
State  Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess
LISTEN 0      128          0.0.0.0:5005       0.0.0.0:*    users:(("python",pid=4242,fd=7))
LISTEN 0      128        127.0.0.1:631        0.0.0.0:*    users:(("cupsd",pid=900,fd=7),("cupsd",pid=901,fd=7))
LISTEN 0      4096            [::]:22            [::]:*    users:(("sshd",pid=611,fd=4))
LISTEN 0      128        127.0.0.1:15005      0.0.0.0:*
"""


def test_ss_processes_are_read():
    assert checks.parse_ss_processes(SS_LTNP) == {("0.0.0.0", 5005): {4242}, ("127.0.0.1", 631): {900, 901},
                                                  ("::", 22): {611}, ("127.0.0.1", 15005): set()}


def test_service_listens_both_ways():
    pid = "pid file /home/piper/piper_env/run/piper-tts.pid"
    assert checks.service_listens_problem(0, SS_LTNP, "", "0.0.0.0", 5005, "4242\n", pid) is None
    assert checks.service_listens_problem(0, SS_LTNP, "", "0.0.0.0", 22, "611", pid) is None  # [::]: both families
    msg = text(checks.service_listens_problem(0, SS_LTNP, "", "127.0.0.1", 5005, "4242", pid))
    assert "nothing listens on 127.0.0.1:5005" in msg and "check the port is not taken" in msg
    assert "nothing listens on 0.0.0.0:5006" in text(checks.service_listens_problem(0, SS_LTNP, "", "0.0.0.0", 5006,
                                                                                    "4242", pid))
    msg = text(checks.service_listens_problem(127, "", "sh: 1: ss: not found", "0.0.0.0", 5005, "4242", pid))
    assert "ss fails: sh: 1: ss: not found" in msg
    # something listens, but it is not the service: an old server kept the port, ours died at bind
    msg = text(checks.service_listens_problem(0, SS_LTNP, "", "0.0.0.0", 5005, "5151", "MainPID of piper-tts.service"))
    assert "0.0.0.0:5005 is held by pid 4242, not by the service (pid 5151, MainPID of piper-tts.service)" in msg
    assert "ss -ltnp" in msg
    msg = text(checks.service_listens_problem(0, SS_LTNP, "", "0.0.0.0", 5005, "", pid))
    assert "held by pid 4242, and the service has no pid" in msg
    msg = text(checks.service_listens_problem(0, SS_LTNP, "", "127.0.0.1", 15005, "4242", pid))
    assert "ss shows no process for it" in msg and "--sudo" in msg


def health_json(**kw):
    return {"status": "ok", "server": "0.4.0+src.5b3e0c1a", "onnxruntime": "1.20.2", "piper_tts": "1.8.0",
            "started": "2026-12-03T11:40:02", "config_file": SERVER_TOML,
            "voices": {"en_US-joe-medium": {"provider": CUDA, "onnx_sha256": ONNX_SHA, "json_sha256": JSON_SHA}}, **kw}


def test_health_names_a_provider_per_voice_both_ways():
    url, voices = "http://127.0.0.1:5005/health", ["en_US-joe-medium"]
    assert checks.health_names_a_provider_problem(health_json(), url, voices) is None
    msg = text(checks.health_names_a_provider_problem(None, url, voices))
    assert f"GET {url}: None" in msg and "start the service" in msg
    msg = text(checks.health_names_a_provider_problem(health_json(voices={}), url, voices))
    assert "/health voices: []" in msg and "en_US-joe-medium with its provider" in msg
    msg = text(checks.health_names_a_provider_problem(health_json(), url, ["en_US-joe-medium", "zh_CN-huayan-medium"]))
    assert "zh_CN-huayan-medium with its provider" in msg


def test_running_service_is_what_was_deployed_both_ways():
    wanted = {"onnxruntime": "1.20.2", "piper-tts": "1.8.0", "piper-gpu-server": "0.4.0+src.5b3e0c1a"}
    voices = [{"name": "en_US-joe-medium", "onnx_sha256": ONNX_SHA, "json_sha256": JSON_SHA}]
    restart = "sudo systemctl restart piper-tts.service"
    assert checks.running_service_problem(health_json(), wanted, voices, restart) is None
    msg = text(checks.running_service_problem(health_json(onnxruntime="1.19.2"), wanted, voices, restart))
    assert "runs {'onnxruntime': '1.19.2'" in msg and restart in msg and "started 2026-12-03T11:40:02" in msg
    stale = health_json(voices={"en_US-joe-medium": {"provider": CUDA, "onnx_sha256": JSON_SHA, "json_sha256": JSON_SHA}})
    msg = text(checks.running_service_problem(stale, wanted, voices, restart))
    assert f"voice en_US-joe-medium loaded with sha256 {JSON_SHA}" in msg and restart in msg
    assert "'onnxruntime': None" in text(checks.running_service_problem(None, wanted, voices, restart))


TEXT = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest."


def test_tts_returns_a_valid_wav_both_ways():
    wav = {"status": 200, "provider": CUDA, "channels": 1, "rate": 22050, "width": 2, "seconds": 5.1, "ms": 310.0}
    assert checks.tts_wav_problem("en_US-joe-medium", TEXT, wav) is None
    msg = text(checks.tts_wav_problem("en_US-joe-medium", TEXT, {"status": 503, "body": "busy", "ms": 2.0}))
    assert "POST /tts (en_US-joe-medium): {'status': 503" in msg and "mono 16-bit WAV" in msg
    assert "'channels': 2" in text(checks.tts_wav_problem("en_US-joe-medium", TEXT, {**wav, "channels": 2}))
    msg = text(checks.tts_wav_problem("en_US-joe-medium", TEXT, {**wav, "seconds": 0.4}))
    assert f"0.40 s of audio for {len(TEXT)} characters" in msg and "voice files may not match" in msg
    assert "URLError" in text(checks.tts_wav_problem("en_US-joe-medium", TEXT,
                                                     {"error": "URLError(ConnectionRefusedError(111))"}))


def test_tts_requires_the_api_key_both_ways():
    assert checks.tts_requires_the_api_key_problem({"status": 401, "body": "unauthorised"}, "/etc/piper-gpu/api-key") is None
    msg = text(checks.tts_requires_the_api_key_problem({"status": 200, "channels": 1}, "/etc/piper-gpu/api-key"))
    assert "POST /tts without the key: 200" in msg and "reads the key from /etc/piper-gpu/api-key" in msg


METRICS = """\
# HELP piper_tts_requests_total POST /tts requests by voice and HTTP status.
# TYPE piper_tts_requests_total counter
piper_tts_requests_total{status="200",voice="en_US-joe-medium"} 3.0
# HELP piper_tts_voice_provider Execution provider each voice's session runs on.
# TYPE piper_tts_voice_provider gauge
piper_tts_voice_provider{provider="CUDAExecutionProvider",voice="en_US-joe-medium"} 1.0
"""


def test_metrics_answer_both_ways():
    assert checks.metrics_problem(METRICS, "", ["en_US-joe-medium"]) is None
    msg = text(checks.metrics_problem(METRICS, "", ["zh_CN-huayan-medium"]))
    assert "piper_tts_voice_provider naming zh_CN-huayan-medium's provider" in msg and "serves /metrics" in msg
    no_counters = "".join(line + "\n" for line in METRICS.splitlines() if "requests_total" not in line)
    assert "no piper_tts_requests_total" in text(checks.metrics_problem(no_counters, "", ["en_US-joe-medium"]))
    msg = text(checks.metrics_problem("", "urllib.error.HTTPError: HTTP Error 404: Not Found", ["en_US-joe-medium"]))
    assert "HTTP Error 404" in msg


UNIT = "piper-tts.service"
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateDevices": "no", "CapabilityBoundingSet": ""}
SHOW_HARDENED = "NoNewPrivileges=yes\nProtectSystem=strict\nPrivateDevices=no\nCapabilityBoundingSet=\n"
GPU_DEVICES = {"char-nvidiactl rw", "char-nvidia-frontend rw", "char-nvidia-uvm rw", "/dev/dxg rw"}
SHOW_DEVICES = "".join(f"DeviceAllow={d}\n" for d in sorted(GPU_DEVICES))


def test_systemctl_show_is_read_with_repeated_properties():
    shown = checks.parse_systemctl_show(SHOW_DEVICES + "MainPID=41234\n")
    assert set(shown["DeviceAllow"].splitlines()) == GPU_DEVICES and shown["MainPID"] == "41234"


def test_unit_sandbox_is_in_force_both_ways():
    assert checks.unit_sandbox_problem(SHOW_HARDENED, UNIT, HARDENING) is None
    loosened = SHOW_HARDENED.replace("ProtectSystem=strict", "ProtectSystem=no")
    msg = text(checks.unit_sandbox_problem(loosened, UNIT, HARDENING))
    assert "piper-tts.service: {'ProtectSystem': 'no'}" in msg and "systemctl cat piper-tts.service" in msg


def test_unit_keeps_gpu_device_access_both_ways():
    assert checks.unit_gpu_devices_problem(SHOW_DEVICES, UNIT, GPU_DEVICES) is None
    msg = text(checks.unit_gpu_devices_problem("DeviceAllow=\n", UNIT, GPU_DEVICES))
    assert "DeviceAllow: []" in msg and "PrivateDevices=yes or DeviceAllow= hides the GPU" in msg
    partial = SHOW_DEVICES.replace("DeviceAllow=char-nvidia-uvm rw\n", "")
    assert "char-nvidia-uvm rw" in text(checks.unit_gpu_devices_problem(partial, UNIT, GPU_DEVICES))


def test_service_runs_as_its_user_both_ways():
    assert checks.service_user_problem("MainPID=41234\n", "piper\n", UNIT, "piper") is None
    msg = text(checks.service_user_problem("MainPID=41234\n", "root\n", UNIT, "piper"))
    assert "main process 41234 runs as root" in msg and "user piper" in msg and "User= in the unit" in msg
    assert "main process 0 runs as nobody" in text(checks.service_user_problem("MainPID=0\n", "", UNIT, "piper"))


WRITES = {"/etc": False, "/usr": False, "/home/piper/piper_env": False, "/var/lib/piper-tts": True,
          "/var/log/piper-tts": True}
PROBE = "/etc=no\n/usr=no\n/home/piper/piper_env=no\n/var/lib/piper-tts=yes\n/var/log/piper-tts=yes\n"


def test_service_can_write_only_its_log_and_state_both_ways():
    assert checks.service_writes_problem(0, PROBE, "", WRITES, UNIT) is None
    msg = text(checks.service_writes_problem(0, PROBE.replace("/etc=no", "/etc=yes"), "", WRITES, UNIT))
    assert "'/etc': 'writable'" in msg and "ProtectSystem=strict" in msg
    msg = text(checks.service_writes_problem(0, PROBE.replace("/var/log/piper-tts=yes", "/var/log/piper-tts=no"), "",
                                             WRITES, UNIT))
    assert "'/var/log/piper-tts': 'not writable'" in msg
    msg = text(checks.service_writes_problem(1, "", "nsenter: cannot open /proc/0/ns/mnt: No such file or directory",
                                             WRITES, UNIT))
    assert "'/etc': 'not writable'" in msg  # nothing probed: every directory unanswered
    assert "the probe failed (1): nsenter: cannot open /proc/0/ns/mnt" in msg  # and why


SECURITY = """\
  NAME                                                        DESCRIPTION                                       EXPOSURE
✓ PrivateNetwork=                                             Service has no access to the host's network             
✗ RootDirectory=/RootImage=                                   Service runs within the host's root directory        0.1
✓ NoNewPrivileges=                                            Service processes cannot acquire new privileges         

→ Overall exposure level for piper-tts.service: 1.6 OK 🙂
"""


def test_unit_exposure_is_low_both_ways():
    assert checks.unit_exposure_problem(SECURITY, "", UNIT, 2.0) is None
    unsafe = SECURITY.replace("1.6 OK 🙂", "9.6 UNSAFE 😨")
    msg = text(checks.unit_exposure_problem(unsafe, "", UNIT, 2.0))
    assert "→ Overall exposure level for piper-tts.service: 9.6 UNSAFE 😨" in msg and "at most 2.0" in msg
    assert "docs/operating.md" in msg
    msg = text(checks.unit_exposure_problem("", "Unit piper-tts.service not found.", UNIT, 2.0))
    assert "Unit piper-tts.service not found." in msg


# --- the performance script ------------------------------------------------------------------------------

PERF = "/usr/local/bin/piper-tts-perf"
PERF_OUT = "/var/lib/piper-tts/perf.json"
PERF_JSON = {"voice": "en_US-joe-medium", "service_provider": CUDA, "runs": 1,
             "sizes": {"medium": {"chars": 148, "service_median_ms": 61.0, "cpu_median_ms": 338.0, "speedup": 5.5}}}


def test_performance_script_runs_and_writes_json_both_ways():
    import json
    line = json.dumps(PERF_JSON)
    assert checks.perf_run_problem(0, f"medium: 61.0 ms\n{line}\n", "", PERF) is None
    msg = text(checks.perf_run_problem(1, "", "urllib.error.URLError: <urlopen error [Errno 111] Connection refused>",
                                       PERF))
    assert f"{PERF} failed: urllib.error.URLError" in msg and "start the service" in msg
    assert "printed no JSON result" in text(checks.perf_run_problem(0, "", "", PERF))
    assert checks.perf_results_problem(line, PERF_JSON, PERF_OUT) is None
    msg = text(checks.perf_results_problem(None, PERF_JSON, PERF_OUT))
    assert f"{PERF_OUT}: missing" in msg and "results JSON on the host" in msg
    assert f"{PERF_OUT}: no medians" in text(checks.perf_results_problem("{}", PERF_JSON, PERF_OUT))
    no_cpu = {**PERF_JSON, "sizes": {"medium": {**PERF_JSON["sizes"]["medium"], "cpu_median_ms": 0}}}
    assert "a CPU median" in text(checks.perf_results_problem(line, no_cpu, PERF_OUT))


# --- the guard: no check without a proof that it fails ------------------------------------------------

VERIFY = Path(__file__).parents[2] / "verify"
PROBLEMS = sorted(n for n, f in vars(checks).items()
                  if n.endswith("_problem") and not n.startswith("_") and callable(f) and f.__module__ == checks.__name__)


def _checks_call(node, aliases: dict[str, str] | None = None) -> str | None:
    """NAME when ``node`` is a call checks.NAME(...), or a call of a helper here that returns one (``aliases``)."""
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) and node.func.value.id == "checks":
        return node.func.attr
    if aliases and isinstance(node.func, ast.Name):
        return aliases.get(node.func.id)
    return None


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Helpers of the module that only return checks.NAME(...) (``gate`` for checks.gpu_gate): NAME by helper."""
    found = {}
    for fn in tree.body:
        if (isinstance(fn, ast.FunctionDef) and not fn.name.startswith("test_") and isinstance(fn.body[-1], ast.Return)
                and _checks_call(fn.body[-1].value)):
            found[fn.name] = _checks_call(fn.body[-1].value)
    return found


def _asserted(test: ast.expr) -> list[ast.expr]:
    """The parts of an ``assert`` that must each be true for it to pass: the test, or its ``and``-ed terms."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return [part for value in test.values for part in _asserted(value)]
    return [test]


def _passes(node: ast.expr, aliases: dict) -> str | None:
    """NAME for ``checks.NAME(...) is None`` (a problem function) or ``== (None, None)`` (the GPU gate)."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and _checks_call(node.left, aliases)):
        return None
    right = node.comparators[0]
    none = isinstance(node.ops[0], ast.Is) and isinstance(right, ast.Constant) and right.value is None
    no_skip_no_problem = (isinstance(node.ops[0], ast.Eq) and isinstance(right, ast.Tuple)
                          and [getattr(e, "value", 0) for e in right.elts] == [None, None])
    return _checks_call(node.left, aliases) if none or no_skip_no_problem else None


def _fails(node: ast.AST, aliases: dict) -> str | None:
    """NAME for ``text(checks.NAME(...))`` or ``text(checks.NAME(...)[1])`` (text asserts that there is a problem)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "text" and node.args):
        return None
    arg = node.args[0]
    return _checks_call(arg.value if isinstance(arg, ast.Subscript) else arg, aliases)


def _fails_asserted(node: ast.expr, aliases: dict) -> str | None:
    """NAME for ``checks.NAME(...) is not None`` asserted."""
    if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.IsNot)
            and isinstance(node.comparators[0], ast.Constant) and node.comparators[0].value is None):
        return _checks_call(node.left, aliases)
    return None


def _proofs(source: str) -> tuple[set, set]:
    """The checks functions that ``source``'s ``test_*`` functions prove: on an answer they must pass, in an
    ``assert`` that fails unless ``checks.X(...) is None``; on one they must fail, through ``text(checks.X(...))``
    (which asserts a problem) or an ``assert checks.X(...) is not None``. A comparison outside an assert, an
    assert outside a test, or one that an ``or`` can satisfy otherwise proves nothing and counts for nothing."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    passing, failing = set(), set()
    for fn in tree.body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_")):
            continue
        for node in ast.walk(fn):
            failing.add(_fails(node, aliases))
            if isinstance(node, ast.Assert):
                for part in _asserted(node.test):
                    passing.add(_passes(part, aliases))
                    failing.add(_fails_asserted(part, aliases))
    return passing - {None}, failing - {None}


def _cases(items: list, what: str, arity: int = 1) -> list:
    """``items`` to parametrise a guard with. None found is one case of Nones that the test fails on: pytest
    would skip an empty list, and a guard with nothing to guard would pass unseen."""
    return items or [pytest.param(*([None] * arity), id=f"no-{what}-found")]


PASSING, FAILING = _proofs(Path(__file__).read_text())


@pytest.mark.parametrize("name", _cases(PROBLEMS, "problem-functions"))
def test_every_problem_check_is_proven_both_ways_here(name):
    """Each decision in verify/checks.py is called here on an answer it must pass and on one it must fail:
    a check added without a test proving it fails is a defect."""
    assert name is not None, "verify/checks.py has no public *_problem function: the guard guards nothing"
    assert name in PASSING, f"no `assert checks.{name}(...) is None` in a test on a healthy host's answer"
    assert name in FAILING, f"no `text(checks.{name}(...))` in a test on the fault it exists for"


def test_the_gpu_gate_is_proven_both_ways_here():
    """The gate is asserted to let a GPU host through (``gate(...) == (None, None)``) and to fail on a fault
    (``text(gate(...)[1])``), in tests here (and against a fake host in test_verify_gate.py)."""
    assert "gpu_gate" in PASSING, "no `assert gate(...) == (None, None)` in a test"
    assert "gpu_gate" in FAILING, "no `text(gate(...)[1])` in a test"


GUARDED = """
def gate(*a):
    return checks.gpu_gate(*a)

checks.a_problem(1) is None                     # outside any test
text(checks.b_problem(2))

def helper():
    assert checks.c_problem(3) is None          # outside any test

def test_unasserted():
    checks.d_problem(4) is None                 # computed, never asserted
    checks.e_problem(5) is not None

def test_escapable():
    assert checks.f_problem(6) is None or True  # an `or` lets it pass
    assert not checks.g_problem(7) is None

def test_proven():
    assert checks.h_problem(8) is None and "x"
    msg = text(checks.h_problem(9))
    assert checks.i_problem(10) is not None
    assert gate(1) == (None, None)
    assert "cause" in text(gate(2)[1])
"""


def test_the_guard_counts_only_asserted_proofs_in_tests():
    passing, failing = _proofs(GUARDED)
    assert passing == {"h_problem", "gpu_gate"}, passing
    assert failing == {"h_problem", "i_problem", "gpu_gate"}, failing


def test_the_guards_fail_when_they_find_nothing_to_guard():
    assert _cases([], "problem-functions")[0].values == (None,)
    assert _cases([], "verify-checks", arity=2)[0].values == (None, None)
    assert _cases(["x_problem"], "problem-functions") == ["x_problem"]
def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}


def _decisions(fn: ast.FunctionDef, helpers: dict, seen: set) -> set[str]:
    """The checks functions a verify check calls, itself or through the helpers of its module and conftest."""
    found = set()
    for node in ast.walk(fn):
        if _checks_call(node):
            found.add(_checks_call(node))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers
              and node.func.id not in seen):
            seen.add(node.func.id)
            found |= _decisions(helpers[node.func.id], helpers, seen)
    return found


VERIFY_CHECKS = sorted((path.name, name) for path in VERIFY.glob("test_*.py")
                       for name in _functions(path) if name.startswith("test_"))


@pytest.mark.parametrize("module,check", _cases(VERIFY_CHECKS, "verify-checks", arity=2),
                         ids=[f"{m}::{c}" for m, c in VERIFY_CHECKS] or None)
def test_every_verify_check_decides_through_a_proven_function(module, check):
    """Each check in verify/ decides through verify/checks.py, and every *_problem function it calls is
    proven here both ways (the testinfra check only gathers the host's answers)."""
    assert check is not None, f"no test_* function found in {VERIFY}/test_*.py: the guard guards nothing"
    helpers = {**_functions(VERIFY / "conftest.py"), **_functions(VERIFY / module)}
    decisions = _decisions(helpers[check], helpers, {check})
    assert decisions, f"verify/{module}::{check} calls no checks function: move its decision into verify/checks.py"
    unproven = [n for n in decisions if n.endswith("_problem") and not (n in PASSING and n in FAILING)]
    assert not unproven, f"verify/{module}::{check} decides through {unproven}, not proven both ways here"
    assert any(n.endswith("_problem") or n == "gpu_gate" for n in decisions), decisions
