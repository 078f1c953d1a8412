"""The fleet (piper_gpu/fleet.py) with a fake runner: batches of N or P% in inventory order, the rule that
stops the next batches (any host not ok, unless --keep-going or within --max-fail percent of all hosts),
one host's exception kept to that host, the summary with a row per host, the retry file, the JSON and the
exit status; what a host's pyinfra run did, read from pyinfra 3.10's own output (the samples below are
real runs' output, shortened); the health gate's identity rule and its retries; how testinfra reaches each
kind of inventory host; --limit."""

import argparse
import json
import threading

import pytest

from piper_gpu import fleet
from piper_gpu.fleet import (FAILED, NOT_STARTED, OK, REFUSED, UNHEALTHY, UNREACHABLE, Converged, FleetHost,
                             HostResult)

HOST = "@chroot//var/lib/piper-gpu-deploy/sandboxes/b/root"

# --- pyinfra 3.10's output, from real runs (tests/scenarios/test_fleet.py runs the real thing) -----------

REFUSED_OUTPUT = f"""--> Loading config...
--> Loading inventory...
    The @chroot connector is in beta!

--> Connecting to hosts...
    [{HOST}] Connected

--> Preparing operation files...
    Loading: deploy.py

--> Disconnecting from hosts...
--> pyinfra error in /work/piper_gpu/steps/preflight.py line 95: local sources not usable (nothing was changed):
  - cudnn_local_repo_url='/srv/installers/cudnn-local-repo-debian12-9.1.1_1.0-1_amd64.deb': no such file; check the name and the folder it is in
"""

FAILED_OUTPUT = f"""--> Preparing operation files...
    Loading: deploy.py
    [{HOST}] Ready: deploy.py

--> Skipping change detection
--> Beginning operation run...
--> Starting operation: A step before 
    [{HOST}] Success

--> Starting operation: The step that fails 
    [{HOST}] first error line
    [{HOST}] more
    [{HOST}] Error: executed 0 commands

--> Disconnecting from hosts...
--> pyinfra error: No hosts remaining!
"""

TRACEBACK_OUTPUT = f"""--> Connecting to hosts...
    [{HOST}] Connected

--> Preparing operation files...
    Loading: boom.py

--> Disconnecting from hosts...
--> An exception occurred in: boom.py:

Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/pyinfra_cli/util.py", line 66, in exec_file
    exec(PYTHON_CODES[filename], data)
  File "boom.py", line 1, in <module>
    raise ValueError("a bug in the deploy file")
ValueError: a bug in the deploy file
"""

UNREACHABLE_OUTPUT = """--> Connecting to hosts...
    Failed to load host keys from /root/.ssh/known_hosts: [Errno 2] No such file or directory: '/root/.ssh/known_hosts'
    [127.0.0.1] Could not connect ([Errno None] Unable to connect to port 1 on 127.0.0.1)

--> Disconnecting from hosts...
--> pyinfra error: No hosts remaining!
"""

OK_OUTPUT = f"""--> Starting operation: Piper TTS on the GPU | Record the applied settings for verify | Resolved target /etc/piper-gpu/target.json 
    [{HOST}]         No changes

--> Results:
    Operation                                        Hosts   Success   Error   No Change   
    Piper TTS on the GPU | Preflight | WSL2 check    1       -         -       1           
    Grand total                                      41      3         -       38          

--> Disconnecting from hosts...
"""


# --- a fake runner ------------------------------------------------------------------------------------

def converged(output=OK_OUTPUT, rc=0):
    return Converged(rc, output, 1.0)


class FakeRunner:
    """Each host's run and health from tables; records the order hosts start in and how many run at once."""

    def __init__(self, runs=None, health=None, barrier=None):
        self.runs, self.healths, self.barrier = runs or {}, health or {}, barrier
        self.started, self.active, self.most_at_once = [], 0, 0
        self.lock = threading.Lock()

    def converge(self, host):
        with self.lock:
            self.started.append(host.name)
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        try:
            if self.barrier is not None:
                self.barrier.wait()  # every host of the batch must be running at once to pass
            run = self.runs.get(host.name, converged())
            if isinstance(run, Exception):
                raise run
            return run
        finally:
            with self.lock:
                self.active -= 1

    def health(self, host, timeout):
        return self.healths.get(host.name)


def hosts(*names):
    return [FleetHost(n) for n in names]


def quiet(*_):
    pass


def statuses(results):
    return {r.host: r.status for r in results}


