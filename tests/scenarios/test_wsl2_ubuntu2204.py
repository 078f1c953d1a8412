"""The users' own host: WSL2 Ubuntu 22.04 (a real jammy userland, Python 3.10, presented as WSL2),
NVIDIA's wsl-ubuntu repository as it is (CUDA 12.4, no cuDNN), cuDNN from the users' local-repo
installer at a /mnt/c/... path, and their manual setup running: their CPU server (their script in
~/piper_env, their venv with the CPU onnxruntime) on 0.0.0.0 and a line in ~/.bashrc that starts it.
--dry lists it; old_server='refuse' stops before any change; runs that fail before the service step leave it
running; the converge stops it, keeps its script and its .bashrc, carries 0.0.0.0 over and proves what answers
is ours; idempotence, verify; the source check stops a deploy that would take cuDNN from wsl-ubuntu; a Linux
driver package is refused and fails verify; mixed cuDNN sub-libraries fail verify; undeploy puts their
script and autostart back, and their server starts again from it."""

import glob
import json
import re
import shlex
import zipfile

import pytest

from conftest import Lab, record
from piper_gpu.migration import DISABLED
from tests.lab import users
from tests.lab.mirror import CACHE
from tests.lab.personas import WSL_USER, fake_linux_driver_deb
from tests.lab.sandbox import provision

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("wsl2-ubuntu2204")]
VENV = f"/home/{WSL_USER}/piper_env/.venv"
OPS_LIB = "/usr/lib/x86_64-linux-gnu/libcudnn_ops.so.9.1.1"


PORT = 15013
SCRIPT = f"/home/{WSL_USER}/piper_env/piper_http_server.py"
BASHRC = f"/home/{WSL_USER}/.bashrc"
MOVED = "/var/lib/piper-gpu/moved-aside.tsv"


@pytest.fixture(scope="module")
def wsl():
    lab = Lab("e2e-wsl2", PORT, persona="wsl2-ubuntu2204")
    lab.users = users.manual_setup(lab.box, WSL_USER, PORT, host="0.0.0.0", autostart=True, venv=True)
    lab.users["script_bytes"] = (lab.root / SCRIPT.lstrip("/")).read_bytes()
    yield lab
    lab.box.destroy()


def their_server_runs(wsl) -> bool:
    h = users.health(wsl.box, PORT)
    return bool(h) and h.get("server") == "users-cpu" and h["pid"] == wsl.users["pid"]


def test_the_users_cpu_server_runs_as_their_plan_left_it(wsl):
    assert their_server_runs(wsl)
    assert users.autostart_line(PORT) in wsl.users["bashrc"]
    venv = {d["name"].lower() for d in json.loads(wsl.sh(f"{VENV}/bin/python -m pip list --format=json").stdout)}
    assert "onnxruntime" in venv and "onnxruntime-gpu" not in venv


def test_dry_run_lists_the_old_server_and_what_the_run_does_with_it(wsl):
    before = host_state(wsl)
    run = provision(wsl.box, wsl.mirror_url, ["--dry"], echo=False)
    out = run.output
    assert run.returncode == 0, out[-4000:]
    assert "found the CPU server of a manual setup" in out, out[-4000:]
    assert (f"old server running: pid {wsl.users['pid']} ({WSL_USER}: .venv/bin/python piper_http_server.py --host "
            f"0.0.0.0 --port {PORT}, in /home/{WSL_USER}/piper_env, listening on 0.0.0.0:{PORT})") in out
    assert f"old server script: {SCRIPT}" in out and f"starts it: {BASHRC}:" in out
    assert "the service listens on 0.0.0.0 (every address: carried over from the old server" in out
    for planned in (f"stop pid {wsl.users['pid']} with SIGTERM (.venv/bin/python piper_http_server.py",
                    f"move {SCRIPT} to /var/lib/piper-gpu/backups/", f"turn off {BASHRC} line "):
        assert planned in out, planned
    assert host_state(wsl) == before and their_server_runs(wsl)


def test_refuse_mode_stops_before_any_change_naming_what_it_found(wsl):
    before = host_state(wsl)
    run = wsl.deploy_with(old_server="refuse")
    assert run.returncode != 0
    assert "old_server='refuse' and the CPU server of a manual setup is on this host; nothing was changed" in run.output
    assert f"old server script: {SCRIPT}" in run.output and "piper_gpu_old_server='migrate'" in run.output
    assert host_state(wsl) == before and their_server_runs(wsl)


