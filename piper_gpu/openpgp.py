#!/usr/bin/env python3
"""Print the v4 fingerprints of the primary keys in a binary OpenPGP keyring (RFC 4880 §12.2).

Standalone (stdlib only) so the deploy can copy it to a host that has no gpg:
    python3 openpgp.py KEYRING [--expect FINGERPRINT]
exits 1 with a message naming the file when the expected fingerprint is absent.
"""

from __future__ import annotations

import hashlib
import sys


def _packets(data: bytes):
    i = 0
    while i < len(data):
        header = data[i]
        if not header & 0x80:
            raise ValueError(f"byte {i}: not an OpenPGP packet header (armored key? use the binary keyring)")
        if header & 0x40:  # new format
            tag = header & 0x3F
            first = data[i + 1]
            if first < 192:
                length, hlen = first, 2
            elif first < 224:
                length, hlen = ((first - 192) << 8) + data[i + 2] + 192, 3
            elif first == 255:
                length, hlen = int.from_bytes(data[i + 2:i + 6], "big"), 6
            else:
                raise ValueError("partial body lengths are not used in keyrings")
        else:  # old format
            tag = (header >> 2) & 0x0F
            ltype = header & 0x03
            size = {0: 1, 1: 2, 2: 4}.get(ltype)
            if size is None:
                raise ValueError("indeterminate-length packet")
            length, hlen = int.from_bytes(data[i + 1:i + 1 + size], "big"), 1 + size
        yield tag, data[i + hlen:i + hlen + length]
        i += hlen + length


def fingerprints(data: bytes) -> list[str]:
    result = []
    for tag, body in _packets(data):
        if tag == 6 and body and body[0] == 4:  # public key, version 4
            digest = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest()
            result.append(digest.upper())
    return result


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[0]
    try:
        with open(path, "rb") as fh:
            found = fingerprints(fh.read())
    except (OSError, ValueError) as exc:
        print(f"{path}: cannot read keyring: {exc}", file=sys.stderr)
        return 1
    if "--expect" in argv:
        want = argv[argv.index("--expect") + 1].replace(" ", "").upper()
        if want not in found:
            print(
                f"{path}: expected key {want} not found (has {', '.join(found) or 'no keys'}); "
                "the cuda-keyring package is not the one configured (cuda_repo_key_fingerprint)",
                file=sys.stderr,
            )
            return 1
    print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
