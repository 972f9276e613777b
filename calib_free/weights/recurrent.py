"""Int8 recurrent layers (LSTM, GRU) in the form OpenVINO's CPU plugin runs them.

oneDNN's int8 RNN primitive takes one scale per gate row shared by the input weights W and the
recurrent weights R (their products are summed into one int32 accumulator), and quantizes the
hidden state it feeds back to R with the scale of the layer's input X. Hence:

    shared_row_codes(W, R) -> (W codes, R codes, scale)   one symmetric scale per row of both
    state_clip(peak) -> float                             the clip of the fed-back state's grid
    input_bound(bound) -> float                           X's clip, widened so that the hidden
                                                          state (tanh-bounded, |h| < 1) fits it

numpy (torch only for the pair limit of calib_free.weights.saturation): no ONNX or backend import.
"""

from __future__ import annotations

import numpy as np

from calib_free.metrics import power_db
from calib_free.weights.quantizer import qmax

# |h| < 1: an LSTM's h = o * tanh(c) and a GRU's h (a convex mix of tanh outputs) never leave it
STATE_BOUND = 1.0


# ONNX LSTM gate blocks (i, o, f, c): OpenVINO's CPU plugin (2025/2026 releases) hands oneDNN
# the weight scales in its own gate order (f, i, c, o) while oneDNN reads them as (i, f, c, o),
# so gates i and f swap scales. A bit-exact numpy emulation of the kernel matches OpenVINO only
# with that swap (tests/test_planning/test_recurrent.py). Giving the i and f rows of each hidden
# unit one scale makes the swap harmless.
LSTM_SWAPPED_GATES = (0, 2)


def shared_row_codes(w: np.ndarray, r: np.ndarray, bits: int = 8, tie: tuple[int, int] = (),
                     pair_limit: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric codes of W [D, G*H, I] and R [D, G*H, H] with one scale per (direction, row),
    the larger of the row's absolute maxima in W and R over qmax. tie: two gate blocks (of G)
    whose rows of one hidden unit share one scale (LSTM_SWAPPED_GATES for an LSTM).
    pair_limit: for an int8 kernel that adds adjacent products in a saturating int16 (a CPU
    without VNNI, calib_free.weights.saturation): adjacent codes along the last axis are projected
    to keep their same-sign sums within it. Returns (W codes, R codes) as int8 and the float32
    scale [D, G*H] (all-zero rows get scale 1)."""
    if w.ndim != 3 or r.ndim != 3 or w.shape[:2] != r.shape[:2]:
        raise ValueError(f"W {w.shape} and R {r.shape} are not [D, G*H, *] of one layer")
    q = qmax(bits)
    peak = np.maximum(np.abs(w).max(axis=2), np.abs(r).max(axis=2)).astype(np.float32)
    scale = _tied(np.where(peak > 0, peak / q, 1.0).astype(np.float32), tie)
    if pair_limit is not None:  # per row, a coarser scale where that loses less than moving
        scale = _tied(_pair_safe_scale(w, r, scale, q, pair_limit), tie)

    def codes(a: np.ndarray) -> np.ndarray:
        t = a / scale[..., None]
        c = np.clip(np.rint(t), -q, q)
        if pair_limit is not None and a.shape[2] > 1:
            import torch

            from calib_free.weights.saturation import PairLimit, limit_pairs

            flat = (a.shape[0] * a.shape[1], a.shape[2])  # rows x the reduction axis
            c = limit_pairs(torch.from_numpy(t.reshape(flat).astype(np.float32)),
                            torch.from_numpy(c.reshape(flat).astype(np.float32)), q,
                            PairLimit(1, 0, pair_limit)).numpy().reshape(a.shape)
        return c.astype(np.int8)

    return codes(w), codes(r), scale


def _tied(scale: np.ndarray, tie: tuple[int, ...]) -> np.ndarray:
    """`scale` [D, G*H] with the rows of each hidden unit in the `tie` gate blocks given the
    largest of their scales."""
    if not tie:
        return scale
    gates = 4 if tie == LSTM_SWAPPED_GATES else max(tie) + 1
    blocks = scale.reshape(scale.shape[0], gates, -1).copy()
    blocks[:, list(tie)] = blocks[:, list(tie)].max(axis=1, keepdims=True)
    return blocks.reshape(scale.shape)


def _pair_safe_scale(w: np.ndarray, r: np.ndarray, scale: np.ndarray, q: int,
                     limit: int) -> np.ndarray:
    """calib_free.weights.saturation.safe_scale per row of W and R side by side (W padded to an even
    width, so that no pair straddles the two: each is its own product in the kernel)."""
    import torch

    from calib_free.weights.saturation import PairLimit, safe_scale

    if w.shape[2] % 2:
        w = np.concatenate([w, np.zeros(w.shape[:2] + (1,), w.dtype)], axis=2)
    joined = np.concatenate([w, r], axis=2).reshape(-1, w.shape[2] + r.shape[2])
    out = safe_scale(torch.from_numpy(joined.astype(np.float32)),
                     torch.from_numpy(scale.reshape(-1)), q, PairLimit(1, 0, limit))
    return out.numpy().astype(np.float32).reshape(scale.shape)


def dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * scale[..., None]


# the hidden states seen on synthetic inputs understate those of real data a little: the clip
# of the state grid is their peak times this (at most STATE_BOUND)
STATE_MARGIN = 1.25


def state_clip(observed_peak: float | None) -> float:
    """The clip of the grid the kernel rounds the fed-back hidden state to (the grid of the
    rescaled input X): the peak |h| observed, with STATE_MARGIN, never above STATE_BOUND;
    STATE_BOUND when nothing was observed."""
    if observed_peak is None or not observed_peak > 0:
        return STATE_BOUND
    return float(min(STATE_BOUND, observed_peak * STATE_MARGIN))


def input_bound(bound: float) -> float:
    """The clip of X's symmetric int8 range: its own bound, at least STATE_BOUND, since the
    kernel quantizes the fed-back hidden state on X's grid (a narrower grid would clip it)."""
    return max(float(bound), STATE_BOUND)


def weight_sqnr(w: np.ndarray, r: np.ndarray, wq: np.ndarray, rq: np.ndarray,
                scale: np.ndarray) -> float:
    """SQNR in dB of the dequantized W and R together against the float ones."""
    ref = np.concatenate([w.ravel(), r.ravel()]).astype(np.float64)
    got = np.concatenate([dequantize(wq, scale).ravel(), dequantize(rq, scale).ravel()])
    return power_db((ref ** 2).sum(), ((ref - got) ** 2).sum())
