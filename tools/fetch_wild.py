#!/usr/bin/env python
"""Models in the wild and their real inputs: four ONNX files from two OCR packages, and
printed text.

    .venv/bin/python tools/fetch_wild.py [--out .cache/wild] [--force]

Models: `pip download --no-deps` of pinned wheels (no package is installed, none of their code
is run); the ONNX files are read out of the wheels into <out>/models/:

    ch_PP-OCRv4_det_infer.onnx   rapidocr-onnxruntime==1.4.4: PP-OCRv4 text detector (DBNet),
                                 input x 1x3xHxW ImageNet-normalised, output a probability map
    ch_PP-OCRv4_rec_infer.onnx   the same wheel: PP-OCRv4 recogniser (SVTR with attention),
                                 input 1x3x48xW in [-1, 1] (W: the line's aspect, at least 320), output [1, T, 6625] softmax
    common_det.onnx              ddddocr==1.6.1: YOLOX-style detector, 1x3x416x416 in 0..255,
                                 output [1, 3549, 6] (box, objectness, class)
    common.onnx                  the same wheel: CNN + LSTM CTC recogniser, 1x1x64xW grey in
                                 [0, 1], W dynamic

Inputs, into <out>/text/: printed-text pages (scikit-image `data.page()` and `data.text()`;
Debian's opencv-doc `imageTextN.png` and `imageTextR.png`, `apt-get download`, then
`dpkg-deb --fsys-tarfile`), and <out>/lines/: the lines of text cut out of them by their
horizontal ink profile, plus 60 lines of the fortunes quotes (tools/fetch_fortunes.py) set in
DejaVu Sans and Serif, for the recognisers. The photos for the detectors come from
tools/fetch_photos.py. Deterministic: the same wheels and packages give the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = {  # package==version -> {member in the wheel: file name}
    "rapidocr-onnxruntime==1.4.4": {
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": "ch_PP-OCRv4_det_infer.onnx",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": "ch_PP-OCRv4_rec_infer.onnx"},
    "ddddocr==1.6.1": {"ddddocr/common_det.onnx": "common_det.onnx",
                       "ddddocr/common.onnx": "common.onnx"},
}
OPENCV_TEXT = ("imageTextN.png", "imageTextR.png")
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data/"


def log(msg: str) -> None:
    print(f"[fetch_wild] {msg}", flush=True)


def fetch_models(out: Path, force: bool) -> list[Path]:
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    wanted = {name for members in WHEELS.values() for name in members.values()}
    if not force and all((models / n).is_file() for n in wanted):
        log(f"models already in {models}")
        return sorted(models / n for n in wanted)
    with tempfile.TemporaryDirectory() as tmp:
        for pin, members in WHEELS.items():
            log(f"pip download --no-deps {pin}")
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                   pin, "-d", tmp], capture_output=True, text=True)
            wheel = next(Path(tmp).glob(pin.split("==")[0].replace("-", "_") + "-*.whl"), None)
            if proc.returncode or wheel is None:
                err = (proc.stderr or proc.stdout).strip().splitlines()
                raise SystemExit(f"pip download {pin} failed: {err[-1] if err else '?'}")
            with zipfile.ZipFile(wheel) as z:
                for member, name in members.items():
                    (models / name).write_bytes(z.read(member))
    for n in sorted(wanted):
        digest = hashlib.sha256((models / n).read_bytes()).hexdigest()[:12]
        log(f"{n}: {(models / n).stat().st_size / 1e6:.1f} MB, sha256 {digest}...")
    return sorted(models / n for n in wanted)


def fetch_text(out: Path, force: bool) -> list[Path]:
    """Printed-text pages from scikit-image and opencv-doc into <out>/text/."""
    import numpy as np
    from PIL import Image

    text = out / "text"
    text.mkdir(parents=True, exist_ok=True)
    pages = []
    try:
        from skimage import data

        for name in ("page", "text"):
            path = text / f"skimage_{name}.png"
            if force or not path.is_file():
                Image.fromarray(np.asarray(getattr(data, name)())).save(path)
            pages.append(path)
    except ImportError:
        log("scikit-image is not installed: skipping its text pages")
    have = [text / f"opencv_{n}" for n in OPENCV_TEXT]
    if force or not all(p.is_file() for p in have):
        for name, blob in _opencv_text().items():
            (text / f"opencv_{name}").write_bytes(blob)
    pages += [p for p in have if p.is_file()]
    log(f"{len(pages)} text pages in {text}")
    return pages


def _opencv_text() -> dict[str, bytes]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fetch_photos

    with tempfile.TemporaryDirectory() as tmp:
        deb = fetch_photos.cached_opencv_deb() or fetch_photos.download_opencv_doc(tmp)
        if deb is None or not shutil.which("dpkg-deb"):
            log("opencv-doc unavailable: skipping its text images")
            return {}
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        found = {}
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                name = m.name[2:] if m.name.startswith("./") else m.name
                base = name[len(OPENCV_DATA):]
                if m.isfile() and name.startswith(OPENCV_DATA) and base in OPENCV_TEXT:
                    found[base] = tar.extractfile(m).read()
        proc.stdout.close()
        proc.wait()
        return found


def cut_lines(pages: list[Path], out: Path, min_height: int = 8) -> list[Path]:
    """Each page's lines of text as grey PNGs: ink is where a pixel is darker than 0.75 of its
    neighbourhood's brightest (an uneven photo of a page too), a line is a run of at least
    `min_height` rows whose ink exceeds 4 % of the page's busiest rows, padded by 3."""
    import numpy as np
    from PIL import Image, ImageFilter

    lines = out / "lines"
    if lines.exists():
        shutil.rmtree(lines)
    lines.mkdir(parents=True)
    written = []
    for page in pages:
        img = Image.open(page).convert("L")
        grey = np.asarray(img, np.float32)
        ground = np.asarray(img.filter(ImageFilter.MaxFilter(15)), np.float32)
        ink = grey < 0.75 * np.maximum(ground, 1.0)
        profile = ink.mean(axis=1)
        busy = profile > 0.04 * np.percentile(profile, 95)
        runs, start = [], None
        for y, on in enumerate(list(busy) + [False]):
            if on and start is None:
                start = y
            elif not on and start is not None:
                if min_height <= y - start <= 80:
                    runs.append((start, y))
                start = None
        for i, (a, b) in enumerate(runs):
            a, b = max(0, a - 3), min(grey.shape[0], b + 3)
            cols = np.where(ink[a:b].mean(axis=0) > 0)[0]
            if cols.size < 16:
                continue
            left, right = max(0, cols[0] - 4), min(grey.shape[1], cols[-1] + 5)
            path = lines / f"{page.stem}_{i:02d}.png"
            Image.fromarray(grey[a:b, left:right].astype(np.uint8)).save(path)
            written.append(path)
    log(f"{len(written)} lines of text in {lines}")
    return written


