"""Benchmark: this server against Piper's own ``piper.http_server`` (or this server on the GPU against
the CPU), started side by side in one run with the same voice and texts.

    python -m piper_gpu_server.bench --model VOICE.onnx --texts texts.json --out results/bench.json
        [--contenders ours-cpu,piper-cpu] [--requests 16] [--rounds 3] [--concurrency 1,4,8] [--machine TEXT]
        [--ours-args FLAGS] [--args KIND=FLAGS ...] [--varied en_medium_varied]

Contenders: ``ours-cpu``, ``ours-gpu`` (``python -m piper_gpu_server``), ``piper-cpu``, ``piper-gpu``
(``python -m piper.http_server``, needs Flask), each with an optional label (``ours-gpu-serial``) so that
one server can run twice with different flags (``--args "ours-gpu-serial=--syntheses-per-voice 1"``). All
run at once; in each round every contender takes its
turn at each concurrency (``--requests`` POSTs of the medium text: p50/p95 latency, requests/s, audio
seconds per second), then the long text once whole and (ours) once streamed (time to the first audio
byte against the full time). With ``--varied KEY`` the POSTs cycle through the medium text and the list
of texts under KEY, so that every request has other tensor shapes than the one before, as in service
(p50 per text length too). Figures are medians over the rounds, which spreads a machine's drift over
all contenders alike; plus each server's start-up time (start to its first 200 on the health path), its
first request after start-up, its peak RSS (VmHWM) and, where nvidia-smi lists it, its GPU memory.
Writes one JSON file naming the machine, the versions and the command."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

WAV_HEADER = 44


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_mib(pid: int) -> int | None:
    """The GPU memory (MiB) nvidia-smi's compute-apps query gives for ``pid``; None without nvidia-smi or
    where it lists no such process."""
    try:
        res = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in res.stdout.splitlines() if res.returncode == 0 else []:
        fields = [f.strip() for f in line.split(",")]
        if fields[0] == str(pid) and len(fields) > 1 and fields[1].isdigit():
            return int(fields[1])
    return None


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    out = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "kernel": platform.release(),
           "python": platform.python_version()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            out["gpu"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


class Server:
    def __init__(self, kind: str, model: str, log_dir: Path, extra: list[str] | None = None):
        self.kind = kind
        self.port = free_port()
        ours, device = (kind.split("-", 2) + [""])[:2]
        if device not in ("cpu", "gpu"):
            raise SystemExit(f"unknown contender {kind!r}: ours-cpu, ours-gpu, piper-cpu, piper-gpu[-LABEL]")
        if ours == "ours":
            cmd = [sys.executable, "-m", "piper_gpu_server", "--voice", f"voice={model}", "--port", str(self.port),
                   "--max-text-chars", "5000"] + (["--cpu"] if device == "cpu" else []) + (extra or [])
            self.path, self.body = "/tts", lambda text, stream=False: {"text": text, **({"stream": True} if stream else {})}
            self.health = "/health"
        elif ours == "piper":
            cmd = [sys.executable, "-m", "piper.http_server", "-m", model, "--host", "127.0.0.1",
                   "--port", str(self.port)] + (["--cuda"] if device == "gpu" else []) + (extra or [])
            self.path, self.body = "/synthesize", lambda text, stream=False: {"text": text}
            self.health = "/voices"
        else:
            raise SystemExit(f"unknown contender {kind!r}: ours-cpu, ours-gpu, piper-cpu, piper-gpu[-LABEL]")
        self.log = open(log_dir / f"{kind}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.command = " ".join(cmd)
        started = time.monotonic()
        deadline = started + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{kind} exited {self.proc.returncode} during start-up: see {self.log.name}")
            try:
                status, _, _ = self.request("GET", self.health, None)
                if status == 200:
                    self.startup_s = round(time.monotonic() - started, 2)
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind} did not answer {self.health} within 300 s: see {self.log.name}")
            time.sleep(0.3)

    def request(self, method: str, path: str, body, first_audio: list | None = None):
        """(status, response bytes, seconds); ``first_audio`` gets the seconds to the first audio byte."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        started = time.perf_counter()
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = b""
            while chunk := resp.read1(65536):
                data += chunk
                if first_audio is not None and not first_audio and len(data) > WAV_HEADER:
                    first_audio.append(time.perf_counter() - started)
            return resp.status, data, time.perf_counter() - started
        finally:
            conn.close()

    def peak_rss_mib(self) -> float:
        return self._status_mib("VmHWM:")

    def rss_mib(self) -> float:
        return self._status_mib("VmRSS:")

    def _status_mib(self, key: str) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key)) / 1024

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def audio_seconds(wav: bytes, rate: int) -> float:
    return max(len(wav) - WAV_HEADER, 0) / (2 * rate)


