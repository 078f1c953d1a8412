"""Step 1: preflight. Read the host (facts), refuse what would break it, resolve the target.

Nothing on the host changes before these checks pass, except the WSL2 apt pin that keeps a
Linux NVIDIA driver from ever being installed there.
"""

from __future__ import annotations

import dataclasses
import re
import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.deb import DebArch, DebPackages
from pyinfra.facts.server import OsRelease

from pyinfra.facts.files import FileContents

from piper_gpu import locks, migration, platforms, sources
from piper_gpu.facts import ManualSetup, NvidiaDriver, PathKinds, PythonVersion, SystemdRunning, WslInfo
from piper_gpu.naming import major_minor as _major_minor
from piper_gpu.settings import WSL_FORBIDDEN_PACKAGE_PATTERNS, Settings, SettingsError
from piper_gpu.steps.base import put_file, user_home
from piper_gpu.target import OLD_SERVER_RECORD, UNIT, WSL_DRIVER_PIN_FILE, Target

DEB_ARCH_TO_NVIDIA = {"amd64": "x86_64", "arm64": "sbsa"}


class PreflightError(PyinfraError):
    """The host is not fit for the deploy; the message says what is wrong and the fix.
    (A PyinfraError: pyinfra prints it as one line, without a traceback.)"""


def find_platform(os_release: dict, settings: Settings, is_wsl: bool) -> platforms.Platform:
    """The host's row in the platform table. A distro outside it is accepted only when the operator
    names the repository path and the sources (what their mirror serves)."""
    distro, version = os_release.get("id") or "?", os_release.get("version_id") or "?"
    try:
        return platforms.find(distro, version, is_wsl)
    except platforms.UnsupportedPlatform as exc:
        cuda, repo_path = settings.cuda, settings.sources.cuda_repo_path
        explicit = cuda.cuda_source == "pip" or (
            repo_path and cuda.cuda_source == "apt" and cuda.cudnn_source != "auto")
        if not explicit:
            raise PreflightError(f"{exc} (cuda_source, cuda_repo_path and cudnn_source)") from None
        return platforms.Platform(
            key=f"{distro}{version}", title=f"{distro} {version}", distro=distro, version=version, wsl=is_wsl,
            repo_path=repo_path, python="", repo_has_cuda_12_4=None, repo_has_cudnn_9_1=None,
            cuda_source=cuda.cuda_source, cudnn_source=cuda.cudnn_source, evidence="set by the operator")


def check_python(python_version: str | None, settings: Settings) -> None:
    if python_version is None:
        raise PreflightError("cannot tell which Python the venv will use: neither `python3` nor "
                             "`apt-cache policy python3` answers. Install python3 (sudo apt-get install python3)")
    if python_version not in locks.available():
        raise PreflightError(
            f"the host's Python is {python_version} (python3), and there is no venv lock for it: supported are "
            f"{', '.join(locks.available())} (piper_gpu/locks/). Use a distro from the platform table, or make a lock "
            f"with: python -m piper_gpu lock --python {python_version} --resolve")


def resolve_settings(settings: Settings, platform: platforms.Platform, python_version: str,
                     automount_root: str = sources.DEFAULT_AUTOMOUNT_ROOT) -> Settings:
    """The settings for this host (platform defaults, the lock for its Python, its paths), checked again."""
    try:
        return settings.for_host(platform, python_version, automount_root).validate()
    except SettingsError as exc:
        raise PreflightError(f"on this {platform.title} host with Python {python_version}: {exc}") from None


def check_local_sources(found: list[str], wanted: dict[str, tuple[str, str]], given: Settings) -> None:
    """Every local file or directory a setting names is there and readable, before anything changes.
    ``found``: PathKinds of the paths in ``wanted`` (setting -> (path, "file" | "dir")); ``given``: the
    settings as the operator wrote them (a Windows path is named as written and as converted)."""
    problems = []
    for (name, (path, kind)), what in zip(wanted.items(), found):
        if what == kind:
            continue
        need = "file" if kind == "file" else "directory"
        written = given.values().get(name, path)  # a voice's url: its path
        shown = repr(path) if written == path else f"{written!r} (on this host {path})"
        if what == "missing":
            cause, fix = f"no such {need}", "check the name and the folder it is in"
            if written != path:
                fix += " (Explorer's \"Copy as path\" gives the exact Windows path; leave out its quotes)"
        elif what == "unreadable":
            cause, fix = "not readable", f"make it readable (chmod a+r {shlex.quote(path)})"
        else:
            cause, fix = f"a {what}, not a {need}", f"give the {need} itself"
        problems.append(f"{name}={shown}: {cause}; {fix}")
    if problems:
        raise PreflightError("local sources not usable (nothing was changed):\n  - " + "\n  - ".join(problems))


