"""`compare --min-sqnr / --min-cosine`: floors parsed, checked per output, exit 3 when missed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rexdeploy.cli import cli
from rexdeploy.errors import UserError
from rexdeploy.evaluate.floors import EXIT_FLOOR, Floor, check_floors, parse_floor

RESULT = {"outputs": {"input:0/logits": {"sqnr_db": 24.0, "cosine_mean": 0.995},
                      "boxes": {"sqnr_db": 31.0, "cosine_mean": float("nan")}}}


def test_floors_parse_with_colons_in_output_names():
    assert parse_floor("25", "sqnr_db") == Floor("sqnr_db", 25.0, None)
    assert parse_floor("input:0/logits:22.5", "sqnr_db") == Floor("sqnr_db", 22.5, "input:0/logits")
    for bad in ("x", "logits:", "logits:inf"):
        with pytest.raises(UserError):
            parse_floor(bad, "cosine_mean")


def test_each_output_is_held_to_its_floor():
    found = check_floors(RESULT, (parse_floor("25", "sqnr_db"),))
    assert [(f.output, f.missed) for f in found] == [("input:0/logits", True), ("boxes", False)]
    found = check_floors(RESULT, (parse_floor("boxes:0.9", "cosine_mean"),))
    assert [f.missed for f in found] == [True]  # NaN never passes
    assert "floor 0.9" in found[0].describe()
    with pytest.raises(UserError, match="the compared outputs are"):
        check_floors(RESULT, (parse_floor("scores:20", "sqnr_db"),))


def test_compare_exits_3_below_a_floor_and_0_above(tmp_path):
    from recurrent_helpers import ConvLSTM, build, to_onnx

    art = build(to_onnx(ConvLSTM(), tmp_path / "m.onnx"), tmp_path / "m.openvino")
    run = CliRunner().invoke
    ok = run(cli, ["compare", art.path, "--synthetic", "2", "--min-sqnr", "20",
                   "--min-cosine", "0.99", "--json", "-q"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert [f["passed"] for f in doc["floors"]] == [True, True]
    bad = run(cli, ["compare", art.path, "--synthetic", "2", "--min-sqnr", "200", "-q"])
    assert bad.exit_code == EXIT_FLOOR and "BELOW FLOOR" in bad.stderr
    assert "fidelity gate failed" in bad.stderr