def render_lines(out: Path, n: int = 60) -> list[Path]:
    """`n` lines of printed text: the fortunes quotes (tools/fetch_fortunes.py) cut at word
    boundaries into lines of at most 40 characters, set in matplotlib's DejaVu Sans and Serif
    at 22-30 px, dark grey on off-white, into <out>/lines/printed_NN.png."""
    import json

    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    quotes = ROOT / ".cache" / "fortunes" / "quotes.json"
    if not quotes.is_file():
        log(f"{quotes} is missing (tools/fetch_fortunes.py): no printed lines rendered")
        return []
    texts = []
    for q in json.loads(quotes.read_text()):
        line = ""
        for word in q["text"].split():
            if len(line) + len(word) + 1 > 40 and line:
                texts.append(line)
                line = ""
            line = f"{line} {word}".strip()
        if line:
            texts.append(line)
        if len(texts) >= n:
            break
    fonts = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
    written = []
    for i, text in enumerate(texts[:n]):
        font = ImageFont.truetype(str(fonts / ("DejaVuSans.ttf" if i % 2 else "DejaVuSerif.ttf")),
                                  22 + 2 * (i % 5))
        left, top, right, bottom = font.getbbox(text)
        img = Image.new("L", (right - left + 16, bottom - top + 12), 240)
        ImageDraw.Draw(img).text((8 - left, 6 - top), text, fill=30, font=font)
        path = out / "lines" / f"printed_{i:02d}.png"
        img.save(path)
        written.append(path)
    log(f"{len(written)} printed lines rendered from the fortunes quotes")
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".cache" / "wild"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    fetch_models(out, args.force)
    cut_lines(fetch_text(out, args.force), out)
    render_lines(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
