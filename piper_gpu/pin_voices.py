"""python -m piper_gpu pin-voices: the sha256 of each configured voice, for the group data.

Every voice the deploy downloads is checked against a pinned sha256, so a first deploy needs the
digests. On a machine that reaches the voices' source (Hugging Face, a mirror, or local files):

    python -m piper_gpu pin-voices --voice zh_CN-huayan-medium                 # print
    python -m piper_gpu pin-voices --settings group_data.json --write inventory/group_data/all.py

It downloads each voice's .onnx and .onnx.json from where the deploy would (``piper_gpu_voices``
with their ``url``, else ``piper_gpu_voices_base_url`` and Hugging Face's layout), hashes them, and
prints ``piper_gpu_voices = [...]`` for the group data; ``--write FILE`` puts that assignment into
FILE between marker lines (replaced on a re-run, the rest of the file left as it is). Digests already
pinned are checked, not trusted: a mismatch stops with both digests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pprint
import re
import sys
import tempfile
from pathlib import Path

from piper_gpu import progress
from piper_gpu.settings import Settings, SettingsError, Voice, cli_data, data_key, settings_from

BEGIN = "# BEGIN piper-gpu pin-voices (python -m piper_gpu pin-voices)"
END = "# END piper-gpu pin-voices"


class PinError(RuntimeError):
    """A voice file could not be fetched, or did not match its pinned digest."""


def sha256_of(url: str) -> str:
    """The sha256 of what ``url`` (http(s)://, file:// or a path) serves; the progress on stderr."""
    h = hashlib.sha256()
    try:
        progress.fetch(url, h.update)
    except OSError as exc:
        raise PinError(f"cannot fetch {url}: {exc}") from exc
    return h.hexdigest()


def pin(settings: Settings) -> list[Voice]:
    """Each voice with the sha256 of its two files as its source serves them."""
    pinned = []
    for voice in settings.models.voices:
        digests = {}
        for field, suffix in (("onnx_sha256", ".onnx"), ("json_sha256", ".onnx.json")):
            url = settings.voice_url(voice, suffix)
            got = sha256_of(url)
            had = getattr(voice, field)
            if had and had != got:
                raise PinError(f"{url}: sha256 {got}, but {data_key('voices')} pins {voice.name} {field}={had}; "
                               "find out which is right before changing the pin")
            digests[field] = got
        pinned.append(dataclasses.replace(voice, **digests))
    return pinned


def as_group_data(voices: list[Voice]) -> str:
    entries = [{k: v for k, v in dataclasses.asdict(voice).items() if v is not None} for voice in voices]
    return f"{data_key('voices')} = {pprint.pformat(entries, width=100, sort_dicts=False)}\n"


def write_block(path: Path, text: str) -> None:
    """Put ``text`` into ``path`` between the markers (replacing an earlier block; appended otherwise)."""
    block = f"{BEGIN}\n{text}{END}\n"
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old + ("\n" if old and not old.endswith("\n") else "") + block
    if new != old:
        tmp = Path(tempfile.mkstemp(dir=path.parent if path.parent.exists() else None)[1])
        tmp.write_text(new)
        tmp.replace(path)


def main(args) -> int:
    data = cli_data(args.settings, args.data)
    if args.voice:
        data[data_key("voices")] = list(args.voice)
    try:
        settings = settings_from(data, validate=False)  # the voices are what is missing
        voices = pin(settings)
    except (SettingsError, PinError) as exc:
        print(f"pin-voices: {exc}", file=sys.stderr)
        return 1
    text = as_group_data(voices)
    if args.write:
        write_block(Path(args.write), text)
        print(f"pin-voices: {len(voices)} voice(s) pinned in {args.write}", file=sys.stderr)
    else:
        print(text, end="")
    return 0
