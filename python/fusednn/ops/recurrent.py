"""Fused recurrent ops: LSTM, GRU and Elman RNN, a cell step and one layer/direction over a
whole sequence.

The C++/CUDA ops ``fusednn::lstm_forward``, ``gru_forward`` and ``rnn_forward`` run the
sequence (csrc/recurrent/sequence.cpp, one time loop for every cell): the input
projection of every step as one GEMM, then per step one GEMM ``h_{t-1} W_hh^T`` (plus
``m_t W_hr^T`` with the LSTM's projection) and one fused pointwise kernel. The matching
``*_backward`` ops walk back with one fused pointwise kernel and one GEMM per step and
form the weight gradients as single GEMMs over all steps. A cell op is its sequence op
with T = 1. Autograd is registered with ``torch.library.register_autograd``. A gradient
asked for with ``create_graph=True`` (double backward) is computed by autograd through
the reference instead (``registry.differentiable_backward``), so it is differentiable.
"""

from __future__ import annotations

import torch

from .. import registry
from .._validate import FLOAT_DTYPES, Args, accumulate_dtype, describe, shape_of
from ..cases import recurrent as _cases
from ..reference import recurrent as reference

__all__ = ["gru", "gru_cell", "lstm", "lstm_cell", "rnn", "rnn_cell"]

NONLINEARITIES = ("tanh", "relu")


# --------------------------------------------------------------------------- validation


def _validate(args: Args, x, hx, w_ih, w_hh, b_ih, b_hh, *, gates: int, x_doc: str, states: tuple[str, ...],
              w_hr=None) -> tuple[torch.Tensor, ...]:
    """Checks the tensors of a recurrent op; returns its initial state tensors (zeros when
    hx is None).

    ``gates``: blocks of H rows in w_ih and w_hh (LSTM 4, GRU 3, RNN 1). ``states``: the
    names of the state tensors, two (h, c) for the LSTM, whose hx is that pair, or one for
    the GRU and the RNN, whose hx is the tensor itself. ``x_doc``: x's layout, ``[T, B, I]``
    (a sequence) or ``[B, I]`` (one step). ``w_hr``: the LSTM's projection, or None.
    """
    rows = f"{gates}H" if gates > 1 else "H"
    args.tensor("x", x, x_doc, ndim=x_doc.count(",") + 1)
    args.tensor("w_ih", w_ih, f"[{rows}, I]", ndim=2, like=x, like_name="x")
    if w_ih.shape[0] % gates != 0 or w_ih.shape[0] == 0:
        raise args.error("w_ih", f"[{rows}, I] with H >= 1", shape_of(w_ih))
    H, I = w_ih.shape[0] // gates, w_ih.shape[1]
    if x.shape[-1] != I:
        raise args.error("x", f"{x_doc} with I = {I} (w_ih is [{rows}, I] = {tuple(w_ih.shape)})", shape_of(x))
    P = H
    if w_hr is not None:
        args.tensor("w_hr", w_hr, "[P, H]", ndim=2, like=x, like_name="x")
        P = w_hr.shape[0]
        args.shape("w_hr", w_hr, (P, H), "[P, H]")
    w_hh_doc = f"[{rows}, P]" if w_hr is not None else f"[{rows}, H]"
    args.tensor("w_hh", w_hh, w_hh_doc, ndim=2, like=x, like_name="x")
    args.shape("w_hh", w_hh, (gates * H, P), w_hh_doc)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if args.tensor(name, b, f"[{rows}]", ndim=1, like=x, like_name="x", optional=True) is not None:
            args.shape(name, b, (gates * H,), f"[{rows}]")

    B = x.shape[-2]
    paired = len(states) == 2
    widths, docs = ((P, H), ("[B, P]" if w_hr is not None else "[B, H]", "[B, H]")) if paired else ((H,), ("[B, H]",))
    if hx is None:
        return tuple(x.new_zeros(B, width) for width in widths)
    if paired and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
        raise args.error("hx", f"a pair ({states[0]}, {states[1]}) of tensors or None", describe(hx), TypeError)
    tensors = tuple(hx) if paired else (hx,)
    for name, t, width, doc in zip(states, tensors, widths, docs):
        # a single-tensor hx may be None (the message says so); a tensor of the pair may not
        args.tensor(name, t, doc, ndim=2, like=x, like_name="x", optional=not paired)
        args.shape(name, t, (B, width), doc)
    return tensors


