"""Fidelity of a test model against a reference: SQNR, cosine, top-1 agreement, KL, max error.

Metrics take outputs stacked over samples (leading axis N) and compute in float64. A
"classifier" output is one that is [N, classes] (classes >= 2) once singleton dims after the
sample axis are dropped, e.g. N stacked [1, 1000] logits, unless every row has unit L2 norm:
that is an "embedding" (an L2-normalised sentence or image embedding), for which top-1 and KL
mean nothing and the nearest-neighbour agreement is reported instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calib_free.metrics import power_db
from rexdeploy.errors import UserError

METRICS = ("sqnr_db", "cosine_mean", "cosine_min", "top1_agreement", "top1_agreement_ci",
           "top1_near_ties", "top1_agreement_decisive", "kl", "max_abs", "nn_agreement")
WORST = 5  # per-sample worst cosines reported
# A reference top-1 probability within this of its top-2 is a near tie: any perturbation, an
# 8-bit build's or the device's own bf16 float, may flip it (EfficientNet-Lite0: 8 of 50 photos)
NEAR_TIE = 0.05


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Pooled signal-to-quantization-noise ratio, dB: 10 log10(sum ref^2 / sum (test-ref)^2).

    inf when equal; -inf when the reference is all zeros and the test is not.
    """
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    return power_db(np.sum(ref ** 2), np.sum((test - ref) ** 2))


def cosine(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine similarity per sample (each sample flattened): shape [N]. Two zero vectors count
    as 1, one zero vector as 0."""
    r = np.asarray(ref, np.float64).reshape(len(ref), -1)
    t = np.asarray(test, np.float64).reshape(len(test), -1)
    nr, nt = np.linalg.norm(r, axis=1), np.linalg.norm(t, axis=1)
    dot = np.sum(r * t, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (nr * nt)
    cos = np.where((nr == 0) & (nt == 0), 1.0, np.where((nr == 0) | (nt == 0), 0.0, cos))
    return np.clip(cos, -1.0, 1.0)


def as_logits(x: np.ndarray) -> np.ndarray | None:
    """[N, classes] view of a stacked output, or None when it is not classifier-shaped."""
    x = np.asarray(x)
    if x.ndim < 2:
        return None
    dims = [d for d in x.shape[1:] if d != 1]
    if len(dims) != 1 or dims[0] < 2:
        return None
    return x.reshape(x.shape[0], dims[0])


def top1_agreement(ref: np.ndarray, test: np.ndarray) -> float | None:
    """Fraction of samples whose arg-max class agrees; None unless classifier-shaped."""
    r, t = as_logits(ref), as_logits(test)
    if r is None or t is None:
        return None
    return float(np.mean(np.argmax(r, axis=1) == np.argmax(t, axis=1)))


def near_ties(ref: np.ndarray, margin: float = NEAR_TIE) -> np.ndarray | None:
    """[N] bool: the samples whose reference top-1 softmax probability is within `margin` of the
    top-2 (coin tosses for top-1 agreement); None unless classifier-shaped."""
    r = as_logits(ref)
    if r is None:
        return None
    p = np.exp(_log_softmax(r.astype(np.float64)))
    top2 = np.sort(p, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) < margin


def agreement_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % for z = 1.96) of an agreement `rate` over `n` decisions.

    Top-1 agreement on a few dozen inputs is coarse: 48 of 50 (0.96) has the interval
    0.865-0.989, which holds 0.97 and 0.98 alike."""
    if n <= 0:
        return (0.0, 1.0)
    den = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / den
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / den
    # it always holds the rate; min/max only keep rounding from saying otherwise at 0 and 1
    return (max(0.0, min(rate, centre - half)), min(1.0, max(rate, centre + half)))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.sum(np.exp(x), axis=1, keepdims=True))


def kl_divergence(ref: np.ndarray, test: np.ndarray) -> float | None:
    """Mean over samples of KL(softmax(ref) || softmax(test)), nats; None unless
    classifier-shaped."""
    r, t = as_logits(ref), as_logits(test)
    if r is None or t is None:
        return None
    lp, lq = _log_softmax(r.astype(np.float64)), _log_softmax(t.astype(np.float64))
    kl = np.sum(np.exp(lp) * (lp - lq), axis=1)
    return float(max(0.0, np.mean(kl)))  # rounding can leave -1e-17


