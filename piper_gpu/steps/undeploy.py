"""Undeploy: remove what the deploy added, in reverse order. Voices (``undeploy_voices``) and the
CUDA/cuDNN packages, base packages and service user the deploy added (``undeploy_system``) only
when asked. Idempotent like the deploy: a second run changes nothing."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.facts.files import File, FileContents
from pyinfra.operations import files, server

from pyinfra.facts.deb import DebPackages

from piper_gpu.facts import HeldPackages, SystemdRunning
from piper_gpu.steps.cudnn import local_repo
from piper_gpu.target import (ADDED_PACKAGES, ADDED_USER, APT_CONF_FILE, AUTOSTART, CACHE, CTL, ETC, KEYRING, LINKER_CONF,
                              PERF, PROFILE_SNIPPET, STATE, TOOLS, UNIT, UNIT_DROP_INS, UNIT_FILE, UNIT_STATE,
                              WSL_DRIVER_PIN_FILE, Target)



def _recorded(path: str) -> list[str]:
    return [line.strip() for line in (host.get_fact(FileContents, path=path) or []) if line.strip()]


@deploy("Undeploy: stop and remove the piper-tts service")
def remove_service(target: Target):
    if host.get_fact(File, path=UNIT_FILE):
        if host.get_fact(SystemdRunning):
            server.shell(name=f"Stop and disable {UNIT}", commands=[f"systemctl disable --now {UNIT}"])
        files.file(name=f"Remove {UNIT_FILE}", path=UNIT_FILE, present=False)
        files.directory(name=f"Remove {UNIT_DROP_INS} (drop-ins for the unit)", path=UNIT_DROP_INS, present=False)
        files.directory(name=f"Remove {UNIT_STATE} (the unit's state: CUDA's cache)", path=UNIT_STATE, present=False)
        server.shell(name="systemctl daemon-reload", commands=["systemctl daemon-reload || true"])
    if host.get_fact(File, path=CTL):
        server.shell(name="Stop piper-tts (pid file)", commands=[f"{CTL} stop"])
    for path in (CTL, AUTOSTART):
        files.file(name=f"Remove {path}", path=path, present=False)


@deploy("Undeploy: the server, venv, logs, settings and tools")
def remove_files(target: Target):
    files.directory(name=f"Remove {target.piper_dir} (venv, server, logs, lock)", path=target.piper_dir, present=False)
    for path in (ETC, TOOLS, CACHE):
        files.directory(name=f"Remove {path}", path=path, present=False)
    files.file(name=f"Remove {PERF}", path=PERF, present=False)
    if target.settings.undeploy.undeploy_voices:
        files.directory(name=f"Remove the voices ({target.models_dir})", path=target.models_dir, present=False)


@deploy("Undeploy: CUDA environment, linker config, apt source and keyring")
def remove_environment(target: Target):
    conf = files.file(name=f"Remove {LINKER_CONF}", path=LINKER_CONF, present=False)
    if conf.will_change:
        server.shell(name="Rebuild the linker cache (ldconfig): the CUDA linker config goes", commands=["ldconfig"])
    files.file(name=f"Remove {PROFILE_SNIPPET}", path=PROFILE_SNIPPET, present=False)
    if host.get_fact(File, path=f"{target.home}/.bashrc"):
        files.block(
            name=f"~{target.settings.service.service_user}/.bashrc: remove the CUDA block",
            path=f"{target.home}/.bashrc",
            marker="# {mark} piper-gpu-deploy CUDA environment",
            present=False,
        )
    files.file(name="Remove the CUDA apt source", present=False,
               path=target.cuda_source_list)
    if "cuda-keyring" in host.get_fact(DebPackages):
        server.shell(name=f"Purge cuda-keyring ({KEYRING})", commands=["dpkg --purge cuda-keyring"])
    for path in (APT_CONF_FILE, WSL_DRIVER_PIN_FILE):
        files.file(name=f"Remove {path}", path=path, present=False)
    if target.settings.cuda.cudnn_source == "local-repo":
        name, repo_dir = local_repo(target)
        if name in host.get_fact(DebPackages):
            server.shell(name=f"Purge the cuDNN local-repo installer {name} and its keyring",
                         commands=[f"for k in {repo_dir}/cudnn-*-keyring.gpg; do rm -f /usr/share/keyrings/$(basename $k); done",
                                   StringCommand("dpkg", "--purge", QuoteString(name))])


@deploy("Undeploy: CUDA/cuDNN packages, and the base packages and user the deploy added")
def remove_system(target: Target):
    s = target.settings
    installed = host.get_fact(DebPackages)
    if s.cudnn_package in host.get_fact(HeldPackages):
        server.shell(name=f"Unhold {s.cudnn_package}", commands=[f"apt-mark unhold {s.cudnn_package}"])
    added = _recorded(ADDED_PACKAGES)
    purge = [p for p in [*s.cuda_packages, s.cudnn_package, *added] if p in installed]
    if purge:
        server.shell(
            name=f"Purge {', '.join(purge)} and what only they needed",
            # SUDO_FORCE_REMOVE: sudo is purged only when this deploy added it, so root is reached without it
            # (chroot, root login); Debian's sudo prerm otherwise refuses on a host without a root password
            commands=[StringCommand("DEBIAN_FRONTEND=noninteractive SUDO_FORCE_REMOVE=yes apt-get purge -y",
                                    *map(QuoteString, purge)),
                      "DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y"],
        )
    users = _recorded(ADDED_USER)
    remove_home = " -r" if s.undeploy.undeploy_voices else ""
    for user in users:
        server.shell(name=f"Remove the user {user} this deploy created" + (" and its home" if remove_home else ""),
                     commands=[StringCommand(f"userdel{remove_home}", QuoteString(user))])
    files.directory(name=f"Remove {STATE}", path=STATE, present=False)
