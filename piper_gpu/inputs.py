"""The operator's inputs, by concern: one small frozen dataclass per group of settings (CUDA and cuDNN,
sources and mirrors, the venv, voices, the service and server, undeploy.py, checks), each with its
defaults and its own validation. What follows from them (NVIDIA's names, the lock, the install plan,
pip's arguments) is computed in derived.py; checks that span groups, the pyinfra data keys and the
recorded JSON are settings.py's, which composes these groups into ``Settings``.

A field ``x`` of any group is the pyinfra data key ``piper_gpu_x``: the names are unique across the
groups. Each field's ``#:`` comment is its meaning in docs/settings.md (scripts/make_docs.py), each
class's ``# --- name ---`` line its heading there. The server's settings that the deploy passes on
(``SERVER_SETTINGS``, the base of ``Service``) are defined once, by the server: their types, defaults
and meanings are read from its ServerConfig (server_fields.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from piper_gpu import host_names, naming, server_fields, sources
from piper_gpu.errors import SettingsError
from piper_gpu.matrix import CUDA_WHEELS_12_4, DEFAULT_ORT_GPU

#: The prefix of every data key: it keeps the deploy's keys apart from other deploys' in a shared inventory.
DATA_PREFIX = "piper_gpu_"

#: Packages that must never be installed inside WSL2: the Linux driver comes from Windows, and any
#: package shipping a Linux libcuda.so.1 (the driver's user-space part) shadows WSL's
#: /usr/lib/wsl/lib/libcuda.so.1: CUDA then fails with error 100 (no device). Names from Ubuntu's and
#: NVIDIA's driver packaging (nvidia-driver-*, libnvidia-compute-*, nvidia-utils-*) and Debian's
#: (libcuda1); NVIDIA's CUDA on WSL guide: "do not install any Linux display driver in WSL".
WSL_FORBIDDEN_PACKAGE_PATTERNS = (
    r"^cuda$",
    r"^cuda-drivers(-.*)?$",
    r"^nvidia-driver(-.*)?$",
    r"^nvidia-kernel-.*$",
    r"^nvidia-dkms-.*$",
    r"^cuda-runtime-\d+-\d+$",  # depends on cuda-drivers
    r"^libnvidia-compute-\d+(-server)?$",  # Ubuntu: ships libcuda.so.1
    r"^nvidia-utils-\d+(-server)?$",  # Ubuntu: a Linux nvidia-smi
    r"^libcuda1(:.*)?$",  # Debian: libcuda.so.1
    r"^nvidia-compute-utils-\d+(-server)?$",
)

CUDA_INSTALLS = ("auto", "toolkit", "compiler", "runtime")
CUDA_SOURCES = ("auto", "apt", "pip")
CUDNN_SOURCES = ("auto", "repo", "local-repo", "archive", "wheel", "local-deb")


def data_key(field_name: str) -> str:
    """The pyinfra data key of a setting: cuda_version -> piper_gpu_cuda_version."""
    return DATA_PREFIX + field_name


def raise_problems(problems: list[str]) -> None:
    """One SettingsError listing every problem (nothing when there are none)."""
    if problems:
        raise SettingsError("invalid piper-gpu settings:\n  - " + "\n  - ".join(problems))


def _source_problems(group: Any) -> list[str]:
    """The form of the group's settings that name a file, a directory or a URL (sources.py)."""
    names = {f.name for f in dataclasses.fields(group)}
    found = (sources.problem(name, getattr(group, name), kind) for name, kind in sources.SOURCE_SETTINGS.items()
             if name in names and getattr(group, name) is not None)
    return [p for p in found if p]


class _Group:
    """What every group does: list its problems, or raise them as one SettingsError."""

    def problems(self) -> list[str]:
        raise NotImplementedError

    def validate(self):
        """Reject this group's invalid values. Returns self."""
        raise_problems(self.problems())
        return self


