"""Inputs for compare/profile: image folders with preprocessing, .npy/.npz, synthetic."""

import numpy as np
import pytest
from PIL import Image

from rexdeploy.errors import UserError
from rexdeploy.inputs import Preprocess, load_inputs, parse_preprocess, synthetic_inputs

IMG = [{"name": "input", "shape": [1, 3, 24, 24], "dtype": "float32"}]
ARR = [{"name": "x", "shape": [1, 3, 4, 4], "dtype": "float32"}]
TWO = [{"name": "ids", "shape": ["B", 5], "dtype": "int64"},
       {"name": "mask", "shape": ["B", 5], "dtype": "float32"}]


# -- preprocess spec ---------------------------------------------------------------------------
def test_parse_preprocess_full_spec():
    p = parse_preprocess("resize=256,crop=224,scale=1/255,mean=0.485/0.456/0.406,"
                         "std=0.229/0.224/0.225,layout=NCHW,channels=bgr")
    assert p == Preprocess(resize=(256,), crop=(224, 224), scale=1 / 255,
                           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                           layout="nchw", channels="bgr")
    assert parse_preprocess(str(p)) == p
    assert parse_preprocess("resize=224x200,crop=112x100").crop == (112, 100)
    assert parse_preprocess("").resize is None


@pytest.mark.parametrize("spec,match", [
    ("resize=256,size=3", "unknown preprocess key"),
    ("resize", "expected key=value"),
    ("crop=-3", "positive ints"),
    ("mean=1/2", "one value or three"),
    ("std=0", "must not be 0"),
    ("mean=abc", "not a number"),
    ("layout=chw", "layout"),
    ("crop=2,crop=3", "twice"),
])
def test_parse_preprocess_errors(spec, match):
    with pytest.raises(UserError, match=match):
        parse_preprocess(spec)


# -- images ------------------------------------------------------------------------------------
def _png(path, size=(40, 30), color=(255, 0, 128)):
    Image.new("RGB", size, color).save(path)


def test_image_folder_preprocessed_nchw(tmp_path):
    _png(tmp_path / "b.png", (40, 30))
    _png(tmp_path / "a.jpg", (30, 50), (10, 20, 30))
    (tmp_path / "notes.txt").write_text("ignored")
    samples = load_inputs(str(tmp_path), IMG, "resize=24,crop=24,mean=127,std=128")
    assert [sid for sid, _ in samples] == ["a", "b"]
    x = samples[1][1]["input"]
    assert x.shape == (1, 3, 24, 24) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 5, 5], [(255 - 127) / 128, -127 / 128, 1 / 128])
    jpg = samples[0][1]["input"]  # lossy, so only roughly the colour
    np.testing.assert_allclose(jpg[0, :, 12, 12], [(c - 127) / 128 for c in (10, 20, 30)],
                               atol=0.05)


