"""Triton kernels of conv2d: implicit GEMMs over NHWC addressing, with the fused epilogue
``act((c + bias) * scale + shift + residual)`` (``_epilogue``) in the forward.

No im2col buffer: every kernel computes the addresses of its operand tiles from the
convolution's geometry and reads the tensors through their four strides, so any memory
format works. Channels are the innermost K (or N) dimension of every tile: with a
channels_last tensor (channel stride 1) a tile row is a contiguous vector of channels,
which loads vectorized and pipelined (cp.async); an NCHW tensor would be a gather of
elements H * W apart, so the op hands the main loops channels_last operands (see
``fusednn.ops.conv2d``). Padding, stride and dilation are index arithmetic and load masks;
out-of-image taps read zeros. When a group has few channels (the 3-channel stem), the
(tap, channel) dimension is walked flat (``PACKED``): a block spans several taps instead
of padding each tap's channels to a block.

Forward (``_conv2d_forward_kernel``), per group g (grid axis 1):

    y[p, co] = epilogue(sum_{kh, kw, ci} x[n, ih, iw, ci] * w[co, ci, kh, kw]),

a GEMM with M = N * H_out * W_out output pixels p = (n, oh, ow), N = C_out / groups output
channels, K = kh * kw * C_in / groups, walked as (kh, kw, channel block) in one flat loop
(one loop, so Triton pipelines its loads over taps and channel blocks alike), with
ih = oh * stride - pad + kh * dilation. fp32 accumulation by ``tl.dot`` (tensor cores for
fp16 / bf16; fp32 operands use ``input_precision="ieee"``, exact fp32 products, no tf32).
The epilogue runs on the accumulator tile and the result is stored through the output's
strides; the pre-epilogue c is stored as a second output [M, C_out] when the backward needs
it (``SAVE_C``).

Input gradient (``_conv2d_input_grad_kernel``, "dgrad"): the transposed implicit GEMM

    dx[n, ih, iw, ci] = sum_{kh, kw, co} dc[n, oh, ow, co] * w[co, ci, kh, kw]
    where oh = (ih + pad - kh * dilation) / stride is an integer in [0, H_out),

M = N * H * W input pixels, N = C_in / groups, K = kh * kw * C_out / groups. With stride s,
an input row ih is reached only by the taps kh with (ih + pad - kh * dilation) divisible by
s, and which taps those are depends only on ih mod s: the input pixels are split into
s_h * s_w phases (grid axis 2) and a program walks only its phase's taps (an arithmetic
progression of kh and of kw), so a strided convolution wastes no MMA on taps that miss.

Weight gradient (``_conv2d_weight_grad_kernel``, "wgrad"): a GEMM with M = C_out / groups,
N = (kh, kw, C_in / groups) (a tile holds one tap's channel block, or several taps of few
channels), K = the N * H_out * W_out output pixels, reduced in fp32. When the pixels are
many and the tiles few, the reduction is split over pixel ranges (grid axis 2): each split
writes an fp32 partial, and the launcher sums them.

The epilogue's own backward (grad of c, of the residual, column sums for bias, scale and
shift) is ``_epilogue.epilogue_backward``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import triton
import triton.language as tl

from fusednn import _runtime
from fusednn.kernels import SM80, SM90, CompileVariant, triton_type
from fusednn.kernels import _epilogue
from fusednn.kernels._activation import ACTIVATION_CODES

# Output tiles per group: L2 reuse of the weight tile among neighbouring programs (the
# usual grouped ordering of a GEMM's tiles).
GROUP_M = 8


@triton.jit
def _tile_order(pid, num_pid_m, num_pid_n, GROUP: tl.constexpr):
    """(pid_m, pid_n) of program ``pid`` with groups of GROUP row blocks visited together
    (neighbouring programs share weight tiles in L2)."""
    in_group = GROUP * num_pid_n
    first_m = (pid // in_group) * GROUP
    group_size = tl.minimum(num_pid_m - first_m, GROUP)
    pid_m = first_m + (pid % in_group) % group_size
    pid_n = (pid % in_group) // group_size
    # int64 from here: Triton's interpreter checks every int32 add and multiply for overflow
    # (the bulk of its time on these kernels); on the GPU the values that stay live through
    # the main loop are cast back to int32
    return pid_m.to(tl.int64), pid_n.to(tl.int64)


@triton.jit
def _conv2d_forward_kernel(
    X, Wt, Y, C,  # input, weight, output (strided); C: pre-epilogue output [M, C_OUT] (if SAVE_C)
    Bias, Scale, Shift, R,  # [C_OUT] each, R: residual of the output's shape (each used only if given)
    H, W, H_OUT, W_OUT, M, C_IN_G, C_OUT_G, C_OUT, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sx_n, sx_c, sx_h, sx_w,
    sw_o, sw_i, sw_h, sw_w,
    sy_n, sy_c, sy_h, sy_w,
    sr_n, sr_c, sr_h, sr_w,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    ACT: tl.constexpr, SAVE_C: tl.constexpr, PACKED: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
):
    g = tl.program_id(1)
    pid_m, pid_n = _tile_order(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(C_OUT_G, BLOCK_N), GROUP)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    n = rows // (H_OUT * W_OUT)
    pixel = rows - n * (H_OUT * W_OUT)
    oh = pixel // W_OUT
    ow = pixel - oh * W_OUT
    # tap (0, 0) of each output pixel; tap (kh, kw) is kh * dil_h rows and kw * dil_w columns on
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_rows = X + n * sx_n + (g * C_IN_G) * sx_c + ih0 * sx_h + iw0 * sx_w
    ih0 = ih0.to(tl.int32)[:, None]
    iw0 = iw0.to(tl.int32)[:, None]
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels within the group
    col_mask = cols < C_OUT_G
    out_channels = g * C_OUT_G + cols
    w_cols = Wt + out_channels * sw_o
    ks = tl.arange(0, BLOCK_K)
    channel_blocks = tl.cdiv(C_IN_G, BLOCK_K).to(tl.int64)  # int64 loop scalars (see _tile_order)
    if PACKED:  # K = (tap, channel) flat: a block spans several taps of few channels
        k_blocks = tl.cdiv(KH * KW * C_IN_G, BLOCK_K).to(tl.int64)
    else:  # a block holds channels of one tap
        k_blocks = KH * KW * channel_blocks
    one_tap = tl.zeros([1], dtype=tl.int64)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, k_blocks):
        # the block's taps and channels: [BLOCK_K] vectors, or [1] taps of a whole block
        if PACKED:
            kk = k * BLOCK_K + ks
            tap = kk // C_IN_G
            channel = kk - tap * C_IN_G
            k_mask = tap < KH * KW
        else:
            tap = one_tap + k // channel_blocks
            channel = (k - tap * channel_blocks) * BLOCK_K + ks
            k_mask = channel < C_IN_G
        kh = tap // KW
        kw = tap - kh * KW
        dh = (kh * dil_h)[None, :]
        dw = (kw * dil_w)[None, :]
        inside = (ih0 >= -dh) & (ih0 < H - dh) & (iw0 >= -dw) & (iw0 < W - dw)
        a = tl.load(x_rows[:, None] + (kh * dil_h * sx_h + kw * dil_w * sx_w + channel * sx_c)[None, :],
                    mask=row_mask[:, None] & inside & k_mask[None, :], other=0.0)
        b = tl.load(w_cols[None, :] + (kh * sw_h + kw * sw_w + channel * sw_i)[:, None],
                    mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    mask = row_mask[:, None] & col_mask[None, :]
    if SAVE_C:
        tl.store(C + rows[:, None] * C_OUT + out_channels[None, :], acc.to(C.dtype.element_ty), mask=mask)
    if HAS_RESIDUAL:
        residual = tl.load(R + (n * sr_n + oh * sr_h + ow * sr_w)[:, None] + out_channels[None, :] * sr_c,
                           mask=mask, other=0.0).to(tl.float32)
    else:
        residual = 0.0
    y = _epilogue.apply(acc, out_channels, col_mask, Bias, Scale, Shift, residual, HAS_BIAS, HAS_SCALE, HAS_SHIFT,
                        HAS_RESIDUAL, ACT)
    tl.store(Y + (n * sy_n + oh * sy_h + ow * sy_w)[:, None] + out_channels[None, :] * sy_c,
             y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _first_tap(phase, pad, stride_gcd, inverse, step, taps):
    """The first kernel tap t (in [0, step)) with (phase + pad - t * dil) divisible by the
    stride, or ``taps`` (past the last one) when no tap reaches this phase. With
    g = gcd(stride, dil): t * (dil / g) = (phase + pad) / g (mod step = stride / g), solvable
    iff g divides phase + pad, by ``inverse`` = (dil / g)^-1 mod step (from the host)."""
    reach = phase + pad
    return tl.where(reach % stride_gcd == 0, (reach // stride_gcd * inverse) % step, taps)


@triton.jit
def _conv2d_input_grad_kernel(
    DC, Wt, DX,  # gradient of the conv output c (strided), weight (strided), input gradient (strided)
    H, W, H_OUT, W_OUT, N_BATCH, C_IN_G, C_OUT_G, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, gcd_h, gcd_w, inverse_h, inverse_w,
    sd_n, sd_c, sd_h, sd_w,
    sw_o, sw_i, sw_h, sw_w,
    sx_n, sx_c, sx_h, sx_w,
    PACKED: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
):
    g = tl.program_id(1).to(tl.int64)
    phase = tl.program_id(2).to(tl.int64)
    phase_h = phase // stride_w
    phase_w = phase - phase_h * stride_w
    # This phase's input pixels: ih = phase_h + i * stride_h, iw = phase_w + j * stride_w.
    rows_h = tl.cdiv(H - phase_h, stride_h)
    rows_w = tl.cdiv(W - phase_w, stride_w)
    m_phase = N_BATCH * rows_h * rows_w
    # The grid covers the largest phase, (0, 0); rows past this phase's size store nothing.
    m_grid = N_BATCH * tl.cdiv(H, stride_h) * tl.cdiv(W, stride_w)
    pid_m, pid_n = _tile_order(tl.program_id(0), tl.cdiv(m_grid, BLOCK_M), tl.cdiv(C_IN_G, BLOCK_N), GROUP)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < m_phase
    per_image = tl.maximum(rows_h * rows_w, 1)
    n = rows // per_image
    pixel = rows - n * per_image
    i = pixel // tl.maximum(rows_w, 1)
    j = pixel - i * rows_w
    dc_rows = DC + n * sd_n + (g * C_OUT_G) * sd_c + i * sd_h + j * sd_w
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels within the group
    col_mask = cols < C_IN_G
    w_cols = Wt + (g * C_OUT_G) * sw_o + cols * sw_i
    ks = tl.arange(0, BLOCK_K)

    # The taps that reach this phase: kh = first_h + a * step_h (a < taps_h), likewise kw.
    # Tap kh reads output row oh = i + q_h with q_h = (phase_h + pad_h - kh * dil_h) / stride_h,
    # an exact division.
    step_h = stride_h // gcd_h
    step_w = stride_w // gcd_w
    first_h = _first_tap(phase_h, pad_h, gcd_h, inverse_h, step_h, KH)
    first_w = _first_tap(phase_w, pad_w, gcd_w, inverse_w, step_w, KW)
    taps_h = tl.cdiv(tl.maximum(KH - first_h, 0), step_h)
    taps_w = tl.cdiv(tl.maximum(KW - first_w, 0), step_w)
    channel_blocks = tl.cdiv(C_OUT_G, BLOCK_K)
    if PACKED:  # K = (tap, channel) flat, as in the forward
        k_blocks = tl.cdiv(taps_h * taps_w * C_OUT_G, BLOCK_K).to(tl.int64)
    else:
        k_blocks = taps_h * taps_w * channel_blocks
    one_tap = tl.zeros([1], dtype=tl.int64)
    x_rows = DX + n * sx_n + (phase_h + i * stride_h) * sx_h + (phase_w + j * stride_w) * sx_w
    i = i.to(tl.int32)[:, None]
    j = j.to(tl.int32)[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, k_blocks):
        if PACKED:
            kk = k * BLOCK_K + ks
            tap = kk // C_OUT_G
            channel = kk - tap * C_OUT_G
            k_mask = tap < taps_h * taps_w
        else:
            tap = one_tap + k // channel_blocks
            channel = (k - tap * channel_blocks) * BLOCK_K + ks
            k_mask = channel < C_OUT_G
        a_h = tap // taps_w
        kh = first_h + a_h * step_h
        kw = first_w + (tap - a_h * taps_w) * step_w
        q_h = (phase_h + pad_h - kh * dil_h) // stride_h
        q_w = (phase_w + pad_w - kw * dil_w) // stride_w
        inside = ((i >= -q_h[None, :]) & (i < H_OUT - q_h[None, :]) & (j >= -q_w[None, :])
                  & (j < W_OUT - q_w[None, :]))
        a = tl.load(dc_rows[:, None] + (q_h * sd_h + q_w * sd_w + channel * sd_c)[None, :],
                    mask=row_mask[:, None] & inside & k_mask[None, :], other=0.0)
        b = tl.load(w_cols[None, :] + (kh * sw_h + kw * sw_w + channel * sw_o)[:, None],
                    mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    mask = row_mask[:, None] & col_mask[None, :]
    tl.store(x_rows[:, None] + ((g * C_IN_G + cols) * sx_c)[None, :], acc.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _conv2d_weight_grad_kernel(
    DC, X, DW,  # gradient of c (strided), input (strided), fp32 partials [splits, C_out, C_in_g, KH, KW] (strided)
    H, W, H_OUT, W_OUT, P, C_IN_G, C_OUT_G, KH, KW, pixels_per_split,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sd_n, sd_c, sd_h, sd_w,
    sx_n, sx_c, sx_h, sx_w,
    sp_s, sp_o, sp_i, sp_h, sp_w,
    PACKED: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    g = tl.program_id(1).to(tl.int64)  # int64 outside the pixel loop (see _tile_order)
    split = tl.program_id(2)
    num_pid_m = tl.cdiv(C_OUT_G, BLOCK_M)
    pid = tl.program_id(0).to(tl.int64)
    pid_m = pid % num_pid_m  # neighbouring programs share their input tiles
    pid_n = pid // num_pid_m
    outs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channels within the group
    out_mask = outs < C_OUT_G
    # the tile's columns: (tap, input channel) flat, or input channels of one tap
    if PACKED:
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        tap = cols // C_IN_G
        ins = cols - tap * C_IN_G
        in_mask = tap < KH * KW
    else:
        channel_blocks = tl.cdiv(C_IN_G, BLOCK_N)
        tap = tl.zeros([1], dtype=tl.int64) + pid_n // channel_blocks
        ins = (pid_n - tap * channel_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        in_mask = ins < C_IN_G
    kh = tap // KW
    kw = tap - kh * KW
    dc_cols = DC + (g * C_OUT_G + outs) * sd_c
    # the input pixel of tap (kh, kw) for output pixel (oh, ow) is (oh * stride_h + dh, ow * stride_w + dw)
    dh = kh * dil_h - pad_h
    dw = kw * dil_w - pad_w
    x_cols = X + (g * C_IN_G + ins) * sx_c + dh * sx_h + dw * sx_w
    dh = dh[None, :]
    dw = dw[None, :]
    ps = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    first = split * pixels_per_split
    last = tl.minimum(first + pixels_per_split, P)
    for p0 in range(first, last, BLOCK_K):
        pixels = p0 + ps
        pixel_mask = pixels < last
        n = pixels // (H_OUT * W_OUT)
        pixel = pixels - n * (H_OUT * W_OUT)
        oh = pixel // W_OUT
        ow = pixel - oh * W_OUT
        ih = (oh * stride_h)[:, None]
        iw = (ow * stride_w)[:, None]
        inside = (ih >= -dh) & (ih < H - dh) & (iw >= -dw) & (iw < W - dw)
        n64 = n.to(tl.int64)
        a = tl.load(dc_cols[:, None] + (n64 * sd_n + oh * sd_h + ow * sd_w)[None, :],
                    mask=out_mask[:, None] & pixel_mask[None, :], other=0.0)
        b = tl.load(x_cols[None, :] + (n64 * sx_n + oh * stride_h * sx_h + ow * stride_w * sx_w)[:, None],
                    mask=pixel_mask[:, None] & inside & in_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    tl.store(DW + split.to(tl.int64) * sp_s + ((g * C_OUT_G + outs) * sp_o)[:, None]
             + (ins * sp_i + kh * sp_h + kw * sp_w)[None, :], acc, mask=out_mask[:, None] & in_mask[None, :])


# --------------------------------------------------------------------------- tile configurations


@dataclasses.dataclass(frozen=True)
class Tiles:
    """The launch configuration of one implicit GEMM. ``packed``: the dimension walked over
    (tap, channel) holds few channels per tap, so a block spans several taps instead of
    leaving most of each tap's block empty (the 3-channel stem)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    packed: bool


