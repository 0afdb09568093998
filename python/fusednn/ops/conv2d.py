"""conv2d with a fused epilogue: implicit-GEMM Triton kernels (``fusednn.kernels.conv2d``)
as an autograd-aware op computing

    y = act((conv2d(input, weight) + bias) * scale + shift + residual)

(the reference is ``fusednn.reference.conv2d.conv2d``).

Registered ops (stride, dilation: (h, w); padding: the (top, left) padding, the bottom and
right ones implied by ``output_size`` (H_out, W_out), so "same" with an even kernel is one
call; activation: None or a name of ``reference._activation.ACTIVATIONS``):

* ``fusednn::conv2d_forward(Tensor input, Tensor weight, Tensor? bias, Tensor? scale,
  Tensor? shift, Tensor? residual, int[] stride, int[] padding, int[] dilation, int groups,
  int[] output_size, str? activation, bool save_conv) -> (Tensor output, Tensor conv_out)``
* ``fusednn::conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? bias,
  Tensor? scale, Tensor? shift, Tensor? residual, Tensor conv_out, int[] stride,
  int[] padding, int[] dilation, int groups, str? activation, bool input_grad,
  bool weight_grad, bool bias_grad, bool scale_grad, bool shift_grad, bool residual_grad)
  -> (grad_input, grad_weight, grad_bias, grad_scale, grad_shift, grad_residual)``

input is 4-D there ([N, C_in, H, W]; the public function adds and removes the batch dim of
an unbatched input). ``conv_out`` is the pre-epilogue output c as an
[N * H_out * W_out, C_out] channels-last matrix in the input's dtype, written only when
``save_conv`` (the backward needs it for an activation or a scale gradient:
``kernels._epilogue.needs_conv_output``), else ``[0]``. Gradients not asked for come back as
``[0]`` tensors.

Layouts, as torch's: the output is channels_last when the input or the weight is
channels_last (``suggest_memory_format``), else contiguous, and so are the input and weight
gradients (torch's rule for its channels_last convolutions); the other parameter gradients
are contiguous. The kernels take any strides,
and their main loops read the input and the output gradient as vectors of channels: one
whose channel stride is not 1 (NCHW) is copied to channels_last first, one read and one
write of it. Read in place, an NCHW operand is a gather of elements H * W apart, which
neither vectorizes nor pipelines (cp.async): built for sm_90a as a launch specializes it,
the forward of a 3x3 256 -> 256 convolution at 56 x 56 takes 255 registers and spills
5972 bytes without async copies from an NCHW input, against 231 registers, no spills and
a 3-stage cp.async pipeline from a channels_last one, so the copy is the cheaper path. The
output and the residual are written and read through their strides once per tile (an
NCHW output is a scattered store). The weight is read as channels_last ([C_out, kh, kw,
C_in / groups] in memory): a contiguous weight with a kernel larger than 1x1 is copied to
that format on each call (a weight-sized copy). The epilogue backward reads the output
gradient (and, with an activation, the residual) as [pixels, channels] matrices: an NCHW
one is copied to channels_last there.

Depthwise convolutions (groups == C_in == C_out) go to ``fusednn.ops.depthwise_conv2d``
where that op exists (see ``_depthwise``).

Double backward: with ``create_graph=True`` the backward is autograd through the reference
(``registry.differentiable_backward``), so the first gradient is differentiable.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

from fusednn import _runtime, registry
from fusednn._validate import Args, describe, dtype_name
from fusednn.cases import conv2d as _cases
from fusednn.kernels import _epilogue
from fusednn.kernels import conv2d as _kernels
from fusednn.ops._convolution import check_epilogue, conv2d_geometry
from fusednn.reference.conv2d import conv2d as _reference_conv2d

__all__ = ["conv2d"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- layouts


def _output_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """torch's F.conv2d: a channels_last output when the input or the weight is channels_last."""
    if torch.channels_last in (suggest_memory_format(input), suggest_memory_format(weight)):
        return torch.channels_last
    return torch.contiguous_format


def _channels_last_weight(weight: Tensor) -> Tensor:
    """The weight with contiguous input channels per tap (no copy for a channels_last or 1x1 one)."""
    return weight.contiguous(memory_format=torch.channels_last)