# --- batches ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("serial,total,size", [
    (None, 5, 5), ("1", 5, 1), ("2", 5, 2), ("50%", 5, 2), ("10%", 5, 1), ("100%", 3, 3), ("34%", 3, 1),
    ("67%", 3, 2), ("7", 3, 7),
])
def test_batch_size_is_a_number_or_a_percentage_rounded_down_at_least_one(serial, total, size):
    assert fleet.batch_size(serial, total) == size


@pytest.mark.parametrize("bad", ["0", "0%", "101%", "x", "-1", "1.5", ""])
def test_serial_refuses_what_is_not_a_count_or_a_percentage(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="--serial"):
        fleet.parse_serial(bad)


@pytest.mark.parametrize("bad", ["-1", "101", "x"])
def test_max_fail_refuses_what_is_not_a_percentage(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="--max-fail"):
        fleet.parse_percent(bad)


def test_batches_keep_inventory_order():
    assert fleet.batches(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]


def test_without_serial_every_host_runs_at_once():
    runner = FakeRunner(barrier=threading.Barrier(4, timeout=10))
    results = fleet.run_fleet(hosts("a", "b", "c", "d"), runner, say=quiet)
    assert runner.most_at_once == 4
    assert [r.status for r in results] == [OK] * 4


def test_serial_two_runs_two_at_a_time_in_inventory_order():
    runner = FakeRunner(barrier=threading.Barrier(2, timeout=10))
    results = fleet.run_fleet(hosts("a", "b", "c", "d"), runner, serial="2", say=quiet)
    assert runner.most_at_once == 2
    assert runner.started[:2] and set(runner.started[:2]) == {"a", "b"} and set(runner.started[2:]) == {"c", "d"}
    assert [r.host for r in results] == ["a", "b", "c", "d"]


def test_serial_percentage_batches():
    runner = FakeRunner()
    messages = []
    fleet.run_fleet(hosts(*"abcde"), runner, serial="40%", say=messages.append)
    assert [m for m in messages if m.startswith("fleet: batch")] == [
        "fleet: batch 1/3: a, b", "fleet: batch 2/3: c, d", "fleet: batch 3/3: e"]


# --- stop and continue --------------------------------------------------------------------------------

def test_a_refused_host_stops_the_next_batches_and_they_are_not_started():
    runner = FakeRunner(runs={"b": converged(REFUSED_OUTPUT, 1)})
    results = fleet.run_fleet(hosts("b", "a", "c"), runner, serial="1", say=quiet)
    assert statuses(results) == {"b": REFUSED, "a": NOT_STARTED, "c": NOT_STARTED}
    assert runner.started == ["b"]
    assert "stopped after batch 1: 1 of 3 hosts not ok" in results[1].detail
    assert fleet.exit_status(results) == 1


def test_one_failed_host_does_not_stop_the_others_of_its_batch():
    runner = FakeRunner(runs={"b": converged(FAILED_OUTPUT, 1)})
    results = fleet.run_fleet(hosts("a", "b", "c"), runner, say=quiet)
    assert statuses(results) == {"a": OK, "b": FAILED, "c": OK}


def test_keep_going_runs_every_batch():
    runner = FakeRunner(runs={"a": converged(FAILED_OUTPUT, 1), "b": converged(UNREACHABLE_OUTPUT, 1)})
    results = fleet.run_fleet(hosts("a", "b", "c"), runner, serial="1", keep_going=True, say=quiet)
    assert statuses(results) == {"a": FAILED, "b": UNREACHABLE, "c": OK}
    assert runner.started == ["a", "b", "c"]


def test_max_fail_counts_over_the_whole_fleet_and_stops_once_exceeded():
    runner = FakeRunner(runs={"a": converged(FAILED_OUTPUT, 1), "b": converged(FAILED_OUTPUT, 1)})
    results = fleet.run_fleet(hosts("a", "b", "c", "d"), runner, serial="1", max_fail=25, say=quiet)
    # a: 1 of 4 = 25%, within 25%: go on; b: 2 of 4 = 50%: stop
    assert statuses(results) == {"a": FAILED, "b": FAILED, "c": NOT_STARTED, "d": NOT_STARTED}
    assert "more than --max-fail 25%" in results[2].detail


def test_max_fail_lets_the_run_finish_when_failures_stay_within_it():
    runner = FakeRunner(runs={"a": converged(FAILED_OUTPUT, 1)})
    results = fleet.run_fleet(hosts("a", "b", "c", "d"), runner, serial="1", max_fail=25, say=quiet)
    assert statuses(results) == {"a": FAILED, "b": OK, "c": OK, "d": OK}
    assert fleet.exit_status(results) == 1  # going on is not success


