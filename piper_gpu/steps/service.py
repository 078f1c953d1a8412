"""Steps 7-8: the patched piper_http_server.py from its template, and the service that runs it:
a systemd unit when systemd runs, else a pid-file start from the shell profile. Restarted only
when one of its inputs changed (or it is not running)."""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.operations import files, server, systemd

from piper_gpu.facts import PidAlive
from piper_gpu.operations import ini_option
from piper_gpu.resources import TEXTS_JSON
from piper_gpu.steps.base import template_file
from piper_gpu.steps.cudnn import library_dirs
from piper_gpu.target import (API_KEY_FILE, AUTOSTART, CTL, ENV_FILE, ETC, PERF, SETTINGS_FILE, TARGET_FILE, TEXTS_FILE,
                              UNIT, UNIT_FILE, WSL_CONF, Target)


def api_key_path(settings) -> str | None:
    """Where the server reads its API key, or None when POST /tts is open."""
    return API_KEY_FILE if settings.api_key else None


def server_defaults(target: Target, api_key_file: str | None) -> dict:
    """The defaults baked into the rendered server (each overridable on its command line).
    The key itself is never rendered: the server reads ``api_key_file``."""
    s = target.settings
    return {
        "host": s.bind_address,
        "port": s.port,
        "voices": target.voice_models,
        "use_gpu": s.use_gpu,
        "max_text_chars": s.max_text_chars,
        "warmup": s.warmup,
        "log_file": target.log_path,
        "api_key_file": api_key_file,
        "max_pending": s.max_pending,
    }


def target_record(target: Target) -> dict:
    """What verify needs besides the settings: resolved paths and modes."""
    return {
        "home": target.home,
        "is_wsl": target.is_wsl,
        "arch": target.arch,
        "repo_path": target.repo_path,
        "platform": target.platform,
        "service_mode": target.service_mode,
        "piper_dir": target.piper_dir,
        "venv_dir": target.venv_dir,
        "models_dir": target.models_dir,
        "server_path": target.server_path,
        "log_path": target.log_path,
        "pid_file": f"{target.run_dir}/piper-tts.pid",
        "cuda_lib_dir": target.cuda_lib_dir,
        "lib_dirs": library_dirs(target),
        "voice_files": target.voice_models,
        "ctl": CTL,
        "api_key_file": api_key_path(target.settings),
        "perf": PERF,
        "perf_out": target.perf_out,
        "unit": UNIT,
        "base_url": f"http://{client_host(target.settings.bind_address)}:{target.settings.port}",
        "texts_file": TEXTS_FILE,
        "installed_files": dict(sorted(target.installed.items())),
    }


@deploy("Patched Piper HTTP server")
def piper_server(target: Target):
    s = target.settings
    files.directory(name=f"Directory {ETC}", path=ETC, mode="755")
    env = template_file(
        target,
        name="Service environment (CUDA_HOME, PATH)",
        template="piper-tts.env.j2",
        dest=ENV_FILE,
        mode="644",
        cuda_home=s.cuda_home,
    )
    if s.api_key:
        key = files.put(
            name=f"API key for POST /tts ({API_KEY_FILE}, root:{s.service_user} 0640)",
            src=StringIO(s.api_key + "\n"),
            dest=API_KEY_FILE,
            user="root",
            group=s.service_user,
            mode="640",
        )
    else:
        key = files.file(name=f"No API key file ({API_KEY_FILE})", path=API_KEY_FILE, present=False)
    code = template_file(
        target,
        name=f"Server {target.server_path} ({'CUDA' if s.use_gpu else 'CPU'} provider, port {s.port})",
        template="piper_http_server.py.j2",
        dest=target.server_path,
        user=s.service_user,
        group=s.service_user,
        mode="750",
        defaults_repr=repr(server_defaults(target, api_key_path(s))),
    )
    files.put(
        name=f"Performance test texts {TEXTS_FILE}",
        src=str(TEXTS_JSON),
        dest=TEXTS_FILE,
        mode="644",
    )
    template_file(
        target,
        name=f"Performance test {PERF} (service vs CPU, medians, ratio)",
        template="tts_perf.py.j2",
        dest=PERF,
        mode="755",
        python=target.venv_python,
        base_url=f"http://{client_host(s.bind_address)}:{s.port}",
        voices=target.voice_models,
        texts_file=TEXTS_FILE,
        out=target.perf_out,
        runs=s.perf_runs,
        api_key_file=api_key_path(s),
    )
    return [env, key, code]


