"""Step 4: cuDNN built for this CUDA major, exact version, held. From the CUDA repository, from an
operator-supplied .deb (installed, or extracted when its dependencies do not fit the distro), or
from NVIDIA's redistributable archive."""

from __future__ import annotations

import shlex

from pyinfra.api import deploy
from pyinfra.operations import apt, server

from piper_gpu.operations import deb_file_installed, fetch, held
from piper_gpu.steps.cuda import CACHE
from piper_gpu.steps.preflight import Target


def cudnn_extract_dir(target: Target) -> str:
    s = target.settings
    return f"/opt/cudnn-{s.cudnn_version}-cuda{s.cuda_major}"


def cudnn_lib_dirs(target: Target) -> list[str]:
    """Library directories the linker must search for this cuDNN source (none for packages)."""
    s = target.settings
    if s.cudnn_source == "archive" or (s.cudnn_source == "local-deb" and s.cudnn_deb_extract):
        base = cudnn_extract_dir(target)
        return [f"{base}/lib"] if s.cudnn_source == "archive" else [f"{base}/usr/lib/{_multiarch(target)}"]
    return []


def library_dirs(target: Target) -> list[str]:
    """Every directory the dynamic linker must search for CUDA and cuDNN: the toolkit's (and an
    unpacked cuDNN's) with cuda_source="apt", the NVIDIA wheels' in the venv with "pip"."""
    if target.settings.cuda_source == "pip":
        return target.wheel_lib_dirs
    return [target.cuda_lib_dir, *cudnn_lib_dirs(target)]


def _multiarch(target: Target) -> str:
    return "x86_64-linux-gnu" if target.arch == "x86_64" else "aarch64-linux-gnu"


@deploy("cuDNN (exact version, held)")
def cudnn(target: Target):
    s = target.settings
    pkg, ver = s.cudnn_package, s.cudnn_apt_version
    label = f"cuDNN {s.cudnn_version} for CUDA {s.cudnn_built_for}"
    if s.cudnn_source == "repo":
        op = apt.packages(
            name=f"Install {label} ({pkg}={ver})",
            packages=[f"{pkg}={ver}"],
            no_recommends=True,
            extra_install_args="--allow-downgrades --allow-change-held-packages",
        )
        held(name=f"Hold {pkg} at {ver}", packages=[pkg])
        return op
    if s.cudnn_source == "local-deb":
        deb = f"{CACHE}/{pkg}_{ver}.deb"
        fetch(name=f"Fetch {label} .deb", src=s.cudnn_deb_url, dest=deb, sha256=s.cudnn_deb_sha256)
        if not s.cudnn_deb_extract:
            op = deb_file_installed(name=f"Install {label} from {deb}", package=pkg, version=ver, deb_path=deb)
            held(name=f"Hold {pkg} at {ver}", packages=[pkg])
            return op
        dest = cudnn_extract_dir(target)
        stale = _marker_differs(dest, s.cudnn_deb_sha256)
        return server.shell(
            name=f"Extract {label} from {deb} into {dest} (dependencies do not fit this distro)",
            commands=[f"rm -rf {dest}.tmp && mkdir -p {dest}.tmp && dpkg-deb -x {deb} {dest}.tmp && "
                      f"rm -rf {dest} && mv {dest}.tmp {dest} && echo {shlex.quote(s.cudnn_deb_sha256)} > {dest}/.source-sha256"],
            _if=lambda: stale,
        )
    archive = f"{CACHE}/cudnn-{s.cudnn_version}-cuda{s.cuda_major}.tar.xz"
    fetch(name=f"Fetch {label} archive", src=s.cudnn_archive_url, dest=archive, sha256=s.cudnn_archive_sha256)
    dest = cudnn_extract_dir(target)
    stale = _marker_differs(dest, s.cudnn_archive_sha256)
    return server.shell(
        name=f"Unpack {label} archive into {dest}",
        commands=[f"rm -rf {dest}.tmp && mkdir -p {dest}.tmp && tar -xJf {archive} -C {dest}.tmp --strip-components=1 && "
                  f"rm -rf {dest} && mv {dest}.tmp {dest} && echo {shlex.quote(s.cudnn_archive_sha256)} > {dest}/.source-sha256"],
        _if=lambda: stale,
    )


def _marker_differs(dest: str, digest: str) -> bool:
    from pyinfra import host
    from pyinfra.facts.files import FileContents

    return (host.get_fact(FileContents, path=f"{dest}/.source-sha256") or [""])[0].strip() != digest