def _channels_innermost(t: Tensor) -> Tensor:
    """t itself when its channels are contiguous (channel stride 1: channels_last, or views
    of it), else a channels_last copy: the operands of the kernels' main loops (input and
    output gradient) are read as channel vectors (see the module docstring)."""
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous(memory_format=torch.channels_last)


def _pixels(t: Tensor) -> Tensor:
    """[N, C, H, W] as the [N * H * W, C] matrix (a view where the strides allow, else a
    channels-last copy)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _from_pixels(matrix: Tensor, shape) -> Tensor:
    """A contiguous [N * H * W, C] matrix as the [N, C, H, W] channels_last tensor it is."""
    n, c, h, w = shape
    return matrix.view(n, h, w, c).permute(0, 3, 1, 2)


def _contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.contiguous() if t is not None else None


# --------------------------------------------------------------------------- registered ops


@torch.library.triton_op("fusednn::conv2d_forward", mutates_args=())
def conv2d_forward(input: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Optional[Tensor],
                   shift: Optional[Tensor], residual: Optional[Tensor], stride: list[int], padding: list[int],
                   dilation: list[int], groups: int, output_size: list[int], activation: Optional[str],
                   save_conv: bool) -> tuple[Tensor, Tensor]:
    """The forward: input [N, C_in, H, W] and weight [C_out, C_in / groups, kh, kw] (float32,
    float16 or bfloat16, any strides), bias / scale / shift [C_out] (any float dtype) or None,
    residual [N, C_out, H_out, W_out] or None. Returns the output (input's dtype, memory
    format per ``_output_format``) and the pre-epilogue output [N * H_out * W_out, C_out]
    (``[0]`` unless save_conv)."""
    y = _runtime.empty(_output_shape(input, weight, output_size), dtype=input.dtype, device=input.device,
                       memory_format=_output_format(input, weight))
    conv_out = _conv_out_empty(input, y, save_conv)
    _kernels.conv2d_forward(_channels_innermost(input), _channels_last_weight(weight), _contiguous(bias),
                            _contiguous(scale), _contiguous(shift), residual, stride, padding, dilation, groups,
                            activation, y=y, conv_out=conv_out if save_conv else None)
    return y, conv_out


@conv2d_forward.register_fake
def _(input, weight, bias, scale, shift, residual, stride, padding, dilation, groups, output_size, activation,
      save_conv):
    y = torch.empty(_output_shape(input, weight, output_size), dtype=input.dtype, device=input.device,
                    memory_format=_output_format(input, weight))
    return y, _conv_out_empty(input, y, save_conv)


def _output_shape(input: Tensor, weight: Tensor, output_size) -> tuple[int, int, int, int]:
    return (input.shape[0], weight.shape[0], output_size[0], output_size[1])


def _conv_out_empty(input: Tensor, y: Tensor, save_conv: bool) -> Tensor:
    if not save_conv:
        return input.new_empty(0)
    n, c, h, w = y.shape
    return input.new_empty((n * h * w, c))


@torch.library.triton_op("fusednn::conv2d_backward", mutates_args=())
def conv2d_backward(grad_output: Tensor, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                    scale: Optional[Tensor], shift: Optional[Tensor], residual: Optional[Tensor], conv_out: Tensor,
                    stride: list[int], padding: list[int], dilation: list[int], groups: int,
                    activation: Optional[str], input_grad: bool, weight_grad: bool, bias_grad: bool,
                    scale_grad: bool, shift_grad: bool, residual_grad: bool,
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of conv2d_forward: grad_input and grad_weight in the output's memory format
    (``_output_format``), and grad_bias / grad_scale / grad_shift in their tensors' dtypes (reduced in
    float32), grad_residual (the output's shape; a channels_last tensor). ``conv_out`` is the
    forward's second output, required when the backward needs c (an activation, or
    scale_grad); the residual is read only with an activation."""
    epilogue = _epilogue_grads(grad_output, bias, scale, shift, residual, conv_out, activation,
                               conv_grad=input_grad or weight_grad, bias_grad=bias_grad, scale_grad=scale_grad,
                               shift_grad=shift_grad, residual_grad=residual_grad)
    grad_c, sum_dz, sum_dzv, grad_residual = epilogue
    if input_grad or weight_grad:
        grad_c = _channels_innermost(grad_c)
    grad_input, grad_weight, grad_bias, grad_scale, grad_shift = (input.new_empty(0) for _ in range(5))
    if input_grad:
        grad_input = _runtime.empty(input.shape, dtype=input.dtype, device=input.device,
                                    memory_format=_output_format(input, weight))
        _kernels.conv2d_input_grad(grad_c, _channels_last_weight(weight), stride, padding, dilation, groups,
                                   grad_x=grad_input)
    if weight_grad:
        grad_weight = _kernels.conv2d_weight_grad(grad_c, _channels_innermost(input), weight.shape, stride, padding,
                                                  dilation, groups)
        grad_weight = grad_weight.to(dtype=weight.dtype, memory_format=_output_format(input, weight))
    if bias_grad:
        grad_bias = (sum_dz * scale.float() if scale is not None else sum_dz).to(bias.dtype)
    if scale_grad:
        grad_scale = sum_dzv.to(scale.dtype)
    if shift_grad:
        grad_shift = sum_dz.to(shift.dtype)
    if not residual_grad:
        grad_residual = input.new_empty(0)
    return grad_input, grad_weight, grad_bias, grad_scale, grad_shift, grad_residual


