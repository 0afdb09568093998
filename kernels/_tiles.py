"""Triton device helpers shared by the tiled kernels (attention and its relatives).

Addressing: a tensor is read and written as 2-D tiles through its strides with bounds
masks (``_load_tile`` / ``_store_tile``); ``_head_ptr`` points at a row of one (batch,
head) of a [B, H, T, D] tensor with 64-bit offsets; ``_sequence`` gives a batch entry's
first row and length, dense or packed (``cu_seqlens``), and the alignment shift between
its query and key positions.

Visiting tiles: a program walks the tiles of the other operand (keys for a block of
queries, or queries for a block of keys) in one loop per kind of tile, the loop body
taking each tile's start offset. A band (causal, sliding window: query i sees keys
``i + shift - window_left .. i + shift + window_right``) is cut into segments
(``_key_band_segments`` / ``_query_band_segments``), from which ``_band_tile_runs`` gives
two runs, the partially visible tiles (masked) and the fully visible ones (no masking),
and ``_band_tile_start`` the start of tile t of a run. Block-sparse attention visits a list of
tiles instead of a band: ``_tile_runs`` / ``_tile_start`` give the runs and starts of either
kind (``SPARSE``), a program's list holding the indices of its partially visible tiles first
and then those of its fully visible ones, with the two counts beside it.

Math: softmax runs in base 2 (``exp2`` is one instruction): scores are scaled by
``LOG2E`` and a base-2 log-sum-exp returns to natural log through ``LN2``.
"""

import triton
import triton.language as tl

# constexpr: a @triton.jit function can only read constexpr globals.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


# --------------------------------------------------------------------------- addressing


@triton.jit
def _head_ptr(X, b64, h64, row0, stride_b, stride_h, stride_t):
    """Pointer to row ``row0`` of head (b, h) of a [B, H, T, D] tensor (int64 offsets)."""
    return X + b64 * stride_b + h64 * stride_h + row0.to(tl.int64) * stride_t


@triton.jit
def _load_tile(base, rows, cols, stride_row, stride_col, n_rows, n_cols):
    """Tile [len(rows), len(cols)] of a strided matrix, zero outside [n_rows, n_cols]."""
    return tl.load(base + rows[:, None] * stride_row + cols[None, :] * stride_col,
                   mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _store_tile(base, rows, cols, stride_row, stride_col, n_rows, n_cols, value):
    """Store ``value`` (cast to the pointee dtype) into the tile _load_tile reads."""
    tl.store(base + rows[:, None] * stride_row + cols[None, :] * stride_col, value.to(base.dtype.element_ty),
             mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))


@triton.jit
def _sequence(b, CuQ, CuK, max_q, max_k, VARLEN: tl.constexpr, BOTTOM_RIGHT: tl.constexpr):
    """(first row, length) of batch entry b's queries and keys, and the band shift: key
    position of query 0 (Tk - Tq for bottom-right alignment, else 0)."""
    if VARLEN:
        q_start = tl.load(CuQ + b)
        q_len = tl.load(CuQ + b + 1) - q_start
        k_start = tl.load(CuK + b)
        k_len = tl.load(CuK + b + 1) - k_start
    else:
        q_start = 0
        q_len = max_q
        k_start = 0
        k_len = max_k
    if BOTTOM_RIGHT:
        shift = k_len - q_len
    else:
        shift = k_len * 0
    return q_start, q_len, k_start, k_len, shift


@triton.jit
def _head_sequence(bh, num_heads, CuQ, CuK, max_q, max_k, VARLEN: tl.constexpr, BOTTOM_RIGHT: tl.constexpr):
    """Batch entry b and head h of the program axis bh = b * num_heads + h, and the bounds of
    b's sequence (see _sequence)."""
    b = bh // num_heads
    h = bh % num_heads
    q_start, q_len, k_start, k_len, shift = _sequence(b, CuQ, CuK, max_q, max_k, VARLEN, BOTTOM_RIGHT)
    return b, h, q_start, q_len, k_start, k_len, shift


# --------------------------------------------------------------------------- band tile skipping


@triton.jit
def _band_segments(lo_bound, hi_bound, full_lo, full_hi, BLOCK: tl.constexpr):
    """Split [lo_bound, hi_bound) (lo_bound >= 0) into tile-aligned segments
    [lo, s1) partial, [s1, s2) fully visible, [s2, hi) partial."""
    lo = lo_bound // BLOCK * BLOCK
    hi = hi_bound
    s1 = tl.minimum(tl.maximum(full_lo, lo), hi)
    s2 = tl.maximum(s1, tl.minimum(full_hi, hi))
    return lo, s1, s2, hi


