"""The deploy's inputs: one typed place for their defaults, how pyinfra data overrides them, and
their validation. Other concerns live apart: the version matrix (matrix.py), the platform table
(platforms.py), NVIDIA's naming rules and the bundle layout (naming.py), host paths (target.py).

Every field ``x`` is read from the pyinfra data key ``piper_gpu_x`` (inventory host data,
group_data/*.py, ``--data piper_gpu_x=value``, or the ``data_defaults`` of ``deploy_piper_gpu``).
The prefix keeps the deploy's keys apart from other deploys' in a shared inventory; the
unprefixed names of earlier releases are refused, naming the new key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote


from piper_gpu import locks, matrix, naming, platforms, sources
from piper_gpu.errors import SettingsError  # noqa: F401 - imported from here by the CLI and the tests
from piper_gpu.matrix import CUDA_WHEELS_12_4, CUDNN_ARCHIVE_SHA256, DEFAULT_ORT_GPU, ONNXRUNTIME_DISTRIBUTIONS

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


CUDNN_SOURCES = ("auto", "repo", "local-repo", "archive", "wheel", "local-deb")


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
class Settings:
    # --- versions (mutually compatible defaults) ------------------------------------------
    cuda_version: str = "12.4"
    #: "toolkit" = cuda-toolkit-X-Y (nvcc included); "runtime" = cuda-libraries-X-Y only.
    cuda_install: str = "toolkit"
    cudnn_version: str = "9.1.1.17"
    #: CUDA version the cuDNN build targets; None = from CUDNN_BUILT_FOR.
    cudnn_cuda_version: str | None = None
    onnxruntime_gpu_version: str = DEFAULT_ORT_GPU
    piper_tts_version: str = "1.8.0"
    #: Pins over the lock for the host's Python (piper_gpu/locks/python<X.Y>.txt); after preflight
    #: (``for_host``), the whole lock the venv gets.
    python_lock: dict[str, str] = field(default_factory=dict)
    #: The host's python3 (set by preflight; the lock is chosen by it).
    python_version: str | None = None

    # --- sources (every download can come from a mirror or a local path) -------------------
    #: An offline bundle (``python -m piper_gpu bundle``): file:///path or http://host:port.
    #: Set, it replaces every source below: the CUDA repository, wheels, voices, cuDNN files.
    bundle_url: str | None = None
    #: "apt": NVIDIA's CUDA apt repository (toolkit or runtime packages);
    #: "pip": NVIDIA's nvidia-*-cu12 wheels installed into the Piper venv, the service's linker
    #: pointed at them; no apt repository, no nvcc. "auto": the platform table's default.
    cuda_source: str = "auto"
    #: With cuda_source="pip": the CUDA library wheels (name -> version) for ``cuda_version``.
    cuda_wheels: dict[str, str] = field(default_factory=lambda: dict(CUDA_WHEELS_12_4))
    cuda_repo_url: str = "https://developer.download.nvidia.com/compute/cuda/repos"
    #: None = chosen from the distro (wsl-ubuntu, ubuntu2204, ubuntu2404, debian12).
    cuda_repo_path: str | None = None
    cuda_keyring_version: str = "1.1-1"
    #: sha256 of cuda-keyring_<version>_all.deb; None = verified by the key fingerprint only.
    cuda_keyring_sha256: str | None = None
    #: Fingerprint of the key the keyring must install (NVIDIA's CUDA repository key, 3bf863cc).
    cuda_repo_key_fingerprint: str = "EB693B3035CD5710E231E123A4B469963BF863CC"
    #: Where cuDNN comes from (piper_gpu/platforms.py explains each): "auto" (the platform table's
    #: default), "repo", "local-repo", "archive", "wheel" or "local-deb".
    cudnn_source: str = "auto"
    #: With "local-repo": NVIDIA's local installer cudnn-local-repo-<distro>-<release>_1.0-1_amd64.deb
    #: (a URL, file:// URL or a path on the host, e.g. /mnt/c/Users/you/Downloads/...) and its sha256.
    cudnn_local_repo_url: str | None = None
    cudnn_local_repo_sha256: str | None = None
    #: With "local-deb": an operator-supplied libcudnn9-cuda-12 .deb (URL or path) and its sha256.
    cudnn_deb_url: str | None = None
    cudnn_deb_sha256: str | None = None
    #: With "local-deb" or "local-repo": unpack the library .deb under /opt instead of installing it
    #: (when its dependencies do not fit the distro); the linker config then points there.
    cudnn_deb_extract: bool = False
    #: With "archive": NVIDIA's redistributable archive. None = ``cudnn_redist_url`` + NVIDIA's file
    #: name, and the sha256 NVIDIA's redistrib_<release>.json lists (piper_gpu/matrix.py).
    cudnn_redist_url: str = "https://developer.download.nvidia.com/compute/cudnn/redist"
    cudnn_archive_url: str | None = None
    cudnn_archive_sha256: str | None = None
    pip_index_url: str = "https://pypi.org/simple"
    #: Extra wheel locations (a directory URL or path); with pip_no_index the only source.
    pip_find_links: str | None = None
    pip_no_index: bool = False
    voices_base_url: str = "https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0"
    voices: tuple[Voice, ...] = (Voice(name="zh_CN-huayan-medium"),)

    # --- layout -------------------------------------------------------------------------
    service_user: str = "piper"
    #: Create ``service_user`` if missing (a WSL2 login user already exists).
    create_service_user: bool = True
    piper_dir: str = "~/piper_env"
    venv_dir: str = "~/piper_env/.venv"
    models_dir: str = "~/piper_models"

    # --- service ------------------------------------------------------------------------
    port: int = 5005
    bind_address: str = "127.0.0.1"
    #: "auto" (systemd when it runs as PID 1, else profile), "systemd" or "profile".
    service_mode: str = "auto"
    use_gpu: bool = True
    max_text_chars: int = 2000
    #: Warm-up synthesis per voice at start (first request otherwise pays for CUDA init).
    warmup: bool = True
    #: Requires ``Authorization: Bearer <key>`` (or ``X-API-Key``) on POST /tts; stored on the host
    #: in /etc/piper-gpu/api-key (root:service user, 0640), never in the server's config file.
    api_key: str | None = None
    #: Requests synthesising or waiting at once; beyond it POST /tts answers 503 with Retry-After.
    max_pending: int = 8
    #: Syntheses one voice runs at once on its ONNX session; 0: 8 on CUDA, 4 on the CPU (docs/results.md: "On a GPU").
    syntheses_per_voice: int = 0
    #: Longest piece of a text synthesised in one go (longer sentences are cut at a clause break or space).
    sentence_max_chars: int = 200
    #: Seconds a client may stall while sending a request body before it is dropped.
    read_timeout: float = 10.0
    #: Seconds a whole request body may take, however slowly it comes (408 after); it is read before
    #: the request takes one of the max_pending places.
    body_timeout: float = 30.0
    #: Seconds an answer's writes may wait for a client that reads slowly: each 64 KiB at most this,
    #: all together this plus the audio's seconds; a client that reads slower is dropped.
    write_timeout: float = 10.0
    #: Seconds an idle kept-alive connection (or one whose request headers stop coming) stays open.
    keep_alive_timeout: float = 5.0
    #: Open connections at most; more are closed as they are accepted.
    max_connections: int = 256
    #: Seconds a stop (SIGTERM) waits for requests in progress (the unit's TimeoutStopSec is above it).
    graceful_timeout: float = 60.0
    #: ONNX Runtime's CPU memory arena: buffers kept between pieces (faster on the CPU), handed back
    #: after ``memory_release_idle`` idle seconds; off, they go back after every piece.
    cpu_memory_arena: bool = True
    #: Seconds a voice stays idle before its buffers go back to the system; 0: never.
    memory_release_idle: float = 30.0
    #: On the CPU, a second session per voice with fewer threads for pieces that start while others run.
    concurrent_session: bool = True
    #: Its intra-op threads; 0: the server's CPUs divided by syntheses_per_voice (at least 1).
    concurrent_intra_op_threads: int = 0
    #: The CUDA provider's options over the server's (cudnn_conv_algo_search=HEURISTIC), as
    #: "key=value,key=value" in ONNX Runtime's names (docs/results.md: "On a GPU" has the measurements).
    cuda_options: str = ""
    #: Shape-stable synthesis: "auto" (on for a voice whose session runs on CUDA), "on" or "off" (the
    #: whole model, as Piper runs it). docs/results.md "On a GPU": why onnxruntime >= 1.20 needs it.
    shape_stable: str = "auto"
    #: Its buckets, comma-separated: phoneme ids and frames per piece; "": the server's defaults.
    phoneme_buckets: str = ""
    frame_buckets: str = ""

    # --- undeploy.py ----------------------------------------------------------------------
    #: Also delete the voices (models_dir).
    undeploy_voices: bool = False
    #: Also purge the CUDA/cuDNN packages, and the base packages and service user the deploy
    #: added (recorded in /var/lib/piper-gpu when it added them).
    undeploy_system: bool = False

    # --- checks -------------------------------------------------------------------------
    #: Provision hosts without a usable NVIDIA GPU/driver (build machines, tests). Loud.
    allow_no_gpu: bool = False
    #: Verify: GPU must be at least this many times faster than CPU on the medium text.
    min_speedup: float = 2.0
    perf_runs: int = 5

    # --- NVIDIA's names for these versions (naming.py) ------------------------------------
    @property
    def cuda_major(self) -> int:
        return naming.major_minor(self.cuda_version, "cuda_version")[0]

    @property
    def cuda_dash(self) -> str:
        return naming.cuda_dash(self.cuda_version)

    @property
    def cuda_home(self) -> str:
        return naming.cuda_home(self.cuda_version)

    @property
    def cudnn_major(self) -> int:
        return naming.major_minor(self.cudnn_version, "cudnn_version")[0]

    @property
    def cudnn_release(self) -> str:
        return naming.release(self.cudnn_version)

    @property
    def cudnn_built_for(self) -> str:
        return self.cudnn_cuda_version or matrix.cudnn_built_for(self.cudnn_version)

    @property
    def cudnn_package(self) -> str:
        return naming.cudnn_package(self.cudnn_version, self.cuda_version)

    @property
    def cudnn_apt_version(self) -> str:
        return naming.cudnn_apt_version(self.cudnn_version)

    @property
    def cuda_packages(self) -> list[str]:
        return naming.cuda_packages(self.cuda_version, self.cuda_install)

    def cuda_lib_dir(self, arch: str = "x86_64") -> str:
        return naming.cuda_lib_dir(self.cuda_version, arch)

    @property
    def cudnn_wheel(self) -> str:
        return naming.cudnn_wheel(self.cuda_version)

    @property
    def cudnn_archive_name(self) -> str:
        return naming.cudnn_archive_name(self.cudnn_version, self.cuda_version)

    # --- sources ---------------------------------------------------------------------------
    def voice_url(self, voice: Voice, suffix: str) -> str:
        base = voice.url or f"{self.voices_base_url.rstrip('/')}/{voice.hf_path()}"
        return f"{base.rstrip('/')}/{voice.name}{suffix}"

    def pip_source_args(self) -> list[str]:
        args = ["--no-index"] if self.pip_no_index else ["--index-url", self.pip_index_url]
        if self.pip_find_links:
            args += ["--find-links", self.pip_find_links]
        return args

    # --- the install plan for a host -----------------------------------------------------------
    def cuda_wheel_requirements(self) -> dict[str, str]:
        """NVIDIA's wheels the venv holds: the CUDA libraries with cuda_source="pip", cuDNN with
        cudnn_source="wheel" (which cuda_source="pip" implies)."""
        wheels = dict(self.cuda_wheels) if self.cuda_source == "pip" else {}
        if self.cudnn_source == "wheel" or self.cuda_source == "pip":
            wheels[self.cudnn_wheel] = self.cudnn_version
        return wheels

    @property
    def cudnn_archive(self) -> tuple[str, str | None]:
        """(URL, sha256) of the redistributable archive: the settings, else NVIDIA's layout under
        ``cudnn_redist_url`` (cudnn/linux-x86_64/<name>) and the digest of NVIDIA's manifest."""
        url = self.cudnn_archive_url or naming.cudnn_archive_url(self.cudnn_redist_url, self.cudnn_version,
                                                                 self.cuda_version)
        digest = self.cudnn_archive_sha256 or CUDNN_ARCHIVE_SHA256.get((self.cudnn_version, "x86_64", self.cuda_major))
        return url, digest

    def lock(self) -> dict[str, str]:
        """The venv lock without the top-level pins: the resolved lock for ``python_version`` under
        the ``python_lock`` pins (after ``for_host``, ``python_lock`` is the whole lock)."""
        base = locks.load(self.python_version) if self.python_version in locks.available() else {}
        return {**base, **self.python_lock}

    def for_host(self, platform: "platforms.Platform", python: str,
                 automount_root: str = sources.DEFAULT_AUTOMOUNT_ROOT) -> "Settings":
        """These settings on a host: "auto" sources from the platform table, the lock for its Python,
        local files and directories as the host's paths (Windows paths under its automount root)."""
        cuda_source = platform.cuda_source if self.cuda_source == "auto" else self.cuda_source
        cudnn_source = self.cudnn_source
        if cudnn_source == "auto":
            cudnn_source = "wheel" if cuda_source == "pip" else platform.cudnn_source
        paths = {name: sources.on_host(getattr(self, name), kind, automount_root)
                 for name, kind in sources.SOURCE_SETTINGS.items() if getattr(self, name)}
        voices = tuple(dataclasses.replace(v, url=sources.on_host(v.url, "dir", automount_root)) if v.url else v
                       for v in self.voices)
        resolved = dataclasses.replace(self, cuda_source=cuda_source, cudnn_source=cudnn_source, python_version=python,
                                       voices=voices, **paths)
        return dataclasses.replace(resolved, python_lock=resolved.lock())

    def local_sources(self) -> dict[str, tuple[str, str]]:
        """The sources this deploy reads that are files or directories on the host: setting -> (path,
        "file" | "dir") (after ``for_host``, which turned Windows paths into the host's); the cuDNN
        files of the sources not chosen are left out."""
        out = {}
        unused = {"local-repo": {"cudnn_deb_url", "cudnn_archive_url"}, "local-deb": {"cudnn_local_repo_url", "cudnn_archive_url"},
                  "archive": {"cudnn_local_repo_url", "cudnn_deb_url"}}.get(
            self.cudnn_source, {"cudnn_local_repo_url", "cudnn_deb_url", "cudnn_archive_url"})
        named = [(name, getattr(self, name), kind) for name, kind in sources.SOURCE_SETTINGS.items()
                 if kind != "url" and name not in unused]
        named += [(f"voices[{v.name}].url", v.url, "dir") for v in self.voices]
        for name, value, kind in named:
            path = sources.local_path(value) if value and not sources.problem(name, value, kind) else None
            if path is not None:
                out[name] = (path, kind)
        return out

    def python_requirements(self) -> dict[str, str]:
        """Every distribution the venv must hold, pinned (name -> version)."""
        reqs = self.lock()
        reqs["piper-tts"] = self.piper_tts_version
        reqs["onnxruntime-gpu"] = self.onnxruntime_gpu_version
        reqs.update(self.cuda_wheel_requirements())
        return reqs

    def venv_requirements(self) -> dict[str, str]:
        """``python_requirements`` and the server package (built from server/ by the deploy, not on PyPI)."""
        from piper_gpu import server_wheel

        return {**self.python_requirements(), server_wheel.DIST: server_wheel.source_version()}

    def to_json(self) -> str:
        """The applied settings as recorded on the host (secrets left out)."""
        data = dataclasses.asdict(self)
        data["api_key"] = None
        data["voices"] = [dataclasses.asdict(v) for v in self.voices]
        # NVIDIA's names and the install plan for these settings, so that verify needs no code of the
        # deploy to know what should be there (from_fields reads only the fields back)
        data["derived"] = {
            "cuda_major": self.cuda_major, "cuda_dash": self.cuda_dash, "cuda_home": self.cuda_home,
            "cuda_packages": self.cuda_packages, "cudnn_major": self.cudnn_major, "cudnn_release": self.cudnn_release,
            "cudnn_built_for": self.cudnn_built_for, "cudnn_package": self.cudnn_package,
            "cudnn_apt_version": self.cudnn_apt_version, "cudnn_wheel": self.cudnn_wheel,
            "python_requirements": self.venv_requirements(),
            "cuda_wheel_requirements": self.cuda_wheel_requirements(),
            "onnxruntime_distributions": list(ONNXRUNTIME_DISTRIBUTIONS),
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    # ---------------------------------------------------------------------------------------
    def validate(self) -> "Settings":
        """Reject invalid values and incompatible version combinations. Returns self."""
        problems: list[str] = []

        def check(cond: bool, msg: str) -> None:
            if not cond:
                problems.append(msg)

        check(self.cuda_install in ("toolkit", "runtime"),
              f"cuda_install={self.cuda_install!r}: use 'toolkit' or 'runtime'")
        check(self.cudnn_source in CUDNN_SOURCES,
              f"cudnn_source={self.cudnn_source!r}: use one of {', '.join(repr(c) for c in CUDNN_SOURCES)}")
        check(self.cuda_source in ("auto", "apt", "pip"), f"cuda_source={self.cuda_source!r}: use 'auto', 'apt' or 'pip'")
        if self.cuda_source == "pip":
            check(self.cudnn_source in ("auto", "wheel"),
                  f"cudnn_source={self.cudnn_source!r} applies to cuda_source='apt'; with cuda_source='pip' "
                  f"cuDNN is the {self.cudnn_wheel}=={self.cudnn_version} wheel (leave cudnn_source unset)")
            runtime = self.cuda_wheels.get(f"nvidia-cuda-runtime-cu{self.cuda_major}", "")
            check(runtime.startswith(f"{self.cuda_version}."),
                  f"cuda_wheels pins nvidia-cuda-runtime-cu{self.cuda_major}=={runtime or '(none)'}, not a CUDA "
                  f"{self.cuda_version} release: set cuda_wheels to NVIDIA's CUDA {self.cuda_version} wheels")
            wrong = sorted(n for n in self.cuda_wheels if not n.endswith(f"-cu{self.cuda_major}"))
            check(not wrong, f"cuda_wheels: {wrong} are not CUDA {self.cuda_major} wheels (-cu{self.cuda_major})")
        check(self.service_mode in ("auto", "systemd", "profile"),
              f"service_mode={self.service_mode!r}: use 'auto', 'systemd' or 'profile'")
        check(isinstance(self.port, int) and 0 < self.port < 65536, f"port={self.port!r} is not a TCP port")
        check(self.max_text_chars > 0, "max_text_chars must be positive")
        check(self.max_pending > 0, "max_pending must be positive")
        check(isinstance(self.max_connections, int) and self.max_connections > 0, "max_connections must be a positive integer")
        check(isinstance(self.syntheses_per_voice, int) and self.syntheses_per_voice >= 0,
              "syntheses_per_voice must be 0 (8 on CUDA, 4 on the CPU) or a positive integer")
        check(isinstance(self.sentence_max_chars, int) and self.sentence_max_chars >= 20,
              "sentence_max_chars must be an integer of at least 20")
        for name in ("read_timeout", "body_timeout", "write_timeout", "keep_alive_timeout", "graceful_timeout"):
            check(isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0,
                  f"{name} must be a positive number of seconds")
        check(isinstance(self.memory_release_idle, (int, float)) and self.memory_release_idle >= 0,
              "memory_release_idle must be 0 (never) or a positive number of seconds")
        check(isinstance(self.concurrent_intra_op_threads, int) and self.concurrent_intra_op_threads >= 0,
              "concurrent_intra_op_threads must be 0 (automatic) or a positive integer")
        check(isinstance(self.cuda_options, str) and all(
                  k.strip() and v.strip() and sep
                  for k, sep, v in (item.partition("=") for item in self.cuda_options.split(",") if item.strip())),
              f"cuda_options={self.cuda_options!r} must be \"key=value,key=value\" (e.g. cudnn_conv_algo_search=DEFAULT)")
        check(self.shape_stable in ("auto", "on", "off"),
              f"shape_stable={self.shape_stable!r}: use 'auto' (on where a voice runs on CUDA), 'on' or 'off'")
        for name in ("phoneme_buckets", "frame_buckets"):
            value = getattr(self, name)
            parts = [p.strip() for p in value.split(",")] if isinstance(value, str) and value.strip() else []
            check(isinstance(value, str) and all(p.isdigit() and int(p) > 0 for p in parts),
                  f"{name}={value!r} must be \"\" (the server's defaults) or comma-separated lengths, e.g. \"128,256,512\"")
        check(self.api_key is None or (isinstance(self.api_key, str) and len(self.api_key) >= 16
                                       and self.api_key == self.api_key.strip()),
              "api_key must be at least 16 characters, without leading or trailing whitespace (an empty key file "
              "would stop the server; e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')")
        check(self.min_speedup > 0, "min_speedup must be positive")
        for name, kind in sources.SOURCE_SETTINGS.items():
            if getattr(self, name) is not None:
                problems.append(sources.problem(name, getattr(self, name), kind) or "")
        for v in self.voices:
            if v.url is not None:
                problems.append(sources.problem(f"voice {v.name}: url", v.url, "dir") or "")
        problems[:] = [p for p in problems if p]
        if self.cudnn_source == "local-deb":
            check(bool(self.cudnn_deb_url and self.cudnn_deb_sha256),
                  "cudnn_source='local-deb' needs cudnn_deb_url and cudnn_deb_sha256")
        if self.cudnn_source == "local-repo":
            check(bool(self.cudnn_local_repo_url and self.cudnn_local_repo_sha256),
                  "cudnn_source='local-repo' needs cudnn_local_repo_url (the path or URL of your "
                  f"cudnn-local-repo-<distro>-{self.cudnn_release}_1.0-1_amd64.deb) and cudnn_local_repo_sha256 "
                  "(sha256sum of that file)")
        if self.cudnn_source == "archive":
            check(self.cudnn_archive[1] is not None,
                  f"cudnn_source='archive': no sha256 known for {self.cudnn_archive_name}; set cudnn_archive_sha256 "
                  f"to the value NVIDIA's {self.cudnn_redist_url.rstrip('/')}/redistrib_{self.cudnn_release}.json lists")
        names = [v.name for v in self.voices]
        check(len(names) > 0, "voices: at least one voice is needed")
        check(len(names) == len(set(names)), f"voices: duplicate names in {names}")
        for v in self.voices:
            for what, digest in (("onnx_sha256", v.onnx_sha256), ("json_sha256", v.json_sha256)):
                if digest is None:
                    problems.append(
                        f"voice {v.name}: {what} is not pinned. Every download is verified: on a machine that "
                        f"reaches {self.voice_url(v, '.onnx' if what == 'onnx_sha256' else '.onnx.json')}, run "
                        "`python -m piper_gpu pin-voices` (with your inventory's voices) and put the "
                        f"{data_key('voices')} it prints into your group data"
                    )
                elif not re.fullmatch(r"[0-9a-f]{64}", digest):
                    problems.append(f"voice {v.name}: {what}={digest!r} is not a sha256 hex digest")
        for name in self.cuda_packages:
            for pat in WSL_FORBIDDEN_PACKAGE_PATTERNS:
                check(not re.match(pat, name),
                      f"package {name} pulls in a Linux NVIDIA driver; use cuda-toolkit-X-Y "
                      "or cuda-libraries-X-Y")
        try:
            self._check_matrix()
        except SettingsError as exc:
            problems.append(str(exc))
        if problems:
            raise SettingsError("invalid piper-gpu settings:\n  - " + "\n  - ".join(problems))
        return self

    def _check_matrix(self) -> None:
        matrix.check(self.onnxruntime_gpu_version, self.cuda_version, self.cudnn_version, self.cudnn_built_for,
                     self.python_version, SettingsError)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Values from ``--data key=value`` arrive as strings; convert to the field's type."""
    if isinstance(default, bool) and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={value!r} is not a boolean")
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r} is not an integer") from None
    if isinstance(default, float) and isinstance(value, (str, int)):
        try:
            return float(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r} is not a number") from None
    return value


