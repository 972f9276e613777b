"""Numerics of the lowered Q/DQ model: ONNX Runtime against an independent torch emulation of
the same plan, against the float model, and REx order 2 against order 1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from calib_free.plan import ActivationPlan, QuantPlan
from lowering_helpers import (CNN_INPUT, MLP_INPUT, export, make_plan, random_inputs, run_ort,
                              sqnr_db)
from rexdeploy.planning.analyze import find_layers
from rexdeploy.lower import lower
from tiny_models import ConvBnRelu, tiny_cnn, tiny_mlp

MODELS = {"cnn": (tiny_cnn, CNN_INPUT), "mlp": (tiny_mlp, MLP_INPUT)}


@pytest.fixture(scope="module")
def setups():
    """name -> (torch module, float ONNX, calibration inputs, evaluation inputs)."""
    out = {}
    for name, (factory, shape) in MODELS.items():
        module = factory()
        out[name] = (module, export(module, shape), random_inputs(shape, 4, seed=0),
                     random_inputs(shape, 4, seed=7))
    return out


def fake_quant(x: torch.Tensor, act: ActivationPlan) -> torch.Tensor:
    lo, hi = (-128, 127) if act.signed else (0, 255)
    return torch.fake_quantize_per_tensor_affine(x, act.scale, 0, lo, hi)


def fold_bn(module: nn.Module) -> nn.Module:
    """A copy with every Conv+BN of ConvBnRelu folded, as the ONNX export folds them."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module = copy.deepcopy(module)
    for block in module.modules():
        if isinstance(block, ConvBnRelu):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return module


def emulate(name: str, module: nn.Module, model, plan: QuantPlan) -> nn.Module:
    """The torch module computing what the plan says, with fake-quant in torch: each layer's
    weight replaced by sum_k scale_k * codes_k, bias minus bias_shift, and its input (and the
    residual skip input) fake-quantized per tensor."""
    emu = fold_bn(module)
    infos = {info.name: info for info in find_layers(model)[0]}
    mods = [m for m in emu.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for lp in plan.layers:
        info = infos[lp.name]
        as_torch = (lambda w: w) if info.out_axis == 0 else (lambda w: w.T)  # noqa: E731
        target = as_torch(info.weight_array)
        (mod,) = [m for m in mods if tuple(m.weight.shape) == target.shape
                  and np.allclose(m.weight.detach().numpy(), target, atol=1e-5)]
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(as_torch(sum(o.dequantize() for o in lp.orders))))
            if lp.bias_shift is not None:
                mod.bias -= torch.from_numpy(lp.bias_shift)
        act = plan.activation(lp.input)
        if act is not None:
            mod.register_forward_pre_hook(lambda m, args, act=act: (fake_quant(args[0], act),))
    if name == "cnn":  # skip = the block's input, also its first conv's input
        act = plan.activation("/pw/pw.0/Conv_output_0")
        emu.block.register_forward_pre_hook(lambda m, args: (fake_quant(args[0], act),))
    else:  # skip = the graph input; LayerNorm still reads it in float
        act = plan.activation("input")
        emu.forward = lambda x: fake_quant(x, act) + emu.fc2(
            nn.functional.gelu(emu.fc1(emu.ln(x))))
    return emu


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("orders", [1, 2])
def test_ort_matches_torch_emulation(setups, name, orders):
    module, model, calib, evaluation = setups[name]
    plan = make_plan(model, calib, orders=orders, bias_shift=0.02)
    lowered = lower(model, plan)
    emu = emulate(name, module, model, plan)
    with torch.no_grad():
        ref = np.concatenate([emu(torch.from_numpy(x)).numpy() for x in evaluation])
    got = np.concatenate([run_ort(lowered, x) for x in evaluation])
    assert sqnr_db(ref, got) >= 35


@pytest.mark.parametrize("optimize", [False, True], ids=["ort-basic", "ort-all"])
def test_w8a8_close_to_float(setups, optimize):
    """With all optimizations ORT fuses the Q/DQ Convs into integer kernels; still close."""
    _, model, calib, evaluation = setups["cnn"]
    lowered = lower(model, make_plan(model, calib))
    ref = np.concatenate([run_ort(model, x) for x in evaluation])
    got = np.concatenate([run_ort(lowered, x, optimize) for x in evaluation])
    assert sqnr_db(ref, got) >= 20


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_second_order_is_closer_to_float(setups, name):
    _, model, calib, evaluation = setups[name]
    ref = np.concatenate([run_ort(model, x) for x in evaluation])
    db = {}
    for orders in (1, 2):
        lowered = lower(model, make_plan(model, calib, orders=orders, activations=False))
        db[orders] = sqnr_db(ref, np.concatenate([run_ort(lowered, x) for x in evaluation]))
    assert db[2] > db[1] + 20, db  # each order gains ~2^8 in weight precision
