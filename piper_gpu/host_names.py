"""The forms of the settings that become paths or names on the host: the venv's, the server's and the
voices' directories, a voice's file and folder names, the service user, the versions and the repository
path that go into file names. Each is checked when the settings are read, before anything on the host
changes: a relative ``piper_dir`` would otherwise be made relative to whatever directory a command runs
in, a ``..`` or a ``/`` in a voice's name would put its files outside ``models_dir``, and a user name
``useradd`` refuses would fail the run halfway.

Each ``*_problem`` function returns None when the value is usable, else one message naming the setting,
the value and the fix (``inputs.py`` collects them into one SettingsError).
"""

from __future__ import annotations

import re

#: Characters a host directory setting may hold: these paths go unquoted into unit files
#: (WorkingDirectory=, ReadWritePaths=), the server's TOML and shell commands of the deploy.
_DIR_CHARS = re.compile(r"[A-Za-z0-9._+@/-]+")
#: Directories of the system (and their parents): never a directory of the deploy's own.
SYSTEM_DIRS = frozenset({
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt", "/mnt/c", "/opt",
    "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local",
    "/usr/local/bin", "/usr/local/lib", "/usr/sbin", "/usr/share", "/var", "/var/cache", "/var/lib", "/var/log",
    "/var/tmp",
})
#: One path component, as a voice's name or language folder: a file or folder name inside models_dir.
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: A user name as shadow's useradd accepts it (is_valid_user_name, shadow 4.13, the default without
#: --badname): letters, digits, '_', '.', '-', not starting with '-', optionally ending in '$', not all
#: digits, at most 32 characters (the utmp limit).
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?")
#: Versions that become parts of file or directory names (/usr/local/cuda-12.4, /opt/cudnn-9.1.1.17-cuda12,
#: cuda-keyring_1.1-1_all.deb) and of apt's package names.
VERSION_FORMS = {
    "cuda_version": (re.compile(r"\d+\.\d+"), "MAJOR.MINOR, e.g. 12.4"),
    "cudnn_version": (re.compile(r"\d+\.\d+\.\d+(\.\d+)?"), "NVIDIA's full release, e.g. 9.1.1.17"),
    "cudnn_cuda_version": (re.compile(r"\d+\.\d+"), "MAJOR.MINOR, e.g. 12.4"),
    "cuda_keyring_version": (re.compile(r"[0-9][0-9A-Za-z.+~]*(-[0-9A-Za-z.+~]+)?"),
                             "a Debian version such as 1.1-1"),
}
#: The repository's folder under cuda_repo_url: NVIDIA's names (wsl-ubuntu, ubuntu2204, debian12).
_REPO_PATH = re.compile(r"[a-z0-9][a-z0-9._-]*")


def host_dir_problem(name: str, value: object) -> str | None:
    """A directory on the host: absolute, or under the service user's home as ``~/...``; no ``..``,
    no empty or ``.`` component, not the root or the home itself, and only characters that need no
    quoting."""
    if not isinstance(value, str) or not value:
        return f"{name}={value!r}: give a directory, absolute (/srv/piper) or in the service user's home (~/piper_env)"
    fix = f"write it absolute (/srv/{value.strip('/~.') or 'piper'}) or in the service user's home (~/...)"
    if not (value.startswith("/") or value.startswith("~/")):
        return (f"{name}={value!r} is relative: the deploy would make it relative to whatever directory a command "
                f"runs in; {fix}")
    rest = value[2:] if value.startswith("~/") else value[1:]
    parts = rest.rstrip("/").split("/")
    if any(p in ("..", ".", "") for p in parts):
        return (f"{name}={value!r} has a '..', '.' or empty component: the directory must be named as it is, "
                f"e.g. {'~/' if value.startswith('~') else '/'}{'/'.join(p for p in parts if p not in ('..', '.', '')) or 'piper'}")
    if value.startswith("/") and value.rstrip("/") in SYSTEM_DIRS:
        return (f"{name}={value!r} is a directory of the system: the deploy would make it the service user's (mode "
                f"750) and undeploy could remove it; name a directory of its own, e.g. {value.rstrip('/')}/piper")
    if not _DIR_CHARS.fullmatch(rest):
        bad = "".join(sorted({c for c in rest if not _DIR_CHARS.fullmatch(c)}))
        return (f"{name}={value!r} has characters the deploy does not write into unit files and shell commands "
                f"({bad!r}); use letters, digits and . _ + @ - /")
    return None


def component_problem(name: str, value: object) -> str | None:
    """A single file or folder name (a voice's name, its language folder)."""
    if isinstance(value, str) and _COMPONENT.fullmatch(value) and value not in (".", ".."):
        return None
    return (f"{name}={value!r} is not a single file or folder name: it becomes a path under models_dir, so it must "
            "be letters, digits and . _ + - (starting with a letter or digit), without '/' or '..' "
            "(e.g. zh_CN-huayan-medium, lang 'zh')")


def user_name_problem(name: str, value: object) -> str | None:
    """A user name ``useradd`` accepts."""
    if (isinstance(value, str) and len(value) <= 32 and _USER.fullmatch(value) and not value.isdigit()
            and value not in (".", "..")):
        return None
    return (f"{name}={value!r} is not a valid user name: at most 32 letters, digits, '_', '.' or '-', not starting "
            "with '-', not all digits (as useradd accepts them, e.g. 'piper' or your WSL2 login name)")


def version_problem(name: str, value: object) -> str | None:
    pattern, form = VERSION_FORMS[name]
    if value is None and name == "cudnn_cuda_version":
        return None
    if isinstance(value, str) and pattern.fullmatch(value):
        return None
    return f"{name}={value!r} is not {form}: it becomes part of file and package names on the host"


def repo_path_problem(name: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and _REPO_PATH.fullmatch(value)):
        return None
    return (f"{name}={value!r} is not a repository folder name such as wsl-ubuntu, ubuntu2204 or debian12 "
            "(lowercase letters, digits, '.', '_' and '-'; it names a file in /etc/apt/sources.list.d)")


def script_path_problem(name: str, value: object) -> str | None:
    """A file of the user's (their old server's script): absolute or ``~/...``, no ``..``, one line.
    Any other character is allowed: the deploy quotes these paths."""
    if not isinstance(value, str) or not (value.startswith("/") or value.startswith("~/")):
        return f"{name}: {value!r} is not an absolute path or ~/...: name the file as it is on the host"
    if any(c in value for c in "\0\n\r") or ".." in value.split("/") or value.endswith("/"):
        return f"{name}: {value!r} must name one file (no '..', no line break, not a directory)"
    return None