def test_the_host_is_wsl2_ubuntu_2204(wsl):
    assert 'VERSION_ID="22.04"' in wsl.sh("cat /etc/os-release").stdout
    assert "microsoft-standard-WSL2" in wsl.sh("cat /proc/sys/kernel/osrelease").stdout
    assert "microsoft-standard-WSL2" in wsl.sh("cat /proc/version").stdout
    assert "/usr/lib/wsl/lib/libcuda.so.1" in wsl.sh("ldconfig -p").stdout
    assert "CUDA Version: 12.6" in wsl.sh("/usr/lib/wsl/lib/nvidia-smi").stdout


def test_cudnn_from_the_wsl_repository_stops_before_any_cuda_package(wsl):
    wsl.set_data(cudnn_source="repo")
    run = wsl.deploy(check=False)
    wsl.set_data(cudnn_source="local-repo")
    assert run.returncode != 0
    out = run.output
    assert "libcudnn9-cuda-12=9.1.1.17-1 is not offered (no version from any configured source)" in out, out[-4000:]
    assert "cudnn_source='archive'" in out and "'local-repo'" in out
    installed = wsl.sh("dpkg-query -W -f='${Package}\\n'").stdout.split()
    # only the repository's keyring (how the source is configured): no CUDA or cuDNN package
    assert not [p for p in installed if p.startswith(("cuda-", "libcudnn", "libcublas")) and p != "cuda-keyring"], installed
    assert "cuda-toolkit-12-4" in wsl.sh("apt-cache madison cuda-toolkit-12-4").stdout  # wsl-ubuntu has CUDA


def as_windows(path: str) -> str:
    """/mnt/c/Users/... as Explorer's "Copy as path" writes it: C:\\Users\\..."""
    assert path.startswith("/mnt/c/"), path
    return "C:\\" + path[len("/mnt/c/"):].replace("/", "\\")


def host_state(wsl) -> str:
    """What a deploy would change first: packages, apt's sources and pins, the deploy's own files."""
    return wsl.sh("dpkg-query -W -f='${Package} ${Version} ${Status}\\n'; ls -la --time-style=+%s /etc/apt/sources.list.d "
                  "/etc/apt/preferences.d /etc/apt/keyrings 2>&1; ls -la /etc/piper-gpu /var/cache/piper-gpu 2>&1",
                  check=False).stdout


def test_a_windows_path_to_a_missing_installer_stops_before_anything_changes(wsl):
    """The issue's case: a path typed the Windows way, here to a file that is not there. Preflight names
    the setting, the value as written and as this host sees it, and the fix; nothing changes."""
    real = json.loads(wsl.box.data_file.read_text())["cudnn_local_repo_url"]
    missing = as_windows(real.replace(".deb", "-typo.deb"))
    before = host_state(wsl)
    wsl.set_data(cudnn_local_repo_url=missing)
    try:
        run = wsl.deploy(check=False)
    finally:
        wsl.set_data(cudnn_local_repo_url=real)
    assert run.returncode != 0
    assert (f"cudnn_local_repo_url={missing!r} (on this host {real.replace('.deb', '-typo.deb')}): no such file"
            in run.output), run.output[-3000:]
    assert "nothing was changed" in run.output and "Copy as path" in run.output
    assert host_state(wsl) == before
    assert their_server_runs(wsl)  # a run stopped before the service step leaves the old server serving


def test_converge_from_the_users_installer(wsl):
    """From the installer in a Windows folder named as Windows users name them, given as a Windows path."""
    real = json.loads(wsl.box.data_file.read_text())["cudnn_local_repo_url"]
    folder = real.rsplit("/", 1)[0] + "/Téléchargements #1 (100%) & 下载 [cuDNN]"
    wsl.sh(f"mkdir -p {shlex.quote(folder)} && cp {shlex.quote(real)} {shlex.quote(folder)}/")
    wsl.set_data(cudnn_local_repo_url=as_windows(folder + "/" + real.rsplit("/", 1)[1]))
    first = wsl.deploy()
    assert first.changes and first.changes > 20, first.output[-3000:]
    wsl.first = first


