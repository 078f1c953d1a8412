"""Offline bundles: on a connected machine, collect every artifact a deploy needs for given
settings into one directory; a host with no route to NVIDIA, PyPI or Hugging Face is then
provisioned from it with one setting, ``bundle_url`` (file:///path or http://host:port).

    python -m piper_gpu bundle OUT --settings group_data.json [--repo-path debian12] [--python 3.11]

Layout (the deploy derives every source from ``bundle_url``):

    OUT/cuda/repos/<repo>/<arch>/   NVIDIA's signed InRelease/Release/Packages, copied verbatim
                                    (apt checks NVIDIA's signature on the target), and only the
                                    .debs the settings need: the dependency closure of the CUDA
                                    packages and the pinned cuDNN, plus cuda-keyring
    OUT/cudnn/                      the cuDNN .deb or archive (cudnn_source local-deb/archive)
    OUT/pypi/                       the venv's pinned wheels (and NVIDIA's, cuda_source="pip"), and the
                                    server's wheel, built from server/
    OUT/voices/<name>/              each voice's .onnx and .onnx.json
    OUT/bundle.json                 the settings it was made for; sha256 of every file
    OUT/SHA256SUMS                  the same digests, for `sha256sum -c`

Every file is verified as it is collected: .debs against the sha256 in Packages, Packages
against InRelease, InRelease's signature against the key in cuda-keyring (fingerprint pinned
in the settings), voices and cuDNN files against their pinned sha256. A mismatch stops the
bundle with the file and both digests.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from piper_gpu import openpgp, progress, sources
from piper_gpu import locks, platforms, server_wheel
from piper_gpu.naming import BUNDLE_CUDA_REPOS, BUNDLE_WHEELS, bundle_cudnn_file, bundle_voice_dir
from piper_gpu.settings import Settings, SettingsError, cli_data, data_key, settings_from

KEYRING_MEMBER = "./usr/share/keyrings/cuda-archive-keyring.gpg"
MANIFEST = "bundle.json"


class BundleError(RuntimeError):
    """An artifact could not be collected or did not verify; the message names it."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_download_args(python: str) -> list[str]:
    """``pip download`` arguments for binary wheels a Linux x86_64 CPython ``python`` installs."""
    return locks.wheel_args(python)


def download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """``url`` (http(s)://, file:// or a path) to ``dest``, checked against ``sha256``; kept when it matches."""
    if dest.exists() and sha256 and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with open(part, "wb") as out:
            progress.fetch(url, out.write, dest.name)  # a bar on a terminal, else one line when done
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise BundleError(f"download failed: {url}: {exc}") from exc
    if sha256:
        got = sha256_file(part)
        if got != sha256:
            part.unlink()
            raise BundleError(f"sha256 mismatch for {url}: expected {sha256}, got {got}")
    part.rename(dest)
    return dest


# ------------------------------------------------------------------------------------------
# NVIDIA's apt repository: the closure of what the settings install
# ------------------------------------------------------------------------------------------

@dataclass
class Stanza:
    package: str
    version: str
    filename: str
    sha256: str
    depends: list[list[str]]  # AND of ORs, names only


def parse_packages(text: str) -> list[Stanza]:
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if "Package" not in fields:
            continue
        depends = []
        for field in ("Pre-Depends", "Depends"):
            for clause in filter(None, (c.strip() for c in fields.get(field, "").split(","))):
                depends.append([re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in clause.split("|")])
        out.append(Stanza(fields["Package"], fields["Version"], fields["Filename"], fields["SHA256"], depends))
    return out


def _order(c: str) -> int:
    return -1 if c == "~" else ord(c) if c.isalpha() else ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    while a or b:
        i = 0
        while (i < len(a) and not a[i].isdigit()) or (i < len(b) and not b[i].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[i]) if i < len(b) and not b[i].isdigit() else 0
            if ac != bc:
                return ac - bc
            i += 1
        a, b = a[i:], b[i:]
        da, db = re.match(r"\d*", a).group(), re.match(r"\d*", b).group()
        if int(da or 0) != int(db or 0):
            return int(da or 0) - int(db or 0)
        a, b = a[len(da):], b[len(db):]
    return 0


def compare_versions(a: str, b: str) -> int:
    """dpkg's version comparison (epoch:upstream-revision): <0, 0, >0."""
    def split(v: str):
        epoch, v = (v.split(":", 1) if ":" in v else ("0", v))
        upstream, revision = (v.rsplit("-", 1) if "-" in v else (v, "0"))
        return int(epoch), upstream, revision

    (ea, ua, ra), (eb, ub, rb) = split(a), split(b)
    return (ea - eb) or _compare_part(ua, ub) or _compare_part(ra, rb)


