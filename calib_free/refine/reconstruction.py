"""Layer reconstruction data and error (docs/algorithms.md section 5): what the refinements
minimise.

A quantized Conv/Gemm/MatMul is a block here: y = x W^T + b in matrix form, where a Conv's input
is unfolded into patches (im2col) and its G groups are a batch, so

    w  [G, O, D]   O = Cout / G output channels per group, D = Cin / G * prod(kernel) columns
    x  [G, R, D]   R sampled rows (output positions x samples) of the float model's input
    xq [G, R, D]   the same rows after the layer's activation fake-quantization

The quantized block computes yq = xq W_hat^T + b - c with c [G, O] the bias shift the plan
subtracts from the bias, so the block's output error is

    y - yq = xq (W - W_hat)^T + e0 + 1 c^T        e0 = (x - xq) W^T   [G, R, O]

Every quantity the refinements need is a function of M = [xq, 1, e0] ([G, R, D + 1 + O]) through
M^T M only, so `LayerData` keeps the triangular factor R of a QR decomposition of M when
R > D + 1 rows. Only its first D + 1 rows depend on delta and c: the last O rows are [0, E] with
E the part of e0 no (delta, c) can reach, a constant ||E||^2 (`residual`). So each optimisation
step costs D + 1 rows instead of R (or D + 1 + O), and the error stays exact.

x and xq need not come from the same model: with x the float model's input and xq the
quantized model's (its upstream layers quantized and refined, its own activation quantized),
the error is the sequential one (BRECQ/AdaRound): the quantized block fed what the quantized
model gives it, against the float block's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class LayerData:
    """Calibration data of one block, reduced. m: [G, r, D + 1 + O] float64 with
    m^T m + [0, 0; 0, E^T E] = M^T M; col_sum: [G, D + 1 + O] = 1^T M; rows: R; signal: sum of
    (x W^T)^2 (the float output energy without bias, for relative errors); residual: ||E||^2,
    the part of the error no weight or bias change reaches (0 when m holds M's rows)."""

    m: torch.Tensor
    col_sum: torch.Tensor
    rows: int
    signal: float
    d: int
    residual: float = 0.0

    @property
    def xq(self) -> torch.Tensor:
        """[G, r, D] reduced quantized inputs."""
        return self.m[..., :self.d]

    @property
    def ones(self) -> torch.Tensor:
        """[G, r, 1] the reduced column of ones (bias shift)."""
        return self.m[..., self.d:self.d + 1]

    @property
    def e0(self) -> torch.Tensor:
        """[G, r, O] the reduced error of quantizing the input alone."""
        return self.m[..., self.d + 1:]

    def gram(self) -> torch.Tensor:
        """[G, D+1, D+1] A^T A with A = [xq, 1] (float64)."""
        a = self.m[..., :self.d + 1]
        return a.transpose(-1, -2) @ a

    def input_mean(self) -> torch.Tensor:
        """[G, D] mean of the quantized input rows."""
        return self.col_sum[..., :self.d] / self.rows


def layer_data(x: torch.Tensor, xq: torch.Tensor, w: torch.Tensor) -> LayerData:
    """Reduce the rows x, xq ([G, R, D]) of a block with float weights w ([G, O, D])."""
    if x.shape != xq.shape or x.ndim != 3 or w.ndim != 3 or w.shape[-1] != x.shape[-1] \
            or w.shape[0] != x.shape[0]:
        raise ValueError(f"layer_data: x {tuple(x.shape)}, xq {tuple(xq.shape)} must be [G, R, D] "
                         f"and w {tuple(w.shape)} [G, O, D]")
    x, xq, w = x.double(), xq.double(), w.double()
    g, r, d = x.shape
    y = x @ w.transpose(-1, -2)
    e0 = y - xq @ w.transpose(-1, -2)
    m = torch.cat([xq, torch.ones(g, r, 1, dtype=torch.float64), e0], dim=-1)
    col_sum = m.sum(dim=1)
    residual = 0.0
    if r > d + 1:
        m = torch.linalg.qr(m, mode="r").R  # [G, min(R, n), n], R^T R = M^T M
        residual = float(m[:, d + 1:, d + 1:].square().sum())
        m = m[:, :d + 1]  # rows below D + 1 are zero in the [xq, 1] columns
    return LayerData(m.contiguous(), col_sum, r, float(y.square().sum()), d, residual)


def output_error(data: LayerData, delta: torch.Tensor, shift: torch.Tensor | None = None,
                 ) -> torch.Tensor:
    """Sum over rows, groups and outputs of (y - yq)^2 (0-d, differentiable in delta).

    delta = W - W_hat [G, O, D]; shift c [G, O] (None: 0).
    """
    out = data.xq @ delta.transpose(-1, -2).to(data.m.dtype) + data.e0  # [G, r, O]
    if shift is not None:
        out = out + data.ones * shift.to(data.m.dtype)[:, None, :]
    return out.square().sum() + data.residual


def centered_shift(delta: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor | None:
    """The data-free bias correction's shift c = (W_hat - W) mean = -delta mean ([G, O]), for
    mean [G, D] (an expected input per column); None when there is no mean."""
    if mean is None:
        return None
    return -(delta.to(mean.dtype) @ mean[..., None])[..., 0]


def optimal_shift(data: LayerData, delta: torch.Tensor) -> torch.Tensor:
    """The bias shift c [G, O] minimising output_error for this delta: minus the mean error
    over the calibration rows (bias correction with the calibration data's mean)."""
    s = data.col_sum.to(torch.float64)
    mean_err = (delta.double() @ s[..., :data.d, None])[..., 0] + s[..., data.d + 1:]
    return -mean_err / data.rows


def relative(err: torch.Tensor | float, data: LayerData) -> float:
    """An output error as a fraction of the float output energy."""
    return float(err) / max(data.signal, 1e-30)
