"""Sandbox hosts for the demo and the tests (molecule's lifecycle: create, converge, verify,
destroy): a Debian 12 root from a cached debootstrap, with /proc and /sys mounted, reached with
pyinfra's ``@chroot`` connector and testinfra's chroot backend; the local mirror served over
HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab import mirror as mirror_mod
from tests.lab import personas
from tests.lab.mirror import CACHE, cache_lock, log, run
from piper_gpu.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SANDBOXES = Path(os.environ.get("PIPER_LAB_SANDBOXES", "/var/lib/piper-gpu-deploy/sandboxes"))
MIRROR_PORT = int(os.environ.get("PIPER_MIRROR_PORT", "18080"))
MOUNTS = (("proc", "proc"), ("sysfs", "sys"))
#: apt's downloaded packages, shared by the lab's hosts of one persona (bind-mounted over each one's
#: /var/cache/apt/archives, never the offline-bundle host's): a package another host fetched is not fetched
#: and written again. apt checks each cached .deb against the index's size and checksum before using it.
#: One cache per persona and test worker (``apt_archives``): apt takes /var/cache/apt/archives/lock without
#: waiting, so two hosts sharing one cache could not install at the same time.
APT_ARCHIVES = SANDBOXES / "apt-archives"


def apt_archives(persona: str) -> Path:
    """The shared apt cache for ``persona``'s hosts in this process: one per pytest-xdist worker
    (PYTEST_XDIST_WORKER, "gw0", "gw1", ...), since the workers' hosts install side by side."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return APT_ARCHIVES / (f"{persona}-{worker}" if worker else persona)


#: dpkg on the lab's hosts does not sync each unpacked file to disk before renaming it into place (dpkg(1)
#: --force-unsafe-io): a crash of this machine, which no test provokes, is the only case it changes
UNSAFE_IO = ("etc/dpkg/dpkg.cfg.d/piper-lab-unsafe-io", "# piper-gpu-deploy lab: no fsync per unpacked file\n"
             "force-unsafe-io\n")


def lab_dpkg_config(root: Path) -> None:
    path, text = UNSAFE_IO
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


#: where the sandbox's own sshd (``Sandbox.start_sshd``) logs, in the sandbox: a chroot has no syslog
SSHD_LOG = "/var/log/piper-lab-sshd.log"


def lab_hosts_file(root: Path, hostname: str) -> None:
    """/etc/hosts as an installed system has it: localhost, and the host's own name on 127.0.1.1 (Debian's
    installer writes it, Debian Reference 5.1.2 "The hostname resolution"; WSL generates one alike). debootstrap
    writes none. Without it, sudo's lookup of the host's own name, made on every call, goes to this machine's DNS
    server, where a lost answer costs resolv.conf's 5 s timeout at random commands: a verify run over one SSH
    connection took 39.5 s with these stalls and 9.7 s with this file."""
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n\n"
                                    "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\n"
                                    "ff02::2\tip6-allrouters\n")


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/mounts") as fh:
        return any(line.split()[1] == target for line in fh)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as fh:
        return sorted((line.split()[1] for line in fh if line.split()[1].startswith(prefix)), reverse=True)


