"""Batch normalization with a fused residual add and activation: fused Triton kernels
(``fusednn.kernels.batch_norm``) as autograd-aware ops with the semantics of
``torch.nn.functional.batch_norm`` followed by ``y = act(y + residual)``.

Registered ops. input is ``[N, C, *]`` (any number of trailing spatial dims, as
F.batch_norm; ``[N, C, H, W]`` is the common case); statistics are per channel over the
N * (spatial) values of each channel.

* ``fusednn::batch_norm_forward(Tensor input, Tensor? running_mean, Tensor? running_var,
  Tensor? weight, Tensor? bias, Tensor? residual, bool training, float eps, str? activation)
  -> (Tensor y, Tensor mean, Tensor invstd, Tensor unbiased_var)``: training computes the
  batch statistics (running_mean / running_var are not read; pass None), evaluation reads
  the running ones. mean and invstd ([C] float32) are what the backward uses;
  unbiased_var ([C] float32, training only, else ``[0]``) feeds the running update.
* ``fusednn::batch_norm_backward(Tensor grad_y, Tensor input, Tensor? weight, Tensor? bias,
  Tensor? residual, Tensor mean, Tensor invstd, bool training, str? activation,
  bool input_grad, bool weight_grad, bool bias_grad, bool residual_grad) -> (Tensor
  grad_input, Tensor grad_weight, Tensor grad_bias, Tensor grad_residual)``; gradients
  that are not requested come back as empty ``[0]`` tensors, the weight and bias ones in
  float32.
* ``fusednn::batch_norm_update_running_stats(Tensor(a!) running_mean, Tensor(b!)
  running_var, Tensor mean, Tensor unbiased_var, float momentum) -> ()``.

The running statistics. An op registered with autograd cannot mutate its inputs, so the
forward op is functional: it returns the batch mean and unbiased variance, and
``batch_norm`` then updates the buffers with the separate mutating op
``batch_norm_update_running_stats`` (one small Triton launch, outside autograd, under
torch.no_grad): ``running = (1 - momentum) * running + momentum * batch_stat`` with the
unbiased variance n / (n - 1) * var for running_var, computed in float32 and stored in
the buffers' dtype, as torch's CUDA kernels do. A zero-size input leaves them unchanged
(as torch). Non-contiguous buffers are updated through a contiguous copy.

Saved for backward: input, weight, bias, mean, invstd, and the residual only where an
activation other than None needs the pre-activation; never the normalised output. The
backward recomputes the pre-activation from them.

Layout, as torch's: y and grad_input in input's suggested memory format (channels_last
in, channels_last out; anything else gives contiguous ones), grad_residual in the same;
parameter gradients contiguous. The kernels read any strides: an input whose spatial
dims cannot be viewed as one (a transposed H and W) is copied first.

Double backward: with ``create_graph=True`` the backward is autograd through the
reference (``registry.differentiable_backward``; evaluation mode through the saved
statistics), so the first gradient is differentiable.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from fusednn import _runtime, registry
from fusednn import reference as _reference
from fusednn.cases import batch_norm as _cases
from fusednn.kernels import batch_norm as _kernels
from fusednn.reference._activation import check_activation
from fusednn.reference.batch_norm import normalize_with_statistics
from fusednn._validate import Args, shape_of

__all__ = ["batch_norm"]

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- shared implementation


def _layout(input: Tensor) -> torch.memory_format:
    return suggest_memory_format(input)


def _spatial_dims_merge(t: Tensor) -> bool:
    """Whether t's spatial dims (2 on) are one run of pixels at a single stride."""
    dims = [d for d in range(2, t.dim()) if t.shape[d] != 1]
    return all(t.stride(a) == t.stride(b) * t.shape[b] for a, b in zip(dims, dims[1:]))


