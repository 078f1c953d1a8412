"""Steps 7-8: the server's settings (its config file; the server itself is a package in the venv,
step 5), and the service that runs it: a systemd unit when systemd runs, else a pid-file start from
the shell profile. Restarted only when one of its inputs changed (or it is not running)."""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.facts.files import FileContents
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, server, systemd

from piper_gpu import server_wheel
from piper_gpu.facts import PidAlive
from piper_gpu.operations import copies_kept, ini_option, ini_with_option
from piper_gpu.resources import TEXTS_JSON
from piper_gpu.steps.base import ours, template_file
from piper_gpu.steps.cudnn import library_dirs
from piper_gpu.steps.old_server import restart_hint
from piper_gpu.target import (API_KEY_FILE, AUTOSTART, CTL, ENV_FILE, ETC, PERF, SERVER_CONFIG, SERVER_MODULE,
                              SERVER_WHEELS, SETTINGS_FILE, TARGET_FILE, TEXTS_FILE, UNIT, UNIT_FILE, WSL_CONF, Target)


def api_key_path(settings) -> str | None:
    """Where the server reads its API key, or None when POST /tts is open."""
    return API_KEY_FILE if settings.service.api_key else None


def server_config(target: Target) -> dict:
    """The server's settings, as its config file holds them (keys of piper_gpu_server.config.ServerConfig).
    The API key itself is never written there: the server reads ``api_key_file``."""
    s = target.settings.service  # the service and server group: server.toml is made of it
    assert s.bind_address != "auto", "bind_address is resolved by preflight (migration.bind_address)"
    return {
        "host": s.bind_address,
        "voices": target.voice_models,
        "log_file": target.log_path,
        "api_key_file": api_key_path(target.settings),
        **s.server_values(),  # the server's settings the deploy passes on under their own names
    }


def server_command(target: Target) -> str:
    """How the unit and the control script run the server."""
    return f"{target.venv_python} -m {SERVER_MODULE} --config {SERVER_CONFIG}"


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
        "server_config": SERVER_CONFIG,
        "server_config_values": server_config(target),
        "server_module": SERVER_MODULE,
        "server_version": server_wheel.source_version(),
        "server_wheels": SERVER_WHEELS,
        "log_path": target.log_path,
        "pid_file": target.pid_file,
        "cuda_lib_dir": target.cuda_lib_dir,
        "lib_dirs": library_dirs(target),
        "voice_files": target.voice_models,
        "ctl": CTL,
        "api_key_file": api_key_path(target.settings),
        "perf": PERF,
        "perf_out": target.perf_out,
        "unit": UNIT,
        "base_url": base_url(target),
        "texts_file": TEXTS_FILE,
        "installed_files": dict(sorted(target.installed.items())),
    }


@deploy("Piper HTTP server: its settings")
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
    if s.service.api_key:
        key = files.put(
            name=f"API key for POST /tts ({API_KEY_FILE}, root:{s.service.service_user} 0640)",
            src=StringIO(s.service.api_key + "\n"),
            dest=API_KEY_FILE,
            user="root",
            group=s.service.service_user,
            mode="640",
        )
    else:
        key = files.file(name=f"No API key file ({API_KEY_FILE})", path=API_KEY_FILE, present=False)
    config = template_file(
        target,
        name=f"Server settings {SERVER_CONFIG} ({'CUDA' if s.service.use_gpu else 'CPU'} provider, "
             f"port {s.service.port})",
        template="piper-tts-server.toml.j2",
        dest=SERVER_CONFIG,
        user="root",
        group=s.service.service_user,
        mode="640",
        path=SERVER_CONFIG,
        config=server_config(target),
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
        base_url=base_url(target),
        voices=target.voice_models,
        texts_file=TEXTS_FILE,
        out=target.perf_out,
        runs=s.checks.perf_runs,
        api_key_file=api_key_path(s),
    )
    return [env, key, config]


#: Seconds a start may take (voices loaded and warmed up) before it counts as failed: the unit's
#: TimeoutStartSec and piper-tts-ctl's wait for the server's identity.
START_TIMEOUT = 300
#: Seconds after graceful_timeout that a stop waits before SIGKILL (the unit's TimeoutStopSec and
#: piper-tts-ctl's stop both wait graceful_timeout plus this).
STOP_MARGIN = 30


@deploy("Service: piper-tts")
def piper_service(target: Target, input_ops: list):
    """``input_ops``: the operations whose change means the service must restart (libraries, venv,
    voices, server files); decided when the plan is built, so --dry shows the restart or its absence.
    Either way it is (re)started by piper-tts-ctl, which succeeds only once the server answers /health as
    the process it started (its pid and start token), never because something else answers the port."""
    inputs_change = any(op.will_change for op in input_ops)
    if target.wsl_needs_restart:
        _wsl_enable_systemd(target)
        return
    ctl = _control_script(target)
    switched = _other_mode_stopped(target)
    if target.service_mode == "systemd":
        changed = _systemd_unit(target)
        running = bool(host.get_fact(SystemdStatus, services=[UNIT]).get(UNIT)) and not switched
    else:
        _profile_autostart(target)
        changed = False
        running = host.get_fact(PidAlive, pidfile=target.pid_file) and not switched
    stopped = bool(target.migration and target.migration.stop)
    if not running or ctl.will_change or changed or inputs_change:
        why = ("the old server is stopped" if stopped and not running else "not running" if not running
               else "its files change")
        hint = restart_hint(target)
        command = f"{CTL} restart" + (f" || {{ echo {shlex.quote(hint)} >&2; exit 1; }}" if hint else "")
        server.shell(name=f"(Re)start piper-tts ({why}) and prove it answers {health_url(target)} as itself",
                     commands=[command])


