"""Plan step 7: the server (the piper-gpu-server package in the venv, run with its config file),
logging GPU detection."""

import re

from conftest import expect, health


def test_rendered_files_are_what_the_deploy_wrote(host, target):
    """Every file the deploy rendered (server settings, unit or control script, environment, linker
    config, profile) still has the content it wrote: a hand-edited or half-written one fails."""
    recorded = target.get("installed_files") or {}
    expect(bool(recorded), f"no installed_files in {target.get('_path', 'target.json')}",
           "the sha256 of every rendered file, recorded by the deploy", "re-run the deploy")
    wrong = []
    for path, want in sorted(recorded.items()):
        f = host.file(path)
        have = f.sha256sum if f.exists else None
        if have != want:
            wrong.append(f"{path} " + ("missing" if have is None else f"sha256 {have[:12]}... (deploy wrote {want[:12]}...)"))
    expect(not wrong, "; ".join(wrong) + " (hand-edited, half-written or replaced?)",
           f"the {len(recorded)} files as the deploy rendered them",
           "re-run the deploy (restores them and restarts the service when its files change)")


def test_server_package_is_the_deployed_build(service_env, target):
    """The venv imports piper_gpu_server from its own site-packages, at the version the deploy built
    from server/ (its sources' hash in the version): not an older build, not a copy elsewhere."""
    rc, found, res = service_env.python(
        "import importlib.metadata as m, json, piper_gpu_server as s; "
        "print(json.dumps({'version': m.version('piper-gpu-server'), 'file': s.__file__}))")
    expect(rc == 0 and bool(found), f"{target['venv_dir']}/bin/python cannot import piper_gpu_server: "
           f"{res.stderr.strip()[-300:]}", "the server package in the venv", "re-run the deploy")
    expect(found["version"] == target["server_version"], f"piper-gpu-server {found['version']} in the venv",
           f"{target['server_version']} (built from this deploy's server/)", "re-run the deploy")
    expect(found["file"].startswith(target["venv_dir"] + "/"), f"piper_gpu_server imported from {found['file']}",
           f"the venv's site-packages under {target['venv_dir']}",
           "remove the other copy (PYTHONPATH, a .pth file, a file in the working directory)")


def test_server_runs_with_the_deployed_config(service_env, base_url, target):
    """The running server read the deploy's config file, and what it holds is what the deploy meant:
    a hand-edited key, or a service started by hand with other flags, fails here."""
    h = health(service_env, base_url) or {}
    expect(h.get("config_file") == target["server_config"], f"the service runs with config {h.get('config_file')}",
           target["server_config"], "re-run the deploy (the unit runs python -m piper_gpu_server --config FILE)")
    want = target["server_config_values"]
    have = h.get("config") or {}
    wrong = sorted(k for k in want if have.get(k) != want[k])
    expect(not wrong, "; ".join(f"{k}={have.get(k)!r}" for k in wrong) + " in the running server",
           "; ".join(f"{k}={want[k]!r}" for k in wrong), "re-run the deploy (restores the file, restarts the service)")


def last_start(log: str) -> str:
    starts = [m.start() for m in re.finditer(r"start: pid=", log)]
    return log[log.rfind("\n", 0, starts[-1]) + 1:] if starts else ""


def test_startup_log_names_providers_and_gpu(server_log, applied, target):
    log = last_start(server_log())
    expect("available_providers=" in log and "GPU detection:" in log,
           "no start-up lines with available providers and GPU detection in " + target["log_path"],
           "start-up lines: available providers, GPU detection, active provider per voice",
           "the running server is not the deployed one: re-run the deploy")
    for voice in applied.voices:
        m = re.search(rf"voice {re.escape(voice.name)}: active provider (\S+)", log)
        expect(bool(m), f"no 'active provider' line for voice {voice.name}", "one line per voice",
               "re-run the deploy")
        if applied.use_gpu and m.group(1) != "CUDAExecutionProvider":
            expect(f"voice {voice.name}: GPU wanted but the session runs on" in log,
                   f"voice {voice.name} on {m.group(1)} without a WARN line", "a WARN naming the cause",
                   "re-run the deploy (the server logs the cause)")
