"""A deploy that stops half-way converges on the next run without manual repair: a step that
fails, a killed run, a dpkg lock held by someone else, an interrupted dpkg."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from tests.lab.sandbox import provision, start_provision

from conftest import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("resume")]
#: Holds dpkg's frontend lock until its stdin closes, and prints "opened" each time another process opens
#: the lock file (inotify IN_OPEN): apt opens it for each try at the lock, once a second while
#: DPkg::Lock::Timeout lasts (seen here: 4 opens in a 4 s timeout), and cannot take it while it is held.
LOCK_HOLDER = """
import ctypes, fcntl, os, select, sys
path = '/var/lib/dpkg/lock-frontend'
lock = open(path, 'w')
fcntl.lockf(lock, fcntl.LOCK_EX)
libc = ctypes.CDLL(None, use_errno=True)
watch = libc.inotify_init1(0)
assert watch >= 0 and libc.inotify_add_watch(watch, path.encode(), 0x20) >= 0  # IN_OPEN
print('locked', flush=True)
while True:
    ready = select.select([watch, sys.stdin], [], [])[0]
    if sys.stdin in ready and not sys.stdin.read(1):
        break
    if watch in ready:
        os.read(watch, 4096)
        print('opened', flush=True)
"""
#: dpkg-query(1), --list: "An uppercase status or error letter indicates the package is likely to cause
#: severe problems": package status H (half-installed), U (unpacked), F (half-configured), W (triggers-awaiting);
#: error flag R (reinst-required). ${db:Status-Abbrev} is those three letters ("ii " when all is well).
HALF_DONE_STATUS, HALF_DONE_ERROR = set("HUFW"), {"R"}


@pytest.fixture(scope="module")
def box():
    lab = Lab("e2e-resume", 15008)
    yield lab
    lab.box.destroy()


def set_data(lab, **values):
    data = json.loads(lab.box.data_file.read_text())
    for key, value in values.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    lab.box.data_file.write_text(json.dumps(data, indent=2))


def test_a_failing_step_names_url_and_reason_then_the_next_run_converges(box):
    bad = f"{box.mirror_url}/no-such-voices"
    set_data(box, voices_base_url=bad)
    failed = provision(box.box, box.mirror_url, echo=False)
    assert failed.returncode != 0
    assert f"{bad}/en/en_US/joe/medium/en_US-joe-medium.onnx" in failed.output
    assert "curl: (22)" in failed.output and "404" in failed.output
    packages = box.sh("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n'").stdout.splitlines()
    assert "cuda-toolkit-12-4 ii" in [line.rstrip() for line in packages]  # earlier steps took effect
    set_data(box, voices_base_url=None)
    voices = json.loads(box.box.data_file.read_text())["voices"]
    set_data(box, voices=[{**voices[0], "onnx_sha256": "0" * 64}])
    mismatch = provision(box.box, box.mirror_url, echo=False)
    assert mismatch.returncode != 0
    assert (f"sha256 mismatch for {box.mirror_url}/voices/en/en_US/joe/medium/en_US-joe-medium.onnx: "
            f"expected {'0' * 64}, got {voices[0]['onnx_sha256']}") in mismatch.output
    assert not (box.root / "home/piper/piper_models/en/en_US-joe-medium/en_US-joe-medium.onnx").exists()
    set_data(box, voices=voices)
    assert box.deploy().changes > 0
    assert box.deploy().changes == 0


def apt_runs_dpkg(root) -> bool:
    """A dpkg process that apt started (``--status-fd``: unpacking or configuring packages, not a
    query such as ``dpkg --audit``) whose root is the sandbox's."""
    target = str(root.resolve())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") != target or open(f"/proc/{pid}/comm").read().strip() != "dpkg":
                continue
            if b"--status-fd" in open(f"/proc/{pid}/cmdline", "rb").read():
                return True
        except OSError:
            continue
    return False


def dpkg_changed_a_package(root) -> bool:
    """dpkg has recorded a package's change of state and not yet folded it into its status file: its
    journal, /var/lib/dpkg/updates/, holds an entry (dpkg's lib/dpkg/dbmodify.c writes one there for each
    change and empties it at its checkpoints and when it ends; apt's debSystem tells an interrupted dpkg
    by the same digit-named files)."""
    updates = root / "var/lib/dpkg/updates"
    try:
        return any(entry.name.isdigit() for entry in updates.iterdir())
    except OSError:
        return False


