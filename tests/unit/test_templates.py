"""Every template renders with real settings, and what it renders is valid for its consumer."""

import configparser
import dataclasses
import os
import signal
import subprocess
import sys

import pytest

from piper_gpu.render import render
from piper_gpu.settings import from_fields
from piper_gpu.target import Target
from piper_gpu_server.config import ServerConfig, load_file

from tests.unit.test_migration import free_port

from piper_gpu.steps.service import ENV_FILE, SERVER_CONFIG, START_TIMEOUT, STOP_MARGIN, server_command, server_config

SHA = "b" * 64


@pytest.fixture
def target():
    s = from_fields({"voices": [{"name": "zh_CN-huayan-medium", "onnx_sha256": SHA, "json_sha256": SHA}],
                       "service_user": "alice", "port": 6006, "bind_address": "127.0.0.1"})
    return Target(settings=s, is_wsl=True, arch="x86_64", repo_path="wsl-ubuntu", home="/home/alice",
                  service_mode="systemd", systemd_running=True, gpu=None)


def test_server_config_is_read_back_by_the_server_as_the_deploy_meant(target, tmp_path):
    """The rendered TOML, read by the server's own loader, gives exactly the deploy's settings."""
    values = server_config(target)
    path = tmp_path / "server.toml"
    path.write_text(render("piper-tts-server.toml.j2", path=SERVER_CONFIG, config=values))
    loaded = load_file(str(path))
    assert loaded == {k: v for k, v in values.items() if v is not None}
    config = ServerConfig(**loaded).validate(str(path))
    assert config.port == 6006 and config.host == "127.0.0.1" and config.use_gpu is True
    assert config.voices == {
        "zh_CN-huayan-medium": "/home/alice/piper_models/zh/zh_CN-huayan-medium/zh_CN-huayan-medium.onnx"}
    assert config.log_file == "/home/alice/piper_env/logs/piper-tts.log" and config.api_key_file is None


def test_server_config_with_api_key_file_and_odd_names(target, tmp_path):
    values = {**server_config(target), "api_key_file": "/etc/piper-gpu/api-key",
              "voices": {'we"ird voice': "/p/a b.onnx", "zh": "/p/zh.onnx"}}
    path = tmp_path / "server.toml"
    path.write_text(render("piper-tts-server.toml.j2", path=SERVER_CONFIG, config=values))
    loaded = load_file(str(path))
    assert loaded["api_key_file"] == "/etc/piper-gpu/api-key"
    assert list(loaded["voices"].items()) == [('we"ird voice', "/p/a b.onnx"), ("zh", "/p/zh.onnx")]  # order kept


def test_systemd_unit(target):
    text = render("piper-tts.service.j2", service_user="alice", piper_dir=target.piper_dir,
                  command=server_command(target), env_file=ENV_FILE, log_dir=target.log_dir,
                  start_timeout=START_TIMEOUT, stop_timeout=60 + STOP_MARGIN)
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(text)
    assert unit["Service"]["ExecStart"] == ("/home/alice/piper_env/.venv/bin/python -m piper_gpu_server "
                                            "--config /etc/piper-gpu/server.toml")
    # a start is over when the server says it listens (sd_notify READY=1), or failed when it exits first
    assert (unit["Service"]["Type"], unit["Service"]["NotifyAccess"]) == ("notify", "main")
    assert unit["Service"]["TimeoutStopSec"] == "90" and unit["Service"]["TimeoutStartSec"] == "300"
    assert unit["Service"]["User"] == "alice" and unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Service"]["ReadWritePaths"] == "/home/alice/piper_env/logs"


@pytest.mark.parametrize("name,context", [
    *[("piper-tts-ctl.sh.j2", dict(service_mode=mode, unit="piper-tts.service", service_user="alice", pid_file="/p.pid",
                                   log_path="/l.log", command="/py -m piper_gpu_server --config /c.toml", python="/py",
                                   piper_dir="/p", env_file=ENV_FILE, port=6006, start_timeout=300, stop_timeout=90,
                                   health_url="http://127.0.0.1:6006/health")) for mode in ("profile", "systemd")],
    ("piper-tts-autostart.sh.j2", dict(service_user="alice", ctl="/usr/local/bin/piper-tts-ctl")),
    ("cuda-profile.sh.j2", dict(cuda_home="/usr/local/cuda-12.4", lib_dirs=["/a/lib", "/b/lib"])),
])
def test_shell_templates_parse(name, context):
    text = render(name, **context)
    assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0