def max_abs_error(ref: np.ndarray, test: np.ndarray) -> float:
    diff = np.abs(np.asarray(test, np.float64) - np.asarray(ref, np.float64))
    return float(diff.max()) if diff.size else 0.0


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose arg-max is the label. logits: [N, classes] (or stacked
    [N, 1, classes]); labels: [N] class indices."""
    x = as_logits(logits)
    labels = np.asarray(labels).reshape(-1)
    if x is None or len(x) != len(labels):
        raise ValueError(f"top1_accuracy: logits {np.shape(logits)} vs labels {labels.shape}")
    return float(np.mean(np.argmax(x, axis=1) == labels))


def is_embedding(x: np.ndarray, tol: float = 1e-3) -> bool:
    """True when a stacked output is [N, D] (D >= 2) with every row of unit L2 norm."""
    v = as_logits(x)
    if v is None or not len(v):
        return False
    norms = np.linalg.norm(v.astype(np.float64), axis=1)
    return bool(np.all(np.abs(norms - 1.0) < tol))


def nearest_neighbours(x: np.ndarray) -> np.ndarray:
    """Index [N] of each row's most cosine-similar other row (x: [N, D], N >= 2)."""
    v = np.asarray(x, np.float64).reshape(len(x), -1)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    return np.argmax(sim, axis=1)


def nn_agreement(ref: np.ndarray, test: np.ndarray) -> float | None:
    """Fraction of samples whose nearest other sample (cosine) is the same under both; None
    with fewer than 3 samples (the neighbour of 2 is forced)."""
    if len(ref) < 3:
        return None
    return float(np.mean(nearest_neighbours(ref) == nearest_neighbours(test)))


def nn_label_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy: the fraction of samples whose nearest other sample (cosine)
    carries the same label (e.g. the topic of a sentence). x: [N, ...], labels: [N]."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(x) or len(x) < 2:
        raise ValueError(f"nn_label_accuracy: {len(x)} samples vs {len(labels)} labels")
    return float(np.mean(labels[nearest_neighbours(x)] == labels))


def output_metrics(ref: np.ndarray, test: np.ndarray, classifier: bool | None = None,
                   positions: bool = True) -> dict:
    """All metrics of one stacked output. classifier: None decides from the shape (an
    embedding, see `is_embedding`, is no classifier); True treats the last axis as classes;
    False leaves top-1/KL out (None). nn_agreement: for embeddings only, else None. positions:
    False where the last axis holds no classes (a Sigmoid's map): no per-position top-1."""
    cos = cosine(ref, test)
    r, t = ref, test
    if classifier is True and as_logits(ref) is None:
        r, t = ref.reshape(-1, ref.shape[-1]), test.reshape(-1, test.shape[-1])
    embedding = classifier is not True and is_embedding(ref)
    cls = classifier is True or (classifier is None and not embedding)
    agree = top1_agreement(r, t) if cls else None
    logits = as_logits(r) if agree is not None else None
    ties = near_ties(r) if logits is not None else None
    decisive = None
    if ties is not None and not ties.all():
        same = np.argmax(logits, axis=1) == np.argmax(as_logits(t), axis=1)
        decisive = float(same[~ties].mean())
    pos = [position_top1(ref[i], test[i]) for i in range(len(ref))] \
        if agree is None and positions else []
    position = float(np.mean(pos)) if pos and all(p is not None for p in pos) else None
    return {"sqnr_db": sqnr_db(ref, test), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()), "top1_agreement": agree,
            "top1_agreement_ci": None if logits is None
            else list(agreement_interval(agree, len(logits))),
            "top1_near_ties": None if ties is None else int(ties.sum()),
            "top1_agreement_decisive": decisive,
            "kl": kl_divergence(r, t) if cls else None, "max_abs": max_abs_error(ref, test),
            "nn_agreement": nn_agreement(ref, test) if embedding else None,
            **({"position_top1": position} if position is not None else {})}


