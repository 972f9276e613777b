"""Markers are decided here, once: a test needing a missing dependency or device skips with why."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny_models.py


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


_SKIPS = {
    "openvino": (lambda: _has("openvino"), "openvino is not installed"),
    "tensorrt": (lambda: _has("tensorrt"), "tensorrt does not import here (see BACKENDS.md)"),
    "gpu": (_cuda, "no CUDA GPU on this machine"),
    "jetson": (lambda: os.path.exists("/etc/nv_tegra_release"), "not a Jetson board"),
}


def pytest_collection_modifyitems(config, items):
    cache: dict[str, bool] = {}
    for item in items:
        for marker, (check, reason) in _SKIPS.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = check()
                if not cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def cnn_file(tmp_path_factory):
    """tiny_models.tiny_cnn traced to a TorchScript file (input 1x3x32x32)."""
    import torch

    from tiny_models import tiny_cnn

    path = tmp_path_factory.mktemp("models") / "tiny_cnn.pt"
    torch.jit.save(torch.jit.trace(tiny_cnn(), torch.randn(1, 3, 32, 32)), str(path))
    return str(path)
