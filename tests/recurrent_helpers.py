"""A small recurrent model and its build for the recurrent-layer tests
(tests/test_planning/test_recurrent.py) and the fidelity floors' CLI test
(tests/test_evaluate/test_floors.py): a 1-D convolution + bidirectional LSTM recogniser, its ONNX
export on [1, 16, 40], and a quiet build for the default target."""

from __future__ import annotations

import warnings

import onnx
import torch
from torch import nn

import rexdeploy
from rexdeploy.config import BuildConfig, QuantConfig


class ConvLSTM(nn.Module):
    """A CTC-style recogniser: a 1-D convolution over time, a 2-layer bidirectional LSTM, a
    classifier per step."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(16, 32, 3, padding=1)
        self.lstm = nn.LSTM(32, 48, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(96, 10)

    def forward(self, x):  # [1, 16, T] -> [1, T, 10]
        y, _ = self.lstm(torch.relu(self.conv(x)).transpose(1, 2))
        return self.fc(y)


def to_onnx(module, path, gru_reset_linear=None) -> str:
    torch.manual_seed(0)
    x = torch.randn(1, 16, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"])
    if gru_reset_linear is not None:  # a GRU written as Keras does with reset_after=False
        model = onnx.load(str(path))
        for node in model.graph.node:
            for attr in node.attribute:
                if node.op_type == "GRU" and attr.name == "linear_before_reset":
                    attr.i = gru_reset_linear
        onnx.save(model, str(path))
    return str(path)


def build(path, out, **quant):
    return rexdeploy.build(path, ["input:1x16x40"], output=str(out), quiet=True,
                           config=BuildConfig(quant=QuantConfig(**quant)))
