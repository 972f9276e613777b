"""The project's one definition of its error ratios (pure Python: no torch, no numpy, so every
side of the project, the device side included, computes them the same way).

Callers sum the powers in their own array library (numpy or torch, float64) and hand the sums
here; the conventions for exact and degenerate cases live in one place:

    power_db(signal, noise)  10 log10(signal / noise): SQNR in dB. inf when the noise is 0
                             (exact), -inf when only the noise is nonzero (a zero reference)
    noise_ratio(signal, noise)  noise / signal (NSR, linear), the signal floored at 1e-30
"""

from __future__ import annotations

import math

TINY = 1e-30


def power_db(signal: float, noise: float) -> float:
    """Signal-to-noise power ratio in dB (SQNR when the noise is the quantization error)."""
    signal, noise = float(signal), float(noise)
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def noise_ratio(signal: float, noise: float) -> float:
    """Noise-to-signal power ratio (linear): what a sensitivity ranks layers by."""
    return float(noise) / max(float(signal), TINY)