def test_an_unhealthy_host_stops_the_next_batches():
    runner = FakeRunner(health={"a": "GET http://127.0.0.1:5005/health answers as pid 77, not the service's pid 12"})
    results = fleet.run_fleet(hosts("a", "b"), runner, serial="1", say=quiet)
    assert statuses(results) == {"a": UNHEALTHY, "b": NOT_STARTED}
    assert results[0].detail.startswith("GET http://127.0.0.1:5005/health answers as pid 77")


def test_the_health_gate_runs_only_after_a_successful_converge():
    class Counting(FakeRunner):
        gated = []

        def health(self, host, timeout):
            self.gated.append(host.name)
            return None

    runner = Counting(runs={"b": converged(REFUSED_OUTPUT, 1)})
    fleet.run_fleet(hosts("a", "b"), runner, keep_going=True, say=quiet)
    assert runner.gated == ["a"]


def test_an_exception_in_one_host_s_run_stays_that_host_s():
    runner = FakeRunner(runs={"a": OSError("[Errno 24] Too many open files")})
    results = fleet.run_fleet(hosts("a", "b"), runner, say=quiet)
    assert statuses(results) == {"a": FAILED, "b": OK}
    assert results[0].detail == "OSError: [Errno 24] Too many open files"


def test_an_interrupted_run_knows_what_ended_what_was_running_and_what_never_started():
    class Interrupted(FakeRunner):
        def converge(self, host):
            if host.name == "b":
                raise KeyboardInterrupt
            return super().converge(host)

    done = {}
    with pytest.raises(KeyboardInterrupt):
        fleet.run_fleet(hosts("a", "b", "c"), Interrupted(), serial="2", done=done, say=quiet)
    assert done["a"].status == OK
    assert (done["b"].status, done["b"].label) == (FAILED, "failed at an interrupted run")
    assert "c" not in done


# --- what a host's pyinfra run did --------------------------------------------------------------------

def test_a_preflight_refusal_is_refused_with_its_reason():
    r = fleet.classify(HOST, converged(REFUSED_OUTPUT, 1))
    assert (r.status, r.label) == (REFUSED, "refused by preflight")
    assert r.detail.startswith("local sources not usable (nothing was changed):")
    assert "cudnn_local_repo_url='/srv/installers/cudnn-local-repo-debian12-9.1.1_1.0-1_amd64.deb': no such file" in r.detail


def test_a_failed_operation_names_the_step_and_its_first_error_line():
    r = fleet.classify(HOST, converged(FAILED_OUTPUT, 1))
    assert (r.status, r.step, r.detail) == (FAILED, "The step that fails", "first error line")
    assert r.label == "failed at The step that fails"


def test_a_traceback_while_preparing_fails_at_prepare_with_the_exception():
    r = fleet.classify(HOST, converged(TRACEBACK_OUTPUT, 1))
    assert (r.status, r.step, r.detail) == (FAILED, "prepare", "ValueError: a bug in the deploy file")


@pytest.mark.parametrize("pad", [" ", " " * 58])  # pyinfra pads the prefix to the inventory's longest host name
def test_a_host_that_cannot_be_reached_is_unreachable(pad):
    output = UNREACHABLE_OUTPUT.replace("[127.0.0.1] Could", f"[127.0.0.1]{pad}Could")
    r = fleet.classify("127.0.0.1", converged(output, 1))
    assert (r.status, r.detail) == (UNREACHABLE, "could not connect ([Errno None] Unable to connect to port 1 on 127.0.0.1)")


def test_changes_come_from_the_results_table():
    assert fleet.classify(HOST, converged(OK_OUTPUT)).changes == 3
    assert fleet.classify(HOST, converged(OK_OUTPUT.replace("41      3  ", "41      -  "))).changes == 0
    assert fleet.classify(HOST, converged(REFUSED_OUTPUT, 1)).changes is None


# --- summary, retry file, JSON, exit status -----------------------------------------------------------

RESULTS = [HostResult("a", OK, changes=0, seconds=12.25), HostResult("b", REFUSED, detail="no such file\n  - x"),
           HostResult("c", FAILED, step="Voices", detail="sha256 mismatch", changes=None, seconds=3.0),
           HostResult("d", UNHEALTHY, detail="GET /health: refused", changes=2), HostResult("e", UNREACHABLE),
           HostResult("f", NOT_STARTED, detail="stopped after batch 1")]


