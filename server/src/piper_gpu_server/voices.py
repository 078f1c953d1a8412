"""Voices: one ONNX Runtime session per voice, on the CUDA provider when it is wanted and works, and
synthesis of bounded pieces of text, several at once per voice.

ONNX Runtime's ``InferenceSession.run`` may be called from several threads at once; Piper's espeak-ng
phonemizer keeps global state (its voice), so phonemizing is serialised process-wide while the
model runs concurrently, at most ``syntheses_per_voice`` pieces per voice."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import struct
import threading
from dataclasses import dataclass

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
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


#: hands freed heap back to the system after each piece, so a long text's tensors do not stay in the
#: process's heap (tests/server/test_server_hostile.py holds RSS after 2,000 characters to 1.5x the warm process)
release_memory = _malloc_trim()


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


def gpu_reason(provider: str, available: list[str], driver_problem: str | None) -> str:
    """Why a voice that wanted the GPU runs on ``provider``."""
    if driver_problem is not None:
        return driver_problem
    if CUDA_PROVIDER not in available:
        return ("CUDAExecutionProvider is not available: the CPU 'onnxruntime' is installed or shadows "
                "'onnxruntime-gpu' (pip uninstall onnxruntime; pip install --force-reinstall onnxruntime-gpu)")
    return ("the CUDA provider failed to initialise (see the onnxruntime error above: libcublasLt.so.12 / "
            "libcudnn.so.9 not found, or no GPU visible)")


@dataclass
class Piece:
    pcm: bytes
    seconds: float


class Voice:
    def __init__(self, name: str, model_path: str, *, use_gpu: bool, driver_problem: str | None,
                 syntheses: int, intra_op_threads: int = 0, cpu_memory_arena: bool = False):
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        config_path = model_path + ".json"
        with open(config_path, "r", encoding="utf-8") as fh:
            config = PiperConfig.from_dict(json.load(fh))
        available = onnxruntime.get_available_providers()
        if use_gpu and CUDA_PROVIDER in available and driver_problem is None:
            providers = [(CUDA_PROVIDER, {"cudnn_conv_algo_search": "HEURISTIC", "device_id": 0}), CPU_PROVIDER]
        else:
            providers = [CPU_PROVIDER]
        options = onnxruntime.SessionOptions()
        # without the CPU arena (the default) a long text's buffers go back to the system after each
        # piece (with release_memory); the CUDA provider keeps its own arena on the GPU either way
        options.enable_cpu_mem_arena = cpu_memory_arena
        self.cpu_memory_arena = cpu_memory_arena
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        session = onnxruntime.InferenceSession(model_path, sess_options=options, providers=providers)
        self.name = name
        self.model_path = model_path
        self.piper = PiperVoice(session=session, config=config)
        unlocked = self.piper.phonemize

        def phonemize(text: str):
            with _PHONEMIZE_LOCK:
                return unlocked(text)

        self.piper.phonemize = phonemize  # PiperVoice.synthesize calls self.phonemize
        self.session_providers = session.get_providers()
        self.provider = self.session_providers[0]
        self.sample_rate = config.sample_rate
        self.num_speakers = config.num_speakers
        self.slots = threading.BoundedSemaphore(syntheses)
        # what this process loaded, so a check can tell a service that missed a restart
        self.sha256 = {".onnx": file_sha256(model_path), ".onnx.json": file_sha256(config_path)}
        self.cpu_reason = (gpu_reason(self.provider, available, driver_problem)
                           if use_gpu and self.provider != CUDA_PROVIDER else None)

    @property
    def on_gpu(self) -> bool:
        return self.provider == CUDA_PROVIDER

    def synthesize(self, piece: str, speaker_id: int | None = None, length_scale: float | None = None) -> Piece:
        """One bounded piece of text to 16-bit PCM, holding one of the voice's slots while it runs."""
        from piper import SynthesisConfig

        config = SynthesisConfig(speaker_id=speaker_id, length_scale=length_scale)
        with self.slots:
            pcm = b"".join(chunk.audio_int16_bytes for chunk in self.piper.synthesize(piece, syn_config=config))
        if not self.cpu_memory_arena:
            release_memory()
        return Piece(pcm, len(pcm) / (SAMPLE_WIDTH * CHANNELS * self.sample_rate))
