"""Fused LSTM ops: a cell step and one layer/direction over a whole sequence.

The C++/CUDA op ``fusednn::lstm_forward`` runs the sequence (csrc/recurrent/lstm.cpp):
the input projection of every step as one GEMM, then per step one GEMM
``h_{t-1} W_hh^T`` (plus ``m_t W_hr^T`` with a projection) and one fused pointwise
kernel. ``fusednn::lstm_backward`` walks back with one fused pointwise kernel and
one GEMM per step and forms the weight gradients as single GEMMs over all steps.
Autograd is registered with ``torch.library.register_autograd``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _runtime
from ..reference import recurrent as reference

__all__ = ["lstm", "lstm_cell"]

_KERNELS = ("cuda", "cpu")
_SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- validation


def _check_tensor(op, name, t, shape_doc, ndim, dtype=None, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fusednn.ops.{op}: {name} must be a tensor {shape_doc}; got {type(t).__name__}")
    if dtype is None:
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(
                f"fusednn.ops.{op}: {name} must be float32, float64, float16 or bfloat16; got {t.dtype}"
            )
    elif t.dtype != dtype:
        raise TypeError(f"fusednn.ops.{op}: {name} must have x's dtype {dtype}; got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"fusednn.ops.{op}: {name} must be on x's device {device}; got {t.device}")
    if t.dim() != ndim:
        raise ValueError(f"fusednn.ops.{op}: {name} must be {ndim}-D {shape_doc}; got shape {tuple(t.shape)}")


def _check_shape(op, name, t, expected, shape_doc):
    if tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"fusednn.ops.{op}: {name} must be {shape_doc} = {tuple(expected)}; got shape {tuple(t.shape)}"
        )


def _validate(op, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, x_doc):
    """Checks every argument; returns (h0, c0), zeros when hx is None."""
    _check_tensor(op, "x", x, x_doc, 3 if op == "lstm" else 2)
    dtype, device = x.dtype, x.device
    _check_tensor(op, "w_ih", w_ih, "[4H, I]", 2, dtype, device)
    if w_ih.shape[0] % 4 != 0 or w_ih.shape[0] == 0:
        raise ValueError(f"fusednn.ops.{op}: w_ih must be [4H, I] with H >= 1; got shape {tuple(w_ih.shape)}")
    H, I = w_ih.shape[0] // 4, x.shape[-1]
    _check_shape(op, "w_ih", w_ih, (4 * H, I), "[4H, I]")
    P = H
    if w_hr is not None:
        _check_tensor(op, "w_hr", w_hr, "[P, H]", 2, dtype, device)
        P = w_hr.shape[0]
        _check_shape(op, "w_hr", w_hr, (P, H), "[P, H]")
    _check_tensor(op, "w_hh", w_hh, "[4H, P]", 2, dtype, device)
    _check_shape(op, "w_hh", w_hh, (4 * H, P), "[4H, P]" if w_hr is not None else "[4H, H]")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            _check_tensor(op, name, b, "[4H]", 1, dtype, device)
            _check_shape(op, name, b, (4 * H,), "[4H]")
    B = x.shape[-2]
    if hx is None:
        return x.new_zeros(B, P), x.new_zeros(B, H)
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"fusednn.ops.{op}: hx must be a pair (h, c) of tensors; got {type(hx).__name__}")
    h, c = hx
    hname, cname = ("h0", "c0") if op == "lstm" else ("h", "c")
    _check_tensor(op, hname, h, "[B, P]" if w_hr is not None else "[B, H]", 2, dtype, device)
    _check_shape(op, hname, h, (B, P), "[B, P]" if w_hr is not None else "[B, H]")
    _check_tensor(op, cname, c, "[B, H]", 2, dtype, device)
    _check_shape(op, cname, c, (B, H), "[B, H]")
    return h, c


def _validate_batch_sizes(batch_sizes, T, B) -> list[int] | None:
    if batch_sizes is None:
        return None
    if isinstance(batch_sizes, torch.Tensor):
        if batch_sizes.dtype.is_floating_point or batch_sizes.dtype.is_complex or batch_sizes.dtype == torch.bool:
            raise TypeError(f"fusednn.ops.lstm: batch_sizes must hold integers; got {batch_sizes.dtype}")
        if batch_sizes.dim() != 1:
            raise ValueError(f"fusednn.ops.lstm: batch_sizes must be 1-D [T]; got shape {tuple(batch_sizes.shape)}")
        sizes = batch_sizes.tolist()
    elif isinstance(batch_sizes, Sequence):
        sizes = list(batch_sizes)
        if not all(isinstance(s, int) for s in sizes):
            raise TypeError("fusednn.ops.lstm: batch_sizes must hold integers")
    else:
        raise TypeError(f"fusednn.ops.lstm: batch_sizes must be a tensor or a list of ints; got {type(batch_sizes)}")
    if len(sizes) != T:
        raise ValueError(f"fusednn.ops.lstm: batch_sizes must have T = {T} entries (one per step); got {len(sizes)}")
    for t, n in enumerate(sizes):
        if not 0 <= n <= B:
            raise ValueError(f"fusednn.ops.lstm: batch_sizes[{t}] must be in [0, B = {B}]; got {n}")
        if t and n > sizes[t - 1]:
            raise ValueError(
                f"fusednn.ops.lstm: batch_sizes must be non-increasing; got {sizes[t - 1]} then {n} at step {t}"
            )
    return sizes


# --------------------------------------------------------------------------- registration


@torch.library.register_fake("fusednn::lstm_forward")
def _lstm_forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save_workspace):
    T, B = x.shape[0], x.shape[1]
    H = w_ih.shape[0] // 4
    P = w_hr.shape[0] if w_hr is not None else H
    math = torch.float64 if x.dtype == torch.float64 else torch.float32
    if save_workspace:
        gates, cells = x.new_empty(T, B, 4 * H, dtype=math), x.new_empty(T, B, H, dtype=math)
        hidden = x.new_empty(T, B, H) if w_hr is not None else x.new_empty(0)
    else:
        gates, cells, hidden = x.new_empty(0, dtype=math), x.new_empty(0, dtype=math), x.new_empty(0)
    return x.new_empty(T, B, P), x.new_empty(B, P), x.new_empty(B, H), gates, cells, hidden


@torch.library.register_fake("fusednn::lstm_backward")
def _lstm_backward_fake(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, batch_sizes, y, gates, cells,
                        hidden, input_grad):
    return (
        x.new_empty(x.shape) if input_grad else x.new_empty(0),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        w_ih.new_empty(w_ih.shape[0], w_ih.shape[1] + w_hh.shape[1]),
        w_ih.new_empty(w_ih.shape[0]),
        w_hr.new_empty(w_hr.shape) if w_hr is not None else x.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save_workspace = inputs
    y, _h_n, _c_n, gates, cells, hidden = output
    ctx.mark_non_differentiable(gates, cells, hidden)
    ctx.set_materialize_grads(False)
    ctx.batch_sizes = batch_sizes
    ctx.saved_workspace = save_workspace
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden)


def _backward(ctx, grad_y, grad_h_n, grad_c_n, *_workspace_grads):
    if not ctx.saved_workspace:
        raise RuntimeError(
            "fusednn::lstm_forward ran with save_workspace=False, so it cannot be differentiated; "
            "call fusednn.ops.lstm, which saves the workspace whenever a gradient is needed"
        )
    x, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_x, grad_h0, grad_c0, grad_w_ih_hh, grad_bias, grad_w_hr = torch.ops.fusednn.lstm_backward(
        grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, ctx.batch_sizes, y, gates, cells, hidden, needs[0]
    )
    grad_w_ih, grad_w_hh = grad_w_ih_hh.split([w_ih.shape[1], w_hh.shape[1]], dim=1)
    return (
        grad_x if needs[0] else None,
        grad_h0 if needs[1] else None,
        grad_c0 if needs[2] else None,
        grad_w_ih if needs[3] else None,
        grad_w_hh if needs[4] else None,
        grad_bias if needs[5] else None,
        grad_bias if needs[6] else None,
        grad_w_hr if needs[7] else None,
        None,
        None,
    )


torch.library.register_autograd("fusednn::lstm_forward", _backward, setup_context=_setup_context)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------- public ops


def lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None):
    """One LSTM layer in one direction over a time-major sequence (``torch.nn.LSTM``'s math).

    Args:
        x: ``[T, B, I]`` input, T >= 1. float32, float64, float16 or bfloat16; every
            other tensor must share its dtype and device.
        hx: ``(h0 [B, P], c0 [B, H])``, or None for zeros.
        w_ih: ``[4H, I]``, w_hh: ``[4H, P]``, b_ih / b_hh: ``[4H]`` or None; gate order
            i, f, g, o as in ``torch.nn.LSTM``.
        w_hr: ``[P, H]`` projection (``proj_size``), or None (then P = H).
        batch_sizes: None, or ``[T]`` non-increasing ints (a tensor or list, as in
            ``PackedSequence``): step t advances rows ``[0, batch_sizes[t])`` only. The
            other rows keep their state and get ``y = 0``; ``h_n``/``c_n`` hold each
            row's state after its last step. Padded entries of ``x`` are ignored.

    Returns:
        ``(y [T, B, P], (h_n [B, P], c_n [B, H]))`` in x's dtype. float16/bfloat16
        carry the cell state and gate math in float32 across all steps.

    Saved for backward (only when a gradient is needed): x, h0, c0, the weights, y,
    the gate activations ``[T, B, 4H]`` and cell states ``[T, B, H]`` (float32 for
    half types), and with w_hr the unprojected hidden states ``[T, B, H]``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"fusednn.ops.lstm: x must be a 3-D tensor [T, B, I]; got {got}")
    h0, c0 = _validate("lstm", x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, "[T, B, I]")
    T, B = x.shape[0], x.shape[1]
    if T == 0:
        raise ValueError("fusednn.ops.lstm: x must have at least one time step (T >= 1); got T = 0")
    sizes = _validate_batch_sizes(batch_sizes, T, B)
    backend = _runtime.select_backend("lstm", x.device, _KERNELS)
    if backend == "reference":
        return reference.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr, sizes)
    save = _needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    y, h_n, c_n, *_workspace = torch.ops.fusednn.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, sizes, save)
    return y, (h_n, c_n)


def lstm_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step (``torch.nn.LSTMCell``'s math): the sequence op with T = 1.

    Args:
        x: ``[B, I]`` (float32, float64, float16 or bfloat16); hx: ``(h [B, H], c [B, H])``
            or None for zeros; w_ih: ``[4H, I]``; w_hh: ``[4H, H]``; b_ih / b_hh: ``[4H]`` or None.

    Returns:
        ``(h [B, H], c [B, H])`` in x's dtype (gate math in float32 for half types).

    Saved for backward (only when a gradient is needed): x, h, c, the weights, the
    gate activations ``[B, 4H]`` and the new cell state.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"fusednn.ops.lstm_cell: x must be a 2-D tensor [B, I]; got {got}")
    h, c = _validate("lstm_cell", x, hx, w_ih, w_hh, b_ih, b_hh, None, "[B, I]")
    backend = _runtime.select_backend("lstm_cell", x.device, _KERNELS)
    if backend == "reference":
        return reference.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    save = _needs_grad(x, h, c, w_ih, w_hh, b_ih, b_hh)
    _y, h_n, c_n, *_workspace = torch.ops.fusednn.lstm_forward(
        x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, None, None, save
    )
    return h_n, c_n