def load_run(server: Server, texts: str | list[str], requests: int, concurrency: int, rate: int) -> dict:
    """``requests`` POSTs, ``concurrency`` at a time, cycling through ``texts`` (one text: all alike)."""
    texts = [texts] if isinstance(texts, str) else texts
    latencies, audio, failures = [], [], []
    by_chars: dict[int, list[float]] = {}
    lock = threading.Lock()
    todo = list(range(requests))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                text = texts[(requests - len(todo)) % len(texts)]
                todo.pop()
            status, data, seconds = server.request("POST", server.path, server.body(text))
            with lock:
                if status == 200:
                    latencies.append(seconds)
                    audio.append(audio_seconds(data, rate))
                    by_chars.setdefault(len(text), []).append(seconds)
                else:
                    failures.append(status)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    out = {"concurrency": concurrency, "requests": requests, "failed": len(failures),
           "p50_ms": round(statistics.median(latencies) * 1000, 1), "p95_ms": round(q[18] * 1000, 1),
           "requests_per_s": round(len(latencies) / wall, 3), "audio_s_per_s": round(sum(audio) / wall, 2)}
    if len(texts) > 1:
        out["p50_ms_by_chars"] = {str(n): round(statistics.median(v) * 1000, 1) for n, v in sorted(by_chars.items())}
    return out


def first_audio_run(server: Server, text: str, stream: bool) -> dict:
    first: list = []
    status, data, seconds = server.request("POST", server.path, server.body(text, stream), first)
    return {"stream": stream, "status": status, "first_audio_ms": round(first[0] * 1000, 1) if first else None,
            "total_ms": round(seconds * 1000, 1),
            "first_audio_share": round(first[0] / seconds, 3) if first else None}


def summarise(runs: list[dict]) -> dict:
    """One concurrency level over its rounds: the median of each figure, and the rounds themselves."""
    keys = ("p50_ms", "p95_ms", "requests_per_s", "audio_s_per_s")
    out = {"concurrency": runs[0]["concurrency"], "rounds": len(runs), "requests": sum(r["requests"] for r in runs),
           "failed": sum(r["failed"] for r in runs)}
    out.update({k: round(statistics.median(r[k] for r in runs), 3) for k in keys})
    if "p50_ms_by_chars" in runs[0]:
        out["p50_ms_by_chars"] = {n: round(statistics.median(r["p50_ms_by_chars"][n] for r in runs
                                                              if n in r.get("p50_ms_by_chars", {})), 1)
                                  for n in runs[0]["p50_ms_by_chars"]}
    out["per_round"] = [{k: r[k] for k in keys} for r in runs]
    return out


def first_request(server: Server, text: str) -> None:
    """The first POST after start-up (``server.first_request_ms``): what a voice's first caller waits."""
    server.first_request_ms = round(server.request("POST", server.path, server.body(text))[2] * 1000, 1)


def long_text_runs(server: Server, text: str) -> list[dict]:
    """The long text once whole and, on this server, once streamed."""
    return [first_audio_run(server, text, False)] + (
        [first_audio_run(server, text, True)] if server.kind.startswith("ours") else [])


def contender_entry(server: Server, runs_by_level: list[list[dict]], long_runs: list[dict]) -> dict:
    """One contender's figures: each concurrency level over its rounds, the long text, start-up, memory."""
    entry = {"command": server.command, "startup_s": server.startup_s,
             "first_request_ms": server.first_request_ms, "load": [summarise(runs) for runs in runs_by_level]}
    for stream in (False, True):
        mine = [r for r in long_runs if r["stream"] is stream]
        if mine:
            entry["long_text" + ("_stream" if stream else "")] = {
                "first_audio_ms": statistics.median(r["first_audio_ms"] for r in mine),
                "total_ms": statistics.median(r["total_ms"] for r in mine),
                "first_audio_share": statistics.median(r["first_audio_share"] for r in mine),
                "per_round": mine}
    if server.kind.startswith("ours"):
        entry["health"] = json.loads(server.request("GET", "/health", None)[1])
    entry["peak_rss_mib"] = round(server.peak_rss_mib(), 1)
    entry["gpu_mib"] = gpu_mib(server.proc.pid)
    return entry


