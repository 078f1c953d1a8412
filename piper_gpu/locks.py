"""The Piper venv's lock, one per target Python (piper_gpu/locks/python<X.Y>.txt).

Each lock is produced by pip's resolver, never by hand:

    python -m piper_gpu lock --python 3.10 --resolve     # rewrite the lock from PyPI (pip install --dry-run --report)
    python -m piper_gpu lock --python 3.10               # print what a host with Python 3.10 gets
    python -m piper_gpu lock --python 3.10 --check       # every pin has a wheel for it (pip download)

The resolver is asked for piper-tts and onnxruntime-gpu at their pinned versions and for what the
server (server/, piper-gpu-server) requires, for CPython X.Y on manylinux x86_64, binary wheels only;
the pins of the lock it replaces are constraints, so adding a requirement changes no other pin that
can stay. The server itself is not on PyPI: the deploy builds its wheel and pins it beside the lock. piper-tts requires the CPU ``onnxruntime``; the lock leaves it
out (the deploy installs ``--no-deps`` and removes it), its other requirements are also
onnxruntime-gpu's, so the rest of the resolution holds for the GPU build alone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LOCK_DIR = Path(__file__).resolve().parent / "locks"
#: Left out of every lock: the CPU build piper-tts asks for, replaced by onnxruntime-gpu.
EXCLUDED = ("onnxruntime",)
#: Linux x86_64 wheel tags pip may pick for the distros in the platform table (glibc 2.35-2.39).
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")


class LockError(RuntimeError):
    pass


def wheel_args(python: str) -> list[str]:
    """pip arguments that select binary wheels a Linux x86_64 CPython ``python`` installs."""
    return ["--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            *[a for p in PLATFORMS for a in ("--platform", p)]]


def path(python: str) -> Path:
    return LOCK_DIR / f"python{python}.txt"


def available() -> list[str]:
    found = [m.group(1) for p in LOCK_DIR.glob("python*.txt") if (m := re.fullmatch(r"python(\d+\.\d+)\.txt", p.name))]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def parse(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise LockError(f"lock line {line!r} is not name==version")
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def load(python: str | None) -> dict[str, str]:
    if python not in available():
        raise LockError(f"no venv lock for Python {python} (locks: {', '.join(available())}); "
                        f"make one with: python -m piper_gpu lock --python {python} --resolve")
    return parse(path(python).read_text())


def interpreter(python: str) -> str:
    """A CPython ``python`` to run pip's resolver under. ``--python-version`` sets what wheels and
    Requires-Python pip accepts, but environment markers in dependencies (hypercorn's
    ``tomli; python_version < "3.11"``) are evaluated for the interpreter pip runs under
    (pypa/pip issues #11010 and #13296), so each lock is resolved by its own Python."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == python:
        return sys.executable
    found = shutil.which(f"python{python}")
    if not found:
        raise LockError(f"no python{python} on PATH: resolving the lock for Python {python} needs that interpreter "
                        "(pip evaluates dependency markers for the Python it runs under)")
    return found


def resolve(python: str, top: dict[str, str], pip_args: list[str] | None = None, requirements: tuple[str, ...] = (),
            constraints: dict[str, str] | None = None) -> dict[str, str]:
    """pip's resolver: every distribution ``top`` and ``requirements`` need on CPython ``python`` (minus
    EXCLUDED), keeping the versions in ``constraints`` where they fit."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        kept = {n: v for n, v in (constraints or {}).items() if n not in top}
        constraint_args = []
        if kept:
            Path(tmp, "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(kept.items())))
            constraint_args = ["--constraint", str(Path(tmp, "constraints.txt"))]
        cmd = [interpreter(python), "-m", "pip", "--isolated", "--disable-pip-version-check", "install", "--dry-run",
               "--ignore-installed", "--quiet", "--target", str(Path(tmp, "never-written")), "--report", str(report),
               *wheel_args(python), *(pip_args or []), *constraint_args, *[f"{n}=={v}" for n, v in sorted(top.items())],
               *requirements]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise LockError(f"pip could not resolve {top} for Python {python}:\n{res.stderr.strip()[-3000:]}")
        installed = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installed
            if i["metadata"]["name"].lower() not in EXCLUDED}


def write(python: str, pins: dict[str, str], top: dict[str, str], requirements: tuple[str, ...] = ()) -> Path:
    inputs = " ".join([f"{n}=={v}" for n, v in sorted(top.items())] + [f"'{r}'" for r in requirements])
    header = (f"# The Piper venv for CPython {python} on Linux x86_64, from pip's resolver\n"
              f"# (python -m piper_gpu lock --python {python} --resolve): {inputs}, binary wheels,\n"
              f"# the CPU onnxruntime left out. Do not edit by hand.\n")
    path(python).write_text(header + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    return path(python)


def check(python: str, pins: dict[str, str], download_dir: Path, pip_args: list[str] | None = None) -> dict[str, str]:
    """{pin: pip's reason} for each pin with no wheel that CPython ``python`` on manylinux x86_64
    installs (its Requires-Python included: pip download checks it against --python-version).
    The wheels land in ``download_dir`` (a cache: present ones are not downloaded again).
    One pip run for every pin; only when it fails, one run per pin, since pip stops at the first pin it
    cannot find and the answer names each."""
    download_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "download", "--no-deps",
           "--quiet", *wheel_args(python), *(pip_args or []), "-d", str(download_dir)]
    every = [f"{name}=={version}" for name, version in sorted(pins.items())]
    if subprocess.run([*cmd, *every], capture_output=True, text=True).returncode == 0:
        return {}
    failures = {}
    for pin in every:
        res = subprocess.run([*cmd, pin], capture_output=True, text=True)
        if res.returncode != 0:
            reason = [line for line in res.stderr.splitlines() if line.startswith("ERROR")]
            failures[pin] = " ".join(reason) or res.stderr.strip()[-500:]
    return failures