def test_the_converge_migrated_their_server_and_what_answers_is_ours(wsl):
    out = wsl.first.output
    assert f"Stop the old server (SIGTERM, as the plan's pkill does): pid {wsl.users['pid']}" in out
    assert wsl.sh(f"kill -0 {wsl.users['pid']}", check=False).returncode != 0
    # their script: moved to a dated backup, byte for byte
    backup = re.search(rf"Move the old server's script {SCRIPT} to (\S+) ", out).group(1)
    assert (wsl.root / backup.lstrip("/")).read_bytes() == wsl.users["script_bytes"]
    assert not (wsl.root / SCRIPT.lstrip("/")).exists()
    # their autostart: the line turned into a comment undeploy can take off, the file as it was kept
    bashrc = (wsl.root / BASHRC.lstrip("/")).read_text()
    assert DISABLED + users.autostart_line(PORT) + "\n" in bashrc
    kept = re.search(rf"Turn off the old server's autostart in {BASHRC} \(line \d+: .*?; the file as it was: (\S+)\)",
                     out).group(1)
    assert (wsl.root / kept.lstrip("/")).read_text() == wsl.users["bashrc"]
    # their venv: the CPU onnxruntime replaced, what it held recorded
    assert "in your venv, made before this deploy" in out and "remove onnxruntime" in out
    assert f"onnxruntime=={users.CPU_ONNXRUNTIME}" in (wsl.root / "var/lib/piper-gpu/venv-before.txt").read_text()
    # their address carried over, said plainly; what answers on it is the service's own process
    assert "the service listens on 0.0.0.0 (every address: carried over from the old server" in out
    assert f"0.0.0.0:{PORT}" in wsl.sh("ss -Hltn").stdout
    pid = (wsl.root / f"home/{WSL_USER}/piper_env/run/piper-tts.pid").read_text().strip()
    health = users.health(wsl.box, PORT)
    assert str(health["pid"]) == pid and health["start_token"] and "server" in health and health["server"] != "users-cpu"


def test_second_run_changes_nothing(wsl):
    second = wsl.deploy()
    assert second.changes == 0, re.findall(r".*\| .*Success.*", second.output)
    first = next(r for r in wsl.runs if r.returncode == 0)
    record("wsl2-ubuntu2204", converge={"seconds": round(first.seconds, 1), "changes": first.changes},
           second_run={"seconds": round(second.seconds, 1), "changes": second.changes})


def test_cudnn_came_from_the_local_repo_with_its_keyring_pinned_and_held(wsl):
    assert wsl.sh("dpkg-query -W -f='${Status}' cudnn-local-repo-ubuntu2204-9.1.1").stdout == "install ok installed"
    assert glob.glob(str(wsl.root / "usr/share/keyrings/cudnn-local-*-keyring.gpg"))
    policy = wsl.sh("apt-cache policy libcudnn9-cuda-12").stdout
    assert "Installed: 9.1.1.17-1" in policy and "file:/var/cudnn-local-repo-ubuntu2204-9.1.1" in policy, policy
    assert "libcudnn9-cuda-12" in wsl.sh("apt-mark showhold").stdout.split()


def test_the_venv_runs_python_3_10_with_its_lock(wsl):
    assert wsl.sh(f"{VENV}/bin/python -c 'import sys; print(sys.version_info[:2])'").stdout.strip() == "(3, 10)"
    dists = {d["name"].lower(): d["version"] for d in json.loads(wsl.sh(f"{VENV}/bin/python -m pip list --format=json").stdout)}
    assert dists["numpy"] == "2.2.6" and dists["onnxruntime-gpu"] == "1.20.2" and "onnxruntime" not in dists


def test_verify_passes_with_gpu_checks_skipped(wsl, tmp_path):
    results = wsl.diagnose(tmp_path)
    failed = {k: v for k, v in results.items() if v["outcome"] == "failed"}
    assert not failed, wsl.last_screen
    for check in ("wsl2_gpu_library_path", "wsl2_libcuda_is_the_windows_drivers", "cudnn_sublibraries_from_one_release",
                  "cudnn_version", "cudnn_package_pinned_and_held", "cuda_provider_library_dependencies_resolve",
                  "tts_returns_a_valid_wav", "venv_holds_every_pinned_distribution"):
        assert results[check]["outcome"] == "passed", wsl.last_screen
    skipped = results["real_session_uses_cuda"]
    assert skipped["outcome"] == "skipped" and "cuInit(0) gives 100" in skipped["reason"], skipped
    log = (wsl.root / f"home/{WSL_USER}/piper_env/logs/piper-tts.log").read_text()
    assert "cuInit(0) fails with CUDA error 100" in log


def test_a_linux_driver_package_fails_verify_and_is_refused(wsl, tmp_path):
    deb = fake_linux_driver_deb(tmp_path)
    (wsl.root / "tmp" / deb.name).write_bytes(deb.read_bytes())
    wsl.sh(f"dpkg -i /tmp/{deb.name} && ldconfig")
    results = wsl.diagnose(tmp_path)
    check = results["wsl2_libcuda_is_the_windows_drivers"]
    assert check["outcome"] == "failed", wsl.last_screen
    assert "libnvidia-compute-550" in json.dumps(check) and "apt-get purge libnvidia-compute-550" in json.dumps(check)
    before = wsl.sh("stat -c %Y /etc/piper-gpu/settings.json").stdout
    run = wsl.deploy(check=False)
    assert run.returncode != 0
    assert "Linux NVIDIA driver packages installed (libnvidia-compute-550)" in run.output, run.output[-3000:]
    assert "Nothing was changed" in run.output
    assert wsl.sh("stat -c %Y /etc/piper-gpu/settings.json").stdout == before
    wsl.sh("dpkg --purge libnvidia-compute-550 && ldconfig")
    assert wsl.diagnose(tmp_path)["wsl2_libcuda_is_the_windows_drivers"]["outcome"] == "passed", wsl.last_screen