def _other_mode_stopped(target: Target) -> bool:
    """A service_mode that changed: the server the other mode runs is stopped first (it holds the port), and
    that mode's start-up is removed. True when one was running."""
    if target.service_mode == "systemd":
        running = host.get_fact(PidAlive, pidfile=target.pid_file)
        if running:
            q = shlex.quote(target.pid_file)
            server.shell(name=f"Stop piper-tts started without systemd (pid file {target.pid_file}): the unit takes over",
                         commands=[f"p=$(cat {q}); kill $p; for i in $(seq 1 {2 * stop_timeout(target)}); "
                                   f"do kill -0 $p 2>/dev/null || break; sleep 0.5; done; kill -9 $p 2>/dev/null; rm -f {q}"])
        if ours(target, AUTOSTART):
            files.file(name=f"Remove {AUTOSTART}: the unit starts piper-tts now", path=AUTOSTART, present=False)
        return bool(running)
    if not ours(target, UNIT_FILE):
        return False
    active = target.systemd_running and bool(host.get_fact(SystemdStatus, services=[UNIT]).get(UNIT))
    if target.systemd_running:
        server.shell(name=f"Stop and disable {UNIT}: service_mode is profile now",
                     commands=[f"systemctl disable --now {UNIT}"])
    files.file(name=f"Remove {UNIT_FILE}: service_mode is profile now", path=UNIT_FILE, present=False)
    return active


def base_url(target: Target) -> str:
    """Where a client on the host reaches the service."""
    s = target.settings.service
    return f"http://{client_host(s.bind_address)}:{s.port}"


def health_url(target: Target) -> str:
    return f"{base_url(target)}/health"


def stop_timeout(target: Target) -> int:
    """Seconds a stop waits after SIGTERM before SIGKILL (the unit's TimeoutStopSec, piper-tts-ctl's stop)."""
    return int(target.settings.service.graceful_timeout) + STOP_MARGIN


def _control_script(target: Target):
    s = target.settings
    return template_file(
        target,
        name=f"Service control script {CTL} (start/stop/restart/status; a start waits for the server's own answer)",
        template="piper-tts-ctl.sh.j2",
        dest=CTL,
        mode="755",
        service_mode=target.service_mode,
        unit=UNIT,
        service_user=s.service.service_user,
        pid_file=target.pid_file,
        log_path=target.log_path,
        command=server_command(target),
        python=target.venv_python,
        piper_dir=target.piper_dir,
        env_file=ENV_FILE,
        port=s.service.port,
        start_timeout=START_TIMEOUT,
        stop_timeout=stop_timeout(target),
        health_url=health_url(target),
    )


def _systemd_unit(target: Target) -> bool:
    """The unit written and enabled; True when it changed (the service then restarts)."""
    s = target.settings
    unit = template_file(
        target,
        name=f"systemd unit {UNIT}",
        template="piper-tts.service.j2",
        dest=UNIT_FILE,
        mode="644",
        service_user=s.service.service_user,
        piper_dir=target.piper_dir,
        command=server_command(target),
        env_file=ENV_FILE,
        log_dir=target.log_dir,
        start_timeout=START_TIMEOUT,
        stop_timeout=stop_timeout(target),
    )
    systemd.service(
        name=f"{UNIT} enabled at boot" + (" (systemd reloads the changed unit)" if unit.will_change else ""),
        service=UNIT,
        running=None,  # started by piper-tts-ctl below, which waits for the server's own answer
        enabled=True,
        daemon_reload=unit.will_change,
    )
    return unit.will_change


def _wsl_enable_systemd(target: Target):
    """WSL2 started without systemd: enable it in /etc/wsl.conf (the file's other settings kept, the file as
    it was copied first), then stop the run with the one thing left to do, which only Windows can: restart
    the WSL2 VM."""
    lines = host.get_fact(FileContents, path=WSL_CONF)
    text = "\n".join(lines) + "\n" if lines else ""
    kept = ""
    if lines is not None and ini_with_option(text, "boot", "systemd", "true") != text:
        copies_kept(name=f"Keep a copy of {WSL_CONF} as it is at {target.backup_path(WSL_CONF)}",
                    paths=[WSL_CONF], backups=[target.backup_path(WSL_CONF)])
        kept = f"; the file as it was: {target.backup_path(WSL_CONF)}"
    conf = ini_option(
        name=f"Enable systemd in {WSL_CONF} ([boot] systemd=true; the file's other settings kept{kept})",
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


def _profile_autostart(target: Target):
    template_file(
        target,
        name="Start piper-tts from the shell profile when it is not running",
        template="piper-tts-autostart.sh.j2",
        dest=AUTOSTART,
        mode="644",
        service_user=target.settings.service.service_user,
        ctl=CTL,
    )


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
