#!/usr/bin/env python3
"""Draw the measured results (results/*.json) as the pictures in docs/results.md (docs/img/*.png).

    python scripts/plot_results.py            # needs matplotlib (pip install matplotlib); not a test dependency

Each picture is drawn from the benchmark files as they are; a file is picked by what it holds:
  - server benchmarks (``python -m piper_gpu_server.bench``): ``contenders`` with ``load`` (p50 and requests/s
    by concurrency) and ``long_text``; those whose ``machine`` names a GPU are the GPU runs;
  - ``p50_ms_by_chars`` in a benchmark's load (runs over varied texts): latency by text length;
  - ``scripts/gpu_providers.py`` output (``variants`` with ``same_shape_ms``/``new_shapes_ms``);
  - ``scripts/gpu-proof`` output (``checks.gpu_faster_than_cpu``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
IMG = ROOT / "docs" / "img"

#: Readable names of the benchmark's contenders.
NAMES = {
    "ours-cpu": "this server, CPU",
    "ours-cpu-one": "this server, CPU, one session",
    "ours-cpu-stable": "this server, CPU, shape-stable on",
    "piper-cpu": "Piper's http_server, CPU",
    "ours-gpu": "this server, GPU (HEURISTIC)",
    "ours-gpu-best": "this server, GPU (DEFAULT)",
    "ours-gpu-s8": "this server, GPU, 8 syntheses per voice",
    "ours-gpu-serial": "this server, GPU, 1 synthesis per voice",
    "piper-gpu": "Piper's http_server, GPU",
}


#: The CPU runs drawn by text length: today's defaults (3 and 5 rounds) and the varied texts of the shape-stable run.
CPU_LATENCY_RUNS = ("2026-11-26-server-bench.json", "2026-11-26-server-bench-5-rounds.json",
                    "2026-12-03-shape-stable-cpu-bench.json")


def load() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def benches(files: dict[str, dict], gpu: bool) -> dict[str, dict]:
    return {name: d for name, d in files.items()
            if isinstance(d.get("contenders"), dict) and bool((d.get("machine") or {}).get("gpu")) == gpu}


def c1_p50(contender: dict) -> float | None:
    return next((x["p50_ms"] for x in contender.get("load", []) if x["concurrency"] == 1), None)


def _save(fig, name: str) -> Path:
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / name
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path


def latency_by_length(plt, files) -> Path:
    """CPU: p50 at concurrency 1 (the medium text, or each varied text) and the long text whole, by length."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, d in benches(files, gpu=False).items():
        if name not in CPU_LATENCY_RUNS:
            continue
        texts = d.get("texts", {})
        for key, c in d["contenders"].items():
            by_chars = next((x.get("p50_ms_by_chars") for x in c.get("load", []) if x["concurrency"] == 1), None)
            if by_chars:
                points = sorted((int(k), v) for k, v in by_chars.items())
            else:
                points = [(texts["medium"], c1_p50(c))] if "medium" in texts and c1_p50(c) else []
            if "long" in texts and c.get("long_text"):
                points.append((texts["long"], c["long_text"]["total_ms"]))
            if len(points) < 2:
                continue
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", alpha=0.8, label=f"{NAMES.get(key, key)} ({name.removesuffix('.json')})")
    ax.set_xlabel("text length (characters)")
    ax.set_ylabel("time to the whole WAV, concurrency 1 (ms, median)")
    ax.set_title("Latency by text length on the CPU (en_US-joe-medium, 2-core VM)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, "cpu-latency-by-text-length.png")


def throughput_by_concurrency(plt, files) -> Path:
    """CPU: requests/s by concurrency, this server against Piper's own, in the runs that measured both."""
    runs = {n: d for n, d in benches(files, gpu=False).items()
            if {"ours-cpu", "piper-cpu"} <= set(d["contenders"]) and len(d["contenders"]["ours-cpu"]["load"]) > 1}
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.8), sharey=True, squeeze=False)
    for ax, (name, d) in zip(axes[0], runs.items()):
        for key, style in (("ours-cpu", "-o"), ("piper-cpu", "--s")):
            load = d["contenders"][key]["load"]
            ax.plot([x["concurrency"] for x in load], [x["requests_per_s"] for x in load], style, label=NAMES[key])
        ax.set_title(name.removesuffix(".json"), fontsize=8)
        ax.set_xlabel("concurrency")
        ax.set_xticks([1, 4, 8])
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("requests/s (148 characters)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("This server against Piper's http_server on the CPU (2-core VM)", fontsize=10)
    return _save(fig, "server-bench-cpu.png")


def cpu_against_gpu(plt, files) -> Path:
    """The GPU machine: the same server on its CPU and on its GPU, by text length and by concurrency."""
    runs = benches(files, gpu=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, d in runs.items():
        tag = "options run" if "options" in name else "main run"
        texts = d["texts"]
        for key, c in d["contenders"].items():
            label = f"{NAMES.get(key, key)} ({tag})"
            style = "--" if "cpu" in key else "-"
            left.plot([texts["medium"], texts["long"]], [c1_p50(c), c["long_text"]["total_ms"]], style, marker="o",
                      label=label)
            right.plot([x["concurrency"] for x in c["load"]], [x["requests_per_s"] for x in c["load"]], style,
                       marker="o", label=label)
    proof = next((d["checks"]["gpu_faster_than_cpu"]["found"] for d in files.values()
                  if "gpu_faster_than_cpu" in (d.get("checks") or {})), None)
    if proof:
        left.scatter([proof["text_chars"]] * 2, [proof["median_ms_gpu"], proof["median_ms_cpu"]], marker="x",
                     color="black", zorder=5, label=f"gpu-proof: GPU {proof['median_ms_gpu']} ms, CPU "
                                                    f"{proof['median_ms_cpu']} ms ({proof['speedup']}x)")
    left.set_xlabel("text length (characters)")
    left.set_ylabel("time to the whole WAV, concurrency 1 (ms, median)")
    left.set_title("Latency by text length", fontsize=10)
    right.set_xlabel("concurrency")
    right.set_ylabel("requests/s (148 characters)")
    right.set_title("Throughput by concurrency", fontsize=10)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    left.legend(fontsize=6)
    fig.suptitle("CPU against GPU: NVIDIA H200, 16 Xeon cores, onnxruntime-gpu 1.31.1 on CUDA 13 (not the deploy's stack)",
                 fontsize=9)
    return _save(fig, "cpu-vs-gpu-h200.png")


def shape_changes(plt, files) -> Path | None:
    """One piece in-process: the same shapes again against new shapes, per provider option."""
    d = next((d for d in files.values() if isinstance(d.get("variants"), dict)), None)
    if d is None:
        return None
    names = [n for n, v in d["variants"].items() if "same_shape_ms" in v]
    same = [d["variants"][n]["same_shape_ms"] for n in names]
    new = [d["variants"][n]["new_shapes_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], same, width=0.4, label="same shapes as the previous run")
    ax.bar([x + 0.2 for x in xs], new, width=0.4, label="new shapes (durations' noise, as in service)")
    for x, a, b in zip(xs, same, new):
        ax.text(x - 0.2, a, f"{a:g}", ha="center", va="bottom", fontsize=7)
        ax.text(x + 0.2, b, f"{b:g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per piece (median, log scale)")
    ax.set_title(f"One {d['pieces'][0]}-phoneme piece on the H200 (onnxruntime {d['onnxruntime']}): "
                 "the cost follows shape changes", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, "gpu-shape-changes-h200.png")


def main() -> int:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is needed: pip install matplotlib", file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = load()
    for draw in (latency_by_length, throughput_by_concurrency, cpu_against_gpu, shape_changes):
        path = draw(plt, files)
        plt.close("all")
        if path:
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
