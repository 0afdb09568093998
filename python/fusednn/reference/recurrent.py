"""Plain-PyTorch recurrent references: LSTM, GRU and Elman RNN, one cell step and one
layer/direction over a sequence.

Same math and conventions as ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (gate order i, f, g, o
for the LSTM, r, z, n for the GRU). float16 and bfloat16 inputs do the GEMMs in their own
precision and the gate math in float32, as the fused kernels do; the state the kernels
carry in float32 (the LSTM's cell state, the GRU's hidden state) is carried in float32
here too. Every sequence runs through one time loop, ``_sequence``, with the cell's step.
"""

from __future__ import annotations

import torch

from .._validate import accumulate_dtype

__all__ = [
    "gru", "gru_cell", "lstm", "lstm_cell", "rnn", "rnn_cell",
    "torch_gru", "torch_gru_cell", "torch_lstm", "torch_lstm_cell", "torch_rnn", "torch_rnn_cell",
]


# --------------------------------------------------------------------------- the time loop


def _sequence(step, x, state, batch_sizes):
    """Runs ``step`` over a time-major ``x [T, B, I]``.

    ``state`` is a tuple of ``[B, ...]`` tensors; ``step(x_t, state)`` gets the active rows of
    step t (``[0, batch_sizes[t])``, all of them when batch_sizes is None) and returns
    ``(y_t, new_state)`` for those rows. The other rows keep their state and output zeros.
    Returns ``(y [T, B, ...], final state)``.
    """
    T, B = x.shape[0], x.shape[1]
    outputs = []
    for t in range(T):
        n = B if batch_sizes is None else int(batch_sizes[t])
        if n == B:  # every row advances (the graph stays small for double backward)
            y_t, state = step(x[t], state)
            outputs.append(y_t)
            continue
        y_t, new = step(x[t, :n], tuple(s[:n] for s in state))
        state = tuple(torch.cat([s_new, s[n:]]) for s_new, s in zip(new, state))
        outputs.append(torch.cat([y_t, y_t.new_zeros(B - n, *y_t.shape[1:])]))
    return torch.stack(outputs), state


def _gemm(x, w, b):
    """``x W^T + b`` (b may be None) in x's dtype."""
    y = x @ w.T
    return y if b is None else y + b


# --------------------------------------------------------------------------- LSTM


def _zero_state(x, w_ih, w_hr):
    """(h0, c0) of zeros for hx=None, as the ops take it."""
    H = w_ih.shape[0] // 4
    P = w_hr.shape[0] if w_hr is not None else H
    return x.new_zeros(x.shape[-2], P), x.new_zeros(x.shape[-2], H)


def _lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step with ``c`` in the math dtype; returns (h_new in x.dtype, c_new in the math dtype)."""
    gates = _gemm(x, w_ih, b_ih) + _gemm(h, w_hh, b_hh)
    i, f, g, o = gates.to(c.dtype).chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new.to(x.dtype), c_new


def lstm_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step. x: [B, I], hx = (h [B, H], c [B, H]) or None (zeros), w_ih: [4H, I],
    w_hh: [4H, H] -> (h [B, H], c [B, H])."""
    h, c = hx if hx is not None else _zero_state(x, w_ih, None)
    h_new, c_new = _lstm_step(x, h, c.to(accumulate_dtype(x.dtype)), w_ih, w_hh, b_ih, b_hh)
    return h_new, c_new.to(x.dtype)


def lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None):
    """One layer, one direction over a time-major sequence.

    x: [T, B, I]; hx = (h0 [B, P], c0 [B, H]) or None (zeros); w_ih: [4H, I]; w_hh: [4H, P];
    w_hr: [P, H] or None (then P = H); batch_sizes: [T] non-increasing ints or None
    (step t advances rows [0, batch_sizes[t]) only; the others keep their state and
    output zeros). Returns (y [T, B, P], (h_n [B, P], c_n [B, H])).
    """
    h, c = hx if hx is not None else _zero_state(x, w_ih, w_hr)

    def step(x_t, state):
        h_t, c_t = _lstm_step(x_t, *state, w_ih, w_hh, b_ih, b_hh)
        if w_hr is not None:
            h_t = h_t @ w_hr.T
        return h_t, (h_t, c_t)

    y, (h, c) = _sequence(step, x, (h, c.to(accumulate_dtype(x.dtype))), batch_sizes)
    return y, (h, c.to(x.dtype))