def compare_outputs(ref: dict, test: dict, classifier: bool | None = None,
                    slices: tuple = (), heads: dict | None = None) -> dict:
    """Metrics per output ({"outputs": {name: metrics}}) plus the headline output's metrics at
    the top level (keys METRICS) and its name under "output" (headline_output: the first
    floating-point one). An output is a stacked array [N, ...]
    or, where its shape changes from sample to sample (a dynamic width), a list of N arrays:
    then the metrics are taken sample by sample and pooled (ragged_metrics). slices: (output,
    axis, start, end, label) named parts of an output (OutputSlice), each with its own row.
    heads: output -> Sigmoid/Softmax (model_heads); a Sigmoid's map gets no per-position
    top-1."""
    if set(ref) != set(test):
        raise UserError(f"the models' outputs differ: reference {', '.join(ref)} vs test "
                        f"{', '.join(test)}", "compare builds of the same model")
    per = {}
    for name, r in ref.items():
        t = test[name]
        classes = (heads or {}).get(name) != "Sigmoid"
        if isinstance(r, list) or isinstance(t, list):
            per[name] = ragged_metrics(list(r), list(t), name, positions=classes)
            continue
        r, t = np.asarray(r), np.asarray(t)
        if r.shape != t.shape:
            raise UserError(f"output {name}: reference shape {r.shape} vs test shape {t.shape}")
        per[name] = output_metrics(r, t, classifier, positions=classes)
    for sl in slices:
        if sl.output not in ref:
            raise UserError(f"--output-slice {sl}: the model has no output {sl.output!r}",
                            f"outputs: {', '.join(ref)}")
        r, t = sl.take(ref[sl.output]), sl.take(test[sl.output])
        per[sl.label] = output_metrics(r, t, False if sl.end - sl.start < 2 else None) | \
            {"slice_of": sl.output}
    first = headline_output(ref)
    return {"output": first, **per[first], "outputs": per}


def headline_output(ref: dict) -> str:
    """The output the summary speaks for (worst samples, agreement, accuracy): the first with
    floating-point values, so that an input passed through as an output (ONNX exports that
    return input_ids beside the embedding) is not the one judged; the first if none is."""
    def floating(value) -> bool:
        value = value[0] if isinstance(value, list) and value else value
        return np.issubdtype(np.asarray(value).dtype, np.floating)
    return next((name for name, value in ref.items() if floating(value)), next(iter(ref)))


@dataclass(frozen=True)
class OutputSlice:
    """`--output-slice NAME:AXIS:START:END[=LABEL]`: a named part of one output (a detector's
    head concatenating boxes, objectness and class scores), compared on its own. AXIS counts
    the output's own axes (the sample axis not included)."""

    output: str
    axis: int
    start: int
    end: int
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.output}[{self.axis}:{self.start}:{self.end}]"

    def take(self, x):
        """The slice of a stacked output [N, ...] (or of each array of a ragged list)."""
        if isinstance(x, list):
            return [np.take(np.asarray(a), range(self.start, self.end), axis=self.axis)
                    for a in x]
        x = np.asarray(x)
        if not -x.ndim < self.axis + 1 < x.ndim:
            raise UserError(f"--output-slice {self}: output {self.output} has "
                            f"{x.ndim - 1} axes")
        if not 0 <= self.start < self.end <= x.shape[self.axis + 1]:
            raise UserError(f"--output-slice {self}: {self.start}:{self.end} is outside axis "
                            f"{self.axis} of length {x.shape[self.axis + 1]}")
        return np.take(x, range(self.start, self.end), axis=self.axis + 1)

    def __str__(self) -> str:
        return f"{self.output}:{self.axis}:{self.start}:{self.end}" + \
            (f"={self.name}" if self.name else "")


def parse_output_slice(text: str) -> OutputSlice:
    """NAME:AXIS:START:END[=LABEL]; NAME may hold ":" (read from the right)."""
    spec, _, label = text.partition("=")
    parts = spec.rsplit(":", 3)
    try:
        name, axis, start, end = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
    except (IndexError, ValueError):
        raise UserError(f"bad --output-slice {text!r}: expected NAME:AXIS:START:END[=LABEL]",
                        "e.g. output:1:4:5=objectness (axis 1 of the output, elements 4 to "
                        "5, its own row in the table)") from None
    if start < 0 or end <= start:
        raise UserError(f"bad --output-slice {text!r}: START must be >= 0 and below END")
    return OutputSlice(name, axis, start, end, label.strip())


