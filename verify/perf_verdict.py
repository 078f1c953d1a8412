"""The performance check's verdict on a piper-tts-perf result: pure logic (no host, no imports from
verify's conftest), so that the package's unit tests can prove it both ways on canned results."""

from __future__ import annotations


def speedup_verdict(data: dict, min_speedup: float) -> tuple[bool, str, str, str]:
    """Whether a piper-tts-perf result shows the GPU at least ``min_speedup`` times the CPU on the medium
    texts, as (ok, found, expected, fix), the fix naming the cause it finds in the result."""
    medium = data["sizes"]["medium"]
    stable = data.get("shape_stable") or {}
    found = (f"medium texts ({medium.get('texts', 1)} in turn): service {medium['service_median_ms']} ms on "
             f"{data['service_provider']}, CPU {medium['cpu_median_ms']} ms (x{medium['speedup']})")
    expected = f"the service on CUDAExecutionProvider, at least x{min_speedup} faster than the CPU (min_speedup)"
    if data["service_provider"] != "CUDAExecutionProvider":
        return (False, found, expected, "the service runs on the CPU: read its WARN line for the cause; "
                "run `python -m piper_gpu diagnose`")
    ok = medium["speedup"] >= min_speedup
    if not stable.get("active"):
        return (ok, found + f"; shape-stable synthesis is off ({stable.get('reason')})", expected,
                "set piper_gpu_shape_stable=auto (the default) and re-run the deploy: with onnxruntime-gpu 1.20 and "
                "later every new tensor shape rebuilds the convolutions' cuDNN plans (microsoft/onnxruntime#23006), "
                "and every Piper piece has new shapes. Where the voice cannot be split (its WARN line says why), "
                "piper_gpu_cuda_options=cudnn_conv_algo_search=DEFAULT rebuilds them faster: 124 against 210 ms a "
                "piece with new shapes on an H200 (results/gpu-providers-2026-11-26-NVIDIA-H200.json)")
    fell_back = sum((stable.get("fallbacks_during_run") or {}).values())
    if fell_back:
        return (ok, found + f"; {fell_back} piece(s) fit no bucket", expected,
                "raise the largest of piper_gpu_frame_buckets (and of piper_gpu_phoneme_buckets with "
                "piper_gpu_encoder_provider=cuda), or lower piper_gpu_sentence_max_chars, and re-run the deploy")
    # with stable shapes every plan is built once: HEURISTIC's plans ran 22 ms a piece on an H200, DEFAULT's
    # 69 and EXHAUSTIVE's 24 (results/gpu-providers-2026-11-26-NVIDIA-H200.json), so no other search is advised
    return (ok, found + "; shape-stable synthesis on", expected,
            "check what else uses the GPU (nvidia-smi) and the service's log for its sessions and GPU memory; keep "
            "cudnn_conv_algo_search=HEURISTIC (the default: with stable shapes DEFAULT ran 3x slower on an H200); "
            "run `python -m piper_gpu diagnose`")
