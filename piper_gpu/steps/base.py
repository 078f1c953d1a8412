"""Before the plan's steps: the base packages the deploy needs (curl, python3-venv), apt that waits
for a held dpkg lock, a dpkg run left interrupted finished, the service user, and the directories
and tools the later steps use. What it adds that was not there is recorded for undeploy."""

from __future__ import annotations

import hashlib
import json
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import Users
from pyinfra.operations import apt, files, server

from piper_gpu.facts import DpkgInterrupted, FileMark
from piper_gpu.operations import kept_aside
from piper_gpu.render import render
from piper_gpu.resources import OPENPGP_TOOL
from piper_gpu.target import (ADDED_PACKAGES, ADDED_PATHS, ADDED_USER, APT_CONF_FILE, CACHE, ETC, MARKER, MOVED_ASIDE, STATE,
                              TARGET_FILE, TOOLS, WSL_DRIVER_PIN_FILE, Target)

#: sudo: steps run as the service user through pyinfra's _sudo_user (a chroot or a root login has no sudo).
#: xz-utils: tar unpacks the cuDNN archive (.tar.xz) with it; Ubuntu 24.04's minimal root lacks it.
BASE_PACKAGES = ["ca-certificates", "curl", "python3", "python3-venv", "procps", "iproute2", "sudo", "xz-utils"]


def missing_packages(packages: list[str]) -> list[str]:
    installed = host.get_fact(DebPackages)
    return [p for p in packages if p.split("=")[0] not in installed]


def record_added(packages: list[str]) -> None:
    """Record, before installing them, the packages of ``packages`` this deploy adds (the host does not have
    them): undeploy's undeploy_system purges exactly these, never a package that was there before."""
    for package in missing_packages(packages):
        files.line(name=f"Record that this deploy adds {package} ({ADDED_PACKAGES})", path=ADDED_PACKAGES,
                   line=package.split("=")[0])


def record_created(path: str) -> None:
    """Record, before creating it, a directory this deploy creates (undeploy removes those whole)."""
    files.line(name=f"Record that this deploy creates {path} ({ADDED_PATHS})", path=ADDED_PATHS, line=path)


def recorded(path: str, strip: bool = True) -> list[str]:
    """The lines of one of the deploy's records on the host (target.STATE); ``strip=False`` keeps each line
    as written (the ledger's entries are matched whole)."""
    lines = host.get_fact(FileContents, path=path) or []
    return [line.strip() if strip else line.rstrip("\n") for line in lines if line.strip()]


def ours(target: Target, path: str) -> bool:
    """``path`` is a file this deploy wrote: its marker, or an earlier release's as its target.json names it."""
    mark = host.get_fact(FileMark, path=path, marker=MARKER)
    return bool(mark) and (mark["ours"] or path in earlier_release_files(target))


def replaced_versions(packages: dict[str, str]) -> str:
    """What installing ``packages`` (name -> wanted apt version) replaces on this host, for the
    operation's name: another version of a package that was there before this deploy."""
    installed = host.get_fact(DebPackages)
    changed = [f"{name} {', '.join(installed[name])}" for name, version in packages.items()
               if installed.get(name) and version not in installed[name]]
    return f" (replaces {'; '.join(changed)}, installed before)" if changed else ""


APT_CONF = """// Managed by piper-gpu-deploy: wait for another apt/dpkg instead of failing, retry downloads.
DPkg::Lock::Timeout "300";
Acquire::Retries "5";
"""


def template_file(target: Target, name: str, template: str, dest: str, mode: str, user: str | None = None,
                  group: str | None = None, **context):
    """A file rendered from ``templates/<template>`` (rendered once, the way files.template renders and
    then puts it), with the sha256 of what it writes recorded in ``target.installed`` (verify compares
    the host's file with it)."""
    text = render(template, **context)
    target.installed[dest] = hashlib.sha256(text.encode()).hexdigest()
    return put_file(target, name, text, dest, mode, user, group)