@dataclass
class Sandbox:
    name: str
    #: what the host is (tests/lab/personas.py): "debian12", "wsl2-ubuntu2204" or "wsl2-ubuntu2404"
    persona: str = "debian12"
    #: apt's archives from the persona's shared cache (APT_ARCHIVES)
    apt_cache: bool = False

    @property
    def dir(self) -> Path:
        return SANDBOXES / self.name

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def data_file(self) -> Path:
        return self.dir / "inventory-data.json"

    def exists(self) -> bool:
        return (self.root / "etc" / "os-release").exists()

    @property
    def is_wsl(self) -> bool:
        return self.persona.startswith("wsl2-")

    def create(self) -> None:
        """Create the root from the cached tarball if missing; mount /proc and /sys (and, for a WSL2
        persona, the WSL2 kernel string over the sandbox's own /proc files)."""
        if self.persona not in personas.PERSONAS:
            raise ValueError(f"persona {self.persona!r}: known are {', '.join(personas.PERSONAS)}")
        if not self.exists():
            log(f"creating sandbox {self.name} ({self.persona}) at {self.root}")
            self.root.mkdir(parents=True, exist_ok=True)
            run(["tar", "-C", str(self.root), "-xf", str(personas.base_tarball(personas.PERSONAS[self.persona]))])
            # Package scripts must not start daemons inside a chroot (the Debian convention).
            policy = self.root / "usr/sbin/policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
            lab_hosts_file(self.root, socket.gethostname())  # a chroot has this machine's name
            lab_dpkg_config(self.root)
            if self.is_wsl:
                personas.present_as_wsl2(self.root, self.chroot, personas.PERSONAS[self.persona])
        for fstype, sub in MOUNTS:
            point = self.root / sub
            if not _mounted(point):
                run(["mount", "-t", fstype, fstype, str(point)])
        if self.apt_cache:
            self.mount_apt_cache()
        if self.is_wsl:  # inside the sandbox's own proc mount only
            for point, path in personas.wsl2_kernel_files(self.dir / "wsl2-kernel").items():
                if not _mounted(self.root / point):
                    run(["mount", "--bind", str(path), str(self.root / point)])

    def mount_apt_cache(self) -> None:
        cache, point = apt_archives(self.persona), self.root / "var/cache/apt/archives"
        if _mounted(point):
            return
        (cache / "partial").mkdir(parents=True, exist_ok=True)
        point.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", str(cache), str(point)])

    def chroot(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        cp = subprocess.run(["chroot", str(self.root), "sh", "-c", command], text=True, capture_output=True)
        if check and cp.returncode != 0:
            raise RuntimeError(f"in sandbox {self.name}: `{command}` failed ({cp.returncode}): {cp.stderr or cp.stdout}")
        return cp

    @property
    def key(self) -> Path:
        """The lab's SSH key for this sandbox (private; ``.pub`` beside it)."""
        return self.dir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    def add_ssh_user(self, port: int, user: str = "deploy") -> dict:
        """``user`` logs in with the lab's key and has passwordless sudo (the way operators run pyinfra
        against remote hosts). Returns the connection details: user, port, key, and an ssh_config
        for testinfra."""
        if not self.key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"piper-gpu-lab-{self.name}", "-f", str(self.key)])
        home = f"/home/{user}"
        self.chroot(f"id -u {user} >/dev/null 2>&1 || useradd -m -s /bin/bash {user}; "
                    f"echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{user} && chmod 440 /etc/sudoers.d/{user}; "
                    f"mkdir -p {home}/.ssh && chmod 700 {home}/.ssh")
        (self.root / home.lstrip("/") / ".ssh/authorized_keys").write_text((self.key.with_suffix(".pub")).read_text())
        self.chroot(f"chown -R {user}:{user} {home}/.ssh && chmod 600 {home}/.ssh/authorized_keys")
        self.ssh_config.write_text(
            f"Host 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        )
        return {"user": user, "port": port, "key": str(self.key), "ssh_config": str(self.ssh_config)}

    def ssh_logins(self) -> int:
        """How many logins the sandbox's sshd (``start_sshd``) has accepted so far."""
        log_file = self.root / SSHD_LOG.lstrip("/")
        return log_file.read_text().count("Accepted publickey for ") if log_file.exists() else 0

    def start_sshd(self, port: int, user: str = "deploy") -> dict:
        """A real sshd inside the (chroot) sandbox on 127.0.0.1:port, for ``user`` (``add_ssh_user``)."""
        if not (self.root / "usr/sbin/sshd").exists():
            log(f"installing openssh-server and sudo in sandbox {self.name}")
            self.chroot("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                        "--no-install-recommends openssh-server sudo >/dev/null")
        login = self.add_ssh_user(port, user)
        self.chroot("mkdir -p /run/sshd")
        if not _port_open(port):
            self.chroot(f"/usr/sbin/sshd -p {port} -o ListenAddress=127.0.0.1 -o PasswordAuthentication=no "
                        f"-o KbdInteractiveAuthentication=no -E {SSHD_LOG}")
            if not _wait_for_port(port):
                raise RuntimeError(f"sshd in sandbox {self.name} did not listen on 127.0.0.1:{port} "
                                   f"within {PORT_DEADLINE_S:g} s")
        return login

    def stop_processes(self) -> None:
        """Stop every process whose root is this sandbox (the piper-tts server, mostly)."""
        if self.exists() and (self.root / "usr/local/bin/piper-tts-ctl").exists():
            self.chroot("/usr/local/bin/piper-tts-ctl stop", check=False)
        target = str(self.root.resolve())
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/root") == target:
                    os.kill(int(pid), signal.SIGKILL)
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue

    def unmount(self) -> None:
        for point in _mounts_under(self.root):
            run(["umount", "-l", point])

    def destroy(self) -> None:
        if not self.dir.exists():
            return
        self.stop_processes()
        self.unmount()
        left = _mounts_under(self.root)
        if left:
            raise RuntimeError(f"refusing to delete {self.root}: still mounted: {left}")
        log(f"destroying sandbox {self.name}")
        shutil.rmtree(self.dir)


# ------------------------------------------------------------------------------------------
# The mirror's HTTP server
# ------------------------------------------------------------------------------------------

def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


#: how long a server the lab starts (the mirror's, a sandbox's sshd) may take to listen: generous, since the wait
#: ends as soon as it listens or its process is gone, and a loaded machine can take seconds to start Python
PORT_DEADLINE_S = 120.0


def _wait_for_port(port: int, seconds: float = PORT_DEADLINE_S, alive=None) -> bool:
    """Wait until 127.0.0.1:``port`` accepts connections (True), or ``seconds`` pass or ``alive()`` says the
    process that should listen has exited (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_open(port):
            return True
        if alive is not None and not alive():
            return _port_open(port)
        time.sleep(0.1)
    return False


def serve_mirror(root: Path, port: int = MIRROR_PORT) -> str:
    """Serve ``root`` on 127.0.0.1:port (background, survives this process); return the URL."""
    with cache_lock(f"mirror-http-{port}"):  # one server per port, whichever worker asks first
        return _serve_mirror(root, port)


def _serve_mirror(root: Path, port: int) -> str:
    url = f"http://127.0.0.1:{port}"
    pidfile = CACHE / f"mirror-http-{port}.pid"
    if _port_open(port):
        if pidfile.exists():
            return url
        raise RuntimeError(f"port {port} is taken by something else; set PIPER_MIRROR_PORT")
    log_file = open(CACHE / f"mirror-http-{port}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    pidfile.write_text(str(proc.pid))
    if _wait_for_port(port, alive=lambda: proc.poll() is None):
        return url
    state = f"exited {proc.returncode}" if proc.poll() is not None else f"not listening after {PORT_DEADLINE_S:g} s"
    raise RuntimeError(f"mirror HTTP server on port {port} did not start ({state}); see {log_file.name}")


def stop_mirror(port: int = MIRROR_PORT) -> None:
    pidfile = CACHE / f"mirror-http-{port}.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
        pidfile.unlink()


# ------------------------------------------------------------------------------------------
# Converge
# ------------------------------------------------------------------------------------------

@dataclass
class Provisioned:
    returncode: int
    changes: int | None
    output: str
    seconds: float


GRAND_TOTAL = re.compile(r"Grand total\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)")


def count_changes(output: str) -> int | None:
    """Operations that changed something, from pyinfra's results table ("Success" column)."""
    m = GRAND_TOTAL.search(output)
    if not m:
        return None
    success = m.group(2)
    return 0 if success == "-" else int(success)


def build_mirror() -> mirror_mod.Mirror:
    """The lab's mirror, with the venv's wheels for each Python the lab's hosts have (built by one worker
    while the others wait)."""
    with cache_lock("mirror"):
        return mirror_mod.build({py: Settings().replace(python_version=py).python_requirements()
                                 for py in mirror_mod.LAB_PYTHONS})


#: Where the users keep the cuDNN installer they downloaded in Windows, as WSL2 sees it.
WSL_DOWNLOADS = f"/mnt/c/Users/{personas.WSL_USER}/Downloads"


def persona_settings(box: Sandbox, m: mirror_mod.Mirror) -> dict:
    """The settings the users' own inventory has on this host. On a WSL2 persona the service runs as
    the login user. On the users' 22.04 host cuDNN comes from their local-repo installer, copied where
    Windows keeps downloads (/mnt/c/...), with the checksum they pin; a new 24.04 machine takes the
    platform table's defaults."""
    if not box.is_wsl:
        return {}
    wsl = {"service_user": personas.WSL_USER, "create_service_user": False,
           "cuda_keyring_sha256": m.keyring_sha256_for("wsl-ubuntu")}
    if box.persona != "wsl2-ubuntu2204":
        return wsl
    src = m.root / m.local_repo["path"]
    dest = box.root / WSL_DOWNLOADS.lstrip("/") / src.name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    return {**wsl, "cudnn_source": "local-repo", "cudnn_local_repo_url": f"{WSL_DOWNLOADS}/{src.name}",
            "cudnn_local_repo_sha256": m.local_repo["sha256"]}


def up(name: str, extra: dict | None = None, persona: str = "debian12", booted: bool = False,
       ssh_port: int = 2230, apt_cache: bool = False, mirror_port: int = MIRROR_PORT) -> tuple[Sandbox, str]:
    """Mirror built and served (on ``mirror_port``), sandbox created and mounted (``booted``: booted with
    systemd, tests/lab/booted.py, its sshd on 127.0.0.1:``ssh_port``; ``apt_cache``: apt's archives shared,
    APT_ARCHIVES), inventory data written."""
    m = build_mirror()
    url = serve_mirror(m.root, mirror_port)
    if booted:
        from tests.lab.booted import BootedSandbox

        box = BootedSandbox(name, persona, ssh_port=ssh_port)
    else:
        box = Sandbox(name, persona, apt_cache=apt_cache)
    box.create()
    data = {**m.sandbox_data(), **persona_settings(box, m), **(extra or {})}
    box.data_file.write_text(json.dumps(data, indent=2) + "\n")
    return box, url


def start_provision(box: Sandbox, mirror_url: str, extra_args: list[str] | None = None,
                    inventory: str = "inventory/sandbox.py", env_extra: dict | None = None,
                    deploy_file: str = "deploy.py", yes: bool = True) -> subprocess.Popen:
    """Start ``pyinfra -y INVENTORY deploy.py`` (or undeploy.py) against the sandbox (own process group).
    ``yes=False``: no -y, so that pyinfra shows its change detection (with --dry)."""
    env = {
        **os.environ,
        "PIPER_SANDBOX_ROOT": str(box.root),
        "PIPER_MIRROR_URL": mirror_url,
        "PIPER_SANDBOX_DATA": str(box.data_file),
        **(env_extra or {}),
    }
    pyinfra = Path(sys.executable).with_name("pyinfra")
    cmd = [str(pyinfra), *(["-y"] if yes else []), inventory, deploy_file, *(extra_args or [])]
    return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def provision(box: Sandbox, mirror_url: str, extra_args: list[str] | None = None, echo: bool = True,
              inventory: str = "inventory/sandbox.py", env_extra: dict | None = None,
              deploy_file: str = "deploy.py", yes: bool = True) -> Provisioned:
    started = time.monotonic()
    proc = start_provision(box, mirror_url, extra_args, inventory, env_extra, deploy_file, yes)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()
    proc.wait()
    output = "".join(lines)
    return Provisioned(proc.returncode, count_changes(output), output, time.monotonic() - started)
