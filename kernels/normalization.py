"""Triton kernels for LayerNorm and RMSNorm over the last dimension of a [M, N] matrix.

One forward and one backward kernel serve both norms; ``IS_RMS`` selects RMSNorm (no
mean, no bias) and ``HAS_WEIGHT`` / ``HAS_BIAS`` / ``WEIGHT_GRAD`` / ``BIAS_GRAD`` drop
the unused loads, stores and accumulators at compile time.

Layout: rows have unit column stride (the caller makes them so); the row stride is
free, so a column slice of a wider tensor needs no copy. Statistics (mean, rstd) and
all arithmetic are in the accumulator dtype: float32, or float64 for float64 inputs.

Forward: when a row fits in registers (``N <= FORWARD_MAX_FUSED``) it is loaded once
(``SINGLE_BLOCK``), ``BLOCK_M`` rows per program as a [BLOCK_M, BLOCK_N] tile of about
``_rows.TILE_ELEMENTS`` elements (narrow rows share a program); wider rows take a program
each and are walked in ``LOOPED_BLOCK`` column blocks three times (mean, centred
variance, output; the re-reads mostly hit L2).
Bytes per element: read x + write y (+ weight and bias once per row, cached).

Backward: ``programs`` programs (a few per SM) each own a contiguous block of rows.
A program computes dx a [BLOCK_M, BLOCK_N] tile of rows at a time and accumulates its
share of dweight / dbias in float32 registers, then writes one partial row; the op sums the [programs, N] partials with
torch. No atomics, so results are deterministic for a given device. Bytes per element:
read x, dy + write dx (the partials add 8 * programs * N bytes per weight gradient).
Rows wider than ``BACKWARD_MAX_FUSED`` loop over column blocks twice per row (reductions,
then dx) and accumulate the partials in their (program-owned) memory rows instead.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusednn import _runtime
from fusednn._validate import accumulate_dtype
from fusednn.kernels import SM80, SM90, TRITON_DEFAULT_STAGES, CompileVariant, _rows, triton_type

# Widest row kept entirely in registers. The backward holds x, dy, w and two
# accumulators per element, so its limit is lower to avoid register spills.
FORWARD_MAX_FUSED = 16384
BACKWARD_MAX_FUSED = 8192
# Column block of the looped (wide-row) variant.
LOOPED_BLOCK = 4096


@triton.jit
def _centered(x, mean, mask, IS_RMS: tl.constexpr):
    """x - mean on valid columns, 0 on padding (RMSNorm does not centre)."""
    if IS_RMS:
        xc = x
    else:
        xc = tl.where(mask, x - mean, 0.0)
    return xc


@triton.jit
def _store_affine(Y, W, B, cols, col_mask, mask, xhat, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """y = xhat * w + b, stored in Y's dtype. ``cols``/``col_mask`` index the weight and bias
    (once per column, also for a tile of rows); ``mask`` guards the store."""
    y = xhat
    if HAS_WEIGHT:
        y = y * tl.load(W + cols, mask=col_mask, other=0.0).to(xhat.dtype)
    if HAS_BIAS:
        y = y + tl.load(B + cols, mask=col_mask, other=0.0).to(xhat.dtype)
    tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_forward_kernel(
    X,  # [M, N] input, unit column stride
    Y,  # [M, N] output, x's dtype
    W,  # [N] weight (unused unless HAS_WEIGHT)
    B,  # [N] bias (unused unless HAS_BIAS)
    Mean,  # [M] accumulator dtype (unused if IS_RMS)
    Rstd,  # [M] accumulator dtype
    stride_x_row,
    stride_y_row,
    M,
    N,
    eps,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
):
    acc_dtype: tl.constexpr = Rstd.dtype.element_ty
    n = tl.cast(N, acc_dtype)
    eps = tl.cast(eps, acc_dtype)
    cols = tl.arange(0, BLOCK_N)

    if SINGLE_BLOCK:
        # BLOCK_M whole rows per program, as a [BLOCK_M, BLOCK_N] tile.
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & (cols < N)[None, :]
        x = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(acc_dtype)
        if IS_RMS:
            mean = 0.0
        else:
            mean = (tl.sum(x, axis=1) / n)[:, None]
            tl.store(Mean + rows[:, None], mean, mask=row_mask[:, None])
        xc = _centered(x, mean, mask, IS_RMS)
        rstd = (1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / n + eps))[:, None]
        tl.store(Rstd + rows[:, None], rstd, mask=row_mask[:, None])
        _store_affine(Y + rows[:, None] * stride_y_row, W, B, cols[None, :], (cols < N)[None, :], mask, xc * rstd,
                      HAS_WEIGHT, HAS_BIAS)
    else:
        # One wide row per program, walked in column blocks.
        row = tl.program_id(0).to(tl.int64)
        X += row * stride_x_row
        Y += row * stride_y_row
        if IS_RMS:
            mean = 0.0
        else:
            row_sum = tl.zeros([BLOCK_N], dtype=acc_dtype)
            for start in range(0, N, BLOCK_N):
                block_cols = start + cols
                row_sum += tl.load(X + block_cols, mask=block_cols < N, other=0.0).to(acc_dtype)
            mean = tl.sum(row_sum, axis=0) / n
        row_sq = tl.zeros([BLOCK_N], dtype=acc_dtype)
        for start in range(0, N, BLOCK_N):
            block_cols = start + cols
            block_mask = block_cols < N
            x = tl.load(X + block_cols, mask=block_mask, other=0.0).to(acc_dtype)
            xc = _centered(x, mean, block_mask, IS_RMS)
            row_sq += xc * xc
        rstd = 1.0 / tl.sqrt(tl.sum(row_sq, axis=0) / n + eps)
        for start in range(0, N, BLOCK_N):
            block_cols = start + cols
            block_mask = block_cols < N
            x = tl.load(X + block_cols, mask=block_mask, other=0.0).to(acc_dtype)
            xc = _centered(x, mean, block_mask, IS_RMS)
            _store_affine(Y, W, B, block_cols, block_mask, block_mask, xc * rstd, HAS_WEIGHT, HAS_BIAS)
        tl.store(Rstd + row, rstd)
        if not IS_RMS:
            tl.store(Mean + row, mean)


@triton.jit
def _load_row_statistics(Mean, Rstd, row, IS_RMS: tl.constexpr):
    rstd = tl.load(Rstd + row)
    if IS_RMS:
        mean = 0.0
    else:
        mean = tl.load(Mean + row)
    return mean, rstd


@triton.jit
def _load_block_grad_terms(X_row, DY_row, W, cols, mask, mean, rstd, IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """Loads one column block of a row (x, dy, weight); returns (xhat, w * dy, dy)."""
    acc_dtype: tl.constexpr = rstd.dtype
    w = 0.0
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=mask, other=0.0).to(acc_dtype)
    x = tl.load(X_row + cols, mask=mask, other=0.0).to(acc_dtype)
    dy = tl.load(DY_row + cols, mask=mask, other=0.0).to(acc_dtype)
    xhat, wdy = _normalized_and_weighted_grad(x, dy, w, mean, rstd, mask, IS_RMS, HAS_WEIGHT)
    return xhat, wdy, dy


@triton.jit
def _normalized_and_weighted_grad(x, dy, w, mean, rstd, mask, IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """xhat = (x - mean) * rstd and w * dy (0 on padding)."""
    xhat = _centered(x, mean, mask, IS_RMS) * rstd
    if HAS_WEIGHT:
        wdy = w * dy
    else:
        wdy = dy
    return xhat, wdy


@triton.jit
def _input_grad(xhat, wdy, rstd, mean_xhat_wdy, mean_wdy, IS_RMS: tl.constexpr):
    """dx = rstd * (w*dy - xhat * mean(xhat*w*dy) - mean(w*dy)); RMSNorm drops the last term."""
    if IS_RMS:
        dx = (wdy - xhat * mean_xhat_wdy) * rstd
    else:
        dx = (wdy - (xhat * mean_xhat_wdy + mean_wdy)) * rstd
    return dx


@triton.jit
def _norm_backward_kernel(
    X,  # [M, N] forward input, unit column stride
    DY,  # [M, N] gradient of y, unit column stride
    DX,  # [M, N] gradient of x (output), x's dtype
    W,  # [N] weight (unused unless HAS_WEIGHT)
    Mean,  # [M] (unused if IS_RMS)
    Rstd,  # [M]
    DW_partial,  # [programs, N] accumulator dtype (unused unless WEIGHT_GRAD)
    DB_partial,  # [programs, N] accumulator dtype (unused unless BIAS_GRAD)
    stride_x_row,
    stride_dy_row,
    stride_dx_row,
    M,
    N,
    rows_per_program,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    WEIGHT_GRAD: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
):
    acc_dtype: tl.constexpr = Rstd.dtype.element_ty
    program = tl.program_id(0).to(tl.int64)
    # 64-bit rows, so row * stride cannot overflow on large inputs.
    row_start = program * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    DW_partial += program * N
    DB_partial += program * N
    n = tl.cast(N, acc_dtype)
    cols = tl.arange(0, BLOCK_N)

    if SINGLE_BLOCK:
        # The program's rows in [BLOCK_M, BLOCK_N] tiles.
        col_mask = cols < N
        w = 0.0
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(acc_dtype)[None, :]
        dw_acc = tl.zeros([BLOCK_N], dtype=acc_dtype)
        db_acc = tl.zeros([BLOCK_N], dtype=acc_dtype)
        for block_start in range(row_start, row_end, BLOCK_M):
            rows = block_start + tl.arange(0, BLOCK_M)
            row_mask = rows < row_end
            mask = row_mask[:, None] & col_mask[None, :]
            rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)[:, None]
            if IS_RMS:
                mean = 0.0
            else:
                mean = tl.load(Mean + rows, mask=row_mask, other=0.0)[:, None]
            x = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(acc_dtype)
            dy = tl.load(DY + rows[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(acc_dtype)
            xhat, wdy = _normalized_and_weighted_grad(x, dy, w, mean, rstd, mask, IS_RMS, HAS_WEIGHT)
            mean_xhat_wdy = (tl.sum(xhat * wdy, axis=1) / n)[:, None]
            mean_wdy = (tl.sum(wdy, axis=1) / n)[:, None]
            dx = _input_grad(xhat, wdy, rstd, mean_xhat_wdy, mean_wdy, IS_RMS)
            tl.store(DX + rows[:, None] * stride_dx_row + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
            if WEIGHT_GRAD:
                dw_acc += tl.sum(dy * xhat, axis=0)
            if BIAS_GRAD:
                db_acc += tl.sum(dy, axis=0)
        if WEIGHT_GRAD:
            tl.store(DW_partial + cols, dw_acc, mask=col_mask)
        if BIAS_GRAD:
            tl.store(DB_partial + cols, db_acc, mask=col_mask)
    else:
        # Wide rows: the partial rows (zero-initialised by the caller) are this
        # program's own, so read-modify-write needs no synchronisation.
        for row in range(row_start, row_end):
            mean, rstd = _load_row_statistics(Mean, Rstd, row, IS_RMS)
            sum_xhat_wdy = tl.zeros([BLOCK_N], dtype=acc_dtype)
            sum_wdy = tl.zeros([BLOCK_N], dtype=acc_dtype)
            for start in range(0, N, BLOCK_N):
                block_cols = start + cols
                block_mask = block_cols < N
                xhat, wdy, dy = _load_block_grad_terms(
                    X + row * stride_x_row, DY + row * stride_dy_row, W, block_cols, block_mask, mean, rstd, IS_RMS,
                    HAS_WEIGHT,
                )
                sum_xhat_wdy += xhat * wdy
                sum_wdy += wdy
            mean_xhat_wdy = tl.sum(sum_xhat_wdy, axis=0) / n
            mean_wdy = tl.sum(sum_wdy, axis=0) / n
            for start in range(0, N, BLOCK_N):
                block_cols = start + cols
                block_mask = block_cols < N
                xhat, wdy, dy = _load_block_grad_terms(
                    X + row * stride_x_row, DY + row * stride_dy_row, W, block_cols, block_mask, mean, rstd, IS_RMS,
                    HAS_WEIGHT,
                )
                dx = _input_grad(xhat, wdy, rstd, mean_xhat_wdy, mean_wdy, IS_RMS)
                tl.store(DX + row * stride_dx_row + block_cols, dx.to(DX.dtype.element_ty), mask=block_mask)
                if WEIGHT_GRAD:
                    dw = tl.load(DW_partial + block_cols, mask=block_mask, other=0.0)
                    tl.store(DW_partial + block_cols, dw + dy * xhat, mask=block_mask)
                if BIAS_GRAD:
                    db = tl.load(DB_partial + block_cols, mask=block_mask, other=0.0)
                    tl.store(DB_partial + block_cols, db + dy, mask=block_mask)


# --------------------------------------------------------------------------- launch helpers


def row_config(n_cols: int, max_fused: int) -> tuple[int, int, bool, int]:
    """(BLOCK_M, BLOCK_N, SINGLE_BLOCK, num_warps) for rows of ``n_cols`` elements (see _rows.row_config)."""
    return _rows.row_config(n_cols, max_fused, LOOPED_BLOCK)


def norm_forward(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    rms: bool,
    y: torch.Tensor,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
) -> None:
    """Writes y [M, N], rstd [M] and (LayerNorm) mean [M] for x [M, N] (unit column stride).

    ``weight`` and ``bias`` are contiguous [N] tensors or None; ``mean`` is None for RMSNorm.
    """
    n_rows, n_cols = x.shape
    if n_rows == 0 or n_cols == 0:
        return
    block_m, block_n, single_block, num_warps = row_config(n_cols, FORWARD_MAX_FUSED)
    torch.library.wrap_triton(_norm_forward_kernel)[(triton.cdiv(n_rows, block_m),)](
        x,
        y,
        weight if weight is not None else x,
        bias if bias is not None else x,
        mean if mean is not None else rstd,
        rstd,
        x.stride(0),
        y.stride(0),
        n_rows,
        n_cols,
        eps,
        IS_RMS=rms,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        SINGLE_BLOCK=single_block,
        num_warps=num_warps,
    )


def norm_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
    *,
    rms: bool,
    grad_x: torch.Tensor,
    weight_grad: bool,
    bias_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Writes grad_x [M, N]; returns (dweight, dbias) as [N] sums in the accumulator dtype
    (None where not requested). ``grad_y`` and ``x`` have unit column stride."""
    n_rows, n_cols = x.shape
    acc_dtype = accumulate_dtype(x.dtype)
    if n_rows == 0 or n_cols == 0:
        zeros = torch.zeros(n_cols, dtype=acc_dtype, device=x.device)
        return (zeros if weight_grad else None), (zeros.clone() if bias_grad else None)
    block_m, block_n, single_block, num_warps = row_config(n_cols, BACKWARD_MAX_FUSED)
    programs = _rows.row_programs(x.device, n_rows, num_warps)
    rows_per_program = triton.cdiv(n_rows, programs)
    programs = triton.cdiv(n_rows, rows_per_program)
    # The single-block kernel writes every partial element; the looped one adds into them.
    allocate = _runtime.empty if single_block else torch.zeros
    dw_partial = allocate((programs, n_cols), dtype=acc_dtype, device=x.device) if weight_grad else None
    db_partial = allocate((programs, n_cols), dtype=acc_dtype, device=x.device) if bias_grad else None
    torch.library.wrap_triton(_norm_backward_kernel)[(programs,)](
        x,
        grad_y,
        grad_x,
        weight if weight is not None else x,
        mean if mean is not None else rstd,
        rstd,
        dw_partial if dw_partial is not None else rstd,
        db_partial if db_partial is not None else rstd,
        x.stride(0),
        grad_y.stride(0),
        grad_x.stride(0),
        n_rows,
        n_cols,
        rows_per_program,
        IS_RMS=rms,
        HAS_WEIGHT=weight is not None,
        WEIGHT_GRAD=weight_grad,
        BIAS_GRAD=bias_grad,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        SINGLE_BLOCK=single_block,
        num_warps=num_warps,
    )
    dweight = dw_partial.sum(0) if dw_partial is not None else None
    dbias = db_partial.sum(0) if db_partial is not None else None
    return dweight, dbias


