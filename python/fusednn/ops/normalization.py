"""LayerNorm and RMSNorm: fused Triton kernels (``fusednn.kernels.normalization``) as
autograd-aware ops with the semantics of ``torch.nn.functional.layer_norm`` / ``rms_norm``.

Registered ops. x is ``[..., *normalized_shape]`` with ``normalized_ndim`` trailing
normalized dims: the kernels see M rows (the leading dims) of N columns (the normalized
ones); weight and bias have the normalized shape.

* ``fusednn::layer_norm_forward(Tensor x, int normalized_ndim, Tensor? weight, Tensor? bias,
  float eps) -> (Tensor y, Tensor mean, Tensor rstd)``
* ``fusednn::layer_norm_backward(Tensor grad_y, Tensor x, int normalized_ndim, Tensor? weight,
  Tensor mean, Tensor rstd, bool weight_grad, bool bias_grad) -> (Tensor grad_x,
  Tensor grad_weight, Tensor grad_bias)``
* ``fusednn::rms_norm_forward(Tensor x, int normalized_ndim, Tensor? weight, float eps)
  -> (Tensor y, Tensor rstd)``
* ``fusednn::rms_norm_backward(Tensor grad_y, Tensor x, int normalized_ndim, Tensor? weight,
  Tensor rstd, bool weight_grad) -> (Tensor grad_x, Tensor grad_weight)``

Gradients that are not requested come back as empty ``[0]`` tensors.

Layout, as torch's: layer_norm's y and grad_x are contiguous; rms_norm's keep x's memory
format (a channels_last x gives channels_last y and grad_x; any other x gives contiguous
ones). An x whose normalized dims are not unit-stride rows (channels_last is one) is
copied into rows first, and a channels_last result costs one more copy.

Double backward: with ``create_graph=True`` the backward is autograd through the
reference (``registry.differentiable_backward``), so the first gradient is differentiable.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from fusednn import _runtime, registry
from fusednn import reference as _reference
from fusednn.cases import normalization as _cases
from fusednn.reference.normalization import default_rms_eps
from fusednn._validate import FLOAT_DTYPES, Args, accumulate_dtype, describe
from fusednn.kernels import normalization as _kernels

__all__ = ["layer_norm", "rms_norm"]


# --------------------------------------------------------------------------- shared implementation


def _row_count(x: Tensor, normalized_ndim: int) -> int:
    return math.prod(x.shape[: x.dim() - normalized_ndim])


def _as_rows(x: Tensor, normalized_ndim: int) -> Tensor:
    """x as [M, N] with unit column stride: a view where the strides allow, else a copy."""
    rows = x.reshape(_row_count(x, normalized_ndim), math.prod(x.shape[x.dim() - normalized_ndim:]))
    return _runtime.unit_last_stride(rows)


def _layout(x: Tensor, rms: bool) -> torch.memory_format:
    """The memory format of y and grad_x: torch's layer_norm gives contiguous ones, its
    rms_norm (elementwise ops) keeps x's suggested format (channels_last, channels_last_3d)."""
    return suggest_memory_format(x) if rms else torch.contiguous_format


def _shaped_like(rows: Tensor, x: Tensor, rms: bool) -> Tensor:
    """A contiguous [M, N] result as a tensor of x's shape in ``_layout(x, rms)``."""
    out = rows.view(x.shape)
    fmt = _layout(x, rms)
    return out if fmt == torch.contiguous_format else out.contiguous(memory_format=fmt)


def _empty_like_result(x: Tensor, rms: bool) -> Tensor:
    return torch.empty_like(x, memory_format=_layout(x, rms))


def _stats_empty(x: Tensor, normalized_ndim: int) -> Tensor:
    return x.new_empty((_row_count(x, normalized_ndim),), dtype=accumulate_dtype(x.dtype))


def _flat(param: Optional[Tensor]) -> Optional[Tensor]:
    return param.reshape(-1).contiguous() if param is not None else None


def _norm_forward(x: Tensor, normalized_ndim: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                  rms: bool):
    rows = _as_rows(x, normalized_ndim)
    n_rows, n_cols = rows.shape
    y = _runtime.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    stat_dtype = accumulate_dtype(x.dtype)
    # Rows of zero width have no statistics; define them as mean 0, rstd 0.
    allocate_stats = torch.zeros if n_cols == 0 else _runtime.empty
    mean = None if rms else allocate_stats((n_rows,), dtype=stat_dtype, device=x.device)
    rstd = allocate_stats((n_rows,), dtype=stat_dtype, device=x.device)
    _kernels.norm_forward(rows, _flat(weight), _flat(bias), eps, rms=rms, y=y, mean=mean, rstd=rstd)
    return _shaped_like(y, x, rms), mean, rstd


