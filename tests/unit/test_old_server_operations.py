"""The operations that turn the old server's autostart off, stop it, keep its script and put them back
(piper_gpu/operations.py), run for real: their shell commands executed in a scratch directory on this
machine, as pyinfra would run them on the host."""

import os
import signal
import subprocess
import sys
import time

import pytest

from piper_gpu import operations
from piper_gpu.migration import DISABLED, Process

LINE = "pgrep -f piper_http_server >/dev/null || (cd ~/piper_env && nohup .venv/bin/python piper_http_server.py &)"


def commands(op, **kwargs) -> list[str]:
    """The shell commands an operation yields (its generator, without pyinfra's state)."""
    return [str(c) if not hasattr(c, "get_raw_value") else c.get_raw_value() for c in op.__wrapped__(**kwargs)]


def run(cmds: list[str]) -> subprocess.CompletedProcess:
    """The commands one after another, stopping at the first that fails, as pyinfra does."""
    for cmd in cmds:
        res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
        if res.returncode:
            return res
    return res


@pytest.fixture
def home(tmp_path):
    (tmp_path / "state").mkdir()
    return tmp_path


def disable(home, path, numbers):
    text = path.read_text().splitlines()
    return commands(operations.lines_disabled, path=str(path), lines=[(n, text[n - 1]) for n in numbers],
                    prefix=DISABLED, backup=str(home / "state/backups/1" / path.name),
                    ledger=str(home / "state/moved.tsv"))


def put_back_all(home):
    ledger = home / "state/moved.tsv"
    for entry in reversed(ledger.read_text().splitlines() if ledger.exists() else []):
        assert run(commands(operations.put_back, entry=entry, ledger=str(ledger), prefix=DISABLED,
                            backups=str(home / "state/backups"))).returncode == 0


def test_an_autostart_line_is_turned_off_kept_and_put_back_byte_for_byte(home):
    bashrc = home / ".bashrc"
    before = f"alias ll='ls -l'\n\n# Piper TTS (CPU)\n{LINE}\nexport EDITOR=vim\n"
    bashrc.write_text(before)
    assert run(disable(home, bashrc, [4])).returncode == 0
    assert bashrc.read_text() == before.replace(LINE, DISABLED + LINE)
    assert (home / "state/backups/1/.bashrc").read_text() == before  # the file as it was
    assert (home / "state/moved.tsv").read_text() == f"lines\t{bashrc}\t{home}/state/backups/1/.bashrc\n"
    again = bashrc.read_text()
    assert run(disable(home, bashrc, [4])[2:3]).returncode == 0 and bashrc.read_text() == again  # a commented line stays
    put_back_all(home)
    assert bashrc.read_text() == before
    assert not (home / "state/moved.tsv").exists() and not (home / "state/backups/1").exists()


def test_a_symlinked_dotfile_is_edited_where_it_lives(home):
    (home / "dotfiles").mkdir()
    real = home / "dotfiles/bashrc"
    real.write_text(f"{LINE}\n")
    link = home / ".bashrc"
    link.symlink_to("dotfiles/bashrc")
    assert run(disable(home, link, [1])).returncode == 0
    assert link.is_symlink() and real.read_text() == DISABLED + LINE + "\n"
    put_back_all(home)
    assert link.is_symlink() and real.read_text() == LINE + "\n"


def test_a_line_inside_an_if_is_not_turned_off_and_the_run_stops_naming_it(home):
    bashrc = home / ".bashrc"
    before = "if ! pgrep -f piper_http_server; then\n  (cd ~/piper_env && nohup python piper_http_server.py &)\nfi\n"
    bashrc.write_text(before)
    res = run(disable(home, bashrc, [1, 2]))
    assert res.returncode == 1
    assert f"turning off line 1, 2 of {bashrc} would break the file's shell syntax" in res.stderr
    assert bashrc.read_text() == before  # as it was
    assert not (home / "state/moved.tsv").exists()  # nothing for undeploy to undo


def test_a_script_moved_aside_goes_back_unless_something_is_in_its_place(home):
    script = home / "piper_env/piper_http_server.py"
    script.parent.mkdir()
    script.write_text("# theirs\n")
    os.chmod(script, 0o751)
    backup = home / "state/backups/1" / "piper_http_server.py"
    ledger = home / "state/moved.tsv"
    assert run(commands(operations.moved_aside, path=str(script), backup=str(backup), ledger=str(ledger))).returncode == 0
    assert not script.exists() and backup.read_text() == "# theirs\n" and oct(backup.stat().st_mode)[-3:] == "751"
    script.write_text("# a new one\n")  # something in its place: the backup and its line stay
    put_back_all(home)
    assert backup.exists() and ledger.read_text().startswith("file\t")
    script.unlink()
    put_back_all(home)
    assert script.read_text() == "# theirs\n" and not backup.exists() and not ledger.exists()


STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open({!r}, 'w').close(); time.sleep(120)"
POLITE = "import time; open({!r}, 'w').close(); time.sleep(120)"


def started(tmp_path, code):
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", code.format(str(ready))])
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def as_process(proc: subprocess.Popen) -> Process:
    return Process(pid=proc.pid, user="dev", cwd="/", root="same", cmdline=tuple(proc.args))


def test_the_old_server_is_stopped_and_recorded(home):
    proc = started(home, POLITE)
    record = home / "state/old-server.json"
    res = run(commands(operations.processes_stopped, processes=[as_process(proc)], wait_s=15, record=str(record),
                       record_text='{"address": "0.0.0.0"}'))
    assert res.returncode == 0, res.stderr
    assert proc.wait(timeout=5) == -signal.SIGTERM and record.read_text() == '{"address": "0.0.0.0"}\n'


def test_one_that_survives_sigterm_is_named_and_the_run_stops(home):
    proc = started(home, STUBBORN)
    try:
        res = run(commands(operations.processes_stopped, processes=[as_process(proc)], wait_s=1,
                           record=str(home / "state/r.json"), record_text="{}"))
        assert res.returncode == 1
        assert "the old server did not stop within 1 s of SIGTERM:" in res.stderr
        assert f"pid {proc.pid} (dev: {sys.executable} -c" in res.stderr and "kill -9 PID" in res.stderr
        assert not (home / "state/r.json").exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_that_runs_something_else_now_is_left_alone(home):
    proc = started(home, STUBBORN)
    try:
        stale = Process(pid=proc.pid, user="dev", cwd="/", root="same", cmdline=("python3", "piper_http_server.py"))
        res = run(commands(operations.processes_stopped, processes=[stale], wait_s=1, record=str(home / "state/r.json"),
                           record_text="{}"))
        assert res.returncode == 0, res.stderr  # not signalled, not waited for
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
