"""pyinfra facts the deploy decides on that pyinfra has no fact for: WSL2, the NVIDIA driver, the
Python a venv gets, systemd as PID 1, held packages, dpkg left interrupted, the venv's Python
distributions, whether the profile-mode service runs, what apt sources offer. (The distro, users and
installed packages come from pyinfra's own server.OsRelease, server.Users and deb.DebPackages.)"""

from __future__ import annotations

import json
import re
import shlex

from pyinfra.api import FactBase


class WslInfo(FactBase):
    """{'is_wsl': bool, 'kernel': str, 'wsl_lib': bool} from the kernel string and /usr/lib/wsl/lib."""

    default = dict

    def command(self) -> str:
        return (
            "echo kernel=$(cat /proc/sys/kernel/osrelease 2>/dev/null || uname -r); "
            "if [ -d /usr/lib/wsl/lib ]; then echo wsl_lib=yes; else echo wsl_lib=no; fi"
        )

    def process(self, output):
        info = dict(line.split("=", 1) for line in output if "=" in line)
        kernel = info.get("kernel", "")
        return {
            "kernel": kernel,
            "wsl_lib": info.get("wsl_lib") == "yes",
            "is_wsl": bool(re.search(r"microsoft|wsl", kernel, re.I)),
        }


#: Where nvidia-smi lives: PATH, WSL2's Windows-driver mount, the usual Linux location.
NVIDIA_SMI_CANDIDATES = ("nvidia-smi", "/usr/lib/wsl/lib/nvidia-smi", "/usr/bin/nvidia-smi")


class NvidiaDriver(FactBase):
    """None when no working nvidia-smi; else {'path', 'driver_version', 'cuda_version', 'gpus': [...]}.

    ``cuda_version`` is the highest CUDA version the driver supports (nvidia-smi's header).
    """

    def command(self) -> str:
        cands = " ".join(shlex.quote(c) for c in NVIDIA_SMI_CANDIDATES)
        return (
            f"for c in {cands}; do p=$(command -v \"$c\" 2>/dev/null) || continue; "
            "echo \"path=$p\"; \"$p\" 2>&1 | sed -n 's/.*CUDA Version: *\\([0-9.]*\\).*/cuda=\\1/p'; "
            "\"$p\" --query-gpu=name,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu=/'; "
            "exit 0; done; echo none"
        )

    def process(self, output):
        path, cuda, gpus, driver = None, None, [], None
        for line in output:
            if line.startswith("path="):
                path = line[5:]
            elif line.startswith("cuda="):
                cuda = line[5:]
            elif line.startswith("gpu="):
                name, _, ver = line[4:].rpartition(",")
                if name and re.match(r"^\s*\d+\.\d+", ver):
                    gpus.append(name.strip())
                    driver = ver.strip()
        if not path:
            return None
        return {"path": path, "driver_version": driver, "cuda_version": cuda, "gpus": gpus}


class PythonVersion(FactBase):
    """'3.11': the python3 a venv gets, from python3 itself or, before it is installed, from
    apt's candidate for the python3 package. None when neither tells."""

    def command(self) -> str:
        return ("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null || "
                "apt-cache policy python3 2>/dev/null | sed -n 's/^ *Candidate: *\\([0-9]*\\.[0-9]*\\).*/\\1/p'")

    def process(self, output):
        found = [line.strip() for line in output if re.fullmatch(r"\d+\.\d+", line.strip())]
        return found[0] if found else None


class SystemdRunning(FactBase):
    """True when systemd is PID 1 (the way sd_booted() decides)."""

    def command(self) -> str:
        return "if [ -d /run/systemd/system ]; then echo yes; else echo no; fi"

    def process(self, output):
        return output[0].strip() == "yes" if output else False


class HeldPackages(FactBase):
    """Packages on hold (apt-mark showhold)."""

    default = set

    def command(self) -> str:
        return "apt-mark showhold 2>/dev/null || true"

    def process(self, output):
        return {line.strip() for line in output if line.strip()}


class DpkgInterrupted(FactBase):
    """Packages an interrupted dpkg run left unconfigured or half-installed (``dpkg --audit``)."""

    default = list

    def command(self) -> str:
        return "dpkg --audit 2>/dev/null | sed -n 's/^ \\([a-z0-9][a-z0-9.+-]*\\) .*/\\1/p' || true"

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


