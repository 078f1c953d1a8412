"""verify's performance verdict (verify/perf_verdict.py), proven both ways on canned piper-tts-perf results."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("perf_verdict", Path(__file__).parents[2] / "verify" / "perf_verdict.py")
perf_verdict = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(perf_verdict)


def result(provider="CUDAExecutionProvider", service=40.0, cpu=160.0, stable=None):
    return {"service_provider": provider,
            "sizes": {"medium": {"texts": 6, "service_median_ms": service, "cpu_median_ms": cpu,
                                 "speedup": round(cpu / service, 2)}},
            "shape_stable": stable if stable is not None else
            {"active": True, "reason": "", "fallbacks_during_run": {"phonemes": 0, "frames": 0}}}


def test_cuda_shape_stable_and_fast_enough_passes():
    ok, found, expected, _ = perf_verdict.speedup_verdict(result(), 3.0)
    assert ok, found
    assert "x4.0" in found and "shape-stable synthesis on" in found and "at least x3.0" in expected


def test_cuda_but_too_slow_fails_with_the_generic_fix():
    ok, found, _, fix = perf_verdict.speedup_verdict(result(service=80.0), 3.0)
    assert not ok and "x2.0" in found and "nvidia-smi" in fix


def test_with_shape_stable_on_the_advice_never_names_the_default_search():
    """With stable shapes cuDNN's DEFAULT search ran 3x slower than HEURISTIC on an H200: advising it
    would make a slow service slower."""
    _, _, _, fix = perf_verdict.speedup_verdict(result(service=80.0), 3.0)
    assert "=DEFAULT" not in fix and "keep cudnn_conv_algo_search=HEURISTIC" in fix


def test_with_shape_stable_off_the_default_search_is_the_fallback_advice():
    stable = {"active": False, "reason": "its graph does not fit the split"}
    _, _, _, fix = perf_verdict.speedup_verdict(result(service=80.0, stable=stable), 3.0)
    assert fix.index("piper_gpu_shape_stable=auto") < fix.index("cudnn_conv_algo_search=DEFAULT")


def test_a_fast_run_on_the_cpu_provider_still_fails():
    """The speed-up alone proves nothing: the service must run on CUDA."""
    ok, found, _, fix = perf_verdict.speedup_verdict(result(provider="CPUExecutionProvider", service=10.0), 3.0)
    assert not ok and "CPUExecutionProvider" in found and "WARN line" in fix


@pytest.mark.parametrize("service,passes", [(80.0, False), (40.0, True)])
def test_shape_stable_off_is_named_as_the_cause(service, passes):
    stable = {"active": False, "reason": "shape_stable is off"}
    ok, found, _, fix = perf_verdict.speedup_verdict(result(service=service, stable=stable), 3.0)
    assert ok is passes
    assert "shape-stable synthesis is off (shape_stable is off)" in found
    assert "piper_gpu_shape_stable=auto" in fix and "23006" in fix


def test_a_result_without_shape_stable_data_counts_as_off():
    data = result(service=80.0)
    del data["shape_stable"]
    ok, found, _, fix = perf_verdict.speedup_verdict(data, 3.0)
    assert not ok and "shape-stable synthesis is off (None)" in found and "piper_gpu_shape_stable" in fix


def test_fallbacks_during_the_run_are_named_with_their_fix():
    stable = {"active": True, "reason": "", "fallbacks_during_run": {"phonemes": 2, "frames": 1}}
    ok, found, _, fix = perf_verdict.speedup_verdict(result(service=80.0, stable=stable), 3.0)
    assert not ok and "3 piece(s) fit no bucket" in found
    assert "piper_gpu_frame_buckets" in fix and "piper_gpu_sentence_max_chars" in fix
