"""The users' own host: WSL2 Ubuntu 22.04 (a real jammy userland, Python 3.10, presented as WSL2),
NVIDIA's wsl-ubuntu repository as it is (CUDA 12.4, no cuDNN), cuDNN from the users' local-repo
installer at a /mnt/c/... path. Converge, idempotence, verify; the source check stops a deploy that
would take cuDNN from wsl-ubuntu; a Linux driver package is refused and fails verify; mixed cuDNN
sub-libraries fail verify."""

import glob
import json
import re
import shlex
import zipfile

import pytest

from conftest import Lab, record
from tests.lab.mirror import CACHE
from tests.lab.personas import WSL_USER, fake_linux_driver_deb

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("wsl2-ubuntu2204")]
VENV = f"/home/{WSL_USER}/piper_env/.venv"
OPS_LIB = "/usr/lib/x86_64-linux-gnu/libcudnn_ops.so.9.1.1"


@pytest.fixture(scope="module")
def wsl():
    lab = Lab("e2e-wsl2", 15013, persona="wsl2-ubuntu2204")
    yield lab
    lab.box.destroy()


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


def test_converge_from_the_users_installer(wsl):
    """From the installer in a Windows folder named as Windows users name them, given as a Windows path."""
    real = json.loads(wsl.box.data_file.read_text())["cudnn_local_repo_url"]
    folder = real.rsplit("/", 1)[0] + "/Téléchargements #1 (100%) & 下载 [cuDNN]"
    wsl.sh(f"mkdir -p {shlex.quote(folder)} && cp {shlex.quote(real)} {shlex.quote(folder)}/")
    wsl.set_data(cudnn_local_repo_url=as_windows(folder + "/" + real.rsplit("/", 1)[1]))
    first = wsl.deploy()
    assert first.changes and first.changes > 20, first.output[-3000:]


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
