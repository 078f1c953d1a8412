"""scripts/gpu-proof and scripts/gpu_proof.py where no GPU is needed: what they refuse, and how they read
nvidia-smi. (On a GPU: results/README.md, 2026-11-26.)"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_gpu_proof():
    spec = importlib.util.spec_from_file_location("gpu_proof", ROOT / "scripts" / "gpu_proof.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("apps,pid,mib", [
    ("654, 1326\n998, 500", 654, 1326),
    ("654, 1326\n998, 500", 998, 500),
    ("654, 1326", 700, None),
    ("654, [N/A]", 654, None),
    ("", 654, None),
])
def test_gpu_memory_of_a_process_is_read_from_nvidia_smis_compute_apps(apps, pid, mib):
    assert load_gpu_proof().gpu_mib(apps, pid) == mib


def test_wheels_are_recorded_with_their_sha256(tmp_path):
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"abc")
    (tmp_path / "notes.txt").write_text("not a wheel")
    assert load_gpu_proof().wheels(str(tmp_path)) == {
        "a-1.0-py3-none-any.whl": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}


def test_the_proof_stops_where_there_is_no_gpu(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no nvidia-smi
    res = subprocess.run([sys.executable, "scripts/gpu_proof.py", "--texts", "piper_gpu/texts.json",
                          "--results", str(tmp_path / "results")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "no NVIDIA GPU here" in res.stderr
    assert not (tmp_path / "results").exists()


def test_gpu_proof_refuses_an_environment_that_holds_the_cpu_onnxruntime(tmp_path):
    # this test's own environment has the CPU onnxruntime (the server tests run on it)
    env = {**os.environ, "GPU_PROOF_VENV": sys.prefix}
    res = subprocess.run(["bash", "scripts/gpu-proof", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert f"{sys.prefix} has the CPU onnxruntime" in res.stderr and "pip uninstall onnxruntime" in res.stderr


def test_gpu_proof_refuses_a_wheel_directory_with_the_cpu_onnxruntime(tmp_path):
    (tmp_path / "onnxruntime-1.32.0-cp311-cp311-manylinux_2_27_x86_64.whl").write_bytes(b"")
    res = subprocess.run(["bash", "scripts/gpu-proof", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "holds the CPU onnxruntime" in res.stderr
