#!/usr/bin/env python
"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package into .cache/fashion-mnist.

    .venv/bin/python tools/fetch_fashion_mnist.py [--out .cache/fashion-mnist]

`apt-get download dataset-fashion-mnist`, then `dpkg-deb -x` into a temporary directory, and the
four IDX files (train/t10k images and labels, gzipped) are copied out of
usr/share/datasets/fashion-mnist/ with the package's copyright file (MIT). If the download
cannot run, the package is installed with `apt-get install -y` and the files are copied from
/usr/share/datasets/fashion-mnist/. Idempotent: files already there are reused.

    from fetch_fashion_mnist import load
    images, labels = load("test")    # uint8 [10000, 28, 28], uint8 [10000]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".cache" / "fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
DATA_DIR = "usr/share/datasets/fashion-mnist"
COPYRIGHT = f"usr/share/doc/{PACKAGE}/copyright"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")

# IDX type codes (http://yann.lecun.com/exdb/mnist/ "THE IDX FILE FORMAT"): big-endian data.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array of its shape, native byte order.

    Header: two zero bytes, a type code, the number of dims, then each dim as a big-endian
    uint32; the data follow, row-major. Raises ValueError on a malformed or truncated file.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: {len(data) - header} data bytes for shape {shape} "
                         f"of {dtype} ({count * dtype.itemsize} expected)")
    array = np.frombuffer(data, dtype, count, header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def load(split: str = "test", root: str | os.PathLike = OUT) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of `split` ("train" or "test")."""
    images_name, labels_name = FILES[split]
    images, labels = read_idx(Path(root) / images_name), read_idx(Path(root) / labels_name)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{root}: {split} images {images.shape} vs labels {labels.shape}")
    return images, labels


def fetch(out: Path = OUT) -> Path:
    """Make sure the four IDX files are in `out`; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = [name for pair in FILES.values() for name in pair]
    if all((out / name).is_file() for name in wanted):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        source = _from_download(Path(tmp)) or _from_install()
        for name in wanted:
            shutil.copyfile(source / DATA_DIR / name, out / name)
        if (source / COPYRIGHT).is_file():
            shutil.copyfile(source / COPYRIGHT, out / "COPYRIGHT")
    return out


def _from_download(tmp: Path) -> Path | None:
    """The package unpacked under `tmp`, or None when apt-get download fails."""
    try:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True,
                       capture_output=True, text=True)
        debs = glob.glob(str(tmp / f"{PACKAGE}_*.deb"))
        if not debs:
            return None
        subprocess.run(["dpkg-deb", "-x", debs[0], str(tmp / "root")], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"apt-get download {PACKAGE} failed ({_why(exc)}); trying apt-get install",
              file=sys.stderr)
        return None
    return tmp / "root"


def _from_install() -> Path:
    if not (Path("/") / DATA_DIR).is_dir():
        try:
            subprocess.run(["apt-get", "install", "-y", PACKAGE], check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"cannot get {PACKAGE}: {_why(exc)}\n  run `apt-get update` "
                             f"(as root) and try again, or install {PACKAGE} by hand") from None
    return Path("/")


def _why(exc: Exception) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        lines = (exc.stderr or "").strip().splitlines()
        return lines[-1] if lines else f"exit {exc.returncode}"
    return str(exc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    out = fetch(args.out)
    for split in FILES:
        images, labels = load(split, out)
        print(f"{split}: {images.shape[0]} images {images.shape[1]}x{images.shape[2]}, "
              f"{len(np.unique(labels))} classes ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
