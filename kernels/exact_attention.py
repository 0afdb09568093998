"""Triton kernels for exact attention: the FlashAttention-2 algorithm, forward and backward.

Layout: every tensor is addressed as [B, H, T, D] through its four strides, so any
strides work without copies. Packed variable-length batches (``VARLEN``) use the view
[1, H, total, D] with a batch stride of 0; program ``b`` reads its rows
``cu_seqlens[b]:cu_seqlens[b + 1]``.

Scores: ``s = scale * q.k``; with ``SOFTCAP``: ``s = softcap * tanh(s / softcap)``; then the
bias is added (``BIAS_KIND`` 1) or a bool mask applied (``BIAS_KIND`` 2); keys outside the
band are hidden. The band: query i sits at key position ``i + shift`` (shift = Tk - Tq for
bottom-right alignment, else 0) and sees keys ``pos - window_left <= j <= pos + window_right``
(``HAS_LEFT`` / ``HAS_RIGHT`` say whether a side is bounded; causal is window_right = 0).
Softmax runs in base 2 (scores times log2(e)); the log-sum-exp is stored in natural log.

Tile skipping (the band helpers of ``fusednn.kernels._tiles``): for a block of queries (keys
in the backward) only the key (query) tiles that intersect the band are visited: one loop
over the partially visible tiles (masked) and one over the fully visible tiles (no masking
arithmetic). Time grows with T x band.

Dropout: the keep decision of element (i, j) of head (b, h) is ``rand(seed + b*H + h,
i * Tk + j) >= p`` (Philox, ``tl.rand``); the backward regenerates the same mask.

Forward (``_forward_kernel``): one program per (query block, batch x head): online softmax
over the key tiles, accumulator in float32, out = acc / l, lse = m + log(l).
Backward: ``_backward_preprocess_kernel`` (delta = rowsum(dO * O)); ``_backward_dkdv_kernel``,
one program per (key block, batch x kv head) looping over the query heads of its group, so
dk and dv of a GQA group sum in registers (no atomics); and dq either accumulated by the same
kernel with float32 atomics (FlashAttention-2's scheme), or, with ``deterministic``, in its
own pass ``_backward_dq_kernel`` (one program per query block, fixed order).
Rows with no visible key have l = 0: their output is 0, their lse -inf, and the backward
treats lse -inf as +inf so that their probabilities, hence gradients, are 0.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import triton
import triton.language as tl

from fusednn.kernels import SM80, SM90, TRITON_DEFAULT_STAGES, TRITON_DEFAULT_WARPS, CompileVariant
from fusednn.kernels._tiles import (
    LN2,
    LOG2E,
    _head_ptr,
    _head_sequence,
    _key_band_segments,
    _load_tile,
    _query_band_segments,
    _store_tile,
    _tanh,
    _tile_runs,
    _tile_start,
)

MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------- shared device helpers


@triton.jit
def _scores(qk, rows, cols, bias_ptrs, in_bounds, k_len, shift, window_left, window_right, sm_scale, softcap,
            MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
            BIAS_KIND: tl.constexpr):
    """Scores in base-2 units (-inf where hidden) from the raw dot products ``qk``.

    ``rows`` / ``cols`` are broadcastable query / key indices, so the same code serves the
    [queries, keys] tiles of the forward and dq passes and the [keys, queries] tiles of the
    dk/dv pass. ``bias_ptrs`` / ``in_bounds`` address the bias tile (unused without bias)."""
    s = qk * sm_scale
    if SOFTCAP:
        s = softcap * _tanh(s / softcap)
    if BIAS_KIND == 1:
        s += tl.load(bias_ptrs, mask=in_bounds, other=0.0).to(tl.float32)
    if BIAS_KIND == 2:
        s = tl.where(tl.load(bias_ptrs, mask=in_bounds, other=1) != 0, s, float("-inf"))
    if MASKED:
        visible = cols < k_len
        if HAS_LEFT:
            visible &= cols >= rows + shift - window_left
        if HAS_RIGHT:
            visible &= cols <= rows + shift + window_right
        s = tl.where(visible, s, float("-inf"))
    return s * LOG2E


@triton.jit
def _keep(seed, bh, rows, cols, k_len, dropout_p):
    """Dropout keep decisions for (rows, cols) of head bh (broadcastable index tensors)."""
    return tl.rand(seed + bh, rows * k_len + cols) >= dropout_p


@triton.jit
def _dropout_seed(Seed, DROPOUT: tl.constexpr):
    seed = 0
    if DROPOUT:
        seed = tl.load(Seed)
    return seed


@triton.jit
def _tile_list(TileList, TileCount, h64, tile, stride_list_h, stride_list_t, stride_count_h):
    """The tile list of this program's tile (query tile, or key tile in the dk/dv pass) of head
    h, and its two counts (block-sparse; unused otherwise)."""
    tile64 = tile.to(tl.int64)
    return TileList + h64 * stride_list_h + tile64 * stride_list_t, TileCount + h64 * stride_count_h + tile64 * 2


@triton.jit
def _query_block(
    Q, K, V, Bias, b, h, group, q_start, q_len, k_start, m0,
    stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_bias_b, stride_bias_h, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """What the forward and the dq programs of queries m0 .. m0 + BLOCK_M - 1 of head (b, h)
    start from: b and h as int64, the sequence's first row as int64, the query rows, their q
    tile, and the head's K and V (those of its kv head) and bias pointers."""
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    hkv64 = (h // group).to(tl.int64)
    q_row0 = q_start.to(tl.int64)
    rows = m0 + tl.arange(0, BLOCK_M)
    q_base = _head_ptr(Q, b64, h64, q_row0, stride_qb, stride_qh, stride_qt)
    k_base = _head_ptr(K, b64, hkv64, k_start, stride_kb, stride_kh, stride_kt)
    v_base = _head_ptr(V, b64, hkv64, k_start, stride_vb, stride_vh, stride_vt)
    bias_base = Bias + b64 * stride_bias_b + h64 * stride_bias_h
    q = _load_tile(q_base, rows, tl.arange(0, BLOCK_D), stride_qt, stride_qd, q_len, D)
    return b64, h64, q_row0, rows, q, k_base, v_base, bias_base


# --------------------------------------------------------------------------- forward


@triton.jit
def _forward_tiles(
    acc, l_i, m_i, q, k_base, v_base, bias_base, rows, seed, bh, first, n_first, second, count, tile_list,
    stride_kt, stride_kd, stride_vt, stride_vd, stride_bias_q, stride_bias_k,
    q_len, k_len, shift, window_left, window_right, sm_scale, softcap, dropout_p, dropout_scale,
    D, DV,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, MASKED: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, BIAS_KIND: tl.constexpr,
    DROPOUT: tl.constexpr, PRECISION: tl.constexpr, SPARSE: tl.constexpr,
):
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for t in range(0, count):
        cols = _tile_start(t, first, n_first, second, tile_list, BLOCK_N, MASKED, SPARSE) + tl.arange(0, BLOCK_N)
        col_ok = cols < k_len
        kt = _load_tile(k_base, offs_d, cols, stride_kd, stride_kt, D, k_len)
        qk = tl.dot(q, kt, input_precision=PRECISION)
        bias_ptrs = bias_base + rows[:, None] * stride_bias_q + cols[None, :] * stride_bias_k
        s = _scores(qk, rows[:, None], cols[None, :], bias_ptrs, (rows[:, None] < q_len) & col_ok[None, :], k_len,
                    shift, window_left, window_right, sm_scale, softcap, MASKED, HAS_LEFT, HAS_RIGHT, SOFTCAP,
                    BIAS_KIND)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            p = tl.where(_keep(seed, bh, rows[:, None], cols[None, :], k_len, dropout_p), p * dropout_scale, 0.0)
        v = _load_tile(v_base, cols, offs_dv, stride_vt, stride_vd, k_len, DV)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _forward_kernel(
    Q, K, V, Bias, Out, Lse, CuQ, CuK, Seed, TileList, TileCount,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_bias_b, stride_bias_h, stride_bias_q, stride_bias_k,
    stride_lse_b, stride_lse_h, stride_list_h, stride_list_t, stride_count_h,
    num_heads, group, max_q, max_k, sm_scale, softcap, window_left, window_right, dropout_p, dropout_scale,
    D: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    VARLEN: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, BIAS_KIND: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    SPARSE: tl.constexpr,
):
    bh = tl.program_id(1)
    b, h, q_start, q_len, k_start, k_len, shift = _head_sequence(bh, num_heads, CuQ, CuK, max_q, max_k, VARLEN,
                                                                 BOTTOM_RIGHT)
    m0 = tl.program_id(0) * BLOCK_M
    if m0 >= q_len:
        return
    b64, h64, q_row0, rows, q, k_base, v_base, bias_base = _query_block(
        Q, K, V, Bias, b, h, group, q_start, q_len, k_start, m0,
        stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
        stride_bias_b, stride_bias_h, D, BLOCK_M, BLOCK_D,
    )
    seed = _dropout_seed(Seed, DROPOUT)
    tile_list, tile_count = _tile_list(TileList, TileCount, h64, tl.program_id(0), stride_list_h, stride_list_t,
                                       stride_count_h)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    lo, s1, s2, hi = _key_band_segments(m0, k_len, shift, window_left, window_right, BLOCK_M, BLOCK_N,
                                        HAS_LEFT, HAS_RIGHT)
    for run in tl.static_range(2):  # the partially visible key tiles (masked), then the fully visible
        first, n_first, second, count = _tile_runs(run == 0, lo, s1, s2, hi, tile_count, BLOCK_N, SPARSE)
        acc, l_i, m_i = _forward_tiles(
            acc, l_i, m_i, q, k_base, v_base, bias_base, rows, seed, bh, first, n_first, second, count, tile_list,
            stride_kt, stride_kd, stride_vt, stride_vd, stride_bias_q, stride_bias_k,
            q_len, k_len, shift, window_left, window_right, sm_scale, softcap, dropout_p, dropout_scale,
            D, DV, BLOCK_N, BLOCK_D, BLOCK_DV, run == 0, HAS_LEFT, HAS_RIGHT, SOFTCAP, BIAS_KIND,
            DROPOUT, PRECISION, SPARSE,
        )

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    _store_tile(_head_ptr(Out, b64, h64, q_row0, stride_ob, stride_oh, stride_ot), rows, tl.arange(0, BLOCK_DV),
                stride_ot, stride_od, q_len, DV, out)
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * LN2)
    tl.store(_head_ptr(Lse, b64, h64, q_row0, stride_lse_b, stride_lse_h, 1) + rows, lse, mask=rows < q_len)


