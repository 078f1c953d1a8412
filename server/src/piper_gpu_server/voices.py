"""Voices: ONNX Runtime sessions for a voice, on the CUDA provider when it is wanted and works, and
synthesis of bounded pieces of text, several at once per voice.

ONNX Runtime's ``InferenceSession.run`` may be called from several threads at once; Piper's espeak-ng
phonemizer keeps global state (its voice), so phonemizing is serialised process-wide while the
model runs concurrently, at most ``syntheses_per_voice`` pieces per voice.

On the CPU a voice may have two sessions of the same model: a piece that starts while no other
piece of the voice is running gets the one with all the intra-op threads (lowest latency alone);
a piece that starts while others run gets the one with few threads, so that concurrent pieces
share the cores instead of spinning against each other (more pieces per second under load).
``python -m piper_gpu_server.bench`` measures both; docs/server.md "Long texts and concurrency"."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import struct
import threading
import time
from dataclasses import dataclass

from piper_gpu_server import stable
from piper_gpu_server import text as texts

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
#: the CUDA provider's options unless the config's cuda_options says otherwise: cuDNN picks each
#: convolution's algorithm by heuristics, as Piper itself asks (docs/results.md "On a GPU" measures the others)
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "device_id": "0"}
#: pieces a voice synthesises at once where the config says 0, by where its session runs. On the CPU, 4
#: with a second session passed Piper's own server under load on 2 cores; on CUDA (an H200), 8 gave 9.5
#: requests/s at concurrency 8 against 6.7 with 4, and alike at concurrency 1 and 4 (docs/results.md "On a GPU")
SYNTHESES = {CPU_PROVIDER: 4, CUDA_PROVIDER: 8}
#: the inputs of a Piper voice's model (piper's PiperVoice.phoneme_ids_to_audio feeds them)
PIPER_INPUTS = frozenset({"input", "input_lengths", "scales"})
SAMPLE_WIDTH = 2  # Piper's audio: 16-bit mono
CHANNELS = 1
#: espeak-ng's state (the voice set last) is process-wide
_PHONEMIZE_LOCK = threading.Lock()


def _malloc_trim():
    """glibc's malloc_trim(0), or a no-op where there is none."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


#: hands freed heap back to the system: after each piece without the CPU arena, and when a voice has
#: been idle ``memory_release_idle`` seconds with it (tests/server/test_server_hostile.py holds RSS
#: after 2,000 characters to 1.5x the warm process)
release_memory = _malloc_trim()
#: ONNX Runtime run option: after this run, free the listed arenas' regions no tensor uses
#: ("cpu:0;gpu:0"; onnxruntime_run_options_config_keys.h, kOrtRunOptionsConfigEnableMemoryArenaShrinkage)
_SHRINK_ARENAS = "memory.enable_memory_arena_shrinkage"


