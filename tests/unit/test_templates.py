"""Every template renders with real settings, and what it renders is valid for its consumer."""

import configparser
import dataclasses
import subprocess

import pytest

from piper_gpu.render import render
from piper_gpu.settings import from_fields
from piper_gpu.target import Target
from piper_gpu_server.config import ServerConfig, load_file

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
    path.write_text(render("piper-tts-server.toml.j2", path=SERVER_CONFIG, **values))
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
    path.write_text(render("piper-tts-server.toml.j2", path=SERVER_CONFIG, **values))
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
    path.write_text(render("piper-tts-server.toml.j2", path=SERVER_CONFIG, **server_config(target)))
    config = ServerConfig(**load_file(str(path))).validate(str(path))
    assert config.shape_stable == "auto" and config.buckets == ServerConfig(voices={"v": "/v.onnx"}).buckets
    s = target.settings.replace(shape_stable="on", phoneme_buckets="256,64", frame_buckets="1024")
    values = server_config(dataclasses.replace(target, settings=s))
    path.write_text(render("piper-tts-server.toml.j2", path=SERVER_CONFIG, **values))
    config = ServerConfig(**load_file(str(path))).validate(str(path))
    assert config.shape_stable == "on" and config.buckets == ((64, 256), (1024,))