def from_fields(values: Mapping[str, Any], validate: bool = True) -> Settings:
    """Settings from a mapping of field names (the host's recorded settings, the lab, unit tests).

    Only keys naming a Settings field are read. ``bundle_url`` set: every source from the bundle.
    """
    defaults = Settings()
    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        value = values.get(f.name)
        if value is None:
            continue
        if f.name == "voices":
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else value.split(",")
            value = tuple(Voice.parse(v) for v in value)
        elif f.name in ("python_lock", "cuda_wheels"):
            value = dict(json.loads(value) if isinstance(value, str) else value)
        else:
            value = _coerce(data_key(f.name), value, getattr(defaults, f.name))
        overrides[f.name] = value
    settings = dataclasses.replace(defaults, **overrides)
    if settings.bundle_url:
        if not sources.problem("bundle_url", settings.bundle_url, "dir"):  # a path: the URL its sources extend
            settings = dataclasses.replace(settings, bundle_url=sources.as_url(settings.bundle_url))
        settings = dataclasses.replace(settings, **bundle_sources(settings))
    return settings.validate() if validate else settings


# --- pyinfra data keys ------------------------------------------------------------------------
DATA_PREFIX = "piper_gpu_"
FIELDS = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "python_version")  # python_version: preflight's

#: Unprefixed names that other deploys in a shared inventory plausibly use for their own settings:
#: found in host data they are not refused, only named in a warning. Every other old name is ours
#: alone and refused.
GENERIC_NAMES = frozenset({
    "port", "bind_address", "api_key", "service_user", "create_service_user", "service_mode", "use_gpu",
    "warmup", "max_pending", "max_text_chars", "pip_index_url", "pip_find_links", "pip_no_index", "bundle_url",
    "allow_no_gpu", "perf_runs", "min_speedup", "voices", "models_dir", "venv_dir",
})


