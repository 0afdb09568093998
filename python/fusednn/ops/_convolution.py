"""Argument handling shared by the 2-D convolution ops (conv2d, depthwise_conv2d): the
geometry of a call (stride, padding, dilation, output size) with torch's rules and
messages, and the checks of the fused epilogue's operands."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional

from torch import Tensor

from fusednn._validate import Args, shape_of
from fusednn.reference._activation import check_activation


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """One 2-D convolution call: (h, w) pairs; ``padding`` is the top / left padding (the
    bottom / right one is implied by the output size: "same" with an even kernel pads one
    more at the end, as torch does)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    output: tuple[int, int]


# torch's messages for the same mistakes
_TORCH_MESSAGES = {"stride": "non-positive stride is not supported",
                   "dilation": "dilation should be greater than zero",
                   "padding": "negative padding is not supported"}


def _pair(args: Args, name: str, value: Any, minimum: int) -> tuple[int, int]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or any(not isinstance(v, numbers.Integral) or isinstance(v, bool) for v in items):
        raise args.error(name, "an int or a pair of ints", repr(value), TypeError)
    if any(v < minimum for v in items):
        raise args.error(name, f"at least {minimum}", repr(value), torch_message=_TORCH_MESSAGES.get(name))
    return int(items[0]), int(items[1])


def conv2d_geometry(args: Args, input_hw: tuple[int, int], kernel: tuple[int, int], stride, padding,
                    dilation) -> ConvGeometry:
    """Validates stride (>= 1), dilation (>= 1) and padding (an int or a pair >= 0, or
    "same" / "valid") and computes the output size; raises torch's errors where torch does."""
    stride = _pair(args, "stride", stride, 1)
    dilation = _pair(args, "dilation", dilation, 1)
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise args.error("padding", "an int or a pair with a stride other than 1", "'same'",
                                 torch_message="padding='same' is not supported for strided convolutions")
            # torch puts the larger half of an odd total at the end
            pad = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
        else:
            raise args.error("padding", "an int, a pair of ints, 'same' or 'valid'", repr(padding))
    else:
        pad = _pair(args, "padding", padding, 0)
    if padding == "same":
        output = tuple(input_hw)
    else:
        padded = [size + 2 * p for size, p in zip(input_hw, pad)]
        extent = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
        if any(e > p for e, p in zip(extent, padded)):
            raise args.error(
                "input", f"at least the dilated kernel's size ({extent[0]} x {extent[1]}) once padded",
                f"a padded size of ({padded[0]} x {padded[1]})",
                torch_message=f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). "
                              f"Kernel size: ({extent[0]} x {extent[1]}). Kernel size can't be greater than "
                              "actual input size")
        output = tuple((p - e) // s + 1 for p, e, s in zip(padded, extent, stride))
    return ConvGeometry(tuple(kernel), stride, pad, dilation, output)


def check_epilogue(args: Args, input: Tensor, output_shape: tuple[int, ...], bias: Optional[Tensor],
                   scale: Optional[Tensor], shift: Optional[Tensor], residual: Optional[Tensor],
                   activation: Any) -> Optional[str]:
    """Checks the epilogue's operands against the output [N, C_out, H_out, W_out] (or
    unbatched [C_out, H_out, W_out]): bias / scale / shift [C_out] float tensors on the
    input's device (any float dtype), residual of the output's shape and the input's dtype;
    returns the validated activation."""
    channels = output_shape[-3]
    for name, value in (("bias", bias), ("scale", scale), ("shift", shift)):
        t = args.tensor(name, value, "[C_out]", ndim=1, like=input, like_name="input", same_dtype=False,
                        optional=True)
        if t is not None and t.shape[0] != channels:
            raise args.error(name, f"[C_out] = [{channels}]", shape_of(t))
    t = args.tensor("residual", residual, "of the output's shape", like=input, like_name="input", optional=True)
    if t is not None and tuple(t.shape) != tuple(output_shape):
        raise args.error("residual", f"of the output's shape {list(output_shape)}", shape_of(t))
    return check_activation(args, activation)
