"""Inputs for compare and profile: image folders, .npy/.npz files, or synthetic tensors.

Every loader returns a list of `(sample_id, feeds)`, feeds being `{input name: array}` with the
shape and dtype of the model's input specs (`InputSpec.to_dict()` form: `{"name", "shape",
"dtype"}`, a str in `shape` being a named dynamic dim).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace

from rexdeploy.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
ARRAY_EXTS = (".npy", ".npz")
PREPROCESS_EXAMPLE = ("resize=256,crop=224,scale=1/255,mean=0.485/0.456/0.406,"
                      "std=0.229/0.224/0.225")


# -- preprocessing -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocess:
    """How one image becomes one input tensor: x = (pixel * scale - mean) / std.

    resize: (h, w) exact, or (s,) to scale the short side to s pixels (bilinear); None: keep.
    crop: (h, w) centre crop; None: none. pixel: 0..255 per channel. mean/std: one value or
    three (per channel, in `channels` order). layout: nchw | nhwc | auto (from the input's
    shape: channels where the 1 or 3 is). channels: rgb | bgr (grayscale when the input has 1).
    """

    resize: tuple[int, ...] | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0
    layout: str = "auto"
    channels: str = "rgb"

    def __post_init__(self):
        if self.layout not in ("auto", "nchw", "nhwc"):
            raise UserError(f"preprocess layout={self.layout}: use nchw, nhwc or auto")
        if self.channels not in ("rgb", "bgr"):
            raise UserError(f"preprocess channels={self.channels}: use rgb or bgr")
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, 3):
                raise UserError(f"preprocess {key}: give one value or three (r/g/b)")
        if any(s == 0 for s in self.std) or self.scale == 0:
            raise UserError("preprocess std and scale must not be 0")

    def value_range(self) -> tuple[float, float]:
        """(lo, hi) of the values this spec gives: pixels 0 and 255 through it, over channels."""
        ends = [(p * self.scale - m) / s for p in (0.0, 255.0)
                for m, s in zip(_per_channel(self.mean), _per_channel(self.std))]
        return float(min(ends)), float(max(ends))

    def pixel_step(self) -> float | None:
        """The spacing of the values this spec gives, when every channel's lie on one grid of
        integer multiples of it: one std for all channels and mean / scale an integer, so pixel
        p gives (p - mean / scale) * step. None otherwise (e.g. ImageNet's per-channel std)."""
        steps, offsets = self.channel_grid()
        if len(set(steps)) != 1 or self.std[0] < 0 or \
                any(abs(o - round(o)) > 1e-6 for o in offsets):
            return None
        return abs(steps[0])

    def channel_grid(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(steps, offsets) per channel, in the input's channel order: pixel p of channel c
        gives (p - offsets_c) * steps_c."""
        means, stds = _per_channel(self.mean), _per_channel(self.std)
        return (tuple(self.scale / s for s in stds), tuple(m / self.scale for m in means))

    def __str__(self) -> str:
        parts = []
        if self.resize:
            parts.append("resize=" + "x".join(map(str, self.resize)))
        if self.crop:
            parts.append("crop=" + "x".join(map(str, self.crop)))
        parts += [f"scale={_num(self.scale)}", "mean=" + "/".join(map(_num, self.mean)),
                  "std=" + "/".join(map(_num, self.std)),
                  f"layout={self.layout}", f"channels={self.channels}"]
        return ",".join(parts)


def _per_channel(values: tuple[float, ...]) -> tuple[float, ...]:
    return values * 3 if len(values) == 1 else values


def _num(x: float) -> str:
    """Short, and exact enough to parse back to the same float."""
    return f"{x:g}" if float(f"{x:g}") == x else repr(x)


def parse_preprocess(spec: str) -> Preprocess:
    """Parse "key=value,..." into a Preprocess. Keys (all optional):

    resize=256 (short side) or resize=224x224 (HxW exact); crop=224 or crop=224x192 (HxW,
    centre); scale=1/255 or scale=0.0039 (applied to 0..255 pixels first); mean=127 or
    mean=0.485/0.456/0.406; std=128 or std=0.229/0.224/0.225; layout=nchw|nhwc|auto;
    channels=rgb|bgr. Example: "resize=256,crop=224,mean=127,std=128".
    """
    fields: dict = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise UserError(f"bad preprocess item {item!r} in {spec!r}: expected key=value",
                            f"e.g. {PREPROCESS_EXAMPLE}")
        if key in fields:
            raise UserError(f"preprocess {key} is given twice in {spec!r}")
        if key in ("resize", "crop"):
            fields[key] = _dims(key, value, spec)
        elif key in ("mean", "std"):
            fields[key] = tuple(_number(key, v, spec) for v in value.split("/"))
        elif key == "scale":
            num, _, den = value.partition("/")
            den_value = _number(key, den, spec) if den else 1.0
            if den_value == 0:
                raise UserError(f"preprocess scale={value} in {spec!r} divides by 0",
                                "e.g. scale=1/255")
            fields[key] = _number(key, num, spec) / den_value
        elif key in ("layout", "channels"):
            fields[key] = value.lower()
        else:
            raise UserError(f"unknown preprocess key {key!r} in {spec!r}",
                            "keys: resize, crop, scale, mean, std, layout, channels")
    if "crop" in fields and len(fields["crop"]) == 1:
        fields["crop"] = fields["crop"] * 2
    return Preprocess(**fields)


def _dims(key: str, value: str, spec: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+([xX]\d+)?", value) or any(int(d) <= 0 for d in re.split("[xX]",
                                                                                       value)):
        raise UserError(f"preprocess {key}={value} in {spec!r}: give N or HxW (positive ints)")
    return tuple(int(d) for d in re.split("[xX]", value))


def _number(key: str, value: str, spec: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"preprocess {key}: {value!r} is not a number (in {spec!r})",
                        f"e.g. {PREPROCESS_EXAMPLE}") from None
    if not math.isfinite(number):
        raise UserError(f"preprocess {key}: {value!r} is not a finite number (in {spec!r})",
                        f"e.g. {PREPROCESS_EXAMPLE}")
    return number


def _layout(pre: Preprocess, shape: tuple) -> tuple[str, int]:
    """(layout, channels) for a rank-4 image input."""
    if len(shape) != 4:
        raise UserError(f"images need a rank-4 input (N,C,H,W or N,H,W,C); this one is "
                        f"{_fmt(shape)}", "give .npy/.npz files instead")
    layout = pre.layout
    if layout == "auto":
        layout = "nchw" if shape[1] in (1, 3) else "nhwc" if shape[3] in (1, 3) else ""
        if not layout:
            raise UserError(f"cannot tell the channel axis of input shape {_fmt(shape)}",
                            "add layout=nchw or layout=nhwc to the preprocess spec")
    channels = shape[1] if layout == "nchw" else shape[3]
    if channels not in (1, 3):
        raise UserError(f"input shape {_fmt(shape)} ({layout}) has {channels} channels; images "
                        "give 1 or 3")
    return layout, channels


def preprocess_image(path: str, pre: Preprocess, shape: tuple):
    """One image file -> float32 array of `shape` (batch 1). UserError names the file."""
    return preprocess_views(path, pre, shape, 1)[0][1]


# the ImageNet "10-crop" views: centre, top-left, top-right, bottom-left, bottom-right crops of
# the resized image, each also mirrored left-right (tags name them in sample ids)
VIEW_TAGS = ("c", "tl", "tr", "bl", "br")


def preprocess_views(path: str, pre: Preprocess, shape: tuple, views: int = 1) -> list:
    """[(tag, float32 array of `shape`)] for one image file: views=1 the spec's own centre crop
    (tag ""); views=10 the ten standard crops (tags c, c~m, tl, tl~m, ...; c is the spec's
    own), which needs a crop in the spec. UserError names the file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    layout, channels = _layout(pre, shape)
    if channels == 1 and (len(pre.mean) == 3 or len(pre.std) == 3):
        raise UserError(f"the input takes 1 channel (grayscale) but the preprocess spec gives 3 "
                        f"mean/std values: '{pre}'")
    if views not in (1, 10):
        raise ValueError(f"views={views}: 1 or 10")
    if views == 10 and not pre.crop:
        raise UserError(f"ten crops need a crop size in the preprocess spec ('{pre}')",
                        "add crop=H or crop=HxW, e.g. resize=256,crop=224")
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if views == 1:
                crops = [("", _resize_crop(img, pre))]
            else:
                whole = _resize_crop(img, replace(pre, crop=None))
                crops = []
                for tag, box in zip(VIEW_TAGS, _crop_boxes(whole.size, pre.crop)):
                    crop = whole.crop(box)
                    crops += [(tag, crop), (f"{tag}~m", crop.transpose(Image.FLIP_LEFT_RIGHT))]
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
    out = []
    for tag, crop in crops:
        x = np.asarray(crop, dtype=np.float32)
        x = x[:, :, None] if x.ndim == 2 else (x[:, :, ::-1] if pre.channels == "bgr" else x)
        x = (x * pre.scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        x = (x.transpose(2, 0, 1) if layout == "nchw" else x)[None]
        want = tuple(shape)
        if any(isinstance(w, int) and w != g for w, g in zip(want, x.shape)):
            raise UserError(f"image {path} preprocessed with '{pre}' is {_fmt(x.shape)}, the "
                            f"model input is {_fmt(want)}", "adjust resize/crop in the "
                            "preprocess spec")
        out.append((tag, np.ascontiguousarray(x, dtype=np.float32)))
    return out


def _crop_boxes(size: tuple[int, int], crop: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """PIL boxes of the centre and four corner crops (VIEW_TAGS order) of an image of `size`."""
    w, h = size
    ch, cw = crop
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} is larger than the {h}x{w} image after resize")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))  # as _resize_crop
    return [(left, top, left + cw, top + ch)] + \
        [(x, y, x + cw, y + ch) for y in (0, h - ch) for x in (0, w - cw)]


def _resize_crop(img, pre: Preprocess):
    from PIL import Image

    if pre.resize:
        if len(pre.resize) == 2:
            h, w = pre.resize
        else:
            # the short side becomes s, the long one is truncated like torchvision's Resize(s)
            s, (w0, h0) = pre.resize[0], img.size
            h, w = (s, max(1, int(s * w0 / h0))) if h0 <= w0 else (max(1, int(s * h0 / w0)), s)
        img = img.resize((w, h), Image.BILINEAR)
    if pre.crop:
        ch, cw = pre.crop
        w, h = img.size
        if ch > h or cw > w:
            raise ValueError(f"crop {ch}x{cw} is larger than the {h}x{w} image after resize")
        # torchvision's CenterCrop rounds the offset (so results match torchvision pipelines)
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
    return img


# -- loading -----------------------------------------------------------------------------------
def load_inputs(source: str, specs: list[dict], preprocess: str | None,
                limit: int | None = None, views: int = 1) -> list[tuple[str, dict]]:
    """Samples from `source`, sorted by file name, at most `limit` of them (files).

    source: a folder of images (jpg/jpeg/png/bmp/tif, one input, needs `preprocess`, see
    `parse_preprocess`); a folder of .npy files (one sample each, one-input models) and/or .npz
    files (one sample each, keyed by input name); or one .npy/.npz file whose arrays have a
    leading sample axis (N x input shape, or N stacked along the batch dim of size 1).
    views=10: each image gives its ten standard crops (`preprocess_views`), ids NAME@TAG.
    """
    if not os.path.exists(source):
        raise UserError(f"inputs {source} do not exist")
    if views != 1 and (not os.path.isdir(source) or not any(
            n.lower().endswith(IMAGE_EXTS) for n in os.listdir(source))):
        raise UserError(f"ten crops are views of images; {source} is no folder of images",
                        "drop --ten-crop for arrays")
    if limit is not None and limit < 1:
        raise UserError(f"limit {limit} must be at least 1")
    if os.path.isfile(source):
        if not source.lower().endswith(ARRAY_EXTS):
            raise UserError(f"inputs {source}: give a folder of images, .npy/.npz files, or "
                            "one .npy/.npz file")
        samples = _stacked_file(source, specs)
        return samples[:limit] if limit else samples
    names = sorted(os.listdir(source))
    images = [n for n in names if n.lower().endswith(IMAGE_EXTS)]
    arrays = [n for n in names if n.lower().endswith(ARRAY_EXTS)]
    if images and arrays:
        raise UserError(f"{source} holds both images ({len(images)}) and arrays ({len(arrays)})",
                        "keep one kind of input per folder")
    if not images and not arrays:
        raise UserError(f"{source} holds no images ({', '.join(IMAGE_EXTS)}) and no .npy/.npz "
                        "files")
    chosen = (images or arrays)[:limit] if limit else (images or arrays)
    paths = [os.path.join(source, n) for n in chosen]
    if images:
        return _images(paths, specs, preprocess, views)
    return [(os.path.splitext(os.path.basename(p))[0], _array_file(p, specs)) for p in paths]


LABELS_KEY = "labels"


def load_labels(source: str, specs: list[dict], limit: int | None = None):
    """Class labels (int64 [N], sample order) stored beside the inputs of one stacked .npz file
    under the key `labels`, or None when the source holds none (or a model input is so named)."""
    import numpy as np

    if not (os.path.isfile(source) and source.lower().endswith(".npz")) or \
            any(s["name"] == LABELS_KEY for s in specs):
        return None
    try:
        with np.load(source, allow_pickle=False) as z:
            if LABELS_KEY not in z.files:
                return None
            labels = z[LABELS_KEY]
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read {source}: {exc}") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source}: '{LABELS_KEY}' is {labels.dtype} {_fmt(labels.shape)}; "
                        "expected integer class indices, one per sample")
    labels = labels.astype(np.int64)
    return labels[:limit] if limit else labels


def _images(paths: list[str], specs: list[dict], preprocess: str | None,
            views: int = 1) -> list:
    if len(specs) != 1:
        raise UserError(f"an image folder feeds one input; this model has {len(specs)} "
                        f"({', '.join(s['name'] for s in specs)})", "give .npz files instead")
    if not preprocess:
        raise UserError("images need a preprocess spec: how pixels become the model's input",
                        f"e.g. --preprocess {PREPROCESS_EXAMPLE} (what the model was trained "
                        "with)")
    pre = parse_preprocess(preprocess)
    spec = specs[0]
    shape = tuple(1 if isinstance(d, str) else d for d in spec["shape"])
    if shape and shape[0] != 1:
        raise UserError(f"input {spec['name']} has batch {shape[0]}; image folders give batch "
                        "1 per sample", "export the model with batch 1 or a dynamic batch")
    samples = []
    for p in paths:
        name = os.path.splitext(os.path.basename(p))[0]
        for tag, x in preprocess_views(p, pre, spec["shape"], views):
            samples.append((f"{name}@{tag}" if tag else name, {spec["name"]: _cast(x, spec, p)}))
    return samples


def _load_array_file(path: str) -> dict:
    import numpy as np

    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return {None: np.load(path, allow_pickle=False)}
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _keyed(arrays: dict, specs: list[dict], path: str) -> dict:
    """{input name: array} from a loaded file; a bare .npy feeds a one-input model."""
    if None in arrays:
        if len(specs) != 1:
            raise UserError(f"{path}: a .npy file feeds one input; this model has {len(specs)} "
                            f"({', '.join(s['name'] for s in specs)})",
                            "use .npz files keyed by input name")
        return {specs[0]["name"]: arrays[None]}
    missing = [s["name"] for s in specs if s["name"] not in arrays]
    if missing:
        raise UserError(f"{path} has no array for input(s) {', '.join(missing)} (it holds: "
                        f"{', '.join(arrays) or 'nothing'})", "key .npz arrays by input name")
    return {s["name"]: arrays[s["name"]] for s in specs}


def _array_file(path: str, specs: list[dict]) -> dict:
    """One sample per file: arrays of the input shape (a missing batch dim of 1 is added)."""
    arrays = _keyed(_load_array_file(path), specs, path)
    feeds = {}
    for spec in specs:
        x = arrays[spec["name"]]
        first = spec["shape"][0] if spec["shape"] else None
        if x.ndim == len(spec["shape"]) - 1 and (first == 1 or isinstance(first, str)):
            x = x[None]
        _check_shape(x.shape, spec, path)
        feeds[spec["name"]] = _cast(x, spec, path)
    return feeds


def _stacked_file(path: str, specs: list[dict]) -> list[tuple[str, dict]]:
    """One file, a leading sample axis on every array."""
    arrays = _keyed(_load_array_file(path), specs, path)
    split: dict[str, list] = {}
    for spec in specs:
        x, rank = arrays[spec["name"]], len(spec["shape"])
        if x.ndim == rank + 1:
            parts = list(x)
        elif x.ndim == rank and rank and (spec["shape"][0] == 1 or
                                          isinstance(spec["shape"][0], str)):
            parts = [x[i:i + 1] for i in range(x.shape[0])]
        else:
            raise UserError(f"{path}: array for {spec['name']} is {_fmt(x.shape)}; expected N x "
                            f"{_fmt(spec['shape'])} (a leading sample axis)")
        if not parts:
            raise UserError(f"{path}: the array for {spec['name']} holds no samples")
        _check_shape(parts[0].shape, spec, path)
        split[spec["name"]] = [_cast(p, spec, path) for p in parts]
    counts = {len(v) for v in split.values()}
    if len(counts) != 1:
        raise UserError(f"{path}: the inputs have different sample counts "
                        f"({', '.join(f'{k}: {len(v)}' for k, v in split.items())})")
    stem = os.path.splitext(os.path.basename(path))[0]
    return [(f"{stem}[{i}]", {k: v[i] for k, v in split.items()}) for i in range(counts.pop())]


def _check_shape(got: tuple, spec: dict, path: str) -> None:
    want = spec["shape"]
    if len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
        raise UserError(f"{path}: input {spec['name']} is {_fmt(got)}, the model expects "
                        f"{_fmt(want)}")


def _cast(x, spec: dict, path: str):
    """Same-kind casts only (float64 -> float32, int64 -> int32, uint8 -> float32)."""
    import numpy as np

    dtype = np.dtype(spec.get("dtype", "float32"))
    if x.dtype != dtype and not np.can_cast(x.dtype, dtype, casting="same_kind"):
        raise UserError(f"{path}: input {spec['name']} is {x.dtype}, the model expects {dtype}",
                        f"save the array as {dtype}")
    return np.ascontiguousarray(x, dtype=dtype)


def _fmt(shape) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


# -- synthetic ---------------------------------------------------------------------------------
def on_grid(x, step: float, lo_hi: tuple[float, float]):
    """x rounded to the nearest multiple of `step` within [lo, hi] (the grid pixels lie on,
    QuantConfig.input_grid): what a synthetic image made of pixels holds."""
    import numpy as np

    lo, hi = math.ceil(lo_hi[0] / step - 1e-6), math.floor(lo_hi[1] / step + 1e-6)
    return np.clip(np.round(np.asarray(x) / step), lo, hi) * step


def synthetic_inputs(specs: list[dict], n: int, seed: int = 0,
                     ranges: dict[str, tuple[float, float]] | None = None,
                     grids: dict[str, float] | None = None,
                     dims: dict[str, int] | None = None) -> list[tuple[str, dict]]:
    """`n` random samples: float inputs N(0, 1), or uniform in `ranges[name]` = (lo, hi), and
    then on the grid `grids[name]` (pixels through --preprocess: a real image's values are
    multiples of it, so synthetic ones are too); integer inputs uniform in [0, 100), or
    [lo, hi); bool inputs fair coins. Named dynamic dims take their value in `dims` (the
    build's --dim), else 1. Sample i is the same whatever `n` is (one generator, drawn in
    order)."""
    import numpy as np

    if n < 1:
        raise UserError(f"synthetic sample count {n} must be at least 1")
    rng = np.random.default_rng(seed)
    ranges = ranges or {}
    samples = []
    for i in range(n):
        feeds = {}
        for spec in specs:
            shape = tuple((dims or {}).get(d, 1) if isinstance(d, str) else d
                          for d in spec["shape"])
            dtype = np.dtype(spec.get("dtype", "float32"))
            lo_hi = ranges.get(spec["name"])
            if dtype == np.bool_:
                x = rng.random(shape) < 0.5
            elif np.issubdtype(dtype, np.integer):
                lo, hi = lo_hi or (0, 100)
                x = rng.integers(int(lo), int(hi), size=shape)
            elif lo_hi is not None:
                x = rng.uniform(lo_hi[0], lo_hi[1], size=shape)
                step = (grids or {}).get(spec["name"])
                if step:
                    x = on_grid(x, step, lo_hi)
            else:
                x = rng.standard_normal(shape)
            feeds[spec["name"]] = np.asarray(x, dtype=dtype)
        samples.append((f"synthetic-{i:04d}", feeds))
    return samples