@dataclass(frozen=True)
class Voice:
    """A Piper voice: ``<name>.onnx`` + ``<name>.onnx.json`` with pinned sha256 checksums."""

    name: str
    onnx_sha256: str | None = None
    json_sha256: str | None = None
    #: Directory under ``models_dir`` (the users' layout: ``zh/zh_CN-huayan-medium/``).
    lang: str | None = None
    #: Base URL holding both files. Default: ``voices_base_url`` + Hugging Face's path layout.
    url: str | None = None

    @property
    def language_dir(self) -> str:
        return self.lang or self.name.split("_", 1)[0]

    def hf_path(self) -> str:
        """Path of the voice in rhasspy/piper-voices: zh/zh_CN/huayan/medium."""
        m = re.match(r"^(([a-z]{2,3})_[A-Za-z]{2,3})-(.+)-([a-z_]+)$", self.name)
        if not m:
            raise SettingsError(
                f"voice {self.name!r}: name is not <lang>_<REGION>-<speaker>-<quality>; "
                "set its 'url' explicitly"
            )
        locale, family, speaker, quality = m.group(1), m.group(2), m.group(3), m.group(4)
        return f"{family}/{locale}/{speaker}/{quality}"

    @staticmethod
    def parse(value: Any) -> "Voice":
        if isinstance(value, Voice):
            return value
        if isinstance(value, str):
            return Voice(name=value)
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(Voice)}
            if unknown:
                raise SettingsError(f"voice {value.get('name')!r}: unknown keys {sorted(unknown)}")
            return Voice(**value)
        raise SettingsError(f"voice entry {value!r} is neither a name nor a mapping")


@dataclass(frozen=True)
class Cuda(_Group):
    """CUDA and cuDNN: which releases, installed how, from which kind of source."""

    # --- CUDA and cuDNN (mutually compatible defaults) -------------------------------------
    cuda_version: str = "12.4"
    #: With cuda_source="apt", how much of CUDA: "toolkit" = cuda-toolkit-X-Y (nvcc and the profilers);
    #: "compiler" = cuda-compiler-X-Y + cuda-libraries-X-Y (nvcc and the runtime libraries, without the
    #: toolkit's tools such as the profilers and without its -dev packages (headers): what installs where
    #: the profilers' dependencies are gone, as on Ubuntu 24.04); "runtime" =
    #: cuda-libraries-X-Y only; "auto": the platform table's level.
    cuda_install: str = "auto"
    #: "apt": NVIDIA's CUDA apt repository (toolkit or runtime packages);
    #: "pip": NVIDIA's nvidia-*-cu12 wheels installed into the Piper venv, the service's linker
    #: pointed at them; no apt repository, no nvcc. "auto": the platform table's default.
    cuda_source: str = "auto"
    #: With cuda_source="pip": the CUDA library wheels (name -> version) for ``cuda_version``.
    cuda_wheels: dict[str, str] = field(default_factory=lambda: dict(CUDA_WHEELS_12_4))
    cudnn_version: str = "9.1.1.17"
    #: CUDA version the cuDNN build targets; None = from CUDNN_BUILT_FOR.
    cudnn_cuda_version: str | None = None
    #: Where cuDNN comes from (piper_gpu/platforms.py explains each): "auto" (the platform table's
    #: default), "repo", "local-repo", "archive", "wheel" or "local-deb".
    cudnn_source: str = "auto"
    #: With "local-deb" or "local-repo": unpack the library .deb under /opt instead of installing it
    #: (when its dependencies do not fit the distro); the linker config then points there.
    cudnn_deb_extract: bool = False

    def problems(self) -> list[str]:
        problems: list[str] = []

        def check(cond: bool, msg: str) -> None:
            if not cond:
                problems.append(msg)

        for name in host_names.VERSION_FORMS:
            if hasattr(self, name):
                problems.append(host_names.version_problem(name, getattr(self, name)) or "")
        check(self.cuda_install in CUDA_INSTALLS, f"cuda_install={self.cuda_install!r}: use 'auto', 'toolkit', 'compiler' or 'runtime'")
        check(self.cudnn_source in CUDNN_SOURCES,
              f"cudnn_source={self.cudnn_source!r}: use one of {', '.join(repr(c) for c in CUDNN_SOURCES)}")
        check(self.cuda_source in CUDA_SOURCES, f"cuda_source={self.cuda_source!r}: use 'auto', 'apt' or 'pip'")
        if self.cuda_source == "pip":
            major = naming.major_minor(self.cuda_version, "cuda_version")[0]
            check(self.cudnn_source in ("auto", "wheel"),
                  f"cudnn_source={self.cudnn_source!r} applies to cuda_source='apt'; with cuda_source='pip' "
                  f"cuDNN is the {naming.cudnn_wheel(self.cuda_version)}=={self.cudnn_version} wheel "
                  "(leave cudnn_source unset)")
            runtime = self.cuda_wheels.get(f"nvidia-cuda-runtime-cu{major}", "")
            check(runtime.startswith(f"{self.cuda_version}."),
                  f"cuda_wheels pins nvidia-cuda-runtime-cu{major}=={runtime or '(none)'}, not a CUDA "
                  f"{self.cuda_version} release: set cuda_wheels to NVIDIA's CUDA {self.cuda_version} wheels")
            wrong = sorted(n for n in self.cuda_wheels if not n.endswith(f"-cu{major}"))
            check(not wrong, f"cuda_wheels: {wrong} are not CUDA {major} wheels (-cu{major})")
        if not any(p.startswith("cuda_version=") for p in problems):
            for name in naming.cuda_packages(self.cuda_version, self.cuda_install):
                for pat in WSL_FORBIDDEN_PACKAGE_PATTERNS:
                    check(not re.match(pat, name),
                          f"package {name} pulls in a Linux NVIDIA driver; use cuda-toolkit-X-Y or cuda-libraries-X-Y")
        return [p for p in problems if p]