def ragged_metrics(ref: list, test: list, name: str, positions: bool = True) -> dict:
    """Metrics of an output whose shape changes from sample to sample: SQNR pooled over every
    element of every sample, cosine per sample, the largest error, and for a sequence (classes
    on the last axis) the per-position top-1 agreement. Top-1 over samples and KL are left out
    (there is no one class axis to compare over)."""
    if len(ref) != len(test):
        raise UserError(f"output {name}: {len(ref)} reference samples vs {len(test)} test")
    for r, t in zip(ref, test):
        if np.shape(r) != np.shape(t):
            raise UserError(f"output {name}: reference shape {np.shape(r)} vs test shape "
                            f"{np.shape(t)} on the same input")
    flat_r, flat_t = (np.asarray(_flat(x), np.float64) for x in (ref, test))
    cos = np.array([float(cosine(np.asarray(r).reshape(1, -1), np.asarray(t).reshape(1, -1))[0])
                    for r, t in zip(ref, test)])
    out = dict.fromkeys(METRICS)
    out.update(sqnr_db=sqnr_db(flat_r, flat_t), cosine_mean=float(cos.mean()),
               cosine_min=float(cos.min()), max_abs=max_abs_error(flat_r, flat_t),
               shapes=sorted({str(tuple(np.shape(r))) for r in ref}))
    pos = [position_top1(np.asarray(r), np.asarray(t)) for r, t in zip(ref, test)] \
        if positions else [None]
    if all(p is not None for p in pos):
        out["position_top1"] = float(np.mean(pos))
    return out


def position_top1(ref: np.ndarray, test: np.ndarray) -> float | None:
    """For a sequence output of one sample ([1, T, C] or [T, 1, C]: one non-singleton axis
    besides the last, the classes, C >= 2), the fraction of positions whose arg-max class
    agrees; None for any other shape."""
    dims = [d for d in ref.shape[:-1] if d != 1]
    if ref.ndim < 2 or ref.shape[-1] < 2 or len(dims) != 1:
        return None
    r, t = ref.reshape(-1, ref.shape[-1]), test.reshape(-1, test.shape[-1])
    return float(np.mean(np.argmax(r, axis=-1) == np.argmax(t, axis=-1)))