#: Run by the venv's python: the venv as pip sees it, and what pip cannot see. ``sys.argv[1]``: its owner.
_VENV_STATE = r"""
import importlib.metadata as m, json, os, pwd, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
uid = pwd.getpwnam(sys.argv[1]).pw_uid
dists, broken = {}, {}
for d in m.distributions(path=[site]):
    if os.path.basename(str(d._path)).startswith("~"):
        continue  # pip's temporary rename of a distribution it was removing: "invalid distribution"
    name = (d.metadata["Name"] or "").lower().replace("_", "-")
    dists[name] = d.version
    bad = []
    for f in d.files or []:
        if f.size is None or f.suffix == ".pyc":  # bytecode: Python rewrites it when stale
            continue
        try:
            if os.stat(f.locate()).st_size != f.size:
                bad.append(str(f) + " (changed)")
        except FileNotFoundError:
            bad.append(str(f) + " (missing)")
    if bad:
        broken[name] = "%d file(s) missing or changed, e.g. %s" % (len(bad), bad[0])
debris = sorted(e for e in os.listdir(site) if e.startswith("~"))
foreign = []
for top, dirs, files in os.walk(sys.prefix):
    for e in dirs + files:
        p = os.path.join(top, e)
        st = os.lstat(p)
        if st.st_uid != uid:
            foreign.append("%s (uid %d)" % (p, st.st_uid))
print(json.dumps({"site": site, "distributions": dists, "broken": broken, "debris": debris, "foreign_owned": foreign[:5],
                  "foreign_owned_count": len(foreign)}))
"""


class VenvState(FactBase):
    """A venv as pip sees it, and what pip cannot see, or None when it has no python:

    - ``distributions``: {normalised name: version}, leaving out pip's ``~``-prefixed debris (pip
      warns "Ignoring invalid distribution ~..." and does not list them);
    - ``broken``: {name: why} for distributions whose files are missing or differ in size from their
      ``RECORD`` (another distribution overwrote or deleted them: two ONNX Runtimes share one module
      directory); sizes only, cheap enough for every run (verify checks the hashes); bytecode left
      out (a wheel may ship a .pyc that Python rewrites, as numpy 2.2.6's distutils one);
    - ``debris``: ``~``-prefixed entries in site-packages, left by an interrupted or failed pip run;
    - ``foreign_owned``: paths not owned by ``owner`` (a ``sudo pip install``), the first five, and
      ``foreign_owned_count``.
    """

    def command(self, python: str, owner: str) -> str:
        q = shlex.quote(python)
        return f"if [ -x {q} ]; then {q} -c {shlex.quote(_VENV_STATE)} {shlex.quote(owner)}; else echo null; fi"

    def process(self, output):
        return json.loads("\n".join(output))


class PidAlive(FactBase):
    """True when the pid file names a live process that runs the server (a pid file left by a server that
    died before a reboot may name another process now)."""

    def command(self, pidfile: str) -> str:
        q = shlex.quote(pidfile)
        return (f"p=$(cat {q} 2>/dev/null); if [ -n \"$p\" ] && grep -q -a piper_gpu_server /proc/$p/cmdline 2>/dev/null; "
                "then echo yes; else echo no; fi")

    def process(self, output):
        return bool(output) and output[0].strip() == "yes"


class AptOffers(FactBase):
    """{package: [(version, source), ...]} of what the configured apt sources offer (apt-cache madison)."""

    default = dict

    def command(self, packages: list[str]) -> str:
        return "apt-cache madison " + " ".join(shlex.quote(p) for p in packages) + " 2>/dev/null || true"

    def process(self, output):
        offers: dict[str, list[tuple[str, str]]] = {}
        for line in output:
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3:
                offers.setdefault(parts[0], []).append((parts[1], parts[2].replace(" Packages", "").strip()))
        return offers


class AptSimulation(FactBase):
    """(exit code, apt's lines) of ``apt-get install --simulate`` of the pinned packages: apt's own
    answer (dependencies included) before anything is installed."""

    def command(self, packages: dict[str, str | None]) -> str:
        args = " ".join(shlex.quote(f"{p}={v}" if v else p) for p, v in sorted(packages.items()))
        return ("LC_ALL=C DEBIAN_FRONTEND=noninteractive apt-get install --simulate --no-install-recommends "
                f"--allow-downgrades --allow-change-held-packages -q {args} 2>&1; echo \"apt-rc=$?\"")

    def process(self, output):
        lines = [line.rstrip() for line in output]
        rc = next((int(line.split("=", 1)[1]) for line in reversed(lines) if line.startswith("apt-rc=")), 1)
        return rc, [line for line in lines if not line.startswith("apt-rc=")]


