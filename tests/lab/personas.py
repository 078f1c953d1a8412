"""What a sandbox host is (its persona), and the base roots they start from.

  debian12          Debian 12 (bookworm), Python 3.11
  wsl2-ubuntu2204   the users' host: a real Ubuntu 22.04 (jammy) userland with Python 3.10 from Ubuntu's
                    archive, presented as WSL2 (below)
  wsl2-ubuntu2404   a new WSL2 machine: a real Ubuntu 24.04 (noble) userland with Python 3.12, presented
                    as WSL2 the same way, its apt sources in deb822 form as Ubuntu 24.04 writes them

Presented as WSL2: the WSL2 kernel string in /proc/sys/kernel/osrelease and
                    /proc/version (bind mounts inside the sandbox's own proc mount, never the machine's),
                    /usr/lib/wsl/lib with an nvidia-smi stand-in printing the real output format and a stub
                    libcuda.so.1 (cuInit: CUDA error 100, no device: there is no GPU here), listed by
                    /etc/ld.so.conf.d/ld.wsl.conf as WSL2 writes it; a login user "dev" as WSL creates one.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tests.lab.mirror import CACHE, cache_lock, log, run

REPO = Path(__file__).resolve().parents[2]
DEBIAN_MIRROR = os.environ.get("PIPER_LAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
UBUNTU_MIRROR = os.environ.get("PIPER_LAB_UBUNTU_MIRROR", "http://archive.ubuntu.com/ubuntu")
#: Ubuntu's archive signing key (2018): the trust anchor of the jammy root. The ubuntu-keyring package
#: is fetched from the archive and must contain this fingerprint (as cuda-keyring must contain
#: NVIDIA's); debootstrap then checks the archive's signature with it.
UBUNTU_ARCHIVE_KEY = "F6ECB3762474EDA9D21B7022871920D1991BC93C"
UBUNTU_KEYRING_DEB = "pool/main/u/ubuntu-keyring/ubuntu-keyring_2021.03.26_all.deb"
#: persona -> debootstrap suite
PERSONAS = {"debian12": "bookworm", "wsl2-ubuntu2204": "jammy", "wsl2-ubuntu2404": "noble"}
#: persona -> the service port of its demo host (scripts/demo). The sandboxes share this machine's network,
#: so demo hosts that run at once each need their own port: on one port, the second host's deploy would
#: find the first one's server there (another root's process) and refuse. The deploy's own default stays
#: 5005; the booted systemd demo uses tests/lab/__main__.py's BOOTED_DEMO_PORT.
DEMO_PORTS = {"debian12": 5005, "wsl2-ubuntu2204": 5006, "wsl2-ubuntu2404": 5007}
UBUNTU_SUITES = ("jammy", "noble")
WSL_KERNEL = "5.15.153.1-microsoft-standard-WSL2"
WSL_PROC_VERSION = (f"Linux version {WSL_KERNEL} (root@941d701f84f1) (gcc (GCC) 11.2.0, GNU ld (GNU Binutils) 2.37) "
                    "#1 SMP Fri Mar 29 23:14:13 UTC 2024\n")
WSL_USER = "dev"


def _ubuntu_keyring() -> Path:
    with cache_lock("ubuntu-keyring"):
        return _fetch_ubuntu_keyring()


def _fetch_ubuntu_keyring() -> Path:
    keyring = CACHE / "sandbox" / "ubuntu-archive-keyring.gpg"
    if keyring.exists():
        return keyring
    work = CACHE / "sandbox" / "ubuntu-keyring"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    deb = work / "ubuntu-keyring.deb"
    run(["curl", "-sSLf", "--retry", "4", "-o", str(deb), f"{UBUNTU_MIRROR}/{UBUNTU_KEYRING_DEB}"])
    run(["dpkg-deb", "-x", str(deb), str(work / "x")])
    found = work / "x/usr/share/keyrings/ubuntu-archive-keyring.gpg"
    run([sys.executable, str(REPO / "piper_gpu/openpgp.py"), str(found), "--expect", UBUNTU_ARCHIVE_KEY])
    shutil.copy2(found, keyring)
    shutil.rmtree(work)
    return keyring


def base_tarball(suite: str = "bookworm") -> Path:
    """A debootstrap'ed minbase root (Debian 12, Ubuntu 22.04 or 24.04), cached as a tarball (once)."""
    with cache_lock(f"debootstrap-{suite}"):
        return _debootstrap(suite)


