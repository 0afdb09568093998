"""Fused LSTM ops: a cell step and one layer/direction over a whole sequence.

The C++/CUDA op ``fusednn::lstm_forward`` runs the sequence (csrc/recurrent/lstm.cpp):
the input projection of every step as one GEMM, then per step one GEMM
``h_{t-1} W_hh^T`` (plus ``m_t W_hr^T`` with a projection) and one fused pointwise
kernel. ``fusednn::lstm_backward`` walks back with one fused pointwise kernel and
one GEMM per step and forms the weight gradients as single GEMMs over all steps.
Autograd is registered with ``torch.library.register_autograd``. A gradient asked for
with ``create_graph=True`` (double backward) is computed by autograd through the
reference instead (``registry.differentiable_backward``), so it is differentiable.
"""

from __future__ import annotations

import torch

from .. import registry
from .._validate import FLOAT_DTYPES, Args, accumulate_dtype, describe, shape_of
from ..cases import recurrent as _cases
from ..reference import recurrent as reference

__all__ = ["lstm", "lstm_cell"]


# --------------------------------------------------------------------------- validation


def _validate(args: Args, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, x_doc: str, state_names: tuple[str, str]):
    """Checks every argument; returns (h0, c0), zeros when hx is None. ``x_doc`` is x's layout,
    ``[T, B, I]`` (a sequence) or ``[B, I]`` (one step)."""
    args.tensor("x", x, x_doc, ndim=x_doc.count(",") + 1)
    args.tensor("w_ih", w_ih, "[4H, I]", ndim=2, like=x, like_name="x")
    if w_ih.shape[0] % 4 != 0 or w_ih.shape[0] == 0:
        raise args.error("w_ih", "[4H, I] with H >= 1", shape_of(w_ih))
    H, I = w_ih.shape[0] // 4, w_ih.shape[1]
    if x.shape[-1] != I:
        raise args.error("x", f"{x_doc} with I = {I} (w_ih is [4H, I] = {tuple(w_ih.shape)})", shape_of(x))
    P = H
    if w_hr is not None:
        args.tensor("w_hr", w_hr, "[P, H]", ndim=2, like=x, like_name="x")
        P = w_hr.shape[0]
        args.shape("w_hr", w_hr, (P, H), "[P, H]")
    args.tensor("w_hh", w_hh, "[4H, P]" if w_hr is not None else "[4H, H]", ndim=2, like=x, like_name="x")
    args.shape("w_hh", w_hh, (4 * H, P), "[4H, P]" if w_hr is not None else "[4H, H]")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if args.tensor(name, b, "[4H]", ndim=1, like=x, like_name="x", optional=True) is not None:
            args.shape(name, b, (4 * H,), "[4H]")
    B = x.shape[-2]
    if hx is None:
        return x.new_zeros(B, P), x.new_zeros(B, H)
    h_name, c_name = state_names
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise args.error("hx", f"a pair ({h_name}, {c_name}) of tensors or None", describe(hx), TypeError)
    h, c = hx
    h_doc = "[B, P]" if w_hr is not None else "[B, H]"
    args.tensor(h_name, h, h_doc, ndim=2, like=x, like_name="x")
    args.shape(h_name, h, (B, P), h_doc)
    args.tensor(c_name, c, "[B, H]", ndim=2, like=x, like_name="x")
    args.shape(c_name, c, (B, H), "[B, H]")
    return h, c


def _validate_batch_sizes(args: Args, batch_sizes, T: int, B: int) -> list[int] | None:
    if batch_sizes is None:
        return None
    sizes = args.int_list("batch_sizes", batch_sizes, "[T]")
    if len(sizes) != T:
        raise args.error("batch_sizes", f"T = {T} entries, one per step", f"{len(sizes)} entries")
    if any(not 0 <= n <= B for n in sizes):
        raise args.error("batch_sizes", f"in [0, B = {B}]", _short(sizes))
    if any(later > earlier for earlier, later in zip(sizes, sizes[1:])):
        raise args.error("batch_sizes", "non-increasing", _short(sizes))
    return sizes


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 16 else str(values[:16])[:-1] + ", ...]"