@conv2d_backward.register_fake
def _(grad_output, input, weight, bias, scale, shift, residual, conv_out, stride, padding, dilation, groups,
      activation, input_grad, weight_grad, bias_grad, scale_grad, shift_grad, residual_grad):
    def like(flag, t, memory_format=torch.contiguous_format):
        if not flag:
            return input.new_empty(0)
        return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=memory_format)

    layout = _output_format(input, weight)
    return (like(input_grad, input, layout), like(weight_grad, weight, layout), like(bias_grad, bias),
            like(scale_grad, scale), like(shift_grad, shift), like(residual_grad, grad_output, torch.channels_last))


def _epilogue_grads(grad_y: Tensor, bias, scale, shift, residual, conv_out: Tensor, activation, *, conv_grad: bool,
                    bias_grad: bool, scale_grad: bool, shift_grad: bool, residual_grad: bool):
    """The epilogue's backward: (grad_c [N, C_out, H_out, W_out] for the convolution's
    gradients, sum dz [C_out], sum dz * (c + bias) [C_out], grad_residual), each None where
    not needed. Without an activation and a scale, grad_c is grad_y itself (no kernel)."""
    changes_grad = activation is not None or scale is not None  # dz * scale differs from dy
    grad_conv = conv_grad and changes_grad
    grad_residual = residual_grad and activation is not None
    sums = bias_grad or scale_grad or shift_grad
    grad_c, sum_dz, sum_dzv, dr = grad_y, None, None, None
    if grad_conv or grad_residual or sums:
        c = None
        if _epilogue.needs_conv_output(activation, scale_grad):
            if conv_out.numel() != grad_y.numel():
                raise ValueError("fusednn::conv2d_backward: this backward needs conv_out; the forward was called "
                                 "with save_conv=False")
            c = conv_out
        r = _pixels(residual) if activation is not None and residual is not None else None
        dc, dr, sum_dz, sum_dzv = _epilogue.epilogue_backward(
            _pixels(grad_y), c, _contiguous(bias), _contiguous(scale), _contiguous(shift), r, activation,
            grad_conv=grad_conv, grad_residual=grad_residual, sums=sums)
        if grad_conv:
            grad_c = _from_pixels(dc, grad_y.shape)
        if grad_residual:
            dr = _from_pixels(dr, grad_y.shape)
    if residual_grad and activation is None:
        dr = grad_y.clone(memory_format=torch.channels_last)  # the op's outputs cannot alias its inputs
    return grad_c, sum_dz, sum_dzv, dr


_TENSOR_INPUTS = 6  # input, weight, bias, scale, shift, residual


def _setup_context(ctx, inputs, output):
    x, weight, bias, scale, shift, residual, stride, padding, dilation, groups, output_size, activation, save_conv \
        = inputs
    _y, conv_out = output
    ctx.mark_non_differentiable(conv_out)
    # Everything is kept: a create_graph backward recomputes through the reference from all of it.
    ctx.save_for_backward(x, weight, bias, scale, shift, residual, conv_out)
    ctx.geometry = (stride, padding, dilation, groups, output_size)
    ctx.activation = activation


