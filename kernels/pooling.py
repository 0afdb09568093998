"""Triton kernels of 2-D max and average pooling over ``[N, C, H, W]`` tensors, read and
written through their strides; channels_last (NHWC) is the native layout.

Tiles. A program owns a [BLOCK_P pixels, BLOCK_C channels] tile: BLOCK_P consecutive
pixels of the flattened (n, row, column) range and BLOCK_C channels. In a channels_last
tensor the channels are contiguous, so every load is BLOCK_P runs of BLOCK_C contiguous
elements; an NCHW tensor is read through the same strides (correct, less coalesced).
Offsets are 64-bit. All arithmetic is in float32; results are cast to the output's
dtype.

Tile size. Triton specializes a launch on strides equal to 1 and divisible by 16, so a
channels_last tensor gets vector loads along the channels and a thread holds one or two
pixels of a tile. Other strides give one element per thread along the channels and
BLOCK_P / (warps across pixels) pixels per thread, whose per-pixel coordinates and 64-bit
offsets live across the window loops: tiles of 512 elements (4 per thread) keep that build
within about 115 registers with no spills (the compile variants build it: no
specialization). The global average reduces wider tiles (a loop over the plane, no
per-pixel state).

Forward (``_pool_forward_kernel``, a tile of output pixels): the window's taps are walked
in torch's order (rows outer, columns inner), runtime loops over the kernel size.

* Max (``IS_MAX``): taps outside the input read ``-inf``; a tap replaces the running
  maximum when it is greater or NaN, so the first maximum wins and NaN propagates (the
  last NaN is the argmax), as torch's CPU kernels do. The argmax starts at the window's
  first tap inside the input (torch's choice when every tap is ``-inf``) and is stored as
  torch's flat index ``h * W + w`` into the input plane (int64), only when asked
  (``STORE_INDICES``: training, or ``return_indices``).
* Average: the float32 sum of the taps inside the input over torch's divisor
  (``_window_count`` per axis).

Backward (``_pool_backward_kernel``, a tile of input pixels): a gather, so the result is
deterministic and needs no atomics, no zero fill and no float32 buffer. Input pixel h lies
in the window of output row oh through tap kh exactly when ``oh * stride - pad + kh *
dilation = h``; each pixel visits, for every tap (kh, kw), the one output it may belong to
and adds, in float32, dy where that output's argmax is this pixel (max) or dy / divisor
(average). Every element of dx is written once. Bytes: dx written once; dy (and the int64
argmax) read about ``KH * KW / (SH * SW)`` times per input element, the repeats from L2.

Global average (``adaptive_avg_pool2d`` to 1x1): ``_global_avg_pool_forward_kernel`` gives
a program one image and BLOCK_C channels and reduces its H * W pixels in [BLOCK_P,
BLOCK_C] tiles (float32 accumulator, then a sum over the pixel axis);
``_global_avg_pool_backward_kernel`` writes dx = dy / (H * W) over input-pixel tiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusednn.kernels import SM80, SM90, TRITON_DEFAULT_STAGES, CompileVariant, triton_type

# A tile holds about this many elements; a channel block is at most MAX_BLOCK_C wide.
TILE_ELEMENTS = 512
MAX_BLOCK_C = 128
GLOBAL_TILE_ELEMENTS = 2048
NUM_WARPS = 4
# Triton's interpreter (CPU tensors) runs the programs one after another and an operation
# costs about the same whatever the tile's size, so there tiles are larger (fewer programs).
INTERPRETER_TILE_SCALE = 32


@triton.jit
def _pixel_coordinates(pixels, rows, cols):
    """(n, row, column) of flat pixel indices of an [N, rows, cols] grid."""
    col = pixels % cols
    rest = pixels // cols
    return rest // rows, rest % rows, col


@triton.jit
def _window_count(o, size, K, S, P, COUNT_INCLUDE_PAD: tl.constexpr):
    """torch's divisor factor of output position ``o`` along one axis: the window's size
    clipped to the padded input (count_include_pad: padded positions count, those beyond
    the padded input in ceil mode do not), or the number of input positions in it."""
    start = o * S - P
    end = tl.minimum(start + K, size + P)
    if COUNT_INCLUDE_PAD:
        count = end - start
    else:
        count = tl.minimum(end, size) - tl.maximum(start, 0)
    return count


@triton.jit
def _first_tap_inside(start, dilation):
    """The first tap ``start + k * dilation`` (k >= 0) that is not before the input's start."""
    return tl.where(start < 0, start + ((dilation - 1 - start) // dilation) * dilation, start)


@triton.jit
def _pool_forward_kernel(
    X,  # [N, C, H, W] input, any strides
    Y,  # [N, C, OH, OW] output
    Indices,  # [N, C, OH, OW] int64 argmax, Y's strides (max with STORE_INDICES only)
    C, H, W, OH, OW,
    n_pixels,  # N * OH * OW
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    KH, KW, SH, SW, PH, PW, DH, DW,
    divisor_override,  # average: 0 for none
    IS_MAX: tl.constexpr,
    STORE_INDICES: tl.constexpr,
    COUNT_INCLUDE_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channels64 = channels.to(tl.int64)
    pixel_mask = pixels < n_pixels
    channel_mask = channels < C
    n, oh, ow = _pixel_coordinates(pixels, OH, OW)
    n64 = n.to(tl.int64)
    image = X + n64 * stride_xn
    x_channels = (channels64 * stride_xc)[None, :]
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    if IS_MAX:
        best = tl.full([BLOCK_P, BLOCK_C], float("-inf"), tl.float32)
        first = _first_tap_inside(h0, DH) * W + _first_tap_inside(w0, DW)
        argmax = tl.zeros([BLOCK_P, BLOCK_C], tl.int32) + first[:, None]
    else:
        total = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for kh in range(0, KH):
        h = h0 + kh * DH
        row_inside = pixel_mask & (h >= 0) & (h < H)
        row = image + h.to(tl.int64) * stride_xh
        for kw in range(0, KW):
            w = w0 + kw * DW
            mask = (row_inside & (w >= 0) & (w < W))[:, None] & channel_mask[None, :]
            pointers = (row + w.to(tl.int64) * stride_xw)[:, None] + x_channels
            if IS_MAX:
                value = tl.load(pointers, mask=mask, other=float("-inf")).to(tl.float32)
                take = (value > best) | (value != value)
                best = tl.where(take, value, best)
                argmax = tl.where(take, (h * W + w)[:, None], argmax)
            else:
                total += tl.load(pointers, mask=mask, other=0.0).to(tl.float32)
    y_offsets = (n64 * stride_yn + oh.to(tl.int64) * stride_yh + ow.to(tl.int64) * stride_yw)[:, None] \
        + (channels64 * stride_yc)[None, :]
    out_mask = pixel_mask[:, None] & channel_mask[None, :]
    if IS_MAX:
        tl.store(Y + y_offsets, best.to(Y.dtype.element_ty), mask=out_mask)
        if STORE_INDICES:
            tl.store(Indices + y_offsets, argmax.to(tl.int64), mask=out_mask)
    else:
        count = _window_count(oh, H, KH, SH, PH, COUNT_INCLUDE_PAD) * _window_count(ow, W, KW, SW, PW,
                                                                                   COUNT_INCLUDE_PAD)
        divisor = tl.where(divisor_override != 0, divisor_override, count).to(tl.float32)
        tl.store(Y + y_offsets, (total / divisor[:, None]).to(Y.dtype.element_ty), mask=out_mask)


@triton.jit
def _pool_backward_kernel(
    DY,  # [N, C, OH, OW] gradient of the output, any strides
    Indices,  # [N, C, OH, OW] int64 argmax of the forward (max only)
    DX,  # [N, C, H, W] gradient of the input (output)
    C, H, W, OH, OW,
    n_pixels,  # N * H * W
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_in, stride_ic, stride_ih, stride_iw,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    KH, KW, SH, SW, PH, PW, DH, DW,
    divisor_override,  # average: 0 for none
    IS_MAX: tl.constexpr,
    COUNT_INCLUDE_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channels64 = channels.to(tl.int64)
    pixel_mask = pixels < n_pixels
    channel_mask = channels < C
    n, h, w = _pixel_coordinates(pixels, H, W)
    n64 = n.to(tl.int64)
    dy_image = DY + n64 * stride_dyn
    dy_channels = (channels64 * stride_dyc)[None, :]
    if IS_MAX:
        index_image = Indices + n64 * stride_in
        index_channels = (channels64 * stride_ic)[None, :]
        own_index = (h * W + w).to(tl.int64)[:, None]
    h_padded = h + PH
    w_padded = w + PW
    grad = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for kh in range(0, KH):
        # the output row whose window reaches row h through tap kh, if there is one
        oh_scaled = h_padded - kh * DH
        oh = oh_scaled // SH
        row_hit = pixel_mask & (oh_scaled >= 0) & (oh * SH == oh_scaled) & (oh < OH)
        dy_row = dy_image + oh.to(tl.int64) * stride_dyh
        if IS_MAX:
            index_row = index_image + oh.to(tl.int64) * stride_ih
        else:
            count_h = _window_count(oh, H, KH, SH, PH, COUNT_INCLUDE_PAD)
        for kw in range(0, KW):
            ow_scaled = w_padded - kw * DW
            ow = ow_scaled // SW
            hit = row_hit & (ow_scaled >= 0) & (ow * SW == ow_scaled) & (ow < OW)
            mask = hit[:, None] & channel_mask[None, :]
            ow64 = ow.to(tl.int64)
            dy = tl.load((dy_row + ow64 * stride_dyw)[:, None] + dy_channels, mask=mask, other=0.0).to(tl.float32)
            if IS_MAX:
                argmax = tl.load((index_row + ow64 * stride_iw)[:, None] + index_channels, mask=mask, other=-1)
                grad += tl.where(argmax == own_index, dy, 0.0)
            else:
                count = count_h * _window_count(ow, W, KW, SW, PW, COUNT_INCLUDE_PAD)
                divisor = tl.where(divisor_override != 0, divisor_override, tl.where(hit, count, 1))
                grad += dy / divisor.to(tl.float32)[:, None]
    dx_offsets = (n64 * stride_dxn + h.to(tl.int64) * stride_dxh + w.to(tl.int64) * stride_dxw)[:, None] \
        + (channels64 * stride_dxc)[None, :]
    tl.store(DX + dx_offsets, grad.to(DX.dtype.element_ty), mask=pixel_mask[:, None] & channel_mask[None, :])


@triton.jit
def _global_avg_pool_forward_kernel(
    X,  # [N, C, H, W] input, any strides
    Y,  # [N, C] mean (strides of its [N, C, 1, 1] output)
    C, H, W,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n64 = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channels64 = channels.to(tl.int64)
    channel_mask = channels < C
    x_channels = (channels64 * stride_xc)[None, :]
    plane = H * W
    total = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for start in range(0, plane, BLOCK_P):
        pixels = start + tl.arange(0, BLOCK_P)
        h = pixels // W
        w = pixels % W
        offsets = n64 * stride_xn + h.to(tl.int64) * stride_xh + w.to(tl.int64) * stride_xw
        mask = (pixels < plane)[:, None] & channel_mask[None, :]
        total += tl.load(X + offsets[:, None] + x_channels, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(total, axis=0) / plane.to(tl.float32)
    tl.store(Y + n64 * stride_yn + channels64 * stride_yc, mean.to(Y.dtype.element_ty), mask=channel_mask)


@triton.jit
def _global_avg_pool_backward_kernel(
    DY,  # [N, C] gradient of the mean (strides of its [N, C, 1, 1] tensor)
    DX,  # [N, C, H, W] gradient of the input (output)
    C, H, W,
    n_pixels,  # N * H * W
    stride_dyn, stride_dyc,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channels64 = channels.to(tl.int64)
    pixel_mask = pixels < n_pixels
    channel_mask = channels < C
    n, h, w = _pixel_coordinates(pixels, H, W)
    n64 = n.to(tl.int64)
    mask = pixel_mask[:, None] & channel_mask[None, :]
    dy = tl.load(DY + (n64 * stride_dyn)[:, None] + (channels64 * stride_dyc)[None, :], mask=mask, other=0.0)
    grad = dy.to(tl.float32) / (H * W).to(tl.float32)
    dx_offsets = (n64 * stride_dxn + h.to(tl.int64) * stride_dxh + w.to(tl.int64) * stride_dxw)[:, None] \
        + (channels64 * stride_dxc)[None, :]
    tl.store(DX + dx_offsets, grad.to(DX.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launch helpers


def tile_config(channels: int, device: torch.device | None = None, tile_elements: int | None = None,
                ) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C): the channels in blocks of at most MAX_BLOCK_C, and as many pixels
    as make a tile of about ``tile_elements`` (default TILE_ELEMENTS, scaled up for the
    interpreter's CPU tensors)."""
    if tile_elements is None:
        scale = INTERPRETER_TILE_SCALE if device is not None and device.type == "cpu" else 1
        tile_elements = TILE_ELEMENTS * scale
    block_c = min(triton.next_power_of_2(channels), MAX_BLOCK_C)
    return max(1, tile_elements // block_c), block_c


def global_tile_config(channels: int, plane: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C) of the global average's forward: channel blocks as tile_config's,
    the plane's pixels in blocks that make a tile of about GLOBAL_TILE_ELEMENTS."""
    block_c = min(triton.next_power_of_2(channels), MAX_BLOCK_C)
    return min(triton.next_power_of_2(plane), max(1, GLOBAL_TILE_ELEMENTS // block_c)), block_c


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())


def pool_forward(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    *,
    is_max: bool,
    y: torch.Tensor,
    indices: torch.Tensor | None = None,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> None:
    """Writes y [N, C, OH, OW] (and, for max, the argmax into ``indices`` when given: int64
    with y's strides) for x [N, C, H, W]; any strides."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    n_pixels = n * oh * ow
    if n_pixels == 0:
        return
    if indices is not None:
        assert indices.stride() == y.stride() and indices.dtype == torch.int64
    block_p, block_c = tile_config(c, x.device)
    grid = (triton.cdiv(n_pixels, block_p), triton.cdiv(c, block_c))
    torch.library.wrap_triton(_pool_forward_kernel)[grid](
        x, y, indices if indices is not None else y,
        c, h, w, oh, ow, n_pixels,
        *_strides(x), *_strides(y),
        *kernel_size, *stride, *padding, *dilation,
        divisor_override or 0,
        IS_MAX=is_max, STORE_INDICES=indices is not None, COUNT_INCLUDE_PAD=count_include_pad,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=NUM_WARPS,
    )


def pool_backward(
    grad_y: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    *,
    is_max: bool,
    grad_x: torch.Tensor,
    indices: torch.Tensor | None = None,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> None:
    """Writes every element of grad_x [N, C, H, W] from grad_y [N, C, OH, OW] (any strides)
    and, for max, the forward's argmax ``indices``."""
    n, c, h, w = grad_x.shape
    oh, ow = grad_y.shape[2:]
    n_pixels = n * h * w
    if n_pixels == 0:
        return
    block_p, block_c = tile_config(c, grad_x.device)
    grid = (triton.cdiv(n_pixels, block_p), triton.cdiv(c, block_c))
    index_source = indices if indices is not None else grad_y
    torch.library.wrap_triton(_pool_backward_kernel)[grid](
        grad_y, index_source, grad_x,
        c, h, w, oh, ow, n_pixels,
        *_strides(grad_y), *_strides(index_source), *_strides(grad_x),
        *kernel_size, *stride, *padding, *dilation,
        divisor_override or 0,
        IS_MAX=is_max, COUNT_INCLUDE_PAD=count_include_pad,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=NUM_WARPS,
    )


def global_avg_pool_forward(x: torch.Tensor, y: torch.Tensor) -> None:
    """Writes y [N, C, 1, 1], the mean of x [N, C, H, W] (any strides) over H x W."""
    n, c, h, w = x.shape
    if n == 0:
        return
    block_p, block_c = global_tile_config(c, h * w)
    torch.library.wrap_triton(_global_avg_pool_forward_kernel)[(n, triton.cdiv(c, block_c))](
        x, y, c, h, w, *_strides(x), y.stride(0), y.stride(1),
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=NUM_WARPS,
    )


def global_avg_pool_backward(grad_y: torch.Tensor, grad_x: torch.Tensor) -> None:
    """Writes grad_x [N, C, H, W] = grad_y [N, C, 1, 1] / (H * W), broadcast."""
    n, c, h, w = grad_x.shape
    n_pixels = n * h * w
    if n_pixels == 0:
        return
    block_p, block_c = tile_config(c, grad_x.device)
    grid = (triton.cdiv(n_pixels, block_p), triton.cdiv(c, block_c))
    torch.library.wrap_triton(_global_avg_pool_backward_kernel)[grid](
        grad_y, grad_x, c, h, w, n_pixels, grad_y.stride(0), grad_y.stride(1), *_strides(grad_x),
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=NUM_WARPS,
    )


# --------------------------------------------------------------------------- compile check


def compile_variants() -> list[CompileVariant]:
    """Every entry kernel at ResNet's channel counts (64 at the stem's pooling, 2048 before
    the classifier), bfloat16 for sm_90a and sm_80 and float32 for sm_90a: the pooling
    forward (max with the argmax stored, as training runs it, and without, as inference
    does; average with and without counting the padding), its backward (max, average),
    and the global average's forward and backward."""
    bf16, fp32 = torch.bfloat16, torch.float32
    variants = []
    pool_cases = [  # (name, dtype, IS_MAX, STORE_INDICES, COUNT_INCLUDE_PAD, archs)
        ("max_pool2d forward+argmax", bf16, True, True, True, (SM90, SM80)),
        ("max_pool2d forward", fp32, True, False, True, (SM90,)),
        ("avg_pool2d forward", bf16, False, False, True, (SM90, SM80)),
        ("avg_pool2d forward exclude-pad", fp32, False, False, False, (SM90,)),
    ]
    block_p, block_c = tile_config(64)
    for name, dtype, is_max, store_indices, count_pad, archs in pool_cases:
        x = "*" + triton_type(dtype)
        variants.append(CompileVariant(
            name=f"{name} {triton_type(dtype)} C=64", kernel="_pool_forward_kernel",
            types=dict(X=x, Y=x, Indices="*i64" if store_indices else x),
            constexprs=dict(IS_MAX=is_max, STORE_INDICES=store_indices, COUNT_INCLUDE_PAD=count_pad,
                            BLOCK_P=block_p, BLOCK_C=block_c),
            num_warps=NUM_WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=archs,
        ))
    for op, dtype, is_max, archs in (("max_pool2d", bf16, True, (SM90, SM80)), ("max_pool2d", fp32, True, (SM90,)),
                                     ("avg_pool2d", bf16, False, (SM90, SM80)), ("avg_pool2d", fp32, False, (SM90,))):
        x = "*" + triton_type(dtype)
        variants.append(CompileVariant(
            name=f"{op} backward {triton_type(dtype)} C=64", kernel="_pool_backward_kernel",
            types=dict(DY=x, Indices="*i64" if is_max else x, DX=x),
            constexprs=dict(IS_MAX=is_max, COUNT_INCLUDE_PAD=True, BLOCK_P=block_p, BLOCK_C=block_c),
            num_warps=NUM_WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=archs,
        ))
    channels, plane = 2048, 7 * 7
    forward_p, forward_c = global_tile_config(channels, plane)
    backward_p, backward_c = tile_config(channels)
    for dtype, archs in ((bf16, (SM90, SM80)), (fp32, (SM90,))):
        x = "*" + triton_type(dtype)
        variants.append(CompileVariant(
            name=f"adaptive_avg_pool2d 1x1 forward {triton_type(dtype)} C={channels} HxW={plane}",
            kernel="_global_avg_pool_forward_kernel", types=dict(X=x, Y=x),
            constexprs=dict(BLOCK_P=forward_p, BLOCK_C=forward_c),
            num_warps=NUM_WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=archs,
        ))
        variants.append(CompileVariant(
            name=f"adaptive_avg_pool2d 1x1 backward {triton_type(dtype)} C={channels}",
            kernel="_global_avg_pool_backward_kernel", types=dict(DY=x, DX=x),
            constexprs=dict(BLOCK_P=backward_p, BLOCK_C=backward_c),
            num_warps=NUM_WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=archs,
        ))
    return variants
