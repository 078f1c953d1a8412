"""Steps 2-3: base packages, NVIDIA's CUDA apt repository (keyring + mirror URL), the CUDA
toolkit (or runtime libraries only), and CUDA on PATH / in the dynamic linker."""

from __future__ import annotations

import shlex
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files, server

from piper_gpu.facts import DpkgInterrupted, UserHome
from piper_gpu.operations import apt_sources_offer, deb_file_installed, fetch
from piper_gpu.render import template_path
from piper_gpu.target import (ADDED_PACKAGES, ADDED_USER, APT_CONF_FILE, CACHE, KEYRING, LINKER_CONF,  # noqa: F401
                              PROFILE_SNIPPET, STATE, TOOLS, Target)

BASE_PACKAGES = ["ca-certificates", "curl", "python3", "python3-venv", "procps", "iproute2"]


def _missing(packages: list[str]) -> list[str]:
    installed = host.get_fact(DebPackages)
    return [p for p in packages if p.split("=")[0] not in installed]


APT_CONF = """// Managed by piper-gpu-deploy: wait for another apt/dpkg instead of failing, retry downloads.
DPkg::Lock::Timeout "300";
Acquire::Retries "5";
"""


@deploy("Base system: packages, service user")
def base_system(target: Target):
    s = target.settings
    files.put(
        name="apt waits for a held dpkg lock (5 min) and retries downloads",
        src=StringIO(APT_CONF),
        dest=APT_CONF_FILE,
        mode="644",
    )
    interrupted = host.get_fact(DpkgInterrupted)
    server.shell(
        name="Finish an interrupted dpkg run (dpkg --configure -a)" + (f": {', '.join(interrupted)}" if interrupted else ""),
        commands=["DEBIAN_FRONTEND=noninteractive dpkg --configure -a",
                  "DEBIAN_FRONTEND=noninteractive apt-get install -f -y"],
        _if=lambda: bool(interrupted),
    )
    files.directory(name=f"Create {STATE} (what this deploy added)", path=STATE, mode="755")
    missing = _missing(BASE_PACKAGES)
    apt.update(name="Refresh apt lists for missing base packages", _if=lambda: bool(missing))
    apt.packages(name="Install base packages", packages=BASE_PACKAGES, no_recommends=True)
    server.shell(
        name=f"Record the base packages this deploy added ({ADDED_PACKAGES})",
        commands=[f"printf '%s\\n' {' '.join(missing)} >> {ADDED_PACKAGES} && sort -u -o {ADDED_PACKAGES} {ADDED_PACKAGES}"],
        _if=lambda: bool(missing),
    )
    if s.create_service_user:
        user_missing = host.get_fact(UserHome, user=s.service_user) is None
        server.user(
            name=f"Service user {s.service_user}",
            user=s.service_user,
            home=target.home,
            shell="/bin/bash",
            create_home=True,
            system=True,
        )
        server.shell(
            name=f"Record that this deploy created the user {s.service_user} ({ADDED_USER})",
            commands=[f"echo {shlex.quote(s.service_user)} > {ADDED_USER}"],
            _if=lambda: user_missing,
        )
    files.directory(name=f"Create {CACHE}", path=CACHE, mode="755")
    files.directory(name=f"Create {TOOLS}", path=TOOLS, mode="755")
    files.put(
        name="Install the OpenPGP fingerprint checker",
        src=str(Path(__file__).resolve().parent.parent / "openpgp.py"),
        dest=f"{TOOLS}/openpgp.py",
        mode="755",
    )


def repo_base(target: Target) -> str:
    s = target.settings
    return f"{s.cuda_repo_url.rstrip('/')}/{target.repo_path}/{target.arch}"


