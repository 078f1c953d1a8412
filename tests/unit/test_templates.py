"""Every template renders with real settings, and what it renders is valid for its consumer."""

import ast
import configparser
import subprocess

import pytest

from piper_gpu.render import render
from piper_gpu.settings import from_fields
from piper_gpu.target import Target
from piper_gpu.steps.service import ENV_FILE, server_defaults

SHA = "b" * 64


@pytest.fixture
def target():
    s = from_fields({"voices": [{"name": "zh_CN-huayan-medium", "onnx_sha256": SHA, "json_sha256": SHA}],
                       "service_user": "alice", "port": 6006})
    return Target(settings=s, is_wsl=True, arch="x86_64", repo_path="wsl-ubuntu", home="/home/alice",
                  service_mode="systemd", systemd_running=True, gpu=None)


def test_server_renders_to_python_with_the_deployed_defaults(target):
    code = render("piper_http_server.py.j2", defaults_repr=repr(server_defaults(target, None)))
    tree = ast.parse(code)
    assign = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "DEFAULTS")
    defaults = ast.literal_eval(assign.value)
    assert defaults["port"] == 6006 and defaults["host"] == "127.0.0.1" and defaults["use_gpu"] is True
    assert defaults["voices"] == {
        "zh_CN-huayan-medium": "/home/alice/piper_models/zh/zh_CN-huayan-medium/zh_CN-huayan-medium.onnx"}
    assert defaults["log_file"] == "/home/alice/piper_env/logs/piper-tts.log"
    assert '"cudnn_conv_algo_search": "HEURISTIC"' in code


def test_systemd_unit(target):
    text = render("piper-tts.service.j2", service_user="alice", piper_dir=target.piper_dir, python=target.venv_python,
                  server=target.server_path, env_file=ENV_FILE, log_dir=target.log_dir)
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(text)
    assert unit["Service"]["ExecStart"] == "/home/alice/piper_env/.venv/bin/python /home/alice/piper_env/piper_http_server.py"
    assert unit["Service"]["User"] == "alice" and unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Service"]["ReadWritePaths"] == "/home/alice/piper_env/logs"


@pytest.mark.parametrize("name,context", [
    ("piper-tts-ctl.sh.j2", dict(service_user="alice", pid_file="/p.pid", log_path="/l.log", python="/py", server="/s.py",
                                 env_file=ENV_FILE, health_url="http://127.0.0.1:6006/health")),
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