def _validate_sequence(args: Args, x, batch_sizes) -> list[int] | None:
    """A sequence op's x has T >= 1 steps; returns batch_sizes as a checked list (or None)."""
    T, B = x.shape[0], x.shape[1]
    if T == 0:
        raise args.error("x", "[T, B, I] with T >= 1 (a sequence of at least one step)", shape_of(x))
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


def _validate_nonlinearity(args: Args, nonlinearity) -> str:
    if not isinstance(nonlinearity, str):
        raise args.error("nonlinearity", '"tanh" or "relu"', describe(nonlinearity), TypeError)
    if nonlinearity not in NONLINEARITIES:
        raise args.error("nonlinearity", '"tanh" or "relu"', describe(nonlinearity))
    return nonlinearity


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 16 else str(values[:16])[:-1] + ", ...]"


# --------------------------------------------------------------------------- registration: fake impls


def _workspace_fake(x, save_workspace: bool, *shapes) -> tuple[torch.Tensor, ...]:
    """The workspace tensors of a forward op (accumulate dtype): ``shapes`` when saved, else empty."""
    math = accumulate_dtype(x.dtype)
    return tuple(x.new_empty(shape if save_workspace else (0,), dtype=math) for shape in shapes)


def _grad_x_fake(x, input_grad: bool) -> torch.Tensor:
    return x.new_empty(x.shape) if input_grad else x.new_empty(0)


@torch.library.register_fake("fusednn::lstm_forward")
def _lstm_forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save_workspace):
    T, B = x.shape[0], x.shape[1]
    H = w_ih.shape[0] // 4
    P = w_hr.shape[0] if w_hr is not None else H
    gates, cells = _workspace_fake(x, save_workspace, (T, B, 4 * H), (T, B, H))
    hidden = x.new_empty(T, B, H) if save_workspace and w_hr is not None else x.new_empty(0)
    return x.new_empty(T, B, P), x.new_empty(B, P), x.new_empty(B, H), gates, cells, hidden


@torch.library.register_fake("fusednn::lstm_backward")
def _lstm_backward_fake(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, batch_sizes, y, gates, cells,
                        hidden, input_grad):
    return (
        _grad_x_fake(x, input_grad),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        w_ih.new_empty(w_ih.shape[0], w_ih.shape[1] + w_hh.shape[1]),
        w_ih.new_empty(w_ih.shape[0]),
        w_hr.new_empty(w_hr.shape) if w_hr is not None else x.new_empty(0),
    )


@torch.library.register_fake("fusednn::gru_forward")
def _gru_forward_fake(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, save_workspace):
    T, B, H = x.shape[0], x.shape[1], w_ih.shape[0] // 3
    gates, states = _workspace_fake(x, save_workspace, (T, B, 4 * H), (T, B, H))
    return x.new_empty(T, B, H), x.new_empty(B, H), gates, states


@torch.library.register_fake("fusednn::gru_backward")
def _gru_backward_fake(grad_y, grad_h_n, x, h0, w_ih, w_hh, batch_sizes, y, gates, states, input_grad):
    return (
        _grad_x_fake(x, input_grad),
        h0.new_empty(h0.shape),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        w_ih.new_empty(w_ih.shape[0]),
        w_ih.new_empty(w_ih.shape[0]),
    )


