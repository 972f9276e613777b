"""tools/fetch_fashion_mnist.py: the IDX reader on hand-made files (no download)."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import fetch_fashion_mnist as fm  # noqa: E402


def _idx(path: Path, code: int, array: np.ndarray, gz: bool = True) -> Path:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d)
                                                         for d in array.shape)
    data = header + array.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)
    return path


def test_read_idx_images_and_labels(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([9, 0], np.uint8)
    got = fm.read_idx(_idx(tmp_path / "i.gz", 0x08, images))
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(fm.read_idx(_idx(tmp_path / "l", 0x08, labels, gz=False)),
                                  labels)
    floats = np.array([[1.5, -2.0]], np.float32)
    big = fm.read_idx(_idx(tmp_path / "f.gz", 0x0D, floats.astype(">f4")))
    assert big.dtype == np.float32 and big.tolist() == floats.tolist()


def test_load_checks_pairs(tmp_path):
    names = fm.FILES["test"]
    _idx(tmp_path / names[0], 0x08, np.zeros((3, 28, 28), np.uint8))
    _idx(tmp_path / names[1], 0x08, np.array([1, 2, 3], np.uint8))
    images, labels = fm.load("test", tmp_path)
    assert images.shape == (3, 28, 28) and labels.tolist() == [1, 2, 3]
    _idx(tmp_path / names[1], 0x08, np.array([1, 2], np.uint8))
    with pytest.raises(ValueError, match="images"):
        fm.load("test", tmp_path)


@pytest.mark.parametrize("data, match", [
    (b"\x08\x03\x00\x00", "not an IDX"),
    (bytes([0, 0, 0x08, 2, 0, 0, 0, 2]), "truncated"),
    (bytes([0, 0, 0x08, 1, 0, 0, 0, 4, 1, 2]), "data bytes"),
])
def test_read_idx_rejects_malformed(tmp_path, data, match):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(ValueError, match=match):
        fm.read_idx(tmp_path / "bad")
