"""Fidelity of a test model against a reference: SQNR, cosine, top-1 agreement, KL, max error.

Metrics take outputs stacked over samples (leading axis N) and compute in float64. A
"classifier" output is one that is [N, classes] (classes >= 2) once singleton dims after the
sample axis are dropped, e.g. N stacked [1, 1000] logits, unless every row has unit L2 norm:
that is an "embedding" (an L2-normalised sentence or image embedding), for which top-1 and KL
mean nothing and the nearest-neighbour agreement is reported instead.
"""

from __future__ import annotations

import math

import numpy as np

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
    noise = float(np.sum((test - ref) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


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


def output_metrics(ref: np.ndarray, test: np.ndarray, classifier: bool | None = None) -> dict:
    """All metrics of one stacked output. classifier: None decides from the shape (an
    embedding, see `is_embedding`, is no classifier); True treats the last axis as classes;
    False leaves top-1/KL out (None). nn_agreement: for embeddings only, else None."""
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
    return {"sqnr_db": sqnr_db(ref, test), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()), "top1_agreement": agree,
            "top1_agreement_ci": None if logits is None
            else list(agreement_interval(agree, len(logits))),
            "top1_near_ties": None if ties is None else int(ties.sum()),
            "top1_agreement_decisive": decisive,
            "kl": kl_divergence(r, t) if cls else None, "max_abs": max_abs_error(ref, test),
            "nn_agreement": nn_agreement(ref, test) if embedding else None}


def compare_outputs(ref: dict[str, np.ndarray], test: dict[str, np.ndarray],
                    classifier: bool | None = None) -> dict:
    """Metrics per output ({"outputs": {name: metrics}}) plus the first output's metrics at the
    top level (keys METRICS) and its name under "output"."""
    if set(ref) != set(test):
        raise UserError(f"the models' outputs differ: reference {', '.join(ref)} vs test "
                        f"{', '.join(test)}", "compare builds of the same model")
    per = {}
    for name, r in ref.items():
        r, t = np.asarray(r), np.asarray(test[name])
        if r.shape != t.shape:
            raise UserError(f"output {name}: reference shape {r.shape} vs test shape {t.shape}")
        per[name] = output_metrics(r, t, classifier)
    first = next(iter(per))
    return {"output": first, **per[first], "outputs": per}


def run_compare(reference_runner, test_runner, samples: list[tuple[str, dict]],
                progress=None, labels: np.ndarray | None = None, qdq_runner=None,
                tolerance_db: float = 1.0) -> dict:
    """Run both (active) runners on every sample and compare their outputs.

    progress: called as progress(done, total) after each sample. Returns `compare_outputs`'
    dict plus "worst_samples": the WORST samples of lowest cosine on the first output
    ([{"id", "cosine", "sqnr_db"}]). labels: one per sample. For a classifier output adds
    "accuracy" (top-1 of the first output): {"labels", "reference", "test", "drop"} (drop in
    fraction, ref - test); for an embedding "label_1nn", the leave-one-out 1-NN label accuracy
    under the reference and the test model ({"reference", "test"}).
    qdq_runner: the test model's own Q/DQ ONNX in ONNX Runtime, where the test runs on a device:
    adds "device_check" (per output the Q/DQ reference's SQNR against the reference, the
    device's against the Q/DQ reference, and the dB the device loses; "agrees" within
    tolerance_db).
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
    result = compare_outputs(ref, test)
    if qdq_runner is not None:
        result["device_check"] = device_vs_reference(ref, test, _stack(qdqs), tolerance_db)
    first = result["output"]
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


def device_vs_reference(ref: dict[str, np.ndarray], device: dict[str, np.ndarray],
                        qdq: dict[str, np.ndarray], tolerance_db: float = 1.0) -> dict:
    """Per float output: the Q/DQ reference's SQNR against `ref` (reference_db), the device's
    (device_db), the dB the device loses (loss_db, 0 when it does better) and the device against
    the Q/DQ reference (device_vs_reference_db); "agrees" when no output loses more than
    tolerance_db."""
    outputs = {}
    for name, r in ref.items():
        if name not in qdq or not np.issubdtype(np.asarray(r).dtype, np.floating):
            continue
        ref_db, dev_db = sqnr_db(r, qdq[name]), sqnr_db(r, device[name])
        outputs[name] = {"reference_db": ref_db, "device_db": dev_db,
                         "loss_db": max(0.0, min(ref_db, 120.0) - min(dev_db, 120.0)),
                         "device_vs_reference_db": sqnr_db(qdq[name], device[name])}
    loss = max((o["loss_db"] for o in outputs.values()), default=0.0)
    return {"outputs": outputs, "loss_db": loss, "tolerance_db": tolerance_db,
            "agrees": bool(loss <= tolerance_db)}


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


def _stack(outputs: dict[str, list]) -> dict[str, np.ndarray]:
    stacked = {}
    for name, values in outputs.items():
        if len({v.shape for v in values}) != 1:
            raise UserError(f"output {name} changes shape across samples "
                            f"({', '.join(sorted({str(v.shape) for v in values}))})",
                            "compare samples of one shape at a time")
        stacked[name] = np.stack(values)
    return stacked


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
    for col in ("output", "SQNR dB", "cosine mean", "cosine min", "top-1 agree", "KL",
                "NN agree", "max |err|") + (("Q/DQ ref SQNR dB", "device vs ref dB")
                                            if check else ()):
        table.add_column(col, justify="left" if col == "output" else "right")
    for name, m in result["outputs"].items():
        extra = ()
        if check:
            c = check["outputs"].get(name, {})
            lost = c.get("loss_db", 0.0) > check["tolerance_db"]
            extra = (_fmt(c.get("reference_db"), ".2f"),
                     ("[bold red]" if lost else "") + _fmt(c.get("device_vs_reference_db"),
                                                           ".2f") + ("[/]" if lost else ""))
        table.add_row(name, _fmt(m["sqnr_db"], ".2f"), _fmt(m["cosine_mean"], ".5f"),
                      _fmt(m["cosine_min"], ".5f"), _fmt(m["top1_agreement"], ".1%"),
                      _fmt(m["kl"], ".2e"), _fmt(m.get("nn_agreement"), ".1%"),
                      _fmt(m["max_abs"], ".3g"), *extra)
    worst = result.get("worst_samples") or []
    captions = []
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
    if check and not check["agrees"]:
        captions.append(f"[bold red]the device loses {check['loss_db']:.1f} dB against its own "
                        f"Q/DQ reference (ONNX Runtime; tolerance {check['tolerance_db']:g} dB): "
                        "the runtime does not compute what the plan means; --per-layer names "
                        "the layer where it departs[/]")
    elif check:
        captions.append(f"device within {check['tolerance_db']:g} dB of its Q/DQ reference "
                        f"(ONNX Runtime; loss {check['loss_db']:.2f} dB)")
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
