"""Plan step 5: the Piper venv holds exactly one ONNX Runtime, the GPU build, with its CUDA provider."""

import pytest

import checks
from conftest import expect, report
from libs import fix_for_missing

@pytest.fixture(scope="module")
def pip_list(service_env, target):
    """pip's own view of the venv (``pip list``), with what pip warned about."""
    res = service_env.run(f"{target['venv_dir']}/bin/python -m pip --disable-pip-version-check list --format=json")
    expect(res.rc == 0, f"`pip list` in the venv fails: {res.stderr.strip()[-300:]}", "a working venv", "re-run the deploy")
    return res


@pytest.fixture(scope="module")
def dists(pip_list):
    return checks.parse_pip_list(pip_list.stdout)


def test_pip_sees_no_invalid_distribution(pip_list, target):
    """pip's ``~``-prefixed debris of an interrupted or failed install: pip warns and no longer lists
    the distribution it was removing (importlib.metadata still does)."""
    report(checks.pip_sees_no_invalid_distribution_problem(pip_list.stderr, target["venv_dir"]))


def test_venv_files_owned_by_the_service_user(host, applied, target):
    res = host.run(f"find {target['venv_dir']} ! -user {applied.service_user} -printf '%p (%u)\\n' | head -3")
    report(checks.venv_files_owned_problem(res.rc, res.stdout, res.stderr, applied.service_user, target["venv_dir"]))


RECORD_CHECK = """
import base64, hashlib, importlib.metadata as m, json, os, sysconfig
site = sysconfig.get_paths()["purelib"]
names = set({names!r})
bad = {{}}
for d in m.distributions(path=[site]):
    name = (d.metadata["Name"] or "").lower().replace("_", "-")
    if name not in names or os.path.basename(str(d._path)).startswith("~"):
        continue
    for f in d.files or []:
        if not f.hash or f.suffix == ".pyc":  # bytecode: Python rewrites it when stale
            continue
        h = hashlib.new(f.hash.mode)
        try:
            with open(f.locate(), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except FileNotFoundError:
            bad.setdefault(name, []).append(str(f) + " (missing)")
            continue
        if base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode() != f.hash.value:
            bad.setdefault(name, []).append(str(f) + " (changed)")
print(json.dumps({{n: [len(v), v[:3]] for n, v in bad.items()}}))
"""


def test_pinned_distributions_match_their_record(service_env, applied, target):
    """Each pinned distribution's files hash as its RECORD says: nothing overwrote or deleted them (a
    second ONNX Runtime installed over the first and removed again deletes their shared files)."""
    rc, bad, res = service_env.python(RECORD_CHECK.format(names=sorted(applied.python_requirements)))
    report(checks.pinned_distributions_record_problem(rc, bad, res.stderr, applied.python_requirements,
                                                      target["venv_dir"], target.get("server_wheels")))


def test_exactly_one_onnxruntime_the_gpu_build(dists, applied, target):
    report(checks.one_onnxruntime_problem(dists, applied.onnxruntime_distributions, applied.onnxruntime_gpu_version,
                                          target["venv_dir"]))


def test_piper_tts_version(dists, applied):
    report(checks.piper_tts_version_problem(dists, applied.piper_tts_version))


def test_venv_holds_every_pinned_distribution(dists, applied, target):
    """The whole lock, NVIDIA's CUDA wheels included when cuda_source=pip."""
    report(checks.venv_lock_problem(dists, applied.python_requirements, target["piper_dir"]))


def test_cuda_provider_available(service_env, applied):
    rc, data, res = service_env.python("import json, onnxruntime; print(json.dumps(onnxruntime.get_available_providers()))")
    report(checks.available_providers_problem(data if rc == 0 else None, res.stderr.strip()[-200:]))


def test_cuda_provider_library_dependencies_resolve(service_env, target, applied):
    lib = service_env.run(f"ls {target['venv_dir']}/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so")
    expect(lib.rc == 0, "no libonnxruntime_providers_cuda.so in the venv", "onnxruntime-gpu's CUDA provider library",
           "re-run the deploy (installs onnxruntime-gpu)")
    ldd = service_env.run(f"ldd {lib.stdout.strip()}")
    report(checks.provider_ldd_problem(ldd.rc, ldd.stdout, ldd.stderr, lambda missing: fix_for_missing(applied, missing)))


#: A CUDA session of the deployed voice that really runs: Piper's inputs (phoneme ids, their count, the
#: noise/length scales, a speaker id when the voice has several); the run loads cuDNN's sub-libraries.
SESSION = """
import json, traceback, numpy as np, onnxruntime as ort
s = ort.InferenceSession({model!r}, providers=[("CUDAExecutionProvider", {{"cudnn_conv_algo_search": "HEURISTIC"}}), "CPUExecutionProvider"])
out = {{"providers": s.get_providers()}}
ids = np.array([[1, 20, 25, 30, 14, 59, 30, 50, 2]], dtype=np.int64)
feed = {{"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
        "scales": np.array([0.667, 1.0, 0.8], dtype=np.float32)}}
if "sid" in [i.name for i in s.get_inputs()]:
    feed["sid"] = np.array([0], dtype=np.int64)
try:
    audio = s.run(None, feed)[0]
    out["samples"] = int(audio.size)
except Exception:
    out["error"] = traceback.format_exc(limit=2)
print(json.dumps(out))
"""


def test_real_session_uses_cuda(needs_gpu, service_env, target):
    """Each voice in a CUDA session that runs an inference (CUDA first in get_providers(), audio out):
    building the session alone does not load cuDNN's lazily loaded sub-libraries."""
    for voice, model in target["voice_files"].items():
        rc, answer, res = service_env.python(SESSION.format(model=model))
        report(checks.session_problem(voice, answer if rc == 0 else None, res.stderr))
