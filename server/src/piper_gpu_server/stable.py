"""Shape-stable synthesis: a Piper voice split at the flow's input, padded to fixed lengths, so that no
ONNX Runtime session ever sees a second input shape.

Why: since onnxruntime 1.20 (microsoft/onnxruntime PR 19470) the CUDA ``Conv``/``ConvTranspose``
kernels build a cuDNN plan for the input shape and keep only the last one
(``onnxruntime/core/providers/cuda/nn/conv.cc``); a Piper piece has its own phoneme count and, through
the durations' noise, its own frame count, so every run rebuilds every plan (docs/results.md "On a GPU").

How, at load, in memory (the ``.onnx`` on disk stays as Piper ships it):

1. ``find_cut`` runs the whole model on the CPU three times with a short probe: once, once with
   another ``length_scale`` (other frames, same phonemes), once with the phoneme ids padded (other
   phonemes, same frames). A tensor whose shape follows the phonemes is phoneme-level; one whose
   shape follows only the frames is frame-level.
2. The cut is the smallest set of tensors that separates everything phoneme-level (and the ops that
   make shapes from values: ``Range``, ``NonZero``, the random ops) from the convolutions that run on
   frames and the audio output: a minimum vertex cut (max-flow), the one nearest the inputs, moved past
   ``Cast``/``Unsqueeze`` adapters. For Piper's VITS voices that is the flow's input: ``z_p`` and
   ``y_mask`` (and the speaker's embedding, or ``sid``, where the voice has speakers), the place where
   Piper's own streaming export (piper_train ``export_onnx_streaming.py``) cuts. Found from the
   graph's structure and the probe's shapes, never from node names.
3. The encoder (phoneme ids, lengths, scales, ``sid`` -> the cut) and the decoder (the cut -> the
   flow in reverse, HiFi-GAN, audio) become two models; splitting them must give the whole model's
   audio on the probe (``SplitError`` otherwise: the voice then runs whole and says why).

``Buckets`` then holds one encoder session per phoneme bucket and one decoder session per frame
bucket, each with its input dimension fixed (``add_free_dimension_override_by_name``, so ONNX Runtime
also folds the shape arithmetic and refuses any other shape). A piece's ids are padded to their bucket
(the real length stays in ``input_lengths``, so the masks keep the result); the encoder's frame-level
outputs are padded with zeros to the frame bucket; the audio is trimmed to the real frames times the
hop before Piper normalises it. Every bucket is run once at start-up on CUDA (``warm``): its cuDNN
plans are built before the first request (the CPU builds no plans, so a CPU voice skips it).

The buckets follow from the server's own bound on a model run (``run_bounds``, ``auto_buckets``): at
most ``PHONEMES_PER_CHAR x sentence_max_chars`` phonemes at the normal pace (fewer in proportion above a
length_scale of 1, down to ``MIN_RUN_PHONEMES``), as phoneme ids by the voice's own ``phonemes_to_ids``;
their frames are the ids times the frames per id of the voice's probe (2.9 for en_US-joe-medium) times the
length_scale, the most over every length_scale a request may give. ``BUCKET_COUNT`` buckets spaced evenly in
log between the smallest and that largest keep the padding within 25% more frames than the pieces need over
the test texts (tests/server/test_shape_stable.py ``test_padding_overhead``, which prints it).

Where the encoder runs (``encoder_provider``): ``cpu`` gives it one CPU session with no buckets (the CPU
pays nothing for a new shape), so only the decoder's buckets hold CUDA sessions; ``cuda`` gives it one
session per phoneme bucket on the voice's provider. A piece whose ids exceed the largest phoneme bucket runs
on the whole model; one whose frames exceed the largest frame bucket runs the encoder's output through a
decoder session without a fixed shape (made at its first use). Both are counted as fallbacks."""

from __future__ import annotations

import collections
import contextlib
import io
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

#: buckets per part where the settings say "auto", and the smallest of each: phoneme ids (Piper puts a pad
#: between phonemes: 2 ids per phoneme and 3 more) and frames of audio (hop 256 at 22.05 kHz: 86 a second)
BUCKET_COUNT = 9
SMALLEST_PHONEME_BUCKET = 32
SMALLEST_FRAME_BUCKET = 96
#: bucket sizes are rounded up to a multiple of this
BUCKET_ROUNDING = 8
#: one ONNX Runtime session is made at a time: ``created`` swaps the process's sys.stdout to read what ONNX
#: Runtime's Python wrapper prints (the unbucketed decoder is made at a piece's request, beside other voices')
_CREATING = threading.Lock()
#: where a shape-stable voice's encoder runs under encoder_provider = "auto" (config.ENCODER_PROVIDERS): the
#: CPU until GPU figures decide (docs/server.md "Sessions, threads and memory per voice")
AUTO_ENCODER_PROVIDER = "cpu"
#: the names the split models give their variable dimensions (each bucket session fixes them)
PHONEMES_DIM = "shape_stable_phonemes"
FRAMES_DIM = "shape_stable_frames"
#: ops whose output shape comes from the values of their inputs, and random ops: they stay in the encoder
_VALUE_SHAPED = {"Range", "NonZero", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                 "Multinomial", "Bernoulli"}
#: ops a cut tensor may be moved past when they are its only consumer (type and rank adapters)
_ADAPTERS = {"Cast", "Unsqueeze", "Squeeze", "Identity"}
_CONVS = {"Conv", "ConvTranspose"}
_INF = 1 << 40
MODES = ("auto", "on", "off")


