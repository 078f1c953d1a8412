"""A sandbox host where systemd really runs: a Debian 12 root booted with ``systemd-nspawn -b``, reached
the way an operator reaches a machine (sshd on 127.0.0.1, a key, a user with passwordless sudo).

The container shares this machine's network (so the lab's mirror on 127.0.0.1 is reachable from it);
sshd is configured, before openssh-server is installed, to listen on 127.0.0.1 only. This machine's
PID 1 is not systemd, so nspawn runs with ``--register=no --keep-unit`` inside a cgroup of its own
(a directory under both /sys/fs/cgroup/systemd and /sys/fs/cgroup/unified), removed when it stops.
A reboot inside the container makes nspawn exit with 133; the launcher then boots it again, as
systemd-nspawn@.service does. Commands run inside it with ``nsenter`` into the container's init
(a chroot cannot reach its systemd)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab import personas
from tests.lab.mirror import log, run
from tests.lab.sandbox import Sandbox, _port_open, _wait_for_port, lab_dpkg_config, lab_hosts_file

PACKAGES = ["systemd", "systemd-sysv", "dbus", "openssh-server", "sudo"]
CGROUP_HIERARCHIES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")

#: Boots the root; boots it again when its init asked for a reboot (nspawn's exit status 133).
LAUNCHER = """#!/bin/bash
set -u
for h in {hierarchies}; do mkdir -p "$h/{cgroup}" && echo $$ > "$h/{cgroup}/cgroup.procs"; done
while true; do
  systemd-nspawn --quiet --boot --register=no --keep-unit --console=passive --machine={machine} --directory={root}
  rc=$?
  echo "[launcher] systemd-nspawn exited with $rc at $(date -Is)"
  [ "$rc" -eq 133 ] || exit "$rc"