# The interpreter's cost is per operation (and per program), not per element: pixels come
# 128 at a time, so that tiny images take a program or two, and channels in the narrowest
# blocks tl.dot takes (16), so that a sample's channels span several blocks where it matters.
_INTERPRETER_PIXELS, _INTERPRETER_CHANNELS = 128, 16


def _interpreted(interpreter: bool | None) -> bool:
    return _runtime.interpreter_enabled() if interpreter is None else interpreter


def _channel_block(channels: int, widest: int) -> int:
    """A tile's channel width: the narrowest power of two >= 16 that holds ``channels``, at
    most ``widest``."""
    return max(16, min(widest, triton.next_power_of_2(max(channels, 1))))


def _packed(channels: int, block: int) -> bool:
    """Taps share a block when a tap's channels would fill at most half of it."""
    return 2 * channels <= block


def _warps(block_m: int, block_n: int) -> int:
    """8 warps from 64 x 128 tiles up: at most 32 accumulators a thread, which leaves the
    epilogue (residual tile, two stores) and the masked loads room without spills."""
    return 8 if block_m * block_n >= 64 * 128 else 4


def _stages(block_m: int, block_n: int, block_k: int) -> int:
    """4 stages while they take at most 96 KB of shared memory (16-bit operands), else 3."""
    return 4 if 4 * (block_m + block_n) * block_k * 2 <= 96 * 1024 else 3