def _debootstrap(suite: str) -> Path:
    tarball = CACHE / "sandbox" / f"{suite}-minbase.tar"
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.parent / f"debootstrap-{suite}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if suite in UBUNTU_SUITES:
        args = ["--keyring", str(_ubuntu_keyring()), suite, str(tmp), UBUNTU_MIRROR]
        if not Path(f"/usr/share/debootstrap/scripts/{suite}").exists():
            # Debian 12's debootstrap predates noble; its script is gutsy's, as for every Ubuntu since 7.10
            args.append("/usr/share/debootstrap/scripts/gutsy")
    else:
        args = [suite, str(tmp), DEBIAN_MIRROR]
    log(f"debootstrap --variant=minbase {suite}, once")
    run(["debootstrap", "--variant=minbase", *args])
    run(["tar", "-C", str(tmp), "-cf", str(tarball) + ".part", "."])
    os.rename(str(tarball) + ".part", tarball)
    shutil.rmtree(tmp)
    return tarball


# The format of nvidia-smi on WSL2 (the Windows driver's), for a GPU this machine does not have.
NVIDIA_SMI = r"""#!/bin/sh
# Stand-in for the Windows driver's /usr/lib/wsl/lib/nvidia-smi (piper-gpu-deploy test lab): the real
# output format, for a GPU this sandbox does not really have (its libcuda.so.1 reports no device).
case "$*" in
  *--query-gpu=name,driver_version*) echo "NVIDIA GeForce RTX 4070, 560.94"; exit 0 ;;
  *--query-compute-apps*) exit 0 ;;
  *--query*) echo "[N/A]"; exit 0 ;;
esac
cat <<'TABLE'
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 560.35.02              Driver Version: 560.94         CUDA Version: 12.6     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA GeForce RTX 4070        On  |   00000000:01:00.0  On |                  N/A |
|  0%   38C    P8              9W /  200W |    1024MiB /  12282MiB |      2%      Default |
|                                         |                        |                  N/A |
+-----------------------------------------+------------------------+----------------------+

+-----------------------------------------------------------------------------------------+
| Processes:                                                                              |
|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |
|        ID   ID                                                               Usage      |
|=========================================================================================|
|  No running processes found                                                             |
+-----------------------------------------------------------------------------------------+
TABLE
"""

# A driver library with the CUDA driver API's first entry points that reports no device (CUDA
# error 100), as libcuda.so.1 does on a machine without a usable GPU.
STUB_LIBCUDA = r"""
int cuInit(unsigned int flags) { (void)flags; return 100; }
int cuDriverGetVersion(int *v) { if (v) *v = 12060; return 0; }
int cuDeviceGetCount(int *n) { if (n) *n = 0; return 100; }
int cuGetErrorName(int e, const char **s) { static const char m[] = "CUDA_ERROR_NO_DEVICE"; (void)e; if (s) *s = m; return 0; }
int cuGetErrorString(int e, const char **s) { static const char m[] = "no CUDA-capable device is detected"; (void)e; if (s) *s = m; return 0; }
"""

LD_WSL_CONF = ("# This file was automatically generated by WSL. To stop automatic generation of this file, "
               "add the following entry to /etc/wsl.conf:\n# [automount]\n# ldconfig = false\n/usr/lib/wsl/lib\n")


