"""verify's GPU gate as wired in verify/conftest.py (read_driver, gpu_verdict, needs_gpu's decision), run
against a fake testinfra host that answers like a host without nvidia-smi, one whose driver is gone, the WSL2
sandbox (a stand-in nvidia-smi, a libcuda.so.1 that reports no device) and a GPU host: GPU checks skip only
where the settings allow no GPU, and fail, naming the driver to install, anywhere else."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

VERIFY = Path(__file__).parents[2] / "verify"
sys.path.insert(0, str(VERIFY))  # verify/conftest.py imports its sibling checks.py
_spec = importlib.util.spec_from_file_location("verify_conftest", VERIFY / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)
sys.path.remove(str(VERIFY))

SMI_NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
                 "latest NVIDIA driver is installed and running.\n")
SMI_TABLE = "| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |\n"


def result(rc=0, stdout="", stderr=""):
    return SimpleNamespace(rc=rc, stdout=stdout, stderr=stderr)


class FakeHost:
    """Answers host.run(command) from the first matching prefix; `command -v` fails for unknown tools."""

    def __init__(self, answers: dict):
        self.answers, self.commands = answers, []

    def run(self, command: str):
        self.commands.append(command)
        for prefix, answer in self.answers.items():
            if command.startswith(prefix):
                return answer
        return result(127, "", f"sh: 1: {command.split()[0]}: not found")


class FakeServiceEnv:
    def __init__(self, cuinit):
        self.cuinit, self.calls = cuinit, 0

    def python(self, code):
        self.calls += 1
        return 0, self.cuinit, result(0, str(self.cuinit))


NO_SMI = FakeHost({"command -v nvidia-smi": result(1), "command -v /usr/lib/wsl/lib/nvidia-smi": result(1)})
DRIVER_GONE = FakeHost({"command -v nvidia-smi": result(0, "/usr/bin/nvidia-smi\n"),
                        "/usr/bin/nvidia-smi --query-gpu": result(9, SMI_NO_DRIVER)})
WSL_STAND_IN = FakeHost({"command -v nvidia-smi": result(1),
                         "command -v /usr/lib/wsl/lib/nvidia-smi": result(0, "/usr/lib/wsl/lib/nvidia-smi\n"),
                         "/usr/lib/wsl/lib/nvidia-smi --query-gpu": result(0, "NVIDIA GeForce RTX 4070, 560.94\n"),
                         "/usr/lib/wsl/lib/nvidia-smi": result(0, SMI_TABLE.replace("12.4", "12.6"))})
GPU_HOST = FakeHost({"command -v nvidia-smi": result(0, "/usr/bin/nvidia-smi\n"),
                     "/usr/bin/nvidia-smi --query-gpu": result(0, "NVIDIA H200, 550.54.15\n"),
                     "/usr/bin/nvidia-smi": result(0, SMI_TABLE)})


def verdict(host, cuinit=0, allow_no_gpu=False, use_gpu=True, is_wsl=False):
    applied = conftest.Record({"allow_no_gpu": allow_no_gpu, "use_gpu": use_gpu})
    env = FakeServiceEnv(cuinit)
    skip, problem = conftest.gpu_verdict(conftest.read_driver(host), applied, {"is_wsl": is_wsl}, env)
    return skip, problem, env


def test_read_driver_returns_an_empty_gpu_list_with_the_cause():
    """The fixture no longer hides a host without GPUs: the driver check gets to see it (and fail)."""
    gone = conftest.read_driver(DRIVER_GONE)
    assert gone["gpus"] == [] and "couldn't communicate with the NVIDIA driver" in gone["error"]
    assert conftest.read_driver(NO_SMI)["error"] == "nvidia-smi: not found; /usr/lib/wsl/lib/nvidia-smi: not found"
    found = conftest.read_driver(GPU_HOST)
    assert found["gpus"] == [("NVIDIA H200", "550.54.15")] and found["cuda_version"] == "12.4"
    assert found["path"] == "/usr/bin/nvidia-smi"


def test_a_gpu_host_passes_the_gate():
    skip, problem, env = verdict(GPU_HOST, cuinit=0)
    assert (skip, problem) == (None, None) and env.calls == 1


@pytest.mark.parametrize("host", [NO_SMI, DRIVER_GONE], ids=["no nvidia-smi", "driver gone"])
def test_no_gpu_fails_where_the_settings_require_one(host):
    skip, problem, _ = verdict(host)
    assert skip is None and problem is not None
    with pytest.raises(conftest.Expectation) as failed:
        conftest.report(problem)
    message = str(failed.value)
    assert "FOUND: no NVIDIA GPU on this host" in message and "FIX: install the NVIDIA driver" in message


def test_no_gpu_on_wsl2_names_the_windows_driver():
    _, problem, _ = verdict(NO_SMI, is_wsl=True)
    assert "NVIDIA driver on Windows" in problem.fix and "never install a Linux NVIDIA driver inside WSL2" in problem.fix


def test_no_gpu_skips_where_allow_no_gpu_is_set():
    skip, problem, env = verdict(NO_SMI, allow_no_gpu=True)
    assert problem is None and skip.startswith("no NVIDIA GPU on this host") and "allow_no_gpu=True" in skip
    assert env.calls == 0  # cuInit is not tried without a GPU listed


def test_the_wsl2_sandbox_skips_on_cuinit_100_only_because_no_gpu_is_allowed():
    skip, problem, _ = verdict(WSL_STAND_IN, cuinit=100, allow_no_gpu=True, is_wsl=True)
    assert problem is None and "cuInit(0) gives 100" in skip
    skip, problem, _ = verdict(WSL_STAND_IN, cuinit=100, is_wsl=True)
    assert skip is None and "cuInit(0) gives 100" in problem.found and "CUDA_ERROR_NO_DEVICE" in problem.fix


def test_use_gpu_false_skips():
    skip, problem, _ = verdict(NO_SMI, use_gpu=False)
    assert problem is None and skip == "use_gpu=False in the applied settings"
