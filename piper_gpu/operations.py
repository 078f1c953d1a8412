"""Custom pyinfra operations: each compares a fact with the wanted state and yields commands
only when they differ (so a second run reports "No change")."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from io import StringIO

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.command import FileUploadCommand, QuoteString, StringCommand
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File, FileContents, Sha256File

from piper_gpu.facts import AptOffers, AptSimulation, FilesDiffer, HeldPackages, VenvState, apt_reasons
from piper_gpu.matrix import ONNXRUNTIME_DISTRIBUTIONS
from piper_gpu.sources import local_path


@operation()
def fetch(src: str, dest: str, sha256: str | None, user: str | None = None, group: str | None = None,
          mode: str | None = None):
    """``dest`` holds the file at ``src`` (http(s)://, file:// or a path on the host), checked against
    ``sha256``. A local file (a path, or a file:// URL, percent-decoded) is copied as a file.

    Downloaded only when missing or not matching. curl retries transient failures (timeouts,
    408/429/5xx) with exponential backoff; a failure names the URL and curl's reason, a checksum
    mismatch names both digests. The file appears at ``dest`` only once it is complete and verified.
    """
    if host.get_fact(File, path=dest) and (sha256 is None or host.get_fact(Sha256File, path=dest) == sha256):
        host.noop(f"{dest} present" + (" and verified" if sha256 else ""))
        return
    q_src, q_dest, q_part = shlex.quote(src), shlex.quote(dest), shlex.quote(dest + ".part")
    path = local_path(src)
    if path is not None:
        shown = shlex.quote(f"cannot read {path}" + ("" if path == src else f" ({src})"))
        yield f"cp -- {shlex.quote(path)} {q_part} || {{ rc=$?; rm -f {q_part}; echo {shown} >&2; exit $rc; }}"
    else:
        yield (f"curl -sSLf --retry 6 --connect-timeout 20 -o {q_part} {q_src} || "
               f"{{ rc=$?; rm -f {q_part}; echo \"download failed (curl exit $rc): \"{q_src} >&2; exit $rc; }}")
    if sha256:
        yield (f"got=$(sha256sum {q_part} | cut -d' ' -f1); if [ \"$got\" != {shlex.quote(sha256)} ]; then "
               f"rm -f {q_part}; echo {shlex.quote(f'sha256 mismatch for {src}: expected {sha256}, got')} \"$got\" >&2; exit 1; fi")
    if user or group:
        owner = f"{user or ''}:{group or ''}"
        yield f"chown {shlex.quote(owner)} {q_part}"
    if mode:
        yield f"chmod {shlex.quote(str(mode))} {q_part}"
    yield f"mv -f {q_part} {q_dest}"


@operation()
def deb_file_installed(package: str, version: str | None, deb_path: str, keyring_check: str | None = None,
                       use_dpkg: bool = False):
    """Install a local .deb with apt (dependencies resolved) unless ``package`` is at ``version``.

    ``keyring_check``: a command run first that must succeed (e.g. check the key inside the .deb).
    ``use_dpkg``: ``dpkg -i`` (a package without dependencies, such as NVIDIA's local-repo installers).
    """
    have = host.get_fact(DebPackages).get(package) or []
    if have and (version is None or version in have):
        host.noop(f"{package} {', '.join(have)} is installed")
        return
    if keyring_check:
        yield keyring_check
    if use_dpkg:
        yield StringCommand("DEBIAN_FRONTEND=noninteractive dpkg -i", QuoteString(deb_path))
        return
    yield StringCommand("DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades --allow-change-held-packages",
                        QuoteString(deb_path))


@operation()
def held(packages: list[str]):
    """``apt-mark hold`` the packages not yet held."""
    missing = [p for p in packages if p not in host.get_fact(HeldPackages)]
    if not missing:
        host.noop(f"{', '.join(packages)} held")
        return
    yield StringCommand("apt-mark hold", *map(QuoteString, missing))


def as_user(user: str) -> dict:
    """pyinfra's global arguments that run an operation as ``user`` (sudo; none for root)."""
    return {} if user == "root" else {"_sudo": True, "_sudo_user": user}


@dataclass(frozen=True)
class VenvChanges:
    """What ``venv_locked`` changes in a venv: distributions removed, and installed (name -> (had, wanted))."""

    remove: tuple[str, ...]
    install: dict[str, tuple[str | None, str]]
    force: bool  # reinstalled over files another distribution changed (an ONNX Runtime shares its module directory)
    broken: tuple[str, ...] = ()  # pinned distributions whose files are missing or changed

    def __bool__(self) -> bool:
        return bool(self.remove or self.install)

    def describe(self) -> str:
        def why(name, old, new):
            if name in self.broken:
                return " (files missing or changed)"
            return f" (was {old})" if old and old != new else " (reinstalled)" if old else ""

        parts = [f"{n}=={new}{why(n, old, new)}" for n, (old, new) in sorted(self.install.items())]
        text = f"install {', '.join(parts)}" if parts else ""
        if self.remove:
            text += ("; " if text else "") + f"remove {', '.join(self.remove)}"
        return text


def venv_state(python: str, owner: str) -> dict | None:
    """The venv as pip sees it (``VenvState``), read with the host's own privileges, not an
    operation's _sudo_user: when the plan is built on a fresh host, sudo is not installed yet (the
    base step installs it), and files a ``sudo pip`` left may not be readable by ``owner``. One
    reading for the steps that name the operations and the operations."""
    return host.get_fact(VenvState, python=python, owner=owner, _sudo=bool(host.data.get("_sudo")), _sudo_user=None)


def venv_changes(state: dict | None, wanted: dict[str, str]) -> VenvChanges:
    """Compare a venv (``VenvState``) with the lock. Any ONNX Runtime not in ``wanted`` (the CPU
    ``onnxruntime`` piper-tts pulls in, for one) goes, and so do NVIDIA's CUDA wheels the lock no
    longer pins (cuda_source="pip" before, or an older pin set). A pinned distribution whose files
    are missing or changed (``broken``) is reinstalled with --force-reinstall."""
    have = (state or {}).get("distributions", {})
    norm = {k.lower().replace("_", "-"): v for k, v in wanted.items()}
    broken = tuple(sorted(n for n in (state or {}).get("broken", {}) if n in norm))
    stray_ort = sorted(d for d in ONNXRUNTIME_DISTRIBUTIONS if d in have and d not in norm)
    stray_cuda = sorted(d for d in have if re.fullmatch(r"nvidia-[a-z0-9-]+-cu\d+", d) and d not in norm)
    install = {n: (have.get(n), v) for n, v in norm.items() if have.get(n) != v or n in broken}
    if stray_ort:  # removing one deletes files of the other: reinstall the wanted one
        install.update({n: (have.get(n), norm[n]) for n in ONNXRUNTIME_DISTRIBUTIONS if n in norm})
    return VenvChanges(remove=tuple(stray_cuda + stray_ort), install=install, force=bool(stray_ort or broken),
                       broken=broken)


@operation()
def venv_owned(venv_dir: str, user: str):
    """Every file in the venv belongs to ``user``. A ``sudo pip install`` leaves root's files there,
    and the user's own pip then fails on them with a permission error."""
    state = venv_state(f"{venv_dir}/bin/python", user)
    if not state or not state["foreign_owned_count"]:
        host.noop(f"{venv_dir}: every file owned by {user}")
        return
    yield StringCommand("chown -R", QuoteString(f"{user}:{user}"), QuoteString(venv_dir))


@operation()
def pip_debris_removed(venv_dir: str, user: str):
    """No ``~``-prefixed entries in the venv's site-packages: what pip leaves of a distribution it was
    removing when it failed or was interrupted (pip then warns "Ignoring invalid distribution" and
    no longer lists the distribution, which must be installed again)."""
    state = venv_state(f"{venv_dir}/bin/python", user)
    if not state or not state["debris"]:
        host.noop(f"{venv_dir}: no pip debris")
        return
    yield StringCommand("rm -rf", *(QuoteString(f"{state['site']}/{d}") for d in state["debris"]))


@operation()
def venv_locked(venv_dir: str, wanted: dict[str, str], pip_args: list[str], owner: str):
    """The venv holds exactly the pinned versions in ``wanted``, intact, and exactly one ONNX Runtime.

    ONNX Runtime distributions share the ``onnxruntime`` module directory, so removing a stray one
    deletes files of the wanted one: that is then reinstalled with --force-reinstall, as is any
    pinned distribution whose files are missing or changed. Installs use --no-deps: the lock is
    complete, and piper-tts's dependency on the CPU ``onnxruntime`` must not come back. Run it as
    the venv's owner (``as_user``).
    """
    python = f"{venv_dir}/bin/python"
    changes = venv_changes(venv_state(python, owner), wanted)
    if not changes:
        host.noop(f"{venv_dir}: {len(wanted)} pinned distributions present and intact, one ONNX Runtime")
        return
    pip = [QuoteString(python), "-m pip --disable-pip-version-check --no-input --retries 5 --timeout 30"]
    if changes.remove:
        yield StringCommand(*pip, "uninstall -y", *map(QuoteString, changes.remove))
    if changes.install:
        yield StringCommand(*pip, "install --no-deps", *(["--force-reinstall"] if changes.force else []),
                            *map(QuoteString, pip_args),
                            *(QuoteString(f"{n}=={v}") for n, (_, v) in sorted(changes.install.items())))


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
        rc, lines = host.get_fact(AptSimulation, packages=packages)
        if rc == 0:
            host.noop("every pinned package is offered, and apt-get install --simulate of all of them succeeds: "
                      + ", ".join(f"{n} from {offers[n][0][1]}" for n in packages if offers.get(n)))
            return
        reasons = apt_reasons(lines)
        # the pinned packages apt names, else those of the same family as a dependency it names
        # (cuda-nsight-systems-12-4 -> the CUDA packages, libcudnn9-... -> cuDNN); else all of them (a
        # dependency deep in the tree, such as nsight-systems-2023.4.4, names no family)
        named = [n for n in packages if any(r.startswith(f"{n} ") for r in reasons)] or [
            n for n in packages if any(r.split("-", 1)[0] == n.split("-", 1)[0] for r in reasons)] or list(packages)
        message = ("apt-get install --simulate of what this deploy pins fails (apt's own dependency check); "
                   "nothing was installed.\n  - " + "\n  - ".join(reasons)
                   + "\n  Fix: " + "; or ".join(dict.fromkeys(fixes.get(n, "point the apt source at a repository "
                                                                       "that has it") for n in named)))
        yield f"echo {shlex.quote(message)} >&2; exit 1"
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


_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def ini_with_option(text: str, section: str, key: str, value: str) -> str:
    """``text`` (an INI file such as /etc/wsl.conf) with ``key=value`` in ``[section]``; every other
    line (sections, keys, comments, blank lines) kept as it was. An existing ``key`` in the section
    gets the value (each occurrence, if the section repeats); else the key goes at the end of the
    section's first occurrence; else the section is appended."""
    lines = text.splitlines()
    wanted_section = section.strip().lower()
    key_re = re.compile(rf"^(\s*){re.escape(key)}(\s*)=(\s*)(.*?)\s*$", re.IGNORECASE)
    current, seen, found, first_last = None, 0, False, None  # first_last: the first occurrence's last line
    for n, line in enumerate(lines):
        m = _SECTION.match(line)
        if m:
            current = m.group(1).strip().lower()
            if current == wanted_section:
                seen += 1
                if seen == 1:
                    first_last = n
            continue
        if current != wanted_section:
            continue
        if seen == 1 and line.strip():
            first_last = n
        km = key_re.match(line)
        if km:
            found = True
            lines[n] = f"{km.group(1)}{key}{km.group(2)}={km.group(3)}{value}"
    if not found:
        if first_last is not None:
            lines.insert(first_last + 1, f"{key}={value}")
        else:
            if lines and lines[-1].strip():
                lines.append("")
            lines += [f"[{section}]", f"{key}={value}"]
    return "\n".join(lines) + "\n"


@operation()
def ini_option(path: str, section: str, key: str, value: str, mode: str = "644"):
    """``path`` has ``key=value`` in ``[section]``; the rest of the file is left as it is (unlike a
    managed block, which would add a second ``[section]`` to a file that has one)."""
    lines = host.get_fact(FileContents, path=path)
    text = "\n".join(lines) + "\n" if lines else ""
    wanted = ini_with_option(text, section, key, value)
    if wanted == text:
        host.noop(f"{path}: [{section}] {key}={value}")
        return
    yield FileUploadCommand(StringIO(wanted), path)
    yield StringCommand("chmod", mode, QuoteString(path))
