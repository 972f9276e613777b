"""Data-free bias correction, DFQ-style (docs/algorithms.md section 3.1).

Quantizing a layer's weight W -> W_hat moves its expected output by (W_hat - W) @ E[x]. With E[x]
from the statistics of the layer feeding it, subtracting that shift from the bias puts the
expected output back where the float layer had it.
"""

from __future__ import annotations

import torch

from calib_free.activations.moments import conv_mean


def expected_output_shift(delta_w: torch.Tensor, mean_in: torch.Tensor,
                          groups: int = 1) -> torch.Tensor:
    """[Cout] E[layer(x; W_hat)] - E[layer(x; W)] at interior positions; subtract it from the bias.

    delta_w: W_hat - W, Conv [Cout, Cin/groups, *kernel] (summed over kernel positions, padding
    borders ignored) or Gemm/MatMul [Cout, Cin]. mean_in: [Cin] per-channel input means.
    Returned in mean_in's dtype.
    """
    return conv_mean(delta_w, mean_in, groups)
