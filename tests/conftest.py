"""Markers are decided here, once: a test needing a missing dependency or device skips with why."""

from __future__ import annotations

import importlib.util
import os

import pytest



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
    "tensorrt": (lambda: _has("tensorrt"), "tensorrt does not import here (see docs/backends.md)"),
    "gpu": (_cuda, "no CUDA GPU on this machine"),
    "jetson": (lambda: os.path.exists("/etc/nv_tegra_release"), "not a Jetson board"),
}


def capped() -> str:
    """ONEDNN_MAX_CPU_ISA as this run has it ("" where unset): the AVX2 lane of tools/test.sh."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()


def int8_saturates() -> bool:
    """Whether this run's OpenVINO int8 kernels add pairs of products in int16 (a pre-VNNI ISA,
    real or under ONEDNN_MAX_CPU_ISA): backends.openvino.int8_probe, once."""
    global _SATURATES
    if _SATURATES is None:
        from backends.openvino import int8_probe

        _SATURATES = int8_probe()["saturates"]
    return _SATURATES


_SATURATES = None


def pytest_collection_modifyitems(config, items):
    cache: dict[str, bool] = {}
    for item in items:
        for marker, (check, reason) in _SKIPS.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = check()
                if not cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=reason))
        if "cpuid_kernels" in item.keywords and capped():
            item.add_marker(pytest.mark.skip(reason=(
                f"ONEDNN_MAX_CPU_ISA={capped()}: OpenVINO picks bf16 and compressed-weight "
                "kernels by the CPU's own features, which the cap does not hide, so oneDNN "
                "refuses them here; the native lane runs this test")))
        for mark in item.iter_markers("int8_isa"):
            want = mark.args[0]  # "vnni": asserted where int8 accumulates in int32
            if _has("openvino") and (want == "vnni") == int8_saturates():
                item.add_marker(pytest.mark.skip(reason=(
                    f"a figure only {'VNNI/AMX' if want == 'vnni' else 'pre-VNNI'} int8 "
                    f"kernels reach; this run's int8 kernels "
                    f"{'saturate (pre-VNNI)' if int8_saturates() else 'accumulate in int32'}"
                    "; its twin for this ISA runs instead")))


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
