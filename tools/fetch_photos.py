#!/usr/bin/env python
"""Assemble the example photos (real photos of ImageNet-like scenes) into .cache/photos.

    .venv/bin/python tools/fetch_photos.py [--out .cache/photos] [--opencv-deb FILE]

Everything comes from packages, nothing from the web:
  * foolbox 3.3.4 (pip, installed by tools/setup.sh): 20 labelled ImageNet photos
    data/imagenet_NN_<label>.jpg -> foolbox_NN_<label>.jpg (label = ImageNet class id);
  * scikit-image `skimage.data` (only loaders whose image ships inside the package),
    scikit-learn `load_sample_images()`, matplotlib `sample_data/grace_hopper.jpg`;
  * Debian's `opencv-doc` (`apt-get download`, then `dpkg-deb --fsys-tarfile`), from
    usr/share/doc/opencv-doc/examples/data/. Without apt it warns and goes on.

Which photos are kept is decided by content, once, by looking at every candidate (the tables
below); SELECTION_RULE says the rule and SOURCES.md records it with every kept and rejected file.
Labelled photos sort first. Writes labels.json (labelled file -> class id), SOURCES.md and
sources.json. Idempotent: existing photos are reused. Fails if fewer than 40 photos result.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import examples  # noqa: E402

MIN_PHOTOS = 40
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data/"
OPENCV_COPYRIGHT = "usr/share/doc/opencv-doc/copyright"
PREFIXES = ("foolbox_", "mpl_", "opencv_", "skimage_", "sklearn_")  # all sort after 'foolbox_'

SELECTION_RULE = """\
Kept: real photographs whose main subject is something ImageNet-1k has classes for or is made
of: an animal, a person or people, a vehicle, food, a plant, a household object or a few objects
together, a building or street. Rejected, whatever the model says about them: anything that is
not a photograph (drawings, logos, renders, paintings and graffiti, synthetic patterns, masks,
disparity maps), photographs of a texture or material filling the frame, text pages, printed
packaging, sheet music, sudoku, chessboard calibration targets, microscopy and medical images,
astronomy, aerial views, images blurred on purpose for deblurring demos, catalogue sheets of
small specimens, near-duplicates of a kept photo (stereo pairs, consecutive video frames, a
doctored copy: the first is kept), images too small to resize to 224 honestly, and images that
need a download. The tables were made by looking at every candidate; the float model's top-1
probability was looked at only as a hint and is listed below for reference. No quantized model
was consulted."""

# scikit-image loaders (skimage.data.<name>) -> (keep, one-word reason). Only ones whose file
# ships inside the package are used; loaders not listed here are recorded as "unreviewed".
SKIMAGE = {
    "astronaut": (True, "person"),
    "camera": (True, "person"),
    "chelsea": (True, "animal"),
    "coffee": (True, "food"),
    "rocket": (True, "vehicle"),
    "stereo_motorcycle": (True, "vehicle"),  # the left view; the right one is a duplicate
    "cat": (False, "duplicate"),             # same image as chelsea
    "clock": (False, "blurred"),
    "coins": (False, "specimens"),
    "horse": (False, "silhouette"),
    "colorwheel": (False, "synthetic"),
    "logo": (False, "logo"),
    "brick": (False, "texture"),
    "grass": (False, "texture"),
    "gravel": (False, "texture"),
    "moon": (False, "astronomy"),
    "hubble_deep_field": (False, "astronomy"),
    "cell": (False, "microscopy"),
    "immunohistochemistry": (False, "microscopy"),
    "microaneurysms": (False, "medical"),
    "retina": (False, "medical"),
    "page": (False, "text"),
    "text": (False, "text"),
    "checkerboard": (False, "synthetic"),
    "shepp_logan_phantom": (False, "synthetic"),
    "binary_blobs": (False, "synthetic"),
    "lfw_subset": (False, "tiny"),
    # need a download (pooch + network) in scikit-image 0.26: never called here
    "eagle": (False, "download"), "lily": (False, "download"), "skin": (False, "download"),
    "brain": (False, "download"), "cells3d": (False, "download"), "kidney": (False, "download"),
    "human_mitosis": (False, "download"), "nickel_solidification": (False, "download"),
    "palisades_of_vogt": (False, "download"), "protein_transport": (False, "download"),
    "vortex": (False, "download"),
}
SKIMAGE_NOT_IMAGES = {"data_dir", "download_all", "file_hash", "lbp_frontal_face_cascade_filename"}

SKLEARN = {"china": (True, "building"), "flower": (True, "plant")}
MATPLOTLIB = {"grace_hopper.jpg": (True, "person")}

# opencv-doc examples/data images -> (keep, reason). Names not listed: "unreviewed" (rejected).
OPENCV = {
    "aloeL.jpg": (True, "plant"), "apple.jpg": (True, "food"), "baboon.jpg": (True, "animal"),
    "basketball1.png": (True, "people"), "blox.jpg": (True, "objects"),
    "board.jpg": (True, "object"), "box_in_scene.png": (True, "objects"),
    "building.jpg": (True, "building"), "butterfly.jpg": (True, "animal"),
    "chicky_512.png": (True, "animal"), "ela_original.jpg": (True, "object"),
    "fruits.jpg": (True, "food"), "home.jpg": (True, "building"), "left.jpg": (True, "objects"),
    "leuvenA.jpg": (True, "street"), "messi5.jpg": (True, "person"),
    "orange.jpg": (True, "food"), "rubberwhale1.png": (True, "objects"),
    "smarties.png": (True, "food"), "squirrel_cls.jpg": (True, "animal"),
    "stuff.jpg": (True, "objects"),
    "aloeR.jpg": (False, "duplicate"), "basketball2.png": (False, "duplicate"),
    "ela_modified.jpg": (False, "duplicate"), "leuvenB.jpg": (False, "duplicate"),
    "right.jpg": (False, "duplicate"), "rubberwhale2.png": (False, "duplicate"),
    "Blender_Suzanne1.jpg": (False, "render"), "Blender_Suzanne2.jpg": (False, "render"),
    "ml.png": (False, "render"), "HappyFish.jpg": (False, "drawing"),
    "cards.png": (False, "synthetic"), "LinuxLogo.jpg": (False, "logo"),
    "WindowsLogo.jpg": (False, "logo"), "opencv-logo.png": (False, "logo"),
    "opencv-logo-white.png": (False, "logo"), "aero1.jpg": (False, "aerial"),
    "aero3.jpg": (False, "aerial"), "aloeGT.png": (False, "disparity"),
    "box.png": (False, "packaging"), "chessboard.png": (False, "chessboard"),
    "detect_blob.png": (False, "synthetic"), "digits.png": (False, "text"),
    "ellipses.jpg": (False, "synthetic"), "gradient.png": (False, "synthetic"),
    "graf1.png": (False, "graffiti"), "graf3.png": (False, "graffiti"),
    "imageTextN.png": (False, "text"), "imageTextR.png": (False, "text"),
    "licenseplate_motion.jpg": (False, "blurred"), "mask.png": (False, "mask"),
    "tmpl.png": (False, "mask"), "templ.png": (False, "mask"), "notes.png": (False, "music"),
    "pca_test1.jpg": (False, "silhouettes"), "starry_night.jpg": (False, "painting"),
    "sudoku.png": (False, "text"), "text_defocus.jpg": (False, "text"),
    "text_motion.jpg": (False, "text"),
    **{f"pic{i}.png": (False, "synthetic") for i in range(1, 7)},
    **{f"{side}{i:02d}.jpg": (False, "chessboard") for side in ("left", "right")
       for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)},
}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")


def log(msg: str) -> None:
    print(f"[fetch_photos] {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"[fetch_photos] WARNING: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# writing


def _existing(out: Path, stem: str) -> Path | None:
    for ext in (".jpg", ".png"):
        if (out / (stem + ext)).is_file() and (out / (stem + ext)).stat().st_size > 0:
            return out / (stem + ext)
    return None


def save_photo(out: Path, stem: str, data: bytes | None = None, array=None) -> Path:
    """Write one photo as out/stem.jpg (an RGB JPEG's bytes, unchanged) or out/stem.png (anything
    else, decoded and converted to RGB; alpha is dropped as OpenCV's imread does). Atomic."""
    from PIL import Image

    if data is not None:
        im = Image.open(io.BytesIO(data))
        im.load()
    else:
        import numpy as np

        a = np.asarray(array)
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif a.dtype != np.uint8:
            a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
        im = Image.fromarray(a)
    if data is not None and im.format == "JPEG" and im.mode == "RGB":
        path, payload = out / (stem + ".jpg"), data
    else:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
        path, payload = out / (stem + ".png"), buf.getvalue()
    examples.atomic_write_bytes(path, payload)
    return path


class Collector:
    """Collects kept photos (written or reused) and rejected candidates for SOURCES.md."""

    def __init__(self, out: Path, previous: dict):
        self.out, self.previous = out, previous
        self.kept: list[dict] = []
        self.rejected: list[dict] = []
        self.reused = self.written = 0

    def have(self, stem: str) -> Path | None:
        return _existing(self.out, stem)

    def keep(self, stem: str, source: str, origin: str, reason: str, licence: str,
             label: int | None = None, data: bytes | None = None, array=None,
             load=None) -> None:
        path = self.have(stem)
        if path is not None:
            self.reused += 1
        else:
            if load is not None:
                data, array = load()
            path = save_photo(self.out, stem, data=data, array=array)
            self.written += 1
        self.kept.append({"file": path.name, "source": source, "origin": origin,
                          "content": reason, "licence": licence, "label": label,
                          "sha256": examples.sha256_file(path)})

    def reuse_existing(self, source: str, stems: dict[str, str]) -> int:
        """Keep the selected files of `source` ({stem: content}) that are already in the folder
        (when the source itself is not reachable now), with the provenance an earlier run
        recorded in sources.json where there is one. Returns how many."""
        previous = {Path(e["file"]).stem: e for e in self.previous.get("kept", [])
                    if e.get("source") == source}
        n = 0
        for stem, content in sorted(stems.items()):
            path = self.have(stem)
            if path is None:
                continue
            entry = previous.get(stem) or {
                "source": source, "origin": f"{source} (reused; not recorded)",
                "content": content, "licence": "see an earlier SOURCES.md", "label": None}
            self.kept.append(dict(entry, file=path.name, sha256=examples.sha256_file(path)))
            self.reused += 1
            n += 1
        return n

    def reject(self, source: str, origin: str, reason: str) -> None:
        self.rejected.append({"source": source, "origin": origin, "reason": reason})


# ---------------------------------------------------------------------------------------------
# sources


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def add_foolbox(col: Collector) -> None:
    d = _package_dir("foolbox")  # not imported: it needs eagerpy
    files = sorted(glob.glob(str(d / "data" / "imagenet_*_*.jpg"))) if d else []
    if not files:
        warn(f"foolbox's labelled ImageNet photos not found ({'no foolbox package' if not d else d}"
             f"); run `bash tools/setup.sh`")
        return
    ver = _dist_version("foolbox")
    for f in files:
        name = os.path.basename(f)
        label = examples.label_from_name(name)
        idx = name.split("_")[1]
        col.keep(f"foolbox_{idx}_{label}", "foolbox", f"foolbox {ver}: foolbox/data/{name}",
                 "labelled", "photo from the ImageNet validation set as shipped by foolbox "
                 "(package MIT licence); ImageNet's terms of access apply to the photo",
                 label=label, load=lambda f=f: (Path(f).read_bytes(), None))


def _skimage_licence(fn) -> str:
    """The copyright/licence sentences of a skimage.data loader's docstring."""
    import re

    doc = " ".join((fn.__doc__ or "").split())
    doc = re.sub(r"`([^`<]*?)\s*<([^>]+)>`_+", r"\1 (\2)", doc)  # rst links -> "text (url)"
    doc = re.sub(r"\.\. \w+::.*?(?=\b\w+ -{3,}|$)", "", doc)  # drop rst directive blocks
    doc = re.sub(r"\b\w+\s+-{3,}\s*", "", doc)  # drop numpydoc section headers
    found = [x.strip().rstrip(".") for x in re.split(r"(?<=\.)\s+", doc)
             if any(k in x.lower() for k in ("copyright", "public domain", "cc0", "licen"))]
    if found:
        return ". ".join(found) + " (skimage.data docstring)"
    return "no licence note in its docstring; scikit-image itself is BSD-3-Clause"


def add_skimage(col: Collector) -> None:
    try:
        import skimage
        import skimage.data as sd
    except ImportError:
        warn("scikit-image is not installed (run `bash tools/setup.sh`); skipping its photos")
        return
    ver = skimage.__version__
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # a loader that tries to download must not hang
    try:
        for name in sorted(set(sd.__all__) - SKIMAGE_NOT_IMAGES):
            keep, reason = SKIMAGE.get(name, (False, "unreviewed"))
            fn = getattr(sd, name, None)
            if not keep or fn is None:
                col.reject("scikit-image", f"skimage.data.{name}()", reason)
                continue
            stem = "skimage_motorcycle_left" if name == "stereo_motorcycle" else f"skimage_{name}"

            def load(fn=fn, name=name):
                img = fn()
                return None, (img[0] if name == "stereo_motorcycle" else img)

            try:
                col.keep(stem, "scikit-image", f"scikit-image {ver}: skimage.data.{name}()"
                         + ("[0] (left view)" if name == "stereo_motorcycle" else ""),
                         reason, _skimage_licence(fn), load=load)
            except Exception as e:  # e.g. needs pooch / the network in another version
                warn(f"skimage.data.{name}() did not load offline ({type(e).__name__}: {e}); "
                     f"skipped")
                col.reject("scikit-image", f"skimage.data.{name}()", "download")
    finally:
        socket.setdefaulttimeout(old_timeout)


def _sklearn_licences(readme: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not readme.is_file():
        return out
    for block in readme.read_text().split("Image: ")[1:]:
        lines = [x.strip() for x in block.splitlines() if x.strip()]
        refs = {x.split("]")[0] + "]": x.split("]", 1)[1].strip() for x in lines
                if x.startswith("[")}
        text = [x for x in lines[1:] if not x.startswith("[")]
        note = " ".join(text)
        for ref, url in refs.items():
            note = note.replace(ref, f"({url})")
        out[lines[0]] = note + " (sklearn/datasets/images/README.txt)"
    return out


def add_sklearn(col: Collector) -> None:
    try:
        import sklearn
        from sklearn.datasets import load_sample_images
    except ImportError:
        warn("scikit-learn is not installed (run `bash tools/setup.sh`); skipping its photos")
        return
    bunch = load_sample_images()
    licences = _sklearn_licences(Path(bunch.filenames[0]).parent / "README.txt")
    for path, image in zip(bunch.filenames, bunch.images, strict=True):
        base = os.path.basename(path)
        stem = os.path.splitext(base)[0]
        keep, reason = SKLEARN.get(stem, (False, "unreviewed"))
        if not keep:
            col.reject("scikit-learn", f"load_sample_images(): {base}", reason)
            continue
        col.keep(f"sklearn_{stem}", "scikit-learn",
                 f"scikit-learn {sklearn.__version__}: load_sample_images() {base}", reason,
                 licences.get(base, "see sklearn/datasets/images/README.txt"),
                 load=lambda p=path, a=image: ((Path(p).read_bytes(), None)
                                               if os.path.isfile(p) else (None, a)))


def add_matplotlib(col: Collector) -> None:
    d = _package_dir("matplotlib")
    if d is None:
        warn("matplotlib is not installed (run `bash tools/setup.sh`); skipping grace_hopper")
        return
    ver = _dist_version("matplotlib")
    for base, (keep, reason) in MATPLOTLIB.items():
        path = d / "mpl-data" / "sample_data" / base
        if not keep:
            col.reject("matplotlib", f"mpl-data/sample_data/{base}", reason)
            continue
        if not path.is_file():
            warn(f"{path} not found; skipped")
            continue
        col.keep(f"mpl_{os.path.splitext(base)[0]}", "matplotlib",
                 f"matplotlib {ver}: mpl-data/sample_data/{base}", reason,
                 "no licence note in the package's sample_data README; the photograph of "
                 "Grace Hopper is a U.S. Navy photo, generally given as public domain",
                 load=lambda p=path: (p.read_bytes(), None))


def _run(cmd: list[str], cwd: str | None = None, timeout: int = 600):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def cached_opencv_deb() -> Path | None:
    """An opencv-doc .deb already in apt's package cache (apt-get install leaves it there)."""
    cached = sorted(glob.glob("/var/cache/apt/archives/opencv-doc_*.deb"))
    return Path(cached[-1]) if cached else None


def download_opencv_doc(tmp: str) -> Path | None:
    """apt-get download opencv-doc into tmp (apt-get update once if the lists lack it)."""
    if not shutil.which("apt-get"):
        warn("apt-get not found (not a Debian-like system): skipping opencv-doc photos")
        return None
    os.chmod(tmp, 0o755)  # so apt's sandbox user can write there
    for attempt in range(2):
        try:
            r = _run(["apt-get", "download", "opencv-doc"], cwd=tmp)
        except (subprocess.TimeoutExpired, OSError) as e:
            warn(f"apt-get download opencv-doc failed: {e}")
            return None
        debs = sorted(Path(tmp).glob("opencv-doc_*.deb"))
        if r.returncode == 0 and debs:
            return debs[-1]
        if attempt == 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            log("apt-get download opencv-doc failed; running apt-get update once and retrying")
            try:
                _run(["apt-get", "update", "-qq"], timeout=300)
            except (subprocess.TimeoutExpired, OSError):
                pass
            continue
        err = (r.stderr or r.stdout).strip().splitlines()
        warn("apt-get download opencv-doc failed (apt unreachable?): "
             + (err[-1] if err else f"exit {r.returncode}"))
        return None
    return None


def read_opencv_deb(deb: Path) -> tuple[dict[str, bytes], list[str], str, str]:
    """(kept image bytes by name, all image names in examples/data, copyright text, version)."""
    if not shutil.which("dpkg-deb"):
        raise RuntimeError("dpkg-deb not found")
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip() or "?"
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    images: dict[str, bytes] = {}
    names: list[str] = []
    copyright_text = ""
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if not m.isfile():
                    continue
                if name == OPENCV_COPYRIGHT:
                    copyright_text = tar.extractfile(m).read().decode("utf-8", "replace")
                elif (name.startswith(OPENCV_DATA) and "/" not in name[len(OPENCV_DATA):]
                      and name.lower().endswith(IMAGE_EXTS)):
                    base = name[len(OPENCV_DATA):]
                    names.append(base)
                    if OPENCV.get(base, (False, ""))[0]:
                        images[base] = tar.extractfile(m).read()
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", "replace")
        proc.stderr.close()
        if proc.wait() != 0:
            raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {err.strip()}")
    return images, sorted(names), copyright_text, version


def _debian_licence(copyright_text: str) -> str:
    """The License of the `Files: *` stanza of a debian/copyright file."""
    for stanza in copyright_text.split("\n\n"):
        lines = stanza.strip().splitlines()
        if lines and lines[0].strip() == "Files: *":
            for line in lines:
                if line.startswith("License:"):
                    return line.split(":", 1)[1].strip()
    return "?"


def add_opencv(col: Collector, deb_path: str | None, skip: bool) -> str | None:
    selected = {base: "opencv_" + os.path.splitext(base)[0] for base, (k, _) in OPENCV.items()
                if k}
    contents = {stem: OPENCV[base][1] for base, stem in selected.items()}
    recorded = {Path(e["file"]).stem for e in col.previous.get("kept", [])
                if e.get("source") == "opencv-doc"}
    if skip:
        n = col.reuse_existing("opencv-doc", contents)
        warn(f"--no-opencv: skipping Debian opencv-doc ({n} of its photos already there, "
             f"reused)")
        return col.previous.get("opencv_doc") if n else None
    if not deb_path and all(col.have(s) and s in recorded for s in contents):
        col.reuse_existing("opencv-doc", contents)
        col.rejected += col.previous.get("rejected_opencv", [])
        log(f"opencv-doc: all {len(contents)} selected photos already there (reused)")
        return col.previous.get("opencv_doc")
    with tempfile.TemporaryDirectory(prefix="opencv-doc.") as tmp:
        if deb_path:
            deb = Path(deb_path)
        else:
            deb = cached_opencv_deb()
            if deb is None:
                log("downloading Debian's opencv-doc with apt-get download (about 96 MB)")
                deb = download_opencv_doc(tmp)
        if deb is None:
            n = col.reuse_existing("opencv-doc", contents)
            warn(f"continuing without opencv-doc ({n} of its photos already there, reused)")
            return col.previous.get("opencv_doc") if n else None
        try:
            images, names, copyright_text, version = read_opencv_deb(deb)
        except (RuntimeError, OSError, tarfile.TarError) as e:
            n = col.reuse_existing("opencv-doc", contents)
            warn(f"could not read {deb}: {e}; continuing without it ({n} already there, "
                 f"reused)")
            return col.previous.get("opencv_doc") if n else None
    licence = _debian_licence(copyright_text)
    note = (f"{licence}, as Debian's copyright file of opencv-doc says for `Files: *` (the "
            f"upstream provenance of single sample images is not documented there)")
    origin = f"Debian opencv-doc {version}: /{OPENCV_DATA}"
    for base in names:
        keep, reason = OPENCV.get(base, (False, "unreviewed"))
        if not keep:
            col.reject("opencv-doc", base, reason)
    for base in sorted(selected):
        if base not in images:
            warn(f"opencv-doc {version} has no examples/data/{base}; skipped")
            continue
        col.keep(selected[base], "opencv-doc", origin + base, OPENCV[base][1], note,
                 data=images[base])
    return f"opencv-doc {version}"


# ---------------------------------------------------------------------------------------------
# outputs


def float_check(out: Path, kept: list[dict]) -> dict | None:
    """Float EfficientNet-Lite0 on every kept photo (top-1 class and probability) and its
    accuracy on the labelled ones, with the documented preprocessing."""
    try:
        import numpy as np
        import torch

        model = examples.load_effnet_eager()
    except (ImportError, examples.MissingPackages) as e:
        warn(f"float model check skipped: {e}")
        return None
    names, x, labels = examples.load_photos(examples.EFFNET_PREPROCESS, out)
    logits = examples.float_logits(x, model)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    top1 = {n: (int(p.argmax()), float(p.max())) for n, p in zip(names, probs, strict=True)}
    lab = [n for n in names if n in labels]
    correct = sum(top1[n][0] == labels[n] for n in lab)
    return {"top1": top1, "correct": int(correct), "labelled": len(lab),
            "acc": correct / len(lab) if lab else float("nan"),
            "low_margin": [n for n in names if top1[n][1] < 0.2 and n not in labels],
            "mean_p_unlabelled": float(np.mean([top1[n][1] for n in names if n not in labels]))
            if len(lab) < len(names) else float("nan")}


def write_outputs(out: Path, col: Collector, check: dict | None, opencv: str | None) -> None:
    labels = {k["file"]: k["label"] for k in col.kept if k["label"] is not None}
    (out / examples.LABELS_FILE).write_text(json.dumps(dict(sorted(labels.items())), indent=1)
                                            + "\n")
    kept = sorted(col.kept, key=lambda k: k["file"])
    manifest = {"kept": kept, "rejected": col.rejected, "opencv_doc": opencv,
                "rejected_opencv": [r for r in col.rejected if r["source"] == "opencv-doc"],
                "selection_rule": SELECTION_RULE, "preprocess": examples.EFFNET_PREPROCESS}
    (out / "sources.json").write_text(json.dumps(manifest, indent=1) + "\n")

    by_source: dict[str, int] = {}
    for k in kept:
        by_source[k["source"]] = by_source.get(k["source"], 0) + 1
    md = ["# Example photos", "",
          f"{len(kept)} photos ({len(labels)} labelled: foolbox_NN_<ImageNet class id>.jpg, "
          f"sorted first; labels also in labels.json), assembled by `tools/fetch_photos.py` "
          f"from packages only. By source: "
          + ", ".join(f"{s} {n}" for s, n in sorted(by_source.items())) + ".", "",
          "## Selection rule", "", SELECTION_RULE, "",
          "Photos are stored as shipped when the source is an RGB JPEG, otherwise decoded, "
          "converted to RGB (grayscale replicated, alpha dropped) and stored as PNG.", ""]
    if check:
        md += [f"Float EfficientNet-Lite0, preprocessing `{examples.EFFNET_PREPROCESS}` (short "
               f"side 256 bilinear, centre crop 224, (x - 127) / 128): top-1 accuracy "
               f"{check['acc']:.2f} ({check['correct']}/{check['labelled']}) on the labelled "
               f"photos; mean top-1 probability {check['mean_p_unlabelled']:.2f} on the others "
               f"({len(check['low_margin'])} of them below 0.2: small margins there, so read "
               f"top-1 agreement on them together with KL and SQNR).", ""]
    md += ["## Kept", "", "| file | source | origin | content | float top-1 (p) | licence note |",
           "|---|---|---|---|---|---|"]
    for k in kept:
        t = check["top1"].get(k["file"]) if check else None
        content = f"class {k['label']}" if k["label"] is not None else k["content"]
        md.append(f"| {k['file']} | {k['source']} | {k['origin']} | {content} | "
                  + (f"{t[0]} ({t[1]:.2f})" if t else "-") + f" | {k['licence']} |")
    md += ["", "## Rejected", "", "| source | candidate | reason |", "|---|---|---|"]
    for r in sorted(col.rejected, key=lambda r: (r["source"], r["origin"].lower())):
        md.append(f"| {r['source']} | {r['origin']} | {r['reason']} |")
    (out / "SOURCES.md").write_text("\n".join(md) + "\n")


def remove_stale(out: Path, kept: list[dict]) -> None:
    """Delete images this script wrote earlier (our prefixes) that are no longer selected, so
    that they do not leak into benchmarks that read the whole folder; warn about others."""
    keep = {k["file"] for k in kept}
    for name in examples.list_photos(out):
        if name in keep:
            continue
        if name.startswith(PREFIXES):
            (out / name).unlink()
            log(f"removed {name}: no longer selected")
        else:
            warn(f"{out / name} is not one of ours; it will be read by load_photos()")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=str(examples.PHOTO_DIR), help="default: .cache/photos")
    ap.add_argument("--opencv-deb", help="use this opencv-doc .deb instead of apt-get download")
    ap.add_argument("--no-opencv", action="store_true", help="skip Debian's opencv-doc")
    ap.add_argument("--min", type=int, default=MIN_PHOTOS, help="fail below this many photos")
    ap.add_argument("--no-check", action="store_true", help="skip the float-model check")
    args = ap.parse_args(argv)
    start = time.perf_counter()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        previous = json.loads((out / "sources.json").read_text())
    except (OSError, ValueError):
        previous = {}
    col = Collector(out, previous)
    add_foolbox(col)
    add_skimage(col)
    add_sklearn(col)
    add_matplotlib(col)
    opencv = add_opencv(col, args.opencv_deb, args.no_opencv)
    remove_stale(out, col.kept)

    counts: dict[str, int] = {}
    for k in col.kept:
        counts[k["source"]] = counts.get(k["source"], 0) + 1
    summary = ", ".join(f"{s} {n}" for s, n in counts.items())
    log(f"{len(col.kept)} photos in {out} ({col.written} written, {col.reused} reused): "
        f"{summary}; {len(col.rejected)} candidates rejected (see SOURCES.md)")
    if len(col.kept) < args.min:
        write_outputs(out, col, None, opencv)
        print(f"[fetch_photos] ERROR: only {len(col.kept)} photos, fewer than the {args.min} "
              f"needed. " + ("Debian's opencv-doc provides most of the rest: make apt reach "
                             "the Debian archive (or pass --opencv-deb FILE) and rerun; "
                             if "opencv-doc" not in counts else "")
              + "the package photos need `bash tools/setup.sh`.", file=sys.stderr)
        return 1

    check = None if args.no_check else float_check(out, col.kept)
    write_outputs(out, col, check, opencv)
    elapsed = time.perf_counter() - start
    if check:
        print(f"[fetch_photos] done in {elapsed:.1f} s: {len(col.kept)} photos "
              f"({check['labelled']} labelled) in {out}; float EfficientNet-Lite0 top-1 on the "
              f"labelled: {check['acc']:.2f} ({check['correct']}/{check['labelled']})")
    else:
        print(f"[fetch_photos] done in {elapsed:.1f} s: {len(col.kept)} photos in {out}; "
              f"float top-1 check skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