def gemm_tiles(rows: int, columns: int, channels: int, taps: int, dtype: torch.dtype, *,
               interpreter: bool | None = None) -> Tiles:
    """Tiles of the forward and the input gradient: ``rows`` pixels, ``columns`` channels per
    group, K = ``taps`` x ``channels``. From a small fixed table: 128 x 128 tiles with
    64-wide channel blocks for large 16-bit problems (8 warps, 3 stages: 96 KB of shared
    memory), 64-row tiles for small ones, narrower blocks where a group has few channels,
    32-wide blocks over (tap, channel) when the channels are few; fp32 (exact fp32 products,
    no tensor cores) takes 64 x 64 x 32 tiles, whose operands fit the registers.
    ``interpreter``: Triton's interpreter's tiles (default: when it is on)."""
    if _interpreted(interpreter):
        block_k = _channel_block(channels, _INTERPRETER_CHANNELS)
        return Tiles(_INTERPRETER_PIXELS, _channel_block(columns, _INTERPRETER_CHANNELS), block_k, 4, 1,
                     _packed(channels, block_k))
    fp32 = dtype == torch.float32
    block_n = _channel_block(columns, 64 if fp32 else 128)
    block_k = _channel_block(channels, 32 if fp32 else 64)
    packed = _packed(channels, block_k)
    if packed:
        block_k = _channel_block(taps * channels, 32)
    if fp32:
        return Tiles(64, block_n, block_k, 4, 3, packed)
    block_m = 128 if rows >= 8192 else 64
    return Tiles(block_m, block_n, block_k, _warps(block_m, block_n), _stages(block_m, block_n, block_k), packed)