# --------------------------------------------------------------------------- GRU


def _zero_hidden(x, w_ih, gates):
    """h0 of zeros [B, H] for hx=None (``gates`` blocks of H rows in w_ih)."""
    return x.new_zeros(x.shape[-2], w_ih.shape[0] // gates)


def _gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step with ``h`` in the math dtype; returns h_new in the math dtype. The
    hidden GEMM reads h in x's dtype, as the kernels' does."""
    input_r, input_z, input_n = _gemm(x, w_ih, b_ih).to(h.dtype).chunk(3, dim=-1)
    hidden_r, hidden_z, hidden_n = _gemm(h.to(x.dtype), w_hh, b_hh).to(h.dtype).chunk(3, dim=-1)
    r = torch.sigmoid(input_r + hidden_r)
    z = torch.sigmoid(input_z + hidden_z)
    n = torch.tanh(input_n + r * hidden_n)
    return (1 - z) * n + z * h


def gru_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step. x: [B, I], hx: [B, H] or None (zeros), w_ih: [3H, I], w_hh: [3H, H],
    b_ih / b_hh: [3H] or None -> h [B, H]."""
    h = hx if hx is not None else _zero_hidden(x, w_ih, 3)
    return _gru_step(x, h.to(accumulate_dtype(x.dtype)), w_ih, w_hh, b_ih, b_hh).to(x.dtype)


def gru(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, batch_sizes=None):
    """One GRU layer, one direction over a time-major sequence.

    x: [T, B, I]; hx: h0 [B, H] or None (zeros); w_ih: [3H, I]; w_hh: [3H, H]; b_ih / b_hh:
    [3H] or None; batch_sizes as for ``lstm``. Returns (y [T, B, H], h_n [B, H]).
    """
    h = hx if hx is not None else _zero_hidden(x, w_ih, 3)

    def step(x_t, state):
        h_t = _gru_step(x_t, state[0], w_ih, w_hh, b_ih, b_hh)
        return h_t.to(x.dtype), (h_t,)

    y, (h,) = _sequence(step, x, (h.to(accumulate_dtype(x.dtype)),), batch_sizes)
    return y, h.to(x.dtype)


# --------------------------------------------------------------------------- Elman RNN


def _rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    """One step: the activation of ``x W_ih^T + b_ih + h W_hh^T + b_hh`` (in the math
    dtype), returned in x's dtype."""
    pre = (_gemm(x, w_ih, b_ih) + _gemm(h, w_hh, b_hh)).to(accumulate_dtype(x.dtype))
    activation = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
    return activation(pre).to(x.dtype)


def rnn_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman RNN step. x: [B, I], hx: [B, H] or None (zeros), w_ih: [H, I], w_hh: [H, H],
    b_ih / b_hh: [H] or None; nonlinearity "tanh" or "relu" -> h [B, H]."""
    h = hx if hx is not None else _zero_hidden(x, w_ih, 1)
    return _rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)


def rnn(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", batch_sizes=None):
    """One Elman RNN layer, one direction over a time-major sequence.

    x: [T, B, I]; hx: h0 [B, H] or None (zeros); w_ih: [H, I]; w_hh: [H, H]; b_ih / b_hh: [H]
    or None; nonlinearity "tanh" or "relu"; batch_sizes as for ``lstm``. Returns
    (y [T, B, H], h_n [B, H]). The state is h itself, in x's dtype.
    """
    h = hx if hx is not None else _zero_hidden(x, w_ih, 1)

    def step(x_t, state):
        h_t = _rnn_step(x_t, state[0], w_ih, w_hh, b_ih, b_hh, nonlinearity)
        return h_t, (h_t,)

    y, (h,) = _sequence(step, x, (h,), batch_sizes)
    return y, h


# --------------------------------------------------------------------------- torch's own kernels


def _torch_sequence(vf_function, x, state, params, has_biases, batch_sizes):
    """Runs one of torch's recurrent kernels (``torch._VF.lstm``, ``gru``, ``rnn_tanh``,
    ``rnn_relu``) as one layer and direction over a time-major ``x``; ``state`` is its hx
    (a tensor ``[1, B, H]`` or the LSTM's pair). Packed batches go through torch's packed
    path; outputs past a sequence's end are zeros. Returns (y, the final state tensors)."""
    if batch_sizes is None:
        y, *final = vf_function(x, state, params, has_biases, 1, 0.0, False, False, False)
        return y, final
    T, B = x.shape[0], x.shape[1]
    sizes = [int(n) for n in batch_sizes]
    steps = [t for t in range(T) if sizes[t] > 0]
    data = torch.cat([x[t, : sizes[t]] for t in steps])
    packed_sizes = torch.tensor([sizes[t] for t in steps], dtype=torch.int64)
    y_data, *final = vf_function(data, packed_sizes, state, params, has_biases, 1, 0.0, False, False)
    y = y_data.new_zeros(T, B, y_data.shape[-1])
    offset = 0
    for t in steps:
        y[t, : sizes[t]] = y_data[offset: offset + sizes[t]]
        offset += sizes[t]
    # torch leaves the state of rows that never ran as given; so do the references.
    return y, final


def _torch_params(w_ih, w_hh, b_ih, b_hh):
    """torch's flat weights of one layer: it takes both biases or neither (a missing one is
    zeros), so also returns whether there are biases."""
    has_biases = b_ih is not None or b_hh is not None
    params = [w_ih, w_hh]
    if has_biases:
        params += [b if b is not None else torch.zeros_like(w_ih[:, 0]) for b in (b_ih, b_hh)]
    return params, has_biases


def torch_lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None):
    """torch.nn.LSTM's own kernels with ``lstm``'s signature (one layer, one direction): the
    low-precision baseline of the tests (PyTorch's computation in that precision) and a
    cross-check of ``lstm``. Packed batches go through torch's packed path; outputs past a
    sequence's end are zeros."""
    h, c = hx if hx is not None else _zero_state(x, w_ih, w_hr)
    params, has_biases = _torch_params(w_ih, w_hh, b_ih, b_hh)
    if w_hr is not None:
        params.append(w_hr)
    y, (h_n, c_n) = _torch_sequence(torch._VF.lstm, x, (h.unsqueeze(0), c.unsqueeze(0)), params, has_biases,
                                    batch_sizes)
    return y, (h_n[0], c_n[0])


