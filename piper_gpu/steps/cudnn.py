"""Step 4: cuDNN built for this CUDA major, exact version, from a source that really carries it on
the platform (piper_gpu/platforms.py): NVIDIA's CUDA repository (held), the operator's local-repo
installer (its own keyring, then the same held package; or its nested .deb unpacked), NVIDIA's
redistributable archive (sha256 from NVIDIA's manifest), an operator-supplied .deb, or the
nvidia-cudnn-cu12 wheel (installed with the venv, step 5)."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files, server

from piper_gpu import naming
from piper_gpu.operations import deb_file_installed, fetch, held, keyrings_installed
from piper_gpu.steps.base import record_added, replaced_versions
from piper_gpu.facts import HeldPackages
from piper_gpu.target import CACHE, HELD_PACKAGES, Target


def cudnn_lib_dirs(target: Target) -> list[str]:
    """Library directories the linker must search for this cuDNN source (none for packages)."""
    s = target.settings
    base = target.cudnn_extract_dir
    if s.cuda.cudnn_source == "archive":
        return [f"{base}/lib"]
    if s.cuda.cudnn_source in ("local-deb", "local-repo") and s.cuda.cudnn_deb_extract:
        return [f"{base}/usr/lib/{target.multiarch}"]
    if s.cuda.cudnn_source == "wheel" and s.cuda.cuda_source == "apt":
        return [f"{target.site_packages}/nvidia/cudnn/lib"]
    return []


def library_dirs(target: Target) -> list[str]:
    """Every directory the dynamic linker must search for CUDA and cuDNN: the toolkit's (and an
    unpacked or wheel cuDNN's) with cuda_source="apt", the NVIDIA wheels' in the venv with "pip"."""
    if target.settings.cuda.cuda_source == "pip":
        return target.wheel_lib_dirs
    return [target.cuda_lib_dir, *cudnn_lib_dirs(target)]


def local_repo(target: Target) -> tuple[str, str]:
    """(package name, directory under /var) of the operator's local-repo installer, from NVIDIA's
    file name: cudnn-local-repo-ubuntu2204-9.1.1_1.0-1_amd64.deb -> cudnn-local-repo-ubuntu2204-9.1.1."""
    name = naming.file_name(target.settings.sources.cudnn_local_repo_url).split("_", 1)[0]
    return name, f"/var/{name}"


@deploy("cuDNN sources (local-repo installer and its keyring)")
def cudnn_sources(target: Target) -> list:
    """With cudnn_source="local-repo": NVIDIA's installer package, which puts a file:// apt
    repository under /var/cudnn-local-repo-*/ with its own signing key; the key goes where its apt
    source expects it (NVIDIA's instructions: cp /var/cudnn-local-repo-*/cudnn-*-keyring.gpg
    /usr/share/keyrings/). Returns the operations whose change needs an apt update."""
    s = target.settings
    if s.cuda.cudnn_source != "local-repo":
        return []
    name, repo_dir = local_repo(target)
    deb = f"{CACHE}/{name}.deb"
    fetch(name=f"Fetch the cuDNN local-repo installer {name}", src=s.sources.cudnn_local_repo_url, dest=deb,
          sha256=s.sources.cudnn_local_repo_sha256)
    file = naming.file_name(s.sources.cudnn_local_repo_url)
    version = file.split("_")[1] if "_" in file else None
    record_added([name])
    installer = deb_file_installed(name=f"Install {name} (a file:// apt repository in {repo_dir})", package=name,
                                   version=version, deb_path=deb, use_dpkg=True)
    keyring = keyrings_installed(name=f"Keyring of {name} into /usr/share/keyrings",
                                 pattern=f"{repo_dir}/cudnn-*-keyring.gpg", dest_dir="/usr/share/keyrings")
    return [installer, keyring]


@deploy("cuDNN (exact version, held)")
def cudnn(target: Target):
    s = target.settings
    pkg, ver = s.cudnn_package, s.cudnn_apt_version
    label = f"cuDNN {s.cuda.cudnn_version} for CUDA {s.cudnn_built_for}"
    if s.cuda.cudnn_source == "wheel":
        return None  # nvidia-cudnn-cu12 is in the venv lock (step 5)
    if s.cudnn_apt_installed:
        record_added([pkg])
        op = apt.packages(
            name=f"Install {label} ({pkg}={ver})" + replaced_versions({pkg: ver}),
            packages=[f"{pkg}={ver}"],
            no_recommends=True,
            extra_install_args="--allow-downgrades --allow-change-held-packages",
        )
        hold(pkg, ver)
        return op
    if s.cuda.cudnn_source == "local-repo":  # extract the library .deb nested in the installer's repository
        _, repo_dir = local_repo(target)
        return _extract_deb(target, f"{repo_dir}/{pkg}_{ver}_amd64.deb", s.sources.cudnn_local_repo_sha256, label)
    if s.cuda.cudnn_source == "local-deb":
        deb = f"{CACHE}/{pkg}_{ver}.deb"
        fetch(name=f"Fetch {label} .deb", src=s.sources.cudnn_deb_url, dest=deb, sha256=s.sources.cudnn_deb_sha256)
        if not s.cuda.cudnn_deb_extract:
            record_added([pkg])
            op = deb_file_installed(name=f"Install {label} from {deb}" + replaced_versions({pkg: ver}), package=pkg,
                                    version=ver, deb_path=deb)
            hold(pkg, ver)
            return op
        return _extract_deb(target, deb, s.sources.cudnn_deb_sha256, label)
    url, digest = s.cudnn_archive
    archive = f"{CACHE}/{s.cudnn_archive_name}"
    fetch(name=f"Fetch {label}: {s.cudnn_archive_name} (sha256 {digest[:12]}...)", src=url, dest=archive,
          sha256=digest)
    return _unpacked(target, f"tar -xJf {archive} -C {{tmp}} --strip-components=1", digest,
                     f"Unpack {label} archive into {target.cudnn_extract_dir}")


def hold(pkg: str, ver: str) -> None:
    """apt-mark hold, recorded when this deploy sets it (undeploy lifts only its own holds)."""
    if pkg not in host.get_fact(HeldPackages):
        files.line(name=f"Record that this deploy holds {pkg} ({HELD_PACKAGES})", path=HELD_PACKAGES, line=pkg)
    held(name=f"Hold {pkg} at {ver}", packages=[pkg])


def _extract_deb(target: Target, deb: str, digest: str, label: str):
    """Unpack a cuDNN library .deb under /opt (its dependencies do not fit this distro); the linker
    config then points there."""
    return _unpacked(target, f"dpkg-deb -x {deb} {{tmp}}", digest,
                     f"Extract {label} from {deb} into {target.cudnn_extract_dir} (dependencies do not fit this distro)")


def _unpacked(target: Target, extract: str, digest: str, name: str):
    """``extract`` (with {tmp}) unpacks into a fresh tree that replaces the cuDNN directory whole;
    ``digest`` marks which source the tree came from, so an unchanged source is not unpacked again."""
    dest = target.cudnn_extract_dir
    if not _marker_differs(dest, digest):
        host.noop(f"{dest} holds the cuDNN unpacked from sha256 {digest[:12]}...")
        return None
    return server.shell(
        name=name,
        commands=[f"rm -rf {dest}.tmp && mkdir -p {dest}.tmp && {extract.format(tmp=dest + '.tmp')} && "
                  f"rm -rf {dest} && mv {dest}.tmp {dest} && echo {shlex.quote(digest)} > {dest}/.source-sha256"],
    )


def _marker_differs(dest: str, digest: str) -> bool:
    return (host.get_fact(FileContents, path=f"{dest}/.source-sha256") or [""])[0].strip() != digest
