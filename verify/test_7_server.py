"""Plan step 7: the patched server, as rendered from its template, logging GPU detection."""

import re

from conftest import expect
from piper_gpu.render import render
from piper_gpu.target import Target
from piper_gpu.steps.service import server_defaults


def _target(applied, target) -> Target:
    return Target(settings=applied, is_wsl=target["is_wsl"], arch=target["arch"], repo_path=target["repo_path"],
                  home=target["home"], service_mode=target["service_mode"], systemd_running=False, gpu=None)


def test_server_is_the_deployed_template(host, applied, target):
    want = render("piper_http_server.py.j2", defaults_repr=repr(server_defaults(_target(applied, target), target.get("api_key_file"))))
    f = host.file(target["server_path"])
    have = f.content_string if f.exists else None
    expect(have == want, f"{target['server_path']} " + ("missing" if have is None else "differs from the deployed template "
                                                          "(a CPU-only or hand-edited server?)"),
           "the server rendered from templates/piper_http_server.py.j2 with the applied settings",
           "re-run the deploy (restores the server and restarts the service)")


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
