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


# --- what the deploy moves aside, turns off or replaces, and undeploy puts back -------------------

def _parent_made(path: str) -> str:
    """The command that makes the directory ``path`` goes in."""
    return f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])}"


def _ledger_line(ledger: str, *fields: str) -> str:
    """The command that appends one tab-separated line to the ledger (target.MOVED_ASIDE)."""
    q = shlex.quote
    return f"{_parent_made(ledger)} && printf '%s\\n' {q(chr(9).join(fields))} >> {q(ledger)}"


def _copy_to(path: str, backup: str) -> str:
    q = shlex.quote
    return f"{_parent_made(backup)} && cp -p -- {q(path)} {q(backup)}"


@operation()
def lines_disabled(path: str, lines: list[tuple[int, str]], prefix: str, backup: str, ledger: str,
                   shell_syntax: bool = True):
    """The numbered ``lines`` of ``path`` (a shell start-up file, a crontab) become comments that start with
    ``prefix``. The file as it was is at ``backup`` (copied now unless an earlier operation of the run did),
    and the ledger says so for undeploy, before the file changes. A line already commented is left alone
    (sed's address skips it), so a re-run changes nothing. With ``shell_syntax``, a file that ``bash -n`` no
    longer parses (the line was part of an if or a loop) is put back and the run stops, naming the lines."""
    if not lines:
        host.noop(f"{path}: nothing to turn off")
        return
    q = shlex.quote
    yield f"[ -e {q(backup)} ] || {{ {_copy_to(path, backup)}; }}"
    yield _ledger_line(ledger, "lines", path, backup)
    # GNU sed -i keeps the file's owner and mode, --follow-symlinks edits a symlinked dotfile where it lives;
    # the prefix holds no sed metacharacter of s|||
    script = " ".join(f"-e {q(f'{n}{{/^#/!s|^|{prefix}|}}')}" for n, _ in lines)
    yield f"sed -i --follow-symlinks {script} {q(path)}"
    if shell_syntax:
        numbers = ", ".join(str(n) for n, _ in lines)
        message = (f"turning off line {numbers} of {path} would break the file's shell syntax (the line is part of "
                   "an if, a loop or a longer command): the file is as it was; turn the old server's autostart off "
                   "there by hand, then run the deploy again")
        undo = " ".join(f"-e {q(f'{n}s|^{prefix}||')}" for n, _ in lines)
        yield (f"if command -v bash >/dev/null && ! bash -n {q(path)} 2>/dev/null; then sed -i --follow-symlinks "
               f"{undo} {q(path)}; {_drop(ledger, chr(9).join(['lines', path, backup]))}; "
               f"echo {q(message)} >&2; exit 1; fi")


def _drop(ledger: str, entry: str) -> str:
    """The command that removes ``entry`` from the ledger (and the ledger once it is empty)."""
    q = shlex.quote
    return (f"grep -vxF -- {q(entry)} {q(ledger)} > {q(ledger)}.tmp; mv -f {q(ledger)}.tmp {q(ledger)}; "
            f"[ -s {q(ledger)} ] || rm -f {q(ledger)}")


@operation()
def copies_kept(paths: list[str], backups: list[str]):
    """Each of ``paths`` copied to its backup (owner, mode and times kept), as it is now: before the run
    changes it."""
    for path, backup in zip(paths, backups):
        yield _copy_to(path, backup)


@operation()
def unit_disabled(unit_file: str, enabled: bool, systemd_running: bool, ledger: str):
    """A systemd unit that is not the deploy's (it runs the old server) stopped where systemd runs, and
    disabled when it was enabled; the ledger says so for undeploy (which enables it again)."""
    name = unit_file.rsplit("/", 1)[-1]
    if enabled:
        yield _ledger_line(ledger, "unit", unit_file)
        yield StringCommand("systemctl disable", "--now" if systemd_running else "", QuoteString(name))
    elif systemd_running:
        yield StringCommand("systemctl stop", QuoteString(name))