def _norm_backward(grad_y, x, normalized_ndim, weight, mean, rstd, rms, weight_grad, bias_grad):
    if weight_grad and weight is None:
        raise ValueError("weight_grad=True needs a weight")
    rows = _as_rows(x, normalized_ndim)
    grad_rows = _as_rows(grad_y, normalized_ndim)
    grad_x = _runtime.empty(rows.shape, dtype=x.dtype, device=x.device)
    dweight, dbias = _kernels.norm_backward(
        grad_rows, rows, _flat(weight), mean, rstd, rms=rms, grad_x=grad_x, weight_grad=weight_grad,
        bias_grad=bias_grad,
    )
    grad_weight = dweight.to(weight.dtype).view(weight.shape) if weight_grad else x.new_empty(0)
    # The bias gradient stays in the accumulator dtype; autograd casts it to the bias's.
    grad_bias = dbias.view(x.shape[x.dim() - normalized_ndim:]) if bias_grad else x.new_empty(0)
    return _shaped_like(grad_x, x, rms), grad_weight, grad_bias


def _norm_backward_fake(x, normalized_ndim, weight, weight_grad, bias_grad, rms):
    grad_weight = weight.new_empty(weight.shape) if weight_grad else x.new_empty(0)
    normalized = x.shape[x.dim() - normalized_ndim:]
    grad_bias = x.new_empty(normalized, dtype=accumulate_dtype(x.dtype)) if bias_grad else x.new_empty(0)
    return _empty_like_result(x, rms), grad_weight, grad_bias


# --------------------------------------------------------------------------- LayerNorm ops


