"""2-D max, average and global average pooling: Triton kernels (``fusednn.kernels.pooling``)
as autograd-aware ops with the semantics of ``torch.nn.functional.max_pool2d``,
``avg_pool2d`` and ``adaptive_avg_pool2d``.

Registered ops. x is ``[N, C, H, W]`` or unbatched ``[C, H, W]``, any strides; geometry
arguments are (height, width) pairs, already validated by the public functions.

* ``fusednn::max_pool2d_forward(Tensor x, SymInt[] kernel_size, SymInt[] stride,
  SymInt[] padding, SymInt[] dilation, bool ceil_mode, bool with_indices)
  -> (Tensor y, Tensor indices)``: indices is torch's int64 argmax (a flat index h * W + w
  into the input plane), or an empty ``[0]`` tensor unless with_indices.
* ``fusednn::max_pool2d_backward(Tensor grad_y, Tensor x, Tensor indices, SymInt[] kernel_size,
  SymInt[] stride, SymInt[] padding, SymInt[] dilation) -> Tensor grad_x``
* ``fusednn::avg_pool2d_forward(Tensor x, SymInt[] kernel_size, SymInt[] stride,
  SymInt[] padding, bool ceil_mode, bool count_include_pad, SymInt? divisor_override) -> Tensor y``
* ``fusednn::avg_pool2d_backward(Tensor grad_y, Tensor x, SymInt[] kernel_size, SymInt[] stride,
  SymInt[] padding, bool count_include_pad, SymInt? divisor_override) -> Tensor grad_x``
* ``fusednn::adaptive_avg_pool2d_forward(Tensor x) -> Tensor y`` (the 1x1 output only: the
  mean over H x W) and ``fusednn::adaptive_avg_pool2d_backward(Tensor grad_y, Tensor x)
  -> Tensor grad_x``.

Layout, as torch's: outputs, indices and input gradients are channels_last when x's
strides are (torch's ``suggest_memory_format``), else contiguous; an unbatched input gives
contiguous ones. The kernels read every input through its strides: no copies.

Backward: max_pool2d's is a gather over input pixels (each sums, in float32, the output
gradients whose argmax it is), deterministic, with no atomics; avg_pool2d's gathers
dy / divisor alike. The ops save x (its shape and layout; the reference's input for a
second derivative) and, for max, the argmax.

Double backward: with ``create_graph=True`` the backward is autograd through the
reference (``registry.differentiable_backward``), so the first gradient is differentiable.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from fusednn import _runtime, registry
from fusednn import reference as _reference
from fusednn.cases import pooling as _cases
from fusednn.reference.pooling import resolve_output_size
from fusednn._validate import Args, describe, shape_of
from fusednn.kernels import pooling as _kernels

__all__ = ["adaptive_avg_pool2d", "avg_pool2d", "max_pool2d"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- geometry and layout


def pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """torch's output size along one dim: floor (or, in ceil mode, ceil) of
    ``(size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1``, where in ceil mode
    the last window must start inside the input or its left padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1  # floor division, as torch's div_rtn
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _output_hw(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[int, int]:
    return tuple(pooled_size(x.shape[-2 + i], kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode)
                 for i in range(2))


def _layout(x: Tensor) -> torch.memory_format:
    """The memory format torch's pooling gives outputs and input gradients: x's suggested
    one for a batched input, contiguous for an unbatched one."""
    return suggest_memory_format(x) if x.dim() == 4 else torch.contiguous_format


def _empty_pooled(x: Tensor, output_hw: Sequence[int], dtype: torch.dtype) -> Tensor:
    """An output of x's rank with spatial size ``output_hw``, in ``_layout(x)``."""
    shape = (*x.shape[:-2], *output_hw)
    return _runtime.empty(shape, dtype=dtype, device=x.device, memory_format=_layout(x))


def _batched(t: Tensor) -> Tensor:
    """A [C, H, W] tensor as a [1, C, H, W] view; a 4-D one as itself."""
    return t if t.dim() == 4 else t.unsqueeze(0)


def _empty_indices(x: Tensor) -> Tensor:
    return x.new_empty((0,), dtype=torch.int64)


# --------------------------------------------------------------------------- max_pool2d ops


def _max_pool_outputs(x, kernel_size, stride, padding, dilation, ceil_mode, with_indices):
    output_hw = _output_hw(x, kernel_size, stride, padding, dilation, ceil_mode)
    y = _empty_pooled(x, output_hw, x.dtype)
    indices = _empty_pooled(x, output_hw, torch.int64) if with_indices else _empty_indices(x)
    return y, indices


@torch.library.triton_op("fusednn::max_pool2d_forward", mutates_args=())
def max_pool2d_forward(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                       dilation: list[int], ceil_mode: bool, with_indices: bool) -> tuple[Tensor, Tensor]:
    """Max pooling. x: [N, C, H, W] or [C, H, W] float16/bfloat16/float32, any strides.
    Returns y (x's rank, [.., C, OH, OW], x's dtype, ``_layout(x)``) and, when
    ``with_indices``, the argmax as int64 in y's layout (else an empty [0] tensor)."""
    y, indices = _max_pool_outputs(x, kernel_size, stride, padding, dilation, ceil_mode, with_indices)
    _kernels.pool_forward(_batched(x), kernel_size, stride, padding, dilation, is_max=True, y=_batched(y),
                          indices=_batched(indices) if with_indices else None)
    return y, indices


@max_pool2d_forward.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, with_indices):
    return _max_pool_outputs(x, kernel_size, stride, padding, dilation, ceil_mode, with_indices)


@torch.library.triton_op("fusednn::max_pool2d_backward", mutates_args=())
def max_pool2d_backward(grad_y: Tensor, x: Tensor, indices: Tensor, kernel_size: list[int], stride: list[int],
                        padding: list[int], dilation: list[int]) -> Tensor:
    """Gradient of max_pool2d_forward: grad_x (x's shape and dtype, ``_layout(x)``), each
    element the float32 sum of the grad_y elements (any strides) whose argmax it is."""
    grad_x = _runtime.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))
    _kernels.pool_backward(_batched(grad_y), kernel_size, stride, padding, dilation, is_max=True,
                           grad_x=_batched(grad_x), indices=_batched(indices))
    return grad_x


