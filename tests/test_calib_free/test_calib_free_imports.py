"""calib_free is pure torch math: no ONNX or backend module is imported, statically or at run
time; `calib_free.plan` stays numpy-only; and the public API is pinned."""

import ast
import inspect
import pathlib
import subprocess
import sys

import calib_free

FORBIDDEN = ("onnx", "onnx_ir", "onnxruntime", "onnxscript", "openvino", "tensorrt", "polygraphy")
PACKAGE = pathlib.Path(calib_free.__file__).parent


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def _module_names() -> list[str]:
    """Every module of the package, subpackages included (dotted, relative to calib_free)."""
    names = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(n for n in names if n)


def test_the_subpackages_are_seen():
    assert {"weights.quantizer", "activations.ranges", "refine.flexround", "plan"} <= set(
        _module_names())


def test_importing_everything_pulls_in_no_backend():
    modules = _module_names()
    code = ("import importlib, sys, calib_free\n"
            f"for m in {modules!r}: importlib.import_module('calib_free.' + m)\n"
            "[getattr(calib_free, n) for n in calib_free.__all__]\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    assert _run(code) == "[]"


def test_no_backend_import_statement_anywhere():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] in FORBIDDEN]
            assert not bad, f"{path.relative_to(PACKAGE)}:{node.lineno} imports {bad}"


def test_plan_module_does_not_import_torch():
    assert _run("import sys, calib_free.plan; print('torch' in sys.modules)") == "False"


def test_public_api_is_pinned():
    assert set(calib_free.__all__) == {
        "ActivationPlan", "LayerPlan", "QuantPlan", "SkippedLayer", "WeightOrder",
        "add_moments", "bn_matched_inputs", "choose_scale", "clipped_gaussian_moments",
        "conv_mean", "conv_moments", "dequantize", "expand_residuals", "expand_uniform",
        "expected_output_shift", "gaussian_clip", "gaussian_inputs", "gaussian_mse_sigma",
        "gelu_moments", "linear_moments", "maxabs", "mse_optimal", "percentile", "qmax",
        "quantize", "quantize_weight", "random_tokens", "scale_from_clip", "weight_error"}
    signatures = {
        "qmax": "(bits: int, signed: bool = True) -> int",
        "choose_scale": "(w: torch.Tensor, bits: int, granularity: str = 'channel', axis: int = 0, "
                        "block_size: int | None = None, clip_search: bool = False) -> torch.Tensor",
        "quantize": "(w: torch.Tensor, scale: torch.Tensor, bits: int, axis: int = 0, "
                    "block_size: int | None = None, sum_dims: tuple[int, ...] | None = None, "
                    "pairs: calib_free.weights.saturation.PairLimit | None = None) "
                    "-> torch.Tensor",
        "dequantize": "(codes: torch.Tensor, scale: torch.Tensor, axis: int = 0, "
                      "block_size: int | None = None) -> torch.Tensor",
        "expand_uniform": "(w: torch.Tensor, bits: int, orders: int, granularity: str = 'channel', "
                          "axis: int = 0, block_size: int | None = None, clip_search: bool = False"
                          ", sum_dims: tuple[int, ...] | None = None, "
                          "pairs: calib_free.weights.saturation.PairLimit | None = None, "
                          "power: torch.Tensor | None = None"
                          ") -> list[tuple[torch.Tensor, torch.Tensor]]",
        "expected_output_shift": "(delta_w: torch.Tensor, mean_in: torch.Tensor, groups: int = 1)"
                                 " -> torch.Tensor",
        "scale_from_clip": "(clip: float, bits: int = 8, signed: bool = True) -> float",
    }
    for name, sig in signatures.items():
        assert str(inspect.signature(getattr(calib_free, name), eval_str=True)) == sig, name
    params = {
        "quantize_weight": ["w", "bits", "granularity", "axis", "block_size", "clip_search",
                            "sum_dims", "pairs", "power"],
        "expand_residuals": ["w", "orders", "quantize_fn", "dequantize_fn", "final_quantize_fn"],
        "weight_error": ["w", "w_hat"],
        "maxabs": ["x"], "percentile": ["x", "q"], "mse_optimal": ["x", "bits", "signed"],
        "gaussian_clip": ["mean", "std", "sigma"], "gaussian_mse_sigma": ["bits"],
        "clipped_gaussian_moments": ["mean", "std", "lo", "hi"],
        "conv_moments": ["weight", "bias", "mean_in", "var_in", "groups"],
        "linear_moments": ["weight", "bias", "mean_in", "var_in"],
        "add_moments": ["m1", "v1", "m2", "v2"], "gelu_moments": ["mean", "std"],
        "gaussian_inputs": ["shape", "n", "seed", "lo", "hi"],
        "bn_matched_inputs": ["model", "shape", "n", "steps", "lr", "seed", "bounded", "progress"],
        "random_tokens": ["vocab_size", "n", "length", "seed", "special"],
    }
    for name, names in params.items():
        assert list(inspect.signature(getattr(calib_free, name)).parameters) == names, name


def test_each_subpackage_lists_its_modules():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        missing = [p.stem for p in init.parent.glob("*.py")
                   if p.stem != "__init__" and f"    {p.stem} " not in doc]
        assert not missing, f"{init.relative_to(PACKAGE)} does not list {missing}"
