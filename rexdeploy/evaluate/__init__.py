"""Evaluation: fidelity metrics, compare (with pass/fail floors), the device check, per-layer
localisation, the regression gate, the float torch reference. docs/design.md."""
