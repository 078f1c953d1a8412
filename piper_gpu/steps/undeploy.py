"""Undeploy: remove what the deploy recorded as its own, in reverse order, and put back what it moved
aside (the old server's script and autostart lines, files it replaced). A file, directory, package or
hold the host had before the deploy stays: the rule is in docs/operating.md ("Nothing of yours removed or
replaced silently"). Voices (``undeploy_voices``) and the CUDA/cuDNN packages, base packages and service
user the deploy added (``undeploy_system``) only when asked. Idempotent: a second run changes nothing."""

from __future__ import annotations

import json

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Directory, File, FileContents
from pyinfra.operations import files, server

from piper_gpu.facts import HeldPackages, SystemdRunning
from piper_gpu.migration import DISABLED
from piper_gpu.operations import put_back
from piper_gpu.steps.base import ours, recorded
from piper_gpu.steps.cudnn import local_repo
from piper_gpu.target import (ADDED_PACKAGES, ADDED_PATHS, ADDED_USER, APT_CONF_FILE, AUTOSTART, BACKUPS, CACHE, CTL,
                              ETC, HELD_PACKAGES, KEYRING, LINKER_CONF, MARKER, MOVED_ASIDE, OLD_SERVER_RECORD, PERF,
                              PROFILE_SNIPPET, STATE, TOOLS, UNIT, UNIT_DROP_INS, UNIT_FILE, UNIT_STATE,
                              VENV_BEFORE, WSL_DRIVER_PIN_FILE, Target)


def _under(path: str, dirs: list[str]) -> bool:
    """``path`` is one of ``dirs`` or inside one."""
    return any(path == d or path.startswith(d + "/") for d in dirs)


def remove_own_file(target: Target, path: str, what: str = "") -> None:
    """Remove ``path`` if it is the deploy's; say so when a file of someone else's is there instead."""
    if not host.get_fact(File, path=path):
        return
    if ours(target, path):
        files.file(name=f"Remove {path}{what}", path=path, present=False)
    else:
        logger.warning(f"[{host.name}] {path} is not this deploy's (no '{MARKER}' marker): left as it is")


@deploy("Undeploy: stop and remove the piper-tts service")
def remove_service(target: Target):
    if host.get_fact(File, path=UNIT_FILE) and ours(target, UNIT_FILE):
        if host.get_fact(SystemdRunning):
            server.shell(name=f"Stop and disable {UNIT}", commands=[f"systemctl disable --now {UNIT}"])
        files.file(name=f"Remove {UNIT_FILE}", path=UNIT_FILE, present=False)
        files.directory(name=f"Remove {UNIT_DROP_INS} (drop-ins for the unit)", path=UNIT_DROP_INS, present=False)
        files.directory(name=f"Remove {UNIT_STATE} (the unit's state: CUDA's cache)", path=UNIT_STATE, present=False)
        server.shell(name="systemctl daemon-reload", commands=["systemctl daemon-reload || true"])
    if host.get_fact(File, path=CTL) and ours(target, CTL):
        server.shell(name="Stop piper-tts (piper-tts-ctl)", commands=[f"{CTL} stop || true"])
    for path in (CTL, AUTOSTART):
        remove_own_file(target, path)


@deploy("Undeploy: the server, venv, logs, settings and tools")
def remove_files(target: Target):
    """The directories the deploy created (ADDED_PATHS) go whole; in the others, only its own files."""
    s = target.settings
    created = recorded(ADDED_PATHS)
    voices_too = s.undeploy.undeploy_voices
    models = target.models_dir.rstrip("/")
    in_models = [p for p in created if p == models or p.startswith(models + "/")]
    gone = [p for p in created if p not in in_models or voices_too]
    for path in sorted(gone, key=lambda p: -p.count("/")):
        if not _under(path, [other for other in gone if other != path]):
            files.directory(name=f"Remove {path} (this deploy created it)", path=path, present=False)
    # its own files in directories that were there before
    if not _under(target.lock_file, gone):
        remove_own_file(target, target.lock_file)
    for path in (target.pid_file, target.perf_out):
        if not _under(path, gone):
            files.file(name=f"Remove {path}", path=path, present=False)
    if not _under(target.log_path, gone) and host.get_fact(File, path=target.log_path):
        server.shell(name=f"Remove the service's logs {target.log_path}*",
                     commands=[f"rm -f {target.log_path} {target.log_path}.*"])
    if voices_too:
        for voice in s.models.voices:
            for suffix in (".onnx", ".onnx.json"):
                path = f"{target.voice_dir(voice)}/{voice.name}{suffix}"
                if not _under(path, gone):
                    files.file(name=f"Remove the voice file {path}", path=path, present=False)
    kept = [p for p in created if p not in gone]
    if created and kept != created:
        if kept:
            files.put(name=f"{ADDED_PATHS}: only the directories that stay ({', '.join(kept)})",
                      src=_lines(kept), dest=ADDED_PATHS, mode="644")
        else:
            files.file(name=f"Remove {ADDED_PATHS}: every directory it lists is gone", path=ADDED_PATHS, present=False)
    if target.venv_dir not in created and host.get_fact(Directory, path=f"{target.venv_dir}/bin"):
        before = f"; what it held before the deploy: {VENV_BEFORE}" if host.get_fact(File, path=VENV_BEFORE) else ""
        logger.warning(f"[{host.name}] {target.venv_dir} stays: this deploy did not create it{before}")
    for path in (ETC, TOOLS, CACHE):
        files.directory(name=f"Remove {path}", path=path, present=False)
    remove_own_file(target, PERF)


