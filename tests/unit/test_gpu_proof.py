"""scripts/gpu-proof and scripts/gpu_proof.py where no GPU is needed: what they refuse, and how they read
nvidia-smi. (On a GPU: results/README.md, 2026-11-26.)"""

from __future__ import annotations

import importlib.util
import json
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


# --- the preconditions, on canned /health voices ----------------------------------------------------------

def voice(session="CUDAExecutionProvider", active=True, **stable):
    """One voice of /health (["voices"][name]) as the server reports it, with shape_stable's providers."""
    keys = {"encoder_provider": "CUDAExecutionProvider", "decoder_provider": "CUDAExecutionProvider",
            "encoder_placement": "cuda", **stable}
    return {"provider": session, "session_providers": [session, "CPUExecutionProvider"], "on_gpu": True,
            "shape_stable": {"mode": "auto", "active": active, "reason": None if active else "the voice is on the CPU",
                             **({k: v for k, v in keys.items() if v is not ...})}}


def failed(results):
    return [(r["name"], r["why"]) for r in results if not r["passed"]]


def test_every_precondition_holds_on_a_cuda_voice_with_its_buckets_on_cuda():
    results = load_gpu_proof().preconditions(voice(), "CUDAExecutionProvider")
    assert [r["name"] for r in results] == ["cuda_provider_active_in_the_session",
                                            "shape_stable_synthesis_active_on_the_cuda_voice",
                                            "bucket_sessions_on_the_cuda_provider"]
    assert all(r["passed"] for r in results)


def test_a_cpu_encoder_is_accepted_where_the_server_places_it_on_the_cpu():
    found = voice(encoder_provider="CPUExecutionProvider", encoder_placement="cpu")
    assert not failed(load_gpu_proof().preconditions(found, "CUDAExecutionProvider"))


@pytest.mark.parametrize("found,name,why", [
    (voice(session="CPUExecutionProvider"), "cuda_provider_active_in_the_session",
     "the voice's session runs on CPUExecutionProvider, not CUDAExecutionProvider"),
    (voice(active=False), "shape_stable_synthesis_active_on_the_cuda_voice",
     "shape-stable synthesis is not active (mode 'auto': the voice is on the CPU)"),
    (voice(decoder_provider="CPUExecutionProvider"), "bucket_sessions_on_the_cuda_provider",
     "decoder buckets on CPUExecutionProvider, not CUDAExecutionProvider"),
    (voice(encoder_provider="CPUExecutionProvider"), "bucket_sessions_on_the_cuda_provider",
     "encoder on CPUExecutionProvider (encoder_placement 'cuda'), not CUDAExecutionProvider"),
    (voice(encoder_provider=None, decoder_provider=None), "bucket_sessions_on_the_cuda_provider",
     "decoder buckets on None and encoder on None (encoder_placement 'cuda'), not CUDAExecutionProvider"),
])
def test_the_first_precondition_that_fails_is_the_last_one_looked_at(found, name, why):
    results = load_gpu_proof().preconditions(found, "CUDAExecutionProvider")
    assert failed(results) == [(name, why)]
    assert results[-1]["name"] == name  # none after it


def test_a_server_that_does_not_report_its_bucket_providers_fails_the_precondition_by_name():
    found = voice(encoder_provider=..., decoder_provider=..., encoder_placement=...)
    assert failed(load_gpu_proof().preconditions(found, "CUDAExecutionProvider")) == [(
        "bucket_sessions_on_the_cuda_provider",
        "/health gives no shape_stable encoder_provider, decoder_provider, encoder_placement: this server does not "
        "report its bucket sessions' providers, so the proof cannot tell whether they run on the CPU")]


def test_a_rehearsal_expects_every_session_on_the_cpu_provider():
    cpu = "CPUExecutionProvider"
    rehearsal = voice(session=cpu, encoder_provider=cpu, decoder_provider=cpu, encoder_placement="cpu")
    gpu_proof = load_gpu_proof()
    assert not failed(gpu_proof.preconditions(rehearsal, cpu))
    assert failed(gpu_proof.preconditions(voice(), cpu))[0][0] == "cuda_provider_active_in_the_session"


# --- the estimate, from the 2026-11-26 H200 run ------------------------------------------------------------

def test_the_costs_come_from_the_h200_runs_figures():
    costs = load_gpu_proof().load_reference()
    # results/gpu-bench-2026-11-26-NVIDIA-H200.json: ours-cpu 6.719 req/s at c=1, 660.1 + 688.6 ms long text
    assert costs["ours-cpu"]["per_request_s"][1] == pytest.approx(1 / 6.719)
    assert costs["ours-cpu"]["long_s"] == pytest.approx(1.3487)
    assert costs["piper-gpu"]["per_request_s"][8] == pytest.approx(1 / 12.102)
    # gpu-providers: HEURISTIC load 3761 ms, first run 1320 ms; a shape-stable voice 21 first runs
    assert costs["ours-gpu-whole"]["startup_s"] == pytest.approx(5.081)
    assert costs["ours-gpu"]["startup_s"] == pytest.approx(3.761 + 21 * 1.320)
    assert costs["first_request_s"] == 0.69


