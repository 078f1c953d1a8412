"""Where a Piper voice's time goes on ONNX Runtime's CUDA provider, in-process (no server): the same
phoneme ids through sessions with different CUDA provider options and through the CPU provider, with
the durations' noise (every run a new output length, as in service), without it (the same shapes
every run) and two pieces without it in turn (shapes seen before, but not in the last run); then
several runs at once, and a profile of the best options by operator and provider.

    python scripts/gpu_providers.py --model VOICE.onnx --texts piper_gpu/texts.json --out FILE.json

Needs onnxruntime-gpu and piper-tts (scripts/gpu-proof builds such a venv). Prints one line per variant
and the best options for the server's cuda_options setting; writes everything to --out."""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperVoice

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
VARIANTS = {
    "heuristic": {"cudnn_conv_algo_search": "HEURISTIC"},
    "heuristic-nc1d": {"cudnn_conv_algo_search": "HEURISTIC", "cudnn_conv1d_pad_to_nc1d": "1"},
    "heuristic-same-as-requested": {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"},
    "heuristic-no-max-workspace": {"cudnn_conv_algo_search": "HEURISTIC", "cudnn_conv_use_max_workspace": "0"},
    "default": {"cudnn_conv_algo_search": "DEFAULT"},
    "exhaustive": {"cudnn_conv_algo_search": "EXHAUSTIVE"},
}


def session(model: str, options: dict | None, profile: str | None = None):
    so = onnxruntime.SessionOptions()
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    providers = [(CUDA, options), CPU] if options is not None else [CPU]
    started = time.perf_counter()
    sess = onnxruntime.InferenceSession(model, sess_options=so, providers=providers)
    return sess, (time.perf_counter() - started) * 1000


def timed(sess, feeds) -> float:
    started = time.perf_counter()
    sess.run(None, feeds)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--texts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--budget-s", type=float, default=40.0, help="time one variant may take at most")
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    voice = PiperVoice.load(args.model)
    cfg = voice.config
    text = json.loads(Path(args.texts).read_text())["en_medium"]
    ids = [voice.phonemes_to_ids(s) for s in voice.phonemize(text)]

    def feeds(i: int, noise: bool) -> dict:
        x = np.array([ids[i % len(ids)]], dtype=np.int64)
        return {"input": x, "input_lengths": np.array([x.shape[1]], dtype=np.int64),
                "scales": np.array([cfg.noise_scale, cfg.length_scale, cfg.noise_w_scale if noise else 0.0],
                                   dtype=np.float32)}

    out = {"command": "python scripts/gpu_providers.py " + " ".join(sys.argv[1:]), "onnxruntime": onnxruntime.__version__,
           "pieces": [len(i) for i in ids], "cpus": os.cpu_count(), "variants": {}}
    for name, options in {**VARIANTS, "cpu": None}.items():
        sess, load_ms = session(args.model, options)
        deadline = time.monotonic() + args.budget_s
        first = timed(sess, feeds(0, False))
        entry = {"options": options, "providers": sess.get_providers(), "load_ms": round(load_ms), "first_run_ms": round(first)}
        # the same shapes every run; new ones every run (noise); two pieces' fixed shapes taking turns
        # (whether the cost comes with a shape not seen before or with any change from the last run)
        for key, noise, pieces in (("same_shape_ms", False, 1), ("new_shapes_ms", True, 1),
                                   ("alternating_shapes_ms", False, 2)):
            runs = []
            while len(runs) < args.runs and time.monotonic() < deadline:
                runs.append(timed(sess, feeds(len(runs) % pieces, noise)))
            entry[key] = round(statistics.median(runs), 1) if runs else None
            entry[key + "_runs"] = [round(r, 1) for r in runs]
        out["variants"][name] = entry
        print(f"{name}: first {first:.0f} ms, same shape {entry['same_shape_ms']} ms, new shapes {entry['new_shapes_ms']} ms, "
              f"two pieces' shapes in turn {entry['alternating_shapes_ms']} ms "
              f"(median of {len(entry['new_shapes_ms_runs'])}; piece of {len(ids[0])} ids)", flush=True)
        del sess
    gpu = {k: v for k, v in out["variants"].items() if k != "cpu" and v["new_shapes_ms"] is not None}
    best = min(gpu, key=lambda k: gpu[k]["new_shapes_ms"])
    out["best"] = {"variant": best, "cuda_options": ",".join(f"{k}={v}" for k, v in VARIANTS[best].items())}

    # several runs at once on one session (the server's syntheses_per_voice), new shapes every run
    sess, _ = session(args.model, VARIANTS[best])
    timed(sess, feeds(0, True))
    out["concurrency"] = {}
    for threads in (1, 2, 4, 8, 16):
        per_thread = 4
        def work(k: int) -> None:
            for j in range(per_thread):
                sess.run(None, feeds(k + j, True))
        started = time.perf_counter()
        pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        wall = time.perf_counter() - started
        out["concurrency"][threads] = {"runs": threads * per_thread, "runs_per_s": round(threads * per_thread / wall, 2)}
        print(f"{best}, {threads} at once: {threads * per_thread / wall:.2f} runs/s", flush=True)
    del sess

    # the profile: time by provider and operator over a few runs with new shapes
    prefix = str(Path(args.out).with_suffix("")) + "-profile"
    sess, _ = session(args.model, VARIANTS[best], profile=prefix)
    for j in range(5):
        sess.run(None, feeds(j, True))
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    by_op: dict = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            a = e.get("args", {})
            by_op[(a.get("provider", "?"), a.get("op_name", "?"))] += e.get("dur", 0)
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    total = sum(by_op.values())
    out["profile"] = {"variant": best, "runs": len(runs), "model_run_ms": [round(r / 1000, 1) for r in runs],
                      "kernel_ms_total": round(total / 1000, 1),
                      "top": [{"provider": k[0], "op": k[1], "ms": round(v / 1000, 1)} for k, v in by_op.most_common(20)]}
    trace.unlink()
    for row in out["profile"]["top"][:12]:
        print(f"  {row['provider']:>24} {row['op']:<24} {row['ms']:8.1f} ms", flush=True)
    print(f"  model_run: {out['profile']['model_run_ms']} ms; kernels {out['profile']['kernel_ms_total']} ms in all")
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"best: {best} -> cuda_options={out['best']['cuda_options']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