def _backward_formula(ctx, grad_y, _grad_conv_out):
    x, weight, bias, scale, shift, residual, conv_out = ctx.saved_tensors
    stride, padding, dilation, groups, output_size = ctx.geometry
    activation = ctx.activation
    needs = [bool(n) and t is not None
             for n, t in zip(ctx.needs_input_grad[:_TENSOR_INPUTS], (x, weight, bias, scale, shift, residual))]
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient

        def recompute(x, weight, bias, scale, shift, residual):
            return _explicitly_padded_reference(x, weight, bias, scale, shift, residual, stride, padding, dilation,
                                                groups, output_size, activation)

        grads = registry.differentiable_backward(recompute, (x, weight, bias, scale, shift, residual), needs,
                                                 (grad_y,))
        return tuple(grads) + (None,) * (len(ctx.needs_input_grad) - _TENSOR_INPUTS)
    input_grad, weight_grad, bias_grad, scale_grad, shift_grad, residual_grad = needs
    # Without an activation the residual's gradient is grad_y itself: no kernel, no copy.
    op_residual_grad = residual_grad and activation is not None
    grads = torch.ops.fusednn.conv2d_backward(grad_y, x, weight, bias, scale, shift, residual, conv_out, stride,
                                              padding, dilation, groups, activation, input_grad, weight_grad,
                                              bias_grad, scale_grad, shift_grad, op_residual_grad)
    grads = [g if need else None for g, need in zip(grads, needs)]
    if residual_grad and activation is None:
        grads[5] = grad_y
    return tuple(grads) + (None,) * (len(ctx.needs_input_grad) - _TENSOR_INPUTS)


conv2d_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def _explicitly_padded_reference(x, weight, bias, scale, shift, residual, stride, padding, dilation, groups,
                                 output_size, activation):
    """The reference on x padded explicitly: (top, left) as given, bottom and right as the
    output size implies (negative: rows the windows never reach are cropped)."""
    extent = [d * (k - 1) + 1 for d, k in zip(dilation, weight.shape[2:])]
    bottom, right = ((o - 1) * s + e - size - p
                     for o, s, e, size, p in zip(output_size, stride, extent, x.shape[2:], padding))
    padded = F.pad(x, (padding[1], right, padding[0], bottom))
    return _reference_conv2d(padded, weight, bias, tuple(stride), 0, tuple(dilation), groups, scale=scale,
                             shift=shift, residual=residual, activation=activation)


# --------------------------------------------------------------------------- validation


def _check_arguments(args: Args, input, weight, groups):
    """The tensors' types, ranks, dtypes and devices, groups, and the channel counts."""
    args.tensor("input", input)
    if input.dim() not in (3, 4):
        raise args.error("input", "3-D [C_in, H, W] or 4-D [N, C_in, H, W]", f"shape {tuple(input.shape)}",
                         torch_message="Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of "
                                       f"size: {list(input.shape)}")
    args.tensor("weight", weight, "[C_out, C_in / groups, kh, kw]", ndim=4)
    if weight.dtype != input.dtype or weight.device != input.device:
        different = "dtype" if weight.dtype != input.dtype else "device"
        expected = (f"of input's dtype {dtype_name(input.dtype)}" if different == "dtype"
                    else f"on input's device {input.device}")
        got = dtype_name(weight.dtype) if different == "dtype" else str(weight.device)
        raise args.error("weight", expected, got, TypeError if different == "dtype" else ValueError,
                         torch_message=f"Input type ({input.type()}) and weight type ({weight.type()}) should be "
                                       "the same")
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool):
        raise args.error("groups", "an int", describe(groups), TypeError)
    if groups < 1:
        raise args.error("groups", "at least 1", repr(groups), torch_message="non-positive groups is not supported")
    c_in = input.shape[-3]
    c_out = weight.shape[0]
    if c_in != weight.shape[1] * groups:
        raise args.error(
            "weight", f"[C_out, C_in / groups, kh, kw] with C_in / groups = {c_in} / {groups}",
            f"shape {tuple(weight.shape)}",
            torch_message=f"Given groups={groups}, weight of size {list(weight.shape)}, expected input"
                          f"{list(input.shape)} to have {weight.shape[1] * groups} channels, but got {c_in} "
                          "channels instead")
    if c_out % groups:
        raise args.error("weight", f"[C_out, ...] with C_out divisible by groups = {groups}",
                         f"shape {tuple(weight.shape)}",
                         torch_message=f"Given groups={groups}, expected weight to be divisible by {groups} at "
                                       f"dimension 0, but got weight of size [{list(weight.shape)}] instead")