@triton.jit
def _key_band_segments(m0, k_len, shift, window_left, window_right, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Key tiles seen by the queries m0 .. m0 + BLOCK_M - 1."""
    lo = k_len * 0
    hi = k_len
    full_lo = lo
    full_hi = k_len // BLOCK_N * BLOCK_N
    if HAS_LEFT:
        lo = tl.maximum(m0 + shift - window_left, 0)
        full_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 + shift - window_left, 0), BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(tl.maximum(m0 + BLOCK_M + shift + window_right, 0), k_len)
        full_hi = tl.minimum(full_hi, tl.maximum(m0 + shift + window_right + 1, 0) // BLOCK_N * BLOCK_N)
    return _band_segments(lo, hi, full_lo, full_hi, BLOCK_N)


@triton.jit
def _query_band_segments(n0, q_len, k_len, shift, window_left, window_right, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Query tiles that see any of the keys n0 .. n0 + BLOCK_N - 1. A tile is fully visible
    when all its (query, key) pairs are in the band and the key block is within k_len."""
    lo = q_len * 0
    hi = q_len
    full_lo = lo
    full_hi = hi + BLOCK_M  # rows past q_len are inert (their lse loads as +inf)
    if n0 + BLOCK_N > k_len:
        full_hi = lo
    if HAS_RIGHT:  # i + shift + right >= j
        lo = tl.maximum(n0 - shift - window_right, 0)
        full_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - shift - window_right, 0), BLOCK_M) * BLOCK_M
    if HAS_LEFT:  # i + shift - left <= j
        hi = tl.minimum(tl.maximum(n0 + BLOCK_N - shift + window_left, 0), q_len)
        full_hi = tl.minimum(full_hi, tl.maximum(n0 - shift + window_left + 1, 0) // BLOCK_M * BLOCK_M)
    return _band_segments(lo, hi, full_lo, full_hi, BLOCK_M)


@triton.jit
def _band_tile_runs(partial: tl.constexpr, lo, s1, s2, hi, BLOCK: tl.constexpr):
    """The tiles one loop visits, as (first, n_first, second, count): tile t starts at
    first + t * BLOCK for t < n_first, else at second + (t - n_first) * BLOCK. ``partial``
    gives both partially visible segments [lo, s1) and [s2, hi) (one masked loop: a third
    loop raises register pressure), otherwise the fully visible [s1, s2)."""
    if partial:
        first = lo
        n_first = tl.cdiv(tl.maximum(s1 - lo, 0), BLOCK)
        count = n_first + tl.cdiv(tl.maximum(hi - s2, 0), BLOCK)
    else:
        first = s1
        n_first = tl.cdiv(tl.maximum(s2 - s1, 0), BLOCK)
        count = n_first
    return first, n_first, s2, count


@triton.jit
def _band_tile_start(t, first, n_first, second, BLOCK: tl.constexpr, PARTIAL: tl.constexpr):
    """Start of tile t of a run of _band_tile_runs."""
    if PARTIAL:
        start = tl.where(t < n_first, first + t * BLOCK, second + (t - n_first) * BLOCK)
    else:  # one contiguous run: plain address arithmetic for the pipeliner
        start = first + t * BLOCK
    return start


# --------------------------------------------------------------------------- band or tile list


@triton.jit
def _tile_runs(partial: tl.constexpr, lo, s1, s2, hi, Count, BLOCK: tl.constexpr, SPARSE: tl.constexpr):
    """The runs of _band_tile_runs for a band (lo, s1, s2, hi), or with ``SPARSE`` for a tile
    list whose counts are at ``Count``: [partially visible, all visible]. A list's run is
    (offset in the list, count, unused, count)."""
    if SPARSE:
        n_partial = tl.load(Count)
        n_all = tl.load(Count + 1)
        if partial:
            first = n_partial * 0
            count = n_partial
        else:
            first = n_partial
            count = n_all - n_partial
        return first, count, first, count
    else:
        return _band_tile_runs(partial, lo, s1, s2, hi, BLOCK)


@triton.jit
def _tile_start(t, first, n_first, second, List, BLOCK: tl.constexpr, PARTIAL: tl.constexpr,
                SPARSE: tl.constexpr):
    """Start of tile t of a run of _tile_runs: from the band, or the t-th index of the run in
    the tile list at ``List``."""
    if SPARSE:
        return tl.load(List + first + t) * BLOCK
    else:
        return _band_tile_start(t, first, n_first, second, BLOCK, PARTIAL)
