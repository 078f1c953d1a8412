"""Where things live on a provisioned host: every path the deploy, undeploy and verify use, defined
once, and ``Target``: the settings plus what preflight learned about the host, with the paths that
depend on it (the service user's home, the venv's Python)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from piper_gpu.settings import Settings

# --- fixed host paths -----------------------------------------------------------------------
ETC = "/etc/piper-gpu"
SETTINGS_FILE = f"{ETC}/settings.json"  # the applied settings (verify reads them)
TARGET_FILE = f"{ETC}/target.json"  # the resolved target (verify reads it)
ENV_FILE = f"{ETC}/piper-tts.env"
SERVER_CONFIG = f"{ETC}/server.toml"  # the server's settings (python -m piper_gpu_server --config)
TEXTS_FILE = f"{ETC}/texts.json"
API_KEY_FILE = f"{ETC}/api-key"
LINKER_CONF = "/etc/ld.so.conf.d/piper-gpu-cuda.conf"
PROFILE_SNIPPET = "/etc/profile.d/piper-gpu-cuda.sh"
AUTOSTART = "/etc/profile.d/piper-tts-autostart.sh"  # profile mode: starts the service at login
APT_CONF_FILE = "/etc/apt/apt.conf.d/90piper-gpu-deploy"
WSL_DRIVER_PIN_FILE = "/etc/apt/preferences.d/piper-gpu-no-linux-nvidia-driver"
KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"  # cuda-keyring's file (NVIDIA's name)
CACHE = "/var/cache/piper-gpu"
SERVER_WHEELS = f"{CACHE}/server"  # the server's wheel, built on the controller (pip --find-links)
SERVER_MODULE = "piper_gpu_server"
TOOLS = "/usr/local/lib/piper-gpu"
#: What the deploy added that was not there before (undeploy removes exactly that).
STATE = "/var/lib/piper-gpu"
ADDED_PACKAGES = f"{STATE}/added-packages"
ADDED_USER = f"{STATE}/added-user"
#: Packages the deploy put on hold (undeploy lifts these holds, no other).
HELD_PACKAGES = f"{STATE}/held-packages"
#: Directories the deploy created (one a line): undeploy removes these, and of the others only its own files.
ADDED_PATHS = f"{STATE}/added-paths"
#: What the deploy moved aside, turned off or replaced and undeploy puts back, one tab-separated line
#: each: ``file ORIGINAL BACKUP`` (moved), ``copy ORIGINAL BACKUP`` (replaced by the deploy's own file),
#: ``lines FILE BACKUP`` (lines turned into comments; BACKUP: the file before), ``unit UNIT_FILE`` (disabled).
MOVED_ASIDE = f"{STATE}/moved-aside.tsv"
#: Dated backups of those files, each at its original path under BACKUPS/<date>/.
BACKUPS = f"{STATE}/backups"
#: The old CPU server the deploy stopped (its address carries over to bind_address="auto").
OLD_SERVER_RECORD = f"{STATE}/old-server.json"
#: What a venv the deploy did not create held before it changed it (pip freeze).
VENV_BEFORE = f"{STATE}/venv-before.txt"
#: The marker every file the deploy writes carries in its first lines; a file without it is not the deploy's.
MARKER = "Managed by piper-gpu-deploy"
UNIT = "piper-tts.service"
CTL = "/usr/local/bin/piper-tts-ctl"
PERF = "/usr/local/bin/piper-tts-perf"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
UNIT_DROP_INS = f"{UNIT_FILE}.d"
UNIT_STATE = "/var/lib/piper-tts"  # the unit's StateDirectory=
WSL_CONF = "/etc/wsl.conf"
WSL_LIB = "/usr/lib/wsl/lib"


@dataclass(frozen=True)
class Target:
    """Settings plus what preflight learned about the host; every later step reads this."""

    settings: Settings
    is_wsl: bool
    arch: str  # NVIDIA's name: x86_64 / sbsa
    repo_path: str  # wsl-ubuntu, ubuntu2204, ubuntu2404, debian12 ("" when no apt repository is used)
    home: str
    service_mode: str  # systemd / profile
    systemd_running: bool
    gpu: dict | None
    python_version: str | None = None  # the venv's python3 (e.g. "3.11")
    platform: str = ""  # key in the platform table (piper_gpu/platforms.py)
    #: Files the deploy writes from templates: host path -> sha256 of the content (verify compares).
    installed: dict[str, str] = field(default_factory=dict)
    #: The old CPU server found on the host and what the run does with it (migration.Migration).
    migration: object = None
    #: This run's date, naming its backups: BACKUPS/<stamp>/<original path>.
    stamp: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S"))

    @property
    def wsl_needs_restart(self) -> bool:
        """service_mode systemd on a WSL2 instance started without it: the run enables it in /etc/wsl.conf and
        stops before the service (only a `wsl --shutdown` can start systemd); the old server keeps serving."""
        return self.service_mode == "systemd" and self.is_wsl and not self.systemd_running

    def backup_path(self, original: str) -> str:
        """Where this run keeps a copy of ``original`` (a file it moves aside or replaces)."""
        return f"{BACKUPS}/{self.stamp}{original}"

    def path(self, value: str) -> str:
        """Expand a leading ~ to the service user's home."""
        return self.home + value[1:] if value.startswith("~") else value

    @property
    def piper_dir(self) -> str:
        return self.path(self.settings.venv.piper_dir)

    @property
    def venv_dir(self) -> str:
        return self.path(self.settings.venv.venv_dir)

    @property
    def models_dir(self) -> str:
        return self.path(self.settings.models.models_dir)

    @property
    def venv_python(self) -> str:
        return f"{self.venv_dir}/bin/python"

    @property
    def run_dir(self) -> str:
        return f"{self.piper_dir}/run"

    @property
    def lock_file(self) -> str:
        """The venv's lock, as the deploy installs it."""
        return f"{self.piper_dir}/requirements.lock"

    @property
    def pid_file(self) -> str:
        """The profile-mode service's pid file."""
        return f"{self.run_dir}/piper-tts.pid"

    @property
    def log_dir(self) -> str:
        return f"{self.piper_dir}/logs"

    @property
    def log_path(self) -> str:
        return f"{self.log_dir}/piper-tts.log"

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
        return {v.name: f"{self.voice_dir(v)}/{v.name}.onnx" for v in self.settings.models.voices}

    @property
    def cuda_source_list(self) -> str:
        return f"/etc/apt/sources.list.d/cuda-{self.repo_path}-{self.arch}.list"

    @property
    def perf_out(self) -> str:
        return f"{self.piper_dir}/perf/latest.json"

    @property
    def cudnn_extract_dir(self) -> str:
        """Where an unpacked cuDNN (archive, or a .deb with cudnn_deb_extract) lives."""
        s = self.settings
        return f"/opt/cudnn-{s.cuda.cudnn_version}-cuda{s.cuda_major}"

    @property
    def multiarch(self) -> str:
        return "x86_64-linux-gnu" if self.arch == "x86_64" else "aarch64-linux-gnu"