@max_pool2d_backward.register_fake
def _(grad_y, x, indices, kernel_size, stride, padding, dilation):
    return torch.empty_like(x, memory_format=_layout(x))


def _max_pool_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, ceil_mode, with_indices = inputs
    _y, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(x, indices)
    ctx.geometry = (kernel_size, stride, padding, dilation)
    ctx.ceil_mode, ctx.with_indices = ceil_mode, with_indices


def _max_pool_autograd(ctx, grad_y, _grad_indices):
    x, indices = ctx.saved_tensors
    kernel_size, stride, padding, dilation = ctx.geometry
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient

        def recompute(x):
            return _reference.max_pool2d(x, kernel_size, stride, padding, dilation, ctx.ceil_mode)

        (grad_x,) = registry.differentiable_backward(recompute, (x,), (True,), (grad_y,))
    else:
        if not ctx.with_indices:
            raise RuntimeError("fusednn::max_pool2d_forward ran with with_indices=False, so it kept no argmax "
                               "for the backward; call fusednn.ops.max_pool2d, which asks for it when x requires "
                               "grad")
        grad_x = torch.ops.fusednn.max_pool2d_backward(grad_y, x, indices, kernel_size, stride, padding, dilation)
    return grad_x, None, None, None, None, None, None


max_pool2d_forward.register_autograd(_max_pool_autograd, setup_context=_max_pool_setup_context)


# --------------------------------------------------------------------------- avg_pool2d ops


@torch.library.triton_op("fusednn::avg_pool2d_forward", mutates_args=())
def avg_pool2d_forward(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], ceil_mode: bool,
                       count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    """Average pooling. x: [N, C, H, W] or [C, H, W] float16/bfloat16/float32, any strides.
    Returns y (x's rank, [.., C, OH, OW], x's dtype, ``_layout(x)``): window sums in float32
    over torch's divisor."""
    y = _empty_pooled(x, _output_hw(x, kernel_size, stride, padding, (1, 1), ceil_mode), x.dtype)
    _kernels.pool_forward(_batched(x), kernel_size, stride, padding, (1, 1), is_max=False, y=_batched(y),
                          count_include_pad=count_include_pad, divisor_override=divisor_override)
    return y