def measure_alone(server: Server, cycle: list[str], long_text: str, levels: list[int], rounds: int, requests: int,
                  rate: int) -> dict:
    """One contender on its own (no other contender between its rounds): ``rounds`` rounds of every level, then
    the long text; its entry as :func:`main` writes it. For a caller that keeps what each contender measured
    before the next one starts (scripts/gpu_proof.py)."""
    runs = {c: [] for c in levels}
    long_runs = []
    for _ in range(rounds):
        for c in levels:
            runs[c].append(load_run(server, cycle, requests, c, rate))
        long_runs += long_text_runs(server, long_text)
    return contender_entry(server, [runs[c] for c in levels], long_runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m piper_gpu_server.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the voice's .onnx (its .onnx.json beside it)")
    p.add_argument("--texts", required=True, help="JSON with the texts (keys --medium and --long)")
    p.add_argument("--medium", default="en_medium")
    p.add_argument("--long", default="en_long")
    p.add_argument("--contenders", default="ours-cpu,piper-cpu")
    p.add_argument("--requests", type=int, default=16, help="requests per contender, concurrency level and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds; in each, every contender takes its turn at each level (machine drift hits all alike)")
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--ours-args", default="", help="more flags for this server (e.g. --syntheses-per-voice 4)")
    p.add_argument("--args", action="append", default=[], metavar="KIND=FLAGS",
                   help="more flags for one contender (after --ours-args), e.g. 'ours-gpu-serial=--syntheses-per-voice 1'")
    p.add_argument("--varied", default="", metavar="KEY",
                   help="the texts' key of a list: the POSTs cycle through the medium text and these (new shapes each)")
    p.add_argument("--machine", default="", help="words naming the machine, kept with the figures")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    texts = json.loads(Path(args.texts).read_text())
    if args.varied and not (isinstance(texts.get(args.varied), list) and texts[args.varied]):
        raise SystemExit(f"--varied {args.varied!r}: {args.texts} has no list of texts under that key")
    cycle = [texts[args.medium]] + (texts[args.varied] if args.varied else [])
    rate = json.loads(Path(args.model + ".json").read_text())["audio"]["sample_rate"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / (out.stem + "-logs")
    log_dir.mkdir(exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    kinds = args.contenders.split(",")
    extra = {kind: args.ours_args.split() if kind.startswith("ours-") else [] for kind in kinds}
    for item in args.args:
        kind, _, flags = item.partition("=")
        if kind not in extra:
            raise SystemExit(f"--args {item!r}: {kind!r} is not among --contenders {args.contenders}")
        extra[kind] += flags.split()
    result = {"command": "python -m piper_gpu_server.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": {"words": args.machine, **machine()},
              "voice": Path(args.model).stem, "texts": {"medium": len(texts[args.medium]), "long": len(texts[args.long]),
                                                        **({"varied": [len(t) for t in cycle]} if args.varied else {})},
              "method": f"all contenders running at once; {args.rounds} rounds, in each every contender in turn at each "
                        f"concurrency ({args.requests} POSTs of "
                        + (f"the medium text and {args.varied} in turn" if args.varied else "the medium text")
                        + "), then the long text once whole and "
                        "(this server) once streamed; figures are medians over the rounds",
              "contenders": {}}
    servers = {}
    try:
        for kind in kinds:
            servers[kind] = Server(kind, args.model, log_dir, extra[kind])
            first_request(servers[kind], texts[args.medium])
        runs = {k: {c: [] for c in levels} for k in kinds}
        long_runs = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for c in levels:
                for kind in kinds:
                    runs[kind][c].append(load_run(servers[kind], cycle, args.requests, c, rate))
            for kind in kinds:
                long_runs[kind] += long_text_runs(servers[kind], texts[args.long])
        for kind, server in servers.items():
            result["contenders"][kind] = contender_entry(server, [runs[kind][c] for c in levels], long_runs[kind])
    finally:
        for server in servers.values():
            server.stop()
    out.write_text(json.dumps(result, indent=1) + "\n")
    for kind, entry in result["contenders"].items():
        print(kind, " ".join(f"c{r['concurrency']}: p50 {r['p50_ms']:.0f} ms, {r['requests_per_s']:.2f} req/s;"
                             for r in entry["load"]),
              f"long text: first audio {entry['long_text']['first_audio_ms']:.0f} ms of "
              f"{entry['long_text']['total_ms']:.0f} ms" + (
                  f", streamed {entry['long_text_stream']['first_audio_ms']:.0f} ms of "
                  f"{entry['long_text_stream']['total_ms']:.0f} ms" if "long_text_stream" in entry else ""),
              f"; start-up {entry['startup_s']} s, first request {entry['first_request_ms']:.0f} ms"
              f"; peak RSS {entry['peak_rss_mib']:.0f} MiB" + (f", GPU {entry['gpu_mib']} MiB" if entry["gpu_mib"] else ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
