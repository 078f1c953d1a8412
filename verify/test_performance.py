"""Plan step 9: the performance test: the service against a CPU session of the same voice."""

import json

import checks
from conftest import PERF_RESULTS, expect, health, report
from perf_verdict import speedup_verdict

def run_perf(service_env, target, voice, runs, sizes):
    res = service_env.run(f"{target['perf']} --runs {runs} --voice {voice} --sizes {sizes}")
    report(checks.perf_run_problem(res.rc, res.stdout, res.stderr, target["perf"]))
    data = json.loads(res.stdout.strip().splitlines()[-1])
    PERF_RESULTS.append(data)
    return data


def test_performance_script_runs_and_writes_json(host, service_env, target, applied):
    data = run_perf(service_env, target, applied.voices[0].name, 1, "medium")
    saved = host.file(target["perf_out"])
    report(checks.perf_results_problem(saved.content_string if saved.exists else None, data, target["perf_out"]))


def test_gpu_faster_than_cpu(needs_gpu, service_env, target, applied):
    """The service on CUDA (/health, before it is timed, and the provider the run itself saw), then at
    least min_speedup times the CPU."""
    voice = applied.voices[0].name
    report(checks.health_cuda_problem(health(service_env, target["base_url"]), [voice]))
    data = run_perf(service_env, target, voice, applied.perf_runs, "short,medium,long")
    report(checks.perf_provider_problem(data.get("service_provider")))
    expect(*speedup_verdict(data, applied.min_speedup))