@deploy("Service: piper-tts")
def piper_service(target: Target, input_ops: list):
    """``input_ops``: the operations whose change means the service must restart (libraries, venv,
    voices, server files); decided when the plan is built, so --dry shows the restart or its absence."""
    inputs_change = any(op.will_change for op in input_ops)
    if target.service_mode == "systemd":
        _systemd_service(target, inputs_change)
    else:
        _profile_service(target, inputs_change)


def _systemd_service(target: Target, inputs_change: bool):
    s = target.settings
    if target.is_wsl and not target.systemd_running:
        _wsl_enable_systemd()
        return
    unit = template_file(
        target,
        name=f"systemd unit {UNIT}",
        template="piper-tts.service.j2",
        dest=UNIT_FILE,
        mode="644",
        service_user=s.service_user,
        piper_dir=target.piper_dir,
        python=target.venv_python,
        server=target.server_path,
        env_file=ENV_FILE,
        log_dir=target.log_dir,
    )
    systemd.service(
        name=f"{UNIT} enabled and running (restarted when its files changed)",
        service=UNIT,
        running=True,
        enabled=True,
        restarted=unit.will_change or inputs_change,
        daemon_reload=unit.will_change,
    )


def _wsl_enable_systemd():
    """WSL2 started without systemd: enable it in /etc/wsl.conf (the file's other settings kept), then
    stop the run with the one thing left to do, which only Windows can: restart the WSL2 VM."""
    conf = ini_option(
        name=f"Enable systemd in {WSL_CONF} ([boot] systemd=true; the file's other settings kept)",
        path=WSL_CONF,
        section="boot",
        key="systemd",
        value="true",
    )
    state = ("now enables it" if conf.will_change
             else "enables it already, but this WSL2 instance started without it")
    message = (f"service_mode='systemd' on WSL2 without systemd: {WSL_CONF} {state}. Run `wsl --shutdown` in "
               "Windows, reopen the distro, and run the deploy again (or set piper_gpu_service_mode='profile'). "
               "Everything but the service is in place.")
    server.shell(name="Service: WSL2 must restart to run systemd",
                 commands=[StringCommand("echo", QuoteString(message), ">&2; exit 1")])


def _profile_service(target: Target, inputs_change: bool):
    s = target.settings
    pid_file = f"{target.run_dir}/piper-tts.pid"
    ctl = template_file(
        target,
        name=f"Service control script {CTL} (start/stop/restart/status, pid file)",
        template="piper-tts-ctl.sh.j2",
        dest=CTL,
        mode="755",
        service_user=s.service_user,
        pid_file=pid_file,
        log_path=target.log_path,
        python=target.venv_python,
        server=target.server_path,
        env_file=ENV_FILE,
        health_url=f"http://{client_host(s.bind_address)}:{s.port}/health",
    )
    template_file(
        target,
        name="Start piper-tts from the shell profile when it is not running",
        template="piper-tts-autostart.sh.j2",
        dest=AUTOSTART,
        mode="644",
        service_user=s.service_user,
        ctl=CTL,
    )
    running = host.get_fact(PidAlive, pidfile=pid_file)
    if not running or ctl.will_change or inputs_change:
        why = "not running" if not running else "its files change"
        server.shell(name=f"(Re)start piper-tts ({why})", commands=[f"{CTL} restart"])


def client_host(bind: str) -> str:
    """The address a local client uses to reach a server bound to ``bind``."""
    return "127.0.0.1" if bind in ("0.0.0.0", "") else ("[::1]" if bind == "::" else bind)


@deploy("Record the applied settings for verify")
def record_settings(target: Target):
    import json

    files.put(
        name=f"Applied settings {SETTINGS_FILE}",
        src=StringIO(target.settings.to_json()),
        dest=SETTINGS_FILE,
        mode="644",
    )
    files.put(
        name=f"Resolved target {TARGET_FILE}",
        src=StringIO(json.dumps(target_record(target), indent=2, sort_keys=True) + "\n"),
        dest=TARGET_FILE,
        mode="644",
    )