def torch_lstm_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """torch.nn.LSTMCell's own kernel with ``lstm_cell``'s signature (the low-precision baseline)."""
    h, c = hx if hx is not None else _zero_state(x, w_ih, None)
    return torch._VF.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)


def torch_gru(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, batch_sizes=None):
    """torch.nn.GRU's own kernels with ``gru``'s signature (one layer, one direction): the
    low-precision baseline of the tests and a cross-check of ``gru``."""
    h = hx if hx is not None else _zero_hidden(x, w_ih, 3)
    params, has_biases = _torch_params(w_ih, w_hh, b_ih, b_hh)
    y, (h_n,) = _torch_sequence(torch._VF.gru, x, h.unsqueeze(0), params, has_biases, batch_sizes)
    return y, h_n[0]


def torch_gru_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """torch.nn.GRUCell's own kernel with ``gru_cell``'s signature (the low-precision baseline)."""
    h = hx if hx is not None else _zero_hidden(x, w_ih, 3)
    return torch._VF.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)


def torch_rnn(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", batch_sizes=None):
    """torch.nn.RNN's own kernels with ``rnn``'s signature (one layer, one direction): the
    low-precision baseline of the tests and a cross-check of ``rnn``."""
    h = hx if hx is not None else _zero_hidden(x, w_ih, 1)
    params, has_biases = _torch_params(w_ih, w_hh, b_ih, b_hh)
    vf_function = torch._VF.rnn_tanh if nonlinearity == "tanh" else torch._VF.rnn_relu
    y, (h_n,) = _torch_sequence(vf_function, x, h.unsqueeze(0), params, has_biases, batch_sizes)
    return y, h_n[0]


def torch_rnn_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """torch.nn.RNNCell's own kernel with ``rnn_cell``'s signature (the low-precision baseline)."""
    h = hx if hx is not None else _zero_hidden(x, w_ih, 1)
    vf_function = torch._VF.rnn_tanh_cell if nonlinearity == "tanh" else torch._VF.rnn_relu_cell
    return vf_function(x, h, w_ih, w_hh, b_ih, b_hh)