@torch.library.triton_op("fusednn::layer_norm_forward", mutates_args=())
def layer_norm_forward(
    x: Tensor, normalized_ndim: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm over the trailing ``normalized_ndim`` dims of x.

    x: [..., *normalized_shape] float16/bfloat16/float32/float64, any strides; weight, bias:
    normalized_shape of any float dtype, or None. Returns y (x's shape and dtype,
    contiguous), mean [M] and rstd [M] (float32; float64 for float64 x; M = the number of
    rows), which the backward uses.
    """
    return _norm_forward(x, normalized_ndim, weight, bias, eps, rms=False)


@layer_norm_forward.register_fake
def _(x, normalized_ndim, weight, bias, eps):
    return _empty_like_result(x, False), _stats_empty(x, normalized_ndim), _stats_empty(x, normalized_ndim)


@torch.library.triton_op("fusednn::layer_norm_backward", mutates_args=())
def layer_norm_backward(
    grad_y: Tensor,
    x: Tensor,
    normalized_ndim: int,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    weight_grad: bool,
    bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of layer_norm_forward.

    grad_y, x: [..., *normalized_shape]; weight: normalized_shape or None; mean, rstd: [M]
    from the forward. Returns grad_x (x's shape, contiguous), grad_weight in weight's dtype
    (``[0]`` unless weight_grad), grad_bias in float32 (float64 for float64 x; ``[0]``
    unless bias_grad: the op does not see the bias, so autograd casts it to the bias's
    dtype). Weight and bias gradients are reduced in float32.
    """
    return _norm_backward(grad_y, x, normalized_ndim, weight, mean, rstd, False, weight_grad, bias_grad)


@layer_norm_backward.register_fake
def _(grad_y, x, normalized_ndim, weight, mean, rstd, weight_grad, bias_grad):
    return _norm_backward_fake(x, normalized_ndim, weight, weight_grad, bias_grad, False)


def _layer_norm_setup_context(ctx, inputs, output):
    x, normalized_ndim, weight, bias, eps = inputs
    _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.normalized_ndim, ctx.eps = normalized_ndim, eps
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _layer_norm_autograd(ctx, grad_y, _grad_mean, _grad_rstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    needs_x, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
    nd = ctx.normalized_ndim
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient

        def recompute(x, weight, bias):
            return _reference.layer_norm(x, x.shape[x.dim() - nd:], weight, bias, ctx.eps)

        grad_x, grad_weight, grad_bias = registry.differentiable_backward(
            recompute, (x, weight, bias), (needs_x, needs_weight, needs_bias), (grad_y,))
        return grad_x, None, grad_weight, grad_bias, None
    weight_grad = needs_weight and weight is not None
    bias_grad = needs_bias and ctx.bias_dtype is not None
    grad_x, grad_weight, grad_bias = torch.ops.fusednn.layer_norm_backward(
        grad_y, x, nd, weight, mean, rstd, weight_grad, bias_grad
    )
    return (
        grad_x if needs_x else None,
        None,
        grad_weight if weight_grad else None,
        grad_bias.to(ctx.bias_dtype) if bias_grad else None,
        None,
    )


layer_norm_forward.register_autograd(_layer_norm_autograd, setup_context=_layer_norm_setup_context)


# --------------------------------------------------------------------------- RMSNorm ops


@torch.library.triton_op("fusednn::rms_norm_forward", mutates_args=())
def rms_norm_forward(x: Tensor, normalized_ndim: int, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """RMSNorm over the trailing ``normalized_ndim`` dims of x.

    x: [..., *normalized_shape] float16/bfloat16/float32/float64, any strides; weight:
    normalized_shape of any float dtype, or None. Returns y (x's shape and dtype, in x's
    suggested memory format) and rstd [M] (float32; float64 for float64 x), which the
    backward uses.
    """
    y, _mean, rstd = _norm_forward(x, normalized_ndim, weight, None, eps, rms=True)
    return y, rstd


@rms_norm_forward.register_fake
def _(x, normalized_ndim, weight, eps):
    return _empty_like_result(x, True), _stats_empty(x, normalized_ndim)


@torch.library.triton_op("fusednn::rms_norm_backward", mutates_args=())
def rms_norm_backward(
    grad_y: Tensor, x: Tensor, normalized_ndim: int, weight: Optional[Tensor], rstd: Tensor, weight_grad: bool
) -> tuple[Tensor, Tensor]:
    """Gradients of rms_norm_forward.

    grad_y, x: [..., *normalized_shape]; weight: normalized_shape or None; rstd: [M] from
    the forward. Returns grad_x (x's shape, in x's suggested memory format) and grad_weight
    (``[0]`` unless weight_grad; reduced in float32).
    """
    grad_x, grad_weight, _ = _norm_backward(grad_y, x, normalized_ndim, weight, None, rstd, True, weight_grad,
                                            False)
    return grad_x, grad_weight


@rms_norm_backward.register_fake
def _(grad_y, x, normalized_ndim, weight, rstd, weight_grad):
    grad_x, grad_weight, _ = _norm_backward_fake(x, normalized_ndim, weight, weight_grad, False, True)
    return grad_x, grad_weight


def _rms_norm_setup_context(ctx, inputs, output):
    x, normalized_ndim, weight, eps = inputs
    _y, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.save_for_backward(x, weight, rstd)
    ctx.normalized_ndim, ctx.eps = normalized_ndim, eps


def _rms_norm_autograd(ctx, grad_y, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    needs_x, _, needs_weight, _ = ctx.needs_input_grad
    nd = ctx.normalized_ndim
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient

        def recompute(x, weight):
            return _reference.rms_norm(x, x.shape[x.dim() - nd:], weight, ctx.eps)

        grad_x, grad_weight = registry.differentiable_backward(recompute, (x, weight), (needs_x, needs_weight),
                                                               (grad_y,))
        return grad_x, None, grad_weight, None
    weight_grad = needs_weight and weight is not None
    grad_x, grad_weight = torch.ops.fusednn.rms_norm_backward(grad_y, x, nd, weight, rstd, weight_grad)
    return grad_x if needs_x else None, None, grad_weight if weight_grad else None, None


rms_norm_forward.register_autograd(_rms_norm_autograd, setup_context=_rms_norm_setup_context)


# --------------------------------------------------------------------------- validation


def _check_inputs(op: str, x, normalized_shape, params: dict, eps) -> tuple[int, ...]:
    """Validates the arguments of ``op``; returns normalized_shape as a tuple."""
    args = Args(f"fusednn.ops.{op}")
    args.tensor("x", x)
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        shape = (int(normalized_shape),)
    elif isinstance(normalized_shape, Sequence) and not isinstance(normalized_shape, str) and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in normalized_shape
    ):
        shape = tuple(int(d) for d in normalized_shape)
    else:
        raise args.error("normalized_shape", "an int or a sequence of ints", describe(normalized_shape), TypeError)
    if len(shape) == 0 or any(d < 0 for d in shape):
        raise args.error("normalized_shape", "non-empty with sizes >= 0", repr(shape))
    listed = str(list(shape))
    if x.dim() < len(shape) or tuple(x.shape[-len(shape):]) != shape:
        star = "*, " if op == "layer_norm" else "*"  # torch's two spellings
        raise args.error("normalized_shape", f"the trailing dims of x (x has shape {tuple(x.shape)})", repr(shape),
                         torch_message=f"Given normalized_shape={listed}, expected input with shape "
                                       f"[{star}{listed[1:-1]}], but got input of size{list(x.shape)}")
    for name, param in params.items():
        # Parameters may be of another float dtype than x (float32 parameters with bf16/fp16
        # activations, as in mixed-precision training), as torch's layer_norm/rms_norm allow.
        args.tensor(name, param, "of shape normalized_shape", optional=True, like=x, like_name="x",
                    same_dtype=False)
        if param is not None and tuple(param.shape) != shape:
            raise args.error(name, f"normalized_shape = {shape}", f"shape {tuple(param.shape)}",
                             torch_message=f"Expected {name} to be of same shape as normalized_shape, but got {name} "
                                           f"of shape {list(param.shape)} and normalized_shape = {listed}")
    args.real("eps", eps, minimum=0.0)
    return shape


# --------------------------------------------------------------------------- public functions


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalization over the trailing ``normalized_shape`` dimensions
    (``torch.nn.functional.layer_norm``).

    x: [..., *normalized_shape], float16/bfloat16/float32/float64, any strides.
    weight, bias: normalized_shape, any float dtype (e.g. float32 with bfloat16 x), x's device, or None.
    Returns y with x's shape and dtype (contiguous, as torch's). Mean and rstd are computed in
    float32 (float64 for float64 x); the backward saves x, weight, mean [M] and rstd [M].
    """
    shape = _check_inputs("layer_norm", x, normalized_shape, {"weight": weight, "bias": bias}, eps)
    if LAYER_NORM.select(x.device, x.dtype) == "reference":
        return _reference.layer_norm(x, shape, weight, bias, eps)
    y, _mean, _rstd = torch.ops.fusednn.layer_norm_forward(x, len(shape), weight, bias, float(eps))
    return y


def rms_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
) -> Tensor:
    """RMS normalization over the trailing ``normalized_shape`` dimensions
    (``torch.nn.functional.rms_norm``): y = x / sqrt(mean(x^2) + eps) * weight.

    x: [..., *normalized_shape], float16/bfloat16/float32/float64, any strides.
    weight: normalized_shape, any float dtype, x's device, or None. eps None means torch's
    default: the machine epsilon of float32 (of float64 for float64 x), the precision the
    statistics are computed in. Returns y with x's shape and dtype, in x's memory format
    (channels_last stays channels_last, as torch's). rstd is
    computed in float32 (float64 for float64 x); the backward saves x, weight and rstd [M].
    """
    if eps is None and isinstance(x, Tensor) and x.dtype in FLOAT_DTYPES:
        eps = default_rms_eps(x.dtype)
    shape = _check_inputs("rms_norm", x, normalized_shape, {"weight": weight}, eps)
    if RMS_NORM.select(x.device, x.dtype) == "reference":
        return _reference.rms_norm(x, shape, weight, eps)
    y, _rstd = torch.ops.fusednn.rms_norm_forward(x, len(shape), weight, float(eps))
    return y


# --------------------------------------------------------------------------- registry

_TRITON = registry.Kernel("triton", FLOAT_DTYPES, compile_variants=_kernels.compile_variants)

LAYER_NORM = registry.register(registry.OpInfo(
    name="layer_norm", family="normalization", function=layer_norm, reference=_reference.layer_norm,
    kernels=(_TRITON,), samples=_cases.layer_norm_samples,
    bad_inputs=_cases.layer_norm_bad_inputs, outputs=("y",), double_backward=True,
    bench=_cases.BENCH_SHAPES,
))
RMS_NORM = registry.register(registry.OpInfo(
    name="rms_norm", family="normalization", function=rms_norm, reference=_reference.rms_norm,
    kernels=(_TRITON,), samples=_cases.rms_norm_samples,
    bad_inputs=_cases.rms_norm_bad_inputs, outputs=("y",), double_backward=True,
    bench=_cases.BENCH_SHAPES,
))