class SplitError(ValueError):
    """The voice's graph does not fit shape-stable synthesis; the message says why."""


def parse_buckets(text: str, what: str) -> tuple[int, ...] | None:
    """ "64,128,256" as a sorted tuple of distinct positive integers; "auto": None (``auto_buckets``)."""
    if text.strip() == "auto":
        return None
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"{what} {text!r} must be auto or comma-separated whole numbers, e.g. \"64,128,256\"") from None
    if not values or values[0] < 1:
        raise ValueError(f"{what} {text!r} must list at least one length, each 1 or more")
    return tuple(values)


def spaced(smallest: int, largest: int, count: int = BUCKET_COUNT) -> tuple[int, ...]:
    """``count`` sizes from ``smallest`` to ``largest``, evenly spaced in log (each the one before times the
    same ratio), rounded up to ``BUCKET_ROUNDING``; the largest exactly ``largest``."""
    largest = max(largest, smallest)
    if count < 2 or largest == smallest:
        return (largest,)
    ratio = largest / smallest
    sizes = {min(largest, math.ceil(round(smallest * ratio ** (i / (count - 1)), 6) / BUCKET_ROUNDING) * BUCKET_ROUNDING)
             for i in range(count - 1)}
    return tuple(sorted(int(s) for s in sizes | {largest}))