def cuda_provider(options: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The CUDA provider as ONNX Runtime takes it: CUDA_OPTIONS, then ``options`` (the config's cuda_options)."""
    return CUDA_PROVIDER, {**CUDA_OPTIONS, **(options or {})}


def rss_mib() -> int:
    """This process's resident memory in MiB (0 where /proc has no answer)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return 0


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: taskset, a cgroup cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def concurrent_threads(syntheses: int, cpus: int | None = None) -> int:
    """Intra-op threads for a piece that runs beside others: the usable CPUs shared among the
    voice's ``syntheses`` pieces, at least one."""
    return max(1, (cpus or usable_cpus()) // syntheses)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM WAV header; ``data_bytes`` None for a stream of unknown length (sizes 0xFFFFFFFF,
    which players read as "until the end")."""
    data = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, CHANNELS, sample_rate,
                       sample_rate * CHANNELS * SAMPLE_WIDTH, CHANNELS * SAMPLE_WIDTH, 8 * SAMPLE_WIDTH,
                       b"data", data)


def gpu_reason(provider: str, available: list[str], driver_problem: str | None, ep_error: str = "") -> str:
    """Why a voice that wanted the GPU runs on ``provider`` (``ep_error``: what ONNX Runtime printed when
    the CUDA provider failed and it retried on the CPU)."""
    if driver_problem is not None:
        return driver_problem
    if CUDA_PROVIDER not in available:
        return ("CUDAExecutionProvider is not available: the CPU 'onnxruntime' is installed or shadows "
                "'onnxruntime-gpu' (pip uninstall onnxruntime; pip install --force-reinstall onnxruntime-gpu)")
    if ep_error:
        return f"the CUDA provider failed to initialise: {ep_error}"
    return ("the CUDA provider failed to initialise (see the onnxruntime error above: libcublasLt.so.12 / "
            "libcudnn.so.9 not found, or no GPU visible)")


@dataclass
class Piece:
    pcm: bytes
    seconds: float


class VoiceLoadError(Exception):
    """A voice's file that cannot be loaded: the file and why (serve.main logs it and exits 2)."""

    def __init__(self, path: str, reason: str, voice: str = ""):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason
        self.voice = voice  # set by serve.load_voices where the Voice does not know it yet


class Voice:
    def __init__(self, name: str, model_path: str, *, use_gpu: bool, driver_problem: str | None,
                 syntheses: int, intra_op_threads: int = 0, cpu_memory_arena: bool = True,
                 concurrent_intra_op_threads: int | None = 0, cuda_options: dict[str, str] | None = None,
                 shape_stable: str = "auto", phoneme_buckets: tuple[int, ...] | None = None,
                 frame_buckets: tuple[int, ...] | None = None, encoder_provider: str = "auto",
                 max_run_phonemes: int = int(texts.PHONEMES_PER_CHAR * 200)):
        """``syntheses``: pieces at once, 0: ``SYNTHESES`` of the session's provider.
        ``concurrent_intra_op_threads``: threads of the CPU session for pieces that start while
        others run; 0: ``concurrent_threads(syntheses)``; None: no such session (one session for all).
        ``shape_stable``: ``auto`` (on where the session runs on CUDA), ``on`` or ``off``: synthesis
        through the split voice's bucket sessions (``stable``), whose input shapes never change.
        ``phoneme_buckets`` / ``frame_buckets`` None: ``stable.auto_buckets`` for runs of at most
        ``max_run_phonemes`` phonemes (the server's ``phoneme_limit`` at the normal pace).
        ``encoder_provider``: cpu (one CPU encoder session, no buckets), cuda (a session per phoneme bucket
        on the voice's provider) or auto (``stable.AUTO_ENCODER_PROVIDER``)."""
        import onnxruntime
        from piper import PiperConfig

        config_path = model_path + ".json"
        try:
            with open(config_path, "r", encoding="utf-8") as fh:
                self.config = PiperConfig.from_dict(json.load(fh))
        except OSError as exc:  # unreadable: permissions, a directory, an I/O error
            raise VoiceLoadError(config_path, f"cannot read it ({type(exc).__name__}: {exc})") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON, or not Piper's fields
            raise VoiceLoadError(config_path, f"not a Piper voice config ({type(exc).__name__}: {exc})") from exc
        available = onnxruntime.get_available_providers()
        if use_gpu and CUDA_PROVIDER in available and driver_problem is None:
            providers = [cuda_provider(cuda_options), CPU_PROVIDER]
        else:
            providers = [CPU_PROVIDER]
        self.name = name
        self.model_path = model_path
        self.intra_op_threads = intra_op_threads
        self.encoder_placement = stable.AUTO_ENCODER_PROVIDER if encoder_provider == "auto" else encoder_provider
        #: the GPU memory this voice's loading and warm-up took (serve.load_voices, through NVML); None unknown
        self.gpu_memory_mib: int | None = None
        # with the CPU arena (the default) buffers are kept between pieces and handed back when the
        # voice is idle (release_if_idle); without it they go back after each piece (release_memory).
        # The CUDA provider keeps its own arena on the GPU, shrunk likewise when the voice is idle.
        self.cpu_memory_arena = cpu_memory_arena
        self._state = threading.Lock()
        #: the phoneme bound and the length_scale of the piece this thread synthesises (``synthesize``)
        self._run = threading.local()
        #: phonemes of the longest model run so far, times its length_scale where that is over 1: what
        #: a run's audio, and so its memory, grows with (docs/server.md "Bounds under any client")
        self.longest_run = 0
        #: what ONNX Runtime printed while making the main session (its error where CUDA failed)
        self.ep_error = ""
        self.piper = self._load(model_path, providers, intra_op_threads)
        self.session_providers = self.piper.session.get_providers()
        self.provider = self.session_providers[0]
        #: the arenas release_if_idle shrinks: ONNX Runtime refuses "cpu" where the CPU arena is off, and
        #: names the GPU's arena by the device the CUDA provider was given
        self.gpu_arena = f"gpu:{cuda_provider(cuda_options)[1]['device_id']}"
        self.arenas = stable.arena_spec(cpu_memory_arena, self.gpu_arena if self.on_gpu else None)
        #: the whole-model sessions that ran a piece since the last release (only those are shrunk)
        self._used: set[int] = set()
        self.concurrent_intra_op_threads = None
        self.concurrent = None
        self.shape_stable = shape_stable
        self.stable: stable.Buckets | None = None
        self.stable_reason = self._load_stable(model_path, providers, intra_op_threads, phoneme_buckets, frame_buckets,
                                               max_run_phonemes)
        self.syntheses = syntheses = syntheses or SYNTHESES.get(self.provider, SYNTHESES[CPU_PROVIDER])
        if self.provider == CPU_PROVIDER and syntheses > 1 and concurrent_intra_op_threads is not None \
                and self.stable is None:
            threads = concurrent_intra_op_threads or concurrent_threads(syntheses)
            if threads < (intra_op_threads or usable_cpus()):
                self.concurrent = self._load(model_path, [CPU_PROVIDER], threads)
                self.concurrent_intra_op_threads = threads
        self.sample_rate = self.config.sample_rate
        self.num_speakers = self.config.num_speakers
        self.slots = threading.BoundedSemaphore(syntheses)
        self.running = 0  # pieces synthesising now
        self.pieces = 0  # pieces started, ever
        self.concurrent_pieces = 0  # of which on the concurrent session
        self.last_used = time.monotonic()
        self._released_at = -1  # ``pieces`` when memory was last handed back
        self.releases = 0
        # what this process loaded, so a check can tell a service that missed a restart
        self.sha256 = {".onnx": file_sha256(model_path), ".onnx.json": file_sha256(config_path)}
        self.cpu_reason = (gpu_reason(self.provider, available, driver_problem, self.ep_error)
                           if use_gpu and self.provider != CUDA_PROVIDER else None)

    def _options(self, intra_op_threads: int, cpu_memory_arena: bool = True):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.enable_cpu_mem_arena = self.cpu_memory_arena and cpu_memory_arena
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        return options

    def _load(self, model_path: str, providers: list, intra_op_threads: int):
        import onnxruntime
        from piper import PiperVoice

        options = self._options(intra_op_threads)
        try:
            session, said = stable.created(model_path, options, providers)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several types for a bad model
            raise VoiceLoadError(model_path, f"ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc
        inputs = sorted(i.name for i in session.get_inputs())
        if not PIPER_INPUTS.issubset(inputs):
            raise VoiceLoadError(model_path, f"not a Piper voice model: its inputs are {', '.join(inputs)}, a Piper "
                                             f"voice's are {', '.join(sorted(PIPER_INPUTS))} (and sid with several speakers)")
        self.ep_error = self.ep_error or said
        piper = PiperVoice(session=session, config=self.config)
        piper.phonemize = lambda text: self._runs(self._phonemes(text))  # PiperVoice.synthesize calls it
        return piper

    def _load_stable(self, model_path: str, providers: list, intra_op_threads: int, phoneme_buckets,
                     frame_buckets, max_run_phonemes: int) -> str | None:
        """Shape-stable synthesis for this voice where ``shape_stable`` asks for it: None when it is on,
        else why not (off, the CPU under ``auto``, or a graph that does not fit, and the voice runs whole).
        On CUDA each bucket session has one intra-op thread that does not spin (the GPU does the work) and
        must come up on CUDA; on the CPU the bucket sessions of each part share one copy of the weights and
        hand their working memory back after each run (no arena), so that nine sessions cost about one."""
        if self.shape_stable == "off":
            return "shape_stable is off"
        if self.shape_stable == "auto" and not self.on_gpu:
            return (f"shape_stable is auto and the voice runs on {self.provider}, where a change of shape costs "
                    "nothing (on forces it)")
        try:
            with open(model_path, "rb") as fh:
                cut = stable.find_cut(fh.read(), self.config.phoneme_id_map)
        except stable.SplitError as exc:
            return f"its graph does not fit the split, so it runs whole: {exc}"
        providers = providers if self.on_gpu else [CPU_PROVIDER]
        self.run_limits = stable.run_bounds(self.run_ids, max_run_phonemes, texts.MIN_RUN_PHONEMES, cut.frames_per_id,
                                            max(texts.MAX_LENGTH_SCALE, self.config.length_scale))
        auto_phonemes, auto_frames = stable.auto_buckets(*self.run_limits)
        if self.encoder_placement == "cpu":
            phoneme_buckets = ()
        elif phoneme_buckets is None:
            phoneme_buckets = auto_phonemes
        try:
            self.stable = stable.Buckets.load(
                cut, providers, self._bucket_options if self.on_gpu else lambda: self._options(intra_op_threads, False),
                phoneme_buckets, frame_buckets or auto_frames, {"input_lengths": (1,), "scales": (3,), "sid": (1,)},
                encoder=([CPU_PROVIDER], self._cpu_encoder_options), share_weights=not self.on_gpu)
        except stable.ProviderError as exc:
            raise VoiceLoadError(model_path, f"shape-stable synthesis: {exc}. The voice stops rather than run its "
                                             "buckets on the CPU; set piper_gpu_shape_stable=off to run the whole "
                                             "model instead") from exc
        self.piper.phoneme_ids_to_audio = self._stable_audio
        if self.stable.encoder is not None:
            # with an encoder of any shape no piece needs the whole model (frames beyond the buckets run the
            # encoder's output through a decoder of any shape): its session, its weights and its arena (on
            # CUDA its GPU memory) go
            self.piper.session = None
        return None

    def run_ids(self, phonemes: int) -> int:
        """The phoneme ids Piper makes of ``phonemes`` phonemes (its pads, BOS and EOS included)."""
        special = {"_", "^", "$"}
        phoneme = next((p for p, ids in self.config.phoneme_id_map.items() if ids and p not in special), "_")
        return len(self.piper.phonemes_to_ids([phoneme] * phonemes))

    def _cpu_encoder_options(self):
        """The CPU encoder's options: on a CUDA voice its pool does not spin between pieces (the GPU does most of
        each piece, and up to ``syntheses`` pieces use it at once)."""
        options = self._options(self.intra_op_threads)
        if self.on_gpu:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _bucket_options(self):
        """A CUDA bucket session's options: one intra-op thread, which does not spin waiting for work."""
        options = self._options(1)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _feeds(self, phoneme_ids: list[int], syn_config) -> dict:
        """The model's inputs for a piece, as Piper's ``phoneme_ids_to_audio`` makes them."""
        import numpy as np

        cfg = self.config
        pick = lambda value, default: default if value is None else value  # noqa: E731
        ids = np.array([phoneme_ids], dtype=np.int64)
        feeds = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
                 "scales": np.array([pick(syn_config.noise_scale, cfg.noise_scale),
                                     pick(syn_config.length_scale, cfg.length_scale),
                                     pick(syn_config.noise_w_scale, cfg.noise_w_scale)], dtype=np.float32)}
        if cfg.num_speakers > 1:
            sid = pick(syn_config.speaker_id, getattr(cfg, "default_speaker_id", 0))
            feeds["sid"] = np.array([sid], dtype=np.int64)
        return feeds

    def _stable_audio(self, phoneme_ids: list[int], syn_config=None, include_alignments: bool = False):
        """Piper's ``phoneme_ids_to_audio`` through the bucket sessions: the piece's raw audio, trimmed
        to its real frames (Piper normalises it after), or the whole model's when it fits no bucket."""
        from piper import SynthesisConfig

        feeds = self._feeds(phoneme_ids, syn_config or SynthesisConfig())
        audio = None if include_alignments else self.stable.audio(feeds, self.pad_id)
        if audio is None:
            if self.piper.session is None:
                raise RuntimeError(f"voice {self.name}: alignments need the whole model, whose session a shape-stable "
                                   "voice with a CPU encoder does not keep (encoder_provider = \"cuda\" keeps it)")
            self._mark_used(self.piper)
            audio = self.piper.session.run(None, feeds)[0].squeeze()
            return (audio, None) if include_alignments else audio
        return audio

    @property
    def pad_id(self) -> int:
        return (self.config.phoneme_id_map.get("_") or [0])[0]

    def warm(self) -> float | None:
        """Runs every bucket session once (so that the first request finds every plan built): the
        milliseconds it took, None when the voice is not shape-stable."""
        if self.stable is None:
            return None
        from piper import SynthesisConfig

        if not self.on_gpu:
            return None  # the CPU builds no plans: a new shape costs it nothing
        ids = stable._probe_ids(self.config.phoneme_id_map, 24)
        took = self.stable.warm(self._feeds(ids, SynthesisConfig()), self._shrink_options, self.gpu_arena)
        release_memory()
        return took

    def stable_health(self) -> dict:
        out = {"mode": self.shape_stable, "active": self.stable is not None, "reason": self.stable_reason}
        if self.stable is not None:
            out.update({"encoder_placement": self.encoder_placement, **self.stable.providers(),
                        "cut": self.stable.cut.describe(), "hop": self.stable.cut.hop,
                        "nodes": dict(zip(("encoder", "decoder"), self.stable.cut.nodes)),
                        "warmup_ms": round(self.stable.warmup_ms, 1), **self.stable.usage()})
        return out

    @property
    def on_gpu(self) -> bool:
        return self.provider == CUDA_PROVIDER

    @property
    def sessions(self) -> int:
        """The voice's ONNX Runtime sessions (``resources``)."""
        return self.resources()["sessions"]

    def resources(self) -> dict:
        """The voice's ONNX Runtime sessions, by provider, the threads of their intra-op pools (ONNX
        Runtime's default pool counted as one per usable CPU) and the GPU memory its loading took."""
        default = self.intra_op_threads or usable_cpus()
        sessions = [(self.provider, default)] if self.piper.session is not None else []
        if self.concurrent is not None:
            sessions.append((CPU_PROVIDER, self.concurrent_intra_op_threads))
        for session in (self.stable.sessions if self.stable is not None else ()):
            sessions.append((session.provider, 1 if session.provider == CUDA_PROVIDER else default))
        providers: dict[str, int] = {}
        for provider, _ in sessions:
            providers[provider] = providers.get(provider, 0) + 1
        return {"sessions": len(sessions), "providers": providers,
                "intra_op_threads": sum(threads for _, threads in sessions), "gpu_memory_mib": self.gpu_memory_mib}

    def _phonemes(self, text: str) -> list[list[str]]:
        """Piper's own phonemes of ``text`` for this voice, a list per sentence, phonemized under the
        process-wide lock (every session of the voice has the same config, so the main one serves)."""
        from piper import PiperVoice

        with _PHONEMIZE_LOCK:
            return PiperVoice.phonemize(self.piper, text)

    def count_phonemes(self, text: str) -> int:
        """The phonemes Piper makes of ``text`` for this voice (its sentences' together), without
        synthesising; the model runs' bound (``longest_run``) is not touched."""
        return sum(len(sentence) for sentence in self._phonemes(text))

    def pace(self, length_scale: float | None) -> float:
        """The length_scale a piece is spoken at: the request's, else the voice's own."""
        return self.config.length_scale if length_scale is None else length_scale

    def _runs(self, sentences: list[list[str]]) -> list[list[str]]:
        """A piece's phonemes, a list per sentence, as the model runs them: each cut to at most this
        thread's ``max_phonemes`` (``synthesize``), and the longest run noted (``longest_run``)."""
        limit = getattr(self._run, "max_phonemes", None)
        if limit:
            sentences = [run for sentence in sentences for run in texts.cut_phonemes(sentence, limit)]
        if sentences:
            longest = max(len(s) for s in sentences) * getattr(self._run, "scale", 1.0)
            with self._state:
                self.longest_run = max(self.longest_run, round(longest))
        return sentences

    def synthesize(self, piece: str, speaker_id: int | None = None, length_scale: float | None = None,
                   max_phonemes: int | None = None) -> Piece:
        """One bounded piece of text to 16-bit PCM, holding one of the voice's slots while it runs:
        on the voice's main session when no other piece is running, else on its concurrent one.
        ``max_phonemes``: the most phonemes one model run may hold (its audio, and so its memory, grows
        with them); a sentence with more is cut at word breaks (``text.cut_phonemes``)."""
        from piper import SynthesisConfig

        config = SynthesisConfig(speaker_id=speaker_id, length_scale=length_scale)
        self._run.max_phonemes = max_phonemes
        self._run.scale = max(1.0, self.pace(length_scale))
        with self.slots:
            with self._state:
                piper = self.piper if self.running == 0 or self.concurrent is None else self.concurrent
                self.running += 1
                self.pieces += 1
                self.concurrent_pieces += piper is self.concurrent
                if self.stable is None:  # its session runs the piece: the next idle release shrinks it
                    self._used.add(id(piper))
            try:
                pcm = b"".join(chunk.audio_int16_bytes for chunk in piper.synthesize(piece, syn_config=config))
            finally:
                with self._state:
                    self.running -= 1
                    self.last_used = time.monotonic()
        if not self.cpu_memory_arena or (self.stable is not None and not self.on_gpu):
            # no arena keeps the piece's buffers (CPU bucket sessions have none): what they freed goes back now,
            # or each executor thread's malloc arena would keep the largest piece it ran
            release_memory()
        return Piece(pcm, len(pcm) / (SAMPLE_WIDTH * CHANNELS * self.sample_rate))

    def release_if_idle(self, idle_seconds: float) -> tuple[int, int] | None:
        """Hands the arenas' buffers (CPU, and GPU on CUDA) and the freed heap back once the voice has run
        no piece for ``idle_seconds``: the process's RSS in MiB before and after, or None when it was
        not idle (or nothing ran since the last release). The arena is shrunk by a minimal run of each
        session with ONNX Runtime's shrinkage run option (the only way ONNX Runtime offers)."""
        with self._state:
            if self.running or self.pieces == self._released_at or time.monotonic() - self.last_used < idle_seconds:
                return None
            pieces = self.pieces
        before = rss_mib()
        # a piece may start meanwhile: shrinking frees only regions no tensor uses, so it is safe
        with self._state:
            used, self._used = self._used, set()
        if self.arenas:
            for piper in (self.piper, self.concurrent):
                if piper is not None and piper.session is not None and id(piper) in used:
                    self._shrink(piper)
        if self.stable is not None:
            self.stable.shrink(self._shrink_options, self.gpu_arena)
        release_memory()
        with self._state:
            self._released_at = pieces
            self.releases += 1
        return before, rss_mib()

    def _shrink(self, piper) -> None:
        from piper import SynthesisConfig

        piper.session.run(None, self._feeds(piper.phonemes_to_ids([]), SynthesisConfig()), self._shrink_options())

    def _shrink_options(self, arenas: str | None = None):
        import onnxruntime

        options = onnxruntime.RunOptions()
        options.add_run_config_entry(_SHRINK_ARENAS, arenas or self.arenas)
        return options

    def _mark_used(self, piper) -> None:
        """``piper``'s session runs a piece: the next idle release shrinks it (a session that did not run
        is not shrunk, which on CUDA would rebuild its convolutions' plans for nothing)."""
        with self._state:
            self._used.add(id(piper))
