"""The deploy's settings: the operator's inputs by concern (inputs.py: one small typed class per group,
each validating itself), composed into ``Settings``, with the checks that span groups, how pyinfra data
sets them, what follows from them (derived.py, exposed here) and the record a host keeps of them. Other
concerns live apart: the version matrix (matrix.py), the platform table (platforms.py), NVIDIA's naming
rules and the bundle layout (naming.py), host paths (target.py).

Every field ``x`` of a group is read from the pyinfra data key ``piper_gpu_x`` (inventory host data,
group_data/*.py, ``--data piper_gpu_x=value``, or the ``data_defaults`` of ``deploy_piper_gpu``).
The prefix keeps the deploy's keys apart from other deploys' in a shared inventory; the
unprefixed names of earlier releases are refused, naming the new key.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from piper_gpu import derived, matrix, platforms
from piper_gpu import sources as source_forms
from piper_gpu.errors import SettingsError  # noqa: F401 - imported from here by the CLI and the tests
from piper_gpu.inputs import (  # noqa: F401 - the inputs' names, imported from here by the steps and the tests
    CUDNN_SOURCES, DATA_PREFIX, GROUPS, WSL_FORBIDDEN_PACKAGE_PATTERNS, Checks, Cuda, Migration, Service, Sources,
    Undeploy, Venv, Voice, Voices, data_key, raise_problems)
from piper_gpu.matrix import ONNXRUNTIME_DISTRIBUTIONS
from piper_gpu.sources import DEFAULT_AUTOMOUNT_ROOT

#: Every setting -> the ``Settings`` attribute of its group (a name is in one group only).
FIELD_GROUPS: dict[str, str] = {f.name: attr for attr, cls in GROUPS for f in dataclasses.fields(cls)}
assert len(FIELD_GROUPS) == sum(len(dataclasses.fields(cls)) for _, cls in GROUPS), "a setting in two groups"


@dataclass(frozen=True)
class Settings:
    """The operator's inputs, one group per concern (``s.cuda.cuda_version``, ``s.service.port``), and
    what follows from them (``s.cudnn_package``, ``s.python_requirements()``: derived.py)."""

    cuda: Cuda = field(default_factory=Cuda)
    sources: Sources = field(default_factory=Sources)
    venv: Venv = field(default_factory=Venv)
    models: Voices = field(default_factory=Voices)
    service: Service = field(default_factory=Service)
    migration: Migration = field(default_factory=Migration)
    undeploy: Undeploy = field(default_factory=Undeploy)
    checks: Checks = field(default_factory=Checks)

    # --- the fields, by name -----------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """{setting: value} over every group, in the reference's order."""
        return {name: getattr(getattr(self, attr), name) for name, attr in FIELD_GROUPS.items()}

    def replace(self, **values: Any) -> "Settings":
        """These settings with the named fields changed (each in its group), unvalidated."""
        by_group: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            if name not in FIELD_GROUPS:
                raise TypeError(f"Settings has no setting {name!r}")
            by_group.setdefault(FIELD_GROUPS[name], {})[name] = value
        return dataclasses.replace(self, **{attr: dataclasses.replace(getattr(self, attr), **changed)
                                            for attr, changed in by_group.items()})

    # --- NVIDIA's names for these versions (derived.py) ----------------------------------------
    @property
    def cuda_major(self) -> int:
        return derived.cuda_major(self.cuda)

    @property
    def cuda_dash(self) -> str:
        return derived.cuda_dash(self.cuda)

    @property
    def cuda_home(self) -> str:
        return derived.cuda_home(self.cuda)

    @property
    def cuda_packages(self) -> list[str]:
        return derived.cuda_packages(self.cuda)

    def cuda_lib_dir(self, arch: str = "x86_64") -> str:
        return derived.cuda_lib_dir(self.cuda, arch)

    @property
    def cudnn_major(self) -> int:
        return derived.cudnn_major(self.cuda)

    @property
    def cudnn_release(self) -> str:
        return derived.cudnn_release(self.cuda)

    @property
    def cudnn_built_for(self) -> str:
        return derived.cudnn_built_for(self.cuda)

    @property
    def cudnn_package(self) -> str:
        return derived.cudnn_package(self.cuda)

    @property
    def cudnn_apt_version(self) -> str:
        return derived.cudnn_apt_version(self.cuda)

    @property
    def cudnn_wheel(self) -> str:
        return derived.cudnn_wheel(self.cuda)

    @property
    def cudnn_archive_name(self) -> str:
        return derived.cudnn_archive_name(self.cuda)

    @property
    def cudnn_apt_installed(self) -> bool:
        return derived.cudnn_apt_installed(self.cuda)

    # --- sources (derived.py) -------------------------------------------------------------------
    @property
    def cudnn_archive(self) -> tuple[str, str | None]:
        return derived.cudnn_archive(self.cuda, self.sources)

    def voice_url(self, voice: Voice, suffix: str) -> str:
        return derived.voice_url(self.models, voice, suffix)

    def pip_source_args(self) -> list[str]:
        return derived.pip_source_args(self.sources)

    def local_sources(self) -> dict[str, tuple[str, str]]:
        return derived.local_sources(self.cuda, self.sources, self.models)

    # --- the install plan for a host (derived.py) -------------------------------------------------
    def cuda_wheel_requirements(self) -> dict[str, str]:
        return derived.cuda_wheel_requirements(self.cuda)

    def lock(self) -> dict[str, str]:
        return derived.lock(self.venv)

    def python_requirements(self) -> dict[str, str]:
        return derived.python_requirements(self.venv, self.cuda)

    def venv_requirements(self) -> dict[str, str]:
        return derived.venv_requirements(self.venv, self.cuda)

    def for_host(self, platform: "platforms.Platform", python: str,
                 automount_root: str = DEFAULT_AUTOMOUNT_ROOT) -> "Settings":
        """These settings on a host: "auto" sources and install level from the platform table, the lock for its Python,
        local files and directories as the host's paths (Windows paths under its automount root)."""
        cuda_source = platform.cuda_source if self.cuda.cuda_source == "auto" else self.cuda.cuda_source
        cudnn_source = self.cuda.cudnn_source
        if cudnn_source == "auto":
            cudnn_source = "wheel" if cuda_source == "pip" else platform.cudnn_source
        cuda_install = platform.cuda_install if self.cuda.cuda_install == "auto" else self.cuda.cuda_install
        values = self.values()
        paths = {name: source_forms.on_host(values[name], kind, automount_root)
                 for name, kind in source_forms.SOURCE_SETTINGS.items() if values[name]}
        voices = tuple(dataclasses.replace(v, url=source_forms.on_host(v.url, "dir", automount_root)) if v.url else v
                       for v in self.models.voices)
        resolved = self.replace(cuda_source=cuda_source, cudnn_source=cudnn_source, cuda_install=cuda_install,
                                python_version=python,
                                voices=voices, **paths)
        return resolved.replace(python_lock=resolved.lock())

    def to_json(self) -> str:
        """The applied settings as recorded on the host (secrets left out): every setting under its
        own name, as one flat object."""
        data = self.values()
        data["api_key"] = None
        data["voices"] = [dataclasses.asdict(v) for v in self.models.voices]
        data["python_lock"], data["cuda_wheels"] = dict(self.venv.python_lock), dict(self.cuda.cuda_wheels)
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
    def problems(self) -> list[str]:
        """What is wrong: each group's own problems, then what the groups say of each other (a cuDNN
        source and its files, the version matrix)."""
        problems = [p for attr, _ in GROUPS for p in getattr(self, attr).problems()]
        cuda, src = self.cuda, self.sources
        if cuda.cudnn_source == "local-deb" and not (src.cudnn_deb_url and src.cudnn_deb_sha256):
            problems.append("cudnn_source='local-deb' needs cudnn_deb_url and cudnn_deb_sha256")
        if cuda.cudnn_source == "local-repo" and not (src.cudnn_local_repo_url and src.cudnn_local_repo_sha256):
            problems.append(
                "cudnn_source='local-repo' needs cudnn_local_repo_url (the path or URL of your "
                f"cudnn-local-repo-<distro>-{self.cudnn_release}_1.0-1_amd64.deb) and cudnn_local_repo_sha256 "
                "(sha256sum of that file)")
        if cuda.cudnn_source == "archive" and self.cudnn_archive[1] is None:
            problems.append(
                f"cudnn_source='archive': no sha256 known for {self.cudnn_archive_name}; set cudnn_archive_sha256 "
                f"to the value NVIDIA's {src.cudnn_redist_url.rstrip('/')}/redistrib_{self.cudnn_release}.json lists")
        try:
            self.check_matrix()
        except SettingsError as exc:
            problems.append(str(exc))
        return problems

    def check_matrix(self) -> None:
        """Raise SettingsError unless onnxruntime-gpu (the venv), CUDA and cuDNN (their group) and the
        host's Python fit together in the version matrix (the lock command checks only this)."""
        matrix.check(self.venv.onnxruntime_gpu_version, self.cuda.cuda_version, self.cuda.cudnn_version,
                     self.cudnn_built_for, self.venv.python_version, SettingsError)

    def validate(self) -> "Settings":
        """Reject invalid values and incompatible version combinations, all in one error. Returns self."""
        raise_problems(self.problems())
        return self


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
    """Settings from a mapping of setting names (the host's recorded settings, the lab, unit tests).

    Only keys naming a setting are read. ``bundle_url`` set: every source from the bundle.
    """
    defaults = Settings()
    default_values = defaults.values()
    overrides: dict[str, Any] = {}
    for name in FIELD_GROUPS:
        value = values.get(name)
        if value is None:
            continue
        if name == "voices":
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else value.split(",")
            value = tuple(Voice.parse(v) for v in value)
        elif name in ("python_lock", "cuda_wheels"):
            value = dict(json.loads(value) if isinstance(value, str) else value)
        elif name == "old_server_scripts":
            if isinstance(value, str):  # --data piper_gpu_old_server_scripts='["~/a.py"]' or a,b
                value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            value = tuple(value) if isinstance(value, list) else value
        else:
            value = _coerce(data_key(name), value, default_values[name])
        overrides[name] = value
    settings = defaults.replace(**overrides)
    if settings.sources.bundle_url:
        bundle_url = settings.sources.bundle_url
        if not source_forms.problem("bundle_url", bundle_url, "dir"):  # a path: the URL its sources extend
            settings = settings.replace(bundle_url=source_forms.as_url(bundle_url))
        settings = settings.replace(**bundle_sources(settings))
    return settings.validate() if validate else settings