def auto_buckets(max_ids: int, max_frames: int, count: int = BUCKET_COUNT) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The phoneme and frame buckets for runs of at most ``max_ids`` phoneme ids and ``max_frames`` frames
    (``run_bounds``): every phoneme bucket can be reached, and the largest of each holds the longest run."""
    return (spaced(min(SMALLEST_PHONEME_BUCKET, max_ids), max_ids, count),
            spaced(min(SMALLEST_FRAME_BUCKET, max_frames), max_frames, count))


def run_bounds(ids, max_run_phonemes: int, min_run_phonemes: int, frames_per_id: float,
               max_length_scale: float) -> tuple[int, int]:
    """The most phoneme ids and frames one model run can have: the server allows ``max_run_phonemes`` at a
    length_scale of 1 or less and ``max_run_phonemes / L`` (at least ``min_run_phonemes``) at L above it;
    ``ids(p)``: the ids of ``p`` phonemes (BOS, EOS and pads included, so a slow run of few phonemes has more
    frames per phoneme); each id gives ``frames_per_id`` frames at length_scale 1 and L times as many at L."""
    def frames(scale: float) -> float:
        return ids(max(min_run_phonemes, int(max_run_phonemes / scale))) * scale * frames_per_id

    steps = int(round((max_length_scale - 1.0) * 100))
    longest = max(frames(1.0 + i / 100) for i in range(steps + 1))
    return ids(max_run_phonemes), math.ceil(longest)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-noise ratio of ``other`` against ``reference`` in dB (inf when identical)."""
    reference = np.asarray(reference, dtype=np.float64).ravel()
    other = np.asarray(other, dtype=np.float64).ravel()
    if reference.shape != other.shape:
        raise ValueError(f"lengths differ: {reference.size} against {other.size} samples")
    noise = float(np.sum((reference - other) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(float(np.sum(reference ** 2)) / noise))


@dataclass(frozen=True)
class Cut:
    """A voice's graph split at the flow's input."""

    encoder: bytes  # serialized ModelProto: the graph's inputs -> the cut (those the encoder makes)
    decoder: bytes  # the cut -> the audio
    frame_inputs: tuple[str, ...]  # decoder inputs with a frame axis (last), zero-padded to the bucket
    fixed_inputs: tuple[str, ...]  # decoder inputs of fixed shape made by the encoder (a speaker's embedding)
    feed_inputs: tuple[str, ...]  # decoder inputs that are the graph's own inputs (e.g. sid)
    encoder_inputs: tuple[str, ...]
    hop: int  # audio samples per frame
    shapes: dict[str, list]  # each cut tensor's shape in the probe (for /health and the log)
    dtypes: dict[str, str]  # the numpy dtype of each input of either part
    nodes: tuple[int, int]  # nodes in the encoder and in the decoder
    probe: tuple[int, int] = (0, 0)  # the probe's phoneme ids and frames (length_scale 1, no noise)

    @property
    def frames_per_id(self) -> float:
        return self.probe[1] / self.probe[0]

    def describe(self) -> str:
        return ", ".join(f"{name}{self.shapes[name]}" for name in (*self.frame_inputs, *self.fixed_inputs,
                                                                   *self.feed_inputs))


def _probe_ids(phoneme_id_map: dict, count: int) -> list[int]:
    """A probe of ``count`` phonemes in Piper's layout: BOS, each id followed by the pad, EOS."""
    first = {name: ids[0] for name, ids in phoneme_id_map.items() if ids}
    pad, bos, eos = first.get("_", 0), first.get("^", 1), first.get("$", 2)
    body = sorted(set(first.values()) - {pad, bos, eos}) or [pad]
    ids = [bos, pad]
    for i in range(count):
        ids += [body[(7 * i) % len(body)], pad]
    return ids + [eos]


def _feeds(ids: list[int], length: int, length_scale: float, pad: int, sid: bool) -> dict:
    x = np.full((1, length), pad, dtype=np.int64)
    x[0, :len(ids)] = ids
    feeds = {"input": x, "input_lengths": np.array([len(ids)], dtype=np.int64),
             "scales": np.array([0.0, length_scale, 0.0], dtype=np.float32)}
    if sid:
        feeds["sid"] = np.array([0], dtype=np.int64)
    return feeds


def find_cut(model_bytes: bytes, phoneme_id_map: dict) -> Cut:
    """Split a Piper voice's graph at the flow's input (module docstring); SplitError says why not."""
    import onnx
    import onnxruntime
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise SplitError(f"its graph has control flow ({node.op_type} node {node.name!r}), which the split does not handle")
    inputs = [i.name for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    missing = {"input", "input_lengths", "scales"} - set(inputs)
    if missing or set(inputs) - {"input", "input_lengths", "scales", "sid"}:
        raise SplitError(f"its inputs are {inputs}, not Piper's input, input_lengths, scales (and sid)")
    has_sid = "sid" in inputs
    output = graph.output[0].name
    pad = next((ids[0] for name, ids in phoneme_id_map.items() if name == "_" and ids), 0)

    # 1. the probe: every tensor's shape in three runs
    initializers = {init.name for init in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    tensors = [o for n in graph.node for o in n.output if o and o not in constants]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in listed:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors are of many types
        raise SplitError(f"ONNX Runtime cannot load it with every tensor as an output ({type(exc).__name__}: {exc})") from exc
    del probe
    names = [o.name for o in session.get_outputs()]

    def run(feeds):
        """Each tensor's shape, dtype and size in a run on ``feeds`` (not its values: a run with every
        tensor as an output holds hundreds of MiB, and three are compared), and the audio."""
        values = session.run(None, feeds)
        seen = {n: _Seen(v) for n, v in feeds.items()}
        seen.update((n, _Seen(v)) for n, v in zip(names, values))
        return seen, values[names.index(output)]

    ids = _probe_ids(phoneme_id_map, 12)
    a, expected = run(_feeds(ids, len(ids), 1.0, pad, has_sid))
    b, _ = run(_feeds(ids, len(ids), 1.7, pad, has_sid))
    for extra in (7, 5, 11, 3, 13):  # a duration near a whole number may round the other way once padded
        c, _ = run(_feeds(ids, len(ids) + extra, 1.0, pad, has_sid))
        if c[output].shape == a[output].shape:
            break
    else:
        raise SplitError("padding its phoneme ids changes the length of its audio, so the masks do not hold the result")
    if b[output].shape == a[output].shape:
        raise SplitError("length_scale does not change the length of its audio: no frame axis was found")
    del session
    phoneme_level = {n for n in a if a[n].shape != c[n].shape} | {"input"}
    frame_level = {n for n in a if a[n].shape != b[n].shape and n not in phoneme_level}

    # 2. the cut: a minimum vertex cut between sources and sinks (max-flow on the tensor graph)
    producer = {o: n for n in graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    # the encoder's own: the phoneme-level tensors and those whose shapes come from values; the graph's
    # inputs start there too, but the decoder may take those of fixed shape (sid) as they are
    fixed = set(phoneme_level) | {o for n in graph.node if n.op_type in _VALUE_SHAPED for o in n.output}
    sinks = {output} | {o for n in graph.node if n.op_type in _CONVS and n.input[0] in frame_level for o in n.output}
    if len(sinks) == 1:
        raise SplitError("no convolution runs on its frames")
    cut = _min_vertex_cut(graph, set(inputs) | set(tensors), initializers | constants, fixed | set(inputs),
                          fixed | sinks, sinks)
    if cut is None:
        raise SplitError("no small set of tensors separates its phoneme-level part from the convolutions on frames")
    cut = [_past_adapters(name, consumers) for name in cut]

    # the cut tensors: frame-level (the frame axis last, the same frame count in each) or fixed
    frame_inputs, fixed_inputs, feed_inputs = [], [], []
    frames_a = frames_b = None
    for name in sorted(cut):
        if name in inputs:
            feed_inputs.append(name)
        elif name in frame_level:
            sa, sb = a[name].shape, b[name].shape
            axes = [i for i, (x, y) in enumerate(zip(sa, sb)) if x != y]
            if axes != [len(sa) - 1] or (frames_a is not None and (sa[-1], sb[-1]) != (frames_a, frames_b)):
                raise SplitError(f"the cut tensor {name} {list(sa)} has its frames on another axis than the last")
            frames_a, frames_b = sa[-1], sb[-1]
            frame_inputs.append(name)
        elif a[name].shape == b[name].shape == c[name].shape:
            fixed_inputs.append(name)
        else:
            raise SplitError(f"the cut tensor {name} {list(a[name].shape)} has no fixed shape")
    if not frame_inputs:
        raise SplitError("the cut has no tensor with a frame axis")
    samples_a, samples_b = a[output].size, b[output].size
    if samples_a % frames_a or samples_b % frames_b or samples_a // frames_a != samples_b // frames_b:
        raise SplitError(f"its audio is not a whole number of samples per frame ({samples_a} samples for "
                         f"{frames_a} frames, {samples_b} for {frames_b})")
    hop = samples_a // frames_a

    # 3. the two models
    def value_info(name, dims):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a[name].dtype), dims)

    made = set(frame_inputs) | set(fixed_inputs)
    encoder_nodes = _needed(graph, made, set(inputs))
    decoder_nodes = _needed(graph, {output}, set(cut))
    if any(i in phoneme_level or i == "input" for n in decoder_nodes for i in n.input):
        raise SplitError("its decoder part would read a phoneme-level tensor")
    enc_inputs = []
    for name in inputs:
        if name == "input":
            enc_inputs.append(value_info(name, [1, PHONEMES_DIM]))
        else:
            enc_inputs.append(value_info(name, list(a[name].shape)))
    enc_outputs = [helper.make_empty_tensor_value_info(n) for n in sorted(made)]
    dec_inputs = [value_info(n, [*a[n].shape[:-1], FRAMES_DIM]) for n in frame_inputs]
    dec_inputs += [value_info(n, list(a[n].shape)) for n in (*fixed_inputs, *feed_inputs)]
    dec_outputs = [helper.make_empty_tensor_value_info(output)]
    encoder = _submodel(model, "encoder", encoder_nodes, enc_inputs, enc_outputs)
    decoder = _submodel(model, "decoder", decoder_nodes, dec_inputs, dec_outputs)
    result = Cut(encoder=encoder, decoder=decoder, frame_inputs=tuple(frame_inputs), fixed_inputs=tuple(fixed_inputs),
                 feed_inputs=tuple(feed_inputs), encoder_inputs=tuple(inputs), hop=hop,
                 shapes={n: list(a[n].shape) for n in cut}, dtypes={n: a[n].dtype.str for n in (*cut, *inputs)},
                 nodes=(len(encoder_nodes), len(decoder_nodes)), probe=(len(ids), int(frames_a)))
    _check_split(result, model_bytes, _feeds(ids, len(ids), 1.0, pad, has_sid), expected)
    return result


class _Seen:
    """A tensor of the probe as ``find_cut`` compares it: its shape, dtype and size."""

    __slots__ = ("shape", "dtype", "size")

    def __init__(self, value: np.ndarray):
        self.shape, self.dtype, self.size = value.shape, value.dtype, value.size


def _min_vertex_cut(graph, tensors: set, free: set, sources: set, uncuttable: set, sinks: set,
                    limit: int = 6) -> list | None:
    """The tensors of a minimum vertex cut between ``sources`` and ``sinks`` on the graph's data flow (an
    edge from each input of a node to each of its outputs; ``free`` tensors, initializers and constants,
    are in every part), the cut nearest the sources; None when it needs more than ``limit`` tensors.
    ``uncuttable`` tensors are never in it. Edmonds-Karp on the split-vertex graph: the flow is at
    most ``limit``, so a few breadth-first searches."""
    capacity: dict = collections.defaultdict(int)
    neighbours = collections.defaultdict(set)

    def edge(u, v, c):
        capacity[(u, v)] += c
        neighbours[u].add(v)
        neighbours[v].add(u)

    for name in tensors:
        edge(("in", name), ("out", name), _INF if name in uncuttable else 1)
        if name in sources:
            edge("S", ("in", name), _INF)
        if name in sinks:
            edge(("out", name), "T", _INF)
    for node in graph.node:
        for i in node.input:
            if i in tensors and i not in free:
                for o in node.output:
                    if o in tensors:
                        edge(("out", i), ("in", o), _INF)
    flow: dict = collections.defaultdict(int)

    def residual_reach(stop_at_sink: bool):
        parent = {"S": None}
        queue = collections.deque(["S"])
        while queue:
            u = queue.popleft()
            for v in neighbours[u]:
                if v not in parent and capacity[(u, v)] - flow[(u, v)] > 0:
                    parent[v] = u
                    if v == "T" and stop_at_sink:
                        return parent
                    queue.append(v)
        return parent

    total = 0
    while True:
        parent = residual_reach(True)
        if "T" not in parent:
            break
        path, v = [], "T"
        while parent[v] is not None:
            path.append((parent[v], v))
            v = parent[v]
        push = min(capacity[e] - flow[e] for e in path)
        for u, v in path:
            flow[(u, v)] += push
            flow[(v, u)] -= push
        total += push
        if total > limit:
            return None
    reach = residual_reach(False)
    return sorted(n for n in tensors if ("in", n) in reach and ("out", n) not in reach)


def _past_adapters(name: str, consumers) -> str:
    """``name`` moved forward past type/rank adapters that are its only consumer (a bool mask that is
    cast to float and unsqueezed becomes the float mask the flow multiplies by)."""
    while len(consumers[name]) == 1 and consumers[name][0].op_type in _ADAPTERS:
        name = consumers[name][0].output[0]
    return name


def _needed(graph, wanted: set, given: set) -> list:
    """The nodes, in the graph's order, that compute ``wanted`` from ``given`` (and the initializers)."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    keep, stack = set(), [w for w in wanted if w not in given]
    while stack:
        name = stack.pop()
        index = producer.get(name)
        if index is None or index in keep:
            continue
        keep.add(index)
        stack.extend(i for i in graph.node[index].input if i and i not in given)
    return [graph.node[i] for i in sorted(keep)]


def _submodel(model, name: str, nodes: list, inputs: list, outputs: list) -> bytes:
    from onnx import helper

    used = {i for n in nodes for i in n.input}
    initializers = [init for init in model.graph.initializer if init.name in used]
    graph = helper.make_graph(nodes, f"{model.graph.name or 'piper'}-{name}", inputs, outputs, initializers)
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                            producer_name="piper-gpu-server shape-stable split")
    return sub.SerializeToString()


def _check_split(cut: Cut, model_bytes: bytes, feeds: dict, expected: np.ndarray) -> None:
    """The encoder then the decoder must give the whole model's audio on the probe (noise scales 0)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        encoder = onnxruntime.InferenceSession(cut.encoder, options, providers=["CPUExecutionProvider"])
        decoder = onnxruntime.InferenceSession(cut.decoder, options, providers=["CPUExecutionProvider"])
        made = dict(zip([o.name for o in encoder.get_outputs()], encoder.run(None, feeds)))
        audio = decoder.run(None, {**made, **{n: feeds[n] for n in cut.feed_inputs}})[0]
    except Exception as exc:  # noqa: BLE001
        raise SplitError(f"its split parts do not run ({type(exc).__name__}: {exc})") from exc
    if audio.size != expected.size:
        raise SplitError(f"its split parts give {audio.size} samples on the probe, the whole model {expected.size}")
    snr = snr_db(expected, audio)
    if snr < 80:
        raise SplitError(f"its split parts differ from the whole model on the probe ({snr:.1f} dB)")


class ProviderError(RuntimeError):
    """A session asked for an execution provider came up on another (ONNX Runtime's Python wrapper
    retries a session whose provider fails on its fallback providers, the CPU)."""


def created(model, options, providers: list):
    """An ONNX Runtime session, and what ONNX Runtime's Python wrapper printed while making it (its
    "EP Error ... Falling back to ['CPUExecutionProvider'] and retrying" where the first provider failed)."""
    import onnxruntime

    said = io.StringIO()
    with _CREATING, contextlib.redirect_stdout(said):
        session = onnxruntime.InferenceSession(model, sess_options=options, providers=providers)
    return session, " ".join(line.strip() for line in said.getvalue().splitlines() if line.strip("* \t"))


def arena_spec(cpu_arena: bool, gpu: str | None) -> str:
    """The arenas a session has, as ONNX Runtime's shrinkage run option names them ("cpu:0;gpu:N"): the CPU's
    where its arena is on (ONNX Runtime refuses "cpu" otherwise), ``gpu`` where it runs on CUDA (None: not)."""
    return ";".join(a for a, on in (("cpu:0", cpu_arena), (gpu, gpu is not None)) if on)


def provider_name(provider) -> str:
    """``"CUDAExecutionProvider"`` or ``("CUDAExecutionProvider", {...})`` as the name."""
    return provider if isinstance(provider, str) else provider[0]


def require_provider(model, options, providers: list, what: str):
    """A session on ``providers[0]``, or ProviderError naming ``what``, the providers it came up on and
    ONNX Runtime's own error where it printed one (its C++ errors go to the log before this)."""
    session, said = created(model, options, providers)
    asked, got = provider_name(providers[0]), session.get_providers()
    if got[0] != asked:
        raise ProviderError(f"{what} asked for {asked} came up on {got}: "
                            + (f"ONNX Runtime said: {said}" if said else
                               "ONNX Runtime printed no error here; its own log lines above name the cause"))
    # ONNX Runtime's wrapper would also remake a session on the CPU after a provider failure in a run
    session.disable_fallback()
    return session


class _Session:
    """One ONNX Runtime session whose inputs have one shape, ever: ``run`` refuses any other (``size``
    None: any shape, for the CPU encoder and the decoder of frame fallbacks)."""

    def __init__(self, model: bytes, providers: list, options, dim: str, size: int | None, shapes: dict[str, tuple],
                 what: str):
        if size is not None:
            options.add_free_dimension_override_by_name(dim, size)
        self.session = require_provider(model, options, providers, what)
        self.provider = self.session.get_providers()[0]
        self.cpu_arena = bool(options.enable_cpu_mem_arena)
        self.size = size
        self.shapes = shapes
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.runs = 0
        self.used_since_release = False
        self._lock = threading.Lock()  # pieces of a voice run its sessions from several threads at once

    def run(self, feeds: dict, run_options=None) -> dict:
        if self.size is not None:
            for name, value in feeds.items():
                if value.shape != self.shapes[name]:
                    raise AssertionError(f"shape-stable session of size {self.size} given {name}{list(value.shape)}, "
                                         f"not {list(self.shapes[name])}")
        out = dict(zip(self.outputs, self.session.run(None, feeds, run_options)))
        with self._lock:
            self.runs += 1
            self.used_since_release = True
        return out

    def arenas(self, gpu: str) -> str:
        """The arenas this session has, as ONNX Runtime's shrinkage names them ("cpu:0;gpu:N"; ``gpu``: the
        CUDA provider's): a CPU session has no GPU arena, and one without the CPU arena has none there."""
        return arena_spec(self.cpu_arena, gpu if "CUDA" in self.provider else None)

    def uncount(self) -> None:
        """The last run was the arena's shrinkage, not a piece."""
        with self._lock:
            self.runs -= 1
            self.used_since_release = False


def shared_weights(model: bytes) -> dict:
    """The model's initializers as CPU OrtValues (``SessionOptions.add_initializer``), so that every
    bucket session of a part uses one copy of its weights instead of its own."""
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    return {init.name: onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(init)))
            for init in onnx.load_from_string(model).graph.initializer}