#: The deploy's own directories: nothing of anyone else's is there to keep.
OWN_DIRS = (ETC, TOOLS, CACHE, STATE)


def earlier_release_files(target: Target) -> set[str]:
    """The files an earlier release of the deploy wrote on this host without its marker, as the target.json
    it recorded names them (its rendered files, and its lock, apt source, apt and driver-pin files)."""
    lines = host.get_fact(FileContents, path=TARGET_FILE)
    if not lines:
        return set()
    try:
        recorded = json.loads("\n".join(lines))
    except ValueError:
        return set()
    own = set(recorded.get("installed_files") or {}) | {APT_CONF_FILE, WSL_DRIVER_PIN_FILE, target.cuda_source_list}
    if recorded.get("piper_dir"):
        own.add(f"{recorded['piper_dir']}/requirements.lock")
    if recorded.get("perf"):
        own.add(recorded["perf"])
    return own


def put_file(target: Target, name: str, text: str, dest: str, mode: str, user: str | None = None,
             group: str | None = None):
    """``dest`` holds ``text`` (which carries the deploy's marker in its first lines). A file already there
    without the marker is someone else's: a copy of it is kept first (undeploy puts it back), and the
    operation's name says so."""
    assert MARKER in text[:1024], f"{dest}: the deploy's files carry its marker ({MARKER})"
    if not dest.startswith(tuple(d + "/" for d in OWN_DIRS)):
        mark = host.get_fact(FileMark, path=dest, marker=MARKER)
        if mark and not ours(target, dest) and mark["sha256"] != hashlib.sha256(text.encode()).hexdigest():
            backup = target.backup_path(dest)
            kept_aside(name=f"Keep a copy of {dest} (a file this deploy did not write) at {backup}, before replacing it",
                       path=dest, backup=backup, ledger=MOVED_ASIDE)
            name += f" (replaces your {dest}; its copy: {backup}; undeploy puts it back)"
    return files.put(name=name, src=StringIO(text), dest=dest, mode=mode, user=user, group=group)


def user_home(user: str) -> str | None:
    """The user's home directory, or None when there is no such user (pyinfra's Users fact)."""
    return (host.get_fact(Users).get(user) or {}).get("home")


@deploy("Base system: packages, service user")
def base_system(target: Target):
    s = target.settings
    put_file(target, "apt waits for a held dpkg lock (5 min) and retries downloads", APT_CONF, APT_CONF_FILE, "644")
    interrupted = host.get_fact(DpkgInterrupted)
    if interrupted:
        server.shell(
            name=f"Finish an interrupted dpkg run (dpkg --configure -a): {', '.join(interrupted)}",
            commands=["DEBIAN_FRONTEND=noninteractive dpkg --configure -a",
                      "DEBIAN_FRONTEND=noninteractive apt-get install -f -y"],
        )
    files.directory(name=f"Create {STATE} (what this deploy added)", path=STATE, mode="755")
    missing = missing_packages(BASE_PACKAGES)
    if missing:
        apt.update(name=f"Refresh apt lists: base packages missing ({', '.join(missing)})")
    record_added(BASE_PACKAGES)
    apt.packages(name="Install base packages", packages=BASE_PACKAGES, no_recommends=True)
    if s.service.create_service_user:
        user_missing = user_home(s.service.service_user) is None
        server.user(
            name=f"Service user {s.service.service_user}",
            user=s.service.service_user,
            home=target.home,
            shell="/bin/bash",
            create_home=True,
            system=True,
        )
        if user_missing:
            files.put(name=f"Record that this deploy created the user {s.service.service_user} ({ADDED_USER})",
                      src=StringIO(s.service.service_user + "\n"), dest=ADDED_USER, mode="644")
    files.directory(name=f"Create {CACHE}", path=CACHE, mode="755")
    files.directory(name=f"Create {TOOLS}", path=TOOLS, mode="755")
    files.put(
        name="Install the OpenPGP fingerprint checker",
        src=str(OPENPGP_TOOL),
        dest=f"{TOOLS}/openpgp.py",
        mode="755",
    )