@dataclass(frozen=True)
class Sources(_Group):
    """Where the CUDA repository, cuDNN's files and the wheels come from: NVIDIA's and PyPI's servers, a
    mirror, a local file or an offline bundle."""

    # --- sources and mirrors (every download can come from a mirror or a local path) -------
    #: An offline bundle (``python -m piper_gpu bundle``): file:///path or http://host:port.
    #: Set, it replaces every source below: the CUDA repository, wheels, voices, cuDNN files.
    bundle_url: str | None = None
    cuda_repo_url: str = "https://developer.download.nvidia.com/compute/cuda/repos"
    #: None = chosen from the distro (wsl-ubuntu, ubuntu2204, ubuntu2404, debian12).
    cuda_repo_path: str | None = None
    cuda_keyring_version: str = "1.1-1"
    #: sha256 of cuda-keyring_<version>_all.deb; None = verified by the key fingerprint only.
    cuda_keyring_sha256: str | None = None
    #: Fingerprint of the key the keyring must install (NVIDIA's CUDA repository key, 3bf863cc).
    cuda_repo_key_fingerprint: str = "EB693B3035CD5710E231E123A4B469963BF863CC"
    #: With "local-repo": NVIDIA's local installer cudnn-local-repo-<distro>-<release>_1.0-1_amd64.deb
    #: (a URL, file:// URL or a path on the host, e.g. /mnt/c/Users/you/Downloads/...) and its sha256.
    cudnn_local_repo_url: str | None = None
    cudnn_local_repo_sha256: str | None = None
    #: With "local-deb": an operator-supplied libcudnn9-cuda-12 .deb (URL or path) and its sha256.
    cudnn_deb_url: str | None = None
    cudnn_deb_sha256: str | None = None
    #: With "archive": NVIDIA's redistributable archive. None = ``cudnn_redist_url`` + NVIDIA's file
    #: name, and the sha256 NVIDIA's redistrib_<release>.json lists (piper_gpu/matrix.py).
    cudnn_redist_url: str = "https://developer.download.nvidia.com/compute/cudnn/redist"
    cudnn_archive_url: str | None = None
    cudnn_archive_sha256: str | None = None
    pip_index_url: str = "https://pypi.org/simple"
    #: Extra wheel locations (a directory URL or path); with pip_no_index the only source.
    pip_find_links: str | None = None
    pip_no_index: bool = False

    def problems(self) -> list[str]:
        found = [host_names.repo_path_problem("cuda_repo_path", self.cuda_repo_path),
                 host_names.version_problem("cuda_keyring_version", self.cuda_keyring_version)]
        return [p for p in found if p] + _source_problems(self)


@dataclass(frozen=True)
class Venv(_Group):
    """The Piper venv: where it lives and the pinned distributions it holds."""

    # --- the venv ------------------------------------------------------------------------
    piper_tts_version: str = "1.8.0"
    onnxruntime_gpu_version: str = DEFAULT_ORT_GPU
    #: Pins over the lock for the host's Python (piper_gpu/locks/python<X.Y>.txt); after preflight
    #: (``for_host``), the whole lock the venv gets.
    python_lock: dict[str, str] = field(default_factory=dict)
    #: The host's python3 (set by preflight; the lock is chosen by it).
    python_version: str | None = None
    piper_dir: str = "~/piper_env"
    venv_dir: str = "~/piper_env/.venv"

    def problems(self) -> list[str]:
        # the versions are checked against CUDA's in the version matrix (settings.py)
        found = [host_names.host_dir_problem(name, getattr(self, name)) for name in ("piper_dir", "venv_dir")]
        return [p for p in found if p]


