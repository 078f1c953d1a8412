"""The server under slow, hostile and demanding clients, with real sockets against a real server
process (CPU, en_US-joe-medium): read timeouts, the connection bound, chunked bodies, SIGTERM,
long texts without punctuation (memory, fairness) and streaming."""

import http.client
import io
import json
import os
import re
import signal
import socket
import threading
import time
import wave

import pytest
import requests

from piper_gpu_server.app import Writer
from piper_gpu_server.config import ServerConfig
from piper_gpu_server.voices import usable_cpus

from tests.server.test_server_http import TEXTS, VOICE, health, pending, post, start_server, until

READ_TIMEOUT = 2.0
#: Hypercorn's idle timer: it also ends a connection whose request headers stop coming
KEEP_ALIVE_TIMEOUT = 3.0
MAX_CONNECTIONS = 20
#: seconds a voice stays idle before its buffers go back to the system
MEMORY_RELEASE_IDLE = 2.0
#: the slowest length_scale the long text (691 phonemes) may have on the hostile server: a request's audio
#: is at most 1.5 x max_text_chars (2000) phonemes at the normal pace (App.audio_limit)
SLOWEST = 4.0
#: 2,000 characters of words without a sentence mark (the issue's worst case)
UNPUNCTUATED = ("the quick brown fox jumps over the lazy dog and keeps on running " * 32)[:2000]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    proc, url, log = start_server(tmp_path_factory.mktemp("hostile"), read_timeout=READ_TIMEOUT,
                                  keep_alive_timeout=KEEP_ALIVE_TIMEOUT, max_connections=MAX_CONNECTIONS, max_text_chars=2000, max_pending=8,
                                  memory_release_idle=MEMORY_RELEASE_IDLE)
    yield proc, url, log
    proc.terminate()
    proc.wait(30)


def connect(url) -> socket.socket:
    host, port = url.rsplit("/", 1)[-1].split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    return s


def closed_after(s: socket.socket, limit: float) -> tuple[float | None, bytes]:
    """Seconds until the server closes ``s`` (reads until EOF or reset), None if still open at
    ``limit``; and what it sent before."""
    started = time.monotonic()
    s.settimeout(limit)
    received = b""
    try:
        while chunk := s.recv(65536):
            received += chunk
    except socket.timeout:
        return None, received
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