@avg_pool2d_forward.register_fake
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _empty_pooled(x, _output_hw(x, kernel_size, stride, padding, (1, 1), ceil_mode), x.dtype)


@torch.library.triton_op("fusednn::avg_pool2d_backward", mutates_args=())
def avg_pool2d_backward(grad_y: Tensor, x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                        count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    """Gradient of avg_pool2d_forward: grad_x (x's shape and dtype, ``_layout(x)``), each
    element the float32 sum of grad_y / divisor over the windows that hold it (grad_y
    any strides; its size carries the ceil mode)."""
    grad_x = _runtime.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))
    _kernels.pool_backward(_batched(grad_y), kernel_size, stride, padding, (1, 1), is_max=False,
                           grad_x=_batched(grad_x), count_include_pad=count_include_pad,
                           divisor_override=divisor_override)
    return grad_x


@avg_pool2d_backward.register_fake
def _(grad_y, x, kernel_size, stride, padding, count_include_pad, divisor_override):
    return torch.empty_like(x, memory_format=_layout(x))


def _avg_pool_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = inputs
    ctx.save_for_backward(x)
    ctx.options = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _avg_pool_autograd(ctx, grad_y):
    (x,) = ctx.saved_tensors
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = ctx.options
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient

        def recompute(x):
            return _reference.avg_pool2d(x, *ctx.options)

        (grad_x,) = registry.differentiable_backward(recompute, (x,), (True,), (grad_y,))
    else:
        grad_x = torch.ops.fusednn.avg_pool2d_backward(grad_y, x, kernel_size, stride, padding, count_include_pad,
                                                       divisor_override)
    return grad_x, None, None, None, None, None, None


avg_pool2d_forward.register_autograd(_avg_pool_autograd, setup_context=_avg_pool_setup_context)


# --------------------------------------------------------------------------- adaptive_avg_pool2d ops (1x1)


@torch.library.triton_op("fusednn::adaptive_avg_pool2d_forward", mutates_args=())
def adaptive_avg_pool2d_forward(x: Tensor) -> Tensor:
    """adaptive_avg_pool2d to a 1x1 output: the mean over H x W. x: [N, C, H, W] or
    [C, H, W] float16/bfloat16/float32, any strides. Returns y [N, C, 1, 1] (or [C, 1, 1]),
    x's dtype, ``_layout(x)``; summed in float32."""
    y = _empty_pooled(x, (1, 1), x.dtype)
    _kernels.global_avg_pool_forward(_batched(x), _batched(y))
    return y


@adaptive_avg_pool2d_forward.register_fake
def _(x):
    return _empty_pooled(x, (1, 1), x.dtype)


@torch.library.triton_op("fusednn::adaptive_avg_pool2d_backward", mutates_args=())
def adaptive_avg_pool2d_backward(grad_y: Tensor, x: Tensor) -> Tensor:
    """Gradient of adaptive_avg_pool2d_forward: grad_x = grad_y / (H * W) broadcast over
    H x W (x's shape and dtype, ``_layout(x)``, so a channels_last x gets a channels_last
    gradient)."""
    grad_x = _runtime.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))
    _kernels.global_avg_pool_backward(_batched(grad_y), _batched(grad_x))
    return grad_x


@adaptive_avg_pool2d_backward.register_fake
def _(grad_y, x):
    return torch.empty_like(x, memory_format=_layout(x))


def _adaptive_setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(x)