def run_compare(reference_runner, test_runner, samples: list[tuple[str, dict]],
                progress=None, labels: np.ndarray | None = None, qdq_runner=None,
                tolerance_db: float = 1.0, slices: tuple = (), heads: dict | None = None
                ) -> dict:
    """Run both (active) runners on every sample and compare their outputs.

    progress: called as progress(done, total) after each sample. Returns `compare_outputs`'
    dict plus "worst_samples": the WORST samples of lowest cosine on the headline output
    ([{"id", "cosine", "sqnr_db"}]). labels: one per sample. For a classifier output adds
    "accuracy" (top-1 of the headline output): {"labels", "reference", "test", "drop"} (drop in
    fraction, ref - test); for an embedding "label_1nn", the leave-one-out 1-NN label accuracy
    under the reference and the test model ({"reference", "test"}).
    qdq_runner: the test model's own Q/DQ ONNX in ONNX Runtime, where the test runs on a device:
    adds "device_check" (per output the Q/DQ reference's SQNR against the reference, the
    device's against the Q/DQ reference, and the dB the device loses; "agrees" within
    tolerance_db). heads: output -> Sigmoid/Softmax (model_heads): the device check reads them
    as logits (device_vs_reference), a Sigmoid's map gets no per-position top-1.
    """
    if labels is not None and len(labels) != len(samples):
        raise UserError(f"{len(labels)} labels for {len(samples)} samples")
    if not samples:
        raise UserError("no samples to compare")
    refs: dict[str, list] = {}
    tests: dict[str, list] = {}
    qdqs: dict[str, list] = {}
    runners = ((refs, reference_runner), (tests, test_runner)) + \
        (((qdqs, qdq_runner),) if qdq_runner is not None else ())
    for i, (_sid, feeds) in enumerate(samples):
        for store, runner in runners:
            for name, value in runner.infer(feeds).items():
                store.setdefault(name, []).append(np.asarray(value))
        if progress:
            progress(i + 1, len(samples))
    ref, test = _stack(refs), _stack(tests)
    result = compare_outputs(ref, test, slices=slices, heads=heads)
    if qdq_runner is not None:
        result["device_check"] = device_vs_reference(ref, test, _stack(qdqs), tolerance_db,
                                                     heads)
    first = result["output"]
    if isinstance(ref[first], list):  # shapes vary by sample: per-sample figures only
        cos = np.array([float(cosine(np.asarray(r).reshape(1, -1),
                                     np.asarray(t).reshape(1, -1))[0])
                        for r, t in zip(ref[first], test[first])])
        order = np.argsort(cos, kind="stable")[:WORST]
        result["worst_samples"] = [{"id": samples[i][0], "cosine": float(cos[i]),
                                    "sqnr_db": sqnr_db(ref[first][i], test[first][i])}
                                   for i in order]
        if labels is not None:
            raise UserError("labels need one output shape for all samples")
        return result
    cos = cosine(ref[first], test[first])
    order = np.argsort(cos, kind="stable")[:WORST]
    result["worst_samples"] = [{"id": samples[i][0], "cosine": float(cos[i]),
                                "sqnr_db": sqnr_db(ref[first][i], test[first][i])}
                               for i in order]
    if labels is not None and result.get("nn_agreement") is not None:
        if len(samples) >= 2:
            result["label_1nn"] = {"reference": nn_label_accuracy(ref[first], labels),
                                   "test": nn_label_accuracy(test[first], labels)}
    elif labels is not None:
        result["accuracy"] = _accuracy(ref[first], test[first], labels, first)
    return result


HEADS = ("Sigmoid", "Softmax")  # output heads whose outputs the checks read as logits
LAYOUT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def output_heads(graph) -> dict[str, tuple[str, str]]:
    """output -> (head op, the head's input) for each output of an ONNX GraphProto that a
    Sigmoid or Softmax makes, through layout ops only (a detector's probability map, a
    recogniser's per-position class probabilities)."""
    made = {o: n for n in graph.node for o in n.output}
    heads = {}
    for out in graph.output:
        node = made.get(out.name)
        while node is not None and node.op_type in LAYOUT and node.input:
            node = made.get(node.input[0])
        if node is not None and node.op_type in HEADS:
            heads[out.name] = (node.op_type, node.input[0])
    return heads


