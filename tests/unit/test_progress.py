"""The progress of bundle's and pin-voices' downloads (piper_gpu/progress.py), against a local HTTP server on
127.0.0.1: a tqdm bar with bytes, rate and time left on a terminal (a real pseudo-terminal), one line per file
and no carriage return anywhere else; the errors still name the URL. Nothing here measures speed."""

import fcntl
import hashlib
import http.server
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
import tty
from pathlib import Path

import pytest

from piper_gpu import progress
from piper_gpu.bundle import BundleError, download
from piper_gpu.pin_voices import PinError, sha256_of

REPO = Path(__file__).resolve().parents[2]
SIZE = 3 << 20  # 3 MiB: several chunks
LINE = re.compile(r"fetched (?P<name>\S+): (?P<size>[\d.]+ (?:B|KiB|MiB|GiB)) in [\d.]+ s"
                  r"(?: \([\d.]+ (?:B|KiB|MiB|GiB|TiB)/s\))?")


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files from the served directory; /nolength/NAME without a Content-Length, /short/NAME with one larger
    than the body."""

    def do_GET(self):
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind in ("nolength", "short"):
            body = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            if kind == "short":
                self.send_header("Content-Length", str(len(body) + 100))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, directory, {name: bytes}) of a server on 127.0.0.1 in a thread."""
    root = tmp_path_factory.mktemp("served")
    files = {"big.bin": os.urandom(SIZE), "voice.onnx": os.urandom(SIZE // 2 + 7), "voice.onnx.json": b'{"a": 1}\n'}
    for name, data in files.items():
        (root / name).write_bytes(data)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, files
    server.shutdown()
    server.server_close()


def lines(text: str) -> list[str]:
    assert "\r" not in text, repr(text)
    return text.splitlines()


# ------------------------------------------------------------------------------------------
# Not a terminal: one line per file, when it completes
# ------------------------------------------------------------------------------------------

def test_not_a_terminal_one_line_per_file_naming_it_and_its_size(served):
    base, _, files = served
    out, got = io.StringIO(), []
    assert progress.fetch(f"{base}/big.bin", got.append, stream=out) == SIZE
    progress.fetch(f"{base}/voice.onnx.json", got.append, stream=out)
    assert b"".join(got) == files["big.bin"] + files["voice.onnx.json"]
    first, second = lines(out.getvalue())
    assert LINE.fullmatch(first)["name"] == "big.bin" and LINE.fullmatch(first)["size"] == "3.0 MiB", first
    assert LINE.fullmatch(second)["name"] == "voice.onnx.json" and LINE.fullmatch(second)["size"] == "9 B", second


def test_not_a_terminal_without_a_content_length(served):
    base, _, files = served
    out, got = io.StringIO(), []
    progress.fetch(f"{base}/nolength/big.bin", got.append, stream=out)
    assert b"".join(got) == files["big.bin"]
    (line,) = lines(out.getvalue())
    assert LINE.fullmatch(line)["name"] == "big.bin" and LINE.fullmatch(line)["size"] == "3.0 MiB", line


def test_sizes_in_binary_units():
    assert [progress.human_bytes(n) for n in (0, 1023, 1024, 3 << 20, int(1.25 * (1 << 30)))] == [
        "0 B", "1023 B", "1.0 KiB", "3.0 MiB", "1.2 GiB"]
    assert progress.url_name("https://hf.co/x/y/en_US-joe-medium.onnx?download=true") == "en_US-joe-medium.onnx"
    assert progress.url_name("/srv/a%20b/cudnn.tar.xz") == "cudnn.tar.xz"


# ------------------------------------------------------------------------------------------
# A terminal: tqdm's bar, refreshed in place
# ------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import hashlib, sys
    from pathlib import Path
    from piper_gpu import progress
    from piper_gpu.bundle import download
    base, dest, digest = sys.argv[1:]
    path = download(base + "/big.bin", Path(dest), digest)
    h = hashlib.sha256()
    progress.fetch(base + "/nolength/big.bin", h.update)
    print(hashlib.sha256(path.read_bytes()).hexdigest(), h.hexdigest())
""")


def run_on_a_terminal(args: list[str]) -> tuple[str, str]:
    """Run CHILD with its stderr on a pseudo-terminal (raw: no newline translation, 100 columns); return
    (what the terminal showed, its stdout)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 120  # a hang guard, not a speed bound
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child's side is closed
                break
            if not chunk:
                break
            shown += chunk
        stdout = proc.communicate(timeout=60)[0].decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, shown.decode(errors="replace")
    return shown.decode(errors="replace"), stdout


def test_a_terminal_shows_a_bar_with_bytes_rate_and_time_left(served, tmp_path):
    base, _, files = served
    digest = hashlib.sha256(files["big.bin"]).hexdigest()
    shown, stdout = run_on_a_terminal([base, str(tmp_path / "bundled.bin"), digest])
    assert stdout.split() == [digest, digest]
    assert "fetched" not in shown
    refreshes = [part for part in shown.split("\r") if part.strip()]
    assert len(refreshes) >= 2, repr(shown)  # the first draw and the last, each after a carriage return
    sized = [r for r in refreshes if r.startswith("bundled.bin:")]  # bundle.download names the file it writes
    # bytes of the total, then [elapsed<time left, rate]
    assert any(re.search(r"100%\|.*\| 3\.00M/3\.00M \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMG]?B/s\]", r) for r in sized), sized
    assert any(re.search(r"\[\d\d:\d\d<\?, +\?B/s\]", r) for r in sized), sized  # time left: unknown at the start
    # no Content-Length: bytes and rate, no total and no time left
    assert any(re.search(r"big\.bin: 3\.00MB \[\d\d:\d\d, +[\d.]+[kMG]?B/s\]", r) for r in refreshes), refreshes


# ------------------------------------------------------------------------------------------
# bundle.download and pin_voices.sha256_of go through it; their errors still name the URL
# ------------------------------------------------------------------------------------------

def test_bundle_download_shows_each_file_once_and_keeps_its_checks(served, tmp_path, capsys):
    base, root, files = served
    digest = hashlib.sha256(files["voice.onnx"]).hexdigest()
    dest = tmp_path / "out" / "voice.onnx"
    assert download(f"{base}/voice.onnx", dest, digest).read_bytes() == files["voice.onnx"]
    (line,) = lines(capsys.readouterr().err)
    assert LINE.fullmatch(line)["name"] == "voice.onnx" and LINE.fullmatch(line)["size"] == "1.5 MiB", line
    assert download(f"{base}/voice.onnx", dest, digest) == dest  # kept: not fetched again
    assert capsys.readouterr().err == ""
    local = tmp_path / "local" / "big.bin"
    assert download(str(root / "big.bin"), local).read_bytes() == files["big.bin"]  # a path
    assert download(f"file://{root}/voice.onnx.json", tmp_path / "local" / "v.json").read_bytes() == files[
        "voice.onnx.json"]
    first, second = lines(capsys.readouterr().err)
    assert LINE.fullmatch(first)["name"] == "big.bin" and LINE.fullmatch(second)["name"] == "v.json"
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["big.bin", "v.json"]


def test_bundle_download_errors_name_the_url(served, tmp_path, capsys):
    base, _, files = served
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(BundleError) as err:
        download(f"{base}/big.bin", tmp_path / "big.bin", wrong)
    assert f"sha256 mismatch for {base}/big.bin: expected {wrong}, got {hashlib.sha256(files['big.bin']).hexdigest()}" \
        in str(err.value)
    with pytest.raises(BundleError, match=re.escape(f"download failed: {base}/missing.bin: HTTP Error 404")):
        download(f"{base}/missing.bin", tmp_path / "missing.bin")
    with pytest.raises(BundleError, match=re.escape(f"download failed: {base}/short/big.bin: the body ended after")):
        download(f"{base}/short/big.bin", tmp_path / "short.bin")
    assert list(tmp_path.iterdir()) == []  # no .part left behind
    capsys.readouterr()


def test_pin_voices_hashes_through_it(served, capsys):
    base, _, files = served
    assert sha256_of(f"{base}/voice.onnx?download=true") == hashlib.sha256(files["voice.onnx"]).hexdigest()
    assert sha256_of(f"{base}/voice.onnx.json") == hashlib.sha256(files["voice.onnx.json"]).hexdigest()
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays the group data's
    first, second = lines(captured.err)
    assert LINE.fullmatch(first)["name"] == "voice.onnx" and LINE.fullmatch(first)["size"] == "1.5 MiB", first
    assert LINE.fullmatch(second)["name"] == "voice.onnx.json", second


def test_pin_voices_errors_name_the_url(served):
    base, _, _ = served
    with pytest.raises(PinError, match=re.escape(f"cannot fetch {base}/missing.onnx: HTTP Error 404")):
        sha256_of(f"{base}/missing.onnx")
    with pytest.raises(PinError, match=re.escape(f"cannot fetch {base}/short/voice.onnx: the body ended after")):
        sha256_of(f"{base}/short/voice.onnx")