def weight_grad_tiles(out_channels: int, in_channels: int, taps: int, dtype: torch.dtype, *,
                      interpreter: bool | None = None) -> Tiles:
    """Tiles of the weight gradient: rows = output channels per group, columns = (tap, input
    channel), K = pixels (a long reduction: the widest block)."""
    if _interpreted(interpreter):
        block_n = _channel_block(in_channels, _INTERPRETER_CHANNELS)
        return Tiles(_channel_block(out_channels, _INTERPRETER_CHANNELS), block_n, _INTERPRETER_PIXELS, 4, 1,
                     _packed(in_channels, block_n))
    fp32 = dtype == torch.float32
    block_m = _channel_block(out_channels, 64 if fp32 else 128)
    block_n = _channel_block(in_channels, 64 if fp32 else 128)
    packed = _packed(in_channels, block_n)
    if packed:
        block_n = _channel_block(taps * in_channels, 64)
    block_k = 32 if fp32 else 64
    return Tiles(block_m, block_n, block_k, _warps(block_m, block_n), 3 if fp32 else _stages(block_m, block_n, block_k),
                 packed)


def input_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: "ieee" (exact fp32 products) for fp32 operands, which would
    otherwise be rounded to tf32; fp16 / bf16 products are exact either way ("tf32", the
    default, applies to fp32 operands only)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _blocks(channels: int, taps: int, block: int, packed: bool) -> int:
    """Blocks along a (tap, channel) dimension."""
    return triton.cdiv(taps * channels, block) if packed else taps * triton.cdiv(channels, block)


