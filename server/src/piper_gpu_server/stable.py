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
hop before Piper normalises it. A piece longer than the largest bucket runs on the whole model,
counted as a fallback. Every bucket is run once at start-up (``warm``)."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np

#: default buckets: phoneme ids per piece (Piper puts a pad between phonemes: about 2.1 ids per
#: character of English) and frames of audio (hop 256 at 22.05 kHz: 86 a second; about 2.2 per id at
#: length_scale 1). sentence_max_chars (200) gives up to about 430 ids and 950 frames.
PHONEME_BUCKETS = (32, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
FRAME_BUCKETS = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072)
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


def parse_buckets(text: str, what: str) -> tuple[int, ...]:
    """ "64,128,256" as a sorted tuple of distinct positive integers."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"{what} {text!r} must be comma-separated whole numbers, e.g. \"64,128,256\"") from None
    if not values or values[0] < 1:
        raise ValueError(f"{what} {text!r} must list at least one length, each 1 or more")
    return tuple(values)


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
        return {**feeds, **dict(zip(names, session.run(None, feeds)))}

    ids = _probe_ids(phoneme_id_map, 12)
    a = run(_feeds(ids, len(ids), 1.0, pad, has_sid))
    b = run(_feeds(ids, len(ids), 1.7, pad, has_sid))
    for extra in (7, 5, 11, 3, 13):  # a duration near a whole number may round the other way once padded
        c = run(_feeds(ids, len(ids) + extra, 1.0, pad, has_sid))
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
                 nodes=(len(encoder_nodes), len(decoder_nodes)))
    _check_split(result, model_bytes, _feeds(ids, len(ids), 1.0, pad, has_sid), a[output])
    return result


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


class _Session:
    """One ONNX Runtime session whose inputs have one shape, ever: ``run`` refuses any other."""

    def __init__(self, model: bytes, providers: list, options, dim: str, size: int, shapes: dict[str, tuple]):
        import onnxruntime

        options.add_free_dimension_override_by_name(dim, size)
        self.session = onnxruntime.InferenceSession(model, sess_options=options, providers=providers)
        self.size = size
        self.shapes = shapes
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.runs = 0
        self.used_since_release = False

    def run(self, feeds: dict, run_options=None) -> dict:
        for name, value in feeds.items():
            if value.shape != self.shapes[name]:
                raise AssertionError(f"shape-stable session of size {self.size} given {name}{list(value.shape)}, "
                                     f"not {list(self.shapes[name])}")
        out = dict(zip(self.outputs, self.session.run(None, feeds, run_options)))
        self.runs += 1
        self.used_since_release = True
        return out


@dataclass
class Buckets:
    """The sessions of a split voice, one per bucket, and what they ran."""

    cut: Cut
    phoneme_buckets: tuple[int, ...]
    frame_buckets: tuple[int, ...]
    encoders: dict[int, _Session] = field(default_factory=dict)
    decoders: dict[int, _Session] = field(default_factory=dict)
    fallbacks: collections.Counter = field(default_factory=collections.Counter)
    warmup_ms: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, cut: Cut, providers: list, options_factory, phoneme_buckets, frame_buckets,
             input_shapes: dict[str, tuple]) -> "Buckets":
        """``options_factory()``: fresh SessionOptions for each session; ``input_shapes``: the fixed
        shapes of the graph's other inputs (input_lengths, scales, sid)."""
        self = cls(cut, tuple(phoneme_buckets), tuple(frame_buckets))
        for size in self.phoneme_buckets:
            shapes = {n: input_shapes[n] for n in cut.encoder_inputs if n != "input"}
            shapes["input"] = (1, size)
            self.encoders[size] = _Session(cut.encoder, providers, options_factory(), PHONEMES_DIM, size, shapes)
        for size in self.frame_buckets:
            shapes = {n: (*cut.shapes[n][:-1], size) for n in cut.frame_inputs}
            shapes.update({n: tuple(cut.shapes[n]) for n in (*cut.fixed_inputs, *cut.feed_inputs)})
            self.decoders[size] = _Session(cut.decoder, providers, options_factory(), FRAMES_DIM, size, shapes)
        return self

    @property
    def sessions(self) -> list[_Session]:
        return [*self.encoders.values(), *self.decoders.values()]

    def warm(self, feeds: dict, run_options=None) -> float:
        """Runs every bucket once (``feeds``: a probe piece's graph inputs); the milliseconds it took.
        ``run_options`` with arena shrinkage hands each bucket's working memory back after its run,
        so that start-up peaks at one bucket's memory, not at the sum of all of them."""
        started = time.perf_counter()
        for size, session in self.encoders.items():
            session.run(self._encoder_feeds(feeds, size), run_options)
        made = self.encoders[self.phoneme_buckets[0]].run(self._encoder_feeds(feeds, self.phoneme_buckets[0]))
        for size, session in self.decoders.items():
            session.run(self._decoder_feeds(made, feeds, size), run_options)
        for session in self.sessions:
            session.runs = 0
            session.used_since_release = run_options is None
        self.warmup_ms = (time.perf_counter() - started) * 1000
        return self.warmup_ms

    def shrink(self, run_options) -> int:
        """Runs each bucket session used since the last call once more with ``run_options`` (ONNX
        Runtime's arena shrinkage, see ``voices.Voice.release_if_idle``): how many ran."""
        ran = 0
        for session in self.sessions:
            if session.used_since_release:
                feeds = {n: np.zeros(shape, dtype=self.cut.dtypes[n]) for n, shape in session.shapes.items()}
                if "input_lengths" in feeds:
                    feeds["input_lengths"][:] = 1
                if "scales" in feeds:
                    feeds["scales"][:] = (0.0, 1.0, 0.0)
                session.run(feeds, run_options)
                session.runs -= 1
                session.used_since_release = False
                ran += 1
        return ran

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
        """The piece's audio (1-D, the real frames only), or None when it does not fit a bucket (the
        fallback is counted by its reason: ``phonemes`` or ``frames``)."""
        ids = feeds["input"]
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
            return None
        audio = self.decoders[frame_size].run(self._decoder_feeds(made, feeds, frame_size))[self._output]
        return audio.reshape(-1)[:frames * self.cut.hop]

    @property
    def _output(self) -> str:
        return next(iter(self.decoders.values())).outputs[0]

    def _fell_back(self, reason: str) -> None:
        with self._lock:
            self.fallbacks[reason] += 1

    def usage(self) -> dict:
        return {"phoneme_buckets": {str(s): e.runs for s, e in self.encoders.items()},
                "frame_buckets": {str(s): d.runs for s, d in self.decoders.items()},
                "fallbacks": {"phonemes": self.fallbacks["phonemes"], "frames": self.fallbacks["frames"]}}
