"""The one typed place for settings: defaults, overrides from inventory/group data, and the
version matrix that rejects incompatible combinations before anything on a host changes.

Every field can be overridden by a pyinfra data key of the same name (inventory host data,
group_data/*.py, or ``--data key=value``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

# ---------------------------------------------------------------------------------------------
# Version matrix (sources in the README's "Version matrix" section)
# ---------------------------------------------------------------------------------------------

#: onnxruntime-gpu releases on PyPI -> (CUDA major, cuDNN major) they were built for.
#: ORT docs: 1.18.1+ CUDA 12.x / cuDNN 9.x; 1.18.0 cuDNN 8.x. PyPI metadata checked 2026-11-25:
#: 1.22-1.25.1 depend on nvidia-*-cu12, 1.27.0 and 1.31.1 on CUDA 13.
ORT_GPU_BUILDS: dict[str, tuple[int, int]] = {
    "1.18.0": (12, 8),
    "1.18.1": (12, 9),
    "1.19.0": (12, 9),
    "1.19.2": (12, 9),
    "1.20.0": (12, 9),
    "1.20.2": (12, 9),
    "1.21.0": (12, 9),
    "1.21.1": (12, 9),
    "1.22.0": (12, 9),
    "1.23.0": (12, 9),
    "1.23.2": (12, 9),
    "1.24.1": (12, 9),
    "1.24.4": (12, 9),
    "1.25.0": (12, 9),
    "1.25.1": (12, 9),
    "1.27.0": (13, 9),
    "1.31.1": (13, 9),
}

#: cuDNN releases -> the CUDA version the CUDA-12 build of that release targets.
#: Only releases whose build target we know; others need ``cudnn_cuda_version`` set explicitly.
CUDNN_BUILT_FOR: dict[str, str] = {
    "9.1.0": "12.4",  # NVIDIA's 9.1.0 support matrix: "the recommended configuration ... CUDA 12.4"
    "9.1.1": "12.4",
    "9.12.0": "12.9",
}

#: NVIDIA repository path per (distro id, version id); WSL2 on Ubuntu uses "wsl-ubuntu".
NVIDIA_REPO_PATHS: dict[tuple[str, str], str] = {
    ("ubuntu", "22.04"): "ubuntu2204",
    ("ubuntu", "24.04"): "ubuntu2404",
    ("debian", "12"): "debian12",
}

#: Packages that must never be installed inside WSL2: the Linux driver comes from Windows.
WSL_FORBIDDEN_PACKAGE_PATTERNS = (
    r"^cuda$",
    r"^cuda-drivers(-.*)?$",
    r"^nvidia-driver(-.*)?$",
    r"^nvidia-kernel-.*$",
    r"^nvidia-dkms-.*$",
    r"^cuda-runtime-\d+-\d+$",  # depends on cuda-drivers
)

#: Fully pinned venv (cp311/cp312 manylinux x86_64 wheels exist for each). piper-tts is
#: installed without its dependency on the CPU ``onnxruntime``: the GPU build provides the
#: same ``onnxruntime`` module.
DEFAULT_PYTHON_LOCK: dict[str, str] = {
    "pathvalidate": "3.3.1",
    "numpy": "2.4.6",
    "coloredlogs": "15.0.1",
    "humanfriendly": "10.0",
    "flatbuffers": "25.12.19",
    "packaging": "26.3",
    "protobuf": "7.36.2",
    "sympy": "1.14.0",
    "mpmath": "1.3.0",
}

#: NVIDIA's PyPI wheels of the CUDA 12.4 libraries ONNX Runtime's CUDA provider links
#: (cuda_source="pip"); cuDNN's wheel comes from ``cudnn_version``. Versions are CUDA 12.4.1's.
CUDA_WHEELS_12_4: dict[str, str] = {
    "nvidia-cuda-runtime-cu12": "12.4.127",
    "nvidia-cublas-cu12": "12.4.5.8",
    "nvidia-cufft-cu12": "11.2.1.3",
    "nvidia-curand-cu12": "10.3.5.147",
    "nvidia-cuda-nvrtc-cu12": "12.4.127",
}

#: Every distribution that provides the ``onnxruntime`` module. Exactly one may be installed.
ONNXRUNTIME_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-training",
    "ort-nightly",
    "ort-nightly-gpu",
)


class SettingsError(ValueError):
    """A setting is invalid or settings contradict each other."""


def _major_minor(version: str, what: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)\.(\d+)", str(version))
    if not m:
        raise SettingsError(f"{what}: {version!r} is not a version like 12.4")
    return int(m.group(1)), int(m.group(2))


def _release(version: str, parts: int = 3) -> str:
    return ".".join(str(version).split(".")[:parts])


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
    onnxruntime_gpu_version: str = "1.20.2"
    piper_tts_version: str = "1.8.0"
    python_lock: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PYTHON_LOCK))

    # --- sources (every download can come from a mirror or a local path) -------------------
    #: An offline bundle (``python -m piper_gpu bundle``): file:///path or http://host:port.
    #: Set, it replaces every source below: the CUDA repository, wheels, voices, cuDNN files.
    bundle_url: str | None = None
    #: "apt": NVIDIA's CUDA apt repository (toolkit or runtime packages, cuDNN package, held);
    #: "pip": NVIDIA's nvidia-*-cu12 wheels installed into the Piper venv, the service's linker
    #: pointed at them; no apt repository, no nvcc.
    cuda_source: str = "apt"
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
    #: "repo": libcudnn9-cuda-12 from the CUDA repo; "local-deb": an operator-supplied .deb of
    #: that package (URL or path + sha256), installed with dpkg; "archive": NVIDIA's redist
    #: tarball (cudnn-linux-x86_64-<ver>_cuda12-archive.tar.xz) unpacked under /opt.
    cudnn_source: str = "repo"
    cudnn_deb_url: str | None = None
    cudnn_deb_sha256: str | None = None
    #: With "local-deb": unpack the .deb under /opt instead of installing it (when its
    #: dependencies do not fit the distro); the linker config then points there.
    cudnn_deb_extract: bool = False
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
    #: in /etc/piper-gpu/api-key (root:service user, 0640), never in the rendered server.
    api_key: str | None = None
    #: Requests synthesising or waiting at once; beyond it POST /tts answers 503 with Retry-After.
    max_pending: int = 8

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

    # ---------------------------------------------------------------------------------------
    @property
    def cuda_major(self) -> int:
        return _major_minor(self.cuda_version, "cuda_version")[0]

    @property
    def cuda_dash(self) -> str:
        major, minor = _major_minor(self.cuda_version, "cuda_version")
        return f"{major}-{minor}"

    @property
    def cuda_home(self) -> str:
        major, minor = _major_minor(self.cuda_version, "cuda_version")
        return f"/usr/local/cuda-{major}.{minor}"

    @property
    def cudnn_major(self) -> int:
        return _major_minor(self.cudnn_version, "cudnn_version")[0]

    @property
    def cudnn_release(self) -> str:
        return _release(self.cudnn_version)

    @property
    def cudnn_built_for(self) -> str:
        if self.cudnn_cuda_version:
            return self.cudnn_cuda_version
        try:
            return CUDNN_BUILT_FOR[self.cudnn_release]
        except KeyError:
            raise SettingsError(
                f"cuDNN {self.cudnn_version}: the CUDA version this build targets is not in the "
                f"matrix ({', '.join(sorted(CUDNN_BUILT_FOR))}); set cudnn_cuda_version "
                "(NVIDIA's cuDNN release notes name it, e.g. '12.4')"
            ) from None

    @property
    def cudnn_package(self) -> str:
        """NVIDIA's apt package for this cuDNN: libcudnn9-cuda-12."""
        return f"libcudnn{self.cudnn_major}-cuda-{self.cuda_major}"

    @property
    def cudnn_apt_version(self) -> str:
        return f"{self.cudnn_version}-1"

    @property
    def cuda_packages(self) -> list[str]:
        if self.cuda_install == "toolkit":
            return [f"cuda-toolkit-{self.cuda_dash}"]
        return [f"cuda-libraries-{self.cuda_dash}"]

    def cuda_lib_dir(self, arch: str = "x86_64") -> str:
        return f"{self.cuda_home}/targets/{arch}-linux/lib"

    def voice_url(self, voice: Voice, suffix: str) -> str:
        base = voice.url or f"{self.voices_base_url.rstrip('/')}/{voice.hf_path()}"
        return f"{base.rstrip('/')}/{voice.name}{suffix}"

    def pip_source_args(self) -> list[str]:
        args = ["--no-index"] if self.pip_no_index else ["--index-url", self.pip_index_url]
        if self.pip_find_links:
            args += ["--find-links", self.pip_find_links]
        return args

    @property
    def cudnn_wheel(self) -> str:
        """NVIDIA's PyPI distribution of this cuDNN: nvidia-cudnn-cu12."""
        return f"nvidia-cudnn-cu{self.cuda_major}"

    def cuda_wheel_requirements(self) -> dict[str, str]:
        """With cuda_source="pip": the NVIDIA wheels the venv holds (CUDA libraries + cuDNN)."""
        if self.cuda_source != "pip":
            return {}
        return {**self.cuda_wheels, self.cudnn_wheel: self.cudnn_version}

    def python_requirements(self) -> dict[str, str]:
        """Every distribution the venv must hold, pinned (name -> version)."""
        reqs = dict(self.python_lock)
        reqs["piper-tts"] = self.piper_tts_version
        reqs["onnxruntime-gpu"] = self.onnxruntime_gpu_version
        reqs.update(self.cuda_wheel_requirements())
        return reqs

    def to_json(self) -> str:
        """The applied settings as recorded on the host (secrets left out)."""
        data = dataclasses.asdict(self)
        data["api_key"] = None
        data["voices"] = [dataclasses.asdict(v) for v in self.voices]
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
        check(self.cudnn_source in ("repo", "local-deb", "archive"),
              f"cudnn_source={self.cudnn_source!r}: use 'repo', 'local-deb' or 'archive'")
        check(self.cuda_source in ("apt", "pip"), f"cuda_source={self.cuda_source!r}: use 'apt' or 'pip'")
        if self.cuda_source == "pip":
            check(self.cudnn_source == "repo",
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
        check(self.api_key is None or len(self.api_key) >= 16,
              "api_key must be at least 16 characters (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')")
        check(self.min_speedup > 0, "min_speedup must be positive")
        if self.cudnn_source == "local-deb":
            check(bool(self.cudnn_deb_url and self.cudnn_deb_sha256),
                  "cudnn_source='local-deb' needs cudnn_deb_url and cudnn_deb_sha256")
        if self.cudnn_source == "archive":
            check(bool(self.cudnn_archive_url and self.cudnn_archive_sha256),
                  "cudnn_source='archive' needs cudnn_archive_url and cudnn_archive_sha256")
        names = [v.name for v in self.voices]
        check(len(names) > 0, "voices: at least one voice is needed")
        check(len(names) == len(set(names)), f"voices: duplicate names in {names}")
        for v in self.voices:
            for what, digest in (("onnx_sha256", v.onnx_sha256), ("json_sha256", v.json_sha256)):
                if digest is None:
                    problems.append(
                        f"voice {v.name}: {what} is not pinned. Every download is verified: fetch "
                        f"{self.voice_url(v, '.onnx' if what == 'onnx_sha256' else '.onnx.json')} "
                        "on a machine you trust, run sha256sum on it, and set the digest in your "
                        "inventory's group data (voices=[{'name': ..., 'onnx_sha256': ..., "
                        "'json_sha256': ...}])"
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
        cuda_major, cuda_minor = _major_minor(self.cuda_version, "cuda_version")
        build = ORT_GPU_BUILDS.get(self.onnxruntime_gpu_version)
        if build is None:
            raise SettingsError(
                f"onnxruntime-gpu {self.onnxruntime_gpu_version} is not in the version matrix "
                f"(known: {', '.join(ORT_GPU_BUILDS)}); pick a known release or add it to "
                "ORT_GPU_BUILDS with the CUDA and cuDNN majors its PyPI wheel was built for"
            )
        ort_cuda, ort_cudnn = build
        if ort_cuda != cuda_major:
            raise SettingsError(
                f"onnxruntime-gpu {self.onnxruntime_gpu_version} is built for CUDA {ort_cuda}, "
                f"but cuda_version is {self.cuda_version}: its CUDA provider would look for "
                f"libcublasLt.so.{ort_cuda} and fail. Use an onnxruntime-gpu release built for "
                f"CUDA {cuda_major} (e.g. 1.20.2) or a CUDA {ort_cuda} toolkit"
            )
        if ort_cudnn != self.cudnn_major:
            raise SettingsError(
                f"onnxruntime-gpu {self.onnxruntime_gpu_version} is built for cuDNN {ort_cudnn}, "
                f"but cudnn_version is {self.cudnn_version} (cuDNN {self.cudnn_major}); "
                f"ONNX Runtime built with cuDNN {ort_cudnn}.x cannot load libcudnn.so.{self.cudnn_major}"
            )
        built_major, built_minor = _major_minor(self.cudnn_built_for, "cudnn_cuda_version")
        if built_major != cuda_major or built_minor > cuda_minor:
            raise SettingsError(
                f"cuDNN {self.cudnn_version} is built for CUDA {self.cudnn_built_for}, "
                f"but cuda_version is {self.cuda_version}: pick a cuDNN built for CUDA "
                f"{cuda_major}.x no newer than {self.cuda_version} (cuDNN 9.1.1 for 12.4)"
            )


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


def settings_from(data: Mapping[str, Any] | Any) -> Settings:
    """Build validated Settings from a mapping or a pyinfra ``host.data`` object.

    Only keys naming a Settings field are read; everything else in host data is ignored.
    """
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    defaults = Settings()
    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        value = get(f.name, None)
        if value is None:
            continue
        if f.name == "voices":
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else value.split(",")
            value = tuple(Voice.parse(v) for v in value)
        elif f.name == "python_lock":
            value = {**DEFAULT_PYTHON_LOCK, **dict(value)}
        elif f.name == "cuda_wheels":
            value = dict(json.loads(value) if isinstance(value, str) else value)
        else:
            value = _coerce(f.name, value, getattr(defaults, f.name))
        overrides[f.name] = value
    settings = dataclasses.replace(defaults, **overrides)
    if settings.bundle_url:
        settings = dataclasses.replace(settings, **bundle_sources(settings))
    return settings.validate()


#: Layout of an offline bundle: ``piper_gpu.bundle`` writes it, ``bundle_url`` reads it.
BUNDLE_CUDA_REPOS = "cuda/repos"
BUNDLE_WHEELS = "pypi"


def bundle_voice_dir(name: str) -> str:
    return f"voices/{name}"


def bundle_cudnn_file(url: str) -> str:
    return f"cudnn/{url.rstrip('/').rsplit('/', 1)[-1]}"


def bundle_sources(s: Settings) -> dict[str, Any]:
    """The source settings of a deploy from ``s.bundle_url`` (the layout ``piper_gpu.bundle`` writes)."""
    b = s.bundle_url.rstrip("/")
    return {
        "cuda_repo_url": f"{b}/{BUNDLE_CUDA_REPOS}",
        "pip_no_index": True,
        "pip_find_links": f"{b}/{BUNDLE_WHEELS}/",
        "voices": tuple(dataclasses.replace(v, url=f"{b}/{bundle_voice_dir(v.name)}") for v in s.voices),
        "cudnn_deb_url": f"{b}/{bundle_cudnn_file(s.cudnn_deb_url)}" if s.cudnn_deb_url else None,
        "cudnn_archive_url": f"{b}/{bundle_cudnn_file(s.cudnn_archive_url)}" if s.cudnn_archive_url else None,
    }


def settings_from_json(text: str) -> Settings:
    """Inverse of Settings.to_json (used by verify, which reads the host's recorded settings)."""
    return settings_from(json.loads(text))