def stub_libcuda(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.parent / "stub-libcuda.c"
    src.write_text(STUB_LIBCUDA)
    run(["gcc", "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", "-o", str(out), str(src)])
    src.unlink()


def present_as_wsl2(root: Path, chroot, suite: str = "jammy") -> None:
    """Once, in a new root: WSL2's GPU library directory, its linker config, the login user, and apt
    sources as Ubuntu's WSL image has them for ``suite``."""
    lib = root / "usr/lib/wsl/lib"
    lib.mkdir(parents=True)
    (lib / "nvidia-smi").write_text(NVIDIA_SMI)
    (lib / "nvidia-smi").chmod(0o755)
    stub_libcuda(lib / "libcuda.so.1")
    (root / "etc/ld.so.conf.d/ld.wsl.conf").write_text(LD_WSL_CONF)
    # Ubuntu's WSL image enables every component and the updates/security pockets (python3-venv is
    # in universe); debootstrap writes only "<suite> main".
    write_ubuntu_sources(root, suite)
    chroot(f"ldconfig && useradd -m -s /bin/bash {WSL_USER}")


def write_ubuntu_sources(root: Path, suite: str) -> None:
    """22.04 lists its sources one line each in /etc/apt/sources.list; 24.04 moved them to the deb822
    file /etc/apt/sources.list.d/ubuntu.sources and leaves sources.list a comment, as its images do."""
    pockets = (suite, f"{suite}-updates", f"{suite}-security")
    components = "main restricted universe multiverse"
    if suite == "jammy":
        (root / "etc/apt/sources.list").write_text(
            "".join(f"deb {UBUNTU_MIRROR} {pocket} {components}\n" for pocket in pockets))
        return
    keyring = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
    if not (root / keyring.lstrip("/")).is_file():
        raise RuntimeError(f"{root}: no {keyring} (ubuntu-keyring) in the {suite} root")
    (root / "etc/apt/sources.list.d/ubuntu.sources").write_text(
        f"Types: deb\nURIs: {UBUNTU_MIRROR}\nSuites: {' '.join(pockets)}\nComponents: {components}\n"
        f"Signed-By: {keyring}\n")
    (root / "etc/apt/sources.list").write_text(
        "# Ubuntu sources have moved to /etc/apt/sources.list.d/ubuntu.sources\n")


def wsl2_kernel_files(directory: Path) -> dict[str, Path]:
    """The files bound over the sandbox's /proc/sys/kernel/osrelease and /proc/version."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"proc/sys/kernel/osrelease": WSL_KERNEL + "\n", "proc/version": WSL_PROC_VERSION}
    out = {}
    for point, text in files.items():
        path = directory / point.replace("/", "_")
        path.write_text(text)
        out[point] = path
    return out


def fake_linux_driver_deb(out_dir: Path, version: str = "550.127.05-0ubuntu0.22.04.1") -> Path:
    """A package named like Ubuntu's Linux driver library package (libnvidia-compute-550) that ships
    a Linux libcuda.so.1 into /usr/lib/x86_64-linux-gnu: what users install by mistake inside WSL2.
    Its library answers like a Linux driver without a device (error 100)."""
    stage = out_dir / "libnvidia-compute-550"
    shutil.rmtree(stage, ignore_errors=True)
    lib = stage / "usr/lib/x86_64-linux-gnu"
    stub_libcuda(lib / "libcuda.so.550.127.05")
    (lib / "libcuda.so.1").symlink_to("libcuda.so.550.127.05")
    (stage / "DEBIAN").mkdir()
    (stage / "DEBIAN/control").write_text(
        f"Package: libnvidia-compute-550\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: piper-gpu-deploy test lab <lab@localhost>\nDescription: NVIDIA libcompute package (test lab stand-in)\n")
    deb = out_dir / f"libnvidia-compute-550_{version}_amd64.deb"
    run(["dpkg-deb", "--root-owner-group", "--build", str(stage), str(deb)])
    shutil.rmtree(stage)
    return deb
