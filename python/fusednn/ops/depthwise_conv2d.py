"""Depthwise 2-D convolution (``groups = channels``, one filter per channel) with the fused
epilogue, on direct Triton kernels (``fusednn.kernels.depthwise_conv2d``):

    y = act((conv2d(input, weight, groups=C) + bias) * scale + shift + residual)

Registered ops (input is 4-D here: the public function adds and removes the batch dim of an
unbatched call; ``padding`` is the resolved (top, left) padding and ``output_size`` the
output's (H_out, W_out), which together also express "same" with an even kernel):

* ``fusednn::depthwise_conv2d_forward(Tensor input, Tensor weight, Tensor? bias,
  Tensor? scale, Tensor? shift, Tensor? residual, int[] stride, int[] padding,
  int[] dilation, int[] output_size, str? activation, bool save_conv) -> (Tensor y,
  Tensor conv_out)``: conv_out is the pre-epilogue output c (channels_last, input's dtype)
  when ``save_conv``, else an empty ``[0]`` tensor.
* ``fusednn::depthwise_conv2d_backward(Tensor grad_y, Tensor input, Tensor weight,
  Tensor? bias, Tensor? scale, Tensor? shift, Tensor? residual, Tensor? conv_out,
  int[] stride, int[] padding, int[] dilation, str? activation, bool input_grad,
  bool weight_grad, bool bias_grad, bool scale_grad, bool shift_grad, bool residual_grad)
  -> (grad_input, grad_weight, grad_bias, grad_scale, grad_shift, grad_residual)``;
  gradients not asked for come back as empty ``[0]`` tensors.

Layout, as torch's convolution: y, grad_input and grad_residual are channels_last when the
input or the weight is (``suggest_memory_format``), else contiguous; parameter gradients
are contiguous, each in its parameter's dtype. The kernels read and write any strides
through them; an output gradient or a residual that is not channels_last costs one
channels-last copy when the epilogue backward has to read it.

Limits: the kernels address within one image (a batch entry of the input or the output)
through int32 offsets, so an image of 2^31 or more elements raises NotImplementedError
(the reference backend has no such limit).

Saved for backward: input, weight, bias, scale, shift, residual, and c only when the
backward needs it (an activation, or a scale that requires grad: ``_epilogue.needs_conv_output``).
Double backward: with ``create_graph=True`` the backward is autograd through the reference
(``registry.differentiable_backward``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

from fusednn import _runtime, registry
from fusednn import reference as _reference
from fusednn._validate import Args, shape_of
from fusednn.cases import depthwise_conv2d as _cases
from fusednn.kernels import _epilogue
from fusednn.kernels import depthwise_conv2d as _kernels
from fusednn.ops._convolution import check_epilogue, conv2d_geometry

__all__ = ["depthwise_conv2d"]

_NAME = "fusednn.ops.depthwise_conv2d"


# --------------------------------------------------------------------------- shared implementation


def _suggests_channels_last(t: Tensor) -> bool:
    if t.shape[0] == 0:  # an empty batch: judge the strides of one image (torch's empty output keeps them)
        t = torch.empty_strided((1, *t.shape[1:]), t.stride(), device="meta")
    return suggest_memory_format(t) == torch.channels_last


def _output_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """torch's convolution output format: channels_last when the input or the weight is."""
    if _suggests_channels_last(input) or _suggests_channels_last(weight):
        return torch.channels_last
    return torch.contiguous_format


