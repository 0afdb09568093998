"""The fused convolutional LSTM: one layer over a whole sequence of frames.

``fusednn::conv_lstm_forward`` (csrc/recurrent/conv_lstm.cpp) runs the input
convolution of every step as one convolution over all T·B frames (the biases folded
in), then per step the hidden convolution of ``h_{t-1}`` and one fused pointwise step
for the gates and the state update: the LSTM's own step, with a frame's pixels as its
rows and the hidden channels as its units. ``fusednn::conv_lstm_backward`` walks back
with one fused pointwise step and one convolution input-gradient per step, then forms
the gradients of x and of the weights with single convolution backwards over all frames
and the bias's as one sum. Autograd is registered with ``torch.library.register_autograd``; a gradient asked
for with ``create_graph=True`` (double backward) is computed by autograd through the
reference (``registry.differentiable_backward``), so it is differentiable.
"""

from __future__ import annotations

import torch

from .. import registry
from .._validate import FLOAT_DTYPES, Args, accumulate_dtype, describe, shape_of
from ..cases import conv_lstm as _cases
from ..reference.conv_lstm import conv_lstm as _reference

__all__ = ["conv_lstm"]

_X_DOC = "[T, B, C, H, W]"
_STATE_DOC = "[B, Hc, H, W]"


# --------------------------------------------------------------------------- validation


def _check_odd_kernel(args: Args, name: str, w, doc: str):
    if w.shape[2] % 2 == 0 or w.shape[3] % 2 == 0:
        raise args.error(name, f'{doc} with odd kh and kw ("same" padding keeps H and W)', shape_of(w))


def _validate(args: Args, x, hx, w_ih, w_hh, b_ih, b_hh):
    """Checks every argument; returns (h0, c0), zeros when hx is None."""
    args.tensor("x", x, _X_DOC, ndim=5)
    args.tensor("w_ih", w_ih, "[4Hc, C, kh, kw]", ndim=4, like=x, like_name="x")
    if w_ih.shape[0] % 4 != 0 or w_ih.shape[0] == 0:
        raise args.error("w_ih", "[4Hc, C, kh, kw] with Hc >= 1", shape_of(w_ih))
    if w_ih.shape[1] == 0:
        raise args.error("w_ih", "[4Hc, C, kh, kw] with C >= 1", shape_of(w_ih))
    _check_odd_kernel(args, "w_ih", w_ih, "[4Hc, C, kh, kw]")
    Hc, C = w_ih.shape[0] // 4, w_ih.shape[1]
    w_ih_is = f"w_ih is [4Hc, C, kh, kw] = {tuple(w_ih.shape)}"
    if x.shape[2] != C:
        raise args.error("x", f"{_X_DOC} with C = {C} ({w_ih_is})", shape_of(x))
    args.tensor("w_hh", w_hh, "[4Hc, Hc, kh, kw]", ndim=4, like=x, like_name="x")
    if tuple(w_hh.shape[:2]) != (4 * Hc, Hc):
        raise args.error("w_hh", f"[4Hc, Hc, kh, kw] with Hc = {Hc} ({w_ih_is})", shape_of(w_hh))
    _check_odd_kernel(args, "w_hh", w_hh, "[4Hc, Hc, kh, kw]")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if args.tensor(name, b, "[4Hc]", ndim=1, like=x, like_name="x", optional=True) is not None:
            args.shape(name, b, (4 * Hc,), "[4Hc]")
    T, B, _, H, W = x.shape
    if T == 0:
        raise args.error("x", f"{_X_DOC} with T >= 1 (a sequence of at least one step)", shape_of(x))
    if hx is None:
        return x.new_zeros(B, Hc, H, W), x.new_zeros(B, Hc, H, W)
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise args.error("hx", "a pair (h0, c0) of tensors or None", describe(hx), TypeError)
    for name, state in zip(("h0", "c0"), hx):
        args.tensor(name, state, _STATE_DOC, ndim=4, like=x, like_name="x")
        args.shape(name, state, (B, Hc, H, W), _STATE_DOC)
    return hx[0], hx[1]


# --------------------------------------------------------------------------- registration


def _channels_last(x: torch.Tensor) -> bool:
    """Whether x's frames are channels-last (then so are the op's outputs and gradients):
    the C++ op's rule, which the fake implementations repeat."""
    return x.permute(0, 1, 3, 4, 2).is_contiguous() and not x.is_contiguous()


def _empty_frames(x: torch.Tensor, sizes, channels_last: bool) -> torch.Tensor:
    """A new [T, B, C, H, W] tensor like the op allocates (channels-last: dense [T, B, H, W, C])."""
    if channels_last:
        T, B, C, H, W = sizes
        return x.new_empty(T, B, H, W, C).permute(0, 1, 4, 2, 3)
    return x.new_empty(sizes)


def _empty_state(x: torch.Tensor, sizes, channels_last: bool) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(sizes, dtype=x.dtype, device=x.device, memory_format=memory_format)


@torch.library.register_fake("fusednn::conv_lstm_forward")
def _conv_lstm_forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save_workspace):
    T, B, _, H, W = x.shape
    Hc = w_ih.shape[0] // 4
    channels_last = _channels_last(x)
    math = accumulate_dtype(x.dtype)
    if save_workspace:
        gates, cells = x.new_empty(T, B, H, W, 4 * Hc, dtype=math), x.new_empty(T, B, H, W, Hc, dtype=math)
    else:
        gates, cells = x.new_empty(0, dtype=math), x.new_empty(0, dtype=math)
    return (_empty_frames(x, (T, B, Hc, H, W), channels_last), _empty_state(x, (B, Hc, H, W), channels_last),
            _empty_state(x, (B, Hc, H, W), channels_last), gates, cells)