# --------------------------------------------------------------------------- backward


@triton.jit
def _backward_preprocess_kernel(
    Out, DOut, Delta, CuQ,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_gb, stride_gh, stride_gt, stride_gd,
    stride_delta_b, stride_delta_h,
    num_heads, max_q, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr, VARLEN: tl.constexpr,
):
    """delta[i] = sum_d dO[i, d] * O[i, d] (float32): the rowsum(P * dP) of the softmax gradient."""
    b, h, q_start, q_len, _k_start, _k_len, _shift = _head_sequence(tl.program_id(1), num_heads, CuQ, CuQ, max_q,
                                                                     max_q, VARLEN, False)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    row0 = q_start.to(tl.int64)
    o = _load_tile(_head_ptr(Out, b64, h64, row0, stride_ob, stride_oh, stride_ot), rows, offs_dv, stride_ot,
                   stride_od, q_len, DV)
    do = _load_tile(_head_ptr(DOut, b64, h64, row0, stride_gb, stride_gh, stride_gt), rows, offs_dv, stride_gt,
                    stride_gd, q_len, DV)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(_head_ptr(Delta, b64, h64, row0, stride_delta_b, stride_delta_h, 1) + rows, delta, mask=rows < q_len)


@triton.jit
def _load_lse2(Lse, rows, row_ok):
    """Log-sum-exp in base-2 units; +inf for rows past the end and rows with no visible key,
    whose probabilities must come out 0."""
    lse = tl.load(Lse + rows, mask=row_ok, other=float("-inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)


@triton.jit
def _backward_dkdv_tiles(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, bias_base, dbias_base, dq_base, cols, seed, bh,
    first, n_first, second, count, tile_list,
    stride_qt, stride_qd, stride_gt, stride_gd, stride_bias_q, stride_bias_k, stride_dbias_q, stride_dq_t,
    q_len, k_len, shift, window_left, window_right, sm_scale, softcap, dropout_p, dropout_scale, D, DV,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, MASKED: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, BIAS_KIND: tl.constexpr,
    BIAS_GRAD: tl.constexpr, DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr, PRECISION: tl.constexpr,
    SPARSE: tl.constexpr,
):
    """Adds the contributions of the query tiles (see _tile_runs) to dk, dv ([BLOCK_N, D] float32);
    works on transposed [keys, queries] tiles. With ATOMIC_DQ also adds dq (float32 atomics)."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = cols < k_len
    for t in range(0, count):
        rows = _tile_start(t, first, n_first, second, tile_list, BLOCK_M, MASKED, SPARSE) + tl.arange(0, BLOCK_M)
        row_ok = rows < q_len
        qt = _load_tile(q_base, offs_d, rows, stride_qd, stride_qt, D, q_len)
        qkt = tl.dot(k, qt, input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        in_bounds = col_ok[:, None] & row_ok[None, :]
        bias_ptrs = bias_base + rows[None, :] * stride_bias_q + cols[:, None] * stride_bias_k
        st = _scores(qkt, rows[None, :], cols[:, None], bias_ptrs, in_bounds, k_len, shift, window_left,
                     window_right, sm_scale, softcap, MASKED, HAS_LEFT, HAS_RIGHT, SOFTCAP, BIAS_KIND)
        pt = tl.math.exp2(st - _load_lse2(lse_base, rows, row_ok)[None, :])
        do = _load_tile(do_base, rows, offs_dv, stride_gt, stride_gd, q_len, DV)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        if DROPOUT:
            keep = _keep(seed, bh, rows[None, :], cols[:, None], k_len, dropout_p)
            dv = tl.dot(tl.where(keep, pt * dropout_scale, 0.0).to(do.dtype), do, dv, input_precision=PRECISION)
            dpt = tl.where(keep, dpt * dropout_scale, 0.0)
        else:
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        dst = pt * (dpt - delta[None, :])  # gradient of the scores after softcap (= of the bias)
        if BIAS_GRAD:
            tl.store(dbias_base + rows[None, :] * stride_dbias_q + cols[:, None], dst, mask=in_bounds)
        if SOFTCAP:
            t = _tanh(qkt * sm_scale / softcap)
            dst = dst * (1.0 - t * t)
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(dst).to(k.dtype), k, input_precision=PRECISION) * sm_scale
            tl.atomic_add(dq_base + rows[:, None] * stride_dq_t + offs_d[None, :], dq,
                          mask=row_ok[:, None] & (offs_d[None, :] < D), sem="relaxed")
    return dk, dv


@triton.jit
def _backward_dkdv_kernel(
    Q, K, V, DOut, Lse, Delta, Bias, DBias, DQAcc, DK, DV_, CuQ, CuK, Seed, TileList, TileCount,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_gb, stride_gh, stride_gt, stride_gd,
    stride_bias_b, stride_bias_h, stride_bias_q, stride_bias_k,
    stride_dbias_b, stride_dbias_h, stride_dbias_q,
    stride_dq_b, stride_dq_h, stride_dq_t,
    stride_dkb, stride_dkh, stride_dkt, stride_dkd,
    stride_dvb, stride_dvh, stride_dvt, stride_dvd,
    stride_lse_b, stride_lse_h, stride_list_h, stride_list_t, stride_count_h,
    num_kv_heads, group, max_q, max_k, sm_scale, softcap, window_left, window_right, dropout_p, dropout_scale,
    D: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    VARLEN: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, BIAS_KIND: tl.constexpr, BIAS_GRAD: tl.constexpr, DROPOUT: tl.constexpr,
    ATOMIC_DQ: tl.constexpr, PRECISION: tl.constexpr, SPARSE: tl.constexpr,
):
    bhkv = tl.program_id(1)
    b, hkv, q_start, q_len, k_start, k_len, shift = _head_sequence(bhkv, num_kv_heads, CuQ, CuK, max_q, max_k, VARLEN,
                                                                   BOTTOM_RIGHT)
    n0 = tl.program_id(0) * BLOCK_N
    if n0 >= k_len:
        return
    b64 = b.to(tl.int64)
    hkv64 = hkv.to(tl.int64)
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k_row0 = k_start.to(tl.int64)
    q_row0 = q_start.to(tl.int64)
    k = _load_tile(_head_ptr(K, b64, hkv64, k_row0, stride_kb, stride_kh, stride_kt), cols, offs_d, stride_kt,
                   stride_kd, k_len, D)
    v = _load_tile(_head_ptr(V, b64, hkv64, k_row0, stride_vb, stride_vh, stride_vt), cols, offs_dv, stride_vt,
                   stride_vd, k_len, DV)
    seed = _dropout_seed(Seed, DROPOUT)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    lo, s1, s2, hi = _query_band_segments(n0, q_len, k_len, shift, window_left, window_right, BLOCK_M, BLOCK_N,
                                          HAS_LEFT, HAS_RIGHT)
    for g in range(0, group):
        h64 = hkv64 * group + g
        bh = b * num_kv_heads * group + hkv * group + g
        q_base = _head_ptr(Q, b64, h64, q_row0, stride_qb, stride_qh, stride_qt)
        do_base = _head_ptr(DOut, b64, h64, q_row0, stride_gb, stride_gh, stride_gt)
        lse_base = _head_ptr(Lse, b64, h64, q_row0, stride_lse_b, stride_lse_h, 1)
        delta_base = _head_ptr(Delta, b64, h64, q_row0, stride_lse_b, stride_lse_h, 1)
        bias_base = Bias + b64 * stride_bias_b + h64 * stride_bias_h
        dbias_base = DBias + b64 * stride_dbias_b + h64 * stride_dbias_h
        dq_base = _head_ptr(DQAcc, b64, h64, q_row0, stride_dq_b, stride_dq_h, stride_dq_t)
        tile_list, tile_count = _tile_list(TileList, TileCount, h64, tl.program_id(0), stride_list_h, stride_list_t,
                                           stride_count_h)
        for run in tl.static_range(2):  # the partially visible query tiles (masked), then the fully visible
            first, n_first, second, count = _tile_runs(run == 0, lo, s1, s2, hi, tile_count, BLOCK_M, SPARSE)
            dk, dv = _backward_dkdv_tiles(
                dk, dv, k, v, q_base, do_base, lse_base, delta_base, bias_base, dbias_base, dq_base, cols, seed,
                bh, first, n_first, second, count, tile_list,
                stride_qt, stride_qd, stride_gt, stride_gd, stride_bias_q, stride_bias_k, stride_dbias_q,
                stride_dq_t, q_len, k_len, shift, window_left, window_right, sm_scale, softcap, dropout_p,
                dropout_scale, D, DV, BLOCK_M, BLOCK_D, BLOCK_DV, run == 0, HAS_LEFT, HAS_RIGHT, SOFTCAP,
                BIAS_KIND, BIAS_GRAD, DROPOUT, ATOMIC_DQ, PRECISION, SPARSE,
            )
    dk = dk * sm_scale
    _store_tile(_head_ptr(DK, b64, hkv64, k_row0, stride_dkb, stride_dkh, stride_dkt), cols, offs_d, stride_dkt,
                stride_dkd, k_len, D, dk)
    _store_tile(_head_ptr(DV_, b64, hkv64, k_row0, stride_dvb, stride_dvh, stride_dvt), cols, offs_dv, stride_dvt,
                stride_dvd, k_len, DV, dv)


@triton.jit
def _backward_dq_tiles(
    dq, q, do, lse2, delta, k_base, v_base, bias_base, rows, seed, bh, first, n_first, second, count, tile_list,
    stride_kt, stride_kd, stride_vt, stride_vd, stride_bias_q, stride_bias_k,
    q_len, k_len, shift, window_left, window_right, sm_scale, softcap, dropout_p, dropout_scale, D, DV,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, MASKED: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, BIAS_KIND: tl.constexpr,
    DROPOUT: tl.constexpr, PRECISION: tl.constexpr, SPARSE: tl.constexpr,
):
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < q_len
    for t in range(0, count):
        cols = _tile_start(t, first, n_first, second, tile_list, BLOCK_N, MASKED, SPARSE) + tl.arange(0, BLOCK_N)
        col_ok = cols < k_len
        kt = _load_tile(k_base, offs_d, cols, stride_kd, stride_kt, D, k_len)
        vt = _load_tile(v_base, offs_dv, cols, stride_vd, stride_vt, DV, k_len)
        qk = tl.dot(q, kt, input_precision=PRECISION)
        bias_ptrs = bias_base + rows[:, None] * stride_bias_q + cols[None, :] * stride_bias_k
        s = _scores(qk, rows[:, None], cols[None, :], bias_ptrs, row_ok[:, None] & col_ok[None, :], k_len, shift,
                    window_left, window_right, sm_scale, softcap, MASKED, HAS_LEFT, HAS_RIGHT, SOFTCAP, BIAS_KIND)
        p = tl.math.exp2(s - lse2[:, None])
        dp = tl.dot(do, vt, input_precision=PRECISION)
        if DROPOUT:
            keep = _keep(seed, bh, rows[:, None], cols[None, :], k_len, dropout_p)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            t = _tanh(qk * sm_scale / softcap)
            ds = ds * (1.0 - t * t)
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)
    return dq


@triton.jit
def _backward_dq_kernel(
    Q, K, V, DOut, Lse, Delta, Bias, DQ, CuQ, CuK, Seed, TileList, TileCount,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_gb, stride_gh, stride_gt, stride_gd,
    stride_bias_b, stride_bias_h, stride_bias_q, stride_bias_k,
    stride_dqb, stride_dqh, stride_dqt, stride_dqd,
    stride_lse_b, stride_lse_h, stride_list_h, stride_list_t, stride_count_h,
    num_heads, group, max_q, max_k, sm_scale, softcap, window_left, window_right, dropout_p, dropout_scale,
    D: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    VARLEN: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, BIAS_KIND: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    SPARSE: tl.constexpr,
):
    bh = tl.program_id(1)
    b, h, q_start, q_len, k_start, k_len, shift = _head_sequence(bh, num_heads, CuQ, CuK, max_q, max_k, VARLEN,
                                                                 BOTTOM_RIGHT)
    m0 = tl.program_id(0) * BLOCK_M
    if m0 >= q_len:
        return
    b64, h64, q_row0, rows, q, k_base, v_base, bias_base = _query_block(
        Q, K, V, Bias, b, h, group, q_start, q_len, k_start, m0,
        stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
        stride_bias_b, stride_bias_h, D, BLOCK_M, BLOCK_D,
    )
    row_ok = rows < q_len
    do = _load_tile(_head_ptr(DOut, b64, h64, q_row0, stride_gb, stride_gh, stride_gt), rows, tl.arange(0, BLOCK_DV),
                    stride_gt, stride_gd, q_len, DV)
    lse2 = _load_lse2(_head_ptr(Lse, b64, h64, q_row0, stride_lse_b, stride_lse_h, 1), rows, row_ok)
    delta = tl.load(_head_ptr(Delta, b64, h64, q_row0, stride_lse_b, stride_lse_h, 1) + rows, mask=row_ok, other=0.0)
    seed = _dropout_seed(Seed, DROPOUT)
    tile_list, tile_count = _tile_list(TileList, TileCount, h64, tl.program_id(0), stride_list_h, stride_list_t,
                                       stride_count_h)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, s1, s2, hi = _key_band_segments(m0, k_len, shift, window_left, window_right, BLOCK_M, BLOCK_N,
                                        HAS_LEFT, HAS_RIGHT)
    for run in tl.static_range(2):  # the partially visible key tiles (masked), then the fully visible
        first, n_first, second, count = _tile_runs(run == 0, lo, s1, s2, hi, tile_count, BLOCK_N, SPARSE)
        dq = _backward_dq_tiles(
            dq, q, do, lse2, delta, k_base, v_base, bias_base, rows, seed, bh, first, n_first, second, count,
            tile_list,
            stride_kt, stride_kd, stride_vt, stride_vd, stride_bias_q, stride_bias_k,
            q_len, k_len, shift, window_left, window_right, sm_scale, softcap, dropout_p, dropout_scale, D, DV,
            BLOCK_N, BLOCK_D, BLOCK_DV, run == 0, HAS_LEFT, HAS_RIGHT, SOFTCAP, BIAS_KIND, DROPOUT, PRECISION,
            SPARSE,
        )
    dq = dq * sm_scale
    _store_tile(_head_ptr(DQ, b64, h64, q_row0, stride_dqb, stride_dqh, stride_dqt), rows, tl.arange(0, BLOCK_D),
                stride_dqt, stride_dqd, q_len, D, dq)


@triton.jit
def _dropout_mask_kernel(Mask, Seed, num_heads, seqlen_q, seqlen_k, dropout_p,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Writes the keep decisions the attention kernels make (for tests and inspection)."""
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    seed = tl.load(Seed)
    base = Mask + bh.to(tl.int64) * seqlen_q * seqlen_k
    for n0 in range(0, seqlen_k, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        keep = _keep(seed, bh, rows[:, None], cols[None, :], seqlen_k, dropout_p)
        tl.store(base + rows[:, None] * seqlen_k + cols[None, :], keep.to(tl.int8),
                 mask=(rows[:, None] < seqlen_q) & (cols[None, :] < seqlen_k))


# --------------------------------------------------------------------------- launch helpers


def _option(schema: str):
    return dataclasses.field(metadata={"schema": schema})


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything about a call but the tensors attended over, declared once: the registered
    ops' schemas list these fields (``metadata["schema"]`` is each one's schema type), their
    fake and autograd formulas pass them on as one value, and the launchers read them."""

    cu_seqlens_q: Optional[torch.Tensor] = _option("Tensor?")  # packed layout: [num_seqs + 1] int32
    cu_seqlens_k: Optional[torch.Tensor] = _option("Tensor?")
    max_seqlen_q: int = _option("SymInt")
    max_seqlen_k: int = _option("SymInt")
    scale: float = _option("float")
    softcap: float = _option("float")  # 0: none
    window_left: int = _option("SymInt")  # -1: unbounded
    window_right: int = _option("SymInt")  # -1: unbounded (causal is 0)
    bottom_right: bool = _option("bool")
    dropout_p: float = _option("float")
    seed: Optional[torch.Tensor] = _option("Tensor?")  # int64 [1] on q's device; None without dropout
    deterministic: bool = _option("bool")  # backward: dq in its own pass instead of float32 atomics
    # Block-sparse attention: bool [Hq or 1, ceil(Tq / block_size), ceil(Tk / block_size)], query
    # block i attends to key block j where layout[h, i, j] (and within the band); None: dense.
    layout: Optional[torch.Tensor] = dataclasses.field(default=None, metadata={"schema": "Tensor?"})
    block_size: int = dataclasses.field(default=0, metadata={"schema": "SymInt"})

    TENSORS = ("cu_seqlens_q", "cu_seqlens_k", "seed", "layout")

    @classmethod
    def count(cls) -> int:
        return len(dataclasses.fields(cls))

    def values(self) -> tuple:
        """The options in schema order."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def tensors(self) -> tuple:
        return tuple(getattr(self, name) for name in self.TENSORS)

    def with_tensors(self, tensors) -> "Options":
        return dataclasses.replace(self, **dict(zip(self.TENSORS, tensors)))

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens_q is not None

    @property
    def sparse(self) -> bool:
        return self.layout is not None

    def dropout_scale(self) -> float:
        return 0.0 if self.dropout_p >= 1.0 else 1.0 / (1.0 - self.dropout_p)


@dataclasses.dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int, int]:
    """[B, H, T, D] strides; a packed view has batch stride 0 (rows come from cu_seqlens)."""
    s = t.stride()
    return (0 if varlen else s[0], s[1], s[2], s[3])


def _bias_strides(bias: Optional[torch.Tensor]) -> tuple[int, int, int, int]:
    return tuple(bias.stride()) if bias is not None else (0, 0, 0, 0)


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _interpreting(device: torch.device) -> bool:
    return device.type != "cuda"


# Tile sizes: (query tile, key tile, warps, pipeline stages) per padded head dim, for the
# forward, the dk/dv pass and the dq pass. Under the interpreter: small unequal tiles, so
# tests cross tile borders in both directions. GPU choices were made from the compiled
# register and spill counts (tests/test_triton_compile.py prints them); they are not yet
# tuned by timing on a GPU.
_INTERPRETER_CONFIGS = {
    "forward": TileConfig(32, 16, 4, 1),
    "dkdv": TileConfig(16, 32, 4, 1),
    "dq": TileConfig(32, 16, 4, 1),
}
_GPU_CONFIGS = {  # pass -> {max padded head dim: config}
    "forward": {64: TileConfig(128, 64, 8, 3), 128: TileConfig(128, 64, 8, 3), 256: TileConfig(64, 32, 8, 2)},
    "dkdv": {64: TileConfig(32, 128, 8, 3), 128: TileConfig(32, 128, 8, 3), 256: TileConfig(16, 64, 8, 2)},
    "dq": {64: TileConfig(128, 32, 8, 3), 128: TileConfig(128, 32, 8, 3), 256: TileConfig(32, 32, 4, 2)},
}


def tile_config(kernel_pass: str, block_d: int, interpreting: bool, block_size: int = 0) -> TileConfig:
    """The tiles of ``kernel_pass`` ("forward", "dkdv" or "dq") for a padded head dim. A
    block-sparse call (``block_size`` > 0, a power of two >= 16) takes tiles no larger than its
    blocks, so that a tile lies in one block row and one block column of the layout."""
    if interpreting:
        config = _INTERPRETER_CONFIGS[kernel_pass]
    else:
        config = next(c for d, c in _GPU_CONFIGS[kernel_pass].items() if block_d <= d)
    if block_size:
        config = dataclasses.replace(config, block_m=min(config.block_m, block_size),
                                     block_n=min(config.block_n, block_size))
    return config


def sparse_tile_lists(layout: torch.Tensor, block_size: int, block_m: int, block_n: int, seqlen_q: int,
                      seqlen_k: int, causal: bool, by_key: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiles each program of a block-sparse pass visits: for every query tile (``by_key``:
    every key tile) of every layout head, the indices of the key (query) tiles it meets,
    the partially visible ones first (they cross the causal diagonal or the end of the keys:
    masked), then the fully visible ones, as ``lists`` int32 [Hl, tiles, other tiles]
    (entries past the count unused) and ``counts`` int32 [Hl, tiles, 2] = (partial, all)."""
    device = layout.device
    q0 = torch.arange(triton.cdiv(seqlen_q, block_m), device=device) * block_m
    k0 = torch.arange(triton.cdiv(seqlen_k, block_n), device=device) * block_n
    visible = layout[:, (q0 // block_size)[:, None], (k0 // block_size)[None, :]]  # [Hl, query tiles, key tiles]
    partial = (k0 + block_n > seqlen_k)[None, :].expand(q0.numel(), k0.numel())
    if causal:  # key j visible to query i when j <= i
        visible = visible & (k0[None, :] <= q0[:, None] + block_m - 1)
        partial = partial | (k0[None, :] + block_n - 1 > q0[:, None])
    if by_key:
        visible, partial = visible.transpose(1, 2), partial.transpose(0, 1)
    rank = torch.where(visible, (~partial).to(torch.int8), 2)  # partial 0, full 1, not visited 2
    lists = torch.argsort(rank, dim=-1, stable=True).to(torch.int32)
    counts = torch.stack(((visible & partial).sum(-1), visible.sum(-1)), dim=-1).to(torch.int32)
    return lists.contiguous(), counts.contiguous()


def _tile_list_args(q: torch.Tensor, options: Options, config: TileConfig, by_key: bool) -> tuple:
    """(TileList, TileCount, stride_list_h, stride_list_t, stride_count_h) of a pass: the
    block-sparse tile lists, or a stand-in pointer (never read) for dense attention."""
    if not options.sparse:
        return q, q, 0, 0, 0
    causal = options.window_right == 0
    lists, counts = sparse_tile_lists(options.layout, options.block_size, config.block_m, config.block_n,
                                      options.max_seqlen_q, options.max_seqlen_k, causal, by_key)
    shared = lists.shape[0] == 1  # one layout for every head
    return (lists, counts, 0 if shared else lists.stride(0), lists.stride(1), 0 if shared else counts.stride(0))


def _preprocess_block(interpreting: bool) -> int:
    """Query rows per program of the delta pass (launched with Triton's default warps and stages)."""
    return 32 if interpreting else 64


def _mask_block(interpreting: bool) -> int:
    """Side of the square tile of the dropout-mask writer (Triton's default warps and stages)."""
    return 16 if interpreting else 64


def _common_meta(q, v, bias, options: Options) -> dict:
    is_fp32 = q.dtype == torch.float32
    return dict(
        BLOCK_D=_block_d(q.shape[-1]),
        BLOCK_DV=_block_d(v.shape[-1]),
        VARLEN=options.varlen,
        BOTTOM_RIGHT=options.bottom_right,
        HAS_LEFT=options.window_left >= 0,
        HAS_RIGHT=options.window_right >= 0,
        SOFTCAP=options.softcap > 0,
        BIAS_KIND=0 if bias is None else (2 if bias.dtype == torch.bool else 1),
        DROPOUT=options.dropout_p > 0,
        SPARSE=options.sparse,
        # float32 inputs get true float32 products (tf32 would cost ~1e-3 relative error).
        PRECISION="ieee" if is_fp32 else "tf32",
    )


def _scalars(options: Options) -> tuple:
    return (
        options.max_seqlen_q, options.max_seqlen_k, options.scale, options.softcap,
        max(options.window_left, 0), max(options.window_right, 0), options.dropout_p, options.dropout_scale(),
    )


def _aux(q: torch.Tensor, bias, options: Options) -> tuple:
    """Pointer arguments that may be absent: a valid tensor stands in (never read)."""
    bias_arg = bias.view(torch.uint8) if bias is not None and bias.dtype == torch.bool else bias
    return (
        bias_arg if bias is not None else q,
        options.cu_seqlens_q if options.varlen else q,
        options.cu_seqlens_k if options.varlen else q,
        options.seed if options.seed is not None else q,
    )


def attention_forward(q, k, v, bias, out, lse, options: Options) -> None:
    """Writes out [B, Hq, Tq, Dv] and lse [B, Hq, Tq] (float32) for [B, H, T, D] views."""
    batch, num_heads = (options.cu_seqlens_q.numel() - 1, q.shape[1]) if options.varlen else q.shape[:2]
    if batch == 0 or num_heads == 0 or options.max_seqlen_q == 0:
        return
    meta = _common_meta(q, v, bias, options)
    config = tile_config("forward", max(meta["BLOCK_D"], meta["BLOCK_DV"]), _interpreting(q.device),
                         options.block_size)
    bias_arg, cu_q, cu_k, seed = _aux(q, bias, options)
    tile_list, tile_count, *list_strides = _tile_list_args(q, options, config, by_key=False)
    grid = (triton.cdiv(options.max_seqlen_q, config.block_m), batch * num_heads)
    torch.library.wrap_triton(_forward_kernel)[grid](
        q, k, v, bias_arg, out, lse, cu_q, cu_k, seed, tile_list, tile_count,
        *_strides(q, options.varlen), *_strides(k, options.varlen), *_strides(v, options.varlen),
        *_strides(out, options.varlen), *_bias_strides(bias),
        0 if options.varlen else lse.stride(0), lse.stride(1), *list_strides,
        num_heads, num_heads // k.shape[1], *_scalars(options), q.shape[-1], v.shape[-1],
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, num_warps=config.num_warps,
        num_stages=config.num_stages, **meta,
    )


def attention_backward(grad_out, q, k, v, out, lse, bias, dq, dk, dv, dbias, options: Options) -> None:
    """Writes dq, dk, dv (and dbias [B, Hq, Tq, Tk] float32, zero-initialised, when given)."""
    batch, num_heads = (options.cu_seqlens_q.numel() - 1, q.shape[1]) if options.varlen else q.shape[:2]
    num_kv_heads = k.shape[1]
    if batch == 0 or num_heads == 0:
        return
    if options.max_seqlen_q == 0 or options.max_seqlen_k == 0:  # nothing attends: all gradients are 0
        dq.zero_()
        dk.zero_()
        dv.zero_()
        return
    varlen = options.varlen
    meta = _common_meta(q, v, bias, options)
    config = tile_config("dkdv", max(meta["BLOCK_D"], meta["BLOCK_DV"]), _interpreting(q.device), options.block_size)
    bias_arg, cu_q, cu_k, seed = _aux(q, bias, options)
    lse_strides = (0 if varlen else lse.stride(0), lse.stride(1))
    # Keys of a sequence shorter than max_seqlen_k are never visited by a program: the
    # packed dk/dv rows all belong to some sequence, so every row is written.
    delta = torch.empty_like(lse)
    preprocess_block = _preprocess_block(_interpreting(q.device))
    torch.library.wrap_triton(_backward_preprocess_kernel)[
        (triton.cdiv(options.max_seqlen_q, preprocess_block), batch * num_heads)
    ](
        out, grad_out, delta, cu_q, *_strides(out, varlen), *_strides(grad_out, varlen), *lse_strides,
        num_heads, options.max_seqlen_q, v.shape[-1],
        BLOCK_M=preprocess_block, BLOCK_DV=meta["BLOCK_DV"], VARLEN=varlen,
    )
    atomic_dq = not options.deterministic
    dq_acc = torch.zeros(dq.shape, dtype=torch.float32, device=dq.device) if atomic_dq else dq
    dbias_arg = dbias if dbias is not None else q
    dbias_strides = tuple(dbias.stride()[:3]) if dbias is not None else (0, 0, 0)
    tile_list, tile_count, *list_strides = _tile_list_args(q, options, config, by_key=True)
    torch.library.wrap_triton(_backward_dkdv_kernel)[
        (triton.cdiv(options.max_seqlen_k, config.block_n), batch * num_kv_heads)
    ](
        q, k, v, grad_out, lse, delta, bias_arg, dbias_arg, dq_acc, dk, dv, cu_q, cu_k, seed, tile_list, tile_count,
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(grad_out, varlen),
        *_bias_strides(bias), *dbias_strides, *_strides(dq_acc, varlen)[:3], *_strides(dk, varlen),
        *_strides(dv, varlen), *lse_strides, *list_strides,
        num_kv_heads, num_heads // num_kv_heads, *_scalars(options), q.shape[-1], v.shape[-1],
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BIAS_GRAD=dbias is not None, ATOMIC_DQ=atomic_dq,
        num_warps=config.num_warps, num_stages=config.num_stages, **meta,
    )
    if atomic_dq:
        dq.copy_(dq_acc)
        return
    dq_config = tile_config("dq", max(meta["BLOCK_D"], meta["BLOCK_DV"]), _interpreting(q.device),
                            options.block_size)
    tile_list, tile_count, *list_strides = _tile_list_args(q, options, dq_config, by_key=False)
    torch.library.wrap_triton(_backward_dq_kernel)[
        (triton.cdiv(options.max_seqlen_q, dq_config.block_m), batch * num_heads)
    ](
        q, k, v, grad_out, lse, delta, bias_arg, dq, cu_q, cu_k, seed, tile_list, tile_count,
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(grad_out, varlen),
        *_bias_strides(bias), *_strides(dq, varlen), *lse_strides, *list_strides,
        num_heads, num_heads // num_kv_heads, *_scalars(options), q.shape[-1], v.shape[-1],
        BLOCK_M=dq_config.block_m, BLOCK_N=dq_config.block_n, num_warps=dq_config.num_warps,
        num_stages=dq_config.num_stages, **meta,
    )

def dropout_keep_mask(seed: torch.Tensor, batch: int, heads: int, seqlen_q: int, seqlen_k: int,
                      dropout_p: float) -> torch.Tensor:
    """The keep decisions (bool [batch, heads, seqlen_q, seqlen_k], True = kept) that the
    attention kernels make for a dense input with this seed and dropout_p."""
    mask = torch.zeros((batch, heads, seqlen_q, seqlen_k), dtype=torch.int8, device=seed.device)
    if mask.numel():
        block = _mask_block(_interpreting(seed.device))
        _dropout_mask_kernel[(triton.cdiv(seqlen_q, block), batch * heads)](
            mask, seed, heads, seqlen_q, seqlen_k, float(dropout_p), BLOCK_M=block, BLOCK_N=block
        )
    return mask.bool()


# --------------------------------------------------------------------------- compile check


_PLAIN = dict(VARLEN=False, BOTTOM_RIGHT=False, HAS_LEFT=False, HAS_RIGHT=False, SOFTCAP=False, BIAS_KIND=0,
              DROPOUT=False, PRECISION="tf32", SPARSE=False)


def compile_variants() -> list[CompileVariant]:
    """Each pass with the tiles its launcher picks on a GPU: plain bfloat16 at every padded
    head dim (also for sm_80), and causal, every option at once, float32 with a bool mask
    and a padded float16 head dim with a window. float32 goes first: its dots run on FMA
    units and take longest to compile, so a pool of workers starts them first."""
    plain = _PLAIN
    everything = dict(plain, VARLEN=True, BOTTOM_RIGHT=True, HAS_LEFT=True, HAS_RIGHT=True, SOFTCAP=True, BIAS_KIND=1,
                      DROPOUT=True)
    cases = [  # (name, dtype, head dim, constexprs, archs)
        ("fp32-bool-mask", "fp32", 64, dict(plain, BIAS_KIND=2, PRECISION="ieee"), (SM90,)),
        ("plain", "bf16", 64, plain, (SM90, SM80)),
        ("plain", "bf16", 128, plain, (SM90, SM80)),
        ("plain", "bf16", 256, plain, (SM90, SM80)),
        ("causal", "bf16", 128, dict(plain, HAS_RIGHT=True), (SM90,)),
        ("all-options", "bf16", 128, everything, (SM90,)),
        ("fp16-window", "fp16", 80, dict(plain, HAS_LEFT=True, HAS_RIGHT=True), (SM90,)),
    ]
    variants = _pass_variants("attention", cases)
    variants.append(CompileVariant(
        name="attention preprocess bf16 D=128", kernel=_backward_preprocess_kernel.__name__,
        types=dict(Out="*bf16", DOut="*bf16", Delta="*fp32", CuQ="*i32"),
        constexprs=dict(DV=128, BLOCK_M=_preprocess_block(False), BLOCK_DV=128, VARLEN=True),
        num_warps=TRITON_DEFAULT_WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=(SM90, SM80),
    ))
    mask_block = _mask_block(False)
    variants.append(CompileVariant(
        name="attention dropout mask", kernel=_dropout_mask_kernel.__name__,
        types=dict(Mask="*i8", Seed="*i64", dropout_p="fp32"),
        constexprs=dict(BLOCK_M=mask_block, BLOCK_N=mask_block), num_warps=TRITON_DEFAULT_WARPS,
        num_stages=TRITON_DEFAULT_STAGES,
    ))
    return variants


def block_sparse_compile_variants() -> list[CompileVariant]:
    """The three passes over a tile list (``SPARSE``) with the tiles a block-sparse launch
    picks: causal bfloat16 D=64 with blocks of 64 (also for sm_80) and bfloat16 D=128 with
    blocks of 128."""
    cases = [
        ("causal", "bf16", 64, dict(_PLAIN, HAS_RIGHT=True, SPARSE=True), (SM90, SM80), 64),
        ("plain", "bf16", 128, dict(_PLAIN, SPARSE=True), (SM90,), 128),
    ]
    return _pass_variants("block-sparse attention", cases)


def _pass_variants(prefix: str, cases) -> list[CompileVariant]:
    """The forward, dk/dv and dq builds of each case (name, dtype, head dim, constexprs, archs
    [, block size of a block-sparse layout])."""
    variants = []
    for name, dtype, head_dim, meta, archs, *block_size in cases:
        tensor = "*" + dtype
        types = dict(Q=tensor, K=tensor, V=tensor, Out=tensor, DOut=tensor, DK=tensor, DV_=tensor, DQ=tensor,
                     Bias="*u8" if meta["BIAS_KIND"] == 2 else "*fp32", Lse="*fp32", Delta="*fp32", DBias="*fp32",
                     DQAcc="*fp32", CuQ="*i32", CuK="*i32", Seed="*i64", TileList="*i32", TileCount="*i32",
                     sm_scale="fp32", softcap="fp32", dropout_p="fp32", dropout_scale="fp32")
        block_d = _block_d(head_dim)
        dims = dict(D=head_dim, DV=head_dim, BLOCK_D=block_d, BLOCK_DV=block_d)
        for kernel_pass, kernel in (("forward", _forward_kernel), ("dkdv", _backward_dkdv_kernel),
                                    ("dq", _backward_dq_kernel)):
            config = tile_config(kernel_pass, block_d, False, *block_size)
            constexprs = dict(meta, **dims, BLOCK_M=config.block_m, BLOCK_N=config.block_n)
            if kernel_pass == "dkdv":
                # the plain builds take the deterministic backward (dq in its own pass), the others atomics
                constexprs.update(BIAS_GRAD=meta["BIAS_KIND"] == 1, ATOMIC_DQ=name != "plain")
            variants.append(CompileVariant(
                name=f"{prefix} {kernel_pass} {name} {dtype} D={head_dim}", kernel=kernel.__name__,
                types={arg: t for arg, t in types.items() if arg in kernel.arg_names}, constexprs=constexprs,
                num_warps=config.num_warps, num_stages=config.num_stages, archs=archs,
            ))
    return variants