# --------------------------------------------------------------------------- launchers


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())


def conv2d_forward(x: torch.Tensor, weight: torch.Tensor, bias, scale, shift, residual, stride, padding, dilation,
                   groups: int, activation, *, y: torch.Tensor, conv_out) -> None:
    """Writes y [N, C_out, H_out, W_out] (any strides) and, when ``conv_out`` is given, the
    pre-epilogue output into it ([N * H_out * W_out, C_out] contiguous). x [N, C_in, H, W] and
    weight [C_out, C_in / groups, kh, kw] of any strides (a channels_last weight reads its
    channels contiguously); bias / scale / shift [C_out] contiguous or None; residual of y's
    shape (any strides) or None."""
    batch, _, h, w = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    _, _, h_out, w_out = y.shape
    m = batch * h_out * w_out
    c_out_g = c_out // groups
    if m == 0 or c_out_g == 0:
        return
    tiles = gemm_tiles(m, c_out_g, c_in_g, kh * kw, x.dtype)
    grid = (triton.cdiv(m, tiles.block_m) * triton.cdiv(c_out_g, tiles.block_n), groups)
    r = residual if residual is not None else y
    torch.library.wrap_triton(_conv2d_forward_kernel)[grid](
        x, weight, y, conv_out if conv_out is not None else y,
        bias if bias is not None else y, scale if scale is not None else y, shift if shift is not None else y, r,
        h, w, h_out, w_out, m, c_in_g, c_out_g, c_out, kh, kw,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *_strides(x), *_strides(weight), *_strides(y), *_strides(r),
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_RESIDUAL=residual is not None, ACT=ACTIVATION_CODES[activation], SAVE_C=conv_out is not None,
        PACKED=tiles.packed, INPUT_PRECISION=input_precision(x.dtype), BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, GROUP=GROUP_M, num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )


def conv2d_input_grad(grad_c: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int, *,
                      grad_x: torch.Tensor) -> None:
    """Writes grad_x [N, C_in, H, W] (any strides) from grad_c [N, C_out, H_out, W_out] (any
    strides): the transposed convolution, the input pixels split by phase of the stride."""
    batch, _, h, w = grad_x.shape
    c_out, c_in_g, kh, kw = weight.shape
    _, _, h_out, w_out = grad_c.shape
    c_out_g = c_out // groups
    if grad_x.numel() == 0:
        return
    stride_h, stride_w = stride
    # taps kh and kh + step land on the same phase: step = stride / gcd(stride, dilation)
    gcd_h, gcd_w = math.gcd(stride_h, dilation[0]), math.gcd(stride_w, dilation[1])
    step_h, step_w = stride_h // gcd_h, stride_w // gcd_w
    inverse_h, inverse_w = pow(dilation[0] // gcd_h, -1, step_h), pow(dilation[1] // gcd_w, -1, step_w)
    m_grid = batch * triton.cdiv(h, stride_h) * triton.cdiv(w, stride_w)
    taps = triton.cdiv(kh, step_h) * triton.cdiv(kw, step_w)  # the most taps a phase takes
    tiles = gemm_tiles(m_grid, c_in_g, c_out_g, taps, grad_x.dtype)
    grid = (triton.cdiv(m_grid, tiles.block_m) * triton.cdiv(c_in_g, tiles.block_n), groups, stride_h * stride_w)
    torch.library.wrap_triton(_conv2d_input_grad_kernel)[grid](
        grad_c, weight, grad_x,
        h, w, h_out, w_out, batch, c_in_g, c_out_g, kh, kw,
        stride_h, stride_w, padding[0], padding[1], dilation[0], dilation[1], gcd_h, gcd_w, inverse_h, inverse_w,
        *_strides(grad_c), *_strides(weight), *_strides(grad_x),
        PACKED=tiles.packed, INPUT_PRECISION=input_precision(grad_x.dtype), BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, GROUP=GROUP_M, num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )


# Split-K of the weight gradient: aim at this many programs per SM, each reducing at least
# MIN_SPLIT_PIXELS pixels (fewer would cost more in partials than it gains in parallelism).
WGRAD_PROGRAMS_PER_SM = 2
MIN_SPLIT_PIXELS = 2048
# The interpreter splits any reduction longer than one block in two, so the partial sums
# are exercised on tiny images.
_INTERPRETER_SPLITS = 2


def weight_grad_splits(device: torch.device, tiles: int, pixels: int, block_k: int) -> int:
    """How many pixel ranges the weight gradient's reduction is split into."""
    if device.type != "cuda":
        return max(1, min(_INTERPRETER_SPLITS, triton.cdiv(pixels, block_k)))
    from fusednn.kernels._rows import multiprocessor_count

    index = device.index if device.index is not None else torch.cuda.current_device()
    wanted = triton.cdiv(WGRAD_PROGRAMS_PER_SM * multiprocessor_count(index), tiles)
    return max(1, min(wanted, pixels // MIN_SPLIT_PIXELS))


def conv2d_weight_grad(grad_c: torch.Tensor, x: torch.Tensor, weight_shape, stride, padding, dilation,
                       groups: int) -> torch.Tensor:
    """The weight gradient [C_out, C_in / groups, kh, kw] in fp32 (contiguous), from grad_c
    [N, C_out, H_out, W_out] and x [N, C_in, H, W] (any strides), reduced in fp32 (split
    over pixel ranges into fp32 partials, summed here, when the tiles alone are too few)."""
    c_out, c_in_g, kh, kw = weight_shape
    batch, _, h, w = x.shape
    _, _, h_out, w_out = grad_c.shape
    c_out_g = c_out // groups
    pixels = batch * h_out * w_out
    if pixels == 0 or c_out_g == 0 or c_in_g == 0:
        return torch.zeros(tuple(weight_shape), dtype=torch.float32, device=x.device)
    tiles = weight_grad_tiles(c_out_g, c_in_g, kh * kw, x.dtype)
    blocks = triton.cdiv(c_out_g, tiles.block_m) * _blocks(c_in_g, kh * kw, tiles.block_n, tiles.packed)
    splits = weight_grad_splits(x.device, blocks * groups, pixels, tiles.block_k)
    pixels_per_split = triton.cdiv(triton.cdiv(pixels, splits), tiles.block_k) * tiles.block_k
    splits = triton.cdiv(pixels, pixels_per_split)
    partials = _runtime.empty((splits,) + tuple(weight_shape), dtype=torch.float32, device=x.device)
    torch.library.wrap_triton(_conv2d_weight_grad_kernel)[(blocks, groups, splits)](
        grad_c, x, partials,
        h, w, h_out, w_out, pixels, c_in_g, c_out_g, kh, kw, pixels_per_split,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *_strides(grad_c), *_strides(x), *partials.stride(),
        PACKED=tiles.packed, INPUT_PRECISION=input_precision(x.dtype), BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return partials[0] if splits == 1 else partials.sum(0)


# --------------------------------------------------------------------------- compile check


def compile_variants() -> list[CompileVariant]:
    """The tiles the launchers pick on a GPU, for ResNet-50 shapes at batch 32 in
    channels_last: the bf16 forward with the full epilogue (bias, scale, shift, residual,
    relu, c saved) at the main configuration (3x3 256 -> 256 at 56: 128 x 128 x 64, sm_90a
    and sm_80) and on the packed stem (7x7/2, 3 channels), the fp32 forward (exact
    products), the bf16 input and weight gradients at the main configuration (sm_90a and
    sm_80), and the epilogue backward. Integer arguments equal to 1 in those calls (the
    channel strides, and stride, padding and dilation of the 3x3) are constexprs, as a
    launch specializes them."""
    bf16, fp32 = torch.bfloat16, torch.float32
    full = dict(HAS_BIAS=True, HAS_SCALE=True, HAS_SHIFT=True, HAS_RESIDUAL=True, ACT=ACTIVATION_CODES["relu"],
                SAVE_C=True)
    plain = dict(HAS_BIAS=False, HAS_SCALE=False, HAS_SHIFT=False, HAS_RESIDUAL=False, ACT=0, SAVE_C=False)
    unit_geometry = dict(stride_h=1, stride_w=1, pad_h=1, pad_w=1, dil_h=1, dil_w=1)  # 3x3, stride 1, padding 1
    main_pixels = 32 * 56 * 56

    def variant(name, kernel, types, flags, tiles, archs=(SM90,), divisible=(), **extra):
        sizes = f"{tiles.block_m}x{tiles.block_n}x{tiles.block_k}{' packed' if tiles.packed else ''}"
        constexprs = dict(flags, PACKED=tiles.packed, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
                          BLOCK_K=tiles.block_k, **extra)
        return CompileVariant(name=f"conv2d {name} {sizes}", kernel=kernel.__name__, types=types,
                              constexprs=constexprs, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
                              archs=archs, divisible_by_16=divisible)

    # the integers a channels_last launch of those shapes finds divisible by 16 (the stem's 3
    # input channels leave only the pixel count, its output channels and the image strides)
    main_divisible = ("M", "C_IN_G", "C_OUT_G", "C_OUT", "sx_n", "sx_h", "sx_w", "sw_o", "sw_h", "sw_w",
                      "sy_n", "sy_h", "sy_w", "sr_n", "sr_h", "sr_w")
    stem_divisible = ("M", "C_OUT_G", "C_OUT", "sx_n", "sx_h", "sy_n", "sy_h", "sy_w")

    def forward(dtype, flags, tiles, name, geometry, archs=(SM90,), divisible=main_divisible):
        t, f32 = "*" + triton_type(dtype), "*fp32"
        types = dict(X=t, Wt=t, Y=t, C=t, Bias=f32, Scale=f32, Shift=f32, R=t)
        return variant(f"forward {triton_type(dtype)} {name}", _conv2d_forward_kernel, types, flags, tiles, archs,
                       divisible, INPUT_PRECISION=input_precision(dtype), GROUP=GROUP_M, sx_c=1, sw_i=1, sy_c=1, sr_c=1,
                       **geometry)

    main = gemm_tiles(main_pixels, 256, 256, 9, bf16, interpreter=False)
    stem = gemm_tiles(32 * 112 * 112, 64, 3, 49, bf16, interpreter=False)
    main_fp32 = gemm_tiles(main_pixels, 256, 256, 9, fp32, interpreter=False)
    wgrad = weight_grad_tiles(256, 256, 9, bf16, interpreter=False)
    t = "*bf16"
    return [
        forward(bf16, full, main, "bias+scale+shift+residual relu", unit_geometry, archs=(SM90, SM80)),
        forward(bf16, dict(full, HAS_BIAS=False, HAS_RESIDUAL=False, SAVE_C=False), stem,
                "scale+shift relu (stem)", dict(dil_h=1, dil_w=1), divisible=stem_divisible),
        forward(fp32, plain, main_fp32, "ieee", unit_geometry),
        variant("input grad bf16", _conv2d_input_grad_kernel, dict(DC=t, Wt=t, DX=t), {}, main, (SM90, SM80),
                ("C_IN_G", "C_OUT_G", "sd_n", "sd_h", "sd_w", "sw_o", "sw_h", "sw_w", "sx_n", "sx_h", "sx_w"),
                INPUT_PRECISION="tf32", GROUP=GROUP_M, sd_c=1, sw_i=1, sx_c=1, gcd_h=1, gcd_w=1, **unit_geometry),
        variant("weight grad bf16", _conv2d_weight_grad_kernel, dict(DC=t, X=t, DW="*fp32"), {}, wgrad, (SM90, SM80),
                ("P", "C_IN_G", "C_OUT_G", "sd_n", "sd_h", "sd_w", "sx_n", "sx_h", "sx_w", "sp_s", "sp_o"),
                INPUT_PRECISION="tf32", sd_c=1, sx_c=1, sp_w=1, **unit_geometry),
    ] + _epilogue.compile_variants(bf16)
