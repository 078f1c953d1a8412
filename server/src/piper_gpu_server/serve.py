"""Start-up (voices loaded, warmed and logged), then Hypercorn serving the app until SIGTERM/SIGINT,
which stops accepting, lets requests in flight finish (up to ``graceful_timeout``) and exits 0.

Hypercorn (asyncio, h11) brings what the hand-written server lacked: a read timeout that drops a
client stalling mid-request, an idle timeout for kept-alive connections, chunked request bodies,
and graceful shutdown. Its one missing limit, on open connections, is a listening socket that closes
connections over ``max_connections`` as it accepts them (``LimitedListener``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import select
import signal
import socket
import struct
import sys
import time

from piper_gpu_server import installed, version
from piper_gpu_server.app import SEND_BUFFER
from piper_gpu_server.config import ConfigError, ServerConfig, config_file, cuda_options, load
from piper_gpu_server.gpu import Gpu, cuda_driver_problem
from piper_gpu_server.text import PHONEMES_PER_CHAR
from piper_gpu_server.voices import Voice, VoiceLoadError

LOG = logging.getLogger("piper_gpu_server")


class CountedSocket(socket.socket):
    """An accepted connection that gives its place back when it closes."""

    listener: "LimitedListener"
    peer: tuple = ()
    _counted = False

    def close(self):
        if self._counted:
            self._counted = False
            self.listener.open -= 1
            if self.listener.conns.get(self.peer) is self:
                del self.listener.conns[self.peer]
        super().close()


class LimitedListener(socket.socket):
    """A listening socket whose accept() closes connections over ``limit`` at once. Each accepted
    connection's kernel send buffer is fixed at ``SEND_BUFFER`` (Linux doubles it), which bounds the
    memory a client that stops reading holds, and can be dropped at once by its peer address
    (``abort``)."""

    SEND_BUFFER = SEND_BUFFER  # app.Writer counts on it for what an answer may run ahead of its client
    limit = 256
    open = 0
    refused = 0
    conns: dict  # peer (host, port) -> its connection (listen() gives each listener its own)
    _last_warning = 0.0

    def accept(self):
        fd, addr = self._accept()
        conn = CountedSocket(self.family, self.type, self.proto, fileno=fd)
        if self.open >= self.limit:
            conn.close()
            self.refused += 1
            if time.monotonic() - self._last_warning > 10:
                self._last_warning = time.monotonic()
                LOG.warning("%d open connections (max_connections): closing new ones (%d so far)",
                            self.open, self.refused)
            raise ConnectionAbortedError("over max_connections")  # asyncio: nothing accepted this round
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.SEND_BUFFER)
        conn.listener = self
        conn.peer = tuple(addr[:2])
        conn._counted = True
        self.conns[conn.peer] = conn
        self.open += 1
        return conn, addr

    def abort(self, peer) -> bool:
        """Drops the connection from ``peer`` (an ASGI scope's "client") now: what is unsent is discarded
        and the client gets a reset. asyncio's transport then fails its next write and closes (a plain
        close would wait for the client to read what is buffered). False: no such connection."""
        conn = self.conns.get(tuple(peer or ()))
        if conn is None:
            return False
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
        return True

    def hang_up_probe(self, peer):
        """A callable telling whether the client at ``peer`` (an ASGI scope's "client") has hung up
        (``hung_up``), bound to its connection now, while the request holds it. Hypercorn tells the
        application of a hang-up only once it reads the end of the connection, and it stops reading a
        connection whose client sent bytes past its request (the start of a next one, or a stray CRLF)
        until the answer is complete: then only this sees it. No such connection: never."""
        conn = self.conns.get(tuple(peer or ()))
        return (lambda: False) if conn is None else functools.partial(hung_up, conn)


#: what poll() says of a connection whose client has closed it, or shut down its sending side (POLLRDHUP,
#: Linux), or reset it: set even while bytes it sent before are still unread
HUNG_UP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


def hung_up(conn: socket.socket) -> bool:
    """Whether the client of ``conn`` has hung up, asked of the socket without reading it; a socket
    already closed (asyncio closes a connection it has lost, after a write failed) counts as hung up."""
    if conn.fileno() == -1:
        return True
    poller = select.poll()
    try:
        poller.register(conn, HUNG_UP)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile (ValueError: no file descriptor any more)
        return True


def listen(host: str, port: int, limit: int, backlog: int = 128) -> LimitedListener:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # "::" is every address of both families, as a server that listened there (carried over) took it; Python
    # would make it IPv6 only (IPV6_V6ONLY)
    dual = host == "::" and socket.has_dualstack_ipv6()
    plain = socket.create_server((host, port), family=family, backlog=backlog, dualstack_ipv6=dual)
    sock = LimitedListener(plain.family, plain.type, plain.proto, fileno=plain.detach())
    sock.limit = limit
    sock.conns = {}
    sock.setblocking(False)
    return sock


class _ConnectionClosed(Exception):
    """Raised in a closed connection's wait for its next pipelined request (``end_paused_connections``)."""


def end_paused_connections() -> bool:
    """Hypercorn 0.17-0.18's HTTP/1.1 protocol never ends a connection whose answer was cut (the app
    dropped a client that did not read it) while the client had already sent its next request: h11
    says PAUSED until the answer is complete, ``H11Protocol._handle_events`` waits on ``can_read``, and
    after ``_maybe_recycle`` closes the connection it waits again, for ever. The socket is closed, but
    the connection's task and its read-ahead stay until the process ends, and a stop waits
    ``graceful_timeout`` for it (tests/server/test_server_hostile.py,
    test_a_client_that_never_reads_its_get_answers_is_dropped). The same wait stays where a write fails
    while the request's answer is under way (the client reset the connection after sending bytes past
    its request): Hypercorn closes the stream at once and never recycles (tests/server/test_server_http.py,
    test_a_reset_of_a_connection_hypercorn_has_paused_leaves_nothing_behind). This makes that wait end
    once the connection is closed, either way. Applied where Hypercorn's protocol has the parts it
    wraps; False where not."""
    try:
        import h11
        from hypercorn.events import Closed
        from hypercorn.protocol.h11 import H11Protocol
    except ImportError:
        return False
    if not all(hasattr(H11Protocol, name) for name in ("__init__", "handle", "_handle_events", "_maybe_recycle")):
        return False
    if getattr(H11Protocol, "_piper_ends_paused", False):
        return True

    class ClosableEvent:
        """``can_read``, whose wait fails once its connection is closed."""

        def __init__(self, event, protocol):
            self._event, self._protocol = event, protocol

        async def clear(self):
            await self._event.clear()

        async def set(self):
            await self._event.set()

        def is_set(self):
            return self._event.is_set()

        async def wait(self):
            if self._protocol._piper_closed:
                raise _ConnectionClosed()
            await self._event.wait()
            if self._protocol._piper_closed:
                raise _ConnectionClosed()

    init, handle, handle_events, maybe_recycle = (H11Protocol.__init__, H11Protocol.handle, H11Protocol._handle_events,
                                                  H11Protocol._maybe_recycle)

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._piper_closed = False
        self.can_read = ClosableEvent(self.can_read, self)

    async def _handle(self, event):
        if isinstance(event, Closed):  # the connection is over: its end read, a write failed, or idle
            self._piper_closed = True
            await self.can_read.set()
        await handle(self, event)

    async def _handle_events(self):
        try:
            await handle_events(self)
        except _ConnectionClosed:
            pass

    async def _maybe_recycle(self):
        # the stream closed first (Hypercorn's own first step, which may wait, then a no-op there): then
        # closed unless both sides are ready for the next request, as Hypercorn decides right after
        await self._close_stream()
        recycle = (not self.context.terminated.is_set() and self.connection.our_state is h11.DONE
                   and self.connection.their_state is h11.DONE)
        if not recycle:
            self._piper_closed = True
        await maybe_recycle(self)

    H11Protocol.__init__, H11Protocol.handle, H11Protocol._handle_events, H11Protocol._maybe_recycle = \
        __init__, _handle, _handle_events, _maybe_recycle
    H11Protocol._piper_ends_paused = True
    return True


def hypercorn_config(config: ServerConfig, sock: socket.socket):
    from hypercorn.config import Config, Sockets

    if not end_paused_connections():
        LOG.warning("this Hypercorn's HTTP/1.1 protocol is not the one end_paused_connections knows: a client "
                    "that pipelines requests and reads none of the answers may leave its connection's task behind")

    class Bound(Config):
        def create_sockets(self):  # serve on the limited socket made above
            return Sockets([], [sock], [])

    hc = Bound()
    hc.bind = [f"{config.host}:{config.port}"]
    # not Hypercorn's read_timeout: it also ends the reading of a connection whose client is quietly
    # waiting for a slow answer, and tells the application the client is gone (hypercorn 0.18
    # asyncio/tcp_server.py _read_data). The application times out a stalled body itself (408), and
    # Hypercorn's idle timer (keep_alive_timeout) ends a connection whose request headers stop coming.
    hc.read_timeout = None
    hc.keep_alive_timeout = config.keep_alive_timeout
    hc.graceful_timeout = config.graceful_timeout
    hc.accesslog = None  # one performance line per request is logged instead, never the text
    hc.errorlog = LOG
    hc.include_server_header = False
    hc.h11_max_incomplete_size = 16 * 1024
    hc.alpn_protocols = ["http/1.1"]
    return hc


class NoRequestText(logging.Filter):
    """Keeps request text out of the log (on every handler), whatever the text holds. Piper's records
    quote it: "Missing phoneme from id map: X" for each character it cannot map (one line per
    character), "Skipping unusable text: ...", and at DEBUG the text itself. Theirs below ERROR are
    dropped; the others keep their template, not its arguments."""

    LIBRARIES = ("piper",)  # logger names: piper.phoneme_ids, piper.voice, ... (not piper_gpu_server)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in self.LIBRARIES:
            if record.levelno < logging.ERROR:
                return False
            record.msg, record.args = f"{record.msg} (arguments withheld: they may quote the text)", None
            record.exc_info = record.exc_text = None
        return True


def setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.addFilter(NoRequestText())
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.addLevelName(logging.WARNING, "WARN")


def load_voices(config: ServerConfig, gpu: Gpu | None = None) -> dict[str, Voice]:
    """Every voice loaded (the CUDA provider asked for only when the driver answers), logged, warmed; the
    GPU memory each took, where NVML shows this process's (``gpu``)."""
    driver_problem = cuda_driver_problem() if config.use_gpu else None
    voices = {}
    for name, path in config.voices.items():
        started = time.perf_counter()
        gpu_before = gpu.process_mib() if gpu is not None else None
        phoneme_buckets, frame_buckets = config.buckets
        try:
            voice = Voice(name, path, use_gpu=config.use_gpu, driver_problem=driver_problem,
                          syntheses=config.syntheses_per_voice, intra_op_threads=config.intra_op_threads,
                          cpu_memory_arena=config.cpu_memory_arena, cuda_options=cuda_options(config.cuda_options),
                          concurrent_intra_op_threads=(config.concurrent_intra_op_threads
                                                       if config.concurrent_session else None),
                          shape_stable=config.shape_stable, phoneme_buckets=phoneme_buckets,
                          frame_buckets=frame_buckets, encoder_provider=config.encoder_provider,
                          max_run_phonemes=int(PHONEMES_PER_CHAR * config.sentence_max_chars))
        except VoiceLoadError as exc:
            exc.voice = name
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a model that loads but is not Piper's raises
            raise VoiceLoadError(path, f"it loads but cannot be made a voice ({type(exc).__name__}: {exc})",
                                 voice=name) from exc
        LOG.info("voice %s: active provider %s (session providers %s), loaded in %.0f ms%s",
                 name, voice.provider, voice.session_providers, (time.perf_counter() - started) * 1000,
                 "" if voice.concurrent is None else
                 f"; a second CPU session with {voice.concurrent_intra_op_threads} intra-op thread(s) "
                 "for pieces that start while others run")
        if voice.cpu_reason:
            LOG.warning("voice %s: GPU wanted but the session runs on %s: %s", name, voice.provider, voice.cpu_reason)
        if voice.stable is not None:
            used = voice.stable
            LOG.info("voice %s: shape-stable synthesis (shape_stable=%s): split at %s (encoder %d nodes, decoder %d); "
                     "encoder on %s (%s), phoneme buckets %s, frame buckets %s", name, config.shape_stable,
                     used.cut.describe(), *used.cut.nodes, voice.encoder_placement, config.encoder_provider,
                     ",".join(map(str, used.phoneme_buckets)) or "none", ",".join(map(str, used.frame_buckets)))
        else:
            LOG.info("voice %s: runs whole (shape_stable=%s): %s", name, config.shape_stable, voice.stable_reason)
        if config.warmup:
            started = time.perf_counter()
            try:
                buckets = voice.warm()
                voice.synthesize("Warm up.")
            except Exception as exc:  # noqa: BLE001 - a model that loads but cannot synthesise
                raise VoiceLoadError(path, f"its warm-up synthesis failed ({type(exc).__name__}: {exc})",
                                     voice=name) from exc
            LOG.info("voice %s: warm-up %.0f ms%s", name, (time.perf_counter() - started) * 1000,
                     f" (every bucket session once: {buckets:.0f} ms)" if buckets is not None else
                     " (bucket sessions not warmed: on the CPU a new shape costs nothing)" if voice.stable else "")
        gpu_after = gpu.process_mib() if gpu is not None and voice.on_gpu else None
        if gpu_after is not None:  # not listed before the first voice: no CUDA context yet
            voice.gpu_memory_mib = gpu_after - (gpu_before or 0)
        res = voice.resources()
        LOG.info("voice %s: %d sessions (%s), %d intra-op threads%s", name, res["sessions"],
                 ", ".join(f"{n} on {p}" for p, n in res["providers"].items()), res["intra_op_threads"],
                 "" if not voice.on_gpu else
                 ", GPU memory unknown (NVML lists no figure for this process)" if voice.gpu_memory_mib is None
                 else f", GPU memory {voice.gpu_memory_mib} MiB" + (" with the CUDA context" if not voices else ""))
        if voice.stable is not None and voice.encoder_placement == "cpu" and config.phoneme_buckets != "auto":
            LOG.warning("voice %s: phoneme_buckets %s unused: its encoder runs on the CPU without buckets "
                        "(encoder_provider = %s); encoder_provider = \"cuda\" uses them", name, config.phoneme_buckets,
                        config.encoder_provider)
        voices[name] = voice
    return voices


def read_api_key(path: str | None) -> str | None:
    """The key in ``path`` (None: no ``api_key_file``, the server is open). A file that is set but empty
    fails closed: ValueError, and the server does not start (an empty key must never mean "no key")."""
    if not path:
        return None
    with open(path, encoding="utf-8") as fh:
        key = fh.read().strip()
    if not key:
        raise ValueError(f"the API key file {path} is empty: POST /tts would need no key. Write the key into it "
                         "(python3 -c 'import secrets; print(secrets.token_urlsafe(24))'), or remove api_key_file "
                         "from the settings to run without one")
    return key


async def serve(app, config: ServerConfig, sock: socket.socket) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if not stop.is_set():
            LOG.info("%s: no new connections; finishing %d request(s) in progress (at most %.0f s), then exiting",
                     signame, app.pending, config.graceful_timeout)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    await hypercorn_serve(app, hypercorn_config(config, sock), shutdown_trigger=stop.wait)
    LOG.info("stopped")


#: The environment variables that identify a start: the token piper-tts-ctl gives the process it starts,
#: else systemd's InvocationID of the unit's run (systemd sets INVOCATION_ID for every service process).
START_TOKEN_VARIABLES = ("PIPER_TTS_START_TOKEN", "INVOCATION_ID")


def start_token() -> str | None:
    """What /health reports beside the pid, so that whoever started this process knows it answers the port."""
    return next((os.environ[v] for v in START_TOKEN_VARIABLES if os.environ.get(v)), None)


def notify_ready() -> None:
    """Tell systemd the service is up (Type=notify: `systemctl start` returns now, or fails if the
    process exits before): sd_notify's READY=1 on $NOTIFY_SOCKET, when there is one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path  # "@...": an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(f"READY=1\nMAINPID={os.getpid()}".encode(), address)
    except OSError as exc:
        LOG.warning("cannot tell systemd the service is ready (NOTIFY_SOCKET=%s): %s", path, exc)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"piper_gpu_server: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_file)
    import onnxruntime

    from piper_gpu_server.app import App

    available = onnxruntime.get_available_providers()
    gpu = Gpu()
    config_path = config_file(args)
    info = {"server": version(), "pid": os.getpid(), "start_token": start_token(), "gpu": gpu.name,
            "onnxruntime": onnxruntime.__version__, "piper_tts": installed("piper-tts"), "available_providers": available}
    LOG.info("start: pid=%d server=%s onnxruntime=%s piper-tts=%s available_providers=%s config=%s",
             os.getpid(), info["server"], info["onnxruntime"], info["piper_tts"], available, config_path or "(flags)")
    LOG.info("GPU detection: %s (%s); use_gpu=%s", gpu.name or "none", gpu.how, config.use_gpu)
    try:
        api_key = read_api_key(config.api_key_file)
    except (OSError, UnicodeDecodeError) as exc:
        LOG.error("cannot read the API key file %s (%s: %s); the server does not start without its key",
                  config.api_key_file, type(exc).__name__, exc)
        return 2
    except ValueError as exc:
        LOG.error("%s", exc)
        return 2
    for name, path in config.voices.items():
        for f in (path, path + ".json"):
            if not os.path.isfile(f):
                LOG.error("voice %s: file %s not found", name, f)
                return 2
    try:
        voices = load_voices(config, gpu)
    except VoiceLoadError as exc:
        LOG.error("voice %s: cannot load %s: %s; the server does not start (replace the file, or re-run the deploy "
                  "to fetch it again)", exc.voice, exc.path, exc.reason)
        return 2
    info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        sock = listen(config.host, config.port, config.max_connections)
    except OSError as exc:
        LOG.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 2
    notify_ready()
    app = App(config, voices, info=info, gpu_sample=gpu.sample, api_key=api_key, config_file=config_path,
              abort=lambda scope: sock.abort(scope.get("client")),
              hang_up_probe=lambda scope: sock.hang_up_probe(scope.get("client")), connections=lambda: sock.open)
    LOG.info("listening on http://%s:%d (POST /tts, GET /health, GET /voices, GET /metrics); API key %s; "
             "max %d pending, synthes(es) at once per voice %s, %d connections; timeouts: read %g s, body %g s, write %g s",
             config.host, config.port, "required" if api_key else "not set", config.max_pending,
             {name: v.syntheses for name, v in voices.items()}, config.max_connections, config.read_timeout,
             config.body_timeout, config.write_timeout)
    asyncio.run(serve(app, config, sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
