"""Labelled inputs: a stacked .npz with a `labels` array gives compare true top-1 accuracy."""

import numpy as np
import pytest
import torch
from rich.console import Console

import rexdeploy
from rexdeploy.errors import UserError
from rexdeploy.evaluate.fidelity import render_table, run_compare
from rexdeploy.inputs import load_inputs, load_labels
from tiny_models import tiny_cnn

SPECS = [{"name": "input", "shape": [1, 3, 8, 8], "dtype": "float32"}]


def test_load_labels(tmp_path, rng):
    x = rng.standard_normal((5, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", input=x, labels=np.array([0, 1, 2, 3, 4], np.uint8))
    labels = load_labels(str(tmp_path / "a.npz"), SPECS)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 3, 4]
    assert load_labels(str(tmp_path / "a.npz"), SPECS, limit=2).tolist() == [0, 1]
    assert len(load_inputs(str(tmp_path / "a.npz"), SPECS, None)) == 5  # labels are no input
    np.savez(tmp_path / "b.npz", input=x)
    assert load_labels(str(tmp_path / "b.npz"), SPECS) is None
    assert load_labels(str(tmp_path), SPECS) is None  # folders carry no labels
    as_input = [{"name": "labels", "shape": [5], "dtype": "int64"}]
    assert load_labels(str(tmp_path / "a.npz"), as_input) is None  # a model input of that name
    np.savez(tmp_path / "c.npz", input=x, labels=np.zeros(5, np.float32))
    with pytest.raises(UserError, match="integer class indices"):
        load_labels(str(tmp_path / "c.npz"), SPECS)


class Scaled:
    def __init__(self, flip=()):
        self.flip = set(flip)
        self.i = 0

    def infer(self, feeds):
        y = feeds["x"] * 2
        if self.i in self.flip:
            y = -y
        self.i += 1
        return {"logits": y}


def test_run_compare_accuracy():
    samples = [(f"s{i}", {"x": np.eye(4)[i % 4][None] + 0.1}) for i in range(8)]
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 0])  # the last is wrong for both
    result = run_compare(Scaled(), Scaled(flip=[1, 2]), samples, labels=labels)
    acc = result["accuracy"]
    assert acc == {"labels": 8, "reference": 7 / 8, "test": 5 / 8, "drop": pytest.approx(0.25)}
    console = Console(record=True, width=200)
    console.print(render_table(result))
    assert "reference 87.50%, test 62.50% (drop 25.00 points)" in console.export_text()
    with pytest.raises(UserError, match="3 labels for 8 samples"):
        run_compare(Scaled(), Scaled(), samples, labels=labels[:3])
    assert "accuracy" not in run_compare(Scaled(), Scaled(), samples)


def test_compare_reports_true_accuracy_from_a_labelled_npz(tmp_path, rng):
    path = tmp_path / "cnn.pt"
    model = tiny_cnn()
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 32, 32)), str(path))
    art = rexdeploy.build(str(path), ["input:1x3x32x32"], target="reference",
                          output=str(tmp_path / "a"), quiet=True)
    x = rng.standard_normal((12, 1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        truth = np.array([int(model(torch.from_numpy(s)).argmax()) for s in x])
    labels = truth.copy()
    labels[:3] = (labels[:3] + 1) % 10  # three deliberately wrong labels
    np.savez(tmp_path / "test.npz", input=x, labels=labels)
    result = rexdeploy.compare(art.path, str(tmp_path / "test.npz"), quiet=True)
    assert result["accuracy"]["labels"] == 12
    assert result["accuracy"]["reference"] == pytest.approx(9 / 12)
    limited = rexdeploy.compare(art.path, str(tmp_path / "test.npz"), limit=5, quiet=True)
    assert limited["accuracy"]["labels"] == 5 and limited["samples"] == 5
