"""Plan step 6: voices in place, matching their pinned sha256."""


from conftest import expect


def test_voice_files_match_checksums(host, applied, target):
    for voice in applied.voices:
        base = target["voice_files"][voice.name]
        for path, digest in ((base, voice.onnx_sha256), (base + ".json", voice.json_sha256)):
            f = host.file(path)
            found = f.sha256sum if f.exists else None
            expect(found == digest, f"{path}: " + (f"sha256 {found}" if found else "missing"), f"sha256 {digest}",
                   "re-run the deploy (downloads the voice again and checks it)")