def _adaptive_autograd(ctx, grad_y):
    (x,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient
        (grad_x,) = registry.differentiable_backward(lambda x: _reference.adaptive_avg_pool2d(x, 1), (x,), (True,),
                                                     (grad_y,))
        return grad_x
    return torch.ops.fusednn.adaptive_avg_pool2d_backward(grad_y, x)


adaptive_avg_pool2d_forward.register_autograd(_adaptive_autograd, setup_context=_adaptive_setup_context)


# --------------------------------------------------------------------------- validation


@dataclasses.dataclass(frozen=True)
class PoolGeometry:
    """A validated pooling call: (height, width) pairs."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    output: tuple[int, int]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_pair(args: Args, op: str, name: str, value) -> tuple[int, int]:
    """An int or a tuple of one or two ints, as torch takes them, as a pair."""
    torch_message = f"{op}: {name} must either be a single int, or a tuple of two ints"
    if _is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        if len(value) not in (1, 2):
            raise args.error(name, "an int or a tuple of one or two ints", repr(tuple(value)),
                             torch_message=torch_message)
        return int(value[0]), int(value[-1])
    raise args.error(name, "an int or a tuple of one or two ints", describe(value), TypeError,
                     torch_message=torch_message)


def _check_input(args: Args, op: str, input) -> None:
    args.tensor("input", input)
    shape_message = ("Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:"
                     f"{list(input.shape)}")
    rank_message = "non-empty 3D or 4D (batch mode) tensor expected for input" if op == "max_pool2d" else shape_message
    if input.dim() not in (3, 4):
        raise args.error("input", "3-D [C, H, W] or 4-D [N, C, H, W]", shape_of(input), torch_message=rank_message)
    if 0 in input.shape[-3:]:
        raise args.error("input", "non-empty in C, H and W (only the batch N may be 0)", shape_of(input),
                         torch_message=shape_message)


def _check_pool(args: Args, op: str, input, kernel_size, stride, padding, dilation, ceil_mode) -> PoolGeometry:
    """Validates a max_pool2d / avg_pool2d call with torch's rules (and torch's messages in
    brackets); returns its geometry."""
    _check_input(args, op, input)
    kernel = _int_pair(args, op, "kernel_size", kernel_size)
    strides = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else \
        _int_pair(args, op, "stride", stride)
    pad = _int_pair(args, op, "padding", padding)
    dilations = _int_pair(args, op, "dilation", dilation)
    args.boolean("ceil_mode", ceil_mode)
    if min(kernel) < 1:
        raise args.error("kernel_size", "at least 1", repr(kernel),
                         torch_message=f"kernel size should be greater than zero, but got kH: {kernel[0]} "
                                       f"kW: {kernel[1]}")
    if min(strides) < 1:
        raise args.error("stride", "at least 1", repr(strides),
                         torch_message="stride should not be zero" if 0 in strides else
                         f"stride should be greater than zero, but got dH: {strides[0]} dW: {strides[1]}")
    if min(dilations) < 1:
        raise args.error("dilation", "at least 1", repr(dilations),
                         torch_message=f"dilation should be greater than zero, but got dilationH: {dilations[0]} "
                                       f"dilationW: {dilations[1]}")
    if min(pad) < 0:
        raise args.error("padding", "at least 0", repr(pad),
                         torch_message=f"pad must be non-negative, but got pad: {min(pad)}")
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        # torch checks half the dilated kernel first, then half the kernel
        over = [(p, k, d) for p, k, d in zip(pad, kernel, dilations) if p > ((k - 1) * d + 1) // 2]
        torch_message = (f"pad should be at most half of effective kernel size, but got pad={over[0][0]}, "
                         f"kernel_size={over[0][1]} and dilation={over[0][2]}" if over else
                         f"pad should be smaller than or equal to half of kernel size, but got padW = {pad[1]}, "
                         f"padH = {pad[0]}, kW = {kernel[1]}, kH = {kernel[0]}")
        raise args.error("padding", f"at most half of kernel_size {kernel}", repr(pad), torch_message=torch_message)
    output = _output_hw(input, kernel, strides, pad, dilations, ceil_mode)
    if min(output) < 1:
        c, h, w = input.shape[-3:]
        raise args.error("input", "at least one window in size once padded (an output of at least 1 x 1)",
                         f"{shape_of(input)}, an output of {output[0]} x {output[1]}",
                         torch_message=f"Given input size: ({c}x{h}x{w}). Calculated output size: "
                                       f"({c}x{output[0]}x{output[1]}). Output size is too small")
    return PoolGeometry(kernel, strides, pad, dilations, output)


def _check_adaptive(args: Args, input, output_size) -> tuple[int, int]:
    """Validates an adaptive_avg_pool2d call; returns the output size as a pair of ints."""
    args.tensor("input", input)
    if input.dim() not in (3, 4):
        raise args.error("input", "3-D [C, H, W] or 4-D [N, C, H, W]", shape_of(input),
                         torch_message=f"adaptive_avg_pool2d(): Expected 3D or 4D tensor, but got {list(input.shape)}")
    if 0 in input.shape[-2:]:
        empty = input.dim() - 2 if input.shape[-2] == 0 else input.dim() - 1
        raise args.error("input", "non-empty in H and W", shape_of(input),
                         torch_message="adaptive_avg_pool2d(): Expected input to have non-zero size for non-batch "
                                       f"dimensions, but input has sizes {list(input.shape)} with dimension {empty} "
                                       "being empty")
    expected = "an int or a pair of ints or None (None keeps the input's size)"
    if _is_int(output_size):
        pair = (output_size, output_size)
    elif isinstance(output_size, (tuple, list)) and all(v is None or _is_int(v) for v in output_size):
        if len(output_size) != 2:
            raise args.error("output_size", expected, repr(tuple(output_size)),
                             torch_message="adaptive_avg_pool2d: output_size must be 2")
        pair = tuple(output_size)
    else:
        raise args.error("output_size", expected, describe(output_size), TypeError)
    size = resolve_output_size(input, pair)
    if min(size) < 0:
        shown = tuple(output_size) if isinstance(output_size, (tuple, list)) else output_size
        raise args.error("output_size", "at least 0", repr(shown),
                         torch_message="adaptive_avg_pool2d: elements of output_size must be greater than or equal "
                                       f"to 0 but received {{{size[0]}, {size[1]}}}")
    return size


# --------------------------------------------------------------------------- public functions


def max_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: Optional[int | Sequence[int]] = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """2-D max pooling (``torch.nn.functional.max_pool2d``).

    input: [N, C, H, W] (N may be 0) or unbatched [C, H, W], float16/bfloat16/float32
    (Triton; float64 runs the reference), any strides: channels_last is the kernel's native
    layout, NCHW is read through its strides. kernel_size, stride (None: kernel_size),
    padding (at most half the kernel, ``-inf`` outside the input) and dilation are ints or
    (h, w) pairs; ceil_mode as torch (the last window starts inside the input or its left
    padding). NaN propagates as in torch.

    Returns y [.., C, OH, OW] in x's dtype, channels_last for a channels_last input (as
    torch's); with ``return_indices`` also the argmax, int64 in y's layout, a flat index
    ``h * W + w`` into the input plane (the first maximum of a window; the last NaN). When
    input requires grad the forward saves input and the argmax; the backward is a
    deterministic gather in float32.
    """
    args = Args("fusednn.ops.max_pool2d")
    geometry = _check_pool(args, "max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)
    args.boolean("return_indices", return_indices)
    if MAX_POOL2D.select(input.device, input.dtype) == "reference":
        return _reference.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    with_indices = return_indices or (input.requires_grad and torch.is_grad_enabled())
    y, indices = torch.ops.fusednn.max_pool2d_forward(input, list(geometry.kernel), list(geometry.stride),
                                                      list(geometry.padding), list(geometry.dilation), ceil_mode,
                                                      with_indices)
    return (y, indices) if return_indices else y


def avg_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: Optional[int | Sequence[int]] = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
) -> Tensor:
    """2-D average pooling (``torch.nn.functional.avg_pool2d``).

    input: [N, C, H, W] (N may be 0) or unbatched [C, H, W], float16/bfloat16/float32
    (Triton; float64 runs the reference), any strides (channels_last native). kernel_size,
    stride (None: kernel_size) and padding (zeros, at most half the kernel) are ints or
    (h, w) pairs. The divisor is torch's: ``divisor_override`` (a nonzero int) if given;
    else with ``count_include_pad`` the window's size within the padded input (padded
    positions count, those beyond it in ceil mode do not), without it the number of input
    elements in the window.

    Returns y [.., C, OH, OW] in x's dtype (sums in float32), channels_last for a
    channels_last input. The forward saves input (for its shape and layout); the backward
    is a deterministic gather in float32.
    """
    args = Args("fusednn.ops.avg_pool2d")
    geometry = _check_pool(args, "avg_pool2d", input, kernel_size, stride, padding, 1, ceil_mode)
    args.boolean("count_include_pad", count_include_pad)
    if divisor_override is not None and (not _is_int(divisor_override) or divisor_override == 0):
        raise args.error("divisor_override", "a nonzero int or None", repr(divisor_override),
                         TypeError if not _is_int(divisor_override) else ValueError,
                         torch_message="divisor must be not zero" if divisor_override == 0 else None)
    if AVG_POOL2D.select(input.device, input.dtype) == "reference":
        return _reference.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                     divisor_override)
    return torch.ops.fusednn.avg_pool2d_forward(input, list(geometry.kernel), list(geometry.stride),
                                                list(geometry.padding), ceil_mode, count_include_pad,
                                                None if divisor_override is None else int(divisor_override))


def adaptive_avg_pool2d(input: Tensor, output_size: int | Sequence[Optional[int]]) -> Tensor:
    """2-D adaptive average pooling (``torch.nn.functional.adaptive_avg_pool2d``).

    input: [N, C, H, W] or unbatched [C, H, W] (H, W >= 1; N and C may be 0), any float
    dtype, any strides. output_size: an int or an (h, w) pair whose None entries keep the
    input's size.

    The Triton kernel serves the 1x1 output (``1``, ``(1, 1)``, or None entries where the
    input's size is 1): the mean over H x W of each channel, float16/bfloat16/float32 summed
    in float32. Every other output size, and float64, runs the reference (torch's own
    adaptive_avg_pool2d); forcing the ``triton`` backend on one of those raises
    NotImplementedError. Returns y [.., C, OH, OW] in x's dtype and torch's layout; the
    1x1 kernel's gradient keeps a channels_last input's layout. The 1x1 forward saves input
    (for its shape and layout).
    """
    args = Args("fusednn.ops.adaptive_avg_pool2d")
    size = _check_adaptive(args, input, output_size)
    backend = ADAPTIVE_AVG_POOL2D.select(input.device, input.dtype)
    if backend == "triton" and size != (1, 1):
        if _runtime.requested_backend() == "triton":
            raise args.unsupported(f"the Triton kernel computes the 1x1 output (the global mean) only; output_size "
                                   f"{output_size!r} gives {size[0]} x {size[1]}, which the reference computes (use "
                                   "the 'auto' or 'reference' backend)")
        backend = "reference"
    if backend == "reference":
        return _reference.adaptive_avg_pool2d(input, output_size)
    return torch.ops.fusednn.adaptive_avg_pool2d_forward(input)


# --------------------------------------------------------------------------- registry

_TRITON = registry.Kernel("triton", _KERNEL_DTYPES, compile_variants=_kernels.compile_variants)

MAX_POOL2D = registry.register(registry.OpInfo(
    name="max_pool2d", family="convolution", function=max_pool2d, reference=_reference.max_pool2d,
    kernels=(_TRITON,), samples=_cases.max_pool2d_samples, bad_inputs=_cases.max_pool2d_bad_inputs,
    outputs=("y",), double_backward=True, bench=_cases.MAX_POOL_BENCH_SHAPES,
))
AVG_POOL2D = registry.register(registry.OpInfo(
    name="avg_pool2d", family="convolution", function=avg_pool2d, reference=_reference.avg_pool2d,
    kernels=(_TRITON,), samples=_cases.avg_pool2d_samples, bad_inputs=_cases.avg_pool2d_bad_inputs,
    outputs=("y",), double_backward=True, bench=_cases.AVG_POOL_BENCH_SHAPES,
))
ADAPTIVE_AVG_POOL2D = registry.register(registry.OpInfo(
    name="adaptive_avg_pool2d", family="convolution", function=adaptive_avg_pool2d,
    reference=_reference.adaptive_avg_pool2d, kernels=(_TRITON,), samples=_cases.adaptive_avg_pool2d_samples,
    bad_inputs=_cases.adaptive_avg_pool2d_bad_inputs, outputs=("y",), double_backward=True,
    bench=_cases.GLOBAL_POOL_BENCH_SHAPES,
))