done
"""


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            out.append((int(entry), comm))
    return out


@dataclass
class BootedSandbox(Sandbox):
    """``scripts/demo systemd``'s host and the systemd scenario's: persona debian12, booted."""

    ssh_port: int = 2230
    user: str = "deploy"

    @property
    def machine(self) -> str:
        return self.name.replace("_", "-")[:60]

    @property
    def cgroup(self) -> str:
        return f"piper-lab-{self.machine}"

    @property
    def launcher_pid_file(self) -> Path:
        return self.dir / "launcher.pid"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    # --- create ---------------------------------------------------------------------------------
    def create(self) -> None:
        """A Debian 12 root with systemd, sshd (127.0.0.1:ssh_port, keys only) and a sudo user; booted."""
        if self.persona != "debian12":
            raise ValueError("a booted sandbox is Debian 12 (persona debian12)")
        if not self.exists():
            log(f"creating booted sandbox {self.name} at {self.root}")
            self.root.mkdir(parents=True, exist_ok=True)
            run(["tar", "-C", str(self.root), "-xf", str(personas.base_tarball("bookworm"))])
            shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
            lab_dpkg_config(self.root)
            (self.root / "etc/hostname").write_text(self.machine + "\n")
            lab_hosts_file(self.root, self.machine)
            # sshd's address and port before openssh-server exists: it never listens on 0.0.0.0:22
            conf = self.root / "etc/ssh/sshd_config.d/piper-lab.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(f"Port {self.ssh_port}\nListenAddress 127.0.0.1\nPasswordAuthentication no\n"
                            "KbdInteractiveAuthentication no\n")
            policy = self.root / "usr/sbin/policy-rc.d"  # no daemon starts during the chroot install
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            try:  # not booted yet: a plain chroot (this class's chroot enters the running container)
                Sandbox.chroot(self, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                                     f"--no-install-recommends {' '.join(PACKAGES)} >/dev/null")
            finally:
                policy.unlink()
        self.boot()
        self.add_ssh_user(self.ssh_port, self.user)

    @property
    def ssh_env(self) -> dict:
        """What inventory/sandbox_ssh.py reads."""
        return {"PIPER_SSH_PORT": str(self.ssh_port), "PIPER_SSH_USER": self.user, "PIPER_SSH_KEY": str(self.key)}

    # --- run --------------------------------------------------------------------------------------
    def launcher_pid(self) -> int | None:
        try:
            pid = int(self.launcher_pid_file.read_text())
            _reap(pid)
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None

    def leader_pid(self) -> int | None:
        """The container's init (systemd) as seen from this machine, or None when it is not running."""
        launcher = self.launcher_pid()
        if launcher is None:
            return None
        for pid, comm in _children(launcher):
            if comm == "systemd-nspawn":
                for child, child_comm in _children(pid):
                    if child_comm == "systemd":
                        return child
        return None

    def running(self) -> bool:
        return self.leader_pid() is not None

    def boot(self, seconds: float = 90) -> int:
        """Boot the container unless it runs; wait for systemd to finish start-up and sshd. Returns
        the leader pid."""
        if self.launcher_pid() is None:
            if _port_open(self.ssh_port):
                raise RuntimeError(f"127.0.0.1:{self.ssh_port} is taken: the booted sandbox's sshd needs it")
            script = self.dir / "launcher.sh"
            script.write_text(LAUNCHER.format(hierarchies=" ".join(CGROUP_HIERARCHIES), cgroup=self.cgroup,
                                              machine=self.machine, root=shlex.quote(str(self.root))))
            script.chmod(0o755)
            console = open(self.console_log, "ab")
            proc = subprocess.Popen([str(script)], stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                    start_new_session=True)
            self.launcher_pid_file.write_text(str(proc.pid))
        return self.wait_booted(seconds)

    def wait_booted(self, seconds: float = 90, not_leader: int | None = None) -> int:
        """Wait for a leader (other than ``not_leader``), for `systemctl is-system-running` to settle, and
        for sshd. Returns the leader pid."""
        deadline = time.monotonic() + seconds
        state = "no container"
        while time.monotonic() < deadline:
            leader = self.leader_pid()
            if leader and leader != not_leader:
                state = self._nsenter(leader, "systemctl is-system-running").stdout.strip()
                if state in ("running", "degraded") and _port_open(self.ssh_port):
                    return leader
            elif self.launcher_pid() is None:
                break
            time.sleep(0.3)
        tail = self.console_log.read_text(errors="replace")[-3000:] if self.console_log.exists() else ""
        raise RuntimeError(f"booted sandbox {self.name}: not up after {seconds:.0f} s (state: {state}); console:\n{tail}")

    @staticmethod
    def _nsenter(leader: int, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", "sh", "-c", command],
                              text=True, capture_output=True)

    def chroot(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``command`` as root inside the running container (in its namespaces, so systemctl works)."""
        leader = self.leader_pid()
        if leader is None:
            raise RuntimeError(f"booted sandbox {self.name} is not running")
        cp = self._nsenter(leader, command)
        if check and cp.returncode != 0:
            raise RuntimeError(f"in sandbox {self.name}: `{command}` failed ({cp.returncode}): {cp.stderr or cp.stdout}")
        return cp

    def reboot(self, seconds: float = 120) -> int:
        """`systemctl reboot` inside; returns the new leader pid once it is up again."""
        old = self.leader_pid()
        self.chroot("systemctl reboot", check=False)
        return self.wait_booted(seconds, not_leader=old)

    def stop(self, seconds: float = 30) -> None:
        """Power the container off (kill it if it does not stop) and remove its cgroups."""
        launcher = self.launcher_pid()
        if launcher is not None:
            if self.leader_pid():
                self.chroot("systemctl poweroff", check=False)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and self.launcher_pid() is not None:
                time.sleep(0.2)
                _reap(launcher)
            if self.launcher_pid() is not None:
                os.killpg(launcher, signal.SIGKILL)
                time.sleep(0.5)
                _reap(launcher)
        self.launcher_pid_file.unlink(missing_ok=True)
        for hierarchy in CGROUP_HIERARCHIES:
            top = Path(hierarchy, self.cgroup)
            if not top.exists():
                continue
            groups = sorted([top, *(p for p in top.rglob("*") if p.is_dir())], key=lambda p: -len(p.parts))
            for group in groups:  # whatever is left of the container (its launcher was killed, say)
                for pid in (group / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for group in groups:  # bottom-up: systemd in the container made sub-cgroups
                for _ in range(50):
                    try:
                        group.rmdir()
                        break
                    except OSError:  # busy until the killed processes are gone
                        time.sleep(0.1)
                else:
                    raise RuntimeError(f"cannot remove cgroup {group}: {(group / 'cgroup.procs').read_text()!r}")

    def stop_processes(self) -> None:
        """Power the container off (``destroy`` calls this, then removes the directory)."""
        self.stop()


def _reap(pid: int) -> None:
    """Collect the launcher if this process started it (else it lingers as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