#: Stands in for the server: answers GET /health with its pid and the start token piper-tts-ctl gave it. Its file
#: name holds "piper_gpu_server", which is what piper-tts-ctl's is_running looks for in a command line.
FAKE_SERVER = """
import http.server, json, os, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid(), "start_token": os.environ["PIPER_TTS_START_TOKEN"]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def test_a_start_waits_while_the_launched_process_does_not_yet_name_the_server(tmp_path):
    """piper-tts-ctl start, without systemd: for its first second the launched process's command line does not
    name the server (as while it execs: /proc/PID/cmdline reads empty, then the launcher's), then it execs a
    server that answers as itself. The start waits for that answer; before, it reported "the server exited
    during start-up" at once, as a first converge did once on a busy machine."""
    server = tmp_path / "fake_piper_gpu_server.py"
    server.write_text(FAKE_SERVER)
    port = free_port()
    env = tmp_path / "piper-tts.env"
    env.write_text(f"FAKE_SERVER={server}\n")  # the command line names only the variable
    ctl, pid_file = tmp_path / "piper-tts-ctl", tmp_path / "piper-tts.pid"
    ctl.write_text(render("piper-tts-ctl.sh.j2", service_mode="profile", unit="piper-tts.service", service_user="root",
                          pid_file=str(pid_file), log_path=str(tmp_path / "piper-tts.log"),
                          command=f"sh -c 'sleep 1; exec {sys.executable} \\$FAKE_SERVER {port}'",
                          python=sys.executable, piper_dir=str(tmp_path), env_file=str(env), port=port, start_timeout=30,
                          stop_timeout=5, health_url=f"http://127.0.0.1:{port}/health"))
    ctl.chmod(0o755)
    try:
        started = subprocess.run([str(ctl), "start"], capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        pid = pid_file.read_text().strip()
        assert f"piper-tts started (pid {pid}), http://127.0.0.1:{port}/health answers as it" in started.stdout
    finally:
        launched = pid_file.read_text().strip() if pid_file.exists() else None
        stopped = subprocess.run([str(ctl), "stop"], capture_output=True, text=True, timeout=60)
        if launched and os.path.exists(f"/proc/{launched}"):  # a failed start leaves no stand-in behind
            os.kill(int(launched), signal.SIGKILL)
    assert stopped.stdout.strip() == "piper-tts stopped", stopped.stdout + stopped.stderr


def test_profile_snippet_is_idempotent_when_sourced_twice():
    text = render("cuda-profile.sh.j2", cuda_home="/usr/local/cuda-12.4", lib_dirs=["/usr/local/cuda-12.4/lib"])
    out = subprocess.run(["sh", "-c", f"{text}\n{text}\necho \"$PATH|$LD_LIBRARY_PATH\""],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}).stdout.strip()
    path, ld = out.split("|")
    assert path == "/usr/local/cuda-12.4/bin:/usr/bin:/bin"
    assert ld == "/usr/local/cuda-12.4/lib"


def test_ld_so_conf_lists_each_directory(target):
    text = render("ld.so.conf.j2", lib_dirs=[target.cuda_lib_dir, "/opt/cudnn/lib"])
    lines = [l for l in text.splitlines() if l and not l.startswith("#")]
    assert lines == ["/usr/local/cuda-12.4/targets/x86_64-linux/lib", "/opt/cudnn/lib"]


def test_autostart_only_in_interactive_shells(tmp_path):
    marker = tmp_path / "started"
    ctl = tmp_path / "ctl"
    ctl.write_text(f"#!/bin/sh\ntouch {marker}\n")
    ctl.chmod(0o755)
    snippet = render("piper-tts-autostart.sh.j2", service_user="nobody-else", ctl=str(ctl))
    (tmp_path / "s.sh").write_text(snippet)
    subprocess.run(["sh", "-c", f". {tmp_path}/s.sh"], check=True)
    assert not marker.exists()  # non-interactive: never starts the service
    subprocess.run(["sh", "-i", "-c", f". {tmp_path}/s.sh"], check=True, capture_output=True)
    assert marker.exists()  # interactive root shell starts it


@pytest.mark.parametrize("api_key_file", [None, "/etc/piper-gpu/api-key"])
def test_perf_script_renders_to_python(api_key_file):
    code = render("tts_perf.py.j2", python="/venv/bin/python", base_url="http://127.0.0.1:5005",
                  voices={"en_US-joe-medium": "/m/en_US-joe-medium.onnx"}, texts_file="/etc/piper-gpu/texts.json",
                  out="/p/perf/latest.json", runs=5, api_key_file=api_key_file)
    namespace = {}
    exec(compile(code.replace('if __name__ == "__main__":', "if False:"), "tts_perf", "exec"), namespace)
    assert namespace["API_KEY_FILE"] == api_key_file and namespace["DEFAULT_RUNS"] == 5
    assert namespace["VOICES"] == {"en_US-joe-medium": "/m/en_US-joe-medium.onnx"}


def test_server_config_carries_shape_stable_and_buckets(target, tmp_path):
    """Default: shape_stable auto and no buckets written (the server's own defaults apply); set, the
    server reads back the deploy's buckets."""
    path = tmp_path / "server.toml"
    path.write_text(render("piper-tts-server.toml.j2", path=SERVER_CONFIG, config=server_config(target)))
    config = ServerConfig(**load_file(str(path))).validate(str(path))
    assert config.shape_stable == "auto" and config.buckets == ServerConfig(voices={"v": "/v.onnx"}).buckets
    s = target.settings.replace(shape_stable="on", phoneme_buckets="256,64", frame_buckets="1024")
    values = server_config(dataclasses.replace(target, settings=s))
    path.write_text(render("piper-tts-server.toml.j2", path=SERVER_CONFIG, config=values))
    config = ServerConfig(**load_file(str(path))).validate(str(path))
    assert config.shape_stable == "on" and config.buckets == ((64, 256), (1024,))


def _deployed_config(settings, tmp_path) -> ServerConfig:
    """What the server makes of the server.toml a deploy with these settings renders."""
    target = Target(settings=settings, is_wsl=True, arch="x86_64", repo_path="wsl-ubuntu", home="/home/alice",
                    service_mode="systemd", systemd_running=True, gpu=None)
    path = tmp_path / "server.toml"
    path.write_text(render("piper-tts-server.toml.j2", path=SERVER_CONFIG, config=server_config(target)))
    return ServerConfig(**load_file(str(path))).validate(str(path))


def test_a_deploy_that_sets_nothing_runs_the_server_on_its_own_defaults(tmp_path):
    """Every server setting the deploy passes on, left unset in the inventory, reaches the server as
    the server's own default, of its own type (the buckets: written as none, so the server's apply)."""
    from piper_gpu.inputs import SERVER_SETTINGS
    from piper_gpu.settings import settings_from

    s = settings_from({"piper_gpu_voices": [{"name": "zh_CN-huayan-medium", "onnx_sha256": SHA, "json_sha256": SHA}],
                       "piper_gpu_bind_address": "127.0.0.1"})
    config, defaults = _deployed_config(s, tmp_path), ServerConfig()
    wrong = {name: (getattr(config, name), getattr(defaults, name)) for name in SERVER_SETTINGS
             if getattr(config, name) != getattr(defaults, name)
             or type(getattr(config, name)) is not type(getattr(defaults, name))}
    assert not wrong, wrong


#: A value other than the default of each server setting the deploy passes on, as the inventory or
#: --data gives it (a string), and as the server must get it.
CHANGED = {
    "port": ("6007", 6007), "use_gpu": ("false", False), "cuda_options": ("cudnn_conv_algo_search=DEFAULT",) * 2,
    "warmup": ("no", False), "shape_stable": ("on", "on"), "phoneme_buckets": ("64,128",) * 2,
    "frame_buckets": ("256",) * 2, "encoder_provider": ("cuda", "cuda"), "max_text_chars": ("3000", 3000),
    "max_pending": ("3", 3), "syntheses_per_voice": ("2", 2), "concurrent_session": ("off", False),
    "concurrent_intra_op_threads": ("2", 2), "cpu_memory_arena": ("false", False),
    "memory_release_idle": ("0", 0.0), "sentence_max_chars": ("120", 120), "read_timeout": ("12", 12.0),
    "body_timeout": ("31.5", 31.5), "write_timeout": ("9", 9.0), "keep_alive_timeout": ("6", 6.0),
    "max_connections": ("64", 64), "graceful_timeout": ("45", 45.0),
}


def test_every_server_setting_set_in_the_inventory_arrives_in_the_server(tmp_path):
    from piper_gpu.inputs import SERVER_SETTINGS
    from piper_gpu.settings import settings_from

    assert set(CHANGED) == set(SERVER_SETTINGS), "give each server setting the deploy passes on a changed value"
    s = settings_from({"piper_gpu_voices": [{"name": "zh_CN-huayan-medium", "onnx_sha256": SHA, "json_sha256": SHA}],
                       "piper_gpu_bind_address": "127.0.0.1",
                       **{f"piper_gpu_{name}": given for name, (given, _) in CHANGED.items()}})
    config = _deployed_config(s, tmp_path)
    wrong = {name: getattr(config, name) for name, (_, want) in CHANGED.items()
             if getattr(config, name) != want or type(getattr(config, name)) is not type(want)}
    assert not wrong, wrong
    assert all(getattr(ServerConfig(), name) != want for name, (_, want) in CHANGED.items())  # each one changed


def test_the_server_refuses_an_unknown_encoder_provider_naming_the_key(tmp_path):
    """In its config file (named) or as a flag: the server never guesses where an encoder runs."""
    from piper_gpu_server.config import ConfigError, load

    path = tmp_path / "server.toml"
    path.write_text('encoder_provider = "gpu"\n[voices]\nv = "/v.onnx"\n')
    with pytest.raises(ConfigError, match=f"{path}: encoder_provider: 'gpu' is not one of auto, cpu, cuda"):
        load(["--config", str(path)])
    with pytest.raises(ConfigError, match="command line: encoder_provider: 'tpu' is not one of auto, cpu, cuda"):
        load(["--voice", "v=/v.onnx", "--encoder-provider", "tpu"])
    assert load(["--voice", "v=/v.onnx", "--encoder-provider", "cpu"]).encoder_provider == "cpu"