def _as_ncp(t: Tensor) -> Tensor:
    """t [N, C, *] as a [N, C, P] view (P = the product of the spatial dims); a copy in
    its suggested memory format (one pass over t) where the spatial dims are no single
    run (a transposed H and W)."""
    if not _spatial_dims_merge(t):
        t = t.contiguous(memory_format=_layout(t))
    return t.view(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _new_like(input: Tensor) -> Tensor:
    """An empty (poisoned while testing) tensor of input's shape and dtype in its suggested format."""
    out = torch.empty_like(input, memory_format=_layout(input))
    if _runtime.poison_enabled() and out.numel():
        out.fill_(float("nan"))
    return out


def _channel_stats(input: Tensor, count: int) -> Tensor:
    return _runtime.empty((count,), dtype=torch.float32, device=input.device)


def _flat(param: Optional[Tensor]) -> Optional[Tensor]:
    return param.contiguous() if param is not None else None


# --------------------------------------------------------------------------- ops


@torch.library.triton_op("fusednn::batch_norm_forward", mutates_args=())
def batch_norm_forward(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    training: bool,
    eps: float,
    activation: Optional[str],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y = act(batch_norm(input) + residual).

    input: [N, C, *] float16/bfloat16/float32, any strides; running_mean, running_var: [C]
    (read in evaluation only); weight, bias: [C] any float dtype or None; residual:
    input's shape and dtype or None. Returns y (input's shape and dtype, in its suggested
    memory format), mean and invstd [C] float32 (batch statistics in training, the running
    ones in evaluation) and unbiased_var [C] float32 (training; ``[0]`` in evaluation).
    """
    channels = input.shape[1]
    y = _new_like(input)
    mean = _channel_stats(input, channels)
    invstd = _channel_stats(input, channels)
    x3 = _as_ncp(input)
    if training:
        unbiased_var = _channel_stats(input, channels)
        _kernels.statistics(x3, eps, mean=mean, invstd=invstd, unbiased_var=unbiased_var)
        running = {}
    else:
        unbiased_var = input.new_empty(0, dtype=torch.float32)
        running = dict(running_mean=_flat(running_mean), running_var=_flat(running_var), eps=eps)
    _kernels.forward(x3, _as_ncp(residual) if residual is not None else None, _flat(weight), _flat(bias), activation,
                     y=y.view(x3.shape), mean=mean, invstd=invstd, **running)
    return y, mean, invstd, unbiased_var


@batch_norm_forward.register_fake
def _(input, running_mean, running_var, weight, bias, residual, training, eps, activation):
    channels = input.shape[1]
    stats = [input.new_empty((channels,), dtype=torch.float32) for _ in range(2)]
    unbiased_var = input.new_empty((channels,) if training else (0,), dtype=torch.float32)
    return torch.empty_like(input, memory_format=_layout(input)), *stats, unbiased_var


@torch.library.triton_op("fusednn::batch_norm_backward", mutates_args=())
def batch_norm_backward(
    grad_y: Tensor,
    input: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    mean: Tensor,
    invstd: Tensor,
    training: bool,
    activation: Optional[str],
    input_grad: bool,
    weight_grad: bool,
    bias_grad: bool,
    residual_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of batch_norm_forward.

    grad_y, input: [N, C, *]; weight: [C] or None; bias and residual: needed only with an
    activation (to recompute the pre-activation), else may be None; mean, invstd: [C] from
    the forward. Returns grad_input (input's shape and dtype and suggested memory format;
    training: the full batch-statistics gradient, evaluation: the affine one),
    grad_weight and grad_bias ([C] float32 sums) and grad_residual (input's shape, dtype
    and format); each ``[0]`` unless asked for.
    """
    if weight_grad and weight is None:
        raise ValueError("weight_grad=True needs a weight")
    x3 = _as_ncp(input)
    grad_input = _new_like(input) if input_grad else None
    grad_residual = _new_like(input) if residual_grad else None
    sum_dz, sum_dzx = _kernels.backward(
        _as_ncp(grad_y), x3, _as_ncp(residual) if residual is not None and activation is not None else None,
        _flat(weight), _flat(bias) if activation is not None else None, mean, invstd, activation, training,
        grad_x=grad_input.view(x3.shape) if grad_input is not None else None,
        grad_residual=grad_residual.view(x3.shape) if grad_residual is not None else None,
        sums=weight_grad or bias_grad,
    )

    def unrequested(dtype=input.dtype):
        return input.new_empty(0, dtype=dtype)

    return (grad_input if input_grad else unrequested(), sum_dzx if weight_grad else unrequested(torch.float32),
            sum_dz if bias_grad else unrequested(torch.float32), grad_residual if residual_grad else unrequested())


@batch_norm_backward.register_fake
def _(grad_y, input, weight, bias, residual, mean, invstd, training, activation, input_grad, weight_grad, bias_grad,
      residual_grad):
    channels = input.shape[1]

    def like_input(wanted):
        return torch.empty_like(input, memory_format=_layout(input)) if wanted else input.new_empty(0)

    def sums(wanted):
        return input.new_empty((channels,) if wanted else (0,), dtype=torch.float32)

    return like_input(input_grad), sums(weight_grad), sums(bias_grad), like_input(residual_grad)


@torch.library.triton_op("fusednn::batch_norm_update_running_stats", mutates_args=("running_mean", "running_var"))
def batch_norm_update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, unbiased_var: Tensor,
                                    momentum: float) -> None:
    """running_mean = (1 - momentum) * running_mean + momentum * mean, and running_var from
    unbiased_var alike, in place. running_mean, running_var: [C] contiguous, any float
    dtype; mean, unbiased_var: [C] float32 from batch_norm_forward."""
    _kernels.update_running_stats(running_mean, running_var, mean, unbiased_var, momentum)


