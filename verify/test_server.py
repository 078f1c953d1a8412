"""Plan step 7: the patched server, as rendered from its template, logging GPU detection."""

import re

from conftest import expect


def test_rendered_files_are_what_the_deploy_wrote(host, target):
    """Every file the deploy rendered (server, unit or control script, environment, linker config,
    profile) still has the content it wrote: a hand-edited, half-written or CPU-only server fails."""
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


def last_start(log: str) -> str:
    starts = [m.start() for m in re.finditer(r"start: pid=", log)]
    return log[log.rfind("\n", 0, starts[-1]) + 1:] if starts else ""


def test_startup_log_names_providers_and_gpu(server_log, applied, target):
    log = last_start(server_log())
    expect("available_providers=" in log and "GPU detection:" in log,
           "no start-up lines with available providers and GPU detection in " + target["log_path"],
           "start-up lines: available providers, GPU detection, active provider per voice",
           "the running server is not the patched one: re-run the deploy")
    for voice in applied.voices:
        m = re.search(rf"voice {re.escape(voice.name)}: active provider (\S+)", log)
        expect(bool(m), f"no 'active provider' line for voice {voice.name}", "one line per voice",
               "re-run the deploy")
        if applied.use_gpu and m.group(1) != "CUDAExecutionProvider":
            expect(f"voice {voice.name}: GPU wanted but the session runs on" in log,
                   f"voice {voice.name} on {m.group(1)} without a WARN line", "a WARN naming the cause",
                   "re-run the deploy (the server template logs the cause)")
