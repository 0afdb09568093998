"""The fused epilogue of the convolution kernels, shared by conv2d and depthwise conv2d:

    y = act((c + bias) * scale + shift + residual)

where c is the convolution's fp32 accumulator tile, bias, scale and shift are per output
channel ([N], any float dtype; each optional) and residual has the output's shape. ``apply``
runs inside a convolution kernel on a [BLOCK_M, BLOCK_N] tile whose columns are output
channels. ``epilogue_backward`` is the backward of the epilogue alone, over the [M, N]
channels-last matrix (M = batch x output pixels, N = channels): with v = c + bias,
u = v * scale + shift + residual and dz = dy * act'(u),

    grad_c = dz * scale,  grad_residual = dz,  grad_shift = sum_m dz,
    grad_bias = scale * sum_m dz,  grad_scale = sum_m dz * v.

It needs the pre-epilogue output c only where it matters: an activation other than None
(act' is taken at u) or a scale gradient. Without both, dz = dy and the convolution's own
backward can read dy directly.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import CompileVariant, triton_type
from ._activation import ACTIVATION_CODES, activate, activation_derivative
from ._rows import row_programs


@triton.jit
def apply(acc, cols, col_mask, Bias, Scale, Shift, residual, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
          HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr):
    """act((acc + bias) * scale + shift + residual) on a [BLOCK_M, BLOCK_N] fp32 tile whose
    columns are the output channels ``cols``; ``residual`` is the caller's fp32 tile of the
    residual (anything when not HAS_RESIDUAL)."""
    if HAS_BIAS:
        acc = acc + tl.load(Bias + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        acc = acc * tl.load(Scale + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SHIFT:
        acc = acc + tl.load(Shift + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        acc = acc + residual
    return activate(acc, ACT)


@triton.jit
def _epilogue_backward_kernel(
    DY, C, R,  # [M, N] strided: output gradient, pre-epilogue output (if NEEDS_C), residual (if HAS_RESIDUAL)
    Bias, Scale, Shift,  # [N] (each used only if given)
    DC, DR,  # [M, N] contiguous: grad of c (if WRITE_DC), grad of the residual (if WRITE_DR)
    SumDZ, SumDZV,  # [programs, N] fp32 partial column sums of dz and dz * v (if SUMS)
    M, N, rows_per_program,
    stride_dy_m, stride_dy_n, stride_c_m, stride_c_n, stride_r_m, stride_r_n,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    NEEDS_C: tl.constexpr, ACT: tl.constexpr, WRITE_DC: tl.constexpr, WRITE_DR: tl.constexpr,
    SUMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Program (p, j) takes rows [p * rows_per_program, (p + 1) * rows_per_program) of column
    # block j, and writes its column sums into row p of the partial sums.
    program = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if HAS_SCALE:
        scale = tl.load(Scale + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    else:
        scale = 1.0
    sum_dz = tl.zeros([BLOCK_N], dtype=tl.float32)
    sum_dzv = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = program.to(tl.int64) * rows_per_program
    for start in range(0, rows_per_program, BLOCK_M):
        rows = first + start + tl.arange(0, BLOCK_M)
        mask = ((rows < M) & (rows < first + rows_per_program))[:, None] & col_mask[None, :]
        dz = tl.load(DY + rows[:, None] * stride_dy_m + cols[None, :] * stride_dy_n, mask=mask, other=0.0)
        dz = dz.to(tl.float32)
        if NEEDS_C:
            v = tl.load(C + rows[:, None] * stride_c_m + cols[None, :] * stride_c_n, mask=mask, other=0.0)
            v = v.to(tl.float32)
            if HAS_BIAS:
                v = v + tl.load(Bias + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            if ACT != 0:
                u = v * scale
                if HAS_SHIFT:
                    u = u + tl.load(Shift + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                if HAS_RESIDUAL:
                    r = tl.load(R + rows[:, None] * stride_r_m + cols[None, :] * stride_r_n, mask=mask, other=0.0)
                    u = u + r.to(tl.float32)
                dz = dz * activation_derivative(u, ACT)
            dz = tl.where(mask, dz, 0.0)
            sum_dzv += tl.sum(dz * v, axis=0)
        sum_dz += tl.sum(dz, axis=0)
        offsets = rows[:, None] * N + cols[None, :]
        if WRITE_DC:
            tl.store(DC + offsets, (dz * scale).to(DC.dtype.element_ty), mask=mask)
        if WRITE_DR:
            tl.store(DR + offsets, dz.to(DR.dtype.element_ty), mask=mask)
    if SUMS:
        tl.store(SumDZ + program * N + cols, sum_dz, mask=col_mask)
        if NEEDS_C:
            tl.store(SumDZV + program * N + cols, sum_dzv, mask=col_mask)


_BLOCK_M = 32
_BLOCK_N = 64
_WARPS = 4


def needs_conv_output(activation: Optional[str], scale_grad: bool) -> bool:
    """Whether the backward needs the pre-epilogue output c (so the forward must save it)."""
    return activation is not None or scale_grad


def epilogue_backward(grad_y: torch.Tensor, conv_out: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                      scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], activation: Optional[str], *, grad_conv: bool,
                      grad_residual: bool, sums: bool):
    """The epilogue's backward over [M, N] channels-last matrices (any strides).

    ``conv_out`` (c) is required when ``needs_conv_output(activation, sums and scale is
    not None)``; ``residual`` is read only with an activation. Returns ``(grad_c,
    grad_residual, sum_dz, sum_dz_v)``: grad_c and grad_residual [M, N] contiguous in
    grad_y's dtype (None unless asked for), and the fp32 column sums [N] of dz and of
    dz * (c + bias) (None unless ``sums``; the second also None without c), from which
    the op forms the gradients of bias, scale and shift.
    """
    m, n = grad_y.shape
    needs_c = conv_out is not None
    if activation is not None and not needs_c:
        raise ValueError("epilogue_backward: an activation needs conv_out")
    device = grad_y.device
    programs = row_programs(device, m, _WARPS) if m else 1
    rows_per_program = triton.cdiv(max(m, 1), programs)
    # rows_per_program a multiple of BLOCK_M keeps every program's row blocks aligned
    rows_per_program = triton.cdiv(rows_per_program, _BLOCK_M) * _BLOCK_M
    programs = triton.cdiv(max(m, 1), rows_per_program)
    dc = torch.empty((m, n), dtype=grad_y.dtype, device=device) if grad_conv else None
    dr = torch.empty((m, n), dtype=grad_y.dtype, device=device) if grad_residual else None
    sum_dz = torch.empty((programs, n), dtype=torch.float32, device=device) if sums else None
    sum_dzv = torch.empty((programs, n), dtype=torch.float32, device=device) if sums and needs_c else None
    if m and n:
        dummy = grad_y
        c = conv_out if needs_c else dummy
        r = residual if residual is not None else dummy
        torch.library.wrap_triton(_epilogue_backward_kernel)[(programs, triton.cdiv(n, _BLOCK_N))](
            grad_y, c, r,
            bias if bias is not None else dummy, scale if scale is not None else dummy,
            shift if shift is not None else dummy,
            dc if dc is not None else dummy, dr if dr is not None else dummy,
            sum_dz if sum_dz is not None else dummy, sum_dzv if sum_dzv is not None else dummy,
            m, n, rows_per_program,
            grad_y.stride(0), grad_y.stride(1), c.stride(0), c.stride(1), r.stride(0), r.stride(1),
            HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
            HAS_RESIDUAL=residual is not None, NEEDS_C=needs_c, ACT=ACTIVATION_CODES[activation],
            WRITE_DC=grad_conv, WRITE_DR=grad_residual, SUMS=sums, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N,
            num_warps=_WARPS,
        )
    elif sums:
        sum_dz.zero_()
        if sum_dzv is not None:
            sum_dzv.zero_()
    return (dc, dr, sum_dz.sum(0) if sums else None, sum_dzv.sum(0) if sum_dzv is not None else None)


def compile_variants(dtype: torch.dtype, activation: str = "silu") -> list[CompileVariant]:
    """The epilogue backward at its heaviest (bias, scale, shift, residual, an activation,
    every output) in ``dtype`` with float32 parameters, for sm_90a and sm_80; an op whose
    kernels fuse the epilogue lists it among its own variants."""
    t = "*" + triton_type(dtype)
    fp32 = "*fp32"
    return [CompileVariant(
        name=f"conv epilogue backward {triton_type(dtype)} {activation}",
        kernel=_epilogue_backward_kernel.__name__,
        types=dict(DY=t, C=t, R=t, Bias=fp32, Scale=fp32, Shift=fp32, DC=t, DR=t, SumDZ=fp32, SumDZV=fp32),
        constexprs=dict(HAS_BIAS=True, HAS_SCALE=True, HAS_SHIFT=True, HAS_RESIDUAL=True, NEEDS_C=True,
                        ACT=ACTIVATION_CODES[activation], WRITE_DC=True, WRITE_DR=True, SUMS=True,
                        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N),
        num_warps=_WARPS, num_stages=3, archs=(90, 80), module=__name__,
    )]
