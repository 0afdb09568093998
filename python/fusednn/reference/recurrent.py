"""Plain-PyTorch LSTM references: one cell step and one layer/direction over a sequence.

Same math and conventions as ``torch.nn.LSTM`` (gate order i, f, g, o). float16 and
bfloat16 inputs do the GEMMs in their own precision and the gate math and the cell
state in float32, as the fused kernels do.
"""

from __future__ import annotations

import torch

from .._validate import accumulate_dtype

__all__ = ["lstm", "lstm_cell", "torch_lstm", "torch_lstm_cell"]


def _zero_state(x, w_ih, w_hr):
    """(h0, c0) of zeros for hx=None, as the ops take it."""
    H = w_ih.shape[0] // 4
    P = w_hr.shape[0] if w_hr is not None else H
    return x.new_zeros(x.shape[-2], P), x.new_zeros(x.shape[-2], H)


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
    """One LSTM step. x: [B, I], hx = (h [B, H], c [B, H]) or None (zeros), w_ih: [4H, I],
    w_hh: [4H, H] -> (h [B, H], c [B, H])."""
    h, c = hx if hx is not None else _zero_state(x, w_ih, None)
    h_new, c_new = _cell_step(x, h, c.to(accumulate_dtype(x.dtype)), w_ih, w_hh, b_ih, b_hh)
    return h_new, c_new.to(x.dtype)


def lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None):
    """One layer, one direction over a time-major sequence.

    x: [T, B, I]; hx = (h0 [B, P], c0 [B, H]) or None (zeros); w_ih: [4H, I]; w_hh: [4H, P];
    w_hr: [P, H] or None (then P = H); batch_sizes: [T] non-increasing ints or None
    (step t advances rows [0, batch_sizes[t]) only; the others keep their state and
    output zeros). Returns (y [T, B, P], (h_n [B, P], c_n [B, H])).
    """
    h, c = hx if hx is not None else _zero_state(x, w_ih, w_hr)
    c = c.to(accumulate_dtype(x.dtype))
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


def torch_lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None):
    """torch.nn.LSTM's own kernels with ``lstm``'s signature (one layer, one direction): the
    low-precision baseline of the tests (PyTorch's computation in that precision) and a
    cross-check of ``lstm``. Packed batches go through torch's packed path; outputs past a
    sequence's end are zeros."""
    h, c = hx if hx is not None else _zero_state(x, w_ih, w_hr)
    T, B = x.shape[0], x.shape[1]
    if B == 0:
        return lstm(x, (h, c), w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
    has_biases = b_ih is not None or b_hh is not None
    params = [w_ih, w_hh]
    if has_biases:  # torch takes both biases or neither
        params += [b if b is not None else torch.zeros_like(w_ih[:, 0]) for b in (b_ih, b_hh)]
    if w_hr is not None:
        params.append(w_hr)
    state = (h.unsqueeze(0), c.unsqueeze(0))
    if batch_sizes is None:
        y, h_n, c_n = torch._VF.lstm(x, state, params, has_biases, 1, 0.0, False, False, False)
        return y, (h_n[0], c_n[0])
    sizes = [int(n) for n in batch_sizes]
    steps = [t for t in range(T) if sizes[t] > 0]
    data = torch.cat([x[t, : sizes[t]] for t in steps])
    packed_sizes = torch.tensor([sizes[t] for t in steps], dtype=torch.int64)
    y_data, h_n, c_n = torch._VF.lstm(data, packed_sizes, state, params, has_biases, 1, 0.0, False, False)
    y = y_data.new_zeros(T, B, y_data.shape[-1])
    offset = 0
    for t in steps:
        y[t, : sizes[t]] = y_data[offset: offset + sizes[t]]
        offset += sizes[t]
    # torch leaves the state of rows that never ran as given; so does lstm.
    return y, (h_n[0], c_n[0])


def torch_lstm_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """torch.nn.LSTMCell's own kernel with ``lstm_cell``'s signature (the low-precision baseline)."""
    h, c = hx if hx is not None else _zero_state(x, w_ih, None)
    return torch._VF.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