# --- pyinfra data keys ------------------------------------------------------------------------
FIELDS = tuple(name for name in FIELD_GROUPS if name != "python_version")  # python_version: preflight's

#: Unprefixed names that other deploys in a shared inventory plausibly use for their own settings:
#: found in host data they are not refused, only named in a warning. Every other old name is ours
#: alone and refused.
GENERIC_NAMES = frozenset({
    "port", "bind_address", "api_key", "service_user", "create_service_user", "service_mode", "use_gpu",
    "warmup", "max_pending", "max_text_chars", "pip_index_url", "pip_find_links", "pip_no_index", "bundle_url",
    "allow_no_gpu", "perf_runs", "min_speedup", "voices", "models_dir", "venv_dir",
})


def data_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """{field: value} as pyinfra data ({piper_gpu_field: value})."""
    return {data_key(k): v for k, v in values.items()}


#: Every setting's default under its data key: ``deploy_piper_gpu``'s data_defaults.
DATA_DEFAULTS = data_keys({name: value for name, value in Settings().values().items() if name in FIELDS})


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
    """The source settings of a deploy from ``s.sources.bundle_url`` (the layout ``piper_gpu.bundle`` writes)."""
    return derived.bundle_sources(s.sources, s.models, s.cuda)


def settings_from_json(text: str) -> Settings:
    """Inverse of Settings.to_json (the settings a host recorded)."""
    return from_fields(json.loads(text))