def data_key(field_name: str) -> str:
    """The pyinfra data key of a setting: cuda_version -> piper_gpu_cuda_version."""
    return DATA_PREFIX + field_name


def data_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """{field: value} as pyinfra data ({piper_gpu_field: value})."""
    return {data_key(k): v for k, v in values.items()}


#: Every setting's default under its data key: ``deploy_piper_gpu``'s data_defaults.
DATA_DEFAULTS = data_keys({name: getattr(Settings(), name) for name in FIELDS})


def cli_data(settings_file: str | None, items: list[str] | None) -> dict[str, Any]:
    """pyinfra data for the CLI commands (bundle, lock, pin-voices): a JSON file of data keys, as in
    group data, then ``KEY=VALUE`` items over it, as pyinfra's --data."""
    from pathlib import Path

    data = json.loads(Path(settings_file).read_text()) if settings_file else {}
    data.update(item.partition("=")[::2] for item in items or [])
    return data


def _get(data: Mapping[str, Any] | Any, key: str):
    return data.get(key, None) if hasattr(data, "get") else getattr(data, key, None)


def unprefixed_keys(data: Mapping[str, Any] | Any) -> tuple[list[str], list[str]]:
    """(refused, generic): old unprefixed setting names present in ``data``."""
    present = [name for name in FIELDS if _get(data, name) is not None]
    return [n for n in present if n not in GENERIC_NAMES], [n for n in present if n in GENERIC_NAMES]


