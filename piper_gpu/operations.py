"""Custom pyinfra operations: each compares a fact with the wanted state and yields commands
only when they differ (so a second run reports "No change")."""

from __future__ import annotations

import re
import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import File, Sha256File

from piper_gpu.facts import AptOffers, FilesDiffer, HeldPackages, InstalledDebVersions, VenvDistributions
from piper_gpu.matrix import ONNXRUNTIME_DISTRIBUTIONS


@operation()
def fetch(src: str, dest: str, sha256: str | None, user: str | None = None, group: str | None = None,
          mode: str | None = None):
    """``dest`` holds the file at ``src`` (http(s):// or file://), checked against ``sha256``.

    Downloaded only when missing or not matching. curl retries transient failures (timeouts,
    408/429/5xx) with exponential backoff; a failure names the URL and curl's reason, a checksum
    mismatch names both digests. The file appears at ``dest`` only once it is complete and verified.
    """
    if host.get_fact(File, path=dest) and (sha256 is None or host.get_fact(Sha256File, path=dest) == sha256):
        host.noop(f"{dest} present" + (" and verified" if sha256 else ""))
        return
    q_src, q_dest, q_part = shlex.quote(src), shlex.quote(dest), shlex.quote(dest + ".part")
    yield (f"curl -sSLf --retry 6 --connect-timeout 20 -o {q_part} {q_src} || "
           f"{{ rc=$?; rm -f {q_part}; echo \"download failed (curl exit $rc): {src}\" >&2; exit $rc; }}")
    if sha256:
        yield (f"got=$(sha256sum {q_part} | cut -d' ' -f1); if [ \"$got\" != {shlex.quote(sha256)} ]; then "
               f"rm -f {q_part}; echo \"sha256 mismatch for {src}: expected {sha256}, got $got\" >&2; exit 1; fi")
    if user or group:
        owner = f"{user or ''}:{group or ''}"
        yield f"chown {shlex.quote(owner)} {q_part}"
    if mode:
        yield f"chmod {shlex.quote(str(mode))} {q_part}"
    yield f"mv -f {q_part} {q_dest}"


def _as_user(user: str, command: str) -> str:
    """Run a command as the service user (we are root: chroot, ssh root, or _sudo)."""
    if user == "root":
        return command
    return f"runuser -u {shlex.quote(user)} -- {command}"


@operation()
def deb_file_installed(package: str, version: str | None, deb_path: str, keyring_check: str | None = None,
                       use_dpkg: bool = False):
    """Install a local .deb with apt (dependencies resolved) unless ``package`` is at ``version``.

    ``keyring_check``: a command run first that must succeed (e.g. check the key inside the .deb).
    ``use_dpkg``: ``dpkg -i`` (a package without dependencies, such as NVIDIA's local-repo installers).
    """
    have = host.get_fact(InstalledDebVersions).get(package)
    if have is not None and (version is None or have == version):
        host.noop(f"{package} {have} is installed")
        return
    if keyring_check:
        yield keyring_check
    if use_dpkg:
        yield f"DEBIAN_FRONTEND=noninteractive dpkg -i {shlex.quote(deb_path)}"
        return
    yield f"DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades --allow-change-held-packages {shlex.quote(deb_path)}"


@operation()
def held(packages: list[str]):
    """``apt-mark hold`` the packages not yet held."""
    missing = [p for p in packages if p not in host.get_fact(HeldPackages)]
    if not missing:
        host.noop(f"{', '.join(packages)} held")
        return
    yield "apt-mark hold " + " ".join(shlex.quote(p) for p in missing)


@operation()
def venv_present(venv_dir: str, user: str, python: str = "python3"):
    """A venv at ``venv_dir`` owned by ``user``."""
    if host.get_fact(VenvDistributions, python=f"{venv_dir}/bin/python") is not None:
        host.noop(f"venv {venv_dir} exists")
        return
    yield _as_user(user, f"{shlex.quote(python)} -m venv {shlex.quote(venv_dir)}")


