"""The server's settings: defaults, a TOML file (``--config``), then command-line flags.

The file is flat ``key = value`` lines plus a ``[voices]`` table (name = "/path/model.onnx"); every key
is a field of ``ServerConfig``. An unknown key, a wrong type or an out-of-range value is an error that
names the file and the key."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from piper_gpu_server.stable import MODES, parse_buckets

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04)
    import tomli as tomllib


class ConfigError(ValueError):
    pass


#: where a shape-stable voice's encoder may run (ServerConfig.encoder_provider)
ENCODER_PROVIDERS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ServerConfig:
    """The server's settings. The deploy passes most of them on under their own names, reading this
    class from its source (piper_gpu/server_fields.py: nothing imported), so the ``#:`` comments are
    their meanings in both tables of docs/settings.md, and a default the deploy passes on stays a literal."""

    host: str = "127.0.0.1"
    port: int = 5005
    #: voice name -> model path (the .onnx.json beside it); the first is the default voice
    voices: dict[str, str] = field(default_factory=dict)
    #: ask for the CUDA execution provider (after the driver probe)
    use_gpu: bool = True
    #: the CUDA provider's options, "key=value,key=value" (ONNX Runtime's names), over the defaults
    #: cudnn_conv_algo_search=HEURISTIC (see voices.CUDA_OPTIONS)
    cuda_options: str = ""
    #: a warm-up synthesis per voice at start (the first request otherwise pays for CUDA's initialisation)
    warmup: bool = True
    #: shape-stable synthesis (stable.py): each voice split at the flow's input and run through one
    #: session per bucket, so that no session ever sees a second input shape (on CUDA since onnxruntime
    #: 1.20 a new shape rebuilds every convolution's cuDNN plan). auto: on for a voice whose session
    #: runs on CUDA; on: on any provider (to test and measure it on the CPU); off: the whole model
    shape_stable: str = "auto"
    #: its buckets, comma-separated: phoneme ids per piece (a piece longer than the largest runs on the
    #: whole model, counted in /health and /metrics as a fallback); auto: nine, the largest the ids of the
    #: longest model run sentence_max_chars allows, so that every bucket can be reached (stable.auto_buckets)
    phoneme_buckets: str = "auto"
    #: frames of audio per piece, comma-separated (a piece longer than the largest runs the encoder's output
    #: through a decoder session of any shape, counted likewise); auto: nine, the largest that run's ids times
    #: the frames per id of the voice's probe
    frame_buckets: str = "auto"
    #: where a shape-stable voice's encoder (phoneme ids -> the flow's input) runs: cpu (one session with
    #: no buckets: the CPU pays nothing for a new shape, and it saves a set of CUDA sessions), cuda (one
    #: CUDA session per phoneme bucket), auto (decided by the GPU figures once measured; until then: cpu)
    encoder_provider: str = "auto"
    log_file: str | None = None
    #: file holding the key POST /tts requires; none: open
    api_key_file: str | None = None
    #: longest text, in characters (code points, each counting 1 whatever its script; 413 beyond); a
    #: request's audio is bounded too: at most 1.5 x this many phonemes at the normal pace
    #: (text.PHONEMES_PER_CHAR; its length_scale above 1 counts), 413 beyond
    max_text_chars: int = 2000
    #: POST /tts requests synthesising or waiting at once; more get 503 + Retry-After
    max_pending: int = 8
    #: pieces one voice synthesises at once (ONNX Runtime's Run is thread-safe); 0: chosen by where the
    #: voice runs, 8 on CUDA and 4 on the CPU (voices.SYNTHESES, from docs/results.md's measurements)
    syntheses_per_voice: int = 0
    #: ONNX Runtime intra-op threads of a voice's main session; 0: ONNX Runtime's default (one per
    #: physical core)
    intra_op_threads: int = 0
    #: on the CPU, a second session per voice for pieces that start while others run, with fewer
    #: threads, so that concurrent pieces share the cores (docs/server.md: "Long texts and concurrency")
    concurrent_session: bool = True
    #: its intra-op threads; 0: the usable CPUs divided by syntheses_per_voice, at least 1
    concurrent_intra_op_threads: int = 0
    #: ONNX Runtime's CPU memory arena: buffers kept between pieces (faster CPU synthesis); off, they
    #: go back to the system after every piece
    cpu_memory_arena: bool = True
    #: seconds a voice stays idle before its arena and the freed heap go back to the system; 0: never
    memory_release_idle: float = 30.0
    #: heaviest piece of text synthesised in one go, as a weight, not a count of characters: a wide
    #: (CJK, fullwidth) character weighs 5, any other 1 (text.weight); above a length_scale of 1 the
    #: bound is this divided by it. A heavier sentence is cut at its last clause break, else its last
    #: space, else at the bound (bounds the time a voice is held); each model run of a piece holds at
    #: most 1.5 x this many phonemes at the normal pace (bounds its memory)
    sentence_max_chars: int = 200
    #: seconds a request body may stall between two of its parts (then 408 and the connection closes).
    #: The body only: stalled request headers are keep_alive_timeout's, and a client waiting for its
    #: answer has no read deadline
    read_timeout: float = 10.0
    #: seconds the whole request body may take, however it trickles (then 408); it is read before the
    #: request takes one of the max_pending places, so a slow sender holds none
    body_timeout: float = 30.0
    #: seconds an answer's writes may wait for the client: each 64 KiB chunk at most this long, and
    #: all together at most this plus the seconds of audio sent. A client that reads slower is
    #: dropped, and its synthesis stops
    write_timeout: float = 10.0
    #: seconds a connection may go without a complete request head, from its opening and from the end
    #: of each answer (Hypercorn's idle timer); then it is closed without an answer. It ends an idle
    #: kept-alive connection and one whose request headers stall or trickle
    keep_alive_timeout: float = 5.0
    #: open connections at most; more are closed at once
    max_connections: int = 256
    #: seconds SIGTERM waits for requests in flight before the process exits
    graceful_timeout: float = 60.0
    max_body_bytes: int = 1 << 20

    @property
    def buckets(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The phoneme and frame buckets as sorted tuples."""
        return parse_buckets(self.phoneme_buckets, "phoneme_buckets"), parse_buckets(self.frame_buckets, "frame_buckets")

    def validate(self, where: str = "settings") -> "ServerConfig":
        problems = []
        if not self.voices:
            problems.append("voices: no voice (give [voices] name = \"/path/model.onnx\" or --voice NAME=PATH)")
        if not 0 < self.port < 65536:
            problems.append(f"port: {self.port} is not a TCP port")
        for name in ("max_text_chars", "max_pending", "sentence_max_chars",
                     "max_connections", "max_body_bytes"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: {getattr(self, name)} must be at least 1")
        if self.sentence_max_chars < 20:
            problems.append(f"sentence_max_chars: {self.sentence_max_chars} is under 20")
        for name in (f.name for f in dataclasses.fields(self) if f.type == "float"):
            if not math.isfinite(getattr(self, name)):  # nan passes every "<= 0" check; inf is no bound
                problems.append(f"{name}: {getattr(self, name)} is not a finite number of seconds")
        for name in ("read_timeout", "body_timeout", "write_timeout", "keep_alive_timeout", "graceful_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: {getattr(self, name)} must be over 0 seconds")
        if self.memory_release_idle < 0:
            problems.append(f"memory_release_idle: {self.memory_release_idle} must be 0 (never) or more seconds")
        try:
            cuda_options(self.cuda_options)
        except ValueError as exc:
            problems.append(f"cuda_options: {exc}")
        if self.shape_stable not in MODES:
            problems.append(f"shape_stable: {self.shape_stable!r} is not one of {', '.join(MODES)}")
        if self.encoder_provider not in ENCODER_PROVIDERS:
            problems.append(f"encoder_provider: {self.encoder_provider!r} is not one of {', '.join(ENCODER_PROVIDERS)}")
        for name in ("phoneme_buckets", "frame_buckets"):
            try:
                parse_buckets(getattr(self, name), name)
            except ValueError as exc:
                problems.append(str(exc))
        for name in ("syntheses_per_voice", "intra_op_threads", "concurrent_intra_op_threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: {getattr(self, name)} must be 0 (automatic) or more")
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
        return self


def cuda_options(text: str) -> dict[str, str]:
    """ "key=value,key=value" as a dict (empty text: none)."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)}
_TYPES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "str | None": (str,)}


def from_mapping(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The fields in ``data`` (a parsed TOML file), type-checked; ``where`` names the file in errors."""
    out = {}
    for key, value in data.items():
        f = FIELDS.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(FIELDS))})")
        if key == "voices":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigError(f'{where}: [voices] must map names to model paths (name = "/path/model.onnx")')
            out[key] = dict(value)
            continue
        kinds = _TYPES[str(f.type)]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ConfigError(f"{where}: {key} = {value!r} is not a {f.type}")
        out[key] = float(value) if f.type == "float" else value
    return out


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return from_mapping(data, path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m piper_gpu_server",
                                description="Piper voices over HTTP (POST /tts -> audio/wav), GPU-aware")
    p.add_argument("--config", metavar="FILE", help="TOML file with the settings (flags override it)")
    p.add_argument("--voice", action="append", metavar="NAME=MODEL.onnx", help="voice to load (repeatable)")
    p.add_argument("--cpu", dest="use_gpu", action="store_const", const=False, help="do not ask for the CUDA provider")
    p.add_argument("--no-warmup", dest="warmup", action="store_const", const=False)
    for name, f in FIELDS.items():
        if name in ("voices", "use_gpu", "warmup"):
            continue
        if str(f.type) == "bool":  # --cpu-memory-arena / --no-cpu-memory-arena
            p.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                           default=None)
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, metavar=name.upper())
    return p


def config_file(argv: list[str] | None = None) -> str | None:
    """The --config FILE given in ``argv``, if any."""
    return parser().parse_known_args(argv)[0].config


def load(argv: list[str] | None = None) -> ServerConfig:
    """Defaults < --config FILE < flags."""
    p = parser()
    args = p.parse_args(argv)
    values: dict[str, Any] = load_file(args.config) if args.config else {}
    for name in FIELDS:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    if args.voice:
        voices = {}
        for item in args.voice:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                p.error(f"--voice {item!r}: use NAME=/path/model.onnx")
            voices[name] = path
        values["voices"] = voices
    return ServerConfig(**values).validate(args.config or "command line")