def test_image_folder_nhwc_bgr_per_channel_and_limit(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", (24, 24))
    spec = [{"name": "input", "shape": ["N", 24, 24, 3], "dtype": "float32"}]
    samples = load_inputs(str(tmp_path), spec, "channels=bgr,scale=1/255,mean=0/0/1,std=1/1/2",
                          limit=2)
    assert len(samples) == 2
    x = samples[0][1]["input"]
    assert x.shape == (1, 24, 24, 3)
    np.testing.assert_allclose(x[0, 0, 0], [128 / 255, 0.0, (1 - 1) / 2], atol=1e-6)


def test_ten_crop_views(tmp_path):
    """Centre (the spec's own crop) and four corners of the resized image, each mirrored."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # H 30, W 40: no resize
    Image.fromarray(pixels).save(tmp_path / "p.png")
    spec = [{"name": "input", "shape": [1, 3, 20, 24], "dtype": "float32"}]
    pre = "crop=20x24,mean=127,std=128"
    views = load_inputs(str(tmp_path), spec, pre, views=10)
    assert [sid for sid, _ in views] == ["p@c", "p@c~m", "p@tl", "p@tl~m", "p@tr", "p@tr~m",
                                         "p@bl", "p@bl~m", "p@br", "p@br~m"]
    x = {sid: feeds["input"][0] for sid, feeds in views}
    np.testing.assert_array_equal(x["p@c"], load_inputs(str(tmp_path), spec, pre)[0][1]["input"][0])
    a = (pixels.astype(np.float32) - 127) / 128
    boxes = {"c": (5, 8), "tl": (0, 0), "tr": (0, 16), "bl": (10, 0), "br": (10, 16)}
    for tag, (top, left) in boxes.items():
        want = a[top:top + 20, left:left + 24].transpose(2, 0, 1)
        np.testing.assert_array_equal(x[f"p@{tag}"], want)
        np.testing.assert_array_equal(x[f"p@{tag}~m"], want[:, :, ::-1])
    with pytest.raises(UserError, match="crop size"):
        load_inputs(str(tmp_path), spec, "resize=20x24,mean=127,std=128", views=10)
    np.save(tmp_path / "arrays.npy", np.zeros((1, 3, 20, 24), np.float32))
    with pytest.raises(UserError, match="no folder of images"):
        load_inputs(str(tmp_path / "arrays.npy"), spec, None, views=10)


def test_resize_short_side_then_centre_crop(tmp_path):
    img = np.zeros((60, 80, 3), np.uint8)
    img[:, 40:] = 255  # right half white
    Image.fromarray(img).save(tmp_path / "half.png")
    spec = [{"name": "input", "shape": [1, 3, 24, 32], "dtype": "float32"}]
    x = load_inputs(str(tmp_path), spec, "resize=24")[0][1]["input"]  # 60x80 -> 24x32
    assert x[0, 0, 12, 2] == 0 and x[0, 0, 12, 30] == 255


def test_image_errors(tmp_path):
    with pytest.raises(UserError, match="no images"):
        load_inputs(str(tmp_path), IMG, "crop=24")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="broken.png"):
        load_inputs(str(tmp_path), IMG, "resize=24,crop=24")
    (tmp_path / "broken.png").unlink()
    _png(tmp_path / "ok.png", (40, 30))
    with pytest.raises(UserError, match="needs? a preprocess"):
        load_inputs(str(tmp_path), IMG, None)
    with pytest.raises(UserError, match=r"ok.png.*1x3x32x32.*1x3x24x24"):
        load_inputs(str(tmp_path), IMG, "resize=32,crop=32")
    with pytest.raises(UserError, match="larger than"):
        load_inputs(str(tmp_path), IMG, "crop=64")
    with pytest.raises(UserError, match="one input"):
        load_inputs(str(tmp_path), TWO, "crop=24")
    with pytest.raises(UserError, match="do not exist"):
        load_inputs(str(tmp_path / "nope"), IMG, "crop=24")


# -- arrays ------------------------------------------------------------------------------------
def test_npy_folder_adds_batch_and_casts(tmp_path, rng):
    np.save(tmp_path / "s1.npy", rng.standard_normal((1, 3, 4, 4)))  # float64: cast
    np.save(tmp_path / "s0.npy", rng.standard_normal((3, 4, 4)).astype(np.float32))  # no batch
    samples = load_inputs(str(tmp_path), ARR, None)
    assert [sid for sid, _ in samples] == ["s0", "s1"]
    for _, feeds in samples:
        assert feeds["x"].shape == (1, 3, 4, 4) and feeds["x"].dtype == np.float32


def test_npy_shape_and_dtype_errors(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 5, 4), np.float32))
    with pytest.raises(UserError, match=r"bad.npy: input x is 1x3x5x4, the model expects 1x3x4x4"):
        load_inputs(str(tmp_path), ARR, None)
    (tmp_path / "bad.npy").unlink()
    np.save(tmp_path / "ints.npy", np.zeros((1, 5), np.float32))
    with pytest.raises(UserError, match="float32, the model expects int64"):
        load_inputs(str(tmp_path), [{"name": "ids", "shape": [1, 5], "dtype": "int64"}], None)
    with pytest.raises(UserError, match="feeds one input"):
        load_inputs(str(tmp_path), TWO, None)


def test_npz_folder_keyed_by_name(tmp_path):
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", ids=np.arange(10).reshape(2, 5),
                 mask=np.ones((2, 5), np.float32))
    samples = load_inputs(str(tmp_path), TWO, None)
    assert len(samples) == 3
    assert samples[0][1]["ids"].dtype == np.int64 and samples[0][1]["mask"].shape == (2, 5)
    np.savez(tmp_path / "3.npz", ids=np.zeros((1, 5), np.int64))
    with pytest.raises(UserError, match="3.npz has no array for input.*mask"):
        load_inputs(str(tmp_path), TWO, None)


def test_single_files_with_a_sample_axis(tmp_path, rng):
    np.save(tmp_path / "stack.npy", rng.standard_normal((5, 3, 4, 4)).astype(np.float32))
    samples = load_inputs(str(tmp_path / "stack.npy"), ARR, None)
    assert [sid for sid, _ in samples] == [f"stack[{i}]" for i in range(5)]
    assert samples[0][1]["x"].shape == (1, 3, 4, 4)
    np.save(tmp_path / "full.npy", np.zeros((6, 1, 3, 4, 4), np.float32))
    assert len(load_inputs(str(tmp_path / "full.npy"), ARR, None, limit=4)) == 4
    np.savez(tmp_path / "pair.npz", ids=np.zeros((4, 1, 5), np.int64),
             mask=np.zeros((3, 1, 5), np.float32))
    with pytest.raises(UserError, match="different sample counts"):
        load_inputs(str(tmp_path / "pair.npz"), TWO, None)
    np.save(tmp_path / "flat.npy", np.zeros((5, 48), np.float32))
    with pytest.raises(UserError, match="leading sample axis"):
        load_inputs(str(tmp_path / "flat.npy"), ARR, None)
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(UserError, match="give a folder"):
        load_inputs(str(tmp_path / "x.txt"), ARR, None)


def test_mixed_folder_and_unreadable_array(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 4, 4), np.float32))
    _png(tmp_path / "b.png")
    with pytest.raises(UserError, match="both images"):
        load_inputs(str(tmp_path), ARR, None)
    (tmp_path / "b.png").unlink()
    (tmp_path / "c.npy").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read .*c.npy"):
        load_inputs(str(tmp_path), ARR, None)


# -- synthetic ---------------------------------------------------------------------------------
def test_synthetic_inputs_shapes_dtypes_ranges():
    specs = [{"name": "x", "shape": ["B", 3, 8, 8], "dtype": "float32"},
             {"name": "ids", "shape": [1, 16], "dtype": "int64"},
             {"name": "flag", "shape": [2], "dtype": "bool"}]
    samples = synthetic_inputs(specs, 50, seed=3)
    assert len(samples) == 50 and samples[0][0] == "synthetic-0000"
    xs = np.stack([f["x"] for _, f in samples])
    assert xs.shape == (50, 1, 3, 8, 8) and xs.dtype == np.float32
    assert abs(xs.mean()) < 0.05 and abs(xs.std() - 1) < 0.05
    ids = np.stack([f["ids"] for _, f in samples])
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 100
    assert samples[0][1]["flag"].dtype == np.bool_
    ranged = synthetic_inputs(specs, 20, ranges={"x": (0.0, 6.0), "ids": (5, 7)})
    xr = np.stack([f["x"] for _, f in ranged])
    assert xr.min() >= 0 and xr.max() <= 6 and xr.mean() == pytest.approx(3, abs=0.2)
    assert set(np.unique([f["ids"] for _, f in ranged])) == {5, 6}
    # on a pixel grid: multiples of the step within the range, the same draws otherwise
    step = 1 / 128
    pixels = synthetic_inputs(specs, 20, ranges={"x": (-127 * step, 1.0), "ids": (5, 7)},
                              grids={"x": step})
    codes = np.stack([f["x"] for _, f in pixels]) / step
    assert np.array_equal(codes, np.round(codes)) and codes.min() >= -127 and codes.max() <= 128
    assert len(np.unique(codes)) == 256


def test_synthetic_inputs_are_reproducible_prefixes():
    a = synthetic_inputs(ARR, 3, seed=7)
    b = synthetic_inputs(ARR, 5, seed=7)
    for (_, fa), (_, fb) in zip(a, b):
        np.testing.assert_array_equal(fa["x"], fb["x"])
    assert not np.array_equal(synthetic_inputs(ARR, 1, seed=8)[0][1]["x"], a[0][1]["x"])
    with pytest.raises(UserError):
        synthetic_inputs(ARR, 0)