def _rows(t: Tensor) -> Tensor:
    """[N, C, H, W] as the [N * H * W, C] channels-last matrix: a view of a channels_last
    tensor, a copy of any other."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _from_rows(rows: Tensor, shape, memory_format: torch.memory_format) -> Tensor:
    """A contiguous [N * H * W, C] matrix as an [N, C, H, W] tensor in ``memory_format``."""
    n, c, h, w = shape
    out = rows.view(n, h, w, c).permute(0, 3, 1, 2)
    return out if memory_format == torch.channels_last else out.contiguous(memory_format=memory_format)


def _empty_like_format(t: Tensor, shape, memory_format: torch.memory_format) -> Tensor:
    return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=memory_format)


def _image_elements(output_shape) -> int:
    """The elements of one output image, [C, H_out, W_out]."""
    c, h, w = output_shape[-3:]
    return c * h * w


def _contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.contiguous() if t is not None else None


def _forward(x, weight, bias, scale, shift, residual, stride, padding, dilation, output_size, activation,
             save_conv):
    n, channels = x.shape[:2]
    shape = (n, channels, *output_size)
    y = _runtime.empty(shape, dtype=x.dtype, device=x.device, memory_format=_output_format(x, weight))
    conv_out = (_runtime.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
                if save_conv else x.new_empty(0))
    _kernels.depthwise_forward(
        x, _kernels.tap_major_weight(weight), tuple(weight.shape[2:]), _contiguous(bias), _contiguous(scale),
        _contiguous(shift), residual, activation, stride, padding, dilation, y=y,
        conv_out=conv_out if save_conv else None)
    return y, conv_out


def _backward(grad_y, x, weight, bias, scale, shift, residual, conv_out, stride, padding, dilation, activation,
              input_grad, weight_grad, bias_grad, scale_grad, shift_grad, residual_grad):
    n, channels, h, w = x.shape
    kernel = tuple(weight.shape[2:])
    fmt = _output_format(x, weight)
    output_shape = grad_y.shape
    bias, scale, shift = _contiguous(bias), _contiguous(scale), _contiguous(shift)
    conv_grads = input_grad or weight_grad
    sums = bias_grad or scale_grad or shift_grad
    grad_c, dr, sum_dz, sum_dzv = None, None, None, None
    if activation is None and scale is None:
        # dz = dy: the convolution's backward reads grad_y itself, whatever its strides
        grad_c = grad_y if conv_grads else None
        if sums or residual_grad:
            _, dr, sum_dz, _ = _epilogue.epilogue_backward(
                _rows(grad_y), None, bias, None, shift, None, None, grad_conv=False, grad_residual=residual_grad,
                sums=sums)
    elif conv_grads or sums or residual_grad:
        needs_c = _epilogue.needs_conv_output(activation, scale_grad)
        if needs_c and (conv_out is None or conv_out.numel() != grad_y.numel()):
            raise RuntimeError(f"{_NAME}: the backward needs the saved pre-epilogue output (save_conv=True)")
        dc, dr, sum_dz, sum_dzv = _epilogue.epilogue_backward(
            _rows(grad_y), _rows(conv_out) if needs_c else None, bias, scale, shift,
            _rows(residual) if residual is not None and activation is not None else None, activation,
            grad_conv=conv_grads, grad_residual=residual_grad, sums=sums)
        if conv_grads:
            # [N * H_out * W_out, C] contiguous: an NHWC view, read through its strides
            grad_c = dc.view(n, output_shape[2], output_shape[3], channels).permute(0, 3, 1, 2)
    grad_input = grad_weight = grad_bias = grad_scale = grad_shift = grad_residual = None
    if input_grad or weight_grad:
        weight_taps = _kernels.tap_major_weight(weight)
    if input_grad:
        grad_input = _runtime.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
        _kernels.depthwise_dgrad(grad_c, weight_taps, kernel, stride, padding, dilation, grad_x=grad_input)
    if weight_grad:
        taps = _kernels.depthwise_wgrad(grad_c, x, kernel, stride, padding, dilation)
        grad_weight = taps.t().contiguous().view(weight.shape).to(weight.dtype)
    if bias_grad:
        grad_bias = (sum_dz * scale.float() if scale is not None else sum_dz).to(bias.dtype)
    if scale_grad:
        grad_scale = sum_dzv.to(scale.dtype)
    if shift_grad:  # a tensor of its own: without a scale, grad_bias is sum_dz too
        grad_shift = sum_dz.to(shift.dtype, copy=True)
    if residual_grad:
        grad_residual = _from_rows(dr, output_shape, fmt)
    grads = (grad_input, grad_weight, grad_bias, grad_scale, grad_shift, grad_residual)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


def _padded_reference(x, weight, bias, scale, shift, residual, stride, padding, dilation, output_size, activation):
    """The reference on the resolved geometry: the input padded explicitly (top / left as
    given, bottom / right as the output size implies; negative crops), then no padding."""
    extents = [d * (k - 1) + 1 for d, k in zip(dilation, weight.shape[2:])]
    after = [(o - 1) * s + e - size - p for o, s, e, size, p in zip(output_size, stride, extents, x.shape[2:],
                                                                     padding)]
    padded = F.pad(x, (padding[1], after[1], padding[0], after[0]))
    return _reference.depthwise_conv2d(padded, weight, bias, stride, 0, dilation, scale=scale, shift=shift,
                                       residual=residual, activation=activation)


# --------------------------------------------------------------------------- registered ops


@torch.library.triton_op("fusednn::depthwise_conv2d_forward", mutates_args=())
def depthwise_conv2d_forward(
    input: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Optional[Tensor], shift: Optional[Tensor],
    residual: Optional[Tensor], stride: list[int], padding: list[int], dilation: list[int], output_size: list[int],
    activation: Optional[str], save_conv: bool,
) -> tuple[Tensor, Tensor]:
    """Depthwise conv2d with the fused epilogue.

    input: [N, C, H, W] float16/bfloat16/float32, any strides; weight: [C, 1, kh, kw] of
    input's dtype; bias, scale, shift: [C] any float dtype or None; residual: [N, C, H_out,
    W_out] of input's dtype or None. Returns y [N, C, H_out, W_out] (input's dtype, torch's
    memory format) and conv_out (the pre-epilogue output, channels_last, when save_conv;
    else ``[0]``).
    """
    return _forward(input, weight, bias, scale, shift, residual, stride, padding, dilation, output_size,
                    activation, save_conv)


@depthwise_conv2d_forward.register_fake
def _(input, weight, bias, scale, shift, residual, stride, padding, dilation, output_size, activation, save_conv):
    shape = (input.shape[0], input.shape[1], *output_size)
    y = _empty_like_format(input, shape, _output_format(input, weight))
    conv_out = _empty_like_format(input, shape, torch.channels_last) if save_conv else input.new_empty(0)
    return y, conv_out


@torch.library.triton_op("fusednn::depthwise_conv2d_backward", mutates_args=())
def depthwise_conv2d_backward(
    grad_y: Tensor, input: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Optional[Tensor],
    shift: Optional[Tensor], residual: Optional[Tensor], conv_out: Optional[Tensor], stride: list[int],
    padding: list[int], dilation: list[int], activation: Optional[str], input_grad: bool, weight_grad: bool,
    bias_grad: bool, scale_grad: bool, shift_grad: bool, residual_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of depthwise_conv2d_forward.

    grad_y: [N, C, H_out, W_out], any strides; conv_out: the forward's pre-epilogue output
    (needed with an activation or scale_grad). Returns (grad_input, grad_weight, grad_bias,
    grad_scale, grad_shift, grad_residual): grad_input and grad_residual in torch's memory
    format, parameter gradients contiguous in their parameters' dtypes (weight and
    per-channel sums reduced in float32); ``[0]`` where not asked for.
    """
    return _backward(grad_y, input, weight, bias, scale, shift, residual, conv_out, stride, padding, dilation,
                     activation, input_grad, weight_grad, bias_grad, scale_grad, shift_grad, residual_grad)


