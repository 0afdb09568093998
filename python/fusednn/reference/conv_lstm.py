"""Plain-PyTorch reference of the convolutional LSTM (one layer, one direction).

Per step, with "same" padding and torch's LSTM gate order i, f, g, o::

    gates = conv(x_t, W_ih) + b_ih + conv(h_{t-1}, W_hh) + b_hh
    c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)
    h_t = sigmoid(o) tanh(c_t)

float16 and bfloat16 inputs run the convolutions in their own precision and the gate
math and the cell state in float32, as the fused op does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validate import accumulate_dtype

__all__ = ["conv_lstm"]


def _same_padding(weight: torch.Tensor) -> tuple[int, int]:
    """The padding that keeps H and W of a convolution with an odd kernel."""
    return weight.shape[2] // 2, weight.shape[3] // 2


def _with_bias(gates: torch.Tensor, bias) -> torch.Tensor:
    return gates if bias is None else gates + bias.view(1, -1, 1, 1)


def conv_lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One ConvLSTM layer over a time-major sequence.

    x: [T, B, C, H, W]; hx = (h0 [B, Hc, H, W], c0 [B, Hc, H, W]) or None (zeros);
    w_ih: [4Hc, C, kh, kw]; w_hh: [4Hc, Hc, kh', kw'] (odd kernel sizes); b_ih, b_hh: [4Hc]
    or None. Returns (y [T, B, Hc, H, W], (h_n [B, Hc, H, W], c_n [B, Hc, H, W])).
    """
    T, B, _, H, W = x.shape
    Hc = w_ih.shape[0] // 4
    if hx is None:
        h, c = x.new_zeros(B, Hc, H, W), x.new_zeros(B, Hc, H, W)
    else:
        h, c = hx
    c = c.to(accumulate_dtype(x.dtype))
    outputs = []
    for t in range(T):
        gates = (_with_bias(F.conv2d(x[t], w_ih, padding=_same_padding(w_ih)), b_ih)
                 + _with_bias(F.conv2d(h, w_hh, padding=_same_padding(w_hh)), b_hh))
        i, f, g, o = gates.to(c.dtype).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = (torch.sigmoid(o) * torch.tanh(c)).to(x.dtype)
        outputs.append(h)
    return torch.stack(outputs), (h, c.to(x.dtype))