# --------------------------------------------------------------------------- registration


@torch.library.register_fake("fusednn::lstm_forward")
def _lstm_forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save_workspace):
    T, B = x.shape[0], x.shape[1]
    H = w_ih.shape[0] // 4
    P = w_hr.shape[0] if w_hr is not None else H
    math = accumulate_dtype(x.dtype)
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
    # The biases are kept only for double backward (references, no memory).
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, cells, hidden)


def _backward(ctx, grad_y, grad_h_n, grad_c_n, *_workspace_grads):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, cells, hidden = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True: a differentiable first gradient, by autograd through the reference.
        def recompute(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
            return reference.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr, ctx.batch_sizes)

        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        grads = registry.differentiable_backward(recompute, inputs, ctx.needs_input_grad[:8],
                                                 (grad_y, grad_h_n, grad_c_n))
        return (*grads, None, None)
    if not ctx.saved_workspace:
        raise RuntimeError(
            "fusednn::lstm_forward ran with save_workspace=False, so it cannot be differentiated; "
            "call fusednn.ops.lstm, which saves the workspace whenever a gradient is needed"
        )
    needs = ctx.needs_input_grad
    grad_x, grad_h0, grad_c0, grad_w_ih_hh, grad_bias, grad_w_hr = torch.ops.fusednn.lstm_backward(
        grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, ctx.batch_sizes, y, gates, cells, hidden, needs[0]
    )
    # One GEMM gives [dW_ih | dW_hh]; each comes back contiguous, as torch's weight gradients
    # (optimizers and DDP's gradient buckets expect it). The copy is O(weights).
    grad_w_ih, grad_w_hh = (g.contiguous() for g in grad_w_ih_hh.split([w_ih.shape[1], w_hh.shape[1]], dim=1))
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
    """Whether the forward saves its workspace. Always under torch.jit.trace: a trace fixes
    the flag as a constant, and its sanity check reruns the forward without grad mode."""
    if torch.jit.is_tracing():
        return True
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
    args = Args("fusednn.ops.lstm")
    h0, c0 = _validate(args, x, hx, w_ih, w_hh, b_ih, b_hh, w_hr, "[T, B, I]", ("h0", "c0"))
    T, B = x.shape[0], x.shape[1]
    if T == 0:
        raise args.error("x", "[T, B, I] with T >= 1 (a sequence of at least one step)", shape_of(x))
    sizes = _validate_batch_sizes(args, batch_sizes, T, B)
    if LSTM.select(x.device, x.dtype) == "reference":
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
    h, c = _validate(Args("fusednn.ops.lstm_cell"), x, hx, w_ih, w_hh, b_ih, b_hh, None, "[B, I]", ("h", "c"))
    if LSTM_CELL.select(x.device, x.dtype) == "reference":
        return reference.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    save = _needs_grad(x, h, c, w_ih, w_hh, b_ih, b_hh)
    _y, h_n, c_n, *_workspace = torch.ops.fusednn.lstm_forward(
        x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, None, None, save
    )
    return h_n, c_n


# --------------------------------------------------------------------------- registry

_KERNELS = (registry.Kernel("cuda", FLOAT_DTYPES), registry.Kernel("cpu", FLOAT_DTYPES))

LSTM = registry.register(registry.OpInfo(
    name="lstm", family="recurrent", function=lstm, reference=reference.lstm, kernels=_KERNELS,
    samples=_cases.lstm_samples, bad_inputs=_cases.lstm_bad_inputs, outputs=("y", "h_n", "c_n"),
    input_names={"hx[0]": "h0", "hx[1]": "c0"}, double_backward=True,
    baseline=reference.torch_lstm, bench=_cases.BENCH_SHAPES,
))
LSTM_CELL = registry.register(registry.OpInfo(
    name="lstm_cell", family="recurrent", function=lstm_cell, reference=reference.lstm_cell, kernels=_KERNELS,
    samples=_cases.lstm_cell_samples, bad_inputs=_cases.lstm_cell_bad_inputs, outputs=("h", "c"),
    input_names={"hx[0]": "h", "hx[1]": "c"}, double_backward=True,
    baseline=reference.torch_lstm_cell,
))
