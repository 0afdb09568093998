"""Causal depthwise conv1d (the short convolution of Mamba-style blocks) and its one-step
decoding update: Triton kernels (``fusednn.kernels.causal_conv1d``) as autograd-aware ops.

Registered ops (W = weight.shape[1], 2..8; activation None or "silu"):

* ``fusednn::causal_conv1d_forward(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_state,
  str? activation, bool return_final_state) -> (Tensor y, Tensor final_state)``:
  final_state is ``[B, D, W-1]`` when return_final_state, else an empty ``[0]`` tensor.
* ``fusednn::causal_conv1d_backward(Tensor grad_y, Tensor? grad_final_state, Tensor x,
  Tensor weight, Tensor? bias, Tensor? initial_state, str? activation, bool x_grad,
  bool weight_grad, bool bias_grad, bool initial_state_grad) -> (Tensor grad_x,
  Tensor grad_weight, Tensor grad_bias, Tensor grad_initial_state)``: gradients not asked
  for come back as empty ``[0]`` tensors.
* ``fusednn::causal_conv1d_update(Tensor x_t, Tensor(a1!) conv_state, Tensor weight,
  Tensor? bias, str? activation) -> Tensor y_t``: updates conv_state in place.

Layout: x, grad_y and the states are read through their strides, so an x that is a
``[B, L, D]`` tensor transposed to ``[B, D, L]`` costs no copy. y and grad_x keep that
layout (channels contiguous: ``y.transpose(1, 2)`` is a contiguous ``[B, L, D]``); any other
x gives contiguous ones. (torch's ``F.conv1d`` after ``F.pad`` gives contiguous outputs
whatever the input: the pad copies.) final_state, grad_initial_state and the parameter
gradients are contiguous.

Saved for backward: x, weight, bias and initial_state; the silu's pre-activation is
recomputed from them. Double backward: with ``create_graph=True`` the backward is autograd
through the reference (``registry.differentiable_backward``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fusednn import _runtime, registry
from fusednn._validate import Args, shape_of
from fusednn.cases import causal_conv1d as _cases
from fusednn.kernels import causal_conv1d as _kernels
from fusednn.reference._activation import check_activation
from fusednn.reference.causal_conv1d import causal_conv1d as _reference_causal_conv1d
from fusednn.reference.causal_conv1d import causal_conv1d_update as _reference_update

__all__ = ["causal_conv1d", "causal_conv1d_update"]

# The activations the kernels fuse.
ACTIVATIONS = (None, "silu")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- layouts


def _channels_contiguous(x: Tensor) -> bool:
    """x [B, D, L] is a [B, L, D] tensor transposed (channels contiguous), not a [B, D, L] one."""
    return not x.is_contiguous() and x.transpose(1, 2).is_contiguous()


def _like_x(x: Tensor, allocate=torch.empty) -> Tensor:
    """A [B, D, L] tensor of x's dtype in x's layout (see the module docstring)."""
    batch, channels, length = x.shape
    if _channels_contiguous(x):
        return allocate((batch, length, channels), dtype=x.dtype, device=x.device).transpose(1, 2)
    return allocate((batch, channels, length), dtype=x.dtype, device=x.device)


def _state_shape(x: Tensor, weight: Tensor) -> tuple[int, int, int]:
    return x.shape[0], x.shape[1], weight.shape[1] - 1


# --------------------------------------------------------------------------- forward and backward ops


@torch.library.triton_op("fusednn::causal_conv1d_forward", mutates_args=())
def causal_conv1d_forward(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], initial_state: Optional[Tensor], activation: Optional[str],
    return_final_state: bool,
) -> tuple[Tensor, Tensor]:
    """y = act(bias + causal depthwise conv1d of x), and the final state.

    x: [B, D, L] float32/float16/bfloat16, any strides; weight: [D, W]; bias: [D] or None;
    initial_state: [B, D, W-1] or None (zeros). Returns y ([B, D, L], x's dtype and layout)
    and final_state ([B, D, W-1], contiguous; ``[0]`` unless return_final_state).
    """
    y = _like_x(x, _runtime.empty)
    final_state = (_runtime.empty(_state_shape(x, weight), dtype=x.dtype, device=x.device) if return_final_state
                   else x.new_empty(0))
    _kernels.causal_conv1d_forward(x, weight, bias, initial_state, activation, y=y,
                                   final_state=final_state if return_final_state else None)
    return y, final_state


@causal_conv1d_forward.register_fake
def _(x, weight, bias, initial_state, activation, return_final_state):
    final_state = x.new_empty(_state_shape(x, weight)) if return_final_state else x.new_empty(0)
    return _like_x(x), final_state


@torch.library.triton_op("fusednn::causal_conv1d_backward", mutates_args=())
def causal_conv1d_backward(
    grad_y: Tensor, grad_final_state: Optional[Tensor], x: Tensor, weight: Tensor, bias: Optional[Tensor],
    initial_state: Optional[Tensor], activation: Optional[str], x_grad: bool, weight_grad: bool, bias_grad: bool,
    initial_state_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of causal_conv1d_forward.

    grad_y: [B, D, L] any strides; grad_final_state: [B, D, W-1] or None (no gradient
    reaches the final state); the other inputs as the forward's. Returns grad_x (x's layout),
    grad_weight [D, W], grad_bias [D] and grad_initial_state [B, D, W-1] (contiguous), each
    ``[0]`` unless asked for. The weight and bias gradients are reduced in float32.
    """
    if bias_grad and bias is None:
        raise ValueError("fusednn::causal_conv1d_backward: bias_grad=True needs a bias")
    if initial_state_grad and initial_state is None:
        raise ValueError("fusednn::causal_conv1d_backward: initial_state_grad=True needs an initial_state")
    grad_x = _like_x(x, _runtime.empty) if x_grad else None
    grad_initial_state = (_runtime.empty(_state_shape(x, weight), dtype=x.dtype, device=x.device)
                          if initial_state_grad else None)
    dweight, dbias = _kernels.causal_conv1d_backward(
        grad_y, grad_final_state, x, weight, bias, initial_state, activation, grad_x=grad_x,
        grad_initial_state=grad_initial_state, weight_grad=weight_grad, bias_grad=bias_grad)
    empty = x.new_empty(0)
    return (
        grad_x if x_grad else empty,
        dweight.to(weight.dtype).contiguous() if weight_grad else empty.clone(),
        dbias.to(bias.dtype) if bias_grad else empty.clone(),
        grad_initial_state if initial_state_grad else empty.clone(),
    )


@causal_conv1d_backward.register_fake
def _(grad_y, grad_final_state, x, weight, bias, initial_state, activation, x_grad, weight_grad, bias_grad,
      initial_state_grad):
    return (
        _like_x(x) if x_grad else x.new_empty(0),
        weight.new_empty(weight.shape) if weight_grad else x.new_empty(0),
        bias.new_empty(bias.shape) if bias_grad else x.new_empty(0),
        x.new_empty(_state_shape(x, weight)) if initial_state_grad else x.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, initial_state, activation, return_final_state = inputs
    ctx.save_for_backward(x, weight, bias, initial_state)
    ctx.activation, ctx.return_final_state = activation, return_final_state
    if not return_final_state:
        ctx.mark_non_differentiable(output[1])


def _autograd(ctx, grad_y, grad_final_state):
    x, weight, bias, initial_state = ctx.saved_tensors
    needs_x, needs_weight, needs_bias, needs_state, _, _ = ctx.needs_input_grad
    grad_outputs = (grad_y, grad_final_state) if ctx.return_final_state else (grad_y,)
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient

        def recompute(x, weight, bias, initial_state):
            return _reference_causal_conv1d(x, weight, bias, activation=ctx.activation, initial_state=initial_state,
                                            return_final_state=ctx.return_final_state)

        grads = registry.differentiable_backward(recompute, (x, weight, bias, initial_state),
                                                 (needs_x, needs_weight, needs_bias, needs_state), grad_outputs)
        return (*grads, None, None)
    bias_grad = needs_bias and bias is not None
    state_grad = needs_state and initial_state is not None
    grad_x, grad_weight, grad_bias, grad_state = torch.ops.fusednn.causal_conv1d_backward(
        grad_y, grad_final_state if ctx.return_final_state else None, x, weight, bias, initial_state, ctx.activation,
        needs_x, needs_weight, bias_grad, state_grad)
    return (
        grad_x if needs_x else None,
        grad_weight if needs_weight else None,
        grad_bias if bias_grad else None,
        grad_state if state_grad else None,
        None,
        None,
    )


causal_conv1d_forward.register_autograd(_autograd, setup_context=_setup_context)


# --------------------------------------------------------------------------- update op


@torch.library.triton_op("fusednn::causal_conv1d_update", mutates_args=("conv_state",))
def causal_conv1d_update_step(
    x_t: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str],
) -> Tensor:
    """One decoding step: y_t = act(bias + sum over the window (conv_state, then x_t) * weight),
    and conv_state shifted left by one with x_t appended, in place.

    x_t: [B, D] float32/float16/bfloat16, any strides; conv_state: [B, D, W-1], any
    non-overlapping strides; weight: [D, W]; bias: [D] or None. Returns y_t [B, D], contiguous.
    """
    y = _runtime.empty(x_t.shape, dtype=x_t.dtype, device=x_t.device)
    _kernels.causal_conv1d_update(x_t, conv_state, weight, bias, activation, y=y)
    return y


@causal_conv1d_update_step.register_fake
def _(x_t, conv_state, weight, bias, activation):
    return x_t.new_empty(x_t.shape)


# --------------------------------------------------------------------------- validation


def _check_weight(args: Args, weight, like: Tensor, like_name: str, channels: int) -> int:
    """weight [D, W] with D = ``channels`` and W in [2, 8]; returns W."""
    args.tensor("weight", weight, "[D, W]", ndim=2, like=like, like_name=like_name)
    if weight.shape[0] != channels:
        raise args.error("weight", f"[D, W] with D = {channels} ({like_name}'s channels)", shape_of(weight))
    taps = weight.shape[1]
    if not _kernels.MIN_TAPS <= taps <= _kernels.MAX_TAPS:
        raise args.error("weight", f"[D, W] with the kernel width W in [{_kernels.MIN_TAPS}, {_kernels.MAX_TAPS}]",
                         shape_of(weight))
    return taps


def _check_bias(args: Args, bias, like: Tensor, like_name: str, channels: int) -> None:
    args.tensor("bias", bias, "[D]", optional=True, like=like, like_name=like_name)
    if bias is not None:
        args.shape("bias", bias, (channels,), "[D]")


def _check_channels(args: Args, name: str, t: Tensor, doc: str) -> int:
    if t.shape[1] == 0:
        raise args.error(name, f"{doc} with at least one channel (D >= 1)", shape_of(t))
    return t.shape[1]


# --------------------------------------------------------------------------- public functions


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    activation: Optional[str] = None,
    initial_state: Optional[Tensor] = None,
    return_final_state: bool = False,
):
    """Causal depthwise conv1d: channel d of x convolved with its own W taps, output position
    t seeing the inputs t-W+1..t::

        xpad = cat(initial_state or zeros, x)                  # along L
        y[b, d, t] = act(bias[d] + sum_k weight[d, k] * xpad[b, d, t + k])

    (``F.conv1d(F.pad(x, (W-1, 0)), weight.unsqueeze(1), bias, groups=D)`` then the activation).

    x: [B, D, L] float16/bfloat16/float32/float64, any strides (a ``[B, L, D]`` tensor
    transposed to ``[B, D, L]`` is read in place). weight: [D, W] with W in 2..8; bias: [D] or
    None; initial_state: [B, D, W-1], the W-1 inputs before position 0, oldest first, or
    None (zeros); all of x's dtype and device. activation: None or "silu".

    Returns y [B, D, L] in x's dtype and layout (channels-contiguous x gives channels-
    contiguous y, any other x a contiguous y); with ``return_final_state`` returns
    ``(y, final_state)``, final_state [B, D, W-1] the last W-1 entries of xpad, so that a
    call with ``initial_state=final_state`` continues the sequence (with L < W-1 some of
    them come from initial_state; with L = 0, final_state is initial_state, or zeros).
    Every input gets a gradient, and the final state's gradient flows back too.

    float32/float16/bfloat16 run the Triton kernels (fp32 accumulation), float64 the
    reference. The backward saves x, weight, bias and initial_state and recomputes the
    silu's pre-activation.
    """
    args = Args("fusednn.ops.causal_conv1d")
    args.tensor("x", x, "[B, D, L]", ndim=3)
    channels = _check_channels(args, "x", x, "[B, D, L]")
    taps = _check_weight(args, weight, x, "x", channels)
    _check_bias(args, bias, x, "x", channels)
    activation = check_activation(args, activation, ACTIVATIONS)
    args.tensor("initial_state", initial_state, "[B, D, W-1]", ndim=3, like=x, like_name="x", optional=True)
    if initial_state is not None:
        args.shape("initial_state", initial_state, (x.shape[0], channels, taps - 1), "[B, D, W-1]")
    args.boolean("return_final_state", return_final_state)
    if CAUSAL_CONV1D.select(x.device, x.dtype) == "reference":
        return _reference_causal_conv1d(x, weight, bias, activation=activation, initial_state=initial_state,
                                        return_final_state=return_final_state)
    y, final_state = torch.ops.fusednn.causal_conv1d_forward(x, weight, bias, initial_state, activation,
                                                             return_final_state)
    return (y, final_state) if return_final_state else y


