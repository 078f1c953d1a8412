"""The server under slow, hostile and demanding clients, with real sockets against a real server
process (CPU, en_US-joe-medium): read timeouts, the connection bound, chunked bodies, SIGTERM,
long texts without punctuation (memory, fairness) and streaming."""

import io
import json
import os
import signal
import socket
import threading
import time
import wave

import pytest
import requests

from tests.server.test_server_http import TEXTS, VOICE, post, start_server

READ_TIMEOUT = 2.0
#: Hypercorn's idle timer: it also ends a connection whose request headers stop coming
KEEP_ALIVE_TIMEOUT = 3.0
MAX_CONNECTIONS = 20
#: 2,000 characters of words without a sentence mark (the issue's worst case)
UNPUNCTUATED = ("the quick brown fox jumps over the lazy dog and keeps on running " * 32)[:2000]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    proc, url, log = start_server(tmp_path_factory.mktemp("hostile"), read_timeout=READ_TIMEOUT,
                                  keep_alive_timeout=KEEP_ALIVE_TIMEOUT, max_connections=MAX_CONNECTIONS, max_text_chars=2000, max_pending=8)
    yield proc, url, log
    proc.terminate()
    proc.wait(30)


def connect(url) -> socket.socket:
    host, port = url.rsplit("/", 1)[-1].split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    return s


def closed_after(s: socket.socket, limit: float) -> float | None:
    """Seconds until the server closes ``s`` (reads until EOF or reset), None if still open at ``limit``."""
    started = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(65536):
            pass
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


@pytest.mark.parametrize("partial,timeout", [
    (b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"te",
     READ_TIMEOUT),
    (b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Ty", KEEP_ALIVE_TIMEOUT),
    (b"", KEEP_ALIVE_TIMEOUT),
], ids=["stalls-in-body", "stalls-in-headers", "sends-nothing"])
def test_a_client_that_stalls_is_dropped(hostile, partial, timeout):
    """In the body: after read_timeout; before its headers are complete: after keep_alive_timeout
    (Hypercorn's idle timer runs until a request's headers are in)."""
    _, url, _ = hostile
    s = connect(url)
    s.sendall(partial)
    took = closed_after(s, timeout + 5)
    s.close()
    assert took is not None, f"still open {timeout + 5} s after stalling"
    assert timeout - 0.5 < took < timeout + 1.5, took


def test_open_connections_are_bounded_and_served_again_once_dropped(hostile):
    """300 half-requests: at most max_connections stay open, the rest are closed at once; once the
    read timeout drops the stalled ones the server answers as before."""
    _, url, _ = hostile
    stalled = []
    for _ in range(300):
        s = connect(url)
        s.sendall(b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        stalled.append(s)
    time.sleep(0.5)
    still_open = 0
    for s in stalled:
        s.settimeout(0.05)
        try:
            s.recv(1)  # b"": closed by the server
        except socket.timeout:
            still_open += 1  # nothing to read and not closed: the server holds it open
        except ConnectionResetError:
            pass
    assert 0 < still_open <= MAX_CONNECTIONS, still_open
    time.sleep(max(READ_TIMEOUT, KEEP_ALIVE_TIMEOUT) + 1.5)
    for s in stalled:
        s.close()
    assert requests.get(url + "/health", timeout=5).status_code == 200
    assert post(url, {"text": TEXTS["en_short"]}).status_code == 200


def test_a_chunked_body_is_accepted(hostile):
    _, url, _ = hostile
    body = json.dumps({"text": TEXTS["en_short"]}).encode()
    r = requests.post(url + "/tts", data=iter([body[:10], body[10:]]), timeout=60,  # a generator: chunked
                      headers={"Content-Type": "application/json"})
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav"


def test_a_chunked_body_over_the_limit_gets_413(hostile):
    _, url, _ = hostile
    r = requests.post(url + "/tts", data=iter([b"x" * 65536] * 17), timeout=60)
    assert r.status_code == 413 and "body over 1048576 bytes" in r.json()["error"]


def test_long_unpunctuated_text_keeps_memory_bounded_and_the_voice_shared(hostile):
    proc, url, _ = hostile
    post(url, {"text": TEXTS["en_medium"]})  # warm-up beyond the start-up's
    warm = rss_kib(proc.pid)
    long_answer = {}

    def long_request():
        started = time.monotonic()
        long_answer["r"] = post(url, {"text": UNPUNCTUATED})
        long_answer["s"] = time.monotonic() - started

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(1.0)
    started = time.monotonic()
    short = post(url, {"text": TEXTS["en_short"]})
    short_s = time.monotonic() - started
    t.join()
    after = rss_kib(proc.pid)
    r = long_answer["r"]
    assert r.status_code == 200 and short.status_code == 200
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getnframes() / w.getframerate() > 60  # 2,000 characters spoken, not cut short
    assert int(r.headers["X-Audio-Seconds"].split(".")[0]) > 60
    assert short_s < long_answer["s"] / 4, (short_s, long_answer["s"])  # not queued behind the whole text
    assert after <= 1.5 * warm, f"RSS {warm} KiB after warm-up, {after} KiB after the long text"


def test_streaming_sends_audio_after_the_first_piece(hostile):
    _, url, _ = hostile
    text = TEXTS["en_long"]
    started = time.monotonic()
    whole = post(url, {"text": text})
    whole_s = time.monotonic() - started
    started = time.monotonic()
    with requests.post(url + "/tts", json={"text": text, "stream": True}, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav" and r.headers["X-Stream"] == "1"
        assert "Content-Length" not in r.headers
        received, first_audio = b"", None
        for chunk in r.iter_content(chunk_size=None):
            received += chunk
            if first_audio is None and len(received) > 44:
                first_audio = time.monotonic() - started
        total = time.monotonic() - started
    assert received[:4] == b"RIFF" and received[8:16] == b"WAVEfmt " and received[36:40] == b"data"
    with wave.open(io.BytesIO(whole.content)) as w:
        whole_audio = w.getnframes() / w.getframerate()
    streamed_audio = (len(received) - 44) / (2 * 22050)
    assert abs(streamed_audio - whole_audio) / whole_audio < 0.15, (streamed_audio, whole_audio)
    assert first_audio <= 0.35 * total, (first_audio, total, whole_s)


def test_sigterm_finishes_the_request_in_flight_then_exits(tmp_path):
    proc, url, log = start_server(tmp_path, max_text_chars=2000)
    answer = {}
    t = threading.Thread(target=lambda: answer.setdefault("r", post(url, {"text": TEXTS["en_long"] * 2})))
    t.start()
    time.sleep(0.8)
    os.kill(proc.pid, signal.SIGTERM)
    t.join(120)
    assert proc.wait(60) == 0
    r = answer["r"]
    assert r.status_code == 200
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getnframes() / w.getframerate() > 40
    text = log.read_text()
    assert "SIGTERM: no new connections; finishing 1 request(s) in progress" in text and "stopped" in text
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/health", timeout=2)
