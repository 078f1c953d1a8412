"""What the deploy decides about the CPU server a manual setup left (piper_gpu/migration.py), from the
facts as facts.ManualSetup reads them; and that fact's reading of the host, run here for real against
processes this test starts."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from piper_gpu import migration
from piper_gpu.facts import ManualSetup, _unmatched_regex
from piper_gpu.migration import Refused, bind_address, is_piper_server, plan

HOME = "/home/dev"
SCRIPT = f"{HOME}/piper_env/piper_http_server.py"
USERS = ["/home/dev/piper_env/.venv/bin/python", "piper_http_server.py", "--host", "0.0.0.0", "--port", "5005"]


def proc(pid, cmdline, sockets=(), root="same", user="dev", cwd=f"{HOME}/piper_env"):
    return {"pid": pid, "user": user, "cwd": cwd, "root": root, "cmdline": list(cmdline), "sockets": list(sockets)}


def facts(processes=(), listeners=None, scripts=(), runs=None, autostart=(), units=(), ours=(), record=None):
    procs = {p["pid"]: p for p in processes}
    if listeners is None:
        listeners = [{"address": s.rsplit(":", 1)[0], "port": int(s.rsplit(":", 1)[1]), "inode": str(9000 + n)}
                     for n, s in enumerate(s for p in processes for s in p["sockets"])]
    return {"listeners": listeners, "processes": procs, "scripts": [list(s) for s in scripts], "runs": runs or {},
            "autostart": [list(a) for a in autostart], "units": [list(u) for u in units], "our_pids": list(ours),
            "record": record}


def decide(f, mode="migrate", scripts=(), port=5005, bind="auto"):
    return plan(f, port, mode, scripts, HOME, bind)


def test_the_users_server_with_its_script_and_autostart_is_migrated_and_its_address_carried_over():
    line = "cd ~/piper_env && nohup .venv/bin/python piper_http_server.py --host 0.0.0.0 --port 5005 &"
    m = decide(facts([proc(4321, USERS, ["0.0.0.0:5005"])], scripts=[(SCRIPT, False)], runs={4321: [SCRIPT]},
                     autostart=[(f"{HOME}/.bashrc", 118, line), (f"{HOME}/.bashrc", 3, "# " + line)]))
    assert [p.pid for p in m.stop] == [4321] and m.scripts == [SCRIPT] and not m.own_scripts
    assert m.autostart == [(f"{HOME}/.bashrc", 118, line)]  # a commented line starts nothing
    assert m.address == "0.0.0.0"
    assert bind_address("auto", m) == ("0.0.0.0", "carried over from the old server (bind_address='auto')")
    assert "every address" in migration.exposure_note("0.0.0.0", bind_address("auto", m)[1])
    assert "piper_gpu_bind_address='127.0.0.1'" in migration.exposure_note("0.0.0.0", "x")
    found = "\n".join(m.found())
    assert "old server running: pid 4321 (dev: /home/dev/piper_env/.venv/bin/python piper_http_server.py --host " \
           "0.0.0.0 --port 5005, in /home/dev/piper_env, listening on 0.0.0.0:5005)" in found
    assert f"starts it: {HOME}/.bashrc:118: {line}" in found


def test_our_own_service_on_the_port_is_left_alone():
    ours = proc(777, ["/home/piper/piper_env/.venv/bin/python", "-m", "piper_gpu_server", "--config",
                      "/etc/piper-gpu/server.toml"], ["127.0.0.1:5005"], user="piper")
    m = decide(facts([ours], ours=[777]))
    assert not m and m.stop == [] and m.address is None
    assert bind_address("auto", m) == ("127.0.0.1", "bind_address='auto' and no old server to carry over: this machine only")


def test_a_server_of_this_deploy_that_its_records_do_not_know_is_an_old_server():
    stray = proc(778, ["/home/piper/piper_env/.venv/bin/python", "-m", "piper_gpu_server", "--config", "/x.toml"],
                 ["127.0.0.1:5005"], user="piper")
    assert [p.pid for p in decide(facts([stray], ours=[1])).stop] == [778]


@pytest.mark.parametrize("cmdline,name", [
    (["python3", "-m", "http.server", "5005"], "python3 -m http.server 5005"),
    (["/usr/sbin/nginx", "-g", "daemon off;"], "/usr/sbin/nginx -g 'daemon off;'"),
    (["python", "app.py", "--port", "5005"], "python app.py --port 5005"),
])
def test_anything_else_on_the_port_stops_the_run_naming_port_pid_command_and_setting(cmdline, name):
    with pytest.raises(Refused) as exc:
        decide(facts([proc(999, cmdline, ["0.0.0.0:5005"], user="www-data")]))
    msg = str(exc.value)
    assert f"port 5005 is held by pid 999 (www-data: {name}, in {HOME}/piper_env, listening on 0.0.0.0:5005)" in msg
    assert "which is not a Piper server" in msg and "Nothing was changed" in msg and "piper_gpu_port" in msg


def test_a_holder_this_host_does_not_show_stops_the_run():
    f = facts(listeners=[{"address": "0.0.0.0", "port": 5005, "inode": "123"}])
    with pytest.raises(Refused, match=r"port 5005 is in use \(listening on 0.0.0.0\) by a process this host does not "
                                      r"show.*piper_gpu_port"):
        decide(f)


def test_a_piper_server_of_another_root_is_not_this_hosts_and_stops_the_run():
    other = proc(55, USERS, ["0.0.0.0:5005"], root="64768:1177")
    with pytest.raises(Refused, match=r"a process with another root directory \(the machine a chroot runs on, or a "
                                      r"container\), not of this host"):
        decide(facts([other]))
    # off the port, another root's server is simply not this host's: nothing to do, and so for an unreadable root
    assert not decide(facts([proc(56, USERS, ["0.0.0.0:5999"], root="64768:1177")]))
    assert not decide(facts([proc(57, USERS, ["0.0.0.0:5999"], root="?")]))


def test_refuse_mode_names_everything_found_and_the_fix():
    f = facts([proc(4321, USERS, ["0.0.0.0:5005"])], scripts=[(SCRIPT, False)])
    with pytest.raises(Refused) as exc:
        decide(f, mode="refuse")
    msg = str(exc.value)
    assert "old_server='refuse'" in msg and "nothing was changed" in msg and f"old server script: {SCRIPT}" in msg
    assert "piper_gpu_old_server='migrate'" in msg
    assert not decide(facts(), mode="refuse")  # nothing found: nothing to refuse


def test_an_earlier_releases_own_script_is_removed_not_kept():
    m = decide(facts(scripts=[(SCRIPT, True)]))
    assert m.own_scripts == [SCRIPT] and m.scripts == [] and not m


def test_their_script_on_another_port_is_stopped_and_the_port_change_is_said():
    m = decide(facts([proc(10, ["python", "piper_http_server.py", "--port", "5006"], ["0.0.0.0:5006"])],
                     scripts=[(SCRIPT, False)], runs={10: [SCRIPT]}))
    assert [p.pid for p in m.stop] == [10] and m.scripts == [SCRIPT] and m.address == "0.0.0.0"
    assert any("set piper_gpu_port=5006" in n for n in m.notes)


def test_a_piper_server_off_the_port_that_runs_no_script_of_theirs_is_named_not_stopped():
    other = proc(11, ["python3", "/opt/tts/piper_http_server.py", "--port", "5006"], ["0.0.0.0:5006"], user="alice")
    m = decide(facts([other], runs={11: ["/opt/tts/piper_http_server.py"]}))
    assert m.stop == [] and m.scripts == [] and m.address is None
    assert any("another Piper server runs on this host, left as it is: pid 11 (alice:" in n
               and "list /opt/tts/piper_http_server.py in piper_gpu_old_server_scripts" in n for n in m.notes)
    # named in the setting, it is theirs: stopped and moved aside
    m = decide(facts([other], runs={11: ["/opt/tts/piper_http_server.py"]}), scripts=("/opt/tts/piper_http_server.py",))
    assert [p.pid for p in m.stop] == [11] and m.scripts == ["/opt/tts/piper_http_server.py"]


def test_processes_that_only_name_the_script_are_not_servers_even_on_the_port():
    """An editor, a pager or a terminal multiplexer whose window runs the server names the file in its own
    command line; stopping a tmux server would end every session in it."""
    for cmdline in (["vim", SCRIPT], ["tmux", "new", "-d", "-s", "tts", "python3 piper_http_server.py"],
                    ["less", "piper_http_server.py"], ["grep", "-r", "piper_http_server.py", HOME]):
        assert not decide(facts([proc(12, cmdline)], scripts=[(SCRIPT, False)])).stop
        with pytest.raises(Refused, match="which is not a Piper server"):
            decide(facts([proc(12, cmdline, ["0.0.0.0:5005"])]))


def test_a_set_bind_address_wins_and_the_run_says_what_it_changes():
    m = decide(facts([proc(10, USERS, ["0.0.0.0:5005"])]), bind="127.0.0.1")
    assert bind_address("127.0.0.1", m) == ("127.0.0.1", "set by bind_address")
    assert any("bind_address='127.0.0.1' is set, so the service listens on 127.0.0.1 instead" in n for n in m.notes)


def test_the_address_carried_over_on_an_earlier_run_stays():
    m = decide(facts(record={"address": "0.0.0.0", "processes": []}))
    assert not m and bind_address("auto", m)[0] == "0.0.0.0"


def test_scripts_named_in_the_setting_are_old_servers_too_by_their_whole_path():
    mine = ["/usr/bin/python3", "/srv/tts/my server.py", "--port", "5005"]
    with pytest.raises(Refused):
        decide(facts([proc(3, mine, ["127.0.0.1:5005"])]))
    m = decide(facts([proc(3, mine, ["127.0.0.1:5005"])]), scripts=("/srv/tts/my server.py",))
    assert [p.pid for p in m.stop] == [3] and m.address == "127.0.0.1"
    relative = ["python3", "-u", "my server.py", "--port", "5005"]  # started from its directory
    m = decide(facts([proc(4, relative, ["127.0.0.1:5005"], cwd="/srv/tts")]), scripts=("/srv/tts/my server.py",))
    assert [p.pid for p in m.stop] == [4]
    # another file of the same name elsewhere is not theirs
    with pytest.raises(Refused):
        decide(facts([proc(5, ["python3", "/tmp/my server.py"], ["127.0.0.1:5005"])]), scripts=("/srv/tts/my server.py",))


def test_a_user_unit_is_named_not_touched():
    m = decide(facts(units=[(f"{HOME}/.config/systemd/user/tts.service", True), ("/etc/systemd/system/tts.service", True)]))
    assert m.units == [("/etc/systemd/system/tts.service", True)]
    assert any("systemctl --user disable --now" in n for n in m.notes)


@pytest.mark.parametrize("cmdline,expected", [
    (USERS, True),
    (["python", "/x/piper_http_server_gpu.py"], True),
    (["/usr/bin/python3.10", "-u", "-X", "dev", "piper_http_server.py", "--port", "1"], True),
    (["python3", "-m", "piper.http_server", "-m", "zh_CN-huayan-medium"], True),
    (["python3", "-mpiper.http_server"], True),
    (["python", "-m", "piper_gpu_server", "--config", "/c"], True),
    (["python", "-m", "http.server"], False),
    (["python", "piper_http_server.txt"], False),
    (["python", "-c", "import x", "piper_http_server.py"], False),
    (["python", "app.py", "piper_http_server.py"], False),  # an argument of another script
    (["grep", "piper_http_server.py"], False),  # a search for it is not it
    (["vim", "piper_http_server.py"], False),
    (["tmux", "new", "-d", "python3 piper_http_server.py"], False),
    (["/usr/bin/pythonista", "piper_http_server.py"], False),
])
def test_what_counts_as_a_piper_server(cmdline, expected):
    assert is_piper_server(cmdline) is expected


@hsettings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n[]\\"), min_size=2, max_size=40))
def test_the_search_pattern_finds_the_name_and_never_its_own_spelling(name):
    """Any name of two characters or more without brackets or backslashes. (Hypothesis found the others:
    "0" and "0]" match their own patterns "[0]" and "[0]\\]". Harmless: the plan keeps only command lines
    that run a server of that name, and the fact leaves its own shell out.)"""
    pattern = _unmatched_regex(name)
    assert re.search(pattern, f"python {name} --port 5005")
    assert not re.search(pattern, pattern)  # the search's own command line holds the pattern, not the name


# --- the fact, on this machine ------------------------------------------------------------------
STAND_IN = """
import http.server, json, sys
host, port = sys.argv[sys.argv.index("--host") + 1], int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(json.dumps({"status": "ok"}).encode())
    def log_message(self, *a): pass