def causal_conv1d_update(
    x_t: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    activation: Optional[str] = None,
) -> Tensor:
    """One decoding step of ``causal_conv1d``: updates ``conv_state`` in place and returns
    y_t = act(bias + sum_k weight[:, k] * window[..., k]), window = (conv_state, then x_t).

    x_t: [B, D] float16/bfloat16/float32/float64, any strides; conv_state: [B, D, W-1], the
    W-1 previous inputs oldest first (a ``final_state`` of ``causal_conv1d``, or zeros),
    of x_t's dtype, any strides that do not overlap; it is shifted left by one and x_t is
    appended, in place. weight: [D, W] with W in 2..8; bias: [D] or None; activation: None
    or "silu". Returns y_t [B, D] in x_t's dtype. Steps after a prefix processed by
    ``causal_conv1d(..., return_final_state=True)`` give what ``causal_conv1d`` gives over
    the whole sequence.

    The Triton kernel has no backward: when a gradient is wanted (grad mode on and an input
    requires grad) the step runs the reference (plain torch, differentiable, also in place),
    whose gradients are those of the state before the update. float64 runs the reference.
    """
    args = Args("fusednn.ops.causal_conv1d_update")
    args.tensor("x_t", x_t, "[B, D]", ndim=2)
    channels = _check_channels(args, "x_t", x_t, "[B, D]")
    taps = _check_weight(args, weight, x_t, "x_t", channels)
    args.tensor("conv_state", conv_state, "[B, D, W-1]", ndim=3, like=x_t, like_name="x_t")
    args.shape("conv_state", conv_state, (x_t.shape[0], channels, taps - 1), "[B, D, W-1]")
    if torch._debug_has_internal_overlap(conv_state) == 1:  # 1: its elements overlap (an expand)
        raise args.error("conv_state", "a tensor whose elements do not overlap (it is updated in place)",
                         f"strides {conv_state.stride()}")
    _check_bias(args, bias, x_t, "x_t", channels)
    activation = check_activation(args, activation, ACTIVATIONS)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x_t, conv_state, weight, bias))
    if wants_grad or CAUSAL_CONV1D_UPDATE.select(x_t.device, x_t.dtype) == "reference":
        return _reference_update(x_t, conv_state, weight, bias, activation)
    return torch.ops.fusednn.causal_conv1d_update(x_t, conv_state, weight, bias, activation)


# --------------------------------------------------------------------------- registry

_TRITON = registry.Kernel("triton", KERNEL_DTYPES, compile_variants=_kernels.compile_variants)

CAUSAL_CONV1D = registry.register(registry.OpInfo(
    name="causal_conv1d", family="convolution", function=causal_conv1d, reference=_reference_causal_conv1d,
    kernels=(_TRITON,), samples=_cases.causal_conv1d_samples, bad_inputs=_cases.causal_conv1d_bad_inputs,
    outputs=("y", "final_state"), double_backward=True, bench=_cases.BENCH_SHAPES,
))
# Its gradients come from the reference (see causal_conv1d_update), which is differentiable
# to any order.
CAUSAL_CONV1D_UPDATE = registry.register(registry.OpInfo(
    name="causal_conv1d_update", family="convolution", function=causal_conv1d_update,
    reference=_reference_update, kernels=(_TRITON,), samples=_cases.causal_conv1d_update_samples,
    bad_inputs=_cases.causal_conv1d_update_bad_inputs, outputs=("y",), double_backward=True,
))
