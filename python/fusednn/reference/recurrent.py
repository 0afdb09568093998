"""Plain-PyTorch LSTM references: one cell step and one layer/direction over a sequence.

Same math and conventions as ``torch.nn.LSTM`` (gate order i, f, g, o). float16 and
bfloat16 inputs do the GEMMs in their own precision and the gate math and the cell
state in float32, as the fused kernels do.
"""

from __future__ import annotations

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _cell_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step with ``c`` in the math dtype; returns (h_new in x.dtype, c_new in the math dtype)."""
    gates = x @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        gates = gates + b_ih
    if b_hh is not None:
        gates = gates + b_hh
    i, f, g, o = gates.to(c.dtype).chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new.to(x.dtype), c_new


def lstm_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step. x: [B, I], hx = (h [B, H], c [B, H]), w_ih: [4H, I], w_hh: [4H, H]
    -> (h [B, H], c [B, H])."""
    h, c = hx
    h_new, c_new = _cell_step(x, h, c.to(_math_dtype(x.dtype)), w_ih, w_hh, b_ih, b_hh)
    return h_new, c_new.to(x.dtype)


def lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None):
    """One layer, one direction over a time-major sequence.

    x: [T, B, I]; hx = (h0 [B, P], c0 [B, H]); w_ih: [4H, I]; w_hh: [4H, P];
    w_hr: [P, H] or None (then P = H); batch_sizes: [T] non-increasing ints or None
    (step t advances rows [0, batch_sizes[t]) only; the others keep their state and
    output zeros). Returns (y [T, B, P], (h_n [B, P], c_n [B, H])).
    """
    h, c = hx
    c = c.to(_math_dtype(x.dtype))
    T, B = x.shape[0], x.shape[1]
    outputs = []
    for t in range(T):
        n = B if batch_sizes is None else int(batch_sizes[t])
        h_t, c_t = _cell_step(x[t, :n], h[:n], c[:n], w_ih, w_hh, b_ih, b_hh)
        if w_hr is not None:
            h_t = h_t @ w_hr.T
        h = torch.cat([h_t, h[n:]])
        c = torch.cat([c_t, c[n:]])
        outputs.append(torch.cat([h_t, h_t.new_zeros(B - n, h_t.shape[1])]))
    return torch.stack(outputs), (h, c.to(x.dtype))