@operation()
def venv_locked(venv_dir: str, user: str, wanted: dict[str, str], pip_args: list[str]):
    """The venv holds exactly the pinned versions in ``wanted`` and exactly one ONNX Runtime.

    Any ONNX Runtime distribution not in ``wanted`` (the CPU ``onnxruntime`` that piper-tts pulls
    in, for one) is removed. They share the ``onnxruntime`` module directory, so removing one
    deletes files of the other: the wanted one is then reinstalled with --force-reinstall.
    Installs use --no-deps: the lock is complete, and piper-tts's dependency on the CPU
    ``onnxruntime`` must not come back.
    """
    python = f"{venv_dir}/bin/python"
    have = host.get_fact(VenvDistributions, python=python) or {}
    norm = {k.lower().replace("_", "-"): v for k, v in wanted.items()}
    stray_ort = sorted(d for d in ONNXRUNTIME_DISTRIBUTIONS if d in have and d not in norm)
    # NVIDIA's CUDA wheels left from cuda_source="pip" (or an older pin set) go too
    stray_cuda = sorted(d for d in have if re.fullmatch(r"nvidia-[a-z0-9-]+-cu\d+", d) and d not in norm)
    to_install = {n: v for n, v in norm.items() if have.get(n) != v}
    if not stray_ort and not stray_cuda and not to_install:
        host.noop(f"{venv_dir}: {len(norm)} pinned distributions present, one ONNX Runtime")
        return
    pip = f"{shlex.quote(python)} -m pip --disable-pip-version-check --no-input --retries 5 --timeout 30"
    if stray_cuda:
        yield _as_user(user, f"{pip} uninstall -y " + " ".join(stray_cuda))
    if stray_ort:
        yield _as_user(user, f"{pip} uninstall -y " + " ".join(stray_ort))
        for n in ONNXRUNTIME_DISTRIBUTIONS:
            if n in norm:
                to_install[n] = norm[n]
    if to_install:
        force = " --force-reinstall" if stray_ort else ""
        args = " ".join(shlex.quote(a) for a in pip_args)
        specs = " ".join(shlex.quote(f"{n}=={v}") for n, v in sorted(to_install.items()))
        yield _as_user(user, f"{pip} install --no-deps{force} {args} {specs}")


@operation()
def apt_sources_offer(packages: dict[str, str | None], fixes: dict[str, str]):
    """The configured apt sources offer each package at its version (None: any version).

    Runs when the deploy runs, after the apt lists were refreshed (a plan shows it as a check).
    Changes nothing; when a package is not offered, it fails with a message naming what each source
    offers and the setting that fixes it, before anything is installed from those sources.
    """
    if not host.state.is_executing:
        host.noop("checked when the deploy runs, after apt-get update")
        return
    offers = host.get_fact(AptOffers, packages=sorted(packages))
    problems = []
    for name, version in packages.items():
        seen = offers.get(name, [])
        if any(version is None or v == version for v, _ in seen):
            continue
        found = "; ".join(f"{v} from {src}" for v, src in seen) or "no version from any configured source"
        problems.append(f"{name}{'=' + version if version else ''} is not offered ({found}). "
                        f"Fix: {fixes.get(name, 'point the apt source at a repository that has it')}")
    if not problems:
        host.noop("every pinned package is offered: " + ", ".join(
            f"{n} from {offers[n][0][1]}" for n in packages if offers.get(n)))
        return
    message = ("The configured apt sources do not offer what this deploy pins; nothing was installed from them.\n  - "
               + "\n  - ".join(problems))
    yield f"echo {shlex.quote(message)} >&2; exit 1"


@operation()
def keyrings_installed(pattern: str, dest_dir: str):
    """Every file matching ``pattern`` (a shell glob, e.g. a local repository's cudnn-*-keyring.gpg) has
    an identical copy in ``dest_dir`` (NVIDIA's local installers ask for this by hand: `sudo cp ...`)."""
    differ = host.get_fact(FilesDiffer, pattern=pattern, dest_dir=dest_dir)
    if differ is None:
        yield f"echo {shlex.quote(f'no file matches {pattern}: the local repository is not installed')} >&2; exit 1"
        return
    if not differ:
        host.noop(f"{pattern} present in {dest_dir}")
        return
    for path in differ:
        yield f"install -m 644 {shlex.quote(path)} {shlex.quote(dest_dir)}/"
