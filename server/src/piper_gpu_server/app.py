"""The HTTP contract, as an ASGI application (served by Hypercorn, see ``serve``):

    POST /tts     {"text": str, "voice"?: str, "speaker_id"?: int, "length_scale"?: float,
                   "stream"?: bool} -> audio/wav
    GET  /health  {"status": "ok", "server": version, "voices": {name: {"provider", ...}}, "gpu", ...}
    GET  /voices  [{"name", "sample_rate", "num_speakers", "provider"}]
    GET  /metrics Prometheus text format

With an API key, POST /tts needs ``Authorization: Bearer <key>`` (or ``X-API-Key``). At most
``max_pending`` requests synthesise or wait at once; more get 503 with Retry-After. A text is split
into pieces (``text.split``); with ``"stream": true`` the WAV is sent as each piece is synthesised
(a header with unknown length, then the audio piece by piece), else whole with its length. A text
with nothing to speak gets 422. Request text is never logged."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
import traceback
import typing
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

from piper_gpu_server import text as texts
from piper_gpu_server.config import ServerConfig
from piper_gpu_server.metrics import CONTENT_TYPE as METRICS_TYPE
from piper_gpu_server.metrics import Metrics
from piper_gpu_server.voices import Voice, wav_header

LOG = logging.getLogger("piper_gpu_server")
JSON_TYPE = "application/json; charset=utf-8"


def unspeakable_char(ch: str) -> bool:
    """A control character other than tab, newline and carriage return (NUL included), or a lone
    surrogate (JSON's "\\ud800"): text espeak-ng fails on, refused before any synthesis."""
    code = ord(ch)
    return (code < 0x20 and ch not in "\t\n\r") or 0x7F <= code < 0xA0 or 0xD800 <= code <= 0xDFFF


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ClientGone(Exception):
    """The client hung up: its request ends where it is (logged and counted as 499 by ``App._tts``)."""


class StreamCut(Exception):
    """A stream whose synthesis failed after its 200 was sent: logged (without its message) and counted;
    the connection is dropped, so the client sees the answer end without its last chunk."""


class WriteTimeout(Exception):
    """A write of an answer that the client did not take in time."""


class Receiver:
    """The ASGI ``receive`` of one request, noting when its body is complete or its client gone."""

    def __init__(self, receive):
        self._receive, self.done = receive, False

    async def __call__(self) -> dict:
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            self.done = True
        return message


#: the kernel send buffer of each accepted connection (serve.LimitedListener sets it; Linux doubles it)
SEND_BUFFER = 256 * 1024


class Writer:
    """The ASGI ``send`` of one answer, with deadlines. The body goes in chunks of ``CHUNK`` bytes.
    An answer without audio: its writes together may wait at most ``write_timeout``. An answer with
    audio: its writes together may wait at most ``write_timeout`` plus the seconds of audio sent, so a
    client must read at least as fast as the audio plays; the credit of audio not yet waited for is
    capped at ``AHEAD`` bytes' worth, what the buffers between server and client hold (the kernel's
    send buffer, asyncio's 64 KiB of write buffer and the chunk being written), so a client that read
    fast and then stops is dropped within ``write_timeout`` plus that (14.9 s of 22.05 kHz audio) of
    stopping, like one that never read. There is no deadline per audio chunk: a client reading at
    the audio's pace can leave one write waiting several seconds, until the kernel has half its send
    buffer free again. A write past its deadline raises WriteTimeout."""

    CHUNK = 64 * 1024
    AHEAD = 2 * SEND_BUFFER + 2 * CHUNK

    def __init__(self, send, write_timeout: float, bytes_per_second: int | None = None, gone=None):
        """``bytes_per_second``: of the audio the answer carries; None for an answer without audio.
        ``gone``: a callable, true once the client has hung up; then no more is written (ClientGone)."""
        self._send, self.timeout, self.rate = send, write_timeout, bytes_per_second
        self.gone = gone or (lambda: False)
        self.budget = write_timeout  # seconds the writes may still wait, all together

    async def _write(self, message: dict) -> None:
        # a write into a closed connection returns as if it went out (Hypercorn tells only the receive
        # side, http.disconnect, and asyncio logs "socket.send() raised exception" for each one after
        # the fifth): none is tried once the client is gone
        if self.gone():
            raise ClientGone()
        loop = asyncio.get_running_loop()
        wait = max(0.0, self.budget)
        started = loop.time()
        try:
            await asyncio.wait_for(self._send(message), wait)
        except asyncio.TimeoutError:
            raise WriteTimeout(f"its writes waited write_timeout ({self.timeout:g} s) plus the seconds of audio "
                               "sent, in all" if self.rate else
                               f"its writes waited write_timeout ({self.timeout:g} s) in all") from None
        self.budget -= loop.time() - started

    async def start(self, status: int, headers: list) -> None:
        await self._write({"type": "http.response.start", "status": int(status), "headers": headers})

    async def body(self, data: bytes, more: bool) -> None:
        """``data`` in chunks, each crediting the writes with its seconds of audio."""
        for at in range(0, len(data), self.CHUNK):
            chunk = data[at:at + self.CHUNK]
            if self.rate:
                self.budget = min(self.budget + len(chunk) / self.rate, self.timeout + self.AHEAD / self.rate)
            await self._write({"type": "http.response.body", "body": chunk,
                               "more_body": more or at + self.CHUNK < len(data)})
        if not data:
            await self._write({"type": "http.response.body", "body": b"", "more_body": more})


#: the status /metrics counts for a request whose client hung up before its answer was complete
#: (nginx's "client closed request"); nothing is sent
CLIENT_GONE = 499


def trace(exc: BaseException) -> str:
    """An exception for the log: its type and frames, not its message, which may quote the request
    text (a KeyError of a character, espeak's input)."""
    return f"{type(exc).__name__} (message withheld: it may quote the text)\n" + \
        "".join(traceback.format_tb(exc.__traceback__)).rstrip()


def synthesis_failed(voice: Voice, exc: Exception) -> RequestError:
    """A 500 naming the error of a synthesis that failed before any audio was sent; logged with its trace."""
    LOG.error("synthesis failed (voice %s): %s", voice.name, trace(exc))
    return RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"synthesis failed: {type(exc).__name__}: {exc}")