# --------------------------------------------------------------------------- depthwise dispatch

# Depthwise convolutions (groups == C_in == C_out) go to fusednn.ops.depthwise_conv2d, a
# direct kernel without tensor cores.


def _depthwise(input, weight, groups) -> bool:
    return groups == input.shape[-3] == weight.shape[0] and weight.shape[1] == 1


# --------------------------------------------------------------------------- public function


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1,
           groups: int = 1, *, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
           residual: Optional[Tensor] = None, activation: Optional[str] = None) -> Tensor:
    """2-D convolution with a fused epilogue (``torch.nn.functional.conv2d``'s arguments):

        y = act((conv2d(input, weight) + bias) * scale + shift + residual)

    input: [N, C_in, H, W] or unbatched [C_in, H, W], float16/bfloat16/float32/float64, any
    strides (channels_last is read in place, NCHW copied to it first). weight: [C_out, C_in / groups, kh, kw], the
    input's dtype and device. bias, scale, shift: [C_out] of any float dtype, or None (a
    folded BatchNorm is scale = gamma / sqrt(var + eps), shift = beta - mean * scale).
    residual: the output's shape and the input's dtype, or None. stride, dilation: an int or
    a pair >= 1; padding: an int or a pair >= 0, or "same" (stride 1; an even kernel pads one
    more at the bottom / right, as torch) or "valid". activation: None, "relu", "gelu",
    "gelu_tanh" or "silu".

    Returns [N, C_out, H_out, W_out] (or [C_out, H_out, W_out]) in the input's dtype,
    channels_last when the input or the weight is channels_last (as torch). float32,
    float16 and bfloat16 run the implicit-GEMM Triton kernels (fp32 accumulation; float32
    with exact fp32 products, no tf32); float64 and CPU tensors without the interpreter run
    the reference. Saved for backward: input, weight, bias, scale, shift, residual and, when
    there is an activation or scale needs a gradient, the pre-epilogue output
    [N * H_out * W_out, C_out].
    """
    args = Args("fusednn.ops.conv2d")
    _check_arguments(args, input, weight, groups)
    geometry = conv2d_geometry(args, tuple(input.shape[-2:]), tuple(weight.shape[2:]), stride, padding, dilation)
    output_shape = input.shape[:-3] + (weight.shape[0],) + geometry.output
    activation = check_epilogue(args, input, tuple(output_shape), bias, scale, shift, residual, activation)
    if _depthwise(input, weight, groups):
        from fusednn.ops.depthwise_conv2d import depthwise_conv2d

        return depthwise_conv2d(input, weight, bias, stride, padding, dilation, scale=scale, shift=shift,
                                residual=residual, activation=activation)
    if CONV2D.select(input.device, input.dtype) == "reference":
        return _reference_conv2d(input, weight, bias, stride, padding, dilation, groups, scale=scale, shift=shift,
                                 residual=residual, activation=activation)
    batched = input.dim() == 4
    x = input if batched else input.unsqueeze(0)
    r = residual if batched or residual is None else residual.unsqueeze(0)
    tensors = (input, weight, bias, scale, shift, residual)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    save_conv = grad and _epilogue.needs_conv_output(activation, scale is not None and scale.requires_grad)
    y, _conv_out = torch.ops.fusednn.conv2d_forward(
        x, weight, bias, scale, shift, r, list(geometry.stride), list(geometry.padding), list(geometry.dilation),
        int(groups), list(geometry.output), activation, save_conv)
    return y if batched else y.squeeze(0)


# --------------------------------------------------------------------------- registry

CONV2D = registry.register(registry.OpInfo(
    name="conv2d", family="convolution", function=conv2d, reference=_reference_conv2d,
    kernels=(registry.Kernel("triton", _KERNEL_DTYPES, compile_variants=_kernels.compile_variants),),
    samples=_cases.conv2d_samples, bad_inputs=_cases.conv2d_bad_inputs, outputs=("output",),
    double_backward=True, bench=_cases.BENCH_SHAPES,
))
