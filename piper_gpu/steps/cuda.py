"""Steps 2-3: NVIDIA's CUDA apt repository (keyring + mirror URL), the CUDA
toolkit (or compiler and libraries, or runtime libraries only), and CUDA on PATH / in the dynamic linker."""

from __future__ import annotations

import shlex

from pyinfra.api import deploy
from pyinfra.operations import apt, files, server

from piper_gpu.operations import apt_sources_offer, deb_file_installed, fetch
from piper_gpu.steps.base import missing_packages, put_file, record_added, template_file
from piper_gpu.target import CACHE, KEYRING, LINKER_CONF, PROFILE_SNIPPET, TOOLS, Target

def repo_base(target: Target) -> str:
    s = target.settings
    return f"{s.sources.cuda_repo_url.rstrip('/')}/{target.repo_path}/{target.arch}"


@deploy("NVIDIA CUDA apt repository (cuda-keyring, mirror URL)")
def cuda_repository(target: Target):
    src = target.settings.sources
    deb = f"{CACHE}/cuda-keyring_{src.cuda_keyring_version}_all.deb"
    fetch(
        name=f"Download cuda-keyring {src.cuda_keyring_version}",
        src=f"{repo_base(target)}/cuda-keyring_{src.cuda_keyring_version}_all.deb",
        dest=deb,
        sha256=src.cuda_keyring_sha256,
    )
    check = (
        f"dpkg-deb --fsys-tarfile {deb} | tar -xO .{KEYRING} > {CACHE}/cuda-keyring.check.gpg && "
        f"python3 {TOOLS}/openpgp.py {CACHE}/cuda-keyring.check.gpg --expect {shlex.quote(src.cuda_repo_key_fingerprint)}"
    )
    record_added(["cuda-keyring"])
    keyring = deb_file_installed(
        name=f"Install cuda-keyring {src.cuda_keyring_version} (key {src.cuda_repo_key_fingerprint[-8:]} checked)",
        package="cuda-keyring",
        version=src.cuda_keyring_version,
        deb_path=deb,
        keyring_check=check,
    )
    # The keyring ships this same file pointing at NVIDIA's server; we own its content so the
    # host has exactly one CUDA source: the configured URL or mirror.
    source = put_file(
        target,
        f"Point the CUDA apt source at {src.cuda_repo_url}",
        f"# Managed by piper-gpu-deploy: the one CUDA apt source (cuda_repo_url)\n"
        f"deb [signed-by={KEYRING}] {repo_base(target)}/ /\n",
        target.cuda_source_list,
        "644",
    )
    return [keyring, source]


def apt_pins(target: Target) -> dict[str, str | None]:
    """What the deploy installs from apt sources: package -> exact version (None: any)."""
    s = target.settings
    pins: dict[str, str | None] = {p: None for p in s.cuda_packages}
    if s.cudnn_apt_installed:
        pins[s.cudnn_package] = s.cudnn_apt_version
    return pins


@deploy("Check the apt sources offer every pinned package")
def apt_sources_checked(target: Target, source_ops: list):
    """apt-get update when a source changed or a pinned package is missing, then ask apt whether the
    configured sources offer each pinned package at its pinned version: if not, stop here, before
    anything is installed from them, naming what each source offers and the setting that fixes it."""
    s = target.settings
    pins = apt_pins(target)
    missing = missing_packages(list(pins))
    if missing or any(op.will_change for op in source_ops):
        apt.update(name="Refresh apt lists (an apt source changed or a pinned package is missing)")
    alternatives = {
        s.cudnn_package: "cudnn_source='archive' (NVIDIA's redistributable tarball, sha256 from its manifest), "
                         "'local-repo' (your cudnn-local-repo-*.deb installer) or 'wheel' (nvidia-cudnn-cu12 from PyPI)",
    }
    for p in s.cuda_packages:
        alternatives[p] = ("cuda_source='pip' (NVIDIA's CUDA wheels in the venv), or cuda_repo_url/cuda_repo_path "
                           f"for a repository that has {p}"
                           + {"toolkit": ", or cuda_install='compiler' (nvcc and the libraries, without the profilers "
                                         "and their dependencies) or 'runtime' (the libraries only)",
                              "compiler": ", or cuda_install='runtime' (the libraries only)"}.get(s.cuda.cuda_install, ""))
    apt_sources_offer(
        name="Apt sources offer " + ", ".join(f"{p}={v}" if v else p for p, v in pins.items()),
        packages=pins,
        fixes=alternatives,
    )


@deploy("CUDA toolkit")
def cuda_toolkit(target: Target):
    s = target.settings
    what = {"toolkit": "toolkit (nvcc included)", "compiler": "compiler and runtime libraries (no profilers)",
            "runtime": "runtime libraries only"}.get(s.cuda.cuda_install, s.cuda.cuda_install)
    record_added(s.cuda_packages)
    return apt.packages(
        name=f"Install CUDA {s.cuda.cuda_version} {what}: {', '.join(s.cuda_packages)}",
        packages=s.cuda_packages,
        no_recommends=True,
    )


@deploy("CUDA on PATH and in the dynamic linker")
def cuda_environment(target: Target, lib_dirs: list[str], library_ops: list):
    s = target.settings
    conf = template_file(
        target,
        name="Dynamic linker: CUDA and cuDNN library directories",
        template="ld.so.conf.j2",
        dest=LINKER_CONF,
        mode="644",
        lib_dirs=lib_dirs,
    )
    if conf.will_change or any(op.will_change for op in library_ops):
        server.shell(name="Rebuild the linker cache (ldconfig): the libraries or their directories change",
                     commands=["ldconfig"])
    template_file(
        target,
        name="Shell profile: CUDA_HOME, PATH and LD_LIBRARY_PATH",
        template="cuda-profile.sh.j2",
        dest=PROFILE_SNIPPET,
        mode="644",
        cuda_home=s.cuda_home if s.cuda.cuda_source == "apt" else None,  # wheels bring no toolkit
        lib_dirs=lib_dirs,
    )
    files.block(
        name=f"~{s.service.service_user}/.bashrc sources the CUDA profile (one marked block)",
        path=f"{target.home}/.bashrc",
        content=f"[ -r {PROFILE_SNIPPET} ] && . {PROFILE_SNIPPET}",
        marker="# {mark} piper-gpu-deploy CUDA environment",
        try_prevent_shell_expansion=True,
    )