@batch_norm_update_running_stats.register_fake
def _(running_mean, running_var, mean, unbiased_var, momentum):
    return None


def _setup_context(ctx, inputs, output):
    input, _running_mean, _running_var, weight, bias, residual, training, eps, activation = inputs
    _y, mean, invstd, unbiased_var = output
    ctx.mark_non_differentiable(mean, invstd, unbiased_var)
    # the residual only matters to the backward through the activation's derivative
    ctx.save_for_backward(input, weight, bias, residual if activation is not None else None, mean, invstd)
    ctx.training, ctx.eps, ctx.activation = training, eps, activation
    ctx.weight_dtype = weight.dtype if weight is not None else None
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.has_residual = residual is not None


def _autograd(ctx, grad_y, _grad_mean, _grad_invstd, _grad_var):
    input, weight, bias, residual, mean, invstd = ctx.saved_tensors
    needs_input, _, _, needs_weight, needs_bias, needs_residual = ctx.needs_input_grad[:6]
    needs_weight = needs_weight and ctx.weight_dtype is not None
    needs_bias = needs_bias and ctx.bias_dtype is not None
    needs_residual = needs_residual and ctx.has_residual
    activation = ctx.activation
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient
        if ctx.training:
            def recompute(x, w, b, r):
                return _reference.batch_norm(x, None, None, w, b, True, 0.0, ctx.eps, residual=r,
                                             activation=activation)
        else:
            def recompute(x, w, b, r):
                return normalize_with_statistics(x, mean, invstd, w, b, r, activation)
        through_residual = needs_residual and activation is not None
        grad_input, grad_weight, grad_bias, grad_residual = registry.differentiable_backward(
            recompute, (input, weight, bias, residual),
            (needs_input, needs_weight, needs_bias, through_residual), (grad_y,))
        if needs_residual and activation is None:  # y = z + residual
            grad_residual = grad_y
        return grad_input, None, None, grad_weight, grad_bias, grad_residual, None, None, None
    residual_through_activation = needs_residual and activation is not None
    grad_input = grad_weight = grad_bias = grad_residual = None
    if needs_input or needs_weight or needs_bias or residual_through_activation:
        grad_input, grad_weight, grad_bias, grad_residual = torch.ops.fusednn.batch_norm_backward(
            grad_y, input, weight, bias, residual, mean, invstd, ctx.training, activation, needs_input, needs_weight,
            needs_bias, residual_through_activation,
        )
    if needs_residual and activation is None:
        grad_residual = grad_y  # y = z + residual: the output gradient itself
    return (
        grad_input if needs_input else None,
        None,
        None,
        grad_weight.to(ctx.weight_dtype) if needs_weight else None,
        grad_bias.to(ctx.bias_dtype) if needs_bias else None,
        grad_residual if needs_residual else None,
        None,
        None,
        None,
    )


batch_norm_forward.register_autograd(_autograd, setup_context=_setup_context)


# --------------------------------------------------------------------------- validation