def test_a_killed_run_converges_on_the_next(box):
    """The run is killed while apt's dpkg installs the toolkit: once dpkg (started by apt, seen in the
    process table) has journalled its first change of a package's state, not guessed from a delay, nor
    as soon as dpkg starts (it may not have touched anything yet). dpkg's own audit, or the toolkit's
    half-done status, confirms it was interrupted; the next run converges."""
    box.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q cuda-toolkit-12-4 cuda-nvcc-12-4 >/dev/null")
    assert not dpkg_changed_a_package(box.root), "dpkg's journal is not empty before the run"
    proc = start_provision(box.box, box.mirror_url)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # never let its pipe fill
    reader.start()
    deadline = time.monotonic() + 600
    while not (apt_runs_dpkg(box.root) and dpkg_changed_a_package(box.root)) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.002)
    killed_in_dpkg = apt_runs_dpkg(box.root) and dpkg_changed_a_package(box.root)
    os.killpg(proc.pid, signal.SIGKILL)
    box.box.stop_processes()  # like a crash: apt, dpkg and the service die with it
    proc.wait(30)
    reader.join(30)
    assert proc.returncode == -signal.SIGKILL
    assert killed_in_dpkg, "apt's dpkg never changed a package, so nothing was interrupted:\n" + "".join(output[-40:])
    audit = box.sh("dpkg --audit", check=False).stdout
    status = box.sh("dpkg-query -W -f='${db:Status-Abbrev}' cuda-toolkit-12-4", check=False).stdout
    half_done = status[1:2] in HALF_DONE_STATUS or status[2:3] in HALF_DONE_ERROR
    assert audit.strip() or half_done, f"dpkg was not left interrupted (audit empty, cuda-toolkit-12-4 {status!r})"
    resumed = box.deploy()  # finishes an interrupted dpkg, installs what is missing, starts the service
    assert resumed.changes > 0
    assert box.sh("/usr/local/cuda-12.4/bin/nvcc --version").returncode == 0
    assert box.deploy().changes == 0


def apt_installs(root) -> bool:
    """An `apt-get ... install` (not a simulation) running with the sandbox's root."""
    target = str(root.resolve())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") != target or open(f"/proc/{pid}/comm").read().strip() != "apt-get":
                continue
            argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "install" in argv and not {"-s", "--simulate", "--dry-run", "--just-print", "--no-act", "--recon"} & set(argv):
            return True
    return False


def test_a_held_dpkg_lock_is_waited_for(box):
    """The lock is held until the deploy's apt-get install is running and has opened the lock file to
    try for it (the holder sees the open), then released; the run succeeds, so apt waited for the lock
    instead of failing."""
    box.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q iproute2 >/dev/null")
    holder = subprocess.Popen(["chroot", str(box.root), "python3", "-c", LOCK_HOLDER],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    runs, opens = [], []
    deploying = threading.Thread(target=lambda: runs.append(box.deploy(check=False)), daemon=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        threading.Thread(target=lambda: opens.extend(holder.stdout), daemon=True).start()
        deploying.start()
        deadline = time.monotonic() + 600
        while not apt_installs(box.root) and deploying.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        seen = len(opens)  # opens from now on are tries of the running apt-get install (once a second)
        while len(opens) == seen and apt_installs(box.root) and time.monotonic() < deadline:
            time.sleep(0.02)
        met_the_lock = len(opens) > seen and holder.poll() is None
    finally:
        holder.stdin.close()  # release the lock, whatever happened
    holder.wait(30)
    deploying.join(900)
    assert runs, "the deploy did not finish"
    result = runs[0]
    assert met_the_lock, "apt-get install never tried for the lock while it was held:\n" + result.output[-3000:]
    assert result.returncode == 0, result.output[-6000:]  # it waited for the lock instead of failing
    assert result.changes > 0 and box.sh("command -v ss").returncode == 0
    assert box.deploy().changes == 0


def test_an_interrupted_dpkg_is_finished_first(box):
    deb = box.sh("ls /var/cache/apt/archives/ | grep '^libcurand-12-4_' | head -1").stdout.strip()
    box.sh(f"dpkg --unpack /var/cache/apt/archives/{deb} >/dev/null 2>&1")
    assert "libcurand-12-4" in box.sh("dpkg --audit").stdout
    result = box.deploy()
    assert "Finish an interrupted dpkg run (dpkg --configure -a): libcurand-12-4" in result.output
    assert box.sh("dpkg --audit").stdout.strip() == ""
    assert box.deploy().changes == 0