@torch.library.register_fake("fusednn::conv_lstm_backward")
def _conv_lstm_backward_fake(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, y, gates, cells, output_mask):
    input_grad, state_grad, weight_grad = output_mask
    channels_last = _channels_last(x)
    return (
        _empty_frames(x, x.shape, channels_last) if input_grad else x.new_empty(0),
        _empty_state(x, h0.shape, channels_last) if state_grad else x.new_empty(0),
        _empty_state(x, c0.shape, channels_last) if state_grad else x.new_empty(0),
        w_ih.new_empty(w_ih.shape) if weight_grad else x.new_empty(0),
        w_hh.new_empty(w_hh.shape) if weight_grad else x.new_empty(0),
        w_ih.new_empty(w_ih.shape[0]) if weight_grad else x.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, save_workspace = inputs
    y, _h_n, _c_n, gates, cells = output
    ctx.mark_non_differentiable(gates, cells)
    ctx.set_materialize_grads(False)
    ctx.saved_workspace = save_workspace
    # The biases are kept only for double backward (references, no memory).
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, gates, cells)


def _backward(ctx, grad_y, grad_h_n, grad_c_n, *_workspace_grads):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, gates, cells = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if torch.is_grad_enabled():
        # create_graph=True: a differentiable first gradient, by autograd through the reference.
        def recompute(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
            return _reference(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)

        grads = registry.differentiable_backward(recompute, (x, h0, c0, w_ih, w_hh, b_ih, b_hh), needs[:7],
                                                 (grad_y, grad_h_n, grad_c_n))
        return (*grads, None)
    if not ctx.saved_workspace:
        raise RuntimeError(
            "fusednn::conv_lstm_forward ran with save_workspace=False, so it cannot be differentiated; "
            "call fusednn.ops.conv_lstm, which saves the workspace whenever a gradient is needed"
        )
    output_mask = [needs[0], needs[1] or needs[2], any(needs[3:7])]
    grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias = torch.ops.fusednn.conv_lstm_backward(
        grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, y, gates, cells, output_mask
    )
    return (
        grad_x if needs[0] else None,
        grad_h0 if needs[1] else None,
        grad_c0 if needs[2] else None,
        grad_w_ih if needs[3] else None,
        grad_w_hh if needs[4] else None,
        grad_bias if needs[5] else None,
        grad_bias if needs[6] else None,
        None,
    )


torch.library.register_autograd("fusednn::conv_lstm_forward", _backward, setup_context=_setup_context)


def _needs_grad(*tensors) -> bool:
    """Whether the forward saves its workspace. Always under torch.jit.trace: a trace fixes
    the flag as a constant, and its sanity check reruns the forward without grad mode."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------- public op


def conv_lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One convolutional LSTM layer (Shi et al., 2015, without peepholes) over a time-major
    sequence of frames, with "same" padding and ``torch.nn.LSTM``'s gate order i, f, g, o::

        gates = conv(x_t, w_ih) + b_ih + conv(h_{t-1}, w_hh) + b_hh
        c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(c_t)

    Args:
        x: ``[T, B, C, H, W]``, T >= 1. float32, float64, float16 or bfloat16; every other
            tensor must share its dtype and device.
        hx: ``(h0 [B, Hc, H, W], c0 [B, Hc, H, W])``, or None for zeros.
        w_ih: ``[4Hc, C, kh, kw]``, w_hh: ``[4Hc, Hc, kh', kw']``, odd kernel sizes (each
            convolution pads by half its kernel, so H and W stay); b_ih / b_hh: ``[4Hc]``
            or None.

    Returns:
        ``(y [T, B, Hc, H, W], (h_n [B, Hc, H, W], c_n [B, Hc, H, W]))`` in x's dtype, with
        channels-last frames when x's frames are channels-last, else contiguous.
        float16/bfloat16 run the convolutions in their precision and carry the gate math
        and the cell state in float32. A batch of zero size gives empty outputs.

    Saved for backward (only when a gradient is needed): x, h0, c0, the weights, y, the
    gate activations ``[T, B, H, W, 4Hc]`` and the cell states ``[T, B, H, W, Hc]``
    (float32 for half types).

    Why C++ and not Triton: the time loop's convolutions are oneDNN's on the CPU and
    cuDNN's on CUDA, called from C++ without a Python round trip per step, and the gates
    and state update are the LSTM's fused pointwise step (csrc/recurrent/cell.h), which
    has a vectorized CPU kernel as well as a CUDA one: a Triton kernel would run only
    through the interpreter on the CPU, far slower than the eager per-step formulation.
    """
    args = Args("fusednn.ops.conv_lstm")
    h0, c0 = _validate(args, x, hx, w_ih, w_hh, b_ih, b_hh)
    if CONV_LSTM.select(x.device, x.dtype) == "reference":
        return _reference(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
    save = _needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    y, h_n, c_n, *_workspace = torch.ops.fusednn.conv_lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save)
    return y, (h_n, c_n)


# --------------------------------------------------------------------------- registry

CONV_LSTM = registry.register(registry.OpInfo(
    name="conv_lstm", family="recurrent", function=conv_lstm, reference=_reference,
    kernels=(registry.Kernel("cuda", FLOAT_DTYPES), registry.Kernel("cpu", FLOAT_DTYPES)),
    samples=_cases.conv_lstm_samples, bad_inputs=_cases.conv_lstm_bad_inputs, outputs=("y", "h_n", "c_n"),
    input_names={"hx[0]": "h0", "hx[1]": "c0"}, double_backward=True, bench=_cases.BENCH_SHAPES,
))