@dataclass
class Buckets:
    """The sessions of a split voice, one per bucket, and what they ran."""

    cut: Cut
    phoneme_buckets: tuple[int, ...]  # empty: one encoder session of any shape (``encoder``)
    frame_buckets: tuple[int, ...]
    encoders: dict[int, _Session] = field(default_factory=dict)
    decoders: dict[int, _Session] = field(default_factory=dict)
    encoder: _Session | None = None  # the encoder without buckets (encoder_provider cpu)
    free_decoder: _Session | None = None  # made at the first piece whose frames fit no bucket
    fallbacks: collections.Counter = field(default_factory=collections.Counter)
    #: frames the pieces needed and frames their decoder sessions ran (the padding is the difference)
    frames_needed: int = 0
    frames_run: int = 0
    warmup_ms: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _decoder_setup: tuple = ()
    _making: threading.Lock = field(default_factory=threading.Lock)  # the unbucketed decoder, made once
    _unmade: Exception | None = None  # why it could not be made (not retried at every long piece)
    _weights: dict = field(default_factory=dict)  # the shared OrtValues, alive as long as the sessions

    @classmethod
    def load(cls, cut: Cut, providers: list, options_factory, phoneme_buckets, frame_buckets,
             input_shapes: dict[str, tuple], encoder: tuple | None = None, share_weights: bool = False) -> "Buckets":
        """``options_factory()``: fresh SessionOptions for each bucket session; ``input_shapes``: the fixed
        shapes of the graph's other inputs (input_lengths, scales, sid); ``phoneme_buckets`` empty or None:
        one encoder session of any shape on ``encoder`` = (providers, options_factory); ``share_weights``:
        the decoder's bucket sessions share one copy of its weights (CPU sessions)."""
        self = cls(cut, tuple(phoneme_buckets or ()), tuple(frame_buckets))
        # the decoder's only: the encoder buckets' graph optimisations fold some of its initializers with
        # each bucket's length, which a shared copy would carry from one session into the next
        weights = {"decoder": shared_weights(cut.decoder)} if share_weights else {}
        self._weights = weights

        def options(factory, part):
            opts = factory()
            for name, value in weights.get(part, {}).items():
                opts.add_initializer(name, value)
            return opts

        other = {n: input_shapes[n] for n in cut.encoder_inputs if n != "input"}
        for size in self.phoneme_buckets:
            self.encoders[size] = _Session(cut.encoder, providers, options(options_factory, "encoder"), PHONEMES_DIM,
                                           size, {**other, "input": (1, size)},
                                           f"the encoder's session for {size} phoneme ids")
        if not self.phoneme_buckets:
            enc_providers, enc_options = encoder or (providers, options_factory)
            self.encoder = _Session(cut.encoder, enc_providers, enc_options(), PHONEMES_DIM, None, other,
                                    "the encoder's session")
        for size in self.frame_buckets:
            self.decoders[size] = _Session(cut.decoder, providers, options(options_factory, "decoder"), FRAMES_DIM,
                                           size, self._decoder_shapes(size), f"the decoder's session for {size} frames")
        self._decoder_setup = (providers, lambda: options(options_factory, "decoder"))
        return self

    def _decoder_shapes(self, size: int) -> dict:
        cut = self.cut
        shapes = {n: (*cut.shapes[n][:-1], size) for n in cut.frame_inputs}
        shapes.update({n: tuple(cut.shapes[n]) for n in (*cut.fixed_inputs, *cut.feed_inputs)})
        return shapes

    @property
    def sessions(self) -> list[_Session]:
        return [*self.encoders.values(), *filter(None, (self.encoder,)), *self.decoders.values(),
                *filter(None, (self.free_decoder,))]

    def providers(self) -> dict[str, str | None]:
        """The provider of the encoder's and of the decoder's sessions (each part's are alike: a session that
        came up on another provider than asked stops the voice)."""
        encoders = [*self.encoders.values(), *filter(None, (self.encoder,))]
        return {"encoder_provider": encoders[0].provider if encoders else None,
                "decoder_provider": next(iter(self.decoders.values())).provider if self.decoders else None}

    def warm(self, feeds: dict, shrinkage=None, gpu: str = "gpu:0") -> float:
        """Runs every bucket once (``feeds``: a probe piece's graph inputs); the milliseconds it took.
        ``shrinkage(arenas)``: RunOptions with arena shrinkage, which hand each bucket's working memory back
        after its run (``gpu``: the GPU's arena), so that start-up peaks at one bucket's memory, not at the
        sum of all of them."""
        started = time.perf_counter()

        def spec(session) -> str:
            return session.arenas(gpu) if shrinkage else ""

        def options(session):
            return shrinkage(spec(session)) if spec(session) else None

        for size, session in self.encoders.items():
            session.run(self._encoder_feeds(feeds, size), options(session))
        made = self._encode(feeds)
        for size, session in self.decoders.items():
            session.run(self._decoder_feeds(made, feeds, size), options(session))
        for session in self.sessions:
            session.runs = 0
            session.used_since_release = not spec(session)  # shrunk after its run, or still holding it
        self.warmup_ms = (time.perf_counter() - started) * 1000
        return self.warmup_ms

    def _encode(self, feeds: dict) -> dict:
        """The encoder's outputs for a probe (warm-up): the smallest bucket's, or the bucketless session's."""
        if self.encoder is not None:
            return self.encoder.run({n: feeds[n] for n in self.cut.encoder_inputs})
        return self.encoders[self.phoneme_buckets[0]].run(self._encoder_feeds(feeds, self.phoneme_buckets[0]))

    def shrink(self, shrinkage, gpu: str = "gpu:0") -> int:
        """Runs each session used since the last call, and that has an arena, once more with
        ``shrinkage(its arenas)``, RunOptions with ONNX Runtime's arena shrinkage (see
        ``voices.Voice.release_if_idle``; ``gpu``: the GPU's arena): how many ran."""
        ran = 0
        for session in self.sessions:
            spec = session.arenas(gpu)
            if session.used_since_release and not spec:
                session.used_since_release = False  # no arena: its memory went back after each run
            elif session.used_since_release:
                shapes = session.shapes if session.size is not None else self._smallest_shapes(session)
                feeds = {n: np.zeros(shape, dtype=self.cut.dtypes[n]) for n, shape in shapes.items()}
                if "input_lengths" in feeds:
                    feeds["input_lengths"][:] = 1
                if "scales" in feeds:
                    feeds["scales"][:] = (0.0, 1.0, 0.0)
                session.run(feeds, shrinkage(spec))
                session.uncount()
                ran += 1
        return ran

    def _smallest_shapes(self, session: _Session) -> dict:
        """A bucketless session's inputs at their smallest: one phoneme id, or one frame."""
        if session is self.encoder:
            return {**session.shapes, "input": (1, 1)}
        return self._decoder_shapes(1)

    @staticmethod
    def bucket(sizes: tuple[int, ...], length: int) -> int | None:
        return next((s for s in sizes if s >= length), None)

    def _encoder_feeds(self, feeds: dict, size: int) -> dict:
        ids = feeds["input"]
        padded = np.zeros((1, size), dtype=ids.dtype)
        real = min(ids.shape[1], size)
        padded[0, :real] = ids[0, :real]
        out = {n: feeds[n] for n in self.cut.encoder_inputs if n != "input"}
        out["input"] = padded
        if real < ids.shape[1]:  # warm-up with a probe longer than the smallest bucket
            out["input_lengths"] = np.array([real], dtype=feeds["input_lengths"].dtype)
        return out

    def _decoder_feeds(self, made: dict, feeds: dict, size: int) -> dict:
        out = {}
        for name in self.cut.frame_inputs:
            value = made[name]
            frames = value.shape[-1]
            padded = np.zeros((*value.shape[:-1], size), dtype=value.dtype)
            padded[..., :min(frames, size)] = value[..., :size]
            out[name] = padded
        out.update({n: made[n] for n in self.cut.fixed_inputs})
        out.update({n: feeds[n] for n in self.cut.feed_inputs})
        return out

    def audio(self, feeds: dict, pad_id: int = 0) -> np.ndarray | None:
        """The piece's audio (1-D, the real frames only), or None when its phoneme ids fit no bucket (it
        then runs on the whole model). Frames that fit no bucket run the encoder's output through a decoder
        session of any shape. Each fallback is counted by its reason: ``phonemes`` or ``frames``."""
        ids = feeds["input"]
        if self.encoder is not None:
            made = self.encoder.run({n: feeds[n] for n in self.cut.encoder_inputs})
        else:
            size = self.bucket(self.phoneme_buckets, ids.shape[1])
            if size is None:
                self._fell_back("phonemes")
                return None
            padded = np.full((1, size), pad_id, dtype=ids.dtype)
            padded[0, :ids.shape[1]] = ids[0]
            made = self.encoders[size].run({**{n: feeds[n] for n in self.cut.encoder_inputs if n != "input"},
                                            "input": padded})
        frames = made[self.cut.frame_inputs[0]].shape[-1]
        frame_size = self.bucket(self.frame_buckets, frames)
        if frame_size is None:
            self._fell_back("frames")
            decoder, frame_size = self._unbucketed_decoder(), frames
        else:
            decoder = self.decoders[frame_size]
        with self._lock:
            self.frames_needed += frames
            self.frames_run += frame_size
        audio = decoder.run(self._decoder_feeds(made, feeds, frame_size))[self._output]
        return audio.reshape(-1)[:frames * self.cut.hop]

    def _unbucketed_decoder(self) -> _Session:
        with self._making:
            if self.free_decoder is None and self._unmade is None:
                providers, options = self._decoder_setup
                try:
                    self.free_decoder = _Session(self.cut.decoder, providers, options(), FRAMES_DIM, None,
                                                 self._decoder_shapes(0), "the decoder's session for longer pieces")
                except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors, ProviderError
                    self._unmade = exc
            if self.free_decoder is None:
                raise RuntimeError(f"a piece longer than the largest frame bucket ({self.frame_buckets[-1]}) "
                                   f"needs a decoder session of any shape, which could not be made: "
                                   f"{type(self._unmade).__name__}: {self._unmade}") from self._unmade
            return self.free_decoder

    @property
    def _output(self) -> str:
        return next(iter(self.decoders.values())).outputs[0]

    def _fell_back(self, reason: str) -> None:
        with self._lock:
            self.fallbacks[reason] += 1

    def usage(self) -> dict:
        return {"encoder_runs": sum(e.runs for e in (*self.encoders.values(), *filter(None, (self.encoder,)))),
                "phoneme_buckets": {str(s): e.runs for s, e in self.encoders.items()},
                "frame_buckets": {str(s): d.runs for s, d in self.decoders.items()},
                "fallbacks": {"phonemes": self.fallbacks["phonemes"], "frames": self.fallbacks["frames"]},
                "unbucketed_decoder_runs": self.free_decoder.runs if self.free_decoder is not None else 0,
                "frames": {"needed": self.frames_needed, "run": self.frames_run}}