@dataclasses.dataclass
class TtsRequest:
    voice: Voice
    text: str
    pieces: list[str]
    speaker_id: int | None
    length_scale: float | None
    stream: bool
    #: the most phonemes one model run of this request may hold (``App.phoneme_limit``)
    max_phonemes: int | None = None
    #: the length_scale it is spoken at (the voice's own where the request gives none)
    scale: float = 1.0
    gone: bool = False  # the client hung up
    synthesised: int = 0  # pieces whose audio is ready
    #: asks the connection whether its client hung up (``App.hang_up_probe``), for where Hypercorn does not say
    hung_up: typing.Callable[[], bool] = lambda: False
    #: seconds synthesising, of audio, to the first audio (streams): set when the audio is complete
    finished: tuple | None = None

    def client_gone(self) -> bool:
        """Whether the client has hung up: Hypercorn said so (``gone``, from its ``http.disconnect``), or
        the connection does (``hung_up``)."""
        if not self.gone and self.hung_up():
            self.gone = True
        return self.gone


class App:
    def __init__(self, config: ServerConfig, voices: dict[str, Voice], *, info: dict, gpu_sample=dict,
                 api_key: str | None = None, config_file: str | None = None, abort=None, hang_up_probe=None,
                 connections=None):
        self.config = config
        #: drops the connection of a request (its ASGI scope) at once, unsent data discarded
        #: (serve.LimitedListener.abort); in-process tests have no socket to drop
        self.abort = abort or (lambda scope: None)
        #: a callable telling whether the client of a request (its ASGI scope) has hung up, asked of its
        #: socket (serve.LimitedListener.hang_up_probe); in-process tests have none: Hypercorn's word only
        self.hang_up_probe = hang_up_probe or (lambda scope: lambda: False)
        #: the open connections (serve.LimitedListener.open), for /health; in-process tests have none
        self.connections = connections or (lambda: None)
        self.voices = voices
        self.info = info
        self.api_key = api_key
        self.config_file = config_file
        self.pending = 0
        #: POST /tts bodies being read: requests that hold no place yet
        self.reading = 0
        # one thread per request that may be in progress: each has at most one piece synthesising
        self.executor = ThreadPoolExecutor(max_workers=config.max_pending, thread_name_prefix="synth")
        self.metrics = Metrics(lambda: self.pending, gpu_sample, voices)
        self._releaser: asyncio.Task | None = None
        for name, voice in voices.items():
            self.metrics.provider.labels(voice=name, provider=voice.provider).set(1)

    # --- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        # every answer but an audio one (``_tts`` makes its own) is written under write_timeout
        out = Writer(send, self.config.write_timeout)
        receive = Receiver(receive)
        tts = path == "/tts" and method == "POST"
        # a body nobody reads blocks the connection (Hypercorn holds at most 10 parts of it for the
        # application, then stops reading, and its close waits on that): a request that is not POST
        # /tts has its body read and dropped at once; POST /tts reads its own, or drops it on refusal
        drain = None if tts else asyncio.create_task(self._discard(receive))
        try:
            try:
                if tts:
                    await self._tts(scope, receive, send)
                elif method == "GET" and path in ("/health", "/voices", "/metrics"):
                    await self._get(path, out)
                elif path == "/tts":
                    raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, "use POST /tts with a JSON body", {"Allow": "POST"})
                elif method == "POST":
                    raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint {path}; POST goes to /tts")
                else:
                    raise RequestError(HTTPStatus.NOT_FOUND,
                                       f"no such endpoint {path}; try POST /tts, GET /health, GET /voices, GET /metrics")
            except RequestError as exc:
                if drain is None and not receive.done and exc.status != HTTPStatus.REQUEST_TIMEOUT:
                    drain = asyncio.create_task(self._discard(receive))
                await self._error(out, exc)
        except ClientGone:
            pass
        except WriteTimeout as exc:
            LOG.warning("%s %s: the client is not reading its answer (%s); connection dropped", method, path, exc)
            self.abort(scope)
        finally:
            if drain is not None:
                await self._discarded(drain, scope)

    @staticmethod
    async def _discard(receive: Receiver) -> None:
        """Reads what is left of a request's body, and drops it."""
        while not receive.done:
            await receive()

    async def _discarded(self, drain: asyncio.Task, scope) -> None:
        """Waits for ``drain`` at most ``body_timeout``; past it the connection is dropped."""
        done, _ = await asyncio.wait({drain}, timeout=self.config.body_timeout)
        if not done:
            drain.cancel()
            LOG.warning("%s %s: the rest of a refused body did not come within body_timeout (%g s); connection "
                        "dropped", scope["method"], scope["path"], self.config.body_timeout)
            self.abort(scope)

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.config.memory_release_idle > 0:
                    self._releaser = asyncio.create_task(self.release_idle_memory())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._releaser is not None:
                    self._releaser.cancel()
                self.executor.shutdown(wait=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def release_idle_memory(self):
        """Every voice idle for ``memory_release_idle`` seconds hands its buffers back (once per idle
        spell), in the synthesis threads so that the event loop never waits on it."""
        idle = self.config.memory_release_idle
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, idle / 4))
            for voice in self.voices.values():
                try:
                    rss = await loop.run_in_executor(self.executor, voice.release_if_idle, idle)
                except Exception:  # noqa: BLE001 - memory stays in use; synthesis is not affected
                    LOG.exception("voice %s: handing idle memory back failed; it stays in use", voice.name)
                    return
                if rss is not None:
                    self.metrics.memory_releases.labels(voice=voice.name).inc()
                    LOG.info("voice %s: idle %.0f s, memory handed back (RSS %d -> %d MiB)", voice.name, idle, *rss)

    @staticmethod
    async def _respond(out: Writer, status: int, body: bytes, content_type: str, headers: dict | None = None):
        head = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        head += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
        await out.start(status, head)
        await out.body(body, more=False)

    async def _json(self, out: Writer, status, payload, headers=None):
        await self._respond(out, status, json.dumps(payload, ensure_ascii=False).encode(), JSON_TYPE, headers)

    async def _error(self, out: Writer, exc: RequestError):
        await self._json(out, exc.status, {"error": exc.message, "status": int(exc.status)}, exc.headers)

    # --- GET ----------------------------------------------------------------------------------
    def health(self) -> dict:
        return {
            "status": "ok",
            **self.info,
            "config_file": self.config_file,
            "config": dataclasses.asdict(self.config),
            "use_gpu": self.config.use_gpu,
            "pending": self.pending,
            "reading": self.reading,
            "connections": self.connections(),
            "voices": {
                name: {"provider": v.provider, "session_providers": v.session_providers, "on_gpu": v.on_gpu,
                       "syntheses": v.syntheses, "sessions": v.sessions, "concurrent_intra_op_threads": v.concurrent_intra_op_threads,
                       "pieces": v.pieces, "concurrent_pieces": v.concurrent_pieces, "memory_releases": v.releases,
                       "longest_run": v.longest_run,
                       "onnx_sha256": v.sha256[".onnx"], "json_sha256": v.sha256[".onnx.json"],
                       "shape_stable": v.stable_health(), "resources": v.resources()}
                for name, v in self.voices.items()
            },
        }

    async def _get(self, path: str, out: Writer):
        if path == "/health":
            await self._json(out, HTTPStatus.OK, self.health())
        elif path == "/voices":
            await self._json(out, HTTPStatus.OK, [
                {"name": n, "sample_rate": v.sample_rate, "num_speakers": v.num_speakers, "provider": v.provider}
                for n, v in self.voices.items()])
        else:
            await self._respond(out, HTTPStatus.OK, self.metrics.render(), METRICS_TYPE)

    # --- POST /tts ----------------------------------------------------------------------------
    def _authorised(self, headers: dict[str, str]) -> bool:
        if self.api_key is None:
            return True
        given = headers.get("x-api-key", "")
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):]
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    async def _tts(self, scope, receive, send):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self._authorised(headers):
            self.metrics.record("", HTTPStatus.UNAUTHORIZED)
            raise RequestError(HTTPStatus.UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <key>)",
                               {"WWW-Authenticate": "Bearer"})
        voice = None
        try:
            # body and checks before a slot: a client sending slowly (at most body_timeout) holds none
            self.reading += 1
            try:
                raw = await self._body(headers, receive)
            finally:
                self.reading -= 1
            request = self.parse(raw)
            voice = request.voice
            if self.pending >= self.config.max_pending:
                raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE,
                                   f"busy: {self.config.max_pending} requests in progress; retry shortly",
                                   {"Retry-After": "1"})
        except RequestError as exc:
            self.metrics.record(voice.name if voice else "", exc.status)
            raise
        self.pending += 1  # taken before the phoneme count, so that at most max_pending requests count at once
        request.hung_up = self.hang_up_probe(scope)
        watcher = asyncio.create_task(self._watch_disconnect(receive, request))
        out = Writer(send, self.config.write_timeout, 2 * voice.sample_rate, request.client_gone)
        try:
            await self._check_audio(request)
            if request.stream:
                await self._stream(request, out)
            else:
                await self._whole(request, out)
        except RequestError as exc:
            self.metrics.record(voice.name, exc.status)
            raise
        except ClientGone:
            done, planned = request.synthesised, len(request.pieces)
            LOG.info("tts voice=%s: client gone after %d of %d pieces; %s", voice.name, done, planned,
                     "the rest is not synthesised" if done < planned else "the rest of its answer is not sent")
            self.metrics.record(voice.name, CLIENT_GONE)
            raise
        except WriteTimeout as exc:
            LOG.warning("tts voice=%s: the client is not reading its answer (%s); connection dropped%s", voice.name,
                        exc, ", the rest is not synthesised" if request.stream else "")
            self.metrics.record(voice.name, CLIENT_GONE)
            self.abort(scope)
            raise ClientGone() from exc
        except StreamCut:
            self.abort(scope)
            raise ClientGone() from None  # logged and counted; nothing more can be said to the client
        finally:
            watcher.cancel()
            self.pending -= 1

    @staticmethod
    async def _watch_disconnect(receive, request: "TtsRequest"):
        """Marks the request gone when its client hangs up (the body is read: the next message is
        ``http.disconnect``), so that its remaining pieces are not synthesised."""
        while (await receive())["type"] != "http.disconnect":
            pass
        request.gone = True

    async def _body(self, headers: dict[str, str], receive) -> bytes:
        limit = self.config.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {limit} bytes")
            except ValueError:
                raise RequestError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        body = bytearray()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.body_timeout
        while True:
            left = deadline - loop.time()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.config.read_timeout, left)))
            except asyncio.TimeoutError:
                stalled = left > self.config.read_timeout
                raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the request body stalled for {self.config.read_timeout:g} s"
                                   if stalled else f"the request body took over {self.config.body_timeout:g} s",
                                   {"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            body += message.get("body", b"")
            if len(body) > limit:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {limit} bytes")
            if not message.get("more_body"):
                return bytes(body)

    def parse(self, raw: bytes) -> TtsRequest:
        """The request body checked field by field; RequestError (4xx) names what is wrong."""
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "body is nested too deeply to be a request") from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body has a value that cannot be read: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, 'body must be a JSON object like {"text": "..."}')
        text = body.get("text")
        if not isinstance(text, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, "'text' is required and must be a string")
        if not text.strip():
            raise RequestError(HTTPStatus.BAD_REQUEST, "'text' is empty")
        bad = next(((i, ch) for i, ch in enumerate(text) if unspeakable_char(ch)), None)
        if bad is not None:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"'text' has the character U+{ord(bad[1]):04X} at position "
                                                       f"{bad[0]} (a control character or a lone surrogate)")
        limit = self.config.max_text_chars
        if len(text) > limit:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"'text' has {len(text)} characters; the limit is {limit}")
        name = body.get("voice")
        if name is None:
            name = next(iter(self.voices))
        if not isinstance(name, str) or name not in self.voices:
            raise RequestError(HTTPStatus.NOT_FOUND, f"unknown voice {name!r}; available: {', '.join(self.voices)}")
        voice = self.voices[name]
        speaker_id = body.get("speaker_id")
        if speaker_id is not None:
            if not isinstance(speaker_id, int) or isinstance(speaker_id, bool):
                raise RequestError(HTTPStatus.BAD_REQUEST, "'speaker_id' must be an integer")
            if not 0 <= speaker_id < max(voice.num_speakers, 1):
                raise RequestError(HTTPStatus.BAD_REQUEST, f"'speaker_id' {speaker_id} out of range: voice {name} "
                                                           f"has {voice.num_speakers} speaker(s)")
            if voice.num_speakers <= 1:
                speaker_id = None
        length_scale = body.get("length_scale")
        if length_scale is not None:
            # compared as given: float() of a huge integer overflows, and NaN fails every comparison
            if not isinstance(length_scale, (int, float)) or isinstance(length_scale, bool) \
                    or not 0.1 <= length_scale <= texts.MAX_LENGTH_SCALE:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"'length_scale' must be a number from 0.1 to {texts.MAX_LENGTH_SCALE:g}")
            length_scale = float(length_scale)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(HTTPStatus.BAD_REQUEST, "'stream' must be true or false")
        scale = voice.pace(length_scale)
        pieces = texts.split(text, self.piece_limit(scale))
        if not pieces:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY,
                               "'text' has nothing to speak (no letters or digits)")
        return TtsRequest(voice, text, pieces, speaker_id, length_scale, stream, self.phoneme_limit(scale), scale)

    def audio_limit(self) -> int:
        """The phonemes, at the voice's normal pace, that one request's audio may hold: ``PHONEMES_PER_CHAR``
        times ``max_text_chars``, as much as ``max_text_chars`` characters of ordinary English give. It
        bounds the time a request holds its place (its audio is sent at least at the pace it plays) and
        the memory of a whole answer, whatever the text's digits, script or ``length_scale``."""
        return int(texts.PHONEMES_PER_CHAR * self.config.max_text_chars)

    async def _check_audio(self, request: TtsRequest) -> None:
        """413 for a text whose audio would be over ``audio_limit``: its phonemes (Piper's own, counted in
        the request's synthesis thread, not on the event loop, once it holds a place) times its
        ``length_scale`` where that is over 1."""
        loop = asyncio.get_running_loop()
        try:
            phonemes = await loop.run_in_executor(self.executor, request.voice.count_phonemes, request.text)
        except Exception as exc:  # noqa: BLE001 - the phonemizer failing: as a synthesis would, without its message
            raise synthesis_failed(request.voice, exc) from exc
        scale = max(1.0, request.scale)
        limit = self.audio_limit()
        if phonemes * scale > limit:
            slow = f" at length_scale {scale:g}" if scale > 1 else ""
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"'text' gives {phonemes} phonemes{slow}: over the audio of {limit} phonemes at the "
                               f"normal pace that one request may hold (max_text_chars x {texts.PHONEMES_PER_CHAR:g}); "
                               "send it in parts, or at a lower length_scale")

    def piece_limit(self, length_scale: float) -> int:
        """The ``text.weight`` a piece may have: ``sentence_max_chars`` at a ``length_scale`` of 1 or less,
        and less in proportion above it; at least one wide character. It bounds the time a piece holds
        its voice; ``phoneme_limit`` bounds its audio."""
        return max(texts.WIDE_WEIGHT, int(self.config.sentence_max_chars / max(1.0, length_scale)))

    def phoneme_limit(self, length_scale: float) -> int:
        """The phonemes one model run may hold: ``PHONEMES_PER_CHAR`` times ``sentence_max_chars`` at a
        ``length_scale`` of 1 or less, and less in proportion above it (at least ``MIN_RUN_PHONEMES``), so
        that no run holds more audio, and so more memory, than that many phonemes at the voice's normal
        pace, whatever the text's script or digits."""
        return max(texts.MIN_RUN_PHONEMES,
                   int(texts.PHONEMES_PER_CHAR * self.config.sentence_max_chars / max(1.0, length_scale)))

    async def _pieces(self, request: TtsRequest):
        """Each piece's audio as it is synthesised, in order (one piece in flight per request, so
        other requests to the voice take turns between pieces)."""
        loop = asyncio.get_running_loop()
        for done, piece in enumerate(request.pieces):
            if request.client_gone():
                raise ClientGone()
            audio = await loop.run_in_executor(self.executor, request.voice.synthesize, piece,
                                               request.speaker_id, request.length_scale, request.max_phonemes)
            request.synthesised = done + 1
            yield audio

    def _done(self, request: TtsRequest, started: float, seconds: float, first: float | None = None) -> dict:
        """The answer's headers; the request is counted and logged once its last byte is taken (``_sent``)."""
        elapsed = time.perf_counter() - started
        voice = request.voice
        request.finished = (elapsed, seconds, first)
        return {"X-Voice": voice.name, "X-Provider": voice.provider, "X-Synthesis-Ms": f"{elapsed * 1000:.1f}",
                "X-Audio-Seconds": f"{seconds:.3f}"}

    def _sent(self, request: TtsRequest) -> None:
        """The answered request counted and logged; one without audio (a text that speaks nothing, such
        as "𝟙") has no real-time factor: ``rtf=-``, and it stays out of ``piper_tts_realtime_factor``."""
        elapsed, seconds, first = request.finished
        rtf = elapsed / seconds if seconds > 0 else None
        voice = request.voice
        self.metrics.record(voice.name, HTTPStatus.OK, elapsed, rtf)
        LOG.info("tts voice=%s chars=%d pieces=%d audio_s=%.3f ms=%.1f rtf=%s provider=%s%s", voice.name,
                 len(request.text), len(request.pieces), seconds, elapsed * 1000,
                 "-" if rtf is None else f"{rtf:.4f}", voice.provider,
                 "" if first is None else f" stream first_audio_ms={first * 1000:.1f}")

    async def _whole(self, request: TtsRequest, out: Writer):
        started = time.perf_counter()
        try:
            pcm = [piece.pcm async for piece in self._pieces(request)]
        except ClientGone:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed synthesis must answer, and be logged
            raise synthesis_failed(request.voice, exc) from exc
        data = b"".join(pcm)
        seconds = len(data) / (2 * request.voice.sample_rate)
        headers = {"Content-Type": "audio/wav", "Content-Length": 44 + len(data),
                   **self._done(request, started, seconds)}
        await out.start(HTTPStatus.OK, [(k.lower().encode(), str(v).encode()) for k, v in headers.items()])
        await out.body(wav_header(request.voice.sample_rate, len(data)) + data, more=False)
        self._sent(request)

    async def _stream(self, request: TtsRequest, out: Writer):
        started = time.perf_counter()
        voice = request.voice
        pieces = self._pieces(request)
        try:
            first = await pieces.__anext__()  # a failure before any audio still gets its status
        except ClientGone:
            raise
        except Exception as exc:  # noqa: BLE001
            raise synthesis_failed(voice, exc) from exc
        first_at = time.perf_counter() - started
        self.metrics.first_audio.labels(voice=voice.name).observe(first_at)
        head = [(b"content-type", b"audio/wav"), (b"x-voice", voice.name.encode()),
                (b"x-provider", voice.provider.encode()), (b"x-stream", b"1")]
        await out.start(HTTPStatus.OK, head)
        await out.body(wav_header(voice.sample_rate, None) + first.pcm, more=True)
        seconds = first.seconds
        try:
            async for piece in pieces:
                seconds += piece.seconds
                await out.body(piece.pcm, more=True)
        except (ClientGone, WriteTimeout):
            raise
        except Exception as exc:
            # the status is sent: ending the connection without the last chunk tells the client
            LOG.error("synthesis failed mid-stream (voice %s); the stream is cut: %s", voice.name, trace(exc))
            self.metrics.record(voice.name, HTTPStatus.INTERNAL_SERVER_ERROR)
            raise StreamCut() from exc
        self._done(request, started, seconds, first_at)
        await out.body(b"", more=False)
        self._sent(request)

