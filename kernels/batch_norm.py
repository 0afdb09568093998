"""Triton kernels of batch normalization with a fused residual add and activation,

    y = act((x - mean) * invstd * weight + bias + residual),

statistics per channel over the N * (spatial) rows of each channel.

Layout. Every tensor is addressed as [N, C, P] (P = the product of the spatial dims)
through three strides, so channels_last (the native layout: channel stride 1), NCHW
and strided views all work without a copy; when each tensor's images follow one another
at the pixel stride (channels_last, or any layout with N = 1) the launcher merges N into
P, so there is one run of N * P rows. Work is cut into [BLOCK_P, BLOCK_C] tiles of
BLOCK_P pixels of one image by BLOCK_C channels; the tile's long side follows the
input's smaller stride (channels for channels_last, pixels for NCHW), so loads are
contiguous in either layout.

Training forward (three launches plus the running-statistics update):

1. ``_partial_statistics_kernel``, one pass over x: ``programs`` programs per channel
   block each own a contiguous run of tiles. Values are shifted by the channel's first
   value (the same shift in every program), so sums are of numbers of the size of the
   spread, not of the mean. A tile's mean and centred sum of squares are computed in
   registers (two passes over the tile in registers, one over memory); tiles are
   folded into the program's (count, mean, M2) with Chan et al.'s parallel formula
   ``M2 = M2_a + M2_b + delta^2 n_a n_b / (n_a + n_b)``. All in float32. Accuracy: the
   variance to a few float32 roundings relative to itself, whatever the mean (a sum of
   squares would lose it to cancellation once |mean| >> std; tested at |mean| = 1e4 std);
   the mean to a few roundings relative to |mean|.
2. ``_finalize_statistics_kernel`` folds the programs' partials, a block of partial rows
   at a time (the many-set form of the same formula), into mean, invstd = 1 / sqrt(var +
   eps) (biased var, float32) and the unbiased variance M2 / (n - 1) for the running
   update.
3. ``_forward_kernel`` (a tile per program): y = act((x - mean) * invstd * w + b + r).
4. ``_running_stats_kernel`` (the op's wrapper calls it, outside autograd):
   running = (1 - momentum) * running + momentum * batch statistic, in float32 (float64
   for float64 buffers), stored in the buffers' dtype.

Evaluation forward: ``_forward_kernel`` alone, reading running_mean / running_var
(``STATS_FROM_RUNNING``); the first program of each channel block also writes the float32
mean and invstd that the backward reads.

Backward: ``_backward_kernel`` recomputes xhat = (x - mean) * invstd and, with an
activation, the pre-activation u = xhat * w + b + r (x, mean, invstd, r saved: never the
normalised output), then dz = dy * act'(u). With dxhat = dz * w:

    grad_residual = dz,  grad_bias = sum dz,  grad_weight = sum dz * xhat,
    grad_x = invstd * w * (dz - [sum dz + xhat * sum dz * xhat] / M)   (training)
    grad_x = invstd * w * dz                                            (evaluation)

Evaluation takes one launch (dx, dr and the column sums together). Training needs the
sums before dx, so the same kernel runs twice: a reducing pass (column sums; it writes
grad_residual = dz too when asked, and the second pass then reads dz from it instead of
recomputing it from dy, x and r) and a pass writing dx. Column sums are per-program
float32 partials ([programs, C], no atomics: deterministic for a given device) summed by
the caller.

Bytes per element of x (size s): training forward 3s (+ s with a residual): x twice, y
once; training backward 5s (x, dy twice; dx), 7s with a residual and an activation
(x, dy, r; dr; x, dz; dx); evaluation forward 2s (+ s), backward 3s (+ 2s).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import triton
import triton.language as tl

from fusednn import _runtime
from fusednn.kernels import SM80, SM90, CompileVariant, _rows, triton_type
from fusednn.kernels._activation import ACTIVATION_CODES, activate, activation_derivative

# Elements of a [BLOCK_P, BLOCK_C] tile: 16 per thread at 4 warps on a GPU (at 32 the
# backward's reducing pass, which holds x, dy, r, xhat and dz, spilled). The interpreter
# takes smaller tiles, so that the test shapes span several tiles and programs (the
# in-program Chan fold and the cross-program one both run).
TILE_ELEMENTS = 2048
INTERPRETER_TILE_ELEMENTS = 1024
# The widest channel block of a channels-fast tile (128 bf16 channels: 256 contiguous bytes).
MAX_BLOCK_C = 128
# The longest pixel block of a pixels-fast (NCHW) tile.
MAX_BLOCK_P = 256
FORWARD_WARPS = 4
BACKWARD_WARPS = 4
# Programs of the launches whose programs each own a run of tiles (statistics, backward),
# per SM in all: several waves of the two to six programs an SM holds, so the last wave
# is short. Each writes a [C] partial row (a few MB at most, summed afterwards).
PROGRAMS_PER_SM = 8
# The finalize kernel's tile of partial rows, and the channel block of the [C] kernels.
FINALIZE_BLOCK_PROGRAMS = 64
FINALIZE_BLOCK_C = 32
UPDATE_BLOCK_C = 128


# --------------------------------------------------------------------------- device helpers
#
# Triton's interpreter re-patches the language on every call of a @triton.jit function
# (milliseconds each; tl.zeros and tl.sum are such functions, tl.full is not), so the
# per-tile addressing is written inline in the loops and zeros come from tl.full; the
# helpers below run once per program or tile.
#
# Tile t of a program's channel block covers image n = t // tiles_per_image, pixels
# p = (t % tiles_per_image) * BLOCK_P + [0, BLOCK_P); element (p, c) of a tensor T sits at
# T + n * stride_tn + p * stride_tp + c * stride_tc.


@triton.jit
def _weight_and_bias(W, B, cols, col_mask, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """float32 [1, BLOCK_C] rows of weight (1 without) and bias (0 without)."""
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    else:
        w = tl.full([1, cols.shape[0]], 1.0, tl.float32)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    else:
        b = tl.full([1, cols.shape[0]], 0.0, tl.float32)
    return w, b


@triton.jit
def _chan_merge(count, mean, m2, other_count, other_mean, other_m2):
    """Chan et al.'s parallel update: the (count, mean, M2) of two disjoint sets together.
    Counts are float32 scalars; an empty set on either side leaves the other unchanged."""
    total = count + other_count
    delta = other_mean - mean
    fraction = other_count / tl.maximum(total, 1.0)
    mean = mean + delta * fraction
    m2 = m2 + other_m2 + delta * delta * (count * fraction)
    return total, mean, m2


# --------------------------------------------------------------------------- statistics


@triton.jit
def _partial_statistics_kernel(
    X,  # [N, C, P] strided
    PartMean, PartM2,  # [programs, C] float32: mean of x - shift, and M2
    PartCount,  # [programs] float32
    C, P, tiles_per_image, tiles_per_program, total_tiles,
    stride_xn, stride_xc, stride_xp,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    program = tl.program_id(0)
    first = program.to(tl.int64) * tiles_per_program
    last = tl.minimum(first + tiles_per_program, total_tiles)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    x_cols = cols.to(tl.int64)[None, :] * stride_xc
    # every program shifts by the channel's first value: sums of values near the mean lose
    # nothing to a large mean
    shift = tl.load(X + x_cols, mask=col_mask[None, :], other=0.0).to(tl.float32)
    count = tl.full([], 0.0, tl.float32)
    mean = tl.full([BLOCK_C], 0.0, tl.float32)
    m2 = tl.full([BLOCK_C], 0.0, tl.float32)
    for t in range(first, last):
        n = t // tiles_per_image
        p0 = (t - n * tiles_per_image) * BLOCK_P
        p = p0 + tl.arange(0, BLOCK_P)
        mask = (p < P)[:, None] & col_mask[None, :]
        x = tl.load(X + n * stride_xn + p[:, None] * stride_xp + x_cols, mask=mask, other=0.0)
        x = tl.where(mask, x.to(tl.float32) - shift, 0.0)
        # the tile's own mean and centred sum of squares, exact in registers; then Chan's fold
        tile_count = tl.minimum(P - p0, BLOCK_P).to(tl.float32)
        tile_mean = tl.sum(x, axis=0) / tile_count
        centred = tl.where(mask, x - tile_mean[None, :], 0.0)
        count, mean, m2 = _chan_merge(count, mean, m2, tile_count, tile_mean, tl.sum(centred * centred, axis=0))
    tl.store(PartMean + program * C + cols, mean, mask=col_mask)
    tl.store(PartM2 + program * C + cols, m2, mask=col_mask)
    if tl.program_id(1) == 0:
        tl.store(PartCount + program, count)


@triton.jit
def _finalize_statistics_kernel(
    X,  # [N, C, P] strided: the shift is its first value per channel
    PartMean, PartM2, PartCount,  # [programs, C], [programs, C], [programs] float32
    Mean, Invstd, UnbiasedVar,  # [C] float32
    C, programs, eps, stride_xc,
    BLOCK_PROGRAMS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # BLOCK_PROGRAMS partials at a time: their counts, means and M2 fold into one set with
    # the many-set form of Chan's formula (M2 = sum M2_i + sum n_i (mean_i - mean)^2),
    # which then folds into the running total. Loads of a block are independent, so the
    # loop waits on memory once per block, not once per program.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    count = tl.full([], 0.0, tl.float32)
    mean = tl.full([BLOCK_C], 0.0, tl.float32)
    m2 = tl.full([BLOCK_C], 0.0, tl.float32)
    for start in range(0, programs, BLOCK_PROGRAMS):
        rows = start + tl.arange(0, BLOCK_PROGRAMS)
        row_mask = rows < programs
        mask = row_mask[:, None] & col_mask[None, :]
        offsets = rows[:, None] * C + cols[None, :]
        counts = tl.load(PartCount + rows, mask=row_mask, other=0.0)
        means = tl.load(PartMean + offsets, mask=mask, other=0.0)
        block_count = tl.sum(counts, axis=0)
        block_mean = tl.sum(counts[:, None] * means, axis=0) / tl.maximum(block_count, 1.0)
        spread = tl.where(mask, means - block_mean[None, :], 0.0)
        block_m2 = tl.sum(tl.load(PartM2 + offsets, mask=mask, other=0.0) + counts[:, None] * spread * spread, axis=0)
        count, mean, m2 = _chan_merge(count, mean, m2, block_count, block_mean, block_m2)
    shift = tl.load(X + cols.to(tl.int64) * stride_xc, mask=col_mask, other=0.0).to(tl.float32)
    eps = tl.cast(eps, tl.float32)
    invstd = 1.0 / tl.sqrt_rn(m2 / count + eps)
    tl.store(Mean + cols, shift + mean, mask=col_mask)
    tl.store(Invstd + cols, invstd, mask=col_mask)
    tl.store(UnbiasedVar + cols, m2 / (count - 1.0), mask=col_mask)


@triton.jit
def _running_stats_kernel(
    RunningMean, RunningVar,  # [C] updated in place, any float dtype
    Mean, UnbiasedVar,  # [C] float32 batch statistics
    C, momentum,
    BLOCK_C: tl.constexpr,
):
    # running = momentum * batch + (1 - momentum) * running (torch's order), in float32, or
    # float64 for a float64 buffer
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cols < C
    m = tl.cast(momentum, tl.float32)
    running_mean = tl.load(RunningMean + cols, mask=mask, other=0.0)
    running_var = tl.load(RunningVar + cols, mask=mask, other=0.0)
    mean = tl.load(Mean + cols, mask=mask, other=0.0)
    var = tl.load(UnbiasedVar + cols, mask=mask, other=0.0)
    if RunningMean.dtype.element_ty == tl.float64:
        new_mean = m.to(tl.float64) * mean.to(tl.float64) + (1.0 - m.to(tl.float64)) * running_mean
    else:
        new_mean = m * mean + (1.0 - m) * running_mean.to(tl.float32)
    if RunningVar.dtype.element_ty == tl.float64:
        new_var = m.to(tl.float64) * var.to(tl.float64) + (1.0 - m.to(tl.float64)) * running_var
    else:
        new_var = m * var + (1.0 - m) * running_var.to(tl.float32)
    tl.store(RunningMean + cols, new_mean.to(RunningMean.dtype.element_ty), mask=mask)
    tl.store(RunningVar + cols, new_var.to(RunningVar.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- forward


@triton.jit
def _forward_kernel(
    X, R, Y,  # [N, C, P] strided: input, residual (if HAS_RESIDUAL), output
    Mean, Invstd,  # [C] float32: read, or (STATS_FROM_RUNNING) written by the first row of programs
    RunningMean, RunningVar,  # [C] (only if STATS_FROM_RUNNING)
    W, B,  # [C] (each only if given)
    C, P, tiles_per_image, eps,
    stride_xn, stride_xc, stride_xp, stride_rn, stride_rc, stride_rp, stride_yn, stride_yc, stride_yp,
    STATS_FROM_RUNNING: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    col_offsets = cols.to(tl.int64)[None, :]
    n = t // tiles_per_image
    p = (t - n * tiles_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = (p < P)[:, None] & col_mask[None, :]
    if STATS_FROM_RUNNING:
        mean = tl.load(RunningMean + cols, mask=col_mask, other=0.0).to(tl.float32)
        var = tl.load(RunningVar + cols, mask=col_mask, other=1.0).to(tl.float32)
        invstd = 1.0 / tl.sqrt_rn(var + tl.cast(eps, tl.float32))
        if t == 0:
            tl.store(Mean + cols, mean, mask=col_mask)
            tl.store(Invstd + cols, invstd, mask=col_mask)
    else:
        mean = tl.load(Mean + cols, mask=col_mask, other=0.0)
        invstd = tl.load(Invstd + cols, mask=col_mask, other=0.0)
    w, b = _weight_and_bias(W, B, cols, col_mask, HAS_WEIGHT, HAS_BIAS)
    x = tl.load(X + n * stride_xn + p[:, None] * stride_xp + col_offsets * stride_xc, mask=mask, other=0.0)
    u = (x.to(tl.float32) - mean[None, :]) * (invstd[None, :] * w) + b
    if HAS_RESIDUAL:
        r = tl.load(R + n * stride_rn + p[:, None] * stride_rp + col_offsets * stride_rc, mask=mask, other=0.0)
        u += r.to(tl.float32)
    if ACT != 0:
        u = activate(u, ACT)
    tl.store(Y + n * stride_yn + p[:, None] * stride_yp + col_offsets * stride_yc, u.to(Y.dtype.element_ty),
             mask=mask)


# --------------------------------------------------------------------------- backward


@triton.jit
def _backward_kernel(
    DY, X, R,  # [N, C, P] strided: output gradient (or dz, see RECOMPUTE_DZ), input, residual
    DZ, DX,  # [N, C, P] strided outputs: grad of the residual = dz (if WRITE_DZ), grad of x (if WRITE_DX)
    Mean, Invstd, W, B,  # [C]
    SumDZ, SumDZX,  # [C] float32 column sums of dz and dz * xhat (read if CENTER)
    PartDZ, PartDZX,  # [programs, C] float32 partial column sums (written if SUMS)
    C, P, tiles_per_image, tiles_per_program, total_tiles, inv_count,
    stride_dyn, stride_dyc, stride_dyp, stride_xn, stride_xc, stride_xp, stride_rn, stride_rc, stride_rp,
    stride_dzn, stride_dzc, stride_dzp, stride_dxn, stride_dxc, stride_dxp,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,
    RECOMPUTE_DZ: tl.constexpr, WRITE_DZ: tl.constexpr, WRITE_DX: tl.constexpr, CENTER: tl.constexpr,
    SUMS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dz = dy * act'(u) when RECOMPUTE_DZ (an activation), else DY holds dz already (dy
    # itself without an activation, or the dz an earlier pass wrote).
    program = tl.program_id(0)
    first = program.to(tl.int64) * tiles_per_program
    last = tl.minimum(first + tiles_per_program, total_tiles)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mean = tl.load(Mean + cols, mask=col_mask, other=0.0)[None, :]
    invstd = tl.load(Invstd + cols, mask=col_mask, other=0.0)[None, :]
    w, b = _weight_and_bias(W, B, cols, col_mask, HAS_WEIGHT, HAS_BIAS)
    if CENTER:
        mean_dz = (tl.load(SumDZ + cols, mask=col_mask, other=0.0) * inv_count)[None, :]
        mean_dzx = (tl.load(SumDZX + cols, mask=col_mask, other=0.0) * inv_count)[None, :]
    # the loop-invariant column offsets of each tensor
    col_offsets = cols.to(tl.int64)[None, :]
    dy_cols, x_cols, r_cols = col_offsets * stride_dyc, col_offsets * stride_xc, col_offsets * stride_rc
    dz_cols, dx_cols = col_offsets * stride_dzc, col_offsets * stride_dxc
    sum_dz = tl.full([BLOCK_C], 0.0, tl.float32)
    sum_dzx = tl.full([BLOCK_C], 0.0, tl.float32)
    for t in range(first, last):
        n = t // tiles_per_image
        p = (t - n * tiles_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask = (p < P)[:, None] & col_mask[None, :]
        x = tl.load(X + n * stride_xn + p[:, None] * stride_xp + x_cols, mask=mask, other=0.0)
        xhat = (x.to(tl.float32) - mean) * invstd
        dz = tl.load(DY + n * stride_dyn + p[:, None] * stride_dyp + dy_cols, mask=mask, other=0.0)
        dz = dz.to(tl.float32)
        if RECOMPUTE_DZ:
            u = xhat * w + b
            if HAS_RESIDUAL:
                r = tl.load(R + n * stride_rn + p[:, None] * stride_rp + r_cols, mask=mask,
                            other=0.0)
                u += r.to(tl.float32)
            dz = dz * activation_derivative(u, ACT)
        if WRITE_DZ:
            tl.store(DZ + n * stride_dzn + p[:, None] * stride_dzp + dz_cols,
                     dz.to(DZ.dtype.element_ty), mask=mask)
        if SUMS:
            # masked loads give dz = 0 off the tile, so the padding adds nothing
            sum_dz += tl.sum(dz, axis=0)
            sum_dzx += tl.sum(dz * xhat, axis=0)
        if WRITE_DX:
            if CENTER:
                dz = dz - (mean_dz + xhat * mean_dzx)
            tl.store(DX + n * stride_dxn + p[:, None] * stride_dxp + dx_cols,
                     (dz * (invstd * w)).to(DX.dtype.element_ty), mask=mask)
    if SUMS:
        tl.store(PartDZ + program * C + cols, sum_dz, mask=col_mask)
        tl.store(PartDZX + program * C + cols, sum_dzx, mask=col_mask)


# --------------------------------------------------------------------------- launch helpers


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a launch walks tensors addressed as [N, C, P]: ``images`` x ``pixels`` rows
    (N x P, or 1 x N * P when every tensor's images follow one another at its pixel
    stride), the tile and, per tensor, its (image, channel, pixel) strides."""

    images: int
    pixels: int
    channels: int
    merged: bool
    block_p: int
    block_c: int

    @property
    def tiles_per_image(self) -> int:
        return triton.cdiv(self.pixels, self.block_p)

    @property
    def total_tiles(self) -> int:
        return self.images * self.tiles_per_image

    @property
    def channel_blocks(self) -> int:
        return triton.cdiv(self.channels, self.block_c)

    def strides(self, t: Optional[torch.Tensor]) -> tuple[int, int, int]:
        """(image, channel, pixel) strides of ``t`` [N, C, P] (zeros for an absent tensor)."""
        if t is None:
            return 0, 0, 0
        stride_n, stride_c, stride_p = t.stride()
        if t.shape[2] == 1:  # a single pixel: the next row is the next image
            stride_p = stride_n
        return (0 if self.merged else stride_n), stride_c, stride_p


