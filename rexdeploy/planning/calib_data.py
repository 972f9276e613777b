"""Calibration data for `--calib` (docs/algorithms.md sections 3 and 5): synthetic or the user's.

    --calib synthetic[:N]   data-free (default N = 32):
                            CNN given as an eager nn.Module with BatchNorm: images optimised so
                            the BN batch statistics match the running ones (ZeroQ);
                            token model (integer ids feeding an embedding Gather): random ids
                            with sentence-like lengths (padding + attention mask);
                            otherwise: Gaussian inputs, or uniform within --input-range.
    --calib PATH            the user's data: a folder of images (with --preprocess), a folder of
                            .npy/.npz samples, one stacked .npy/.npz file, or a .txt file of
                            sentences (one per line) for a token model with --tokenizer.

User data also sets the activation ranges (observed on it); synthetic data only feeds the
refinement, the data-free ranges stay. Every sample is a feed dict of batch-1 arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rexdeploy.errors import UserError

DEFAULT_SYNTHETIC = 32
MAX_SAMPLES = 4096
CALIB_HINT = ("--calib synthetic (data-free), synthetic:N, a folder of images (with "
              "--preprocess), .npy/.npz files, or a .txt file of sentences (with --tokenizer)")


@dataclass(frozen=True)
class CalibSpec:
    kind: str            # "synthetic" | "path"
    count: int           # synthetic: samples to make; path: at most this many (0: all)
    path: str | None = None


@dataclass(frozen=True, eq=False)
class CalibData:
    samples: list        # [feed dict]
    source: str          # what they are, for the report
    user: bool           # the user's data (ranges come from it) or synthetic


def parse_calib(text: str | None) -> CalibSpec | None:
    """`synthetic`, `synthetic:N` or a path (validated: it must exist)."""
    if text is None:
        return None
    if text == "synthetic" or text.startswith("synthetic:"):
        count = DEFAULT_SYNTHETIC
        if ":" in text:
            try:
                count = int(text.split(":", 1)[1])
            except ValueError:
                raise UserError(f"--calib {text}: N must be a whole number",
                                "e.g. --calib synthetic:32") from None
        if not 1 <= count <= MAX_SAMPLES:
            raise UserError(f"--calib {text}: N must be 1..{MAX_SAMPLES}",
                            "e.g. --calib synthetic:32")
        return CalibSpec("synthetic", count)
    if not os.path.exists(text):
        raise UserError(f"--calib {text}: no such file or folder", f"give {CALIB_HINT}")
    return CalibSpec("path", 0, text)


def calibration_data(spec: CalibSpec, float_model, config, loaded, log,
                     preprocess: str | None = None, tokenizer: str | None = None) -> CalibData:
    """The samples `spec` names, as feed dicts for the float ONNX model."""
    specs = [s.to_dict() for s in config.inputs]
    if spec.kind == "path":
        return _user_data(spec.path, specs, preprocess, tokenizer, config.quant.seed)
    return _synthetic(spec.count, float_model, config, loaded, log)


def _user_data(path: str, specs: list[dict], preprocess, tokenizer, seed) -> CalibData:
    from rexdeploy.inputs import load_inputs

    if os.path.isfile(path) and path.lower().endswith(".txt"):
        samples = _text_samples(path, specs, tokenizer)
        return CalibData(samples, f"{len(samples)} sentences from {path}", True)
    if os.path.isfile(path) and not path.lower().endswith((".npy", ".npz")):
        raise UserError(f"--calib {path}: not a folder, .npy/.npz or .txt file",
                        f"give {CALIB_HINT}")
    samples = [feeds for _, feeds in load_inputs(path, specs, preprocess)]
    if len(samples) > MAX_SAMPLES:  # a fixed-seed subset, not the first files
        import numpy as np

        keep = np.random.default_rng(seed).choice(len(samples), MAX_SAMPLES, replace=False)
        samples = [samples[i] for i in sorted(keep)]
    return CalibData(samples, f"{len(samples)} samples from {path}", True)


def _text_samples(path: str, specs: list[dict], tokenizer: str | None) -> list[dict]:
    """One sample per non-empty line, tokenized to the token inputs' length (padded with 0)."""
    import numpy as np

    if not tokenizer:
        raise UserError(f"--calib {path}: a text file needs the model's tokenizer",
                        "add --tokenizer path/to/tokenizer.json (Hugging Face tokenizers format)")
    if not os.path.isfile(tokenizer):
        raise UserError(f"--tokenizer {tokenizer}: no such file")
    ids_spec = next((s for s in specs if "int" in s.get("dtype", "")
                     and "mask" not in s["name"].lower() and "type" not in s["name"].lower()),
                    None)
    if ids_spec is None:
        raise UserError(f"--calib {path}: a text file feeds token models; this model has no "
                        "integer token-id input", "give images or .npy/.npz samples instead")
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer)
    except ImportError:
        raise UserError("reading a text file needs the `tokenizers` package",
                        "pip install tokenizers") from None
    except Exception as exc:  # the library raises its own exception types
        raise UserError(f"--tokenizer {tokenizer}: cannot read it ({exc})") from None
    length = ids_spec["shape"][-1] if isinstance(ids_spec["shape"][-1], int) else 128
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()][:MAX_SAMPLES]
    if not lines:
        raise UserError(f"--calib {path}: the file holds no text")
    samples = []
    for line in lines:
        ids = tok.encode(line).ids[:length]
        row = np.zeros((1, length), np.int64)
        row[0, :len(ids)] = ids
        mask = np.zeros((1, length), np.int64)
        mask[0, :len(ids)] = 1
        samples.append(_token_feeds(specs, ids_spec["name"], row, mask))
    return samples