@depthwise_conv2d_backward.register_fake
def _(grad_y, input, weight, bias, scale, shift, residual, conv_out, stride, padding, dilation, activation,
      input_grad, weight_grad, bias_grad, scale_grad, shift_grad, residual_grad):
    fmt = _output_format(input, weight)
    return (
        _empty_like_format(input, input.shape, fmt) if input_grad else input.new_empty(0),
        weight.new_empty(weight.shape) if weight_grad else input.new_empty(0),
        bias.new_empty(bias.shape) if bias_grad else input.new_empty(0),
        scale.new_empty(scale.shape) if scale_grad else input.new_empty(0),
        shift.new_empty(shift.shape) if shift_grad else input.new_empty(0),
        _empty_like_format(grad_y, grad_y.shape, fmt) if residual_grad else input.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, scale, shift, residual, stride, padding, dilation, output_size, activation, save_conv = inputs
    _y, conv_out = output
    ctx.mark_non_differentiable(conv_out)
    ctx.save_for_backward(x, weight, bias, scale, shift, residual, conv_out if save_conv else None)
    ctx.geometry = (list(stride), list(padding), list(dilation), list(output_size))
    ctx.activation = activation


def _autograd(ctx, grad_y, _grad_conv_out):
    x, weight, bias, scale, shift, residual, conv_out = ctx.saved_tensors
    needs = ctx.needs_input_grad[:6]
    stride, padding, dilation, output_size = ctx.geometry
    none = (None,) * 6  # stride, padding, dilation, output_size, activation, save_conv
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient

        def recompute(x, weight, bias, scale, shift, residual):
            return _padded_reference(x, weight, bias, scale, shift, residual, stride, padding, dilation, output_size,
                                     ctx.activation)

        grads = registry.differentiable_backward(recompute, (x, weight, bias, scale, shift, residual), needs,
                                                 (grad_y,))
        return (*grads, *none)
    present = [t is not None for t in (x, weight, bias, scale, shift, residual)]
    flags = [need and given for need, given in zip(needs, present)]
    grads = torch.ops.fusednn.depthwise_conv2d_backward(grad_y, x, weight, bias, scale, shift, residual, conv_out,
                                                        stride, padding, dilation, ctx.activation, *flags)
    return (*(g if flag else None for g, flag in zip(grads, flags)), *none)


depthwise_conv2d_forward.register_autograd(_autograd, setup_context=_setup_context)


# --------------------------------------------------------------------------- validation


def _check(input, weight, bias, scale, shift, residual, stride, padding, dilation, activation):
    """Validates a call; returns (geometry, output shape, activation)."""
    args = Args(_NAME)
    args.tensor("input", input, "[N, C, H, W] or [C, H, W]", ndim=(3, 4))
    args.tensor("weight", weight, "[C, 1, kh, kw]", ndim=4, like=input, like_name="input")
    channels = input.shape[-3]
    if channels == 0:
        raise args.error("input", "of at least one channel", shape_of(input))
    filters, per_group, kh, kw = weight.shape
    expected = f"[C, 1, kh, kw] with C = {channels} (the input's channels) and kh, kw >= 1"
    if per_group != 1 or kh == 0 or kw == 0:
        raise args.error("weight", expected, shape_of(weight))
    if filters != channels:
        if filters % channels == 0:
            raise args.unsupported(
                f"a channel multiplier of {filters // channels} (weight {shape_of(weight)} for {channels} input "
                "channels) is not a depthwise convolution this op runs; use fusednn.ops.conv2d(input, weight, "
                f"groups={channels})")
        raise args.error("weight", expected, shape_of(weight))
    geometry = conv2d_geometry(args, tuple(input.shape[-2:]), (kh, kw), stride, padding, dilation)
    output_shape = (*input.shape[:-3], channels, *geometry.output)
    activation = check_epilogue(args, input, output_shape, bias, scale, shift, residual, activation)
    return geometry, output_shape, activation


# --------------------------------------------------------------------------- public function


def depthwise_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1,
                     *, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
                     residual: Optional[Tensor] = None, activation: Optional[str] = None) -> Tensor:
    """Depthwise 2-D convolution with a fused epilogue:
    ``act((conv2d(input, weight, groups=C) + bias) * scale + shift + residual)``.

    input: [N, C, H, W] or unbatched [C, H, W], float16/bfloat16/float32/float64, any strides
    (channels_last is the kernels' fast layout). weight: [C, 1, kh, kw] (torch's depthwise
    layout, channel multiplier 1), input's dtype and device. bias, scale, shift: [C], any
    float dtype, or None. residual: the output's shape and the input's dtype, or None.
    stride, dilation: an int or a pair (>= 1); padding: an int, a pair, "same" (stride 1) or
    "valid", as ``torch.nn.functional.conv2d``. activation: None, "relu", "gelu",
    "gelu_tanh" or "silu".

    Returns y [N, C, H_out, W_out] (or [C, H_out, W_out]) in the input's dtype; channels_last
    when the input or the weight is, as torch's. Accumulates in float32. The backward saves
    the input, the parameters, the residual and, with an activation or a scale that
    requires grad, the pre-epilogue output.
    """
    geometry, output_shape, activation = _check(input, weight, bias, scale, shift, residual, stride, padding,
                                                dilation, activation)
    if DEPTHWISE_CONV2D.select(input.device, input.dtype) == "reference":
        return _reference.depthwise_conv2d(input, weight, bias, stride, padding, dilation, scale=scale, shift=shift,
                                           residual=residual, activation=activation)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    # the kernels address within one image through int32 offsets
    span = sum(abs(st) * (size - 1) for st, size in zip(x.stride()[1:], x.shape[1:]))
    if max(span, _image_elements(output_shape)) >= 2**31:
        raise Args(_NAME).unsupported(
            f"an image (one batch entry of the input or the output) of 2^31 or more elements; got input of shape "
            f"{tuple(input.shape)} and strides {tuple(input.stride())}, output of shape {output_shape}")
    r = residual.unsqueeze(0) if unbatched and residual is not None else residual
    operands = (x, weight, bias, scale, shift, r)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands)
    save_conv = needs_grad and _epilogue.needs_conv_output(activation, scale is not None and scale.requires_grad)
    y, _conv_out = torch.ops.fusednn.depthwise_conv2d_forward(
        x, weight, bias, scale, shift, r, list(geometry.stride), list(geometry.padding), list(geometry.dilation),
        list(geometry.output), activation, save_conv)
    return y.squeeze(0) if unbatched else y


# --------------------------------------------------------------------------- registry

DEPTHWISE_CONV2D = registry.register(registry.OpInfo(
    name="depthwise_conv2d", family="convolution", function=depthwise_conv2d,
    reference=_reference.depthwise_conv2d,
    kernels=(registry.Kernel("triton", (torch.float32, torch.float16, torch.bfloat16),
                             compile_variants=_kernels.compile_variants),),
    samples=_cases.depthwise_conv2d_samples, bad_inputs=_cases.depthwise_conv2d_bad_inputs, outputs=("y",),
    double_backward=True, bench=_cases.BENCH_SHAPES,
))