@torch.library.register_fake("fusednn::rnn_forward")
def _rnn_forward_fake(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, save_workspace):
    T, B, H = x.shape[0], x.shape[1], w_ih.shape[0]
    (gates,) = _workspace_fake(x, save_workspace, (T, B, H))
    return x.new_empty(T, B, H), x.new_empty(B, H), gates


@torch.library.register_fake("fusednn::rnn_backward")
def _rnn_backward_fake(grad_y, grad_h_n, x, h0, w_ih, w_hh, nonlinearity, batch_sizes, y, gates, input_grad):
    return (
        _grad_x_fake(x, input_grad),
        h0.new_empty(h0.shape),
        w_ih.new_empty(w_ih.shape[0], w_ih.shape[1] + w_hh.shape[1]),
        w_ih.new_empty(w_ih.shape[0]),
    )


# --------------------------------------------------------------------------- registration: autograd
#
# Each forward op's inputs are its tensors (x, the initial state, the weights), then its
# options (nonlinearity, batch_sizes, save_workspace); its outputs are the differentiable
# ones (y, the final state), then the workspace the backward op reads.


def _save_for_backward(ctx, tensors, output, differentiable: int, **options) -> None:
    """The common part of setup_context: saves the input ``tensors``, y and the workspace
    (``output[differentiable:]``, not differentiable) and keeps the ``options``. The biases
    are kept only for double backward (references, no memory)."""
    workspace = output[differentiable:]
    ctx.mark_non_differentiable(*workspace)
    ctx.set_materialize_grads(False)
    for name, value in options.items():
        setattr(ctx, name, value)
    ctx.save_for_backward(*tensors, output[0], *workspace)


def _reference_gradients(ctx, recompute, tensors, grad_outputs) -> list:
    """create_graph=True: a differentiable first gradient, by autograd through the reference
    (``recompute(*tensors)``)."""
    return registry.differentiable_backward(recompute, tensors, ctx.needs_input_grad[:len(tensors)], grad_outputs)


def _require_workspace(ctx, op: str) -> None:
    if not ctx.saved_workspace:
        raise RuntimeError(
            f"fusednn::{op}_forward ran with save_workspace=False, so it cannot be differentiated; "
            f"call fusednn.ops.{op}, which saves the workspace whenever a gradient is needed"
        )


def _split_weight_gradient(grad_w_ih_hh, w_ih, w_hh) -> tuple[torch.Tensor, torch.Tensor]:
    """One GEMM gives [dW_ih | dW_hh]; each comes back contiguous, as torch's weight gradients
    (optimizers and DDP's gradient buckets expect it). The copy is O(weights)."""
    return tuple(g.contiguous() for g in grad_w_ih_hh.split([w_ih.shape[1], w_hh.shape[1]], dim=1))


def _needed(ctx, grads) -> tuple:
    """The gradients of the tensor inputs that need one (None for the others)."""
    return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad))


def _lstm_setup_context(ctx, inputs, output):
    *tensors, batch_sizes, save_workspace = inputs
    _save_for_backward(ctx, tensors, output, 3, batch_sizes=batch_sizes, saved_workspace=save_workspace)


def _lstm_backward(ctx, grad_y, grad_h_n, grad_c_n, *_workspace_grads):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, cells, hidden = ctx.saved_tensors
    if torch.is_grad_enabled():
        def recompute(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
            return reference.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr, ctx.batch_sizes)

        grads = _reference_gradients(ctx, recompute, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr),
                                     (grad_y, grad_h_n, grad_c_n))
        return (*grads, None, None)
    _require_workspace(ctx, "lstm")
    grad_x, grad_h0, grad_c0, grad_w_ih_hh, grad_bias, grad_w_hr = torch.ops.fusednn.lstm_backward(
        grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, ctx.batch_sizes, y, gates, cells, hidden,
        ctx.needs_input_grad[0]
    )
    grad_w_ih, grad_w_hh = _split_weight_gradient(grad_w_ih_hh, w_ih, w_hh)
    grads = (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_bias, grad_w_hr)
    return (*_needed(ctx, grads), None, None)


