"""Triton kernels for depthwise 2-D convolution (one filter per channel, ``groups = C``) with
the fused epilogue of ``_epilogue``: direct kernels on CUDA cores, no im2col, no GEMM.

Addressing: every activation ([N, C, H, W] input, output, residual, gradients) is read and
written through its four strides, so any layout works; channels_last (NHWC) is the fast
one: a program's [pixels, channels] tile then reads each pixel's channels as one contiguous
run (16-byte vectors when the channel count is a multiple of the channel block, ``EVEN_C``,
so that no per-channel mask breaks the vectors). The filters travel as a float32
[kh * kw, C] copy (``tap_major_weight``): a tap's weights for a block of channels are one
contiguous vector, already in the accumulator dtype.

Forward (``_forward_kernel``): a program owns one image's [BLOCK_H x BLOCK_W] block of
output pixels (flattened into the rows of the tile) times BLOCK_C channels (TILE_ELEMENTS
= 2048 float32 accumulators: 8 x 8 pixels x 32 channels, 16 registers per thread), and
walks the kh x kw taps in two runtime loops (a 31 x 31 filter is 961 iterations of one
loop body, not 961 unrolled copies). Addresses are a scalar pointer per tap plus the
tile's loop-invariant int32 offsets within the image (so an image, one batch entry, must
have fewer than 2^31 elements; the op checks). Per tap the program masks the pixels whose
tap falls in the padding (the row test hoisted out of the column loop, the column test two
compares against per-pixel bounds), loads the [pixels, channels] input tile and the
[channels] weight vector, and does one FMA per element. Then the epilogue
(``_epilogue.apply``) and one store of y (and of c = the accumulator, when the backward
needs it).

Memory traffic. DRAM: the input is read about once (each program's footprint is its tile
plus a halo of kh - 1 rows and kw - 1 columns; the halos are the neighbours' pixels, and
neighbouring tiles are adjacent program ids, so they are L2 hits) and y is written once:
4 bytes per bfloat16 element, plus the residual read and c written when present. The
per-tap re-reads of the input (kh * kw loads of each element, spread over the programs
whose windows cover it) are served by L1: a tile's footprint is small, e.g. a 14 x 14 x 32
bf16 image block for a 31 x 31 filter (12.5 KB), so it stays resident while the program
sweeps its 961 taps. So the kernel is bound by instruction issue and L1 bandwidth, not by
DRAM, and the large filters, where cuDNN falls back to slow paths, run at the same
per-tap speed as the small ones. Per tap a thread issues, for each of its two 8-channel
pixel vectors, a 64-bit address add, two compares and an AND for the mask, one 16-byte load,
8 conversions to float32 and 8 FMAs, plus two 16-byte loads of the float32 weights and the
loop's own pointer adds: about a third of the issue slots are FMAs (sm_90a PTX of the 7 x 7
bfloat16 build: 16 FMAs, 16 conversions, 4 vector loads in a loop body of about 50
instructions). Reusing the input from
registers across the taps of a row (the classic CUDA depthwise kernel keeps a sliding window
of a row in registers) needs register shifts by the tap offset, which Triton cannot
express; the alternative that Triton can express, broadcasting one loaded input column over
all output columns of a tile with a gathered [columns, channels] weight tile per step, halves
the input loads but adds as many weight loads and computes (BLOCK_W + kw - 1) / kw times the
FMAs, so it was not taken.

Backward: the epilogue's backward runs first (``_epilogue.epilogue_backward``, or nothing
when there is neither activation nor scale: then the gradient of c is the output gradient
itself). Then, each only when asked for:

* dgrad (``_dgrad_kernel``): each input pixel h gathers the output gradient of the output
  pixels whose window covers it: taps i with (h + pad - i * dil) divisible by the stride,
  oh = (h + pad - i * dil) / stride. Pixels are processed by phase: a program owns pixels
  h = r + stride * a (one residue r per program), for which the divisibility test depends
  on the tap only, so strided convolutions skip the taps that do not apply instead of
  masking them per pixel. Same tile and memory pattern as the forward.
* wgrad (``_wgrad_kernel``): for each (channel, tap) the sum over N * H_out * W_out of
  grad_c times the input under that tap. A program owns a [BLOCK_T taps, BLOCK_C channels]
  float32 accumulator (the roles of pixels and taps in the forward exchanged) and walks its
  share of the output pixels: per pixel one [channels] gradient vector and one [taps,
  channels] gather of the input, one FMA per element, no reduction inside the loop (short
  rows take BLOCK_W pixels a step, a [taps, pixels, channels] accumulator summed over the
  pixels at the end). The programs' [taps, C] partials are summed by the launcher
  (deterministic, no atomics).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fusednn import _runtime
from fusednn.kernels import SM80, SM90, TRITON_DEFAULT_STAGES, CompileVariant, _epilogue, triton_type
from fusednn.kernels._activation import ACTIVATION_CODES
from fusednn.kernels._rows import INTERPRETER_PROGRAMS, multiprocessor_count

# Accumulator elements per program (BLOCK_H * BLOCK_W * BLOCK_C or BLOCK_T * BLOCK_C):
# 16 float32 registers per thread at 4 warps.
TILE_ELEMENTS = 2048
MAX_BLOCK_C = 32
# wgrad: its accumulator elements, as the forward's (a 31 x 31 filter on 32 or more
# channels takes 16 blocks of 64 taps by 32 channels).
WGRAD_ELEMENTS = TILE_ELEMENTS
WARPS = 4
# wgrad programs resident per SM (a few, to hide the latency of the gathers).
WGRAD_PROGRAMS_PER_SM = 4


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _pixel_tile(tile, tiles_w, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Row and column indices [BLOCK_H * BLOCK_W] of the pixels of 2-D tile number ``tile``."""
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    rows = (tile // tiles_w) * BLOCK_H + p // BLOCK_W
    cols = (tile % tiles_w) * BLOCK_W + p % BLOCK_W
    return rows, cols


@triton.jit
def _tile_mask(pixel_ok, channel_ok, EVEN_C: tl.constexpr):
    """The [pixels, channels] mask; with every channel of the block valid it stays a
    per-pixel mask broadcast over the channels, so the loads keep their vector width."""
    if EVEN_C:
        return pixel_ok[:, None]
    else:
        return pixel_ok[:, None] & channel_ok[None, :]


@triton.jit
def _forward_kernel(
    X,  # [N, C, H, W] input, strided
    Wt,  # [kh * kw, C] float32 tap-major filters
    Bias, Scale, Shift,  # [C] (each read only if given)
    R,  # [N, C, H_out, W_out] residual, strided (if HAS_RESIDUAL)
    Y,  # [N, C, H_out, W_out] output, strided
    Cout,  # [N, C, H_out, W_out] pre-epilogue output, strided (if SAVE_CONV)
    C, H, W, H_out, W_out, tiles_w, tiles_per_image,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_rn, stride_rc, stride_rh, stride_rw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    stride_cn, stride_cc, stride_ch, stride_cw,
    kh, kw, conv_stride_h, conv_stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    ACT: tl.constexpr, SAVE_CONV: tl.constexpr, EVEN_C: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    n = (pid // tiles_per_image).to(tl.int64)
    oh, ow = _pixel_tile(pid % tiles_per_image, tiles_w, BLOCK_H, BLOCK_W)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_ok = channels < C
    out_ok = (oh < H_out) & (ow < W_out)
    # the input position of tap (0, 0); tap (i, j) adds (i * dil_h, j * dil_w)
    ih0 = oh * conv_stride_h - pad_h
    iw0 = ow * conv_stride_w - pad_w
    # addresses: a scalar pointer per tap (the image's base plus the tap's offset) plus the
    # tile's int32 offsets within the image ([pixels, channels]: the pixels' tap-(0, 0)
    # positions and the channels), loop-invariant
    x_offsets = (ih0 * stride_xh + iw0 * stride_xw)[:, None] + channels[None, :] * stride_xc
    x_image = X + n * stride_xn
    # tap column j * dil_w lands inside the image for the pixels with lo <= j * dil_w < hi
    col_lo = -iw0
    col_hi = W - iw0
    x_step = dil_w * stride_xw
    w_columns = channels[None, :]
    channel_row = channel_ok[None, :]
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
    for i in range(kh):
        ih = ih0 + i * dil_h
        # pixels whose tap row is outside the image (or that are outside the output) get an
        # empty range: no column reaches kw * dil_w
        lo = tl.where(out_ok & (ih >= 0) & (ih < H), col_lo, kw * dil_w)
        x_tap = x_image + i * dil_h * stride_xh
        w_tap = Wt + i * kw * C
        for j in range(kw):
            column = j * dil_w
            pixel_ok = ((column >= lo) & (column < col_hi))[:, None]
            # (the masks inline: a call of a jit function costs the interpreter as much as a tap)
            if EVEN_C:
                x = tl.load(x_tap + x_offsets, mask=pixel_ok, other=0.0)
                w = tl.load(w_tap + w_columns)
            else:
                x = tl.load(x_tap + x_offsets, mask=pixel_ok & channel_row, other=0.0)
                w = tl.load(w_tap + w_columns, mask=channel_row, other=0.0)
            acc += x.to(tl.float32) * w
            x_tap += x_step
            w_tap += C

    mask = _tile_mask(out_ok, channel_ok, EVEN_C)
    oh = oh.to(tl.int64)
    ow = ow.to(tl.int64)
    if SAVE_CONV:
        c_ptrs = (Cout + n * stride_cn + channels[None, :].to(tl.int64) * stride_cc
                  + (oh * stride_ch + ow * stride_cw)[:, None])
        tl.store(c_ptrs, acc.to(Cout.dtype.element_ty), mask=mask)
    residual = acc
    if HAS_RESIDUAL:
        r_ptrs = (R + n * stride_rn + channels[None, :].to(tl.int64) * stride_rc
                  + (oh * stride_rh + ow * stride_rw)[:, None])
        residual = tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    y = _epilogue.apply(acc, channels, channel_ok, Bias, Scale, Shift, residual, HAS_BIAS, HAS_SCALE, HAS_SHIFT,
                        HAS_RESIDUAL, ACT)
    y_ptrs = (Y + n * stride_yn + channels[None, :].to(tl.int64) * stride_yc
              + (oh * stride_yh + ow * stride_yw)[:, None])
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _dgrad_kernel(
    DC,  # [N, C, H_out, W_out] gradient of the pre-epilogue output, strided
    Wt,  # [kh * kw, C] float32 tap-major filters
    DX,  # [N, C, H, W] input gradient, strided
    C, H, W, H_out, W_out, tiles_w, tiles_per_phase,
    stride_dn, stride_dc, stride_dh, stride_dw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    kh, kw, conv_stride_h, conv_stride_w, pad_h, pad_w, dil_h, dil_w,
    EVEN_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # program = (image, phase (r_h, r_w), tile of the phase's pixels h = r_h + stride_h * a)
    pid = tl.program_id(0)
    phases = conv_stride_h * conv_stride_w
    n = (pid // (phases * tiles_per_phase)).to(tl.int64)
    rest = pid % (phases * tiles_per_phase)
    phase = rest // tiles_per_phase
    r_h = phase // conv_stride_w
    r_w = phase % conv_stride_w
    a, b = _pixel_tile(rest % tiles_per_phase, tiles_w, BLOCK_H, BLOCK_W)
    h = r_h + a * conv_stride_h
    w = r_w + b * conv_stride_w
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_ok = channels < C
    in_ok = (h < H) & (w < W)
    # tap (i, j) reads the output pixel (a + oh_i, b + ow_j) where it applies
    # addresses as in the forward: a scalar pointer per tap plus the tile's int32 offsets
    g_offsets = (a * stride_dh + b * stride_dw)[:, None] + channels[None, :] * stride_dc
    g_image = DC + n * stride_dn
    # output column ow_j is inside the output for the pixels with lo <= ow_j < hi
    col_hi = W_out - b
    w_columns = channels[None, :]
    channel_row = channel_ok[None, :]
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
    for i in range(kh):
        numerator_h = r_h + pad_h - i * dil_h
        if numerator_h % conv_stride_h == 0:
            oh_i = numerator_h // conv_stride_h
            oh = a + oh_i
            # pixels whose output row is outside the output get an empty range (hi <= W_out)
            lo = tl.where(in_ok & (oh >= 0) & (oh < H_out), -b, W_out)
            g_row = g_image + oh_i * stride_dh
            w_row = Wt + i * kw * C
            for j in range(kw):
                numerator_w = r_w + pad_w - j * dil_w
                if numerator_w % conv_stride_w == 0:
                    ow_j = numerator_w // conv_stride_w
                    pixel_ok = ((ow_j >= lo) & (ow_j < col_hi))[:, None]
                    g_tap = g_row + ow_j * stride_dw
                    if EVEN_C:
                        g = tl.load(g_tap + g_offsets, mask=pixel_ok, other=0.0)
                        wv = tl.load(w_row + j * C + w_columns)
                    else:
                        g = tl.load(g_tap + g_offsets, mask=pixel_ok & channel_row, other=0.0)
                        wv = tl.load(w_row + j * C + w_columns, mask=channel_row, other=0.0)
                    acc += g.to(tl.float32) * wv
    dx_ptrs = (DX + n * stride_xn + channels[None, :].to(tl.int64) * stride_xc
               + (h.to(tl.int64) * stride_xh + w.to(tl.int64) * stride_xw)[:, None])
    tl.store(dx_ptrs, acc.to(DX.dtype.element_ty), mask=_tile_mask(in_ok, channel_ok, EVEN_C))


@triton.jit
def _wgrad_kernel(
    DC,  # [N, C, H_out, W_out] gradient of the pre-epilogue output, strided
    X,  # [N, C, H, W] input, strided
    Partial,  # [programs, kh * kw, C] float32 per-program sums
    C, H, W, H_out, W_out, output_rows, rows_per_program,
    stride_dn, stride_dc, stride_dh, stride_dw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    kh, kw, conv_stride_h, conv_stride_w, pad_h, pad_w, dil_h, dil_w,
    EVEN_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # program = (group of output rows (n, oh), block of taps, block of channels); each step
    # takes BLOCK_W output pixels of a row: acc[tap, pixel, channel] += x * grad_c, summed
    # over the pixels once at the end
    group = tl.program_id(0)
    taps = kh * kw
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    tap_ok = t < taps
    channels = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_ok = channels < C
    b = tl.arange(0, BLOCK_W)
    # input offset of each tap from the window's corner (oh * stride - pad, ow * stride - pad)
    di = (t // kw) * dil_h - pad_h
    dj = (t % kw) * dil_w - pad_w
    # addresses: a scalar pointer per step plus int32 offsets within the image, loop-invariant:
    # [taps, pixels, channels] for the input, [pixels, channels] for the gradient
    x_offsets = ((di * stride_xh + dj * stride_xw)[:, None, None] + (b * conv_stride_w * stride_xw)[None, :, None]
                 + channels[None, None, :] * stride_xc)
    g_offsets = (b * stride_dw)[:, None] + channels[None, :] * stride_dc
    iw_taps = dj[:, None] + (b * conv_stride_w)[None, :]
    acc = tl.zeros([BLOCK_T, BLOCK_W, BLOCK_C], dtype=tl.float32)
    first = group * rows_per_program
    last = tl.minimum(first + rows_per_program, output_rows)
    for row in range(first, last):
        n = tl.cast(row // H_out, tl.int64)
        oh = row % H_out
        ih = oh * conv_stride_h + di
        row_ok = (tap_ok & (ih >= 0) & (ih < H))[:, None]
        x_step = X + n * stride_xn + oh * conv_stride_h * stride_xh
        g_step = DC + n * stride_dn + oh * stride_dh
        for ow0 in range(0, W_out, BLOCK_W):
            # the step's pixels b (ow = ow0 + b) and their taps' columns iw = iw_taps + ow0 * stride
            column0 = ow0 * conv_stride_w
            pixel_ok = b < W_out - ow0
            ok = row_ok & (iw_taps >= -column0) & (iw_taps < W - column0) & pixel_ok[None, :]
            if EVEN_C:
                x = tl.load(x_step + x_offsets, mask=ok[:, :, None], other=0.0)
                g = tl.load(g_step + g_offsets, mask=pixel_ok[:, None], other=0.0)
            else:
                x = tl.load(x_step + x_offsets, mask=ok[:, :, None] & channel_ok[None, None, :], other=0.0)
                g = tl.load(g_step + g_offsets, mask=pixel_ok[:, None] & channel_ok[None, :], other=0.0)
            acc += x.to(tl.float32) * g.to(tl.float32)[None, :, :]
            x_step += BLOCK_W * conv_stride_w * stride_xw
            g_step += BLOCK_W * stride_dw
    out = Partial + group.to(tl.int64) * taps * C + t[:, None] * C + channels[None, :]
    tl.store(out, tl.sum(acc, axis=1), mask=tap_ok[:, None] & channel_ok[None, :])


# --------------------------------------------------------------------------- launch configuration


def channel_block(channels: int) -> int:
    return min(triton.next_power_of_2(channels), MAX_BLOCK_C)


def spatial_tile(height: int, width: int, block_c: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_W): powers of two with TILE_ELEMENTS / block_c pixels (the whole grid
    when it is smaller), shaped to waste the fewest lanes on a ``height`` x ``width`` grid,
    then the squarest (the smallest halo), then the widest (the longest contiguous runs in
    channels_last)."""
    cap_h, cap_w = triton.next_power_of_2(max(height, 1)), triton.next_power_of_2(max(width, 1))
    pixels = min(max(TILE_ELEMENTS // block_c, 16), cap_h * cap_w)
    best = None
    for log_w in range(pixels.bit_length()):
        block_w = 1 << log_w
        block_h = max(pixels // block_w, 1)
        if block_w > cap_w or block_h > cap_h:
            continue
        padded = triton.cdiv(height, block_h) * block_h * triton.cdiv(width, block_w) * block_w
        key = (height * width / max(padded, 1), -abs(log_w - math.log2(block_h)), log_w)
        if best is None or key > best[0]:
            best = (key, (block_h, block_w))
    return best[1]


def tap_major_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C, 1, kh, kw] filters as the float32 [kh * kw, C] matrix the kernels read (one copy)."""
    channels = weight.shape[0]
    out = torch.empty((weight.shape[2] * weight.shape[3], channels), dtype=torch.float32, device=weight.device)
    return out.copy_(weight.reshape(channels, -1).t())


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())


def _geometry_args(stride, padding, dilation, kernel):
    return (kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


def depthwise_forward(x: torch.Tensor, weight_taps: torch.Tensor, kernel: tuple[int, int], bias, scale, shift,
                      residual, activation, stride, padding, dilation, *, y: torch.Tensor,
                      conv_out: torch.Tensor | None) -> None:
    """Writes y = act((conv(x) + bias) * scale + shift + residual) and, when given, conv_out
    = conv(x). x [N, C, H, W], y / residual / conv_out [N, C, H_out, W_out]: any strides;
    weight_taps from ``tap_major_weight``; padding is the (top, left) padding."""
    n, c, h, w = x.shape
    h_out, w_out = y.shape[-2:]
    if n == 0 or h_out == 0 or w_out == 0:
        return
    block_c = channel_block(c)
    block_h, block_w = spatial_tile(h_out, w_out, block_c)
    tiles_w = triton.cdiv(w_out, block_w)
    tiles = triton.cdiv(h_out, block_h) * tiles_w
    r = residual if residual is not None else y
    cout = conv_out if conv_out is not None else y
    torch.library.wrap_triton(_forward_kernel)[(n * tiles, triton.cdiv(c, block_c))](
        x, weight_taps,
        bias if bias is not None else weight_taps, scale if scale is not None else weight_taps,
        shift if shift is not None else weight_taps,
        r, y, cout,
        c, h, w, h_out, w_out, tiles_w, tiles,
        *_strides(x), *_strides(r), *_strides(y), *_strides(cout),
        *_geometry_args(stride, padding, dilation, kernel),
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_RESIDUAL=residual is not None, ACT=ACTIVATION_CODES[activation], SAVE_CONV=conv_out is not None,
        EVEN_C=c % block_c == 0, BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=WARPS,
    )


def depthwise_dgrad(grad_c: torch.Tensor, weight_taps: torch.Tensor, kernel: tuple[int, int], stride, padding,
                    dilation, *, grad_x: torch.Tensor) -> None:
    """Writes grad_x [N, C, H, W] (any strides; every element) from grad_c [N, C, H_out, W_out]."""
    n, c, h, w = grad_x.shape
    h_out, w_out = grad_c.shape[-2:]
    if grad_x.numel() == 0:
        return
    block_c = channel_block(c)
    # the pixels of one phase: h = r + stride * a, a < cdiv(H, stride)
    phase_h, phase_w = triton.cdiv(h, stride[0]), triton.cdiv(w, stride[1])
    block_h, block_w = spatial_tile(phase_h, phase_w, block_c)
    tiles_w = triton.cdiv(phase_w, block_w)
    tiles = triton.cdiv(phase_h, block_h) * tiles_w
    torch.library.wrap_triton(_dgrad_kernel)[(n * stride[0] * stride[1] * tiles, triton.cdiv(c, block_c))](
        grad_c, weight_taps, grad_x,
        c, h, w, h_out, w_out, tiles_w, tiles,
        *_strides(grad_c), *_strides(grad_x),
        *_geometry_args(stride, padding, dilation, kernel),
        EVEN_C=c % block_c == 0, BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=WARPS,
    )


def wgrad_config(taps: int, channels: int, width: int) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_W, BLOCK_C, num_warps) of the wgrad kernel: up to MAX_BLOCK_C channels,
    as many taps as fit in WGRAD_ELEMENTS with them, and as many output pixels of a row per
    step as keep the accumulator within WGRAD_ELEMENTS."""
    block_c = channel_block(channels)
    block_t = min(triton.next_power_of_2(taps), max(WGRAD_ELEMENTS // block_c, 1))
    block_w = min(triton.next_power_of_2(max(width, 1)), max(WGRAD_ELEMENTS // (block_t * block_c), 1))
    num_warps = max(1, min(WARPS, block_t * block_w * block_c // 256))
    return block_t, block_w, block_c, num_warps


def depthwise_wgrad(grad_c: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], stride, padding,
                    dilation) -> torch.Tensor:
    """The filter gradient as a float32 [kh * kw, C] matrix (sum over N * H_out * W_out)."""
    n, c, h, w = x.shape
    h_out, w_out = grad_c.shape[-2:]
    taps = kernel[0] * kernel[1]
    rows = n * h_out
    if rows == 0 or w_out == 0:
        return torch.zeros((taps, c), dtype=torch.float32, device=x.device)
    block_t, block_w, block_c, num_warps = wgrad_config(taps, c, w_out)
    blocks = triton.cdiv(taps, block_t) * triton.cdiv(c, block_c)
    if x.device.type == "cuda":
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        wanted = multiprocessor_count(index) * WGRAD_PROGRAMS_PER_SM
    else:
        wanted = INTERPRETER_PROGRAMS * blocks
    groups = max(1, min(rows, wanted // blocks))
    rows_per_program = triton.cdiv(rows, groups)
    groups = triton.cdiv(rows, rows_per_program)
    partial = _runtime.empty((groups, taps, c), dtype=torch.float32, device=x.device)
    torch.library.wrap_triton(_wgrad_kernel)[(groups, triton.cdiv(taps, block_t), triton.cdiv(c, block_c))](
        grad_c, x, partial,
        c, h, w, h_out, w_out, rows, rows_per_program,
        *_strides(grad_c), *_strides(x),
        *_geometry_args(stride, padding, dilation, kernel),
        EVEN_C=c % block_c == 0, BLOCK_T=block_t, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=num_warps,
    )
    return partial.sum(0)


# --------------------------------------------------------------------------- compile check


def compile_variants() -> list[CompileVariant]:
    """The forward at ConvNeXt's 7 x 7 on 56 x 56 maps with every epilogue piece (bfloat16,
    sm_80 and sm_90a) and plain at RepLKNet's 31 x 31 on 14 x 14 maps (its own tile), the
    dgrad and the wgrad in bfloat16, the forward in float32, and the epilogue backward the
    op runs: 128 channels (EVEN_C), channels_last, stride 1, "same" padding. As a launch
    specializes them, integer arguments equal to 1 in those calls (the channel strides, the
    convolution's stride and dilation) are constexprs, and the channel count and the other
    strides (multiples of it) are marked divisible by 16."""
    bf16, fp32 = torch.bfloat16, torch.float32
    unit = dict(conv_stride_h=1, conv_stride_w=1, dil_h=1, dil_w=1)

    def divisible(kernel, *prefixes):
        return tuple(name for name in kernel.arg_names
                     if name == "C" or any(name.startswith(p) and not name.endswith("c") for p in prefixes))

    block_c = channel_block(128)
    variants = []

    def forward(name, dtype, size, epilogue, archs):
        t = "*" + triton_type(dtype)
        block_h, block_w = spatial_tile(size, size, block_c)
        flags = dict(HAS_BIAS=True, HAS_SCALE=epilogue, HAS_SHIFT=epilogue, HAS_RESIDUAL=epilogue,
                     ACT=ACTIVATION_CODES["silu" if epilogue else None], SAVE_CONV=epilogue)
        variants.append(CompileVariant(
            name=f"depthwise_conv2d forward {name}", kernel=_forward_kernel.__name__,
            types=dict(X=t, Wt="*fp32", Bias="*fp32", Scale="*fp32", Shift="*fp32", R=t, Y=t, Cout=t),
            constexprs=dict(flags, **unit, stride_xc=1, stride_rc=1, stride_yc=1, stride_cc=1, EVEN_C=True,
                            BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c),
            num_warps=WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=archs,
            divisible_by_16=divisible(_forward_kernel, "stride_x", "stride_r", "stride_y", "stride_c"),
        ))

    forward("bf16 7x7 56x56 bias+scale+shift+residual+silu", bf16, 56, True, (SM90, SM80))
    forward("bf16 31x31 14x14 bias", bf16, 14, False, (SM90,))
    forward("fp32 7x7 56x56 bias", fp32, 56, False, (SM90,))
    block_h, block_w = spatial_tile(56, 56, block_c)
    variants.append(CompileVariant(
        name="depthwise_conv2d dgrad bf16 7x7 56x56", kernel=_dgrad_kernel.__name__,
        types=dict(DC="*bf16", Wt="*fp32", DX="*bf16"),
        constexprs=dict(unit, stride_dc=1, stride_xc=1, EVEN_C=True, BLOCK_H=block_h, BLOCK_W=block_w,
                        BLOCK_C=block_c),
        num_warps=WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=(SM90,),
        divisible_by_16=divisible(_dgrad_kernel, "stride_d", "stride_x"),
    ))
    block_t, block_w, block_c_w, num_warps = wgrad_config(31 * 31, 1024, 14)
    variants.append(CompileVariant(
        name=f"depthwise_conv2d wgrad bf16 31x31 14x14 {block_t}x{block_w}x{block_c_w}", kernel=_wgrad_kernel.__name__,
        types=dict(DC="*bf16", X="*bf16", Partial="*fp32"),
        constexprs=dict(unit, stride_dc=1, stride_xc=1, EVEN_C=True, BLOCK_T=block_t, BLOCK_W=block_w,
                        BLOCK_C=block_c_w),
        num_warps=num_warps, num_stages=TRITON_DEFAULT_STAGES, archs=(SM90,),
        divisible_by_16=divisible(_wgrad_kernel, "stride_d", "stride_x"),
    ))
    return variants  # the shared epilogue backward is built with conv2d's variants
