"""The CPU server a manual setup left, and what the deploy does with it (pure decisions: the facts come
from ``facts.ManualSetup``, the operations are ``steps/old_server.py``'s).

The users' plan runs their server by hand (``python /path/to/piper_http_server.py --host 0.0.0.0 --port
5005`` from ``~/piper_env``) and restarts it with ``pkill -f piper_http_server``. On such a host the deploy
finds, before it changes anything: what listens on the service's port, the old server's processes and
script, and what starts it (shell start-up lines, crontab lines, systemd units). ``plan`` decides:

- the port is held by this deploy's own service: nothing to do;
- by a Piper server of this host (the users' script, Piper's own ``piper.http_server``, a server of this
  deploy's that its records do not know): with ``old_server='migrate'`` it is stopped, its autostart is
  turned off and its script moved aside (each named, each put back by undeploy); with ``'refuse'`` the run
  stops before any change;
- by anything else, or by a process this host does not show: the run stops before any change, naming the
  port, the process and the ``port`` setting.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from piper_gpu.facts import OLD_SERVER_NAMES

#: The prefix that turns an autostart line into a comment; undeploy takes it off again.
DISABLED = "# piper-gpu-deploy disabled this line (undeploy restores it): "
#: The address the service gets without a setting and without an old server to carry over.
DEFAULT_BIND = "127.0.0.1"


class Refused(Exception):
    """The host holds something the deploy must not touch; the message says what and the fix."""


@dataclass(frozen=True)
class Process:
    pid: int
    user: str
    cwd: str
    root: str
    cmdline: tuple[str, ...]
    sockets: tuple[str, ...] = ()  # "address:port" it listens on

    @staticmethod
    def of(raw: dict) -> "Process":
        return Process(pid=int(raw["pid"]), user=raw.get("user") or "?", cwd=raw.get("cwd") or "?",
                       root=raw.get("root") or "?", cmdline=tuple(raw.get("cmdline") or ()),
                       sockets=tuple(raw.get("sockets") or ()))

    @property
    def command(self) -> str:
        return shlex.join(self.cmdline) if self.cmdline else "(no command line: a kernel thread or a zombie)"

    @property
    def on_this_host(self) -> bool:
        """Runs in this host's root directory (facts.ManualSetup compares device and inode): a process of
        the machine a chroot runs on, or of a container, has another root."""
        return self.root == "same"

    def describe(self) -> str:
        where = f", listening on {', '.join(self.sockets)}" if self.sockets else ""
        return f"pid {self.pid} ({self.user}: {self.command}, in {self.cwd}{where})"


#: Python's options that take a value as the next argument (python3 --help): the script comes after them.
_PY_VALUE_OPTIONS = {"-W", "-X", "--check-hash-based-pycs"}


def python_target(cmdline: tuple[str, ...] | list[str], cwd: str = "") -> tuple[str, str] | None:
    """What a Python interpreter's command line runs: ("script", its path, made absolute against ``cwd``) or
    ("module", its name); None when the program is not Python (an editor or a terminal multiplexer naming
    the file, say) or runs neither (-c, the REPL)."""
    if not cmdline or not re.fullmatch(r"python(\d+(\.\d+)?)?", PurePosixPath(cmdline[0]).name):
        return None
    args = list(cmdline[1:])
    while args:
        arg = args.pop(0)
        if arg == "-m" and args:
            return "module", args[0]
        if arg.startswith("-m") and len(arg) > 2:
            return "module", arg[2:]
        if arg == "-c" or arg.startswith("-c"):
            return None
        if arg in _PY_VALUE_OPTIONS:
            args = args[1:]
            continue
        if arg == "--" and args:
            arg = args.pop(0)
        elif arg.startswith("-"):
            continue
        path = arg if arg.startswith("/") or not cwd else posixpath.normpath(posixpath.join(cwd, arg))
        return "script", path
    return None


def is_piper_server(cmdline: tuple[str, ...] | list[str], scripts: tuple[str, ...] = (), cwd: str = "") -> bool:
    """A Python interpreter runs a Piper HTTP server: a script named piper_http_server*.py (the users'), one
    of ``scripts`` (the ``old_server_scripts`` setting: the same path), or the module piper.http_server
    (Piper's own) or piper_gpu_server (this deploy's). A program that only names such a file (an editor, a
    pager, a terminal multiplexer whose window runs it) is not one."""
    target = python_target(cmdline, cwd)
    if target is None:
        return False
    kind, what = target
    if kind == "module":
        return what in OLD_SERVER_NAMES[1:]
    name = PurePosixPath(what).name
    return (name.startswith("piper_http_server") and name.endswith(".py")) or what in scripts


@dataclass
class Migration:
    """What the deploy does with the old server on this host."""

    stop: list[Process] = field(default_factory=list)
    #: their scripts, moved to a dated backup
    scripts: list[str] = field(default_factory=list)
    #: server scripts an earlier release of this deploy rendered (its marker): removed as its own
    own_scripts: list[str] = field(default_factory=list)
    #: (file, line number, line): shell start-up and crontab lines that start it, turned into comments
    autostart: list[tuple[str, int, str]] = field(default_factory=list)
    #: (unit file, enabled): systemd units that run it, stopped and disabled
    units: list[tuple[str, bool]] = field(default_factory=list)
    #: the address the old server listened on, carried over as bind_address ("auto"), or None
    address: str | None = None
    #: what the run says besides its operations (a port that changes, a user unit it cannot reach)
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.stop or self.scripts or self.autostart or self.units)

    def found(self) -> list[str]:
        """One line per thing of the old setup, for the run's output and --dry."""
        lines = [f"old server running: {p.describe()}" for p in self.stop]
        lines += [f"old server script: {s}" for s in self.scripts]
        lines += [f"script an earlier release of this deploy rendered: {s}" for s in self.own_scripts]
        lines += [f"starts it: {f}:{n}: {t.strip()}" for f, n, t in self.autostart]
        lines += [f"systemd unit that runs it: {u} ({'enabled' if e else 'disabled'})" for u, e in self.units]
        return lines


def _address_of(socket: str) -> tuple[str, int]:
    address, _, port = socket.rpartition(":")
    return address, int(port)


def plan(facts: dict, port: int, mode: str, scripts: tuple[str, ...], home: str, bind_setting: str) -> Migration:
    """Decide from ``facts`` (``facts.ManualSetup``) what to do with the old server. Raises ``Refused``
    when the run must stop before any change."""
    processes = {pid: Process.of(raw) for pid, raw in (facts.get("processes") or {}).items()}
    ours = set(facts.get("our_pids") or [])
    expanded = tuple(home + s[1:] if s.startswith("~/") else s for s in scripts)
    holders = [l for l in facts.get("listeners") or [] if l["port"] == int(port)]
    holder_pids = {pid for pid, p in processes.items() if any(_address_of(s)[1] == int(port) for s in p.sockets)}
    fix_port = f"Nothing was changed. Free port {port}, or set piper_gpu_port to a free port."
    if holders and not holder_pids:
        where = ", ".join(sorted({l["address"] for l in holders}))
        raise Refused(f"port {port} is in use (listening on {where}) by a process this host does not show: another "
                      f"container, a process of another user namespace, or one that is not this host's. {fix_port}")
    for pid in sorted(holder_pids - ours):
        p = processes[pid]
        if not p.on_this_host:
            raise Refused(f"port {port} is held by {p.describe()}, a process with another root directory (the machine "
                          f"a chroot runs on, or a container), not of this host. {fix_port}")
        if not is_piper_server(p.cmdline, expanded, p.cwd):
            raise Refused(f"port {port} is held by {p.describe()}, which is not a Piper server (python running "
                          f"piper_http_server*.py, python -m piper.http_server, or a script in "
                          f"piper_gpu_old_server_scripts). {fix_port}")
    m = Migration()
    for path, own in facts.get("scripts") or []:
        (m.own_scripts if own else m.scripts).append(path)
    servers = {pid: p for pid, p in sorted(processes.items())
               if pid not in ours and p.on_this_host and is_piper_server(p.cmdline, expanded, p.cwd)}
    running = {pid: python_target(p.cmdline, p.cwd)[1] for pid, p in servers.items()}
    # the old server: what holds the port, and whatever runs the same script as it or one found under the home
    # or named in old_server_scripts; another Piper server of this host (another user's, another copy) is named only
    known = {running[pid] for pid in servers if pid in holder_pids} | set(m.scripts) | set(expanded)
    m.stop = [p for pid, p in servers.items() if pid in holder_pids or running[pid] in known]
    for pid, p in servers.items():
        if p not in m.stop:
            m.notes.append(f"another Piper server runs on this host, left as it is: {p.describe()}; if it is the server "
                           f"this deploy replaces, list {running[pid]} in piper_gpu_old_server_scripts"
                           + (f" (or set piper_gpu_port to its port)" if p.sockets else ""))
    on_disk = {path for paths in (facts.get("runs") or {}).values() for path in paths}
    m.scripts += sorted({running[p.pid] for p in m.stop if running[p.pid] in on_disk}
                        - set(m.scripts) - set(m.own_scripts))
    m.autostart = [(f, n, t) for f, n, t in facts.get("autostart") or [] if not t.lstrip().startswith("#")]
    for f, n, t in m.autostart:
        if t.rstrip().endswith("\\"):
            raise Refused(f"{f} line {n} starts the old server and goes on over the next line (it ends in a "
                          f"backslash): {t.strip()}; turned into a comment, its next line would still run. Nothing was "
                          "changed: turn it off there by hand, then run the deploy again")
    m.units = [(u, e) for u, e in facts.get("units") or []]
    user_units = [u for u, _ in m.units if u.startswith(home + "/")]
    if user_units:
        m.notes.append(f"systemd user unit(s) {', '.join(user_units)} run the old server: the deploy stops its process "
                       "but cannot disable a user's unit; run `systemctl --user disable --now UNIT` as that user")
        m.units = [(u, e) for u, e in m.units if u not in user_units]
    if mode == "refuse" and (m or m.own_scripts):
        raise Refused("old_server='refuse' and the CPU server of a manual setup is on this host; nothing was "
                      "changed:\n  - " + "\n  - ".join(m.found())
                      + "\n  Fix: stop and remove it yourself, or set piper_gpu_old_server='migrate' (the deploy stops "
                        "it, turns its autostart off and keeps its script aside; undeploy puts them back)")
    listened = [_address_of(s) for p in m.stop for s in p.sockets]
    on_port = [a for a, pt in listened if pt == int(port)]
    record = facts.get("record") or {}
    m.address = on_port[0] if on_port else (listened[0][0] if listened else record.get("address"))
    if not m.address and (m.scripts or m.autostart):  # found, but not running: what its autostart line says
        hosts = [(f, n, h.group(1)) for f, n, t in m.autostart for h in [re.search(r"--host[= ]+(\S+)", t)] if h]
        if hosts:
            f, n, m.address = hosts[0]
            m.notes.append(f"the old server is not running; its address {m.address} is taken from {f} line {n}")
        else:
            m.notes.append("the old server is not running and says nowhere where it listened: the service listens on "
                           f"{DEFAULT_BIND} (this machine only) unless piper_gpu_bind_address says otherwise")
    others = sorted({pt for _, pt in listened if pt != int(port)})
    if others:
        m.notes.append(f"the old server listened on port {', '.join(map(str, others))}; the service listens on {port}"
                       f": set piper_gpu_port={others[0]} to keep your clients' URL")
    if bind_setting not in ("auto", None) and m.address and m.address != bind_setting:
        m.notes.append(f"the old server listened on {m.address}; bind_address={bind_setting!r} is set, so the service "
                       f"listens on {bind_setting} instead")
    return m


def bind_address(setting: str, migration: Migration) -> tuple[str, str]:
    """(the address the service listens on, why) for ``bind_address`` = ``setting``."""
    if setting != "auto":
        return setting, "set by bind_address"
    if migration.address:
        return migration.address, "carried over from the old server (bind_address='auto')"
    return DEFAULT_BIND, "bind_address='auto' and no old server to carry over: this machine only"


def exposure_note(address: str, why: str) -> str | None:
    """What the operator must know about where the service listens."""
    if address in ("0.0.0.0", "::"):
        return (f"the service listens on {address} (every address: {why}); other machines reach it as they reached "
                "the old server. To serve this machine only, set piper_gpu_bind_address='127.0.0.1'; to require a "
                "key, set piper_gpu_api_key")
    if why.startswith("carried"):
        return f"the service listens on {address} ({why})"
    return None


def disabled(line: str) -> str:
    """An autostart line as the deploy leaves it: a comment that undeploy can take off again."""
    return DISABLED + line
