"""/metrics through prometheus-client, in a registry of the server's own (no process-wide state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RTF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no *_created series: a scrape shows counts, not start times


class ShapeStableCollector:
    """The shape-stable buckets' use, read from the voices at each scrape (the voices count it)."""

    def __init__(self, voices):
        self.voices = voices

    def describe(self):
        return []

    def collect(self):
        on = GaugeMetricFamily("piper_tts_shape_stable", "1 where a voice synthesises through its shape-stable "
                               "bucket sessions, 0 where it runs whole.", labels=("voice",))
        runs = CounterMetricFamily("piper_tts_shape_bucket_runs", "Pieces run by each bucket session of a "
                                   "shape-stable voice (part: encoder by phoneme ids, decoder by frames).",
                                   labels=("voice", "part", "size"))
        fallbacks = CounterMetricFamily("piper_tts_shape_fallbacks", "Pieces of a shape-stable voice that fit no "
                                        "bucket, by what was too long: phonemes ran on the whole model, frames "
                                        "through a decoder session of any shape.",
                                        labels=("voice", "reason"))
        for name, voice in self.voices.items():
            on.add_metric([name], 1 if voice.stable is not None else 0)
            if voice.stable is None:
                continue
            usage = voice.stable.usage()
            for part, key in (("encoder", "phoneme_buckets"), ("decoder", "frame_buckets")):
                for size, count in usage[key].items():
                    runs.add_metric([name, part, size], count)
            for reason, count in usage["fallbacks"].items():
                fallbacks.add_metric([name, reason], count)
        yield from (on, runs, fallbacks)


class Metrics:
    def __init__(self, pending, gpu_sample, voices=None):
        """``pending``: a callable giving the requests in progress; ``gpu_sample``: one giving NVML's
        figures (``gpu.Gpu.sample``), read at each scrape; ``voices``: name -> Voice."""
        self.registry = CollectorRegistry(auto_describe=True)
        if voices is not None:
            self.registry.register(ShapeStableCollector(voices))
        self.requests = Counter("piper_tts_requests", "POST /tts requests by voice and HTTP status.",
                                ("voice", "status"), registry=self.registry)
        self.duration = Histogram("piper_tts_request_duration_seconds", "Synthesis time of answered requests.",
                                  ("voice",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rtf = Histogram("piper_tts_realtime_factor", "Synthesis time divided by audio duration, of answers "
                             "with audio (one without, a text that speaks nothing, has no ratio).",
                             ("voice",), buckets=RTF_BUCKETS, registry=self.registry)
        self.first_audio = Histogram("piper_tts_first_audio_seconds",
                                     "Time from a streamed request to its first audio.",
                                     ("voice",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.memory_releases = Counter("piper_tts_memory_releases", "Idle spells after which a voice's buffers "
                                       "went back to the system.", ("voice",), registry=self.registry)
        self.provider = Gauge("piper_tts_voice_provider", "Execution provider each voice's session runs on.",
                              ("voice", "provider"), registry=self.registry)
        Gauge("piper_tts_pending_requests", "Requests synthesising or waiting.",
              registry=self.registry).set_function(pending)
        self._gpu_sample = gpu_sample
        self._gpu_util = self._gpu_mem = None
        if gpu_sample():  # only with NVML: no GPU is no series, not a zero
            self._gpu_util = Gauge("piper_tts_gpu_utilization_percent", "GPU utilisation (NVML).",
                                   registry=self.registry)
            self._gpu_mem = Gauge("piper_tts_gpu_memory_used_bytes", "GPU memory in use (NVML).",
                                  registry=self.registry)

    def record(self, voice: str, status: int, seconds: float | None = None, rtf: float | None = None) -> None:
        """A request counted by ``status``; an answered one with its synthesis ``seconds``, and its real-time
        factor where it has audio (None: no audio, no ratio; a 0 s division would make the sum +Inf)."""
        self.requests.labels(voice=voice, status=str(status)).inc()
        if seconds is not None:
            self.duration.labels(voice=voice).observe(seconds)
        if rtf is not None:
            self.rtf.labels(voice=voice).observe(rtf)

    def render(self) -> bytes:
        sample = self._gpu_sample()
        if self._gpu_util is not None and "utilization_percent" in sample:
            self._gpu_util.set(sample["utilization_percent"])
        if self._gpu_mem is not None and "memory_used_bytes" in sample:
            self._gpu_mem.set(sample["memory_used_bytes"])
        return generate_latest(self.registry)