def closure(stanzas: list[Stanza], wanted: dict[str, str | None]) -> tuple[list[Stanza], list[str]]:
    """The repository's packages ``wanted`` (name -> exact version or None = newest) needs, following
    Depends; names the repository does not carry come from the distro (returned second)."""
    by_name: dict[str, list[Stanza]] = {}
    for st in stanzas:
        by_name.setdefault(st.package, []).append(st)
    for versions in by_name.values():
        versions.sort(key=cmp_to_key(lambda x, y: compare_versions(x.version, y.version)), reverse=True)
    chosen: dict[str, Stanza] = {}
    distro: set[str] = set()
    todo = list(wanted.items())
    while todo:
        name, version = todo.pop()
        if name in chosen:
            continue
        candidates = by_name.get(name)
        if not candidates:
            raise BundleError(f"package {name} is not in the CUDA repository's Packages index")
        pick = next((st for st in candidates if version is None or st.version == version), None)
        if pick is None:
            raise BundleError(f"{name}={version} is not in the CUDA repository (it has "
                              f"{', '.join(st.version for st in candidates[:5])})")
        chosen[name] = pick
        for alternatives in pick.depends:
            in_repo = next((a for a in alternatives if a in by_name), None)
            if in_repo:
                todo.append((in_repo, None))
            else:
                distro.add(alternatives[0])
    return sorted(chosen.values(), key=lambda st: st.package), sorted(distro)


def _inrelease_sha256(inrelease: str, name: str) -> str | None:
    section = inrelease.split("SHA256:", 1)[-1]
    for line in section.splitlines()[1:]:
        if not line.startswith(" "):
            break
        digest, _size, path = line.split()
        if path == name:
            return digest
    return None


def collect_cuda_repo(s: Settings, repo_path: str, arch: str, out: Path) -> dict:
    src = s.sources
    base = f"{src.cuda_repo_url.rstrip('/')}/{repo_path}/{arch}"
    dest = out / BUNDLE_CUDA_REPOS / repo_path / arch
    keyring_deb = download(f"{base}/cuda-keyring_{src.cuda_keyring_version}_all.deb",
                           dest / f"cuda-keyring_{src.cuda_keyring_version}_all.deb", src.cuda_keyring_sha256)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(keyring_deb), tmp], check=True, capture_output=True)
        keyring = Path(tmp) / KEYRING_MEMBER
        if not keyring.exists():
            raise BundleError(f"{keyring_deb.name} holds no {KEYRING_MEMBER[1:]}")
        found = openpgp.fingerprints(keyring.read_bytes())
        if s.sources.cuda_repo_key_fingerprint.upper() not in found:
            raise BundleError(f"{keyring_deb.name}: key {found} is not the pinned cuda_repo_key_fingerprint "
                              f"{s.sources.cuda_repo_key_fingerprint}")
        for name in ("InRelease", "Release", "Release.gpg"):
            try:
                download(f"{base}/{name}", dest / name)
            except BundleError:
                if name == "InRelease":
                    raise
        verify = subprocess.run(["gpgv", "--keyring", str(keyring), str(dest / "InRelease")],
                                capture_output=True, text=True)
        if verify.returncode != 0:
            raise BundleError(f"{base}/InRelease: signature does not verify with the key in {keyring_deb.name}: "
                              f"{verify.stderr.strip()}")
    inrelease = (dest / "InRelease").read_text()
    packages_sha = _inrelease_sha256(inrelease, "Packages")
    if packages_sha is None:
        raise BundleError(f"{base}/InRelease lists no SHA256 for Packages")
    packages = download(f"{base}/Packages", dest / "Packages", packages_sha)
    gz_sha = _inrelease_sha256(inrelease, "Packages.gz")
    if gz_sha:
        download(f"{base}/Packages.gz", dest / "Packages.gz", gz_sha)
    wanted: dict[str, str | None] = {p: None for p in s.cuda_packages}
    if s.cuda.cudnn_source == "repo":
        wanted[s.cudnn_package] = s.cudnn_apt_version
    debs, distro = closure(parse_packages(packages.read_text()), wanted)
    for st in debs:
        download(f"{base}/{st.filename.removeprefix('./')}", dest / st.filename.removeprefix("./"), st.sha256)
    return {"packages": [f"{st.package}={st.version}" for st in debs], "from_the_distro": distro}


# ------------------------------------------------------------------------------------------
# Wheels, voices, cuDNN files
# ------------------------------------------------------------------------------------------

def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object with no descriptor
        return 2


