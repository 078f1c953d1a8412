"""The settings that name a file, a directory or a URL: their forms, checked when the settings are
read, and what each means on the host.

A source is one of:

* an ``http://`` or ``https://`` URL (with a host; no spaces or backslashes: percent-encode them);
* a ``file://`` URL (``file:///abs/path``; percent-encoded characters are decoded);
* an absolute path on the host (``/mnt/c/Users/you/Downloads/x.deb``);
* on WSL2, a Windows path as Explorer shows it: ``C:\\Users\\you\\Downloads\\x.deb`` (or with forward
  slashes), converted the way ``wslpath`` does, ``/mnt/c/Users/you/Downloads/x.deb``, under the automount
  root that ``/etc/wsl.conf`` sets (``[automount] root``, default ``/mnt/``); and
  ``\\\\wsl$\\<distro>\\path`` or ``\\\\wsl.localhost\\<distro>\\path``, which are ``/path`` inside WSL.

A local file is then read as a file (``cp``), never through a URL made by joining strings, so any name
a Windows user may have (spaces, ``#``, ``%``, ``&``, brackets, accents, CJK) works.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit


#: setting -> what it names: "file" (one file, fetched), "dir" (a directory of files: a bundle, pip's
#: --find-links), "url" (a server: apt repository, index, base URL; file:// allowed for mirrors)
SOURCE_SETTINGS = {
    "cudnn_local_repo_url": "file",
    "cudnn_deb_url": "file",
    "cudnn_archive_url": "file",
    "bundle_url": "dir",
    "pip_find_links": "dir",
    "cuda_repo_url": "url",
    "cudnn_redist_url": "url",
    "pip_index_url": "url",
    "voices_base_url": "url",
}
DEFAULT_AUTOMOUNT_ROOT = "/mnt/"

_DRIVE = re.compile(r"^([A-Za-z]):(?:[\\/]|$)")
#: a share is \\server\... or //server/...; "/\x" is a POSIX path whose first name starts with a backslash
_WSL_UNC = re.compile(r"^(?:\\\\|//)(?:wsl\$|wsl\.localhost)[\\/][^\\/]+(?P<rest>(?:[\\/].*)?)$", re.I)
_UNC = re.compile(r"^(?:\\\\|//)[^\\/]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: what the host must have there, per kind (test -f / test -d)
LOCAL_KINDS = {"file": "f", "dir": "d"}


def is_windows_path(value: str) -> bool:
    return bool(_DRIVE.match(value) or _WSL_UNC.match(value))


def automount_root(wsl_conf: str | None) -> str:
    """``[automount] root`` of /etc/wsl.conf (an INI file: ``#``/``;`` comments, optional quotes), with
    a trailing slash; /mnt/ when it is not set."""
    section = None
    for raw in (wsl_conf or "").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        key, sep, value = line.partition("=")
        if sep and section == "automount" and key.strip().lower() == "root":
            root = value.split("#", 1)[0].strip().strip("\"'")
            if root.startswith("/"):
                return root.rstrip("/") + "/"
    return DEFAULT_AUTOMOUNT_ROOT


def windows_to_wsl(value: str, root: str = DEFAULT_AUTOMOUNT_ROOT) -> str:
    """A Windows path as WSL2 sees it (``wslpath -u``): the drive letter lower-cased under ``root``,
    backslashes as slashes; ``\\\\wsl$\\distro\\p`` and ``\\\\wsl.localhost\\distro\\p`` as ``/p``."""
    unc = _WSL_UNC.match(value)
    if unc:
        return "/" + unc.group("rest").replace("\\", "/").strip("/")
    m = _DRIVE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a Windows path")
    rest = value[2:].replace("\\", "/").strip("/")
    return f"{root.rstrip('/')}/{m.group(1).lower()}" + (f"/{rest}" if rest else "")


def problem(setting: str, value: str, kind: str) -> str | None:
    """What is wrong with the form of ``value`` for ``setting`` (with the fix), or None."""
    if not isinstance(value, str) or not value.strip(" "):
        return f"{setting}={value!r}: give a URL or a path (or leave it unset)"
    if _CONTROL.search(value):
        bad = _CONTROL.search(value).group()
        return (f"{setting}={value!r} holds the control character U+{ord(bad):04X} (a pasted line break or tab?): "
                "remove it")
    if value != value.strip(" "):  # a space pasted with it (names may end in other blanks, as U+00A0)
        return f"{setting}={value!r} starts or ends with a space: remove it"
    lower = value.lower()
    if lower.startswith(("http://", "https://")):
        parts = urlsplit(value)
        if not parts.hostname:
            return f"{setting}={value!r} has no host name: write it as https://HOST/path"
        if re.search(r"[\s\\]", value):
            return (f"{setting}={value!r}: a URL cannot hold spaces or backslashes; percent-encode them "
                    "(a space is %20) or, for a file on this host, give its path")
        return None
    if lower.startswith("file:"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            return (f"{setting}={value!r} is not a file URL of this host: write file:///absolute/path "
                    "(three slashes), or just the path")
        return None
    if "://" in value:
        return f"{setting}={value!r}: use https://, http:// or file:// (or a path on the host)"
    if kind == "url":
        return f"{setting}={value!r} is not a URL: write https://HOST/path (file:///path for a local mirror)"
    if is_windows_path(value):
        return None
    if _UNC.match(value):
        return (f"{setting}={value!r} is a network share: the deploy reads files on the host; copy the file to "
                "a drive (C:\\...) or mount the share inside WSL and give that path")
    if not value.startswith("/"):
        return (f"{setting}={value!r} is a relative path, which means nothing on the host: give the absolute path "
                "(/home/you/x.deb, or on WSL2 C:\\Users\\you\\Downloads\\x.deb)")
    return None


def local_path(value: str, root: str = DEFAULT_AUTOMOUNT_ROOT) -> str | None:
    """The path on the host a source names (file:// decoded, a Windows path converted), or None for an
    http(s) URL."""
    if value.lower().startswith(("http://", "https://")):
        return None
    if value.lower().startswith("file:"):
        return unquote(urlsplit(value).path)
    if is_windows_path(value):
        return windows_to_wsl(value, root)
    return value


def on_host(value: str, kind: str, root: str = DEFAULT_AUTOMOUNT_ROOT) -> str:
    """The source as the host's commands take it: a local file or directory ("file", "dir") as its
    path, anything else unchanged (a "url" is for apt, pip or a base URL: file:// stays a URL)."""
    if kind == "url":
        return value
    path = local_path(value, root)
    return value if path is None else path


def as_url(value: str) -> str:
    """A source as a URL (a bundle's sources are derived from it by appending paths): a local path
    (a Windows one under the default automount root) as a file:// URL, percent-encoded."""
    path = local_path(value)
    if path is None or value.lower().startswith("file:"):
        return value
    return PurePosixPath(path).as_uri() + ("/" if value.endswith(("/", "\\")) else "")
