"""The users' machines as they are, on the shared ``lab`` host (converged, profile mode): another process on
the service's port is refused before any change; their old CPU server, started again by hand on the port
(no autostart line), is stopped, its script moved aside, and what answers afterwards is proven to be our
process; and a start whose bind fails, because another server took the port while ours restarted, fails
the run naming the holder. (The users' first deploy, with an autostart line and their address carried over,
and its undeploy: scenario wsl2-ubuntu2204; a fresh host's old server put back by undeploy: scenario undeploy.)"""

import json
import re
import subprocess
import sys

import pytest

from tests.lab import users

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("users-machine")]

CTL = "/usr/local/bin/piper-tts-ctl"
PID_FILE = "/home/piper/piper_env/run/piper-tts.pid"
LOG = "/home/piper/piper_env/logs/piper-tts.log"
MOVED = "/var/lib/piper-gpu/moved-aside.tsv"


def host_state(lab) -> str:
    """What a run would change first: packages, the deploy's files and records, the users' files."""
    return lab.sh("dpkg-query -W -f='${Package} ${Version} ${Status}\\n'; "
                  "find /etc/piper-gpu /var/lib/piper-gpu /usr/local/bin /etc/profile.d /home/piper -xdev "
                  "-path /home/piper/piper_env/.venv -prune -o -path /home/piper/piper_env/logs -prune -o "
                  "-type f -newer /etc/os-release -printf '%p %s %T@\\n' | sort", check=False).stdout


def our_identity(lab) -> tuple[str, dict]:
    pid = (lab.root / PID_FILE.lstrip("/")).read_text().strip()
    return pid, users.health(lab.box, lab.port)


def test_an_unrelated_process_on_the_port_stops_the_run_before_any_change(lab):
    lab.converged()
    lab.sh(f"{CTL} stop")
    lab.sh(f"nohup python3 -m http.server {lab.port} --bind 127.0.0.1 >/dev/null 2>&1 &")
    try:
        holder = lab.sh(f"for i in $(seq 50); do p=$(ss -Hltnp 'sport = :{lab.port}' | sed -n 's/.*pid=\\([0-9]*\\).*/\\1/p');"
                        " [ -n \"$p\" ] && echo $p && break; sleep 0.1; done").stdout.strip()
        before = host_state(lab)
        run = lab.deploy(check=False)
        assert run.returncode != 0
        assert (f"port {lab.port} is held by pid {holder} (root: python3 -m http.server {lab.port} --bind 127.0.0.1, "
                f"in /, listening on 127.0.0.1:{lab.port}), which is not a Piper server") in run.output, run.output[-3000:]
        assert "Nothing was changed" in run.output and "piper_gpu_port" in run.output
        assert host_state(lab) == before
    finally:
        lab.sh(f"pkill -f 'http.server {lab.port}'", check=False)
    again = lab.deploy()
    assert "(Re)start piper-tts (not running)" in again.output and again.changes == 1, again.output[-3000:]
    pid, health = our_identity(lab)
    assert str(health["pid"]) == pid and health["start_token"]


def test_their_old_server_on_the_port_is_stopped_and_kept_and_ours_answers_as_itself(lab, tmp_path):
    lab.sh(f"{CTL} stop")
    setup = users.manual_setup(lab.box, "piper", lab.port, host="127.0.0.1", venv=False)
    script = (lab.root / setup["script"].lstrip("/")).read_bytes()
    # a server of the same name on the machine the sandbox runs on (another root): not this host's
    (tmp_path / "piper_http_server.py").write_text(users.USERS_SERVER)
    outside = subprocess.Popen([sys.executable, "piper_http_server.py", "--host", "127.0.0.1", "--port", "0"],
                               cwd=tmp_path)
    try:
        run = lab.deploy()
        assert outside.poll() is None, "the deploy stopped a process that is not the host's"
    finally:
        outside.kill()
        outside.wait()
    out = run.output
    assert f"pid {outside.pid} " not in out
    assert "found the CPU server of a manual setup" in out, out[-4000:]
    assert re.search(rf"Stop the old server \(SIGTERM, as the plan's pkill does\): pid {setup['pid']} \(piper: python3 "
                     rf"piper_http_server.py --host 127.0.0.1 --port {lab.port}, in /home/piper/piper_env", out), out[-4000:]
    backup = re.search(rf"Move the old server's script {setup['script']} to (\S+) \(undeploy puts it back\)", out).group(1)
    assert backup.startswith("/var/lib/piper-gpu/backups/") and backup.endswith(setup["script"])
    assert (lab.root / backup.lstrip("/")).read_bytes() == script  # kept, byte for byte
    assert not (lab.root / setup["script"].lstrip("/")).exists()
    assert f"file\t{setup['script']}\t{backup}" in (lab.root / MOVED.lstrip("/")).read_text()
    assert lab.sh(f"kill -0 {setup['pid']}", check=False).returncode != 0  # their server is gone
    pid, health = our_identity(lab)
    assert str(health["pid"]) == pid and health.get("server") != "users-cpu"
    record = json.loads((lab.root / "var/lib/piper-gpu/old-server.json").read_text())
    assert record["address"] == "127.0.0.1" and record["processes"][0]["pid"] == setup["pid"]
    assert lab.deploy().changes == 0


def test_a_start_whose_bind_fails_fails_the_run_naming_the_holder(lab, tmp_path):
    """The old control script took any answer on the port for a started server: here another server takes
    the port the moment ours stops for a restart, and answers /health; ours dies at bind."""
    (lab.root / "tmp/grab.py").write_text(users.PORT_GRABBER)
    lab.sh(f"rm -f /tmp/grabbed; nohup python3 /tmp/grab.py {lab.port} /tmp/grabbed >/dev/null 2>&1 &")
    lab.set_data(max_pending=9)  # a setting of the server's: the run restarts it
    try:
        run = lab.deploy(check=False)
        assert (lab.root / "tmp/grabbed").exists(), "the grabber never got the port"
        grabber = lab.sh("pgrep -f '^python3 /tmp/grab.py'").stdout.split()[0]
        out = run.output
        assert run.returncode != 0, out[-4000:]
        said = out[out.find("piper-tts did not start"):]
        assert said.startswith("piper-tts did not start: the server exited during start-up"), out[-4000:]
        assert f"port {lab.port} is held by pid {grabber}: python3 /tmp/grab.py {lab.port}" in said, said
        assert f"cannot listen on 127.0.0.1:{lab.port}: [Errno 98] Address already in use" in said, said
    finally:
        lab.sh("pkill -f /tmp/grab.py", check=False)
        lab.set_data(max_pending=None)
    assert lab.deploy().changes >= 1  # the server's settings back, and started
    pid, health = our_identity(lab)
    assert str(health["pid"]) == pid
    assert lab.deploy().changes == 0
