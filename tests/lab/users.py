"""The users' machines as their manual plan leaves them, in a sandbox: their CPU server script
``~/piper_env/piper_http_server.py`` run by hand from ``~/piper_env`` (``python piper_http_server.py --host
0.0.0.0 --port 5005``), their venv with the CPU ``onnxruntime``, and maybe a line in ``~/.bashrc`` that
starts it; and, for the refusals, processes that are not Piper servers.

The script is a stand-in with the users' HTTP contract (GET /health, POST /tts -> a WAV): what the deploy
meets is a Python process of the host's user running a file of that name on the port, not its synthesis.
"""

from __future__ import annotations

import json
import shlex
import time

from tests.lab.mirror import fetch_wheels

#: The users' CPU server, as far as the deploy can see it: the file name, the flags, the contract.
USERS_SERVER = '''#!/usr/bin/env python3
"""Piper TTS HTTP server (CPU) - the team's own, patched; run from ~/piper_env:
    python piper_http_server.py --host 0.0.0.0 --port 5005
"""
import argparse, http.server, io, json, os, wave

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=5005)
args = p.parse_args()


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, status, body, kind):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self._send(200, json.dumps({"status": "ok", "server": "users-cpu", "pid": os.getpid()}).encode(),
                       "application/json")
        else:
            self._send(404, b"{}", "application/json")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050); w.writeframes(b"\\0\\0" * 2205)
        self._send(200, buf.getvalue(), "audio/wav")

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
'''

#: The line the users' .bashrc has to start it with each terminal (when it is not running).
def autostart_line(port: int, host: str = "0.0.0.0") -> str:
    return (f"pgrep -f piper_http_server >/dev/null || (cd ~/piper_env && nohup .venv/bin/python piper_http_server.py "
            f"--host {host} --port {port} >/dev/null 2>&1 &)")


#: The CPU onnxruntime of their venv (the deploy replaces it with onnxruntime-gpu), by the sandbox's Python.
CPU_ONNXRUNTIME = "1.20.1"


def python_of(box) -> str:
    return box.chroot("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'").stdout.strip()


def ensure_python(box) -> None:
    """python3, its venv module and procps (pgrep), as every users' machine has them."""
    if box.chroot("python3 -c 'import ensurepip, venv' && command -v pgrep", check=False).returncode != 0:
        box.chroot("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                   "python3 python3-venv procps >/dev/null")


def manual_setup(box, user: str, port: int, host: str = "0.0.0.0", autostart: bool = False, venv: bool = True,
                 home: str | None = None) -> dict:
    """The users' setup in ``box``, started: returns {"pid", "script", "home", "bashrc" (its text or None)}."""
    ensure_python(box)
    home = home or box.chroot(f"getent passwd {shlex.quote(user)} | cut -d: -f6").stdout.strip()
    env_dir = f"{home}/piper_env"
    box.chroot(f"mkdir -p {env_dir}")
    (box.root / env_dir.lstrip("/") / "piper_http_server.py").write_text(USERS_SERVER)
    if venv:
        wheel = fetch_wheels(f"users-venv-{python_of(box)}", {"onnxruntime": CPU_ONNXRUNTIME},
                             "the users' CPU onnxruntime", python=python_of(box))["onnxruntime"]
        (box.root / "tmp" / wheel.name).write_bytes(wheel.read_bytes())
        box.chroot(f"python3 -m venv {env_dir}/.venv && {env_dir}/.venv/bin/pip install -q --no-deps --no-index "
                   f"/tmp/{wheel.name} && rm /tmp/{wheel.name}")
    box.chroot(f"chown -R {shlex.quote(user)}: {env_dir}")
    if autostart:
        bashrc = box.root / home.lstrip("/") / ".bashrc"
        text = bashrc.read_text() if bashrc.exists() else ""
        bashrc.write_text(text + "\n# Piper TTS (CPU)\n" + autostart_line(port, host) + "\n")
        box.chroot(f"chown {shlex.quote(user)}: {home}/.bashrc")
    start(box, user, env_dir, port, host, venv)
    pid = answering_pid(box, port)
    bashrc = box.root / home.lstrip("/") / ".bashrc"
    return {"pid": pid, "script": f"{env_dir}/piper_http_server.py", "home": home,
            "bashrc": bashrc.read_text() if bashrc.exists() else None}


def start(box, user: str, env_dir: str, port: int, host: str, venv: bool = True) -> None:
    """Their step: `python piper_http_server.py --host 0.0.0.0 --port 5005` from ~/piper_env, by hand."""
    python = ".venv/bin/python" if venv else "python3"
    box.chroot(f"runuser -u {shlex.quote(user)} -- sh -c 'cd {env_dir} && nohup {python} piper_http_server.py "
               f"--host {host} --port {port} >/dev/null 2>&1 &'")


def health(box, port: int) -> dict | None:
    res = box.chroot(f"python3 -c 'import urllib.request; print(urllib.request.urlopen("
                     f"\"http://127.0.0.1:{port}/health\", timeout=5).read().decode())'", check=False)
    try:
        return json.loads(res.stdout) if res.returncode == 0 else None
    except ValueError:
        return None


def answering_pid(box, port: int, seconds: float = 30) -> int:
    """The pid /health names once the users' server answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        h = health(box, port)
        if h and h.get("server") == "users-cpu":
            return int(h["pid"])
        time.sleep(0.2)
    raise AssertionError(f"the users' server did not answer on port {port}")


#: A process that grabs the port the moment it is free and answers every GET like a healthy server
#: (status ok, no identity): what another server does when it takes the port while ours restarts.
PORT_GRABBER = '''
import http.server, json, socket, sys, time
port = int(sys.argv[1])
while True:
    try:
        server = http.server.HTTPServer(("127.0.0.1", port), type("H", (http.server.BaseHTTPRequestHandler,), {
            "do_GET": lambda self: (self.send_response(200), self.end_headers(),
                                    self.wfile.write(json.dumps({"status": "ok"}).encode())),
            "log_message": lambda self, *a: None}))
        break
    except OSError:
        time.sleep(0.005)
open(sys.argv[2], "w").write("bound\\n")
server.serve_forever()
'''
