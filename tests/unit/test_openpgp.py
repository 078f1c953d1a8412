"""The fingerprint checker the deploy runs on the keyring inside cuda-keyring's .deb."""

import subprocess
import sys
from pathlib import Path

import pytest

from piper_gpu import openpgp


@pytest.fixture(scope="module")
def keyring(tmp_path_factory):
    home = tmp_path_factory.mktemp("gnupg")
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "test <t@localhost>", "ed25519", "sign", "never"], check=True, capture_output=True)
    listing = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    path = home / "keyring.gpg"
    path.write_bytes(subprocess.run([*gpg, "--export", fpr], check=True, capture_output=True).stdout)
    return path, fpr


def test_fingerprint_matches_gpg(keyring):
    path, fpr = keyring
    assert openpgp.fingerprints(Path(path).read_bytes()) == [fpr]


def test_expect_fails_naming_the_file_and_setting(keyring):
    path, _ = keyring
    script = Path(openpgp.__file__)
    ok = subprocess.run([sys.executable, script, path, "--expect", keyring[1]], capture_output=True, text=True)
    assert ok.returncode == 0
    bad = subprocess.run([sys.executable, script, path, "--expect", "EB693B3035CD5710E231E123A4B469963BF863CC"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert str(path) in bad.stderr and "cuda_repo_key_fingerprint" in bad.stderr


def test_armored_input_is_refused_with_a_reason(tmp_path):
    f = tmp_path / "k.asc"
    f.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    with pytest.raises(ValueError, match="armored"):
        openpgp.fingerprints(f.read_bytes())
