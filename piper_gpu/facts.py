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
    """True when the pid file exists and names a live process."""

    def command(self, pidfile: str) -> str:
        q = shlex.quote(pidfile)
        return f"if [ -s {q} ] && kill -0 \"$(cat {q})\" 2>/dev/null; then echo yes; else echo no; fi"

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