def apt_reasons(lines: list[str]) -> list[str]:
    """apt's reasons from a failed simulation: its "Depends: ... but ..." lines (with the package they
    belong to) and its E: lines."""
    out, package = [], ""
    for line in lines:
        m = re.match(r"^\s*(\S+) : (Depends|PreDepends|Conflicts|Breaks): (.*)$", line)
        if m:
            package = m.group(1)
            out.append(f"{package} {m.group(2)}: {m.group(3).strip()}")
        elif re.match(r"^\s+(Depends|PreDepends|Conflicts|Breaks): ", line) and package:
            out.append(f"{package} {line.strip()}")
        elif line.startswith("E: "):
            out.append(line)
    return out or lines[-5:]


class FilesDiffer(FactBase):
    """Files matching ``pattern`` that have no identical copy in ``dest_dir`` ([] when all do);
    None when nothing matches."""

    def command(self, pattern: str, dest_dir: str) -> str:
        d = shlex.quote(dest_dir)
        return (f"found=no; for f in {pattern}; do [ -f \"$f\" ] || continue; found=yes; "
                f"cmp -s \"$f\" {d}/\"$(basename \"$f\")\" || echo \"differs=$f\"; done; echo \"found=$found\"")

    def process(self, output):
        if "found=yes" not in [line.strip() for line in output]:
            return None
        return [line.strip()[len("differs="):] for line in output if line.strip().startswith("differs=")]


class PathKinds(FactBase):
    """For each path, in order: "file" or "dir" (readable), "unreadable" or "missing", as the
    connecting user finds it (the deploy reads local sources as root)."""

    default = list

    def command(self, paths: tuple[str, ...]) -> str:
        tests = [f"p={shlex.quote(p)}; if [ -d \"$p\" ] && [ -r \"$p\" ] && [ -x \"$p\" ]; then echo dir; "
                 f"elif [ -f \"$p\" ] && [ -r \"$p\" ]; then echo file; elif [ -e \"$p\" ]; then echo unreadable; "
                 f"else echo missing; fi" for p in paths]
        return "; ".join(tests) or "true"

    def process(self, output):
        return [line.strip() for line in output]


def _unmatched_regex(text: str) -> str:
    """An extended regex matching ``text`` literally whose own spelling does not match it (the first
    character in brackets), so that a search of every process's command line for it does not find the
    shell that runs the search."""
    if not text:
        return ""
    first, rest = text[0], text[1:]
    esc = re.sub(r"([][.^$*+?(){}|\\])", r"\\\1", rest)
    # a bracket of one character, spelled so that grep -E and Python's re both read it ("^" alone would negate)
    bracket = {"]": "[]]", "^": "[_^]", "\\": "[\\\\]"}.get(first, f"[{first}]")
    return bracket + esc


#: What marks a command line or a file as a Piper HTTP server: the users' script, Piper's own server
#: module (python -m piper.http_server) and this deploy's server module.
OLD_SERVER_NAMES = ("piper_http_server", "piper.http_server", "piper_gpu_server")