def check_driver(driver: dict | None, settings: Settings, is_wsl: bool) -> None:
    where = (
        "install or update the NVIDIA driver on Windows (it provides /usr/lib/wsl/lib/nvidia-smi); "
        "never install a Linux NVIDIA driver inside WSL2"
        if is_wsl
        else "install the NVIDIA Linux driver from your distribution (nvidia-smi must work)"
    )
    if driver is None or not driver.get("gpus"):
        found = "nvidia-smi not found" if driver is None else f"{driver['path']} lists no GPU"
        if settings.checks.allow_no_gpu:
            logger.warning(
                "\n" + "!" * 78 + f"\n!! NO NVIDIA GPU: {found}. allow_no_gpu=True, so this host is "
                "provisioned anyway;\n!! the service will run on the CPU and log a WARN at start.\n"
                + "!" * 78
            )
            return
        raise PreflightError(f"{found}: {where}. (Set allow_no_gpu=True only for hosts without a GPU.)")
    have = driver.get("cuda_version")
    if have and _major_minor(have, "driver CUDA") < _major_minor(settings.cuda.cuda_version, "cuda_version"):
        raise PreflightError(
            f"the NVIDIA driver {driver.get('driver_version')} supports CUDA {have}, older than "
            f"cuda_version {settings.cuda.cuda_version}: {where.replace('install or update', 'update')}"
        )


def check_no_linux_driver(installed: dict, is_wsl: bool) -> None:
    if not is_wsl:
        return
    bad = sorted(p for p in installed if any(re.match(pat, p) for pat in WSL_FORBIDDEN_PACKAGE_PATTERNS))
    if bad:
        raise PreflightError(
            f"WSL2 host has Linux NVIDIA driver packages installed ({', '.join(bad)}): a Linux libcuda.so.1 "
            f"shadows the Windows driver's /usr/lib/wsl/lib/libcuda.so.1 and CUDA fails with error 100. "
            f"Nothing was changed. Fix: sudo apt-get purge {' '.join(bad)} && sudo ldconfig"
        )


def choose_service_mode(settings: Settings, systemd_running: bool, is_wsl: bool) -> str:
    if settings.service.service_mode == "auto":
        return "systemd" if systemd_running else "profile"
    if settings.service.service_mode == "systemd" and not systemd_running and not is_wsl:
        raise PreflightError(
            "service_mode='systemd' but systemd is not running on this host (no /run/systemd/system); "
            "use service_mode='profile' or 'auto'"
        )
    return settings.service.service_mode


def inspect_host(settings: Settings, checks: bool) -> Target:
    """Read the host (facts) into a Target; with ``checks``, refuse hosts the deploy would break."""
    wsl = host.get_fact(WslInfo)
    is_wsl = wsl["is_wsl"]
    if checks and is_wsl and not wsl["wsl_lib"]:
        raise PreflightError(
            f"WSL kernel {wsl['kernel']} but no /usr/lib/wsl/lib: GPU support is missing. "
            "Run `wsl --update` on Windows and use WSL2 (not WSL1)"
        )
    deb_arch = host.get_fact(DebArch)
    arch = DEB_ARCH_TO_NVIDIA.get(deb_arch)
    if not arch:
        raise PreflightError(f"architecture {deb_arch} (dpkg --print-architecture) has no NVIDIA CUDA repository")
    if checks:  # a Linux driver inside WSL2 is refused before anything else is looked at or changed
        check_no_linux_driver(host.get_fact(DebPackages), is_wsl)
    platform = find_platform(host.get_fact(OsRelease), settings, is_wsl)
    python_version = host.get_fact(PythonVersion)
    if checks:
        check_python(python_version, settings)
    if python_version in locks.available():
        root = sources.automount_root("\n".join(host.get_fact(FileContents, path="/etc/wsl.conf") or [])) \
            if is_wsl else sources.DEFAULT_AUTOMOUNT_ROOT
        given, settings = settings, resolve_settings(settings, platform, python_version, root)
        local = settings.local_sources()
        if checks and local:
            check_local_sources(host.get_fact(PathKinds, paths=tuple(p for p, _ in local.values())), local, given)
    driver = host.get_fact(NvidiaDriver)
    if checks:
        check_driver(driver, settings, is_wsl)
    systemd_running = host.get_fact(SystemdRunning)
    user = settings.service.service_user
    home = user_home(user) or ("/root" if user == "root" else f"/home/{user}")
    apt_repo_path = platform.repo_path if settings.cuda.cuda_source == "apt" else ""
    repo_path = settings.sources.cuda_repo_path or apt_repo_path or ""
    target = Target(
        settings=settings,
        is_wsl=is_wsl,
        arch=arch,
        repo_path=repo_path,
        home=home,
        service_mode=(choose_service_mode(settings, systemd_running, is_wsl) if checks
                      else settings.service.service_mode),
        systemd_running=systemd_running,
        gpu=driver,
        python_version=python_version,
        platform=platform.key,
    )
    if not checks:  # undeploy: where the service listened does not matter
        address, _ = migration.bind_address(settings.service.bind_address, migration.Migration())
        return dataclasses.replace(target, settings=settings.replace(bind_address=address))
    found = find_old_server(target)
    address, why = migration.bind_address(settings.service.bind_address, found)
    target = dataclasses.replace(target, settings=settings.replace(bind_address=address), migration=found)
    report_old_server(target, address, why)
    return target


