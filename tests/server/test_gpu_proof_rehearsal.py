"""scripts/gpu-proof --rehearse end to end, on this machine's CPU: the wheel directory holds the server's wheel
built from server/ (piper_gpu.server_wheel, as --prepare builds it); the venv is a new one whose own
site-packages get that wheel, and which reads the rest (the CPU onnxruntime, piper-tts, the test voice, Flask)
from this test's venv through a .pth line. Short texts, one round of two requests: every step runs, on the CPU
provider, so that a bug of the script shows here and not in a GPU slot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from piper_gpu import server_wheel

ROOT = Path(__file__).resolve().parents[2]
CPU = "CPUExecutionProvider"
STEPS = ["preconditions", "speedup", "idle_memory_release", "ours-gpu-whole", "piper-gpu", "ours-gpu", "ours-cpu"]
CHECKS = ["cuda_provider_active_in_the_session", "shape_stable_synthesis_active_on_the_cuda_voice",
          "bucket_sessions_on_the_cuda_provider", "tts_answers_on_the_gpu", "health_reports_the_gpu",
          "server_among_the_gpus_compute_processes", "gpu_faster_than_cpu",
          "idle_memory_release_works_on_the_cuda_session"]
SKIPPED = {"health_reports_the_gpu", "server_among_the_gpus_compute_processes", "gpu_faster_than_cpu"}
TEXTS = {"en_medium": "The quick brown fox jumps.", "en_medium_varied": ["The quick brown fox jumps.",
                                                                         "A lazy dog sleeps in the sun."],
         "en_long": "The quick brown fox jumps over the lazy dog. Then it runs home again."}


def rehearsal_venv(path: Path) -> Path:
    """A venv of this Python with no packages of its own, reading this test venv's site-packages after its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    own = subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    Path(own, "test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path


def test_the_rehearsal_runs_every_step_on_the_cpu_provider_and_writes_both_files(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = server_wheel.build()
    shutil.copyfile(wheel.path, wheels / wheel.filename)
    venv = rehearsal_venv(tmp_path / "venv")
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    results = tmp_path / "results"
    env = {**os.environ, "GPU_PROOF_VENV": str(venv), "GPU_PROOF_RESULTS": str(results),
           "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                   if not (Path(p) / "nvidia-smi").exists())}  # as on a machine with no GPU
    res = subprocess.run(["bash", "scripts/gpu-proof", "--rehearse", str(wheels), "--texts", str(tmp_path / "texts.json"),
                          "--rounds", "1", "--requests", "2", "--levels", "1,2", "--repeats", "1", "--cycles", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "estimate on the H200: " in res.stdout and "gpu-bench-2026-11-26-NVIDIA-H200.json" in res.stdout
    # the server the venv ran is the wheel's, not this test venv's editable one
    assert f"installed 1 wheels into {venv}" in res.stdout

    (proof,) = results.glob("gpu-[0-9]*-rehearsal.json")
    (bench,) = results.glob("gpu-bench-*-rehearsal.json")
    record = json.loads(proof.read_text())
    assert record["rehearsal"] is True and record["provider"] == CPU and record["gpu"] is None
    assert record["complete"] is True and record["stopped"] is None
    assert [s["step"] for s in record["steps"]] == STEPS
    assert [s["step"] for s in record["estimate"]["steps"]] == STEPS
    assert all(s["estimate_s"] > 0 and s["seconds"] >= 0 for s in record["steps"])
    assert list(record["checks"]) == CHECKS
    for key, check in record["checks"].items():
        if key in SKIPPED:
            assert check["passed"] is None and "GPU" in check["skipped"], key
        else:
            assert check["passed"] is True, (key, check)
    assert record["wheels"] == {wheel.filename: wheel.sha256}
    voice = record["health"]["voices"]["voice"]
    assert voice["session_providers"][0] == CPU and voice["shape_stable"]["active"] is True
    assert voice["shape_stable"]["decoder_provider"] == CPU
    assert record["health"]["server"] == wheel.version
    speed = record["checks"]["gpu_faster_than_cpu"]["found"]
    assert speed["provider"] == CPU and speed["failed_requests"] == []
    assert speed["en_medium"]["text_chars"] == [len(TEXTS["en_medium"])]
    assert speed["en_medium_varied"]["text_chars"] == [len(t) for t in TEXTS["en_medium_varied"]]
    assert all(speed[k]["median_ms_gpu"] > 0 and speed[k]["median_ms_cpu"] > 0 for k in ("en_medium", "en_medium_varied"))
    release = record["checks"]["idle_memory_release_works_on_the_cuda_session"]["found"]
    assert release["provider"] == CPU and release["once_idle"]["releases"] > release["after_long_text"]["releases"]

    figures = json.loads(bench.read_text())
    assert figures["rehearsal"] is True and figures["provider"] == CPU and figures["complete"] is True
    assert list(figures["contenders"]) == ["ours-gpu-whole", "piper-gpu", "ours-gpu", "ours-cpu"]
    for kind, entry in figures["contenders"].items():
        assert [level["concurrency"] for level in entry["load"]] == [1, 2], kind
        assert all(level["failed"] == 0 and level["requests"] == 2 for level in entry["load"]), kind
        assert entry["long_text"]["per_round"][0]["status"] == 200, kind
        if kind.startswith("ours"):
            assert entry["long_text_stream"]["per_round"][0]["status"] == 200, kind
            assert entry["health"]["voices"]["voice"]["provider"] == CPU, kind
    whole = figures["contenders"]["ours-gpu-whole"]["health"]["voices"]["voice"]["shape_stable"]
    stable = figures["contenders"]["ours-gpu"]["health"]["voices"]["voice"]["shape_stable"]
    assert whole["active"] is False and stable["active"] is True
    assert "--cuda" in figures["contenders"]["piper-gpu"]["command"]  # Piper's own flag, on the CPU onnxruntime