def collect_wheels(s: Settings, python: str, out: Path) -> list[str]:
    dest = out / BUNDLE_WHEELS
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{n}=={v}" for n, v in sorted(s.python_requirements().items())]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *wheel_download_args(python), *s.pip_source_args(),
           "-d", str(dest), *specs]
    # pip's own output (its progress bar on a terminal, a line per wheel otherwise) goes to our stderr as it comes;
    # its stderr is kept for the error
    sys.stderr.flush()
    res = subprocess.run(cmd, stdout=_stderr_fd(), stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise BundleError(f"pip download failed ({' '.join(cmd)}):\n{res.stderr.strip()[-2000:]}")
    if res.stderr.strip():
        print(res.stderr.rstrip(), file=sys.stderr)  # pip's warnings
    wheel = server_wheel.build()  # not on PyPI: built from server/, beside the others
    for old in dest.glob(f"{server_wheel.MODULE}-*.whl"):
        old.unlink()
    shutil.copyfile(wheel.path, dest / wheel.filename)
    return specs + [f"{server_wheel.DIST}=={wheel.version}"]


def collect_voices(s: Settings, out: Path) -> list[str]:
    for v in s.models.voices:
        for suffix, digest in ((".onnx", v.onnx_sha256), (".onnx.json", v.json_sha256)):
            download(s.voice_url(v, suffix), out / bundle_voice_dir(v.name) / f"{v.name}{suffix}", digest)
    return [v.name for v in s.models.voices]


def collect_cudnn_file(s: Settings, out: Path) -> str | None:
    if s.cuda.cuda_source != "apt" or s.cuda.cudnn_source in ("repo", "wheel"):
        return None
    src = s.sources
    url, digest = {"local-deb": (src.cudnn_deb_url, src.cudnn_deb_sha256),
                   "local-repo": (src.cudnn_local_repo_url, src.cudnn_local_repo_sha256)}.get(s.cuda.cudnn_source,
                                                                                              s.cudnn_archive)
    path = sources.local_path(url)  # a local file (a Windows path too) is copied as a file
    download(url if path is None else path, out / bundle_cudnn_file(url), digest)
    return bundle_cudnn_file(url)


# ------------------------------------------------------------------------------------------

def make_bundle(s: Settings, out: Path, repo_path: str, arch: str = "x86_64", python: str = "3.11") -> dict:
    """Collect everything the deploy with settings ``s`` downloads into ``out``; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": 1,
        "repo_path": repo_path,
        "arch": arch,
        "python": python,
        "settings": json.loads(s.to_json()),
        "cuda_repository": collect_cuda_repo(s, repo_path, arch, out) if s.cuda.cuda_source == "apt" else None,
        "cudnn_file": collect_cudnn_file(s, out),
        "wheels": collect_wheels(s, python, out),
        "voices": collect_voices(s, out),
    }
    files = {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name not in (MANIFEST, "SHA256SUMS") and not p.name.endswith(".part")}
    manifest["files"] = files
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out / "SHA256SUMS").write_text("".join(f"{d}  {p}\n" for p, d in files.items()))
    return manifest


def main(args) -> int:
    data = cli_data(args.settings, args.data)
    data.pop(data_key("bundle_url"), None)  # a bundle is made from the real sources
    try:
        s = settings_from(data)
        platform = next((p for p in platforms.PLATFORMS if p.repo_path == args.repo_path and p.python == args.python),
                        next(p for p in platforms.PLATFORMS if p.repo_path == args.repo_path))
        s = s.for_host(platform, args.python).validate()  # the sources and lock of the target hosts
        manifest = make_bundle(s, Path(args.out), args.repo_path, args.arch, args.python)
    except (BundleError, SettingsError, StopIteration) as exc:
        print(f"bundle: {exc}", file=sys.stderr)
        return 1
    size = sum((Path(args.out) / p).stat().st_size for p in manifest["files"]) / 1e6
    repo = manifest["cuda_repository"]
    print(f"bundle {args.out}: {len(manifest['files'])} files, {size:.0f} MB")
    if repo:
        print(f"  CUDA repository ({args.repo_path}/{args.arch}): {', '.join(repo['packages'])}")
        if repo["from_the_distro"]:
            print(f"  needed from the distro's own mirror: {', '.join(repo['from_the_distro'])}")
    print(f"  wheels: {len(manifest['wheels'])}; voices: {', '.join(manifest['voices'])}")
    print(f"deploy from it: copy it to the host (e.g. /srv/piper-bundle) and set bundle_url=file:///srv/piper-bundle "
          f"(or serve it: python3 -m http.server -d {args.out} and set bundle_url=http://HOST:8000)")
    return 0