class ManualSetup(FactBase):
    """What a manual setup of the CPU server left on the host, read before anything changes:

    - ``listeners``: every listening TCP socket (address, port, inode) of the host's network namespace
      (``/proc/net/tcp``, ``/proc/net/tcp6``: no ``ss`` needed before the base packages are in);
    - ``processes``: {pid: {user, cwd, root, cmdline, sockets}} for the holders of ``port`` and every
      process whose command line names a Piper server or one of ``scripts``; ``root`` is "same" when the
      process's root directory is the host's own (device and inode: a chroot's ``readlink`` shows "/" for a
      root outside it), else that root's device:inode, or "?";
    - ``scripts``: [(path, ours)] of ``piper_http_server*.py`` under ``home`` (not in site-packages or
      caches), the paths in ``scripts``, and the script each such process runs; ``ours``: the file
      carries the marker of an earlier release of this deploy ("Rendered by piper-gpu-deploy");
    - ``autostart``: [(file, line number, line)] of ``home``'s shell start-up files and ``user``'s
      crontab that name one of them (comments included: the caller decides);
    - ``units``: [(unit file, enabled)] of systemd units that run one (this deploy's own unit left out);
    - ``our_pids``: the service's pid (pid file) and the unit's MainPID;
    - ``record``: what an earlier run recorded when it migrated an old server (``record_path``).
    """

    def command(self, port: int, home: str, user: str, scripts: tuple[str, ...], pid_file: str, unit: str,
                record_path: str) -> str:
        q = shlex.quote
        names = list(OLD_SERVER_NAMES) + [s.rsplit("/", 1)[-1] for s in scripts]
        pattern = "|".join(_unmatched_regex(n) for n in dict.fromkeys(names))
        wanted = " ".join(q(s if not s.startswith("~/") else home + s[1:]) for s in scripts)
        home_q, user_q = q(home), q(user)
        return f"""set +e
pat={q(pattern)}
for f in /proc/net/tcp /proc/net/tcp6; do
  [ -r "$f" ] && awk 'NR > 1 && $4 == "0A" {{ split($2, a, ":"); print "lsock=" a[1] " " a[2] " " $10 }}' "$f"
done
hex=$(printf '%04X' {int(port)})
inodes=$(for f in /proc/net/tcp /proc/net/tcp6; do [ -r "$f" ] && awk -v p="$hex" \\
  'NR > 1 && $4 == "0A" {{ split($2, a, ":"); if (a[2] == p) print $10 }}' "$f"; done)
set --
for i in $inodes; do set -- "$@" -o -lname "socket:\\[$i\\]"; done
holders=""
if [ $# -gt 0 ]; then
  shift
  holders=$(find /proc/[0-9]*/fd -maxdepth 1 \\( "$@" \\) -printf '%h\\n' 2>/dev/null | cut -d/ -f3 | sort -u)
fi
named=$(grep -l -a -E "$pat" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3)
me=$(stat -L -c '%d:%i' / 2>/dev/null)
for p in $(printf '%s\\n' $holders $named | sort -un); do
  [ "$p" = "$$" ] && continue
  [ -r /proc/$p/cmdline ] || continue
  # its root: this host's when it is the same directory as ours (a chroot's readlink shows "/" for any root
  # outside it, so the device and inode decide); "?" when it cannot be read
  r=$(stat -L -c '%d:%i' /proc/$p/root 2>/dev/null); [ -n "$r" ] || r="?"
  [ "$r" = "$me" ] && r=same
  echo "proc=$p	$(stat -c %U /proc/$p 2>/dev/null)	$(readlink /proc/$p/cwd 2>/dev/null)	$r	$(tr '\\000\\n\\t' '\\037\\036\\035' < /proc/$p/cmdline)"
  find /proc/$p/fd -maxdepth 1 -lname 'socket:*' -printf "psock=$p %l\\n" 2>/dev/null
  cwd=$(readlink /proc/$p/cwd 2>/dev/null)
  tr '\\000' '\\n' < /proc/$p/cmdline | grep -E '\\.py$' | while IFS= read -r a; do
    case "$a" in /*) s="$a" ;; *) s="$cwd/$a" ;; esac
    [ -f "$s" ] && echo "runs=$p	$s"
  done
done
{{ find {home_q} -maxdepth 4 \\( -name site-packages -o -name node_modules -o -name .cache -o -name .git \\) -prune \\
    -o -type f -name 'piper_http_server*.py' -print 2>/dev/null; for s in {wanted}; do [ -f "$s" ] && echo "$s"; done; }} |
  sort -u | while IFS= read -r s; do
    if head -c 4096 "$s" 2>/dev/null | grep -q 'Rendered by piper-gpu-deploy'; then echo "script=ours	$s"; else echo "script=theirs	$s"; fi
  done
for f in {home_q}/.bashrc {home_q}/.profile {home_q}/.bash_profile {home_q}/.bash_login /var/spool/cron/crontabs/{user_q}; do
  [ -f "$f" ] && grep -n -E "$pat" "$f" 2>/dev/null | sed "s|^|autostart=$f	|"
done
for u in /etc/systemd/system/*.service /lib/systemd/system/*.service /usr/lib/systemd/system/*.service \\
    {home_q}/.config/systemd/user/*.service; do
  [ -f "$u" ] || continue
  grep -q -E "$pat" "$u" 2>/dev/null || continue
  head -n 3 "$u" | grep -q 'Managed by piper-gpu-deploy' && continue
  n=$(basename "$u")
  case "$u" in {home_q}/*) if ls {home_q}/.config/systemd/user/*.wants/"$n" >/dev/null 2>&1; then e=enabled; else e=disabled; fi ;;
    *) if ls /etc/systemd/system/*.wants/"$n" >/dev/null 2>&1; then e=enabled; else e=disabled; fi ;; esac
  echo "unit=$e	$u"
done
p=$(cat {q(pid_file)} 2>/dev/null); [ -n "$p" ] && grep -q -a piper_gpu_server /proc/$p/cmdline 2>/dev/null && echo "ours=$p"
[ -d /run/systemd/system ] && echo "ours=$(systemctl show -p MainPID --value {q(unit)} 2>/dev/null)"
[ -s {q(record_path)} ] && echo "record=$(tr -d '\\n' < {q(record_path)})"
true"""

    def process(self, output):
        out = {"listeners": [], "processes": {}, "scripts": [], "runs": {}, "autostart": [], "units": [],
               "our_pids": [], "record": None}
        sockets: dict[int, list[str]] = {}
        for line in output:
            key, _, value = line.partition("=")
            if key == "lsock":
                addr, port, inode = value.split()
                out["listeners"].append({"address": _proc_net_address(addr), "port": int(port, 16), "inode": inode})
            elif key == "proc":
                pid, user, cwd, root, cmd = (value.split("\t", 4) + ["", "", "", "", ""])[:5]
                args = [a.replace("\x1e", "\n").replace("\x1d", "\t") for a in cmd.rstrip("\x1f").split("\x1f")]
                out["processes"][int(pid)] = {"pid": int(pid), "user": user, "cwd": cwd, "root": root,
                                              "cmdline": args if cmd else [], "sockets": []}
            elif key == "psock":
                pid, link = value.split(" ", 1)
                sockets.setdefault(int(pid), []).append(link.strip()[len("socket:["):-1])
            elif key == "runs":
                pid, path = value.split("\t", 1)
                out["runs"].setdefault(int(pid), []).append(path)
            elif key == "script":
                kind, path = value.split("\t", 1)
                out["scripts"].append([path, kind == "ours"])
            elif key == "autostart":
                path, rest = value.split("\t", 1)
                number, _, text = rest.partition(":")
                out["autostart"].append([path, int(number), text])
            elif key == "unit":
                state, path = value.split("\t", 1)
                out["units"].append([path, state == "enabled"])
            elif key == "ours" and value.strip().isdigit() and int(value) > 0:
                out["our_pids"].append(int(value))
            elif key == "record":
                try:
                    out["record"] = json.loads(value)
                except ValueError:
                    out["record"] = None
        by_inode = {listener["inode"]: listener for listener in out["listeners"]}
        for pid, inodes in sockets.items():
            if pid in out["processes"]:
                out["processes"][pid]["sockets"] = [f"{by_inode[i]['address']}:{by_inode[i]['port']}"
                                                    for i in inodes if i in by_inode]
        return out


def _proc_net_address(hexaddr: str) -> str:
    """/proc/net/tcp's address (the kernel's words, each in host byte order) as text."""
    import ipaddress
    import struct

    raw = bytes.fromhex(hexaddr)
    words = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0]) for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv4 client of an IPv6 socket
    return str(mapped or address)


class FileMark(FactBase):
    """None when ``path`` is not a file; else {"ours": its first KiB holds ``marker``, "sha256": ...}:
    whether a file the deploy is about to write is one it wrote before (its marker), or someone else's."""

    def command(self, path: str, marker: str) -> str:
        q = shlex.quote(path)
        return (f"if [ -f {q} ]; then if head -c 1024 {q} | grep -q -F -- {shlex.quote(marker)}; then echo ours; "
                f"else echo theirs; fi; sha256sum {q} | cut -d' ' -f1; else echo absent; fi")

    def process(self, output):
        if not output or output[0].strip() == "absent":
            return None
        return {"ours": output[0].strip() == "ours", "sha256": output[1].strip() if len(output) > 1 else ""}
