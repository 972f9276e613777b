#!/usr/bin/env python
"""Real text for MiniLM: quotes from Debian's `fortunes` package, tokenized, labelled by topic.

    .venv/bin/python tools/fetch_fortunes.py [--out .cache/fortunes] [--per-topic 40]
                                             [--length 128] [--force]

Gets the package with `apt-get download fortunes` (package registries are reachable; no root
needed) and extracts it with `dpkg-deb -x` into <out>; falls back to an installed
/usr/share/games/fortunes, then to `apt-get install fortunes`. Parses the %-separated quote files
of TOPICS, keeps the quotes of MIN_TOKENS..LENGTH tokens (no truncation), draws PER_TOPIC of them
per topic with a fixed seed, and tokenizes them with all-MiniLM-L6-v2's tokenizer.json
(tools/minilm.py) into <out>/tokens.npz:

    input_ids, attention_mask   int64 [N, LENGTH]   (one sample per row; [PAD] = 0, mask 0)
    labels                      int64 [N]           index into topics
    topics                      str [T]

plus <out>/quotes.json (text, topic, tokens) for reading. Deterministic: the same package and
arguments give the same files. Use them with

    rexdeploy compare ART --inputs .cache/fortunes/tokens.npz
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import examples  # noqa: E402
import minilm  # noqa: E402

OUT = examples.CACHE / "fortunes"
TOPICS = ("art", "computers", "education", "food", "law", "love", "medicine", "politics",
          "science", "sports")
QUOTES_SUBDIR = Path("usr/share/games/fortunes")
SYSTEM_DIR = Path("/") / QUOTES_SUBDIR
MIN_TOKENS = 8
SEED = 0


def quote_dir(out: Path) -> tuple[Path, str]:
    """The folder of the quote files and how it was obtained (extracted .deb preferred)."""
    extracted = out / QUOTES_SUBDIR
    if all((extracted / t).is_file() for t in TOPICS):
        return extracted, "reused the extracted package"
    out.mkdir(parents=True, exist_ok=True)
    errors = []
    if shutil.which("apt-get") and shutil.which("dpkg-deb"):
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            r = subprocess.run(["apt-get", "download", "fortunes"], cwd=tmp, capture_output=True,
                               text=True)
            debs = glob.glob(os.path.join(tmp, "fortunes_*.deb"))
            if r.returncode == 0 and debs:
                subprocess.run(["dpkg-deb", "-x", debs[0], str(out)], check=True)
                if all((extracted / t).is_file() for t in TOPICS):
                    return extracted, f"apt-get download: {os.path.basename(debs[0])}"
            errors.append(f"apt-get download: {(r.stderr or r.stdout).strip()[-300:]}")
    if all((SYSTEM_DIR / t).is_file() for t in TOPICS):
        return SYSTEM_DIR, "the installed package"
    if shutil.which("apt-get"):
        r = subprocess.run(["apt-get", "install", "-y", "-q", "fortunes"], capture_output=True,
                           text=True)
        if r.returncode == 0 and all((SYSTEM_DIR / t).is_file() for t in TOPICS):
            return SYSTEM_DIR, "apt-get install"
        errors.append(f"apt-get install: {(r.stderr or r.stdout).strip()[-300:]}")
    raise RuntimeError("cannot get the Debian fortunes package: " + "; ".join(errors or
                       ["apt-get/dpkg-deb not found"]))


def parse_quotes(path: Path) -> list[str]:
    """The quotes of one fortune file (entries separated by lines holding only %), each with
    its whitespace collapsed to single spaces; empty entries dropped."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    quotes = re.split(r"^%\s*$", text, flags=re.MULTILINE)
    return [q for q in (" ".join(e.split()) for e in quotes) if q]


def select(quotes: dict[str, list[str]], counts: dict[str, list[int]], per_topic: int,
           length: int) -> list[tuple[str, str]]:
    """(topic, text) pairs: per topic, `per_topic` quotes of MIN_TOKENS..length tokens drawn
    with a fixed seed, kept in file order."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    chosen = []
    for topic in TOPICS:
        fit = [i for i, c in enumerate(counts[topic]) if MIN_TOKENS <= c <= length]
        if len(fit) < per_topic:
            raise RuntimeError(f"topic {topic}: only {len(fit)} quotes of {MIN_TOKENS}.."
                               f"{length} tokens, {per_topic} wanted")
        picked = sorted(rng.choice(len(fit), per_topic, replace=False))
        chosen += [(topic, quotes[topic][fit[i]]) for i in picked]
    return chosen


def write(out: Path, chosen: list[tuple[str, str]], length: int) -> dict:
    import numpy as np

    texts = [t for _, t in chosen]
    ids, mask, counts = minilm.tokenize(texts, length)
    assert (counts <= length).all()
    labels = np.array([TOPICS.index(topic) for topic, _ in chosen], np.int64)
    path = out / "tokens.npz"
    arrays = {"input_ids": ids, "attention_mask": mask, "labels": labels,
              "topics": np.array(TOPICS)}
    examples._atomic_write(path, lambda tmp: _savez(tmp, arrays))
    records = [{"topic": topic, "tokens": int(c), "text": text}
               for (topic, text), c in zip(chosen, counts)]
    examples._atomic_write(out / "quotes.json", lambda tmp: Path(tmp).write_text(
        json.dumps(records, indent=1, ensure_ascii=False) + "\n"))
    return {"path": path, "n": len(texts), "tokens_mean": float(counts.mean()),
            "tokens_max": int(counts.max()), "sha256": examples.sha256_file(path)}


def _savez(path: str, arrays: dict) -> None:
    """np.savez with fixed zip timestamps, so that equal arrays give equal bytes."""
    import io
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, array in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=str(OUT), help="default: .cache/fortunes")
    ap.add_argument("--per-topic", type=int, default=40, help="quotes per topic (default 40)")
    ap.add_argument("--length", type=int, default=minilm.SEQ_LEN,
                    help=f"token sequence length L (default {minilm.SEQ_LEN}, the model's)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    try:
        folder, how = quote_dir(out)
        quotes = {t: parse_quotes(folder / t) for t in TOPICS}
        full = minilm.load_tokenizer(args.length)
        full.no_truncation()
        full.no_padding()
        counts = {t: [len(e.ids) for e in full.encode_batch(q)] for t, q in quotes.items()}
        info = write(out, select(quotes, counts, args.per_topic, args.length), args.length)
    except (RuntimeError, examples.MissingPackages, subprocess.CalledProcessError) as e:
        print(f"[fetch_fortunes] ERROR: {e}", file=sys.stderr)
        return 2
    total = sum(len(q) for q in quotes.values())
    print(f"[fetch_fortunes] {how}; {total} quotes in {len(TOPICS)} topics; wrote {info['n']} "
          f"({args.per_topic} per topic, {MIN_TOKENS}..{args.length} tokens, mean "
          f"{info['tokens_mean']:.1f}, max {info['tokens_max']}) tokenized to 1x{args.length}; "
          f"sha256 {info['sha256'][:12]}... [{time.perf_counter() - start:.1f} s]")
    print(os.path.abspath(info["path"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