http.server.HTTPServer((host, port), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def users_setup(tmp_path):
    """A home as the users' plan leaves it: the script in ~/piper_env, started from .bashrc, running."""
    home = tmp_path / "home dir"
    (home / "piper_env").mkdir(parents=True)
    script = home / "piper_env" / "piper_http_server.py"
    script.write_text(STAND_IN)
    port, other = free_port(), free_port()
    (home / ".bashrc").write_text(f"alias ll='ls -l'\ncd ~/piper_env && python3 piper_http_server.py --host 0.0.0.0 "
                                  f"--port {port} &\n")
    (home / ".profile").write_text("# python3 piper_http_server.py (commented)\n")
    server = subprocess.Popen([sys.executable, "piper_http_server.py", "--host", "0.0.0.0", "--port", str(port)],
                              cwd=home / "piper_env")
    unrelated = subprocess.Popen([sys.executable, "-m", "http.server", str(other), "--bind", "127.0.0.1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        wait_listening(other)
        yield home, script, port, other, server, unrelated
    finally:
        for p in (server, unrelated):
            p.kill()
            p.wait()


def read_fact(home, port, scripts=()):
    fact = ManualSetup()
    command = fact.command(port, str(home), "nobody-here", tuple(scripts), str(home / "no.pid"), "piper-tts.service",
                           str(home / "no-record.json"))
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return fact.process(out.stdout.splitlines())


def test_the_fact_finds_the_users_server_script_and_autostart_on_a_real_host(users_setup):
    home, script, port, other, server, _ = users_setup
    f = read_fact(home, port)
    assert f["processes"][server.pid]["sockets"] == [f"0.0.0.0:{port}"]
    assert f["processes"][server.pid]["cwd"] == str(home / "piper_env")
    assert f["processes"][server.pid]["cmdline"] == [sys.executable, "piper_http_server.py", "--host", "0.0.0.0",
                                                     "--port", str(port)]
    assert f["runs"][server.pid] == [str(script)] and f["scripts"] == [[str(script), False]]
    assert [a[:2] for a in f["autostart"]] == [[str(home / ".bashrc"), 2], [str(home / ".profile"), 1]]
    assert os.getpid() not in f["processes"]  # the search is not an old server
    m = plan(f, port, "migrate", (), str(home), "auto")
    # (this machine's other processes are in the fact too: only Piper servers are to be stopped)
    assert server.pid in [p.pid for p in m.stop] and all(is_piper_server(p.cmdline) for p in m.stop)
    assert str(script) in m.scripts and m.address == "0.0.0.0"
    assert [a[1] for a in m.autostart] == [2]


def test_the_fact_names_an_unrelated_holder_and_the_plan_refuses_it(users_setup):
    home, _, _, other, _, unrelated = users_setup
    f = read_fact(home, other)
    assert f["processes"][unrelated.pid]["sockets"] == [f"127.0.0.1:{other}"]
    with pytest.raises(Refused, match=rf"port {other} is held by pid {unrelated.pid} .*-m http.server {other}"):
        plan(f, other, "migrate", (), str(home), "auto")


def test_the_fact_reads_the_pid_file_and_the_record(users_setup, tmp_path):
    home, _, port, _, server, _ = users_setup
    (home / "no-record.json").write_text(json.dumps({"address": "0.0.0.0"}) + "\n")
    # a pid file naming a process that does not run the server (a pid taken again after a reboot) is not ours
    (home / "no.pid").write_text(f"{server.pid}\n")
    f = read_fact(home, port)
    assert f["our_pids"] == [] and f["record"] == {"address": "0.0.0.0"}
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "piper_gpu_server"])
    try:
        (home / "no.pid").write_text(f"{ours.pid}\n")
        assert read_fact(home, port)["our_pids"] == [ours.pid]
    finally:
        ours.kill()
        ours.wait()


def test_a_script_named_in_the_setting_is_found_with_spaces_in_its_path(users_setup):
    home, _, port, _, _, _ = users_setup
    mine = home / "tts dir" / "my server.py"
    mine.parent.mkdir()
    mine.write_text("# theirs\n")
    f = read_fact(home, port, scripts=(str(mine),))
    assert [str(mine), False] in f["scripts"]


def test_a_stopped_old_server_takes_its_address_from_its_autostart_line_or_says_it_is_unknown():
    line = "cd ~/piper_env && nohup python piper_http_server.py --host 0.0.0.0 --port 5005 &"
    m = decide(facts(scripts=[(SCRIPT, False)], autostart=[(f"{HOME}/.bashrc", 7, line)]))
    assert m.address == "0.0.0.0" and f"its address 0.0.0.0 is taken from {HOME}/.bashrc line 7" in " ".join(m.notes)
    m = decide(facts(scripts=[(SCRIPT, False)]))
    assert m.address is None and any("says nowhere where it listened" in n for n in m.notes)


def test_an_autostart_line_that_goes_on_over_the_next_one_stops_the_run():
    with pytest.raises(Refused, match=r"\.bashrc line 9 starts the old server and goes on over the next line"):
        decide(facts(autostart=[(f"{HOME}/.bashrc", 9, "nohup python piper_http_server.py \\")]))