def settings_from(data: Mapping[str, Any] | Any, validate: bool = True) -> Settings:
    """Settings from pyinfra data (``host.data``, or a mapping of data keys): each field ``x`` from
    ``piper_gpu_x``. Old unprefixed names of this deploy's own settings are refused, naming the new
    keys; unprefixed generic names (``port``, ...) are left to whichever deploy owns them."""
    refused, _ = unprefixed_keys(data)
    if refused:
        raise SettingsError(
            "piper-gpu settings are read from prefixed data keys; rename in your inventory or group data (or "
            "--data): " + ", ".join(f"{n} -> {data_key(n)}" for n in refused))
    return from_fields({name: _get(data, data_key(name)) for name in FIELDS}, validate=validate)


def bundle_sources(s: Settings) -> dict[str, Any]:
    """The source settings of a deploy from ``s.bundle_url`` (the layout ``piper_gpu.bundle`` writes)."""
    b = s.bundle_url.rstrip("/")
    return {
        "cuda_repo_url": f"{b}/{naming.BUNDLE_CUDA_REPOS}",
        "pip_no_index": True,
        "pip_find_links": f"{b}/{naming.BUNDLE_WHEELS}/",
        "voices": tuple(dataclasses.replace(v, url=f"{b}/{naming.bundle_voice_dir(v.name)}") for v in s.voices),
        # the file names as the bundle holds them, percent-encoded in its URL (bundle_url is one)
        "cudnn_deb_url": f"{b}/{quote(naming.bundle_cudnn_file(s.cudnn_deb_url))}" if s.cudnn_deb_url else None,
        "cudnn_local_repo_url": (f"{b}/{quote(naming.bundle_cudnn_file(s.cudnn_local_repo_url))}"
                                 if s.cudnn_local_repo_url else None),
        "cudnn_archive_url": f"{b}/{quote(naming.bundle_cudnn_file(s.cudnn_archive[0]))}",
    }


def settings_from_json(text: str) -> Settings:
    """Inverse of Settings.to_json (the settings a host recorded)."""
    return from_fields(json.loads(text))
