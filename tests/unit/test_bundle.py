"""Offline bundles: the parts that are pure logic (Debian version order, the dependency closure
of the CUDA packages, verified downloads). tests/scenarios/test_offline_bundle.py provisions from a real one."""

import hashlib
import itertools
import shutil
import subprocess

import pytest

from piper_gpu.bundle import BundleError, _inrelease_sha256, closure, compare_versions, download, parse_packages

VERSIONS = ["1.0", "1.0-1", "1.0~rc1", "1.0a", "1.0+dfsg-2", "1:0.9", "12.4.1-1", "12.4.127-1", "9.1.1.17-1",
            "9.1.0.70-1", "0.10", "0.9", "2.0-1ubuntu1", "2.0-1", "1.2.3~", "1.2.3", "1.1-1+b1"]


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg to compare with")
def test_version_order_is_dpkgs():
    for a, b in itertools.combinations(VERSIONS, 2):
        mine = compare_versions(a, b)
        for op, holds in (("lt", mine < 0), ("eq", mine == 0), ("gt", mine > 0)):
            assert (subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0) == holds, (a, op, b)


PACKAGES = """\
Package: cuda-toolkit-12-4
Version: 12.4.1-1
Depends: cuda-libraries-12-4 (>= 12.4.1), cuda-nvcc-12-4 (>= 12.4.131)
Filename: ./cuda-toolkit-12-4_12.4.1-1_amd64.deb
SHA256: 01

Package: cuda-libraries-12-4
Version: 12.4.1-1
Depends: cuda-cudart-12-4 (>= 12.4.127), libc6 (>= 2.17) | libc6-compat
Filename: ./cuda-libraries-12-4_12.4.1-1_amd64.deb
SHA256: 02

Package: cuda-cudart-12-4
Version: 12.4.99-1
Filename: ./cuda-cudart-12-4_12.4.99-1_amd64.deb
SHA256: 03

Package: cuda-cudart-12-4
Version: 12.4.127-1
Filename: ./cuda-cudart-12-4_12.4.127-1_amd64.deb
SHA256: 04

Package: cuda-nvcc-12-4
Version: 12.4.131-1
Pre-Depends: dpkg (>= 1.17)
Filename: ./cuda-nvcc-12-4_12.4.131-1_amd64.deb
SHA256: 05

Package: libcudnn9-cuda-12
Version: 9.1.1.17-1
Filename: ./libcudnn9-cuda-12_9.1.1.17-1_amd64.deb
SHA256: 06

Package: libcudnn9-cuda-12
Version: 9.12.0.46-1
Filename: ./libcudnn9-cuda-12_9.12.0.46-1_amd64.deb
SHA256: 07
"""


def test_closure_follows_depends_picks_newest_and_honours_exact_pins():
    debs, distro = closure(parse_packages(PACKAGES), {"cuda-toolkit-12-4": None, "libcudnn9-cuda-12": "9.1.1.17-1"})
    assert [(d.package, d.version) for d in debs] == [
        ("cuda-cudart-12-4", "12.4.127-1"), ("cuda-libraries-12-4", "12.4.1-1"), ("cuda-nvcc-12-4", "12.4.131-1"),
        ("cuda-toolkit-12-4", "12.4.1-1"), ("libcudnn9-cuda-12", "9.1.1.17-1")]  # not 9.12, the newest
    assert distro == ["dpkg", "libc6"]


def test_closure_names_a_missing_pin_and_what_the_repository_has():
    with pytest.raises(BundleError, match=r"libcudnn9-cuda-12=9.1.0.70-1 is not in the CUDA repository "
                                          r"\(it has 9.12.0.46-1, 9.1.1.17-1\)"):
        closure(parse_packages(PACKAGES), {"libcudnn9-cuda-12": "9.1.0.70-1"})
    with pytest.raises(BundleError, match="cuda-toolkit-12-6 is not in the CUDA repository's Packages index"):
        closure(parse_packages(PACKAGES), {"cuda-toolkit-12-6": None})


def test_inrelease_digest_lookup():
    inrelease = "Origin: NVIDIA\nSHA256:\n aa 10 Packages\n bb 5 Packages.gz\n-----BEGIN PGP SIGNATURE-----\n"
    assert _inrelease_sha256(inrelease, "Packages") == "aa" and _inrelease_sha256(inrelease, "Packages.gz") == "bb"
    assert _inrelease_sha256(inrelease, "Sources") is None


def test_download_verifies_and_names_the_url_and_both_digests(tmp_path):
    src = tmp_path / "voice.onnx"
    src.write_bytes(b"model")
    good = "c0f5d4fc4e8b6e7a3bd42b9e1a1f7e8e6c0f2b0ac6b94b1a8a9d04b9b1d2c3d4"
    with pytest.raises(BundleError) as err:
        download(f"file://{src}", tmp_path / "out" / "voice.onnx", good)
    assert f"sha256 mismatch for file://{src}: expected {good}, got " in str(err.value)
    assert not list((tmp_path / "out").iterdir())  # nothing half-written left
    digest = hashlib.sha256(b"model").hexdigest()
    assert download(f"file://{src}", tmp_path / "out" / "voice.onnx", digest).read_bytes() == b"model"
    with pytest.raises(BundleError, match=f"download failed: file://{tmp_path}/missing"):
        download(f"file://{tmp_path}/missing", tmp_path / "out" / "missing", None)