def test_a_mixed_in_cudnn_sub_library_fails_verify_with_the_fix(wsl, tmp_path):
    previous = glob.glob(str(CACHE / "wheels-previous" / "nvidia_cudnn_cu12-9.1.0.70-*.whl"))[0]
    with zipfile.ZipFile(previous) as zf:
        (wsl.root / OPS_LIB.lstrip("/")).write_bytes(zf.read("nvidia/cudnn/lib/libcudnn_ops.so.9"))
    check = wsl.diagnose(tmp_path)["cudnn_sublibraries_from_one_release"]
    assert check["outcome"] == "failed", wsl.last_screen
    assert "libcudnn_ops" in json.dumps(check) and "1002" in json.dumps(check)
    fix = re.search(r"(sudo apt-get install --reinstall .*?) \(or re-run", json.dumps(check)).group(1)
    wsl.sh(fix.replace("sudo ", ""))
    assert wsl.diagnose(tmp_path)["cudnn_sublibraries_from_one_release"]["outcome"] == "passed", wsl.last_screen


USERS_WSL_CONF = """# Windows drives
[automount]
enabled = true
options = "metadata,umask=22,fmask=11"

[boot]
command = service cron start

[network]
hostname = gpu-box
generateResolvConf = false
"""


def test_systemd_mode_enables_it_in_wsl_conf_keeping_the_users_settings(wsl):
    """This WSL2 instance runs without systemd (a chroot): service_mode='systemd' sets [boot] systemd=true
    in the users' /etc/wsl.conf, keeps every other line, says once that `wsl --shutdown` is needed, and
    stops; a second run leaves the file as it is and says it again; profile mode converges as before."""
    conf = wsl.root / "etc/wsl.conf"
    conf.write_text(USERS_WSL_CONF)
    wsl.set_data(service_mode="systemd")
    try:
        first = wsl.deploy(check=False)
        assert first.returncode != 0
        assert first.output.count("Run `wsl --shutdown`") == 1, first.output[-3000:]
        assert "/etc/wsl.conf now enables it" in first.output
        assert conf.read_text() == USERS_WSL_CONF.replace("command = service cron start\n",
                                                          "command = service cron start\nsystemd=true\n")
        written = conf.read_text()
        second = wsl.deploy(check=False)
        assert second.returncode != 0 and "/etc/wsl.conf enables it already" in second.output
        assert conf.read_text() == written
        assert not (wsl.root / "etc/systemd/system/piper-tts.service").exists()
    finally:
        wsl.set_data(service_mode=None)
    assert wsl.deploy().changes == 0


def test_undeploy_puts_their_script_and_autostart_back_and_their_server_starts_again(wsl):
    """Undeploy removes what the deploy made and puts back what it moved aside: their script where it was,
    their .bashrc as it was before the deploy (the autostart line on again, the CUDA block gone); their venv
    stays (the deploy did not create it). Their server then starts from their own .bashrc line."""
    result = provision(wsl.box, wsl.mirror_url, [], echo=False, deploy_file="undeploy.py")
    assert result.returncode == 0, result.output[-4000:]
    assert (wsl.root / SCRIPT.lstrip("/")).read_bytes() == wsl.users["script_bytes"]
    assert (wsl.root / BASHRC.lstrip("/")).read_text() == wsl.users["bashrc"]
    assert f"{VENV} stays: this deploy did not create it" in result.output
    assert not (wsl.root / MOVED.lstrip("/")).exists()
    assert f":{PORT}" not in wsl.sh("ss -Hltn").stdout  # the service is gone
    assert "the old server this deploy stopped is not started again" in result.output
    again = provision(wsl.box, wsl.mirror_url, [], echo=False, deploy_file="undeploy.py")
    assert again.returncode == 0 and again.changes == 0, again.output[-3000:]
    # their own line, back on, starts it again as it did before the deploy (run as their shell runs it)
    line = next(l for l in (wsl.root / BASHRC.lstrip("/")).read_text().splitlines() if "piper_http_server" in l
                and not l.startswith("#"))
    # (from a file: on a command line of its own, the line's `pgrep -f piper_http_server` would find itself)
    (wsl.root / "tmp/autostart.sh").write_text(f"cd ~ && {line}\n")
    wsl.sh(f"runuser -u {WSL_USER} -- bash /tmp/autostart.sh </dev/null >/dev/null 2>&1")
    assert users.answering_pid(wsl.box, PORT) and users.health(wsl.box, PORT)["server"] == "users-cpu"