def _gru_setup_context(ctx, inputs, output):
    *tensors, batch_sizes, save_workspace = inputs
    _save_for_backward(ctx, tensors, output, 2, batch_sizes=batch_sizes, saved_workspace=save_workspace)


def _gru_backward(ctx, grad_y, grad_h_n, *_workspace_grads):
    x, h0, w_ih, w_hh, b_ih, b_hh, y, gates, states = ctx.saved_tensors
    if torch.is_grad_enabled():
        grads = _reference_gradients(ctx, lambda *tensors: reference.gru(*tensors, ctx.batch_sizes),
                                     (x, h0, w_ih, w_hh, b_ih, b_hh), (grad_y, grad_h_n))
        return (*grads, None, None)
    _require_workspace(ctx, "gru")
    # each weight and bias gradient comes on its own: the GRU's input and hidden gate gradients differ
    grads = torch.ops.fusednn.gru_backward(grad_y, grad_h_n, x, h0, w_ih, w_hh, ctx.batch_sizes, y, gates, states,
                                           ctx.needs_input_grad[0])
    return (*_needed(ctx, grads), None, None)


def _rnn_setup_context(ctx, inputs, output):
    *tensors, nonlinearity, batch_sizes, save_workspace = inputs
    _save_for_backward(ctx, tensors, output, 2, nonlinearity=nonlinearity, batch_sizes=batch_sizes,
                       saved_workspace=save_workspace)


def _rnn_backward(ctx, grad_y, grad_h_n, *_workspace_grads):
    x, h0, w_ih, w_hh, b_ih, b_hh, y, gates = ctx.saved_tensors
    if torch.is_grad_enabled():
        grads = _reference_gradients(
            ctx, lambda *tensors: reference.rnn(*tensors, ctx.nonlinearity, ctx.batch_sizes),
            (x, h0, w_ih, w_hh, b_ih, b_hh), (grad_y, grad_h_n))
        return (*grads, None, None, None)
    _require_workspace(ctx, "rnn")
    grad_x, grad_h0, grad_w_ih_hh, grad_bias = torch.ops.fusednn.rnn_backward(
        grad_y, grad_h_n, x, h0, w_ih, w_hh, ctx.nonlinearity, ctx.batch_sizes, y, gates, ctx.needs_input_grad[0]
    )
    grad_w_ih, grad_w_hh = _split_weight_gradient(grad_w_ih_hh, w_ih, w_hh)
    grads = (grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_bias, grad_bias)
    return (*_needed(ctx, grads), None, None, None)


torch.library.register_autograd("fusednn::lstm_forward", _lstm_backward, setup_context=_lstm_setup_context)
torch.library.register_autograd("fusednn::gru_forward", _gru_backward, setup_context=_gru_setup_context)
torch.library.register_autograd("fusednn::rnn_forward", _rnn_backward, setup_context=_rnn_setup_context)