@deploy("NVIDIA CUDA apt repository (cuda-keyring, mirror URL)")
def cuda_repository(target: Target):
    s = target.settings
    deb = f"{CACHE}/cuda-keyring_{s.cuda_keyring_version}_all.deb"
    fetch(
        name=f"Download cuda-keyring {s.cuda_keyring_version}",
        src=f"{repo_base(target)}/cuda-keyring_{s.cuda_keyring_version}_all.deb",
        dest=deb,
        sha256=s.cuda_keyring_sha256,
    )
    check = (
        f"dpkg-deb --fsys-tarfile {deb} | tar -xO .{KEYRING} > {CACHE}/cuda-keyring.check.gpg && "
        f"python3 {TOOLS}/openpgp.py {CACHE}/cuda-keyring.check.gpg --expect {shlex.quote(s.cuda_repo_key_fingerprint)}"
    )
    keyring = deb_file_installed(
        name=f"Install cuda-keyring {s.cuda_keyring_version} (key {s.cuda_repo_key_fingerprint[-8:]} checked)",
        package="cuda-keyring",
        version=s.cuda_keyring_version,
        deb_path=deb,
        keyring_check=check,
    )
    # The keyring ships this same file pointing at NVIDIA's server; we own its content so the
    # host has exactly one CUDA source: the configured URL or mirror.
    source = files.put(
        name=f"Point the CUDA apt source at {s.cuda_repo_url}",
        src=StringIO(f"deb [signed-by={KEYRING}] {repo_base(target)}/ /\n"),
        dest=f"/etc/apt/sources.list.d/cuda-{target.repo_path}-{target.arch}.list",
        mode="644",
    )
    return [keyring, source]


def apt_pins(target: Target) -> dict[str, str | None]:
    """What the deploy installs from apt sources: package -> exact version (None: any)."""
    s = target.settings
    pins: dict[str, str | None] = {p: None for p in s.cuda_packages}
    if s.cudnn_source in ("repo", "local-repo") and not (s.cudnn_source == "local-repo" and s.cudnn_deb_extract):
        pins[s.cudnn_package] = s.cudnn_apt_version
    return pins


@deploy("Check the apt sources offer every pinned package")
def apt_sources_checked(target: Target, source_ops: list):
    """apt-get update when a source changed or a pinned package is missing, then ask apt whether the
    configured sources offer each pinned package at its pinned version: if not, stop here, before
    anything is installed from them, naming what each source offers and the setting that fixes it."""
    s = target.settings
    pins = apt_pins(target)
    missing = _missing(list(pins))
    apt.update(
        name="Refresh apt lists (an apt source changed or a pinned package is missing)",
        _if=lambda: bool(missing) or any(op.did_change() for op in source_ops),
    )
    alternatives = {
        s.cudnn_package: "cudnn_source='archive' (NVIDIA's redistributable tarball, sha256 from its manifest), "
                         "'local-repo' (your cudnn-local-repo-*.deb installer) or 'wheel' (nvidia-cudnn-cu12 from PyPI)",
    }
    for p in s.cuda_packages:
        alternatives[p] = ("cuda_source='pip' (NVIDIA's CUDA wheels in the venv), or cuda_repo_url/cuda_repo_path "
                           f"for a repository that has {p}")
    apt_sources_offer(
        name="Apt sources offer " + ", ".join(f"{p}={v}" if v else p for p, v in pins.items()),
        packages=pins,
        fixes=alternatives,
    )


@deploy("CUDA toolkit")
def cuda_toolkit(target: Target):
    s = target.settings
    what = "toolkit (nvcc included)" if s.cuda_install == "toolkit" else "runtime libraries only"
    return apt.packages(
        name=f"Install CUDA {s.cuda_version} {what}: {', '.join(s.cuda_packages)}",
        packages=s.cuda_packages,
        no_recommends=True,
    )


@deploy("CUDA on PATH and in the dynamic linker")
def cuda_environment(target: Target, lib_dirs: list[str], libraries_changed):
    s = target.settings
    conf = files.template(
        name="Dynamic linker: CUDA and cuDNN library directories",
        src=template_path("ld.so.conf.j2"),
        dest=LINKER_CONF,
        mode="644",
        lib_dirs=lib_dirs,
    )
    server.shell(
        name="Rebuild the linker cache (ldconfig)",
        commands=["ldconfig"],
        _if=lambda: conf.did_change() or libraries_changed(),
    )
    files.template(
        name="Shell profile: CUDA_HOME, PATH and LD_LIBRARY_PATH",
        src=template_path("cuda-profile.sh.j2"),
        dest=PROFILE_SNIPPET,
        mode="644",
        cuda_home=s.cuda_home if s.cuda_source == "apt" else None,  # wheels bring no toolkit
        lib_dirs=lib_dirs,
    )
    files.block(
        name=f"~{s.service_user}/.bashrc sources the CUDA profile (one marked block)",
        path=f"{target.home}/.bashrc",
        content=f"[ -r {PROFILE_SNIPPET} ] && . {PROFILE_SNIPPET}",
        marker="# {mark} piper-gpu-deploy CUDA environment",
        try_prevent_shell_expansion=True,
    )