def _token_feeds(specs: list[dict], ids_name: str, ids, mask) -> dict:
    import numpy as np

    feeds = {}
    for s in specs:
        dtype = np.dtype(s.get("dtype", "int64"))
        if s["name"] == ids_name:
            feeds[s["name"]] = ids.astype(dtype)
        elif "mask" in s["name"].lower():
            feeds[s["name"]] = mask.astype(dtype)
        else:  # token type ids and the like
            feeds[s["name"]] = np.zeros(ids.shape, dtype)
    return feeds


def _synthetic(n: int, float_model, config, loaded, log) -> CalibData:
    from rexdeploy.planning.observe import integer_input_ranges

    q = config.quant
    tokens = integer_input_ranges(float_model)
    vocab = {name: hi for name, (lo, hi) in tokens.items() if hi > 2}
    if vocab:
        return CalibData(_token_samples(n, config, vocab), f"{n} random token sequences "
                         "(sentence-like lengths)", False)
    if _has_batchnorm(loaded) and len(config.inputs) == 1:
        return CalibData(_bn_samples(n, config, loaded, log), f"{n} images matching the "
                         f"BatchNorm statistics ({q.zeroq_steps} steps)", False)
    from rexdeploy.inputs import synthetic_inputs

    ranges = {name: (lo, hi) for name, lo, hi in q.input_ranges}
    ranges.update(tokens)
    samples = [f for _, f in synthetic_inputs([s.to_dict() for s in config.inputs], n, q.seed,
                                              ranges)]
    return CalibData(samples, f"{n} Gaussian/uniform inputs", False)


def _has_batchnorm(loaded) -> bool:
    import torch

    if loaded is None or loaded.kind != "module":
        return False
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and
               m.running_mean is not None for m in loaded.obj.modules())


def _bn_samples(n: int, config, loaded, log) -> list[dict]:
    from calib_free.synthetic import bn_matched_inputs
    from rexdeploy.planning.refine import progress_bar

    q = config.quant
    spec = config.inputs[0]
    bounded = next(((lo, hi) for name, lo, hi in q.input_ranges if name == spec.name), None)
    with progress_bar(log, f"synthetic calibration images ({n})", q.zeroq_steps) as advance:
        x = bn_matched_inputs(loaded.obj, spec.concrete_shape(), n=n, steps=q.zeroq_steps,
                              seed=q.seed, bounded=bounded,
                              progress=lambda step, steps, loss: advance(1))
    return [{spec.name: x[i:i + 1].numpy().astype("float32")} for i in range(n)]


def _token_samples(n: int, config, vocab: dict[str, int]) -> list[dict]:
    import torch

    from calib_free.synthetic import random_token_lengths, random_tokens

    specs = [s.to_dict() for s in config.inputs]
    ids_name = next(iter(vocab))
    ids_spec = next(s for s in specs if s["name"] == ids_name)
    length = ids_spec["shape"][-1] if isinstance(ids_spec["shape"][-1], int) else 128
    lengths = random_token_lengths(n, length, config.quant.seed)
    ids = random_tokens(vocab[ids_name], n, length, config.quant.seed)
    pos = torch.arange(length)[None, :]
    mask = (pos < lengths[:, None]).to(torch.int64)
    ids = (ids * mask).numpy()  # padding id 0 after the sentence
    return [_token_feeds(specs, ids_name, ids[i:i + 1], mask.numpy()[i:i + 1])
            for i in range(n)]