@dataclass(frozen=True)
class Voices(_Group):
    """The voices the server loads, where they come from and where they go."""

    # --- voices --------------------------------------------------------------------------
    voices_base_url: str = "https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0"
    voices: tuple[Voice, ...] = (Voice(name="zh_CN-huayan-medium"),)
    models_dir: str = "~/piper_models"

    def problems(self) -> list[str]:
        problems = [host_names.host_dir_problem("models_dir", self.models_dir) or "", *_source_problems(self)]
        for v in self.voices:
            problems.append(host_names.component_problem("voice name", v.name) or "")
            if v.lang is not None:
                problems.append(host_names.component_problem(f"voice {v.name}: lang", v.lang) or "")
            if v.url is not None:
                problems.append(sources.problem(f"voice {v.name}: url", v.url, "dir") or "")
        names = [v.name for v in self.voices]
        if not names:
            problems.append("voices: at least one voice is needed")
        if len(names) != len(set(names)):
            problems.append(f"voices: duplicate names in {names}")
        for v in self.voices:
            for what, suffix, digest in (("onnx_sha256", ".onnx", v.onnx_sha256),
                                         ("json_sha256", ".onnx.json", v.json_sha256)):
                if digest is None:
                    problems.append(
                        f"voice {v.name}: {what} is not pinned. Every download is verified: on a machine that "
                        f"reaches {naming.voice_url(self.voices_base_url, v, suffix)}, run "
                        "`python -m piper_gpu pin-voices` (with your inventory's voices) and put the "
                        f"{data_key('voices')} it prints into your group data"
                    )
                elif not re.fullmatch(r"[0-9a-f]{64}", digest):
                    problems.append(f"voice {v.name}: {what}={digest!r} is not a sha256 hex digest")
        return [p for p in problems if p]