def _check_inputs(input, running_mean, running_var, weight, bias, training, momentum, eps, residual, activation):
    """Validates the arguments; returns (activation, momentum, eps) as checked values."""
    args = Args("fusednn.ops.batch_norm")
    args.tensor("input", input)
    if input.dim() < 2:
        raise args.error("input", "[N, C, *] (2-D or more)", shape_of(input))
    args.boolean("training", training)
    channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        # any float dtype (float32 parameters and statistics with bfloat16 input), as torch allows
        args.tensor(name, t, "[C]", optional=True, like=input, like_name="input", same_dtype=False)
        if t is not None and tuple(t.shape) != (channels,):
            raise args.error(name, f"[C] = ({channels},)", shape_of(t),
                             torch_message=f"{name} should contain {channels} elements not {t.numel()}")
    if training:
        if (running_mean is None) != (running_var is None):
            missing, given = ("running_var", "running_mean") if running_var is None else ("running_mean", "running_var")
            raise args.error(missing, f"a tensor when {given} is given (both or neither)", "None",
                             torch_message="running_mean and running_var must either both be None or neither be None")
        values = input.shape[0] * math.prod(input.shape[2:])
        if values == 1:
            raise args.error("input", "more than 1 value per channel when training (N * spatial size > 1)",
                             shape_of(input), torch_message="Expected more than 1 value per channel when training, "
                                                            f"got input size {input.size()}")
    else:
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is None:
                raise args.error(name, "a tensor [C] in evaluation mode (training=False)", "None",
                                 torch_message=f"{name} must be defined in evaluation mode")
    momentum = args.real("momentum", momentum)
    eps = args.real("eps", eps)
    if training and eps <= 0.0:
        raise args.error("eps", "a float > 0 when training", repr(eps),
                         torch_message=f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise args.error("eps", "a float >= 0", repr(eps),
                         torch_message=f"batch_norm eps must be non-negative, but got {eps}")
    args.tensor("residual", residual, "of input's shape", optional=True, like=input, like_name="input")
    if residual is not None and residual.shape != input.shape:
        raise args.error("residual", f"of input's shape {tuple(input.shape)}", shape_of(residual))
    return check_activation(args, activation), momentum, eps


# --------------------------------------------------------------------------- public function


def _update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, unbiased_var: Tensor,
                          momentum: float) -> None:
    with torch.no_grad():
        targets = [t if t.is_contiguous() else t.contiguous() for t in (running_mean, running_var)]
        torch.ops.fusednn.batch_norm_update_running_stats(*targets, mean, unbiased_var, momentum)
        for buffer, target in zip((running_mean, running_var), targets):
            if target is not buffer:
                buffer.copy_(target)


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    residual: Optional[Tensor] = None,
    activation: Optional[str] = None,
) -> Tensor:
    """Batch normalization (``torch.nn.functional.batch_norm``) with a fused residual add and
    activation: ``y = act(batch_norm(input) + residual)``.

    input: [N, C, *] (``[N, C, H, W]``, also ``[N, C]``, ``[N, C, L]`` and more spatial dims,
    as torch's), float16/bfloat16/float32/float64, any strides (channels_last is the
    kernels' native layout). running_mean, running_var: [C], any float dtype, or None
    (training only: both or neither); weight, bias: [C], any float dtype, or None.
    residual: input's shape and dtype, or None. activation: None, "relu", "gelu",
    "gelu_tanh" or "silu".

    training=True normalises with the batch mean and biased variance (float32, one pass
    over the input, combined with Chan's parallel formula) and updates running_mean /
    running_var in place, as torch: ``running = (1 - momentum) * running + momentum *
    batch_stat`` with the unbiased variance for running_var (not on a zero-size input).
    training=False normalises with the running statistics. Returns y with input's shape
    and dtype, in its suggested memory format (channels_last in, channels_last out). The
    backward saves input, weight, bias, the float32 mean and invstd [C] and (with an
    activation) the residual.
    """
    activation, momentum, eps = _check_inputs(input, running_mean, running_var, weight, bias, training, momentum,
                                              eps, residual, activation)
    if BATCH_NORM.select(input.device, input.dtype) == "reference":
        return _reference.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                     residual=residual, activation=activation)
    statistics = (None, None) if training else (running_mean, running_var)
    y, mean, _invstd, unbiased_var = torch.ops.fusednn.batch_norm_forward(
        input, *statistics, weight, bias, residual, training, eps, activation)
    if training and running_mean is not None and input.numel() > 0:
        _update_running_stats(running_mean, running_var, mean, unbiased_var, momentum)
    return y


# --------------------------------------------------------------------------- registry

BATCH_NORM = registry.register(registry.OpInfo(
    name="batch_norm", family="convolution", function=batch_norm, reference=_reference.batch_norm,
    kernels=(registry.Kernel("triton", _TRITON_DTYPES, compile_variants=_kernels.compile_variants),),
    samples=_cases.batch_norm_samples, bad_inputs=_cases.batch_norm_bad_inputs, outputs=("y",),
    double_backward=True, bench=_cases.BENCH_SHAPES,
))
