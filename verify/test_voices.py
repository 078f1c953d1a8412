"""Plan step 6: voices in place, matching their pinned sha256."""

import checks
from conftest import report


def test_voice_files_match_checksums(host, applied, target):
    files = []
    for voice in applied.voices:
        base = target["voice_files"][voice.name]
        for path, digest in ((base, voice.onnx_sha256), (base + ".json", voice.json_sha256)):
            f = host.file(path)
            files.append((path, digest, f.sha256sum if f.exists else None))
    report(checks.voice_files_problem(files))