def find_old_server(target: Target) -> migration.Migration:
    """What a manual setup of the CPU server left on the host, and what the run will do with it; stops
    the run (PreflightError) before any change when the port is someone else's, or when old_server is
    'refuse' and one is found."""
    s = target.settings.service
    scripts = tuple(target.settings.migration.old_server_scripts)
    facts = host.get_fact(ManualSetup, port=s.port, home=target.home, user=s.service_user, scripts=scripts,
                          pid_file=target.pid_file, unit=UNIT, record_path=OLD_SERVER_RECORD)
    try:
        return migration.plan(facts, s.port, target.settings.migration.old_server, scripts, target.home,
                              s.bind_address)
    except migration.Refused as exc:
        raise PreflightError(str(exc)) from None


def report_old_server(target: Target, address: str, why: str) -> None:
    """Say what was found of the old setup and what the run will do with each (also under --dry, where
    pyinfra lists the operations only with its change detection)."""
    found = target.migration
    lines = found.found()
    if lines:
        logger.warning(f"[{host.name}] found the CPU server of a manual setup:\n    " + "\n    ".join(lines))
    plan = planned_actions(target)
    if plan:
        logger.warning(f"[{host.name}] what the run does with it, just before the service starts (undeploy puts back "
                       "what it moves or turns off):\n    " + "\n    ".join(plan))
    for note in [*found.notes, migration.exposure_note(address, why)]:
        if note:
            logger.warning(f"[{host.name}] {note}")


def planned_actions(target: Target) -> list[str]:
    """One line per thing the run will do to the old setup (steps/old_server.py does them)."""
    from piper_gpu.steps.old_server import STOP_WAIT, unit_actions

    m = target.migration
    if target.wsl_needs_restart:
        return ["nothing yet: this run stops before the service (WSL2 must restart to run systemd)"] if m else []
    out = [f"turn off {f} line {n} (a comment that starts with '{migration.DISABLED.strip()}'; the file as it is now "
           f"kept at {target.backup_path(f)})" for f, n, _ in m.autostart]
    out += [f"{'disable and stop' if e else 'stop'} the systemd unit {u}" for u, e in unit_actions(target)]
    out += [f"stop pid {p.pid} with SIGTERM ({p.command}), waiting up to {STOP_WAIT} s" for p in m.stop]
    out += [f"move {s} to {target.backup_path(s)}" for s in m.scripts]
    out += [f"remove {s} (an earlier release of this deploy rendered it)" for s in m.own_scripts]
    return out


@deploy("Preflight: WSL2, distro, NVIDIA driver")
def preflight(settings: Settings) -> Target:
    target = inspect_host(settings, checks=True)
    if target.is_wsl:
        put_file(target, "Forbid Linux NVIDIA driver packages inside WSL2 (apt pin)", WSL_DRIVER_PIN,
                 WSL_DRIVER_PIN_FILE, "644")
    return target


WSL_DRIVER_PIN = (
    "# Managed by piper-gpu-deploy: on WSL2 the driver comes from Windows, and a Linux libcuda.so.1\n"
    "# would shadow /usr/lib/wsl/lib/libcuda.so.1 (CUDA error 100).\n"
    "Package: cuda-drivers* nvidia-driver-* nvidia-kernel-* nvidia-dkms-* libnvidia-compute-* nvidia-utils-* "
    "nvidia-compute-utils-* libcuda1\n"
    "Pin: release *\nPin-Priority: -1\n"
)