def _needs_grad(*tensors) -> bool:
    """Whether the forward saves its workspace. Always under torch.jit.trace: a trace fixes
    the flag as a constant, and its sanity check reruns the forward without grad mode."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------- public ops: LSTM


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
    h0, c0 = _validate(args, x, hx, w_ih, w_hh, b_ih, b_hh, gates=4, x_doc="[T, B, I]", states=("h0", "c0"),
                       w_hr=w_hr)
    sizes = _validate_sequence(args, x, batch_sizes)
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
    h, c = _validate(Args("fusednn.ops.lstm_cell"), x, hx, w_ih, w_hh, b_ih, b_hh, gates=4, x_doc="[B, I]",
                     states=("h", "c"))
    if LSTM_CELL.select(x.device, x.dtype) == "reference":
        return reference.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    save = _needs_grad(x, h, c, w_ih, w_hh, b_ih, b_hh)
    _y, h_n, c_n, *_workspace = torch.ops.fusednn.lstm_forward(
        x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, None, None, save
    )
    return h_n, c_n


# --------------------------------------------------------------------------- public ops: GRU


def gru(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, batch_sizes=None):
    """One GRU layer in one direction over a time-major sequence (``torch.nn.GRU``'s math:
    ``r = σ(W_ir x + b_ir + W_hr h + b_hr)``, z likewise, ``n = tanh(W_in x + b_in +
    r ⊙ (W_hn h + b_hn))``, ``h' = (1 - z) ⊙ n + z ⊙ h``).

    Args:
        x: ``[T, B, I]`` input, T >= 1. float32, float64, float16 or bfloat16; every
            other tensor must share its dtype and device.
        hx: ``h0 [B, H]``, or None for zeros.
        w_ih: ``[3H, I]``, w_hh: ``[3H, H]``, b_ih / b_hh: ``[3H]`` or None; gate order
            r, z, n as in ``torch.nn.GRU``.
        batch_sizes: None, or ``[T]`` non-increasing ints, as for ``lstm``: step t advances
            rows ``[0, batch_sizes[t])`` only; the other rows keep their state and get
            ``y = 0``. Padded entries of ``x`` are ignored.

    Returns:
        ``(y [T, B, H], h_n [B, H])`` in x's dtype. float16/bfloat16 carry the hidden
        state and gate math in float32 across all steps.

    Saved for backward (only when a gradient is needed): x, h0, the weights, y, the gate
    activations r, z, n and ``W_hn h + b_hn`` ``[T, B, 4H]`` and the hidden states
    ``[T, B, H]`` (float32 for half types).
    """
    args = Args("fusednn.ops.gru")
    (h0,) = _validate(args, x, hx, w_ih, w_hh, b_ih, b_hh, gates=3, x_doc="[T, B, I]", states=("hx",))
    sizes = _validate_sequence(args, x, batch_sizes)
    if GRU.select(x.device, x.dtype) == "reference":
        return reference.gru(x, h0, w_ih, w_hh, b_ih, b_hh, sizes)
    save = _needs_grad(x, h0, w_ih, w_hh, b_ih, b_hh)
    y, h_n, *_workspace = torch.ops.fusednn.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, sizes, save)
    return y, h_n


def gru_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step (``torch.nn.GRUCell``'s math): the sequence op with T = 1.

    Args:
        x: ``[B, I]`` (float32, float64, float16 or bfloat16); hx: ``[B, H]`` or None for
            zeros; w_ih: ``[3H, I]``; w_hh: ``[3H, H]``; b_ih / b_hh: ``[3H]`` or None.

    Returns:
        ``h [B, H]`` in x's dtype (gate math in float32 for half types).

    Saved for backward (only when a gradient is needed): x, hx, the weights, the new h,
    the gate activations ``[B, 4H]`` and the new hidden state in the accumulate dtype.
    """
    (h,) = _validate(Args("fusednn.ops.gru_cell"), x, hx, w_ih, w_hh, b_ih, b_hh, gates=3, x_doc="[B, I]",
                     states=("hx",))
    if GRU_CELL.select(x.device, x.dtype) == "reference":
        return reference.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    save = _needs_grad(x, h, w_ih, w_hh, b_ih, b_hh)
    _y, h_n, *_workspace = torch.ops.fusednn.gru_forward(x.unsqueeze(0), h, w_ih, w_hh, b_ih, b_hh, None, save)
    return h_n


# --------------------------------------------------------------------------- public ops: Elman RNN


def rnn(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", batch_sizes=None):
    """One Elman RNN layer in one direction over a time-major sequence (``torch.nn.RNN``'s
    math: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``).

    Args:
        x: ``[T, B, I]`` input, T >= 1. float32, float64, float16 or bfloat16; every
            other tensor must share its dtype and device.
        hx: ``h0 [B, H]``, or None for zeros.
        w_ih: ``[H, I]``, w_hh: ``[H, H]``, b_ih / b_hh: ``[H]`` or None.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        batch_sizes: None, or ``[T]`` non-increasing ints, as for ``lstm``: step t advances
            rows ``[0, batch_sizes[t])`` only; the other rows keep their state and get
            ``y = 0``. Padded entries of ``x`` are ignored.

    Returns:
        ``(y [T, B, H], h_n [B, H])`` in x's dtype (the pre-activation summed and
        activated in float32 for half types).

    Saved for backward (only when a gradient is needed): x, h0, the weights, y and the
    hidden states ``[T, B, H]`` (float32 for half types).
    """
    args = Args("fusednn.ops.rnn")
    (h0,) = _validate(args, x, hx, w_ih, w_hh, b_ih, b_hh, gates=1, x_doc="[T, B, I]", states=("hx",))
    _validate_nonlinearity(args, nonlinearity)
    sizes = _validate_sequence(args, x, batch_sizes)
    if RNN.select(x.device, x.dtype) == "reference":
        return reference.rnn(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, sizes)
    save = _needs_grad(x, h0, w_ih, w_hh, b_ih, b_hh)
    y, h_n, _workspace = torch.ops.fusednn.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, sizes, save)
    return y, h_n


def rnn_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman RNN step (``torch.nn.RNNCell``'s math): the sequence op with T = 1.

    Args:
        x: ``[B, I]`` (float32, float64, float16 or bfloat16); hx: ``[B, H]`` or None for
            zeros; w_ih: ``[H, I]``; w_hh: ``[H, H]``; b_ih / b_hh: ``[H]`` or None;
            nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``h [B, H]`` in x's dtype.

    Saved for backward (only when a gradient is needed): x, hx, the weights and the new
    h (also in the accumulate dtype).
    """
    args = Args("fusednn.ops.rnn_cell")
    (h,) = _validate(args, x, hx, w_ih, w_hh, b_ih, b_hh, gates=1, x_doc="[B, I]", states=("hx",))
    _validate_nonlinearity(args, nonlinearity)
    if RNN_CELL.select(x.device, x.dtype) == "reference":
        return reference.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    save = _needs_grad(x, h, w_ih, w_hh, b_ih, b_hh)
    _y, h_n, _workspace = torch.ops.fusednn.rnn_forward(x.unsqueeze(0), h, w_ih, w_hh, b_ih, b_hh, nonlinearity,
                                                        None, save)
    return h_n


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
GRU = registry.register(registry.OpInfo(
    name="gru", family="recurrent", function=gru, reference=reference.gru, kernels=_KERNELS,
    samples=_cases.gru_samples, bad_inputs=_cases.gru_bad_inputs, outputs=("y", "h_n"), double_backward=True,
    baseline=reference.torch_gru, bench=_cases.BENCH_SHAPES,
))
GRU_CELL = registry.register(registry.OpInfo(
    name="gru_cell", family="recurrent", function=gru_cell, reference=reference.gru_cell, kernels=_KERNELS,
    samples=_cases.gru_cell_samples, bad_inputs=_cases.gru_cell_bad_inputs, outputs=("h",), double_backward=True,
    baseline=reference.torch_gru_cell,
))
RNN = registry.register(registry.OpInfo(
    name="rnn", family="recurrent", function=rnn, reference=reference.rnn, kernels=_KERNELS,
    samples=_cases.rnn_samples, bad_inputs=_cases.rnn_bad_inputs, outputs=("y", "h_n"), double_backward=True,
    baseline=reference.torch_rnn,
))
RNN_CELL = registry.register(registry.OpInfo(
    name="rnn_cell", family="recurrent", function=rnn_cell, reference=reference.rnn_cell, kernels=_KERNELS,
    samples=_cases.rnn_cell_samples, bad_inputs=_cases.rnn_cell_bad_inputs, outputs=("h",), double_backward=True,
    baseline=reference.torch_rnn_cell,
))