@operation()
def processes_stopped(processes: list, wait_s: int, record: str, record_text: str, port: int | None = None):
    """Each of ``processes`` (migration.Process) gets SIGTERM, if it still runs the same command line (a
    pid taken by another process since the plan is left alone); the operation waits up to ``wait_s``
    seconds for those it signalled to exit and fails naming each survivor and how to stop it. With ``port``
    (the old server held the service's port), the port must then be free: something that started a server
    there again (a unit, a supervisor, a loop) is named. ``record_text`` goes to ``record`` once they are gone."""
    q = shlex.quote
    lines = ["signalled=''"]
    for p in processes:
        expected = " ".join(p.cmdline) + " "
        lines.append(f"if [ \"$(tr '\\000' ' ' < /proc/{p.pid}/cmdline 2>/dev/null)\" = {q(expected)} ] && "
                     f"kill -TERM {p.pid} 2>/dev/null; then signalled=\"$signalled {p.pid}\"; fi")
    described = {str(p.pid): p.describe() for p in processes}
    survivors = "; ".join(f"[ $p = {pid} ] && echo {q('  ' + text)} >&2" for pid, text in described.items())
    lines.append(f"n=0; while [ $n -lt {int(wait_s) * 5} ]; do alive=''; for p in $signalled; do "
                 "kill -0 $p 2>/dev/null && ! grep -q '^State:.*zombie' /proc/$p/status 2>/dev/null && "
                 "alive=\"$alive $p\"; done; [ -z \"$alive\" ] && break; sleep 0.2; "
                 "n=$((n + 1)); done")
    lines.append(f"if [ -n \"$alive\" ]; then echo \"the old server did not stop within {int(wait_s)} s of SIGTERM:\" >&2; "
                 f"for p in $alive; do {survivors}; done; echo '  stop it yourself (kill -9 PID; if a systemd unit or a "
                 "supervisor restarts it, stop that), then run the deploy again' >&2; exit 1; fi")
    yield "; ".join(lines)
    if port:
        yield (f"sleep 1; held=$(ss -Hltnp 'sport = :{int(port)}' 2>/dev/null | head -n 1); if [ -n \"$held\" ]; then "
               f"echo \"the old server stopped, but port {int(port)} is held again: $held. Something starts it again "
               "(a systemd unit, a supervisor, a loop, a cron job): stop that, then run the deploy again\" >&2; exit 1; fi")
    yield f"{_parent_made(record)} && printf '%s\\n' {q(record_text)} > {q(record)}"


@operation()
def moved_aside(path: str, backup: str, ledger: str):
    """``path`` (a file the deploy did not write) moved to ``backup``, owner, mode and times kept; the
    ledger says so for undeploy (which moves it back)."""
    q = shlex.quote
    yield _ledger_line(ledger, "file", path, backup)
    yield f"{_parent_made(backup)} && mv -- {q(path)} {q(backup)}"


@operation()
def kept_aside(path: str, backup: str, ledger: str):
    """A copy of ``path`` (a file the deploy did not write, which it is about to replace) at ``backup``;
    the ledger says so for undeploy (which puts it back in place of the deploy's file)."""
    yield _ledger_line(ledger, "copy", path, backup)
    yield _copy_to(path, backup)


def _prune(directory: str, stop_at: str) -> str:
    """The command that removes ``directory`` and its parents up to ``stop_at`` (excluded) while empty."""
    q = shlex.quote
    return (f"d={q(directory)}; while [ \"$d\" != {q(stop_at)} ] && [ \"$d\" != / ] && rmdir \"$d\" 2>/dev/null; "
            "do d=$(dirname \"$d\"); done")


@operation()
def put_back(entry: str, ledger: str, prefix: str, backups: str):
    """Undo one ledger line (target.MOVED_ASIDE) and drop it from the ledger: a file moved aside or
    replaced goes back where it was (unless something is there now: then its backup and its line stay and
    the run says where), lines turned into comments are turned back, a unit is enabled again."""
    q = shlex.quote
    kind, *fields = entry.split("\t")
    drop = _drop(ledger, entry)
    if kind in ("file", "copy") and len(fields) == 2:
        original, backup = fields
        yield (f"if [ ! -e {q(backup)} ]; then echo {q(f'backup {backup} of {original} is gone: nothing to put back')}; "
               f"{drop}; elif [ -e {q(original)} ]; then echo {q(f'{original} exists: its backup stays at {backup}')} >&2; "
               f"else {_parent_made(original)} && mv -- {q(backup)} {q(original)} && {{ {drop}; "
               f"{_prune(backup.rsplit('/', 1)[0], backups)}; }}; fi; true")
    elif kind == "lines" and len(fields) == 2:
        path, backup = fields
        yield (f"if [ ! -f {q(path)} ]; then echo {q(f'{path} is gone: its copy stays at {backup}')} >&2; "
               f"elif sed -i --follow-symlinks -e {q('s|^' + prefix + '||')} {q(path)}; then rm -f -- {q(backup)}; "
               f"{drop}; {_prune(backup.rsplit('/', 1)[0], backups)}; fi; true")
    elif kind == "unit" and len(fields) == 1:
        yield f"systemctl enable {q(fields[0].rsplit('/', 1)[-1])} && {{ {drop}; }}"
    else:
        yield f"echo {q(f'{ledger}: a line this release does not know, left as it is: {entry!r}')} >&2"