def test_summary_has_one_row_per_host_with_status_changes_seconds_and_detail():
    lines = fleet.summary(RESULTS).splitlines()
    assert lines[0].split() == ["host", "status", "changes", "seconds", "detail"]
    rows = {line.split()[0]: line for line in lines[1:7]}
    assert rows["a"].split() == ["a", "ok", "0", "12.2"] or rows["a"].split() == ["a", "ok", "0", "12.3"]
    assert "refused by preflight" in rows["b"] and rows["b"].rstrip().endswith("no such file - x")
    assert "failed at Voices" in rows["c"] and rows["c"].rstrip().endswith("sha256 mismatch")
    assert "unhealthy" in rows["d"] and " 2 " in rows["d"]
    assert "unreachable" in rows["e"] and "not started" in rows["f"]
    assert lines[7] == "1 ok, 1 refused by preflight, 1 failed, 1 unreachable, 1 unhealthy, 1 not started"


def test_retry_file_names_the_hosts_not_ok_in_inventory_order_and_goes_when_all_are_ok(tmp_path):
    retry = tmp_path / "fleet.retry"
    assert fleet.write_retry_file(retry, RESULTS)
    assert retry.read_text().splitlines() == ["b", "c", "d", "e", "f"]
    assert not fleet.write_retry_file(retry, [HostResult("a", OK)])
    assert not retry.exists()


def test_the_retry_file_is_a_limit(tmp_path):
    retry = tmp_path / "fleet.retry"
    fleet.write_retry_file(retry, RESULTS)
    inventory = hosts(*"abcdefg")
    patterns = fleet.limit_patterns([f"@{retry}"], {h.name for h in inventory})
    assert [h.name for h in fleet.select(inventory, {}, patterns)] == ["b", "c", "d", "e", "f"]


def test_json_report_has_every_host_and_the_retry_list(tmp_path):
    data = json.loads(json.dumps(fleet.report(RESULTS, tmp_path / "fleet.retry")))
    assert data["ok"] is False and data["retry"] == ["b", "c", "d", "e", "f"]
    assert [(h["host"], h["status"], h["label"]) for h in data["hosts"]][:3] == [
        ("a", "ok", "ok"), ("b", "refused", "refused by preflight"), ("c", "failed", "failed at Voices")]
    assert data["hosts"][0]["changes"] == 0 and data["hosts"][2]["changes"] is None


@pytest.mark.parametrize("results,status", [
    ([HostResult("a", OK), HostResult("b", OK)], 0),
    ([HostResult("a", OK), HostResult("b", NOT_STARTED)], 1),
    ([HostResult("a", UNHEALTHY)], 1),
    ([], 1),
])
def test_exit_status_is_zero_only_when_every_host_is_ok(results, status):
    assert fleet.exit_status(results) == status


# --- the health gate ----------------------------------------------------------------------------------

def found(**over):
    base = {"mode": "profile", "url": "http://127.0.0.1:5005/health", "pid": "412", "token": None,
            "pid_source": "pid file /home/piper/piper_env/run/piper-tts.pid",
            "health": {"status": "ok", "pid": 412, "start_token": "6f1c"}}
    return {**base, **over}


def test_identity_passes_when_health_answers_as_the_service_s_pid_with_a_token():
    assert fleet.identity_problem(found()) is None
    assert fleet.identity_problem(found(mode="systemd", token="6f1c")) is None


@pytest.mark.parametrize("over,says", [
    ({"error": "URLError: <urlopen error [Errno 111] Connection refused>"}, "Connection refused"),
    ({"health": {"status": "ok", "pid": 77, "start_token": "x"}}, "answers as pid 77, not the service's pid 412"),
    ({"health": {"status": "ok", "pid": 412}}, "without a start token"),
    ({"pid": ""}, "the service has no pid"),
    ({"mode": "systemd", "token": "abcd"}, "not the unit's InvocationID abcd"),
    ({"health": {"status": "loading", "pid": 412, "start_token": "6f1c"}}, "status 'loading'"),
])
def test_identity_names_what_answered_instead(over, says):
    assert says in fleet.identity_problem(found(**over))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_gate_retries_until_the_check_passes():
    answers = iter(["not yet", "not yet", None])
    clock = Clock()
    assert fleet.gate(lambda: next(answers), timeout=30, pause=2, clock=clock, sleep=clock.sleep) is None
    assert clock.now == 4


