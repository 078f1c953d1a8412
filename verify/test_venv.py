"""Plan step 5: the Piper venv holds exactly one ONNX Runtime, the GPU build, with its CUDA provider."""

import pytest

from conftest import expect
from libs import fix_for_missing

DISTS = """
import json, importlib.metadata as m
print(json.dumps({d.metadata["Name"].lower().replace("_", "-"): d.version for d in m.distributions()}))
"""


@pytest.fixture(scope="module")
def dists(service_env):
    rc, data, res = service_env.python(DISTS)
    expect(rc == 0, f"venv python does not run: {res.stderr.strip()[-300:]}", "a working venv", "re-run the deploy")
    return data


def test_exactly_one_onnxruntime_the_gpu_build(dists, applied, target):
    ort = {d: v for d, v in dists.items() if d in applied.onnxruntime_distributions}
    pip = f"{target['venv_dir']}/bin/pip"
    expect(ort == {"onnxruntime-gpu": applied.onnxruntime_gpu_version}, f"ONNX Runtime distributions in the venv: {ort}",
           f"only onnxruntime-gpu {applied.onnxruntime_gpu_version}",
           f"{pip} uninstall -y {' '.join(sorted(set(ort) - {'onnxruntime-gpu'})) or 'onnxruntime'} && "
           f"{pip} install --force-reinstall --no-deps onnxruntime-gpu=={applied.onnxruntime_gpu_version} "
           "(or re-run the deploy): the CPU build shadows the GPU one and CUDA is silently ignored")


def test_piper_tts_version(dists, applied):
    expect(dists.get("piper-tts") == applied.piper_tts_version, f"piper-tts {dists.get('piper-tts')}",
           f"piper-tts {applied.piper_tts_version}", "re-run the deploy")


def test_venv_holds_every_pinned_distribution(dists, applied, target):
    """The whole lock, NVIDIA's CUDA wheels included when cuda_source=pip."""
    wrong = {n: dists.get(n, "missing") for n, v in applied.python_requirements.items() if dists.get(n) != v}
    expect(not wrong, f"venv distributions off the lock: {wrong}",
           f"every pin in {target['piper_dir']}/requirements.lock", "re-run the deploy (installs the lock)")


def test_cuda_provider_available(service_env, applied):
    rc, data, res = service_env.python("import json, onnxruntime; print(json.dumps(onnxruntime.get_available_providers()))")
    expect(rc == 0 and "CUDAExecutionProvider" in (data or []), f"available providers: {data or res.stderr.strip()[-200:]}",
           "CUDAExecutionProvider available", "the CPU onnxruntime is installed instead of onnxruntime-gpu: re-run the deploy")


def test_cuda_provider_library_dependencies_resolve(service_env, target, applied):
    lib = service_env.run(f"ls {target['venv_dir']}/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so")
    expect(lib.rc == 0, "no libonnxruntime_providers_cuda.so in the venv", "onnxruntime-gpu's CUDA provider library",
           "re-run the deploy (installs onnxruntime-gpu)")
    ldd = service_env.run(f"ldd {lib.stdout.strip()}")
    missing = sorted({line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line})
    expect(ldd.rc == 0 and not missing, f"ldd: {', '.join(missing)} not found" if missing else ldd.stderr.strip(),
           "every dependency of the CUDA provider resolves", fix_for_missing(applied, missing))


SESSION = """
import json, onnxruntime as ort
s = ort.InferenceSession({model!r}, providers=[("CUDAExecutionProvider", {{"cudnn_conv_algo_search": "HEURISTIC"}}), "CPUExecutionProvider"])
print(json.dumps(s.get_providers()))
"""


def test_real_session_uses_cuda(needs_gpu, service_env, target):
    for voice, model in target["voice_files"].items():
        rc, providers, res = service_env.python(SESSION.format(model=model))
        expect(rc == 0 and providers and providers[0] == "CUDAExecutionProvider",
               f"voice {voice}: session providers {providers or res.stderr.strip()[-300:]}",
               "CUDAExecutionProvider first in get_providers()",
               "see the onnxruntime error: a CUDA/cuDNN library failed to load (run `python -m piper_gpu diagnose`)")