def _ip_address(value: Any) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _seconds(value: Any) -> bool:
    """A finite number (server.toml holds no infinity or NaN, and the server refuses them)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_seconds(value: Any) -> bool:
    return _seconds(value) and value > 0


def _buckets_ok(value: Any) -> bool:
    if value == "auto":
        return True
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) and value.strip() else []
    return isinstance(value, str) and all(p.isdigit() and int(p) > 0 for p in parts)


# --- the server's settings, as the server defines them ---------------------------------------
#: The server's settings (server.toml) the deploy passes on, each under its own name (piper_gpu_<name>):
#: its type, default and meaning are the server's, read from ServerConfig in
#: server/src/piper_gpu_server/config.py (server_fields.py says why it is read, not imported). The
#: server's other settings are the deploy's to set: host (bind_address), voices, log_file, api_key_file
#: (api_key); intra_op_threads and max_body_bytes stay the server's defaults.
SERVER_SETTINGS = frozenset({
    "port", "use_gpu", "cuda_options", "warmup", "shape_stable", "phoneme_buckets", "frame_buckets",
    "encoder_provider", "max_text_chars", "max_pending", "syntheses_per_voice", "concurrent_session",
    "concurrent_intra_op_threads", "cpu_memory_arena", "memory_release_idle", "sentence_max_chars",
    "read_timeout", "body_timeout", "write_timeout", "keep_alive_timeout", "max_connections", "graceful_timeout",
})
#: Where the deploy's default is not the server's: that value is not written to server.toml, so the
#: server's own default applies (the buckets: "", so that an inventory that never set them follows the server's
#: default, "auto" today, as the server changes it).
NOT_WRITTEN: dict[str, Any] = {"phoneme_buckets": "", "frame_buckets": ""}
#: What the deploy adds to a server setting's meaning.
SERVER_NOTES: dict[str, str] = {
    "phoneme_buckets": '"": none written, the server\'s own apply',
    "frame_buckets": '"": none written, the server\'s own apply',
    "graceful_timeout": "a stop of the service, by the systemd unit (TimeoutStopSec) or by piper-tts-ctl, sends "
                        "SIGKILL graceful_timeout + 30 s after SIGTERM",
}
SERVER_FIELDS = server_fields.server_fields()
ENCODER_PROVIDERS: tuple[str, ...] = server_fields.server_constant("ENCODER_PROVIDERS")


def server_meaning(name: str) -> str:
    """A passed-on setting's meaning: the server's, then what the deploy adds."""
    return "; ".join(filter(None, (SERVER_FIELDS[name].meaning, SERVER_NOTES.get(name, ""))))


def _server_field(name: str) -> tuple[str, str, Any]:
    """(name, type, field) of a passed-on setting: the server's type and default, or the deploy's default."""
    f = SERVER_FIELDS.get(name)
    if f is None:
        raise RuntimeError(f"{server_fields.config_source()[0]}: ServerConfig has no field {name!r}, which the "
                           "deploy passes on (piper_gpu/inputs.py SERVER_SETTINGS)")
    default = NOT_WRITTEN.get(name, f.default)
    if default is server_fields.NOT_LITERAL or default is dataclasses.MISSING:
        raise RuntimeError(f"{server_fields.config_source()[0]}: ServerConfig.{name}'s default is no literal: "
                           "give the deploy's in piper_gpu/inputs.py NOT_WRITTEN")
    return name, f.type, field(default=default)


#: The passed-on settings as a group of their own, in the server's order: the base of ``Service``.
ServerSettings = dataclasses.make_dataclass(
    "ServerSettings", [_server_field(name) for name in SERVER_FIELDS if name in SERVER_SETTINGS], frozen=True,
    namespace={"__module__": __name__,
               "__doc__": "The server's settings the deploy passes on: ServerConfig's fields of these names."})
assert {f.name for f in dataclasses.fields(ServerSettings)} == set(SERVER_SETTINGS), "a passed-on setting is missing"


@dataclass(frozen=True)
class Service(ServerSettings, _Group):
    """The service (who runs it, how it starts) and the server's behaviour (server.toml): the server's
    settings in ``SERVER_SETTINGS`` (its types, defaults and meanings), then the deploy's own."""

    # --- the service and server ----------------------------------------------------------
    service_user: str = "piper"
    #: Create ``service_user`` if missing (a WSL2 login user already exists).
    create_service_user: bool = True
    #: The address the service listens on: an IP address (127.0.0.1: this machine only; 0.0.0.0: every
    #: address), or "auto": the address the old CPU server found on this host listened on (carried over,
    #: said in the run's output), else 127.0.0.1.
    bind_address: str = "auto"
    #: "auto" (systemd when it runs as PID 1, else profile), "systemd" or "profile".
    service_mode: str = "auto"
    #: Requires ``Authorization: Bearer <key>`` (or ``X-API-Key``) on POST /tts; stored on the host
    #: in /etc/piper-gpu/api-key (root:service user, 0640), never in the server's config file.
    api_key: str | None = None

    def server_values(self) -> dict[str, Any]:
        """The passed-on settings as server.toml holds them: each in the server's type (a float field's
        5 as 5.0); a ``NOT_WRITTEN`` value left out (the server's own default applies)."""
        out = {}
        for f in dataclasses.fields(ServerSettings):  # in the server's order
            value = getattr(self, f.name)
            if f.name not in NOT_WRITTEN or value != NOT_WRITTEN[f.name]:
                out[f.name] = float(value) if f.type == "float" else value
        return out

    def problems(self) -> list[str]:
        problems: list[str] = []

        def check(cond: bool, msg: str) -> None:
            if not cond:
                problems.append(msg)

        problems.append(host_names.user_name_problem("service_user", self.service_user) or "")
        check(self.bind_address == "auto" or _ip_address(self.bind_address),
              f"bind_address={self.bind_address!r}: use 'auto', or an IP address such as 127.0.0.1 (this machine "
              "only) or 0.0.0.0 (every address)")
        check(self.service_mode in ("auto", "systemd", "profile"),
              f"service_mode={self.service_mode!r}: use 'auto', 'systemd' or 'profile'")
        check(isinstance(self.port, int) and 0 < self.port < 65536, f"port={self.port!r} is not a TCP port")
        check(self.max_text_chars > 0, "max_text_chars must be positive")
        check(self.max_pending > 0, "max_pending must be positive")
        check(isinstance(self.max_connections, int) and self.max_connections > 0,
              "max_connections must be a positive integer")
        check(isinstance(self.syntheses_per_voice, int) and self.syntheses_per_voice >= 0,
              "syntheses_per_voice must be 0 (8 on CUDA, 4 on the CPU) or a positive integer")
        check(isinstance(self.sentence_max_chars, int) and self.sentence_max_chars >= 20,
              "sentence_max_chars must be an integer of at least 20")
        for name in ("read_timeout", "body_timeout", "write_timeout", "keep_alive_timeout", "graceful_timeout"):
            check(_positive_seconds(getattr(self, name)), f"{name} must be a positive number of seconds")
        check(_seconds(self.memory_release_idle) and self.memory_release_idle >= 0,
              "memory_release_idle must be 0 (never) or a positive number of seconds")
        check(isinstance(self.concurrent_intra_op_threads, int) and self.concurrent_intra_op_threads >= 0,
              "concurrent_intra_op_threads must be 0 (automatic) or a positive integer")
        check(isinstance(self.cuda_options, str) and all(
                  k.strip() and v.strip() and sep
                  for k, sep, v in (item.partition("=") for item in self.cuda_options.split(",") if item.strip())),
              f"cuda_options={self.cuda_options!r} must be \"key=value,key=value\" (e.g. cudnn_conv_algo_search=DEFAULT)")
        check(self.shape_stable in ("auto", "on", "off"),
              f"shape_stable={self.shape_stable!r}: use 'auto' (on where a voice runs on CUDA), 'on' or 'off'")
        check(self.encoder_provider in ENCODER_PROVIDERS,
              f"encoder_provider={self.encoder_provider!r}: use 'auto' (cpu until the GPU figures are measured), "
              "'cpu' or 'cuda'")
        for name in ("phoneme_buckets", "frame_buckets"):
            value = getattr(self, name)
            check(_buckets_ok(value),
                  f"{name}={value!r} must be \"\" (the server's default), \"auto\" (from the longest piece) or "
                  "comma-separated lengths, e.g. \"128,256,512\"")
        check(self.api_key is None or (isinstance(self.api_key, str) and len(self.api_key) >= 16
                                       and self.api_key == self.api_key.strip()),
              "api_key must be at least 16 characters, without leading or trailing whitespace (an empty key file "
              "would stop the server; e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')")
        return [p for p in problems if p]