def _mergeable(t: torch.Tensor) -> bool:
    n, _c, p = t.shape
    return n == 1 or p == 1 or t.stride(0) == p * t.stride(2)


def geometry(x: torch.Tensor, *others: Optional[torch.Tensor]) -> Geometry:
    """The Geometry of a launch over x [N, C, P] and ``others`` (same shape or None). The
    tile's long side follows x's smaller stride: channels (channels_last) or pixels (NCHW)."""
    images, channels, pixels = x.shape
    tensors = [x] + [t for t in others if t is not None]
    merged = all(_mergeable(t) for t in tensors)
    if merged:
        images, pixels = 1, images * pixels
    tile = INTERPRETER_TILE_ELEMENTS if x.device.type == "cpu" else TILE_ELEMENTS
    pixel_stride = x.stride(0) if x.shape[2] == 1 else x.stride(2)  # a single pixel: rows are images
    pixels_fast = pixels > 1 and abs(pixel_stride) < abs(x.stride(1))  # NCHW, or strided pixels of NCHW
    padded_pixels, padded_channels = triton.next_power_of_2(max(pixels, 1)), triton.next_power_of_2(max(channels, 1))
    if pixels_fast:
        block_p = min(padded_pixels, MAX_BLOCK_P, tile)
        block_c = min(padded_channels, max(1, tile // block_p))
    else:
        block_c = min(padded_channels, MAX_BLOCK_C, tile)
        block_p = min(padded_pixels, max(1, tile // block_c))
    return Geometry(images, pixels, channels, merged, block_p, block_c)


def _programs(device: torch.device, g: Geometry) -> tuple[int, int]:
    """(programs per channel block, tiles per program) of a launch whose programs each own
    a contiguous run of tiles: PROGRAMS_PER_SM per SM in all (the interpreter: two)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        wanted = max(1, _rows.multiprocessor_count(index) * PROGRAMS_PER_SM // g.channel_blocks)
    else:
        wanted = _rows.INTERPRETER_PROGRAMS
    programs = max(1, min(g.total_tiles, wanted))
    tiles_per_program = triton.cdiv(g.total_tiles, programs)
    return triton.cdiv(g.total_tiles, tiles_per_program), tiles_per_program


def statistics(x: torch.Tensor, eps: float, *, mean: torch.Tensor, invstd: torch.Tensor,
               unbiased_var: torch.Tensor) -> None:
    """Batch statistics of x [N, C, P] (any strides), one pass over x: writes mean, invstd =
    1 / sqrt(biased var + eps) and the unbiased variance, [C] float32 each. No rows: zeros."""
    g = geometry(x)
    if g.channels == 0:
        return
    if g.total_tiles == 0:
        for out in (mean, invstd, unbiased_var):
            out.zero_()
        return
    programs, tiles_per_program = _programs(x.device, g)
    part_mean = _runtime.empty((programs, g.channels), dtype=torch.float32, device=x.device)
    part_m2 = _runtime.empty((programs, g.channels), dtype=torch.float32, device=x.device)
    part_count = _runtime.empty((programs,), dtype=torch.float32, device=x.device)
    torch.library.wrap_triton(_partial_statistics_kernel)[(programs, g.channel_blocks)](
        x, part_mean, part_m2, part_count,
        g.channels, g.pixels, g.tiles_per_image, tiles_per_program, g.total_tiles, *g.strides(x),
        BLOCK_P=g.block_p, BLOCK_C=g.block_c, num_warps=FORWARD_WARPS,
    )
    block_c = min(triton.next_power_of_2(g.channels), FINALIZE_BLOCK_C)
    block_programs = min(triton.next_power_of_2(programs), FINALIZE_BLOCK_PROGRAMS)
    torch.library.wrap_triton(_finalize_statistics_kernel)[(triton.cdiv(g.channels, block_c),)](
        x, part_mean, part_m2, part_count, mean, invstd, unbiased_var, g.channels, programs, eps, x.stride(1),
        BLOCK_PROGRAMS=block_programs, BLOCK_C=block_c, num_warps=FORWARD_WARPS,
    )


def forward(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
            bias: Optional[torch.Tensor], activation: Optional[str], *, y: torch.Tensor, mean: torch.Tensor,
            invstd: torch.Tensor, running_mean: Optional[torch.Tensor] = None,
            running_var: Optional[torch.Tensor] = None, eps: float = 0.0) -> None:
    """y = act((x - mean) * invstd * weight + bias + residual) over [N, C, P] tensors (any
    strides; weight, bias [C] contiguous or None). With ``running_mean`` / ``running_var``
    (evaluation) the statistics come from them and eps, and mean / invstd are written;
    otherwise mean / invstd are read."""
    g = geometry(x, residual, y)
    from_running = running_mean is not None
    if g.channels == 0:
        return
    if g.total_tiles == 0:
        if from_running:  # no rows to launch a program for: the statistics alone
            mean.copy_(running_mean)
            invstd.copy_(torch.rsqrt(running_var.float() + eps))
        return
    torch.library.wrap_triton(_forward_kernel)[(g.total_tiles, g.channel_blocks)](
        x, residual if residual is not None else x, y, mean, invstd,
        running_mean if from_running else mean, running_var if from_running else invstd,
        weight if weight is not None else x, bias if bias is not None else x,
        g.channels, g.pixels, g.tiles_per_image, eps, *g.strides(x), *g.strides(residual), *g.strides(y),
        STATS_FROM_RUNNING=from_running, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None, ACT=ACTIVATION_CODES[activation],
        BLOCK_P=g.block_p, BLOCK_C=g.block_c, num_warps=FORWARD_WARPS,
    )


def backward(grad_y: torch.Tensor, x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
             bias: Optional[torch.Tensor], mean: torch.Tensor, invstd: torch.Tensor, activation: Optional[str],
             training: bool, *, grad_x: Optional[torch.Tensor], grad_residual: Optional[torch.Tensor], sums: bool,
             ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The backward over [N, C, P] tensors (any strides): writes grad_x and grad_residual
    (= dz) where given and returns the float32 column sums (sum dz, sum dz * xhat) [C] (the
    gradients of bias and weight) when ``sums``, else (None, None). ``residual`` is read
    only with an activation; training subtracts the batch statistics' terms from grad_x."""
    g = geometry(x, grad_y, residual, grad_x, grad_residual)
    recompute = activation is not None
    center = training and grad_x is not None
    reduce = sums or center
    device = x.device
    if g.total_tiles == 0 or g.channels == 0:
        zeros = torch.zeros(g.channels, dtype=torch.float32, device=device)
        return (zeros, zeros.clone()) if sums else (None, None)

    def launch(dy, recompute_dz, write_dz, write_dx, with_sums, sum_dz=None, sum_dzx=None):
        programs, tiles_per_program = _programs(device, g)
        part_dz = part_dzx = None
        if with_sums:
            part_dz = _runtime.empty((programs, g.channels), dtype=torch.float32, device=device)
            part_dzx = _runtime.empty((programs, g.channels), dtype=torch.float32, device=device)
        dz_out = grad_residual if write_dz else None
        dx_out = grad_x if write_dx else None
        torch.library.wrap_triton(_backward_kernel)[(programs, g.channel_blocks)](
            dy, x, residual if residual is not None else x,
            dz_out if dz_out is not None else dy, dx_out if dx_out is not None else dy,
            mean, invstd, weight if weight is not None else x, bias if bias is not None else x,
            sum_dz if sum_dz is not None else mean, sum_dzx if sum_dzx is not None else mean,
            part_dz if part_dz is not None else mean, part_dzx if part_dzx is not None else mean,
            g.channels, g.pixels, g.tiles_per_image, tiles_per_program, g.total_tiles,
            1.0 / (g.images * g.pixels),
            *g.strides(dy), *g.strides(x), *g.strides(residual), *g.strides(dz_out), *g.strides(dx_out),
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
            ACT=ACTIVATION_CODES[activation], RECOMPUTE_DZ=recompute_dz, WRITE_DZ=write_dz, WRITE_DX=write_dx,
            CENTER=sum_dz is not None, SUMS=with_sums, BLOCK_P=g.block_p, BLOCK_C=g.block_c,
            num_warps=BACKWARD_WARPS,
        )
        return (part_dz.sum(0), part_dzx.sum(0)) if with_sums else (None, None)

    write_dz = grad_residual is not None
    sum_dz, sum_dzx = None, None
    if reduce or write_dz or (grad_x is not None and not center):
        sum_dz, sum_dzx = launch(grad_y, recompute, write_dz, grad_x is not None and not center, reduce)
    if center:
        # dz from the first pass where it wrote it, else recomputed
        dz_written = write_dz and recompute
        launch(grad_residual if dz_written else grad_y, recompute and not dz_written, False, True, False,
               sum_dz, sum_dzx)
    return (sum_dz, sum_dzx) if sums else (None, None)


def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor,
                         unbiased_var: torch.Tensor, momentum: float) -> None:
    """running = (1 - momentum) * running + momentum * batch statistic, in place ([C] contiguous)."""
    channels = running_mean.numel()
    if channels == 0:
        return
    block_c = min(triton.next_power_of_2(channels), UPDATE_BLOCK_C)
    torch.library.wrap_triton(_running_stats_kernel)[(triton.cdiv(channels, block_c),)](
        running_mean, running_var, mean, unbiased_var, channels, momentum, BLOCK_C=block_c, num_warps=1,
    )


# --------------------------------------------------------------------------- compile check


def compile_variants() -> list[CompileVariant]:
    """ResNet's case first, bfloat16 channels_last with C = 256 (for sm_90a and sm_80): the
    training forward (statistics, finalize, apply with relu + residual), the backward's
    reducing pass (sums, writing dz) and its input-gradient pass; then float32 (sm_90a): the
    evaluation forward (statistics from the running ones) and the single-pass evaluation
    backward with gelu and a residual, at their heaviest; and the running-statistics
    update. Eight variants, thirteen builds; the [C] kernels take under a second each."""
    bf16, fp32 = torch.bfloat16, torch.float32
    both = (SM90, SM80)
    variants = []

    # channels_last with C = 256: the tile geometry() picks on a GPU
    tile = dict(BLOCK_P=TILE_ELEMENTS // MAX_BLOCK_C, BLOCK_C=MAX_BLOCK_C)

    def add(name, kernel, types, constexprs, archs, num_warps):
        variants.append(CompileVariant(name=f"batch_norm {name}", kernel=kernel.__name__, types=types,
                                       constexprs=constexprs, num_warps=num_warps, num_stages=3, archs=archs))

    f32, b16 = "*fp32", "*bf16"
    add("statistics bf16 C=256", _partial_statistics_kernel, dict(X=b16, PartMean=f32, PartM2=f32, PartCount=f32),
        tile, both, FORWARD_WARPS)
    add("finalize statistics", _finalize_statistics_kernel,
        dict(X=b16, PartMean=f32, PartM2=f32, PartCount=f32, Mean=f32, Invstd=f32, UnbiasedVar=f32, eps="fp32"),
        dict(BLOCK_PROGRAMS=FINALIZE_BLOCK_PROGRAMS, BLOCK_C=FINALIZE_BLOCK_C), (SM90,), FORWARD_WARPS)
    for dtype, activation, archs in ((bf16, "relu", both), (fp32, "gelu", (SM90,))):
        t = "*" + triton_type(dtype)
        act = ACTIVATION_CODES[activation]
        training = dtype == bf16  # float32: the evaluation variants (statistics from the running ones)
        mode = "" if training else " evaluation"
        add(f"forward{mode} {triton_type(dtype)} {activation} residual", _forward_kernel,
            dict(X=t, R=t, Y=t, Mean=f32, Invstd=f32, RunningMean=f32, RunningVar=f32, W=f32, B=f32, eps="fp32"),
            dict(STATS_FROM_RUNNING=not training, HAS_WEIGHT=True, HAS_BIAS=True, HAS_RESIDUAL=True, ACT=act,
                 **tile),
            archs, FORWARD_WARPS)
        backward_types = dict(DY=t, X=t, R=t, DZ=t, DX=t, Mean=f32, Invstd=f32, W=f32, B=f32, SumDZ=f32,
                              SumDZX=f32, PartDZ=f32, PartDZX=f32, inv_count="fp32")
        flags = dict(HAS_WEIGHT=True, HAS_BIAS=True, HAS_RESIDUAL=True, ACT=act, **tile)
        if training:
            add(f"backward {triton_type(dtype)} {activation} residual: sums and dz", _backward_kernel, backward_types,
                dict(flags, RECOMPUTE_DZ=True, WRITE_DZ=True, WRITE_DX=False, CENTER=False, SUMS=True), archs,
                BACKWARD_WARPS)
            add(f"backward {triton_type(dtype)}: centred input gradient", _backward_kernel, backward_types,
                dict(flags, RECOMPUTE_DZ=False, WRITE_DZ=False, WRITE_DX=True, CENTER=True, SUMS=False),
                archs, BACKWARD_WARPS)
        else:
            add(f"backward{mode} {triton_type(dtype)} {activation} residual: one pass", _backward_kernel,
                backward_types,
                dict(flags, RECOMPUTE_DZ=True, WRITE_DZ=True, WRITE_DX=True, CENTER=False, SUMS=True), archs,
                BACKWARD_WARPS)
    add("running statistics update", _running_stats_kernel,
        dict(RunningMean=f32, RunningVar=f32, Mean=f32, UnbiasedVar=f32, momentum="fp32"),
        dict(BLOCK_C=UPDATE_BLOCK_C), (SM90,), 1)
    return variants
