"""Step 1: preflight. Read the host (facts), refuse what would break it, resolve the target.

Nothing on the host changes before these checks pass, except the WSL2 apt pin that keeps a
Linux NVIDIA driver from ever being installed there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.deb import DebArch
from pyinfra.operations import files

from piper_gpu.facts import (InstalledDebVersions, NvidiaDriver, OsRelease, PythonVersion, SystemdRunning, UserHome,
                             WslInfo)
from piper_gpu.settings import NVIDIA_REPO_PATHS, WSL_FORBIDDEN_PACKAGE_PATTERNS, Settings, _major_minor

DEB_ARCH_TO_NVIDIA = {"amd64": "x86_64", "arm64": "sbsa"}


class PreflightError(RuntimeError):
    """The host is not fit for the deploy; the message says what is wrong and the fix."""


@dataclass(frozen=True)
class Target:
    """Settings plus what preflight learned about the host; every later step reads this."""

    settings: Settings
    is_wsl: bool
    arch: str  # NVIDIA's name: x86_64 / sbsa
    repo_path: str  # wsl-ubuntu, ubuntu2204, ubuntu2404, debian12
    home: str
    service_mode: str  # systemd / profile
    systemd_running: bool
    gpu: dict | None
    python_version: str | None = None  # the venv's python3 (e.g. "3.11")

    def path(self, value: str) -> str:
        """Expand a leading ~ to the service user's home."""
        return self.home + value[1:] if value.startswith("~") else value

    @property
    def piper_dir(self) -> str:
        return self.path(self.settings.piper_dir)

    @property
    def venv_dir(self) -> str:
        return self.path(self.settings.venv_dir)

    @property
    def models_dir(self) -> str:
        return self.path(self.settings.models_dir)

    @property
    def venv_python(self) -> str:
        return f"{self.venv_dir}/bin/python"

    @property
    def server_path(self) -> str:
        return f"{self.piper_dir}/piper_http_server.py"

    @property
    def run_dir(self) -> str:
        return f"{self.piper_dir}/run"

    @property
    def log_path(self) -> str:
        return f"{self.piper_dir}/logs/piper-tts.log"

    @property
    def cuda_lib_dir(self) -> str:
        return self.settings.cuda_lib_dir(self.arch)

    @property
    def site_packages(self) -> str:
        return f"{self.venv_dir}/lib/python{self.python_version}/site-packages"

    @property
    def wheel_lib_dirs(self) -> list[str]:
        """With cuda_source="pip": each NVIDIA wheel's library directory in the venv
        (nvidia-cuda-runtime-cu12 -> nvidia/cuda_runtime/lib)."""
        s = self.settings
        names = [re.sub(r"^nvidia-|-cu\d+$", "", w).replace("-", "_") for w in s.cuda_wheel_requirements()]
        return [f"{self.site_packages}/nvidia/{n}/lib" for n in names]

    def voice_dir(self, voice) -> str:
        return f"{self.models_dir}/{voice.language_dir}/{voice.name}"

    @property
    def voice_models(self) -> dict[str, str]:
        """Voice name -> its .onnx on the host (the .onnx.json lies beside it)."""
        return {v.name: f"{self.voice_dir(v)}/{v.name}.onnx" for v in self.settings.voices}

    @property
    def perf_out(self) -> str:
        return f"{self.piper_dir}/perf/latest.json"


def check_distro(os_release: dict, settings: Settings, is_wsl: bool) -> str:
    distro, version = os_release.get("ID", "?"), os_release.get("VERSION_ID", "?")
    if settings.cuda_repo_path:
        return settings.cuda_repo_path
    if settings.cuda_source == "pip":  # no apt repository needed
        return NVIDIA_REPO_PATHS.get((distro, version), "")
    if is_wsl and distro == "ubuntu":
        return "wsl-ubuntu"
    try:
        return NVIDIA_REPO_PATHS[(distro, version)]
    except KeyError:
        raise PreflightError(
            f"unsupported distro {distro} {version} (/etc/os-release): NVIDIA's CUDA repository "
            "has paths for Ubuntu 22.04/24.04 (wsl-ubuntu on WSL2) and Debian 12. Use one of them, "
            "or set cuda_repo_path to a repository path your mirror serves"
        ) from None