OLD_SERVER_MODES = ("migrate", "refuse")


@dataclass(frozen=True)
class Migration(_Group):
    """What the deploy does with the CPU server the manual setup left on the host (docs/migrate.md)."""

    # --- the old CPU server --------------------------------------------------------------
    #: "migrate": stop the old server (SIGTERM), turn its autostart lines and units off and move its
    #: script to a dated backup, each named in the run's output and put back by undeploy; "refuse": stop
    #: the run before any change when one is found. Anything on ``port`` that is not a Piper server
    #: stops the run either way.
    old_server: str = "migrate"
    #: More paths of the old server's script (absolute or ~/...), besides piper_http_server.py under the
    #: service user's home and the script a running old server was started with.
    old_server_scripts: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        problems = []
        if self.old_server not in OLD_SERVER_MODES:
            problems.append(f"old_server={self.old_server!r}: use 'migrate' (stop it, keep its files aside) or "
                            "'refuse' (stop the run when one is found)")
        scripts = self.old_server_scripts
        if isinstance(scripts, str) or not isinstance(scripts, (list, tuple)):
            problems.append(f"old_server_scripts={scripts!r}: give a list of paths, e.g. [\"~/tts/piper_http_server.py\"]")
        else:
            problems += [p for p in (host_names.script_path_problem("old_server_scripts", v) for v in scripts) if p]
        return problems


@dataclass(frozen=True)
class Undeploy(_Group):
    """What undeploy.py removes besides the service and its files."""

    # --- undeploy.py ---------------------------------------------------------------------
    #: Also delete the voices (models_dir).
    undeploy_voices: bool = False
    #: Also purge the CUDA/cuDNN packages, and the base packages and service user the deploy
    #: added (recorded in /var/lib/piper-gpu when it added them).
    undeploy_system: bool = False

    def problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class Checks(_Group):
    """The preflight's GPU requirement and verify's performance test."""

    # --- checks --------------------------------------------------------------------------
    #: Provision hosts without a usable NVIDIA GPU/driver (build machines, tests). Loud.
    allow_no_gpu: bool = False
    #: Verify: GPU must be at least this many times faster than CPU on the medium text.
    min_speedup: float = 2.0
    perf_runs: int = 5

    def problems(self) -> list[str]:
        return [] if self.min_speedup > 0 else ["min_speedup must be positive"]


#: The groups in the order of the reference (docs/settings.md): the ``Settings`` attribute of each, its class.
GROUPS: tuple[tuple[str, type], ...] = (
    ("cuda", Cuda), ("sources", Sources), ("venv", Venv), ("models", Voices), ("service", Service),
    ("migration", Migration), ("undeploy", Undeploy), ("checks", Checks),
)
