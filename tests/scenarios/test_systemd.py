"""systemd for real: a Debian 12 host booted with systemd in systemd-nspawn (tests/lab/booted.py),
reached over SSH as a sudo user, the service as the systemd unit the deploy writes. The unit is
proven through a crash, re-runs with and without changed inputs, a reboot and the undeploy; its
sandbox is measured (as the service: what it can write; `systemd-analyze security`)."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import Lab, record
from tests.lab import users

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("systemd")]

UNIT = "piper-tts.service"
PORT = 15015
SSH_PORT = int(os.environ.get("PIPER_E2E_SYSTEMD_SSH_PORT", "2231"))
SERVER_CONFIG = "/etc/piper-gpu/server.toml"
VOICE = "/home/piper/piper_models/en/en_US-joe-medium/en_US-joe-medium.onnx"


@pytest.fixture(scope="module")
def booted():
    lab = Lab("e2e-systemd", PORT, extra={"service_mode": "systemd"}, booted=True, ssh_port=SSH_PORT)
    yield lab
    if not os.environ.get("PIPER_E2E_KEEP"):
        lab.box.destroy()


def show(lab, *props) -> dict:
    out = lab.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def starts_since(lab, since: str) -> int:
    """How many times systemd started the unit since ``since`` (a `date +%s.%N` reading in the container)."""
    out = lab.sh(f"journalctl -u {UNIT} --since @{since} -o cat --no-pager", check=False).stdout
    return len(re.findall(r"^Started piper-tts\.service", out, re.M))


def now(lab) -> str:
    return lab.sh("date +%s.%N").stdout.strip()


def answers(lab, seconds: float = 60) -> dict:
    """/health once the unit is active and answers (None after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        res = lab.sh(f"curl -sf --max-time 5 http://127.0.0.1:{PORT}/health", check=False)
        if res.returncode == 0:
            return json.loads(res.stdout)
        time.sleep(0.5)
    return None


def test_converges_over_ssh_as_a_systemd_unit_and_a_second_run_changes_nothing(booted):
    first = booted.deploy()
    assert "[127.0.0.1] Connected" in first.output and first.changes > 20
    assert f"{UNIT} enabled at boot" in first.output
    second = booted.deploy()
    assert second.changes == 0, second.output[-3000:]
    record("systemd", converge={"seconds": round(first.seconds, 1), "changes": first.changes},
           second_run={"seconds": round(second.seconds, 1), "changes": second.changes})


def test_unit_enabled_active_listening_and_answering(booted):
    assert booted.sh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert booted.sh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert f"127.0.0.1:{PORT}" in booted.sh("ss -ltn").stdout
    health = answers(booted)
    assert health and health["status"] == "ok" and "en_US-joe-medium" in health["voices"]
    wav = booted.sh(f"curl -sf -o /tmp/a.wav -w '%{{http_code}} %{{content_type}}' -X POST "
                    f"http://127.0.0.1:{PORT}/tts -d '{{\"text\": \"Hello from systemd.\"}}' && head -c 4 /tmp/a.wav")
    assert wav.stdout == "200 audio/wavRIFF", wav.stdout


def test_what_answers_is_the_units_own_process_and_run(booted):
    """/health names the unit's MainPID and this run of the unit (its InvocationID, systemd's start token);
    piper-tts-ctl drives the unit (Type=notify: a start is over once the server listens)."""
    unit = show(booted, "MainPID", "InvocationID", "Type")
    health = answers(booted)
    assert unit["Type"] == "notify" and str(health["pid"]) == unit["MainPID"]
    assert health["start_token"] == unit["InvocationID"] and len(unit["InvocationID"]) == 32
    assert booted.sh("/usr/local/bin/piper-tts-ctl status").stdout.strip() == f"piper-tts running (pid {unit['MainPID']})"


def test_a_start_that_cannot_bind_fails_systemctl_and_the_run(booted):
    """Another process takes the port while the unit restarts (here: one of this machine's, as the container
    shares its network): the server exits before it tells systemd it is ready, `systemctl start` fails, and
    so does the run, with the server's own log line."""
    grabber = subprocess.Popen([sys.executable, "-c", users.PORT_GRABBER, str(PORT), "/dev/null"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    booted.set_data(max_pending=9)  # a server setting: the run restarts the unit
    try:
        run = booted.deploy(check=False)
        assert run.returncode != 0, run.output[-4000:]
        assert f"systemctl start {UNIT} failed" in run.output, run.output[-4000:]
        assert f"cannot listen on 127.0.0.1:{PORT}: [Errno 98] Address already in use" in run.output, run.output[-4000:]
    finally:
        grabber.kill()
        grabber.wait()
        booted.set_data(max_pending=None)
    assert booted.deploy().changes >= 1 and answers(booted)
    assert booted.deploy().changes == 0


def test_start_up_lines_are_in_the_journal(booted):
    journal = booted.sh(f"journalctl -u {UNIT} -o cat --no-pager").stdout
    assert "available_providers=" in journal
    assert "voice en_US-joe-medium: active provider CPUExecutionProvider" in journal
    assert re.search(r"WARN piper_gpu_server: voice en_US-joe-medium: GPU wanted but the session runs on "
                     r"CPUExecutionProvider", journal)


def test_verify_passes_over_ssh_with_the_unit_checks(booted, tmp_path):
    results = booted.diagnose(tmp_path)
    failed = {k: r for k, r in results.items() if r["outcome"] == "failed"}
    assert not failed, booted.last_screen
    for check in ("unit_sandbox_is_in_force", "unit_keeps_gpu_device_access", "service_runs_as_its_user",
                  "service_can_write_only_its_log_and_state", "unit_exposure_is_low"):
        assert results[check]["outcome"] == "passed", (check, results[check])


def test_kill_9_brings_it_back(booted):
    before = show(booted, "MainPID", "NRestarts")
    booted.sh(f"kill -9 {before['MainPID']}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = show(booted, "MainPID", "NRestarts", "ActiveState")
        if after["MainPID"] not in ("0", before["MainPID"]) and after["ActiveState"] == "active":
            break
        time.sleep(0.5)
    assert after["MainPID"] not in ("0", before["MainPID"]), after
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
    assert answers(booted), "no answer after the restart"


def test_a_run_with_nothing_changed_does_not_restart(booted):
    before = show(booted, "MainPID", "ExecMainStartTimestamp")
    result = booted.deploy()
    assert result.changes == 0, result.output[-3000:]
    assert show(booted, "MainPID", "ExecMainStartTimestamp") == before


def test_a_changed_server_setting_restarts_it_exactly_once(booted):
    before, since = show(booted, "MainPID"), now(booted)
    booted.set_data(max_text_chars=4000)  # rendered into the server's config file
    result = booted.deploy()
    booted.set_data(max_text_chars=None)
    assert result.changes >= 2, result.output[-3000:]
    assert starts_since(booted, since) == 1
    assert show(booted, "MainPID") != before and answers(booted)["status"] == "ok"
    since = now(booted)
    assert booted.deploy().changes >= 2  # back to the default: the config file again, one more restart
    assert starts_since(booted, since) == 1


def test_a_half_written_server_config_is_repaired_with_one_restart(booted):
    booted.sh(f"truncate -s 100 {SERVER_CONFIG}")
    since = now(booted)
    assert booted.deploy().changes >= 1
    assert starts_since(booted, since) == 1 and answers(booted)
    assert booted.deploy().changes == 0


def test_a_changed_voice_file_restarts_it_exactly_once(booted):
    booted.sh(f"truncate -s 4096 {VOICE}")  # a voice file damaged on disk: fetched again
    since = now(booted)
    result = booted.deploy()
    assert "Voice en_US-joe-medium.onnx" in result.output and result.changes >= 1
    assert starts_since(booted, since) == 1
    health = answers(booted)
    on_disk = booted.sh(f"sha256sum {VOICE}").stdout.split()[0]
    assert health["voices"]["en_US-joe-medium"]["onnx_sha256"] == on_disk  # the restart loaded the repaired file


def test_the_service_sandbox_holds_and_the_checks_see_a_weakened_one(booted, tmp_path):
    """Measured as the service. A drop-in that loosens the sandbox fails the verify checks that name it."""
    exposure = booted.sh(f"systemd-analyze security {UNIT} --no-pager").stdout
    figure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", exposure).group(1))
    record("systemd", exposure={"unit": UNIT, "overall": figure, "command": f"systemd-analyze security {UNIT}",
                                "systemd": booted.sh("systemctl --version").stdout.split()[1],
                                "not_set": re.findall(r"^✗ (\S+)", exposure, re.M)})
    assert figure <= 2.0
    booted.sh(f"mkdir -p /etc/systemd/system/{UNIT}.d && printf '[Service]\\nProtectHome=no\\nProtectSystem=full\\n'"
              f" > /etc/systemd/system/{UNIT}.d/loosen.conf && systemctl daemon-reload && systemctl restart {UNIT}")
    try:
        answers(booted)
        results = booted.diagnose(tmp_path)
        assert results["unit_sandbox_is_in_force"]["outcome"] == "failed"
        assert results["service_can_write_only_its_log_and_state"]["outcome"] == "failed"
        assert "/home/piper" in results["service_can_write_only_its_log_and_state"]["found"]
    finally:
        booted.sh(f"rm -r /etc/systemd/system/{UNIT}.d && systemctl daemon-reload && systemctl restart {UNIT}")
    assert answers(booted)


def test_after_a_reboot_it_comes_back_on_its_own(booted):
    old_leader = booted.box.leader_pid()
    leader = booted.box.reboot()
    assert leader != old_leader
    health = answers(booted, seconds=90)
    assert health and health["status"] == "ok"
    assert booted.sh(f"systemctl is-active {UNIT}").stdout.strip() == "active"


def test_undeploy_leaves_no_unit_drop_in_or_enablement(booted):
    booted.sh(f"mkdir -p /etc/systemd/system/{UNIT}.d && printf '[Service]\\nEnvironment=X=1\\n' > "
              f"/etc/systemd/system/{UNIT}.d/operator.conf")  # an operator's drop-in: the unit's, goes with it
    result = booted.deploy(deploy_file="undeploy.py")
    assert result.returncode == 0, result.output[-3000:]
    left = booted.sh(f"ls -d /etc/systemd/system/{UNIT} /etc/systemd/system/{UNIT}.d "
                     f"/etc/systemd/system/*.wants/{UNIT} 2>/dev/null", check=False).stdout.split()
    assert left == []
    assert booted.sh(f"systemctl list-unit-files {UNIT} --no-legend", check=False).stdout.strip() == ""
    assert booted.sh(f"systemctl is-active {UNIT}", check=False).stdout.strip() in ("inactive", "unknown")
    assert f":{PORT}" not in booted.sh("ss -ltn").stdout