def check_driver(driver: dict | None, settings: Settings, is_wsl: bool) -> None:
    where = (
        "install or update the NVIDIA driver on Windows (it provides /usr/lib/wsl/lib/nvidia-smi); "
        "never install a Linux NVIDIA driver inside WSL2"
        if is_wsl
        else "install the NVIDIA Linux driver from your distribution (nvidia-smi must work)"
    )
    if driver is None or not driver.get("gpus"):
        found = "nvidia-smi not found" if driver is None else f"{driver['path']} lists no GPU"
        if settings.allow_no_gpu:
            logger.warning(
                "\n" + "!" * 78 + f"\n!! NO NVIDIA GPU: {found}. allow_no_gpu=True, so this host is "
                "provisioned anyway;\n!! the service will run on the CPU and log a WARN at start.\n"
                + "!" * 78
            )
            return
        raise PreflightError(f"{found}: {where}. (Set allow_no_gpu=True only for hosts without a GPU.)")
    have = driver.get("cuda_version")
    if have and _major_minor(have, "driver CUDA") < _major_minor(settings.cuda_version, "cuda_version"):
        raise PreflightError(
            f"the NVIDIA driver {driver.get('driver_version')} supports CUDA {have}, older than "
            f"cuda_version {settings.cuda_version}: {where.replace('install or update', 'update')}"
        )


def check_no_linux_driver(installed: dict, is_wsl: bool) -> None:
    if not is_wsl:
        return
    bad = sorted(p for p in installed if any(re.match(pat, p) for pat in WSL_FORBIDDEN_PACKAGE_PATTERNS))
    if bad:
        raise PreflightError(
            f"WSL2 host has Linux NVIDIA driver packages installed ({', '.join(bad)}); they break "
            f"the Windows driver's GPU passthrough. Fix: sudo apt-get purge {' '.join(bad)}"
        )


def choose_service_mode(settings: Settings, systemd_running: bool, is_wsl: bool) -> str:
    if settings.service_mode == "auto":
        return "systemd" if systemd_running else "profile"
    if settings.service_mode == "systemd" and not systemd_running and not is_wsl:
        raise PreflightError(
            "service_mode='systemd' but systemd is not running on this host (no /run/systemd/system); "
            "use service_mode='profile' or 'auto'"
        )
    return settings.service_mode


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
    repo_path = check_distro(host.get_fact(OsRelease), settings, is_wsl)
    driver = host.get_fact(NvidiaDriver)
    if checks:
        check_driver(driver, settings, is_wsl)
        check_no_linux_driver(host.get_fact(InstalledDebVersions), is_wsl)
    systemd_running = host.get_fact(SystemdRunning)
    python_version = host.get_fact(PythonVersion)
    if checks and python_version is None:
        raise PreflightError("cannot tell which Python the venv will use: neither `python3` nor "
                             "`apt-cache policy python3` answers. Install python3 (sudo apt-get install python3)")
    home = host.get_fact(UserHome, user=settings.service_user) or (
        "/root" if settings.service_user == "root" else f"/home/{settings.service_user}"
    )
    return Target(
        settings=settings,
        is_wsl=is_wsl,
        arch=arch,
        repo_path=repo_path,
        home=home,
        service_mode=choose_service_mode(settings, systemd_running, is_wsl) if checks else settings.service_mode,
        systemd_running=systemd_running,
        gpu=driver,
        python_version=python_version,
    )


@deploy("Preflight: WSL2, distro, NVIDIA driver")
def preflight(settings: Settings) -> Target:
    target = inspect_host(settings, checks=True)
    if target.is_wsl:
        files.put(
            name="Forbid Linux NVIDIA driver packages inside WSL2 (apt pin)",
            src=_as_file(WSL_DRIVER_PIN),
            dest=WSL_DRIVER_PIN_FILE,
            mode="644",
        )
    return target


WSL_DRIVER_PIN_FILE = "/etc/apt/preferences.d/piper-gpu-no-linux-nvidia-driver"
WSL_DRIVER_PIN = (
    "# Managed by piper-gpu-deploy: on WSL2 the driver comes from Windows.\n"
    "Package: cuda-drivers* nvidia-driver-* nvidia-kernel-* nvidia-dkms-*\n"
    "Pin: release *\nPin-Priority: -1\n"
)


def _as_file(text: str):
    from io import StringIO

    return StringIO(text)
