"""Plan step 9: the performance test: the service against a CPU session of the same voice."""

import json

from conftest import expect
from perf_verdict import speedup_verdict

RESULTS = []


def run_perf(service_env, target, voice, runs, sizes):
    res = service_env.run(f"{target['perf']} --runs {runs} --voice {voice} --sizes {sizes}")
    expect(res.rc == 0, f"{target['perf']} failed: {(res.stderr or res.stdout).strip()[-400:]}",
           "a performance run", "start the service; re-run the deploy (installs the script)")
    data = json.loads(res.stdout.strip().splitlines()[-1])
    RESULTS.append(data)
    return data


def test_performance_script_runs_and_writes_json(host, service_env, target, applied):
    data = run_perf(service_env, target, applied.voices[0].name, 1, "medium")
    saved = host.file(target["perf_out"])
    expect(saved.exists and json.loads(saved.content_string)["sizes"]["medium"]["service_median_ms"] > 0,
           f"{target['perf_out']}: {'missing' if not saved.exists else 'no medians'}", "results JSON on the host",
           "re-run the deploy")
    expect(data["sizes"]["medium"]["cpu_median_ms"] > 0, str(data), "a CPU median", "see the script's error")


def test_gpu_faster_than_cpu(needs_gpu, service_env, target, applied):
    data = run_perf(service_env, target, applied.voices[0].name, applied.perf_runs, "short,medium,long")
    expect(*speedup_verdict(data, applied.min_speedup))