def model_heads(path: str) -> dict[str, str]:
    """output -> head op of the ONNX file's outputs that a Sigmoid or Softmax makes."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return {out: op for out, (op, _) in output_heads(graph).items()}


# the smallest probability the checks read back as logits: far out in a Sigmoid's tail the
# runtimes part by orders of magnitude (PP-OCRv4's detector on synthetic inputs: 98.7 % of its
# map exactly 0 in ONNX Runtime, the Q/DQ reference and the float model alike, about 2.5e-12 on
# OpenVINO), so below it the logits say which runtime computed them, not what the model means
HEAD_FLOOR = 1e-6
# under this fraction of a head's float elements above HEAD_FLOOR the output says nothing on
# these inputs (PP-OCRv4's detector on 1/f noise: 0-0.02 %), and the check gives no verdict on it
HEAD_INFORMATIVE = 1e-3


def head_logits(x, head: str) -> np.ndarray:
    """A Sigmoid's or Softmax's output read back as logits above those of HEAD_FLOOR, float64:
    log(p / (1 - p)) and log p (a Softmax's logits up to a constant per row), p clipped to
    [HEAD_FLOOR, 1 - HEAD_FLOOR], less the floor's logit, so an element at or under the floor
    counts 0. On a probability map that is almost 0 everywhere (a detector on synthetic inputs)
    the SQNR of p measures only how far noise lifts an empty map, and swings by tens of dB;
    the logits' does not."""
    p = np.clip(np.asarray(x, np.float64), HEAD_FLOOR, 1.0 - HEAD_FLOOR)
    if head == "Sigmoid":
        return np.log(p) - np.log1p(-p) - (math.log(HEAD_FLOOR) - math.log1p(-HEAD_FLOOR))
    return np.log(p) - math.log(HEAD_FLOOR)


def device_error_db(reference_db: float, device_vs_reference_db: float) -> float:
    """dB of fidelity against the float model a device would lose by departing from its
    reference if its departure were independent of the plan's own error: 10 log10(1 + N_dev /
    N_ref), N_ref the reference's error power against the float model, N_dev the device's
    against the reference."""
    if not math.isfinite(device_vs_reference_db) and device_vs_reference_db > 0:
        return 0.0
    gap = min(reference_db, 300.0) - device_vs_reference_db
    return 10.0 * math.log10(1.0 + 10.0 ** (min(gap, 300.0) / 10.0))


def device_loss_db(reference_db: float, device_db: float, device_vs_reference_db: float
                   ) -> float:
    """What a device loses against its reference, in dB of SQNR against the float model: the
    smaller of the loss measured (reference_db - device_db, >= 0) and the loss its departure
    would cause if independent (device_error_db). Each alone misleads: the measured one swings
    on a few samples where the errors correlate by chance (a folded-BatchNorm EfficientNet-Lite0
    read 1.1 dB on 8 synthetic images, its device 32 dB from its reference, and 0.1 dB better
    on 50 photos), the independent one overstates a runtime whose rounding differs but errs
    alike (EfficientNet-Lite0 on 20 photos: 0.97 dB, measured 0). A runtime that computes
    something else (int8 saturation) loses on both: 16 dB."""
    measured = max(0.0, min(reference_db, 120.0) - min(device_db, 120.0))
    return min(measured, device_error_db(reference_db, device_vs_reference_db))


def device_vs_reference(ref: dict[str, np.ndarray], device: dict[str, np.ndarray],
                        qdq: dict[str, np.ndarray], tolerance_db: float = 1.0,
                        heads: dict[str, str] | None = None) -> dict:
    """Per float output: the Q/DQ reference's SQNR against `ref` (reference_db), the device's
    (device_db), the dB the device loses (loss_db, 0 when it does better) and the device against
    the Q/DQ reference (device_vs_reference_db); "agrees" when no output loses more than
    tolerance_db. heads: output -> Sigmoid/Softmax (model_heads): those outputs are compared as
    logits (head_logits), and their row says so ("on": "logits"); where under HEAD_INFORMATIVE
    of the float elements rise above HEAD_FLOOR the row holds only that fraction
    ("informative") and no verdict."""
    outputs = {}
    for name, samples in ref.items():
        r = _flat(samples)
        if name not in qdq or not np.issubdtype(r.dtype, np.floating):
            continue
        q, d = _flat(qdq[name]), _flat(device[name])
        head = (heads or {}).get(name)
        if head:
            r, q, d = (head_logits(x, head) for x in (r, q, d))
            lifted = float(np.mean(r > 0))
            if lifted < HEAD_INFORMATIVE:  # an empty map: no verdict on it
                outputs[name] = {"on": "logits", "informative": lifted}
                continue
        ref_db, dev_db, dvr = sqnr_db(r, q), sqnr_db(r, d), sqnr_db(q, d)
        outputs[name] = {"reference_db": ref_db, "device_db": dev_db,
                         "loss_db": device_loss_db(ref_db, dev_db, dvr),
                         "device_vs_reference_db": dvr} | ({"on": "logits"} if head else {}) \
            | _per_input_loss(samples, qdq[name], device[name], head)
    return {"outputs": outputs, "loss_db": max(
        (o["loss_db"] for o in outputs.values() if "loss_db" in o), default=0.0),
        "tolerance_db": tolerance_db, "agrees": all(
            loses_within(o, tolerance_db) for o in outputs.values() if "loss_db" in o)}


# the fewest inputs whose per-input losses can clear a pooled loss as scatter (loses_within)
SCATTER_MIN_INPUTS = 4


def _per_input_loss(ref, qdq, device, head: str | None) -> dict:
    """The device's loss against its reference input by input (reference_db - device_db of
    each): {"per_input_loss_db": mean, "per_input_loss_se": its standard error, "inputs": n},
    or {} with fewer than SCATTER_MIN_INPUTS inputs."""
    if len(ref) < SCATTER_MIN_INPUTS:
        return {}
    losses = []
    for r, q, d in zip(ref, qdq, device):
        r, q, d = (np.asarray(x).ravel() for x in (r, q, d))
        if head:
            r, q, d = (head_logits(x, head) for x in (r, q, d))
        losses.append(min(sqnr_db(r, q), 120.0) - min(sqnr_db(r, d), 120.0))
    losses = np.asarray(losses)
    return {"per_input_loss_db": float(losses.mean()),
            "per_input_loss_se": float(losses.std(ddof=1) / np.sqrt(len(losses))),
            "inputs": len(losses)}


def loses_within(row: dict, tolerance_db: float) -> bool:
    """Whether a device_vs_reference row agrees: its loss_db within tolerance_db, or a pooled
    loss the inputs' scatter explains: input by input the device loses no more than twice its
    standard error (PP-OCRv4's recogniser, its device within rounding of its reference layer by
    layer: 1.4 dB pooled on 8 synthetic images, one image 3.4 dB, per input 0.5 +- 0.5 dB; on
    the 77 real lines device and reference both read 18.9 dB). A device that computes something
    else (int8 saturation: 16 dB) loses on every input."""
    if row["loss_db"] <= tolerance_db:
        return True
    mean, se = row.get("per_input_loss_db"), row.get("per_input_loss_se")
    return mean is not None and mean <= 2 * se


def _accuracy(ref: np.ndarray, test: np.ndarray, labels: np.ndarray, name: str) -> dict:
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(ref):
        raise UserError(f"{len(labels)} labels for {len(ref)} samples",
                        "give one label per sample")
    if as_logits(ref) is None:
        raise UserError(f"labels given, but output {name} {ref.shape[1:]} is not a classifier's "
                        "logits")
    acc_ref, acc_test = top1_accuracy(ref, labels), top1_accuracy(test, labels)
    return {"labels": len(labels), "reference": acc_ref, "test": acc_test,
            "drop": acc_ref - acc_test}


def _flat(x) -> np.ndarray:
    """An output's samples as one array: a ragged list (shapes varying by sample) flattened and
    joined, a stacked array as it is."""
    return np.concatenate([np.asarray(a).ravel() for a in x]) if isinstance(x, list) \
        else np.asarray(x)


def _stack(outputs: dict[str, list]) -> dict[str, np.ndarray | list]:
    """Each output's samples stacked [N, ...], or kept as a list where its shape changes from
    sample to sample (inputs of varying width: compared one by one, ragged_metrics)."""
    return {name: np.stack(values) if len({v.shape for v in values}) == 1 else list(values)
            for name, values in outputs.items()}


def _check_captions(check: dict | None) -> list[str]:
    """render_table's lines on the device check (None: no device run)."""
    captions = []
    as_logits_ = [n for n, c in (check or {}).get("outputs", {}).items() if c.get("on")]
    if as_logits_:
        captions.append(f"device check on {', '.join(as_logits_)} as logits (its Sigmoid/Softmax "
                        "read back): a probability map near 0 hides what the device computes")
    empty = [n for n, c in (check or {}).get("outputs", {}).items() if "informative" in c]
    if empty:
        captions.append(f"no device verdict on {', '.join(empty)}: the float output is under "
                        f"{HEAD_FLOOR:g} almost everywhere on these inputs (compare real ones)")
    if check and not check["agrees"]:
        why = check.get("likely_cause") or ("the runtime does not compute what the plan means; "
                                            "--per-layer names the layer where it departs")
        captions.append(f"[bold red]the device loses {check['loss_db']:.1f} dB against its own "
                        f"Q/DQ reference (ONNX Runtime; tolerance {check['tolerance_db']:g} dB): "
                        f"{why}[/]")
    elif check and check["loss_db"] > check["tolerance_db"]:
        row = max((c for c in check["outputs"].values() if "loss_db" in c),
                  key=lambda c: c["loss_db"])
        captions.append(f"device agrees with its Q/DQ reference (ONNX Runtime) within the inputs' "
                        f"scatter: {check['loss_db']:.1f} dB pooled, input by input "
                        f"{row['per_input_loss_db']:.1f} +- {row['per_input_loss_se']:.1f} dB")
    elif check:
        captions.append(f"device within {check['tolerance_db']:g} dB of its Q/DQ reference "
                        f"(ONNX Runtime; loss {check['loss_db']:.2f} dB)")
    return captions


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def render_table(result: dict):
    """A rich Table: one row per output, the worst samples as the caption."""
    from rich.table import Table

    title = "fidelity"
    if "reference" in result or "backend" in result:
        title += f": {result.get('backend', 'test')} vs {result.get('reference', 'reference')}"
    if "samples" in result:
        title += f" on {result['samples']} samples ({result.get('inputs', '')})"
    table = Table(title=title)
    check = result.get("device_check")
    positions = any(m.get("position_top1") is not None for m in result["outputs"].values())
    for col in ("output", "SQNR dB", "cosine mean", "cosine min", "top-1 agree") + \
            (("per-position top-1",) if positions else ()) + ("KL", "NN agree", "max |err|") + \
            (("Q/DQ ref SQNR dB", "device vs ref dB") if check else ()):
        table.add_column(col, justify="left" if col == "output" else "right")
    for name, m in result["outputs"].items():
        extra = ()
        if check:
            c = check["outputs"].get(name, {})
            lost = c.get("loss_db", 0.0) > check["tolerance_db"]
            extra = (_fmt(c.get("reference_db"), ".2f"),
                     ("[bold red]" if lost else "") + _fmt(c.get("device_vs_reference_db"),
                                                           ".2f") + ("[/]" if lost else ""))
        pos = (_fmt(m.get("position_top1"), ".1%"),) if positions else ()
        label = f"  {name}" if m.get("slice_of") else name
        table.add_row(label, _fmt(m["sqnr_db"], ".2f"), _fmt(m["cosine_mean"], ".5f"),
                      _fmt(m["cosine_min"], ".5f"), _fmt(m["top1_agreement"], ".1%"), *pos,
                      _fmt(m["kl"], ".2e"), _fmt(m.get("nn_agreement"), ".1%"),
                      _fmt(m["max_abs"], ".3g"), *extra)
    worst = result.get("worst_samples") or []
    captions = []
    ragged = [n for n, m in result["outputs"].items() if m.get("shapes")]
    if ragged:
        captions.append(f"{', '.join(ragged)}: shape changes from input to input "
                        f"({len(result['outputs'][ragged[0]]['shapes'])} shapes); compared "
                        "input by input, SQNR pooled over all elements")
    if worst:
        captions.append("lowest cosine: " + ", ".join(f"{w['id']} ({w['cosine']:.4f})"
                                                      for w in worst))
    m = result["outputs"].get(result.get("output"), {})
    if m.get("top1_agreement_ci"):
        lo, hi = m["top1_agreement_ci"]
        captions.append(f"top-1 agreement {m['top1_agreement']:.1%}: 95% interval {lo:.1%}-"
                        f"{hi:.1%} (Wilson; more inputs narrow it)")
        if m.get("top1_near_ties") and m.get("top1_agreement_decisive") is not None:
            captions.append(f"{m['top1_near_ties']} of {result.get('samples', '?')} inputs are "
                            f"near ties (reference top-1/top-2 probability within {NEAR_TIE}; "
                            f"any perturbation may flip them): agreement on the others "
                            f"{m['top1_agreement_decisive']:.1%}")
    captions += _check_captions(check)
    acc = result.get("accuracy")
    if acc:
        captions.append(f"top-1 accuracy on {acc['labels']} labels: reference "
                        f"{acc['reference']:.2%}, test {acc['test']:.2%} (drop "
                        f"{100 * acc['drop']:.2f} points)")
    if result.get("label_1nn"):
        nn = result["label_1nn"]
        captions.append(f"1-NN label accuracy of {result['output']}: reference "
                        f"{nn['reference']:.3f}, test {nn['test']:.3f}")
    if captions:
        table.caption = "\n".join(captions)
    return table