@pytest.mark.parametrize("partial,timeout,answer", [
    (b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"te",
     READ_TIMEOUT, b"HTTP/1.1 408 "),
    (b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Ty", KEEP_ALIVE_TIMEOUT, b""),
    (b"", KEEP_ALIVE_TIMEOUT, b""),
], ids=["stalls-in-body", "stalls-in-headers", "sends-nothing"])
def test_a_client_that_stalls_is_dropped(hostile, partial, timeout, answer):
    """In the body: a 408 after read_timeout, then the connection closes; before its headers are
    complete: closed after keep_alive_timeout (Hypercorn's idle timer runs until a request's headers
    are in)."""
    _, url, _ = hostile
    s = connect(url)
    s.sendall(partial)
    took, received = closed_after(s, timeout + 10)
    s.close()
    assert took is not None, f"still open {timeout + 10} s after stalling"
    # not before the timeout (the property); after it, within what a loaded machine's event loop allows
    assert timeout - 0.5 < took < timeout + 5, took
    assert received.startswith(answer), received[:200]


def synthesis_seconds(url: str, payload: dict) -> float:
    """Seconds one request takes to be answered in full on the server at ``url``."""
    started = time.monotonic()
    assert post(url, payload).status_code == 200
    return time.monotonic() - started


@pytest.fixture(scope="module")
def kept(hostile, tmp_path_factory):
    """A server whose read and idle (keep_alive) timeouts are sized to this machine's speed: the long text at
    the normal pace takes T here (the faster of two answers on the hostile server), its timeouts are T, so
    the long text at length_scale SLOWEST (about SLOWEST x T) outlasts both, on a fast machine as on a slow one."""
    _, url, _ = hostile
    pace = min(synthesis_seconds(url, {"text": TEXTS["en_long"]}) for _ in range(2))
    timeout = max(0.25, round(pace, 2))
    proc, kept_url, log = start_server(tmp_path_factory.mktemp("kept"), read_timeout=timeout,
                                       keep_alive_timeout=timeout, max_text_chars=2000)
    yield kept_url, timeout
    proc.terminate()
    proc.wait(30)


def test_a_client_waiting_longer_than_the_read_timeout_gets_its_answer_on_a_kept_connection(kept):
    """Waiting for a slow answer is not stalling: the whole answer comes, and the same connection
    (the same local port) serves the next request. The server's timeouts are sized to this machine
    (``kept``) so that the slow answer, the long text at length_scale SLOWEST, outlasts them."""
    url, timeout = kept
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    ports, took = [], []

    def ask(payload):
        started = time.monotonic()
        conn.request("POST", "/tts", json.dumps(payload), {"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200 and body[:4] == b"RIFF", (r.status, body[:200])
        ports.append(conn.sock.getsockname()[1] if conn.sock else None)
        took.append(time.monotonic() - started)

    ask({"text": TEXTS["en_long"], "length_scale": SLOWEST})
    assert took[0] > 1.5 * timeout, (f"the long text at length_scale {SLOWEST:g} took {took[0]:.2f} s, not over 1.5 x "
                                     f"the timeouts sized to this machine ({timeout:g} s): it ran over twice as fast "
                                     "as when they were sized")
    ask({"text": TEXTS["en_short"]})
    conn.close()
    assert ports[0] is not None and len(set(ports)) == 1, ports


#: the crowded server's timeouts: long enough that the connections it holds are still held while the
#: test counts them, on any machine (at READ_TIMEOUT, those held could be dropped before it had counted)
CROWDED_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    proc, url, log = start_server(tmp_path_factory.mktemp("crowded"), read_timeout=CROWDED_TIMEOUT,
                                  keep_alive_timeout=CROWDED_TIMEOUT, max_connections=MAX_CONNECTIONS)
    yield url
    proc.terminate()
    proc.wait(30)


def test_open_connections_are_bounded_and_served_again_once_dropped(crowded):
    """300 half-requests: at most max_connections stay open, the rest are closed at once; once the
    read timeout drops the stalled ones the server answers as before."""
    url = crowded
    stalled = []
    for _ in range(300):
        s = connect(url)
        s.sendall(b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        stalled.append(s)
    closed: set[int] = set()

    def held_open() -> int:
        """Connections the server holds open; those it closed (b"" or a reset) are counted once."""
        for i, s in enumerate(stalled):
            if i in closed:
                continue
            s.settimeout(0)
            try:
                while s.recv(65536):  # an answer the server sent before closing (a 408) is read past
                    pass
                closed.add(i)
            except BlockingIOError:
                pass  # nothing (more) to read and not closed: the server holds it open
            except ConnectionResetError:
                closed.add(i)
        return len(stalled) - len(closed)

    # the server takes the connections as fast as it takes them: wait until it has closed the excess,
    # well before the read timeout could drop those it holds
    until(lambda: held_open() <= MAX_CONNECTIONS, CROWDED_TIMEOUT / 2, "the connections over max_connections closed")
    still_open = held_open()
    assert 0 < still_open <= MAX_CONNECTIONS, still_open

    # the server drops every stalled connection itself (read timeout); a connection is uncounted before
    # its close reaches the client, so once the client has seen them all closed the next one is served
    # (a POST sent while some are still held could be refused by max_connections, as it should be)
    until(lambda: held_open() == 0, CROWDED_TIMEOUT + 15, "the stalled connections dropped by the read timeout",
          0.25)
    for s in stalled:
        s.close()
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


def memory_releases(url) -> int:
    return health(url)["voices"][VOICE]["memory_releases"]


def test_long_unpunctuated_text_keeps_memory_bounded_and_the_voice_shared(hostile):
    """The issue's bound: RSS after 2,000 characters without a sentence mark within 1.5x of the warm
    process. With the CPU arena (the default) the pieces' buffers stay while the voice is busy and
    go back once it has been idle ``memory_release_idle`` seconds; the bound is checked then, and
    while busy the buffers are held to what pieces (not the whole text) need: within 3x."""
    proc, url, _ = hostile
    post(url, {"text": TEXTS["en_medium"]})  # warm-up beyond the start-up's
    warm = rss_kib(proc.pid)
    long_answer = {}

    def long_request():
        long_answer["r"] = post(url, {"text": UNPUNCTUATED})
        long_answer["done"] = time.monotonic()

    before = voice_pieces(url)
    t = threading.Thread(target=long_request)
    t.start()
    until(lambda: voice_pieces(url) > before, 60, "the long text's first piece")  # it holds the voice now
    short = post(url, {"text": TEXTS["en_short"]})
    short_done = time.monotonic()
    t.join()
    busy = rss_kib(proc.pid)
    releases = memory_releases(url)
    deadline = time.monotonic() + MEMORY_RELEASE_IDLE + 15
    while memory_releases(url) == releases and time.monotonic() < deadline:
        time.sleep(0.5)
    after = rss_kib(proc.pid)
    r = long_answer["r"]
    assert r.status_code == 200 and short.status_code == 200
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getnframes() / w.getframerate() > 60  # 2,000 characters spoken, not cut short
    assert int(r.headers["X-Audio-Seconds"].split(".")[0]) > 60
    assert short_done < long_answer["done"], "the short request was queued behind the whole long text"
    assert memory_releases(url) > releases, f"no memory release {MEMORY_RELEASE_IDLE + 15:.0f} s after the long text"
    assert after <= 1.5 * warm, f"RSS {warm} KiB after warm-up, {after} KiB once the voice was idle"
    # busy, both sessions' arenas hold what their pieces needed (2.02x was seen with the short request
    # on the second session); the issue measured the old server going from 163 MB to 1.6 GB on it
    assert busy <= 3 * warm, f"RSS {warm} KiB after warm-up, {busy} KiB right after the long text"


def test_streaming_sends_audio_after_the_first_piece(hostile):
    """The first audio comes while the voice has still not started every piece of the text (its
    /health count of pieces, not a share of the wall-clock time)."""
    _, url, _ = hostile
    text = TEXTS["en_long"]
    planned = 8  # the long text's sentences
    whole = post(url, {"text": text})
    before = voice_pieces(url)
    with requests.post(url + "/tts", json={"text": text, "stream": True}, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav" and r.headers["X-Stream"] == "1"
        assert "Content-Length" not in r.headers
        received, started_at_first_audio = b"", None
        for chunk in r.iter_content(chunk_size=None):
            received += chunk
            if started_at_first_audio is None and len(received) > 44:
                started_at_first_audio = voice_pieces(url) - before
    assert received[:4] == b"RIFF" and received[8:16] == b"WAVEfmt " and received[36:40] == b"data"
    with wave.open(io.BytesIO(whole.content)) as w:
        whole_audio = w.getnframes() / w.getframerate()
    print(f"the long text ({len(text)} characters): {whole_audio:.1f} s of audio")  # docs/server.md cites it
    streamed_audio = (len(received) - 44) / (2 * 22050)
    assert abs(streamed_audio - whole_audio) / whole_audio < 0.15, (streamed_audio, whole_audio)
    assert voice_pieces(url) - before == planned
    assert started_at_first_audio < planned, f"no audio before all {planned} pieces had started"


def voice_pieces(url) -> int:
    return health(url)["voices"][VOICE]["pieces"]


def test_a_client_that_hangs_up_mid_stream_stops_its_synthesis(hostile):
    _, url, log = hostile
    text = " ".join([TEXTS["en_long"]] * 3)
    planned = 24  # the long text's 8 sentences, three times
    before = voice_pieces(url)
    s = connect(url)
    body = json.dumps({"text": text, "stream": True}).encode()
    s.sendall(b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    received = b""
    while b"RIFF" not in received:  # the first piece's audio is on its way
        received += s.recv(65536)
    assert received.startswith(b"HTTP/1.1 200 ")
    s.close()
    # the server says when it noticed; until then the test waits (as long as all 24 pieces could take)
    gone = re.compile(rf"client gone after (\d+) of {planned} pieces")
    until(lambda: gone.search(log.read_text()), 300, "the log line of the client gone", 0.1)
    noticed = int(gone.search(log.read_text()).group(1))
    assert noticed < planned, noticed
    assert voice_pieces(url) - before == noticed, (voice_pieces(url) - before, noticed)  # no piece after it
    assert post(url, {"text": TEXTS["en_short"]}).status_code == 200


def test_sigterm_finishes_the_request_in_flight_then_exits(tmp_path):
    proc, url, log = start_server(tmp_path, max_text_chars=2000)
    answer = {}
    t = threading.Thread(target=lambda: answer.setdefault("r", post(url, {"text": TEXTS["en_long"] * 2})))
    t.start()
    until(lambda: pending(url) == 1, 30, "the request in progress")  # its body is in: it is being synthesised
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


# --- no client holds a slot (issue 19, point 1) ----------------------------------------------------
#: the tight server: two places, short body and write deadlines
#: seconds of 22.05 kHz audio the buffers between server and client may hold (app.Writer.AHEAD): a client
#: that stops reading is dropped at most that much later than write_timeout
SOCKET_BUFFERED_S = Writer.AHEAD / (2 * 22050)
TIGHT = {"max_pending": 2, "read_timeout": 2.0, "body_timeout": 4.0, "write_timeout": 2.0, "max_text_chars": 2000}


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    proc, url, log = start_server(tmp_path_factory.mktemp("tight"), **TIGHT)
    # the pace of this machine, for the bounds below: a reading client's whole answer to the long text
    started = time.monotonic()
    assert post(url, {"text": TEXTS["en_long"]}).status_code == 200
    yield url, log, time.monotonic() - started
    proc.terminate()
    proc.wait(30)


def post_raw(url, payload: dict, body_bytes: int | None = None, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """A socket with a POST /tts head sent (and the whole body unless ``body_bytes`` says how much of it);
    ``rcvbuf`` shrinks its receive buffer, as a client that does not read has. (socket, unsent body)"""
    host, port = url.rsplit("/", 1)[-1].split(":")
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect((host, int(port)))
    body = json.dumps(payload).encode()
    sent = len(body) if body_bytes is None else body_bytes
    s.sendall(b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body[:sent])
    return s, body[sent:]


def served_after(url, limit: float) -> float:
    """Seconds until a short POST /tts gets 200 (503s retried every 0.25 s); fails past ``limit``."""
    started = time.monotonic()
    statuses = []
    while time.monotonic() - started < limit:
        r = post(url, {"text": TEXTS["en_short"]})
        if r.status_code == 200:
            return time.monotonic() - started
        statuses.append(r.status_code)
        time.sleep(0.25)
    pytest.fail(f"no 200 within {limit:.0f} s (statuses {sorted(set(statuses))})")


def gone_count(url) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf'piper_tts_requests_total{{[^}}]*status="499"[^}}]*}} (\S+)', text))


def reading(url) -> int:
    return health(url)["reading"]


def test_a_trickled_body_holds_no_slot_and_gets_408_after_body_timeout(tight, tmp_path):
    """Two bodies (max_pending of them) trickled a byte every 0.5 s, within read_timeout each time.
    While the server reads them (/health "reading") they hold no place: another client is served
    while both are still being read (no 503, no wait behind them); each trickler gets 408 once the
    whole body has taken body_timeout. body_timeout is sized to this machine: ten times its short
    request, at least 4 s, so that the other client is served within it on a slow machine too."""
    url, _, _ = tight
    started = time.monotonic()
    assert post(url, {"text": TEXTS["en_short"]}).status_code == 200
    body_timeout = max(4.0, round(10 * (time.monotonic() - started)))
    proc, url, _ = start_server(tmp_path, **{**TIGHT, "body_timeout": body_timeout})
    try:
        clients = [post_raw(url, {"text": TEXTS["en_medium"]}, body_bytes=5) for _ in range(TIGHT["max_pending"])]
        started = time.monotonic()
        stop = threading.Event()

        def trickle():
            while not stop.is_set():
                for i, (s, rest) in enumerate(clients):
                    if rest:
                        try:
                            s.sendall(rest[:1])
                        except OSError:
                            rest = b""
                        clients[i] = (s, rest[1:])
                time.sleep(0.5)

        threading.Thread(target=trickle, daemon=True).start()
        until(lambda: reading(url) == TIGHT["max_pending"], 10, "the server reading both trickled bodies")
        assert pending(url) == 0  # reading a body holds no place
        r = post(url, {"text": TEXTS["en_short"]})
        assert r.status_code == 200, (r.status_code, r.text[:200])
        assert reading(url) == TIGHT["max_pending"], "the other client was served only once a trickler was gone"
        answers = []
        for s, _ in clients:
            took, received = closed_after(s, body_timeout + 10)
            answers.append((time.monotonic() - started, received))
            s.close()
        stop.set()
        for at, received in answers:
            assert received.startswith(b"HTTP/1.1 408 "), received[:200]
            assert f"the request body took over {body_timeout:g} s".encode() in received, received
            # not before body_timeout (the property); after it, within what a loaded event loop allows
            assert body_timeout - 0.5 < at < body_timeout + 5, at
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("stream,reads", [(False, 0), (True, 0), (True, 1024)],
                         ids=["whole-never-reads", "stream-never-reads", "stream-reads-1KiB-a-second"])
def test_a_client_that_does_not_read_is_dropped_and_frees_its_slot(tight, stream, reads):
    """Two clients (max_pending of them) post the long text and then read nothing, or 1 KiB a second.
    Each is dropped once its writes have waited write_timeout plus the audio sent (its synthesis stops, its slot frees, its
    connection is reset, counted as 499), so that another client is served within the bound stated
    here: twice this machine's time for the long text (both hogs synthesise at once) plus the write
    deadline and the audio the sockets' buffers took, plus 10 s. A stream's remaining pieces are not synthesised: its 40 s of audio outgrow
    the sockets' buffers (512 KiB on the server's side, 4 KiB on the client's) long before its end."""
    url, log, long_s = tight
    gone = gone_count(url)
    planned = 8  # the long text's pieces
    before = voice_pieces(url)
    hogs = [post_raw(url, {"text": TEXTS["en_long"], "stream": stream}, rcvbuf=4096)[0]
            for _ in range(TIGHT["max_pending"])]
    stop = threading.Event()

    def read_slowly():
        while not stop.is_set():
            for s in hogs:
                try:
                    s.setblocking(False)
                    s.recv(reads)
                except (BlockingIOError, OSError):
                    pass
            time.sleep(1)

    if reads:
        threading.Thread(target=read_slowly, daemon=True).start()
    until(lambda: pending(url) == len(hogs), 30, "both hogs holding their places")
    bound = 2 * long_s + TIGHT["write_timeout"] + SOCKET_BUFFERED_S + 10
    try:
        served_after(url, bound)
        until(lambda: gone_count(url) >= gone + len(hogs), bound, "both hogs counted as 499", 0.25)
    finally:
        stop.set()
    assert gone_count(url) == gone + len(hogs), "both hogs counted as 499"
    assert pending(url) == 0
    assert log.read_text().count("the client is not reading its answer") >= len(hogs)
    if stream:  # the hogs' pieces, less the one of the client served (served_after: one 200, 503s synthesise nothing)
        synthesised = voice_pieces(url) - before - 1
        assert synthesised < len(hogs) * planned, f"{synthesised} pieces: the dropped streams were synthesised to the end"
    for s in hogs:
        s.setblocking(True)
        took, received = closed_after(s, 10)  # what reached its buffer, then the reset
        s.close()
        assert took is not None, "the dropped client's connection is still open"
        assert reads or received.startswith(b"HTTP/1.1 200 ") or not received, received[:100]


def stops_at_once(proc, what: str) -> None:
    """SIGTERM ends the server well before graceful_timeout (60 s), which it would wait for ``what``."""
    stopping = time.monotonic()
    proc.terminate()
    assert proc.wait(50) == 0
    assert time.monotonic() - stopping < 30, f"the stop waited for {what}"


def test_a_client_that_never_reads_its_get_answers_is_dropped(tmp_path):
    """Every answer has a write deadline, not only audio: a client that pipelines GET /metrics and reads
    none of the answers (more of them than both sockets' buffers hold) is dropped once a write has
    waited write_timeout; the server answers others meanwhile, and nothing of that connection is
    left behind: a stop (SIGTERM) ends at once, not after graceful_timeout (60 s) waiting for it."""
    proc, url, log = start_server(tmp_path, **TIGHT)
    try:
        size = len(requests.get(url + "/metrics", timeout=10).content)
        count = (2 << 20) // size + 1  # 2 MiB of answers: more than 512 KiB + 4 KiB of buffers
        host, port = url.rsplit("/", 1)[-1].split(":")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        pipelined = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * count

        def send_all():
            try:
                s.sendall(pipelined)
            except OSError:
                pass  # dropped while sending, as it should be

        threading.Thread(target=send_all, daemon=True).start()
        until(lambda: "GET /metrics: the client is not reading its answer" in log.read_text(),
              TIGHT["write_timeout"] + 30, "the server dropping the client that reads nothing", 0.1)
        took, _ = closed_after(s, 10)
        s.close()
        assert took is not None, "the connection of the client that reads nothing is still open"
        assert requests.get(url + "/health", timeout=10).status_code == 200
        stops_at_once(proc, "the dropped connection")
    finally:
        proc.kill()
        proc.wait(10)


def test_a_refused_body_is_read_and_dropped_and_leaves_nothing_behind(tmp_path):
    """A body the server refuses before reading it all (413 by its Content-Length, 401 without the key,
    404 elsewhere) is read and dropped while the answer goes out: unread, Hypercorn would stop reading
    the connection once 10 parts wait for the application, and its close would wait for ever. Each
    client gets its answer, the server logs no dropped client, every connection closes (/health's
    count of open connections), and a stop ends at once."""
    key = tmp_path / "api-key"
    key.write_text("k" * 24)
    proc, url, log = start_server(tmp_path, api_key_file=str(key))
    try:
        big = b"x" * (2 << 20)
        auth = {"Authorization": "Bearer " + "k" * 24}
        assert requests.post(url + "/tts", data=big, headers=auth, timeout=60).status_code == 413
        assert requests.post(url + "/tts", data=big[:(1 << 20) - 100], timeout=60).status_code == 401
        assert requests.post(url + "/synthesize", data=big, timeout=60).status_code == 404
        assert requests.get(url + "/health", data=big[:500_000], timeout=60).status_code == 200
        assert "not reading" not in log.read_text() and "did not come" not in log.read_text()
        # every connection but the one asking (kept alive) is closed, within keep_alive_timeout of its
        # client closing it (Hypercorn's idle timer): none is left waiting on its body
        with requests.Session() as asking:
            until(lambda: health(url, asking)["connections"] == 1, 30,
                  "the refused requests' connections closed", 0.5)
        stops_at_once(proc, "a connection left behind")
    finally:
        proc.kill()
        proc.wait(10)


def test_a_client_reading_at_the_pace_of_the_audio_gets_all_of_it(tight):
    """The write deadline is no tighter than playback: a stream read 1/10 s of audio at a time, at the
    audio's own pace, through a 16 KiB receive buffer, comes whole. Its 24 s of audio outgrow the
    sockets' buffers (512 KiB on the server's side: about 12 s), so the server's writes really wait
    on this reader, for longer in all than write_timeout (and one write alone for longer than it:
    the kernel wakes a writer once half its send buffer is free)."""
    url, _, _ = tight
    rate = 2 * 22050  # bytes of 16-bit mono audio per second
    payload = {"text": TEXTS["en_medium"], "length_scale": 4}
    s, _ = post_raw(url, {**payload, "stream": True}, rcvbuf=16384)
    received = b""
    started = None
    while not received.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of the chunked answer
        chunk = s.recv(rate // 10)
        assert chunk, f"the connection closed after {len(received)} bytes"
        received += chunk
        started = started or time.monotonic()
        ahead = len(received) / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    s.close()
    assert received.startswith(b"HTTP/1.1 200 ")
    head, body = received.split(b"\r\n\r\n", 1)
    audio = b""
    while body:  # de-chunk
        size, rest = body.split(b"\r\n", 1)
        audio += rest[:int(size, 16)]
        body = rest[int(size, 16) + 2:]
    seconds = (len(audio) - 44) / rate
    assert seconds > SOCKET_BUFFERED_S + TIGHT["write_timeout"] + 5, seconds
    whole = post(url, payload)
    assert abs(len(whole.content) - len(audio)) < 0.1 * len(audio), (len(whole.content), len(audio))


# --- memory bounded by audio (issue 19, point 2) ---------------------------------------------------
#: the bound docs/server.md states for the defaults on the CPU, measured on 2 CPUs (docs/server.md "Bounds
#: under any client": 2,250 to 2,570 MiB)
PEAK_RSS_BOUND_2_CPUS_MIB = 3072
#: what one more usable CPU may add: a voice runs 4 pieces at once whatever the CPUs (voices.SYNTHESES) and each
#: run's buffers follow its phonemes, but each piece has usable_cpus() // 4 intra-op threads (about one thread
#: per CPU in all), and glibc gives threads their own malloc arenas (up to 8 x the CPUs online on 64-bit), each
#: growing in heaps of HEAP_MAX_SIZE, 64 MiB there (glibc malloc/arena.c): one such heap per extra CPU
PEAK_RSS_PER_EXTRA_CPU_MIB = 64


def peak_rss_bound_mib(cpus: int) -> int:
    """The slow-speech test's bound on the server's peak RSS where it may run on ``cpus`` CPUs."""
    return PEAK_RSS_BOUND_2_CPUS_MIB + PEAK_RSS_PER_EXTRA_CPU_MIB * max(0, cpus - 2)


def test_the_memory_bound_grows_with_the_cpus_only_past_the_measured_two():
    assert peak_rss_bound_mib(1) == peak_rss_bound_mib(2) == 3072
    assert peak_rss_bound_mib(16) == 3072 + 14 * 64


#: seconds each of the slow-speech answers may take: each is over 40 s of audio and 8 run at once on the CPU's
#: 4 pieces, so on a slow or loaded machine the last comes minutes after it was asked; synthesis slower than
#: the audio itself (8 x about 45 s) would be a failure of its own
SLOW_SPEECH_SECONDS = 600
#: texts whose audio outgrows their characters, at the slowest length_scale: words without a break,
#: digits (about 11 phonemes each) and hanzi, which the English voice reads letter by letter (about 15)
SLOW_TEXTS = [UNPUNCTUATED[:100], "12345678901234567890", "中文语音合成测试"]


def peak_rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmHWM:"))


def test_slow_speech_keeps_memory_bounded_by_audio(tmp_path):
    """max_pending (8, the default) requests at once at the slowest length_scale (10), of words without
    a break, digits and hanzi: no model run holds more than PHONEMES_PER_CHAR x sentence_max_chars
    phonemes at the normal pace (/health's longest_run), and the server's peak RSS stays within the
    bound in docs/server.md, with every request answered in full."""
    from piper_gpu_server.text import PHONEMES_PER_CHAR

    proc, url, _ = start_server(tmp_path, max_text_chars=ServerConfig().max_text_chars)  # the defaults
    answers = {}

    def request(i):
        answers[i] = requests.post(url + "/tts", json={"text": SLOW_TEXTS[i % len(SLOW_TEXTS)], "length_scale": 10},
                                   timeout=(30, SLOW_SPEECH_SECONDS))

    try:
        threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + SLOW_SPEECH_SECONDS + 60
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        peak = peak_rss_mib(proc.pid)
        assert sorted(answers) == list(range(8)), f"answered: {sorted(answers)} (the others failed or took over " \
                                                  f"{SLOW_SPEECH_SECONDS} s)"
        assert [answers[i].status_code for i in range(8)] == [200] * 8
        # at length_scale 10 each is about ten times as long as at the normal pace (over 40 s)
        seconds = [float(answers[i].headers["X-Audio-Seconds"]) for i in range(8)]
        assert all(s > 40 for s in seconds), seconds
        longest = health(url)["voices"][VOICE]["longest_run"]
        print(f"peak RSS {peak} MiB, longest run {longest} phonemes at the normal pace, audio {seconds} s")
        assert 0 < longest <= PHONEMES_PER_CHAR * 200, f"a model run of {longest} phonemes at the normal pace"
        bound = peak_rss_bound_mib(usable_cpus())
        assert peak <= bound, f"peak RSS {peak} MiB over the bound {bound} MiB for {usable_cpus()} CPUs"
    finally:
        proc.terminate()
        proc.wait(30)