def test_gate_gives_the_last_problem_at_the_timeout_and_turns_exceptions_into_problems():
    calls = []
    clock = Clock()

    def check():
        calls.append(clock.now)
        raise ConnectionResetError("lost")

    assert fleet.gate(check, timeout=10, pause=2, clock=clock, sleep=clock.sleep) == "ConnectionResetError: lost"
    assert calls == [0, 2, 4, 6, 8, 10]  # a last try at the timeout itself


def test_diagnose_problem_names_the_first_failed_check():
    assert fleet.diagnose_problem([{"check": "x", "module": "test_cuda", "outcome": "passed"}]) is None
    assert fleet.diagnose_problem([]) == "diagnose ran no check"
    problem = fleet.diagnose_problem([{"check": "service_listens", "module": "test_service", "outcome": "failed",
                                       "found": "nothing listens on 0.0.0.0:5005"}])
    assert problem == "diagnose: 1 check(s) failed, first service / service_listens: nothing listens on 0.0.0.0:5005"


# --- how the gate reaches a host; --limit -------------------------------------------------------------

def test_reach_of_each_kind_of_inventory_host():
    assert fleet.reach_of("@local", {"_sudo": True}).diagnose_args() == ["--hosts=local://", "--sudo"]
    assert fleet.reach_of("@chroot//srv/root", {}).diagnose_args() == ["--hosts=/srv/root", "--connection=chroot"]
    ssh = fleet.reach_of("tts-01", {"ssh_user": "deploy", "ssh_port": 2222, "ssh_key": "/k/id"})
    assert ssh.diagnose_args() == ["--hosts=ssh://deploy@tts-01:2222", "--sudo", "--ssh-identity-file=/k/id"]
    assert fleet.reach_of("@ssh/tts-02", {"ssh_hostname": "10.0.0.2"}).hosts == "ssh://10.0.0.2"
    assert fleet.reach_of("@ssh/tts-02", {"ssh_user": "root"}).sudo is False
    assert fleet.reach_of("@terraform/x", {}) is None


def test_limit_selects_names_groups_and_patterns_in_inventory_order():
    inventory = hosts("gpu-1", "gpu-2", "cpu-1", "@local")
    groups = {"gpus": ["gpu-2", "gpu-1"]}
    assert [h.name for h in fleet.select(inventory, groups, ["@local", "gpus"])] == ["gpu-1", "gpu-2", "@local"]
    assert [h.name for h in fleet.select(inventory, groups, fleet.limit_patterns(["cpu-*,gpu-2"]))] == ["gpu-2", "cpu-1"]
    with pytest.raises(fleet.FleetError, match="--limit nope: no host or group"):
        fleet.select(inventory, groups, ["nope"])


def test_load_inventory_keeps_the_file_s_order_and_groups(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inv.py").write_text('gpus = [("tts-02", {"ssh_user": "deploy"}), ("tts-01", {"ssh_port": 2201})]\n'
                                     'spare = ["tts-03"]\n')
    found_hosts, groups = fleet.load_inventory("inv.py")
    assert [h.name for h in found_hosts] == ["tts-02", "tts-01", "tts-03"]
    assert groups["gpus"] == ["tts-02", "tts-01"] and groups["spare"] == ["tts-03"]
    assert found_hosts[1].reach.hosts == "ssh://tts-01:2201"


def test_load_inventory_names_a_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(fleet.FleetError, match="inventory missing.py: no such file"):
        fleet.load_inventory("missing.py")


def test_each_host_runs_in_its_own_pyinfra_limited_to_it_with_the_operator_s_options(tmp_path):
    runner = fleet.PyinfraRunner("inv.py", "deploy.py", tmp_path, ["--data", "piper_gpu_port=5006"])
    cmd = runner.command(FleetHost("gpu[1]"))
    assert cmd[1:] == ["-m", "pyinfra", "-y", "inv.py", "deploy.py", "--limit", "gpu[[]1]", "--data",
                       "piper_gpu_port=5006"]  # the name matched as itself, not as a pattern


@pytest.mark.parametrize("argv,says", [
    (["--deploy", "missing.py"], "deploy file missing.py: no such file"),
    (["--limit", "tts-9"], "--limit tts-9: no host or group of the inventory matches it"),
])
def test_the_fleet_refuses_to_start_naming_what_is_wrong(tmp_path, monkeypatch, capsys, argv, says):
    from piper_gpu.__main__ import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploy.py").write_text("")
    (tmp_path / "inv.py").write_text('hosts = ["tts-01"]\n')
    assert main(["fleet", "inv.py", *argv]) == 2
    assert says in capsys.readouterr().err