# --------------------------------------------------------------------------- compile check


def compile_variants() -> list[CompileVariant]:
    """The forward and the backward kernel at the widest row held in registers (the most
    registers a single-block build takes), at a row twice as wide (looped) and at narrow
    rows (several per tile), with the tiles and warps row_config picks: LayerNorm and
    RMSNorm, with and without weight and bias, bfloat16 (also with float32 parameters),
    float32 and float64; the bfloat16 LayerNorm builds for sm_80 too."""
    bf16, fp32, fp64 = torch.bfloat16, torch.float32, torch.float64
    widest, looped = "widest", "looped"
    cases = [  # (op, x dtype, parameter dtype, HAS_WEIGHT, HAS_BIAS, row width, archs)
        ("layer_norm", bf16, bf16, True, True, widest, (SM90, SM80)),
        ("layer_norm", bf16, bf16, True, True, looped, (SM90, SM80)),
        ("layer_norm", bf16, bf16, True, True, 64, (SM90, SM80)),
        ("layer_norm", fp32, fp32, False, False, widest, (SM90,)),
        ("layer_norm", fp32, fp32, False, False, looped, (SM90,)),
        ("rms_norm", bf16, fp32, True, False, widest, (SM90,)),
        ("rms_norm", fp32, fp32, True, False, looped, (SM90,)),
        ("rms_norm", fp32, fp32, True, False, 8, (SM90,)),
        ("layer_norm", fp64, fp64, True, True, widest, (SM90,)),
    ]
    variants = []
    for op, x_dtype, param_dtype, weight, bias, width, archs in cases:
        x, acc = "*" + triton_type(x_dtype), "*" + triton_type(accumulate_dtype(x_dtype))
        # the launchers pass x for an absent weight or bias
        w, b = ("*" + triton_type(param_dtype) if given else x for given in (weight, bias))
        params = "" if weight or bias else " no weight/bias"
        params += f" {triton_type(param_dtype)} params" if param_dtype != x_dtype else ""
        for kernel_pass, kernel, max_fused in (("forward", _norm_forward_kernel, FORWARD_MAX_FUSED),
                                               ("backward", _norm_backward_kernel, BACKWARD_MAX_FUSED)):
            n_cols = {widest: max_fused, looped: 2 * max_fused}.get(width, width)
            block_m, block_n, single_block, num_warps = row_config(n_cols, max_fused)
            if kernel_pass == "forward":
                types = dict(X=x, Y=x, W=w, B=b, Mean=acc, Rstd=acc, eps="fp32")
                flags = dict(HAS_BIAS=bias)
            else:
                types = dict(X=x, DY=x, DX=x, W=w, Mean=acc, Rstd=acc, DW_partial=acc, DB_partial=acc)
                flags = dict(WEIGHT_GRAD=weight, BIAS_GRAD=bias)
            variants.append(CompileVariant(
                name=f"{op} {kernel_pass} {triton_type(x_dtype)}{params} N={n_cols}"
                     f"{' looped' if not single_block else f' {block_m} rows/tile' if block_m > 1 else ''}",
                kernel=kernel.__name__, types=types,
                constexprs=dict(flags, IS_RMS=op == "rms_norm", HAS_WEIGHT=weight, BLOCK_M=block_m, BLOCK_N=block_n,
                                SINGLE_BLOCK=single_block),
                num_warps=num_warps, num_stages=TRITON_DEFAULT_STAGES, archs=archs,
            ))
    return variants
