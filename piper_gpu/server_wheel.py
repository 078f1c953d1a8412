"""The server (server/: the piper-gpu-server distribution) as a wheel, built on the controller.

Its version is the one in server/pyproject.toml plus a local part naming its sources,
``0.2.0+src.<12 hex of their sha256>``: any change of the code is a new version, which the venv
lock pins, so a re-run installs it and restarts the service, and verify can tell which code runs.
The build is pip's (``pip wheel --no-build-isolation``, setuptools), with SOURCE_DATE_EPOCH fixed so
the same sources give the same bytes; built wheels are kept in a cache directory per version."""

from __future__ import annotations

import email.parser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from piper_gpu.resources import data_dir

DIST = "piper-gpu-server"
MODULE = "piper_gpu_server"
#: 1980-01-01, the earliest time a zip entry holds
SOURCE_DATE_EPOCH = "315532800"


class ServerBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerWheel:
    path: Path
    version: str
    sha256: str
    #: the distributions it requires on the target (PEP 508 strings, from its METADATA)
    requires: tuple[str, ...]

    @property
    def filename(self) -> str:
        return self.path.name


def sources(root: Path | None = None) -> list[Path]:
    root = root or data_dir("server")
    return [root / "pyproject.toml"] + sorted((root / "src" / MODULE).glob("*.py"))


def base_version(root: Path | None = None) -> str:
    text = (root or data_dir("server")).joinpath("pyproject.toml").read_text()
    m = re.search(r'^version = "([^"]+)"$', text, re.M)
    if not m:
        raise ServerBuildError(f"no version = \"...\" line in {(root or data_dir('server')) / 'pyproject.toml'}")
    return m.group(1)


def source_version(root: Path | None = None) -> str:
    root = root or data_dir("server")
    digest = hashlib.sha256()
    for path in sources(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{base_version(root)}+src.{digest.hexdigest()[:12]}"


def cache_dir() -> Path:
    return Path(os.environ.get("PIPER_GPU_SERVER_WHEELS")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "piper-gpu-deploy" / "server")


def _describe(path: Path, version: str) -> ServerWheel:
    with zipfile.ZipFile(path) as zf:
        meta = zf.read(f"{MODULE}-{version}.dist-info/METADATA").decode()
    requires = tuple(email.parser.Parser().parsestr(meta).get_all("Requires-Dist") or ())
    return ServerWheel(path, version, hashlib.sha256(path.read_bytes()).hexdigest(), requires)


def build(root: Path | None = None, cache: Path | None = None) -> ServerWheel:
    """The wheel of the server's current sources: from the cache, else built (a few seconds)."""
    root = root or data_dir("server")
    version = source_version(root)
    out = (cache or cache_dir()) / version
    name = f"{MODULE}-{version}-py3-none-any.whl"
    if (out / name).is_file():
        return _describe(out / name, version)
    with tempfile.TemporaryDirectory(prefix="piper-gpu-server-build-") as tmp:
        src = Path(tmp, "server")
        shutil.copytree(root, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        pyproject = src / "pyproject.toml"
        pyproject.write_text(re.sub(r'^version = "[^"]+"$', f'version = "{version}"', pyproject.read_text(),
                                    count=1, flags=re.M))
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps",
               "--no-build-isolation", "--quiet", "--wheel-dir", str(Path(tmp, "dist")), str(src)]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH})
        built = Path(tmp, "dist", name)
        if res.returncode != 0 or not built.is_file():
            raise ServerBuildError(f"building the server wheel from {root} failed ({' '.join(cmd)}):\n"
                                   f"{(res.stderr or res.stdout).strip()[-2000:]}\n"
                                   "Fix: pip install 'setuptools>=70.1' into the controller's Python")
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), out / name)
    return _describe(out / name, version)