def _lines(lines: list[str]):
    from io import StringIO

    return StringIO("".join(line + "\n" for line in lines))


@deploy("Undeploy: CUDA environment, linker config, apt source and keyring")
def remove_environment(target: Target):
    had_conf = host.get_fact(File, path=LINKER_CONF) and ours(target, LINKER_CONF)
    remove_own_file(target, LINKER_CONF)
    if had_conf:
        server.shell(name="Rebuild the linker cache (ldconfig): the CUDA linker config goes", commands=["ldconfig"])
    remove_own_file(target, PROFILE_SNIPPET)
    if host.get_fact(File, path=f"{target.home}/.bashrc"):
        files.block(
            name=f"~{target.settings.service.service_user}/.bashrc: remove the CUDA block",
            path=f"{target.home}/.bashrc",
            marker="# {mark} piper-gpu-deploy CUDA environment",
            present=False,
        )
    added = recorded(ADDED_PACKAGES)
    installed = host.get_fact(DebPackages)
    if "cuda-keyring" in added and "cuda-keyring" in installed:
        server.shell(name=f"Purge cuda-keyring ({KEYRING}): this deploy installed it", commands=["dpkg --purge cuda-keyring"])
    else:  # the deploy's own source file over the keyring's (the keyring is someone else's, or gone)
        remove_own_file(target, target.cuda_source_list)
    for path in (APT_CONF_FILE, WSL_DRIVER_PIN_FILE):
        remove_own_file(target, path)
    if target.settings.cuda.cudnn_source == "local-repo":
        name, repo_dir = local_repo(target)
        if name in added and name in installed:
            server.shell(name=f"Purge the cuDNN local-repo installer {name} and its keyring (this deploy installed them)",
                         commands=[f"for k in {repo_dir}/cudnn-*-keyring.gpg; do rm -f /usr/share/keyrings/$(basename $k); done",
                                   StringCommand("dpkg", "--purge", QuoteString(name))])


@deploy("Undeploy: put back what the deploy moved aside or replaced")
def restore_moved_aside(target: Target):
    """Each line of the ledger, last first: the old server's script and the files the deploy replaced back
    in place, its autostart lines and units back on. Its process is not started again: the run says how."""
    for entry in reversed(recorded(MOVED_ASIDE, strip=False)):
        kind, *fields = entry.split("\t")
        what = {"file": "move back", "copy": "put back your", "lines": "turn back on the lines of",
                "unit": "enable again"}.get(kind, kind)
        put_back(name=f"{what.capitalize()} {fields[0] if fields else entry} (from {MOVED_ASIDE})",
                 entry=entry, ledger=MOVED_ASIDE, prefix=DISABLED, backups=BACKUPS)
    record = "\n".join(host.get_fact(FileContents, path=OLD_SERVER_RECORD) or [])
    if record:
        try:
            old = json.loads(record)
        except ValueError:
            old = {}
        for p in old.get("processes") or []:
            logger.warning(f"[{host.name}] the old server this deploy stopped is not started again; it ran as "
                           f"{p.get('user')}: cd {p.get('cwd')} && {p.get('command')}")


@deploy("Undeploy: CUDA/cuDNN packages, and the base packages and user the deploy added")
def remove_system(target: Target):
    installed = host.get_fact(DebPackages)
    holds = [p for p in recorded(HELD_PACKAGES) if p in host.get_fact(HeldPackages)]
    if holds:
        server.shell(name=f"Unhold {', '.join(holds)} (this deploy held them)",
                     commands=[StringCommand("apt-mark unhold", *map(QuoteString, holds))])
    added = recorded(ADDED_PACKAGES)
    purged = {"cuda-keyring"}  # by remove_environment, with dpkg: its apt source is gone with it
    if target.settings.cuda.cudnn_source == "local-repo":
        purged.add(local_repo(target)[0])
    purge = [p for p in added if p in installed and p not in purged]
    if purge:
        server.shell(
            name=f"Purge {', '.join(purge)} (this deploy added them) and what only they needed",
            # SUDO_FORCE_REMOVE: sudo is purged only when this deploy added it, so root is reached without it
            # (chroot, root login); Debian's sudo prerm otherwise refuses on a host without a root password
            commands=[StringCommand("DEBIAN_FRONTEND=noninteractive SUDO_FORCE_REMOVE=yes apt-get purge -y",
                                    *map(QuoteString, purge)),
                      "DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y"],
        )
    users = recorded(ADDED_USER)
    remove_home = " -r" if target.settings.undeploy.undeploy_voices else ""
    for user in users:
        server.shell(name=f"Remove the user {user} this deploy created" + (" and its home" if remove_home else ""),
                     commands=[StringCommand(f"userdel{remove_home}", QuoteString(user))])
    # its records; a backup it could not put back (something is in its place now) stays, and so does STATE
    records = [ADDED_PACKAGES, ADDED_USER, ADDED_PATHS, HELD_PACKAGES, OLD_SERVER_RECORD]
    if not host.get_fact(Directory, path=f"{target.venv_dir}/bin"):  # a venv that stays keeps what it held
        records.append(VENV_BEFORE)
    for path in records:
        files.file(name=f"Remove {path}", path=path, present=False)
    if host.get_fact(Directory, path=STATE):
        # decided when it runs: a backup that could not be put back keeps the directory (and is named)
        server.shell(name=f"Remove {STATE} unless a backup is left in it",
                     commands=[f"if find {STATE} -type f | grep -q .; then echo \"kept {STATE}: \"$(find {STATE} -type f) >&2; "
                               f"else rm -rf {STATE}; fi"])
