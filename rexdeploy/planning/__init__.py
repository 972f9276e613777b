"""Planning: from the float graph to the frozen QuantPlan (layers, statistics and ranges, the
quantize stage, budget allocation, sensitivity, calibration data, refinement, recurrent layers,
cost models). docs/design.md."""