def test_the_default_run_fits_one_slot_by_its_estimate_and_more_rounds_cost_more():
    gpu_proof = load_gpu_proof()
    costs = gpu_proof.load_reference()
    default = gpu_proof.parse_args(["--texts", "piper_gpu/texts.json"])
    steps = gpu_proof.estimate(costs, default, 5, gpu_proof.plan(flask=True))
    assert [s["step"] for s in steps] == ["preconditions", "speedup", "idle_memory_release", "ours-gpu-whole",
                                          "piper-gpu", "ours-gpu", "ours-cpu"]
    total = sum(s["seconds"] for s in steps)
    assert 60 < total <= gpu_proof.BUDGET_S == 300
    more = gpu_proof.parse_args(["--texts", "piper_gpu/texts.json", "--rounds", "6"])
    assert sum(s["seconds"] for s in gpu_proof.estimate(costs, more, 5, gpu_proof.plan(flask=True))) > gpu_proof.BUDGET_S


# --- the run stops at the first failed precondition (no server started, a fake one) -------------------------

class FakeServer:
    """bench.Server's face, answering /health with a canned voice; every one made is kept in ``made``."""
    made: list = []
    voice: dict = {}

    def __init__(self, kind, model, log_dir, extra=None):
        self.kind, self.extra, self.stopped = kind, extra, False
        self.proc = type("Proc", (), {"pid": 4242})()
        self.log = open(Path(log_dir) / f"{kind}.log", "w")
        self.startup_s = 1.0
        FakeServer.made.append(self)

    def request(self, method, path, body, first_audio=None):
        if method == "GET":
            return 200, json.dumps({"gpu": "NVIDIA H200", "voices": {"voice": FakeServer.voice}}).encode(), 0.01
        return 200, b"RIFF" + bytes(100), 0.1

    def rss_mib(self):
        return 100.0

    def stop(self):
        self.stopped = True
        self.log.close()


@pytest.mark.parametrize("found,why", [
    (voice(session="CPUExecutionProvider"), "the voice's session runs on CPUExecutionProvider"),
    (voice(active=False), "shape-stable synthesis is not active"),
    (voice(decoder_provider="CPUExecutionProvider"), "decoder buckets on CPUExecutionProvider"),
    (voice(encoder_provider=..., decoder_provider=..., encoder_placement=...), "/health gives no shape_stable"),
])
def test_the_proof_stops_at_a_failed_precondition_and_writes_what_it_found(tmp_path, monkeypatch, capsys, found, why):
    gpu_proof = load_gpu_proof()
    FakeServer.made, FakeServer.voice = [], found
    monkeypatch.setattr(gpu_proof.bench, "Server", FakeServer)
    monkeypatch.setattr(gpu_proof, "nvidia_smi", lambda *q: "NVIDIA H200, 580.159.04, 143771 MiB" if
                        "--query-gpu=name,driver_version,memory.total" in q else "4242, 900")
    monkeypatch.setattr(sys, "argv", ["scripts/gpu_proof.py", "--texts", str(ROOT / "piper_gpu/texts.json"),
                                      "--results", str(tmp_path)])
    rc = gpu_proof.main()
    assert rc == 1
    assert [s.kind for s in FakeServer.made] == ["ours-gpu"] and FakeServer.made[0].stopped  # nothing else ran
    written = [p.name for p in tmp_path.glob("*.json")]
    assert len(written) == 1 and written[0].startswith("gpu-") and "bench" not in written[0]
    record = json.loads((tmp_path / written[0]).read_text())
    assert record["complete"] is False and why in record["stopped"]
    assert [s["step"] for s in record["steps"]] == ["preconditions"]
    last = list(record["checks"].values())[-1]
    assert last["passed"] is False and why in last["why"]
    assert record["health"]["voices"]["voice"] == found
    assert "stopped: " + why in capsys.readouterr().err


def test_each_step_is_written_at_once_marked_incomplete(tmp_path):
    gpu_proof = load_gpu_proof()
    record = gpu_proof.Record(tmp_path / "gpu.json", {"rehearsal": False})
    assert json.loads((tmp_path / "gpu.json").read_text())["complete"] is False
    record.check("a", True, {"x": 1})
    record.step("speedup", 16.0, startup_s={"ours-gpu": 1.0})
    on_disk = json.loads((tmp_path / "gpu.json").read_text())
    assert on_disk["complete"] is False and on_disk["checks"]["a"]["passed"] is True
    assert [s["step"] for s in on_disk["steps"]] == ["speedup"] and on_disk["startup_s"] == {"ours-gpu": 1.0}
    record.check("b", False, {}, skipped="needs a GPU")
    assert record.finish() is True  # a skipped check is not a failure
    assert json.loads((tmp_path / "gpu.json").read_text())["complete"] is True
    assert not list(tmp_path.glob("*.tmp"))


# --- the host's Python ----------------------------------------------------------------------------------

def test_prepare_takes_the_hosts_python3_and_refuses_one_without_a_lock(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\necho 3.99\n")
    (fake / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    res = subprocess.run(["bash", "scripts/gpu-proof", "--prepare", str(tmp_path / "wheels")], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "no venv lock for Python 3.99 (piper_gpu/locks: 3.10 3.11 3.12)" in res.stderr
    assert not (tmp_path / "wheels").exists()


def test_the_run_refuses_wheels_built_for_another_python_than_the_venvs(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "numpy-2.2.0-cp399-cp399-manylinux_2_17_x86_64.whl").write_bytes(b"")
    (wheels / "cryptography-44.0.0-cp37-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"")  # any Python 3.7+
    res = subprocess.run(["bash", "scripts/gpu-proof", str(wheels)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "GPU_PROOF_VENV": str(venv)})
    here = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert res.returncode == 2
    assert f"holds wheels for cp399 but {venv}/bin/python is {here}" in res.stderr
    assert f"--prepare DIR --python {sys.version_info[0]}.{sys.version_info[1]}" in res.stderr
