"""Triton kernels of LSH attention (Reformer): the chunked attention of each hash round over its
sorted tokens, and the combination of the rounds; forward and backward.

Layout. q, k [B, H, T, D] and v [B, H, T, Dv] are read through their strides, in original
token order. Round r of head (b, h) is row n = (b * H + h) * R + r of the round-major tensors,
which are contiguous: ``order`` [N, T] int32 (the original position held by each sorted slot),
the rounds' outputs [N, T, Dv], their lse, ``self_only`` and delta [N, T], and the float32
gradient buffers [N, T, D], all indexed by original position. A program gathers the rows of
its slots through ``order`` and scatters its results to their positions: no sorted copy of q,
k or v exists, and since ``order`` is a permutation each position of a round is written by
exactly one program (no atomics).

Chunked attention (``_chunk_forward_kernel``): one program per (query block, round of a head).
The sorted slots are cut into chunks of C = min(chunk_size, T); query blocks tile each chunk
(a block never straddles two chunks), and the keys of chunk c's queries are the slots
[max(c - 1, 0) C, min((c + 1) C, T)), visited in key tiles with an online softmax in base 2.
Key j is visible to query i when pos_j != pos_i (pos_j < pos_i with causal). A query that sees
no key (l = 0 after the loop) attends to itself alone: out = v_i, lse = scale q_i . k_i, and
``self_only`` records it for the backward.

Backward: ``_chunk_backward_dq_kernel`` (query blocks, as the forward) computes
delta_i = rowsum(dO_i * O_i) - dlse_i, writes it, and accumulates dq over the key tiles;
``_chunk_backward_dkdv_kernel`` (key blocks tiling each chunk the same way) accumulates dk and
dv over the queries of chunks c and c + 1, the only ones that see chunk c, and so runs after the
dq pass. The gradient of score s_ij is p_ij (dp_ij - delta_i): the lse gradient enters through
delta since d lse_i / d s_ij = p_ij. Both passes use the forward's mask plus the self pair of
the self_only queries, whose probability exp(s_ii - lse_i) is 1.

Combination (``_combine_forward_kernel``): per block of tokens of a head, the rounds' lse as one
[tokens, rounds] tile, weights w_r = softmax over rounds of lse_r, out = sum_r w_r out_r.
Backward (``_combine_backward_kernel``): dout_r = w_r dout and
dlse_r = w_r (out_r . dout - sum_s w_s out_s . dout).
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from fusednn.kernels import SM90, CompileVariant
from fusednn.kernels._tiles import LN2, LOG2E, _load_tile, _store_tile

MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------- shared device helpers


@triton.jit
def _round_program(n, num_heads, n_hashes, seqlen, Q, K, V, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb,
                   stride_vh):
    """For round row n = (b * H + h) * R + r: the head's q, k, v pointers and the first element
    of the row in the [N, T] round-major tensors (int64)."""
    n64 = n.to(tl.int64)
    bh = n64 // n_hashes
    b64 = bh // num_heads
    h64 = bh % num_heads
    q_base = Q + b64 * stride_qb + h64 * stride_qh
    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh
    return q_base, k_base, v_base, n64 * seqlen


@triton.jit
def _chunk_block(pid, chunk, blocks_per_chunk, seqlen, BLOCK: tl.constexpr):
    """Program pid's chunk c, the first slot of its block and the end slot of the chunk (int64:
    all index arithmetic of these kernels is, so none can overflow)."""
    c = pid.to(tl.int64) // blocks_per_chunk
    s0 = c * chunk + (pid % blocks_per_chunk) * BLOCK
    return c, s0, tl.minimum((c + 1) * chunk, seqlen)


@triton.jit
def _slot_positions(order_row, s0, s_end, seqlen, BLOCK: tl.constexpr):
    """Original positions of the sorted slots s0 .. s0 + BLOCK - 1; ``seqlen`` (out of bounds:
    masked loads and stores) for slots at or past s_end."""
    slots = s0 + tl.arange(0, BLOCK)
    return tl.load(order_row + slots, mask=slots < s_end, other=seqlen).to(tl.int64)


@triton.jit
def _others_visible(pos_q, pos_k, seqlen, CAUSAL: tl.constexpr):
    """Whether the query at pos_q sees the key of another token at pos_k (broadcast); False
    for padding slots (position seqlen)."""
    real = (pos_q < seqlen) & (pos_k < seqlen)
    if CAUSAL:
        return real & (pos_k < pos_q)
    return real & (pos_k != pos_q)


@triton.jit
def _attended(pos_q, pos_k, self_only, seqlen, CAUSAL: tl.constexpr):
    """The pairs the forward attended: the visible others, or the token itself for a
    self_only query."""
    self_pair = (pos_k == pos_q) & self_only & (pos_q < seqlen)
    return _others_visible(pos_q, pos_k, seqlen, CAUSAL) | self_pair


# --------------------------------------------------------------------------- chunked attention


@triton.jit
def _chunk_forward_kernel(
    Q, K, V, Order, Out, Lse, SelfOnly,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    num_heads, n_hashes, seqlen, chunk, blocks_per_chunk, sm_scale,
    D: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    c, s0, s_end = _chunk_block(tl.program_id(0), chunk, blocks_per_chunk, seqlen, BLOCK_M)
    if s0 >= s_end:
        return
    q_base, k_base, v_base, row0 = _round_program(tl.program_id(1), num_heads, n_hashes, seqlen, Q, K, V,
                                                  stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh)
    qk_scale = sm_scale * LOG2E
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    pos_q = _slot_positions(Order + row0, s0, s_end, seqlen, BLOCK_M)
    q = _load_tile(q_base, pos_q, offs_d, stride_qt, stride_qd, seqlen, D)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for n0 in range(tl.maximum(c - 1, 0) * chunk, s_end, BLOCK_N):
        pos_k = _slot_positions(Order + row0, n0, s_end, seqlen, BLOCK_N)
        kt = _load_tile(k_base, offs_d, pos_k, stride_kd, stride_kt, D, seqlen)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        s = tl.where(_others_visible(pos_q[:, None], pos_k[None, :], seqlen, CAUSAL), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_base, pos_k, offs_dv, stride_vt, stride_vd, seqlen, DV)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    row_ok = pos_q < seqlen
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * LN2
    alone = empty & row_ok
    if tl.max(alone.to(tl.int32), 0) > 0:  # queries that saw no other key attend to themselves
        pos_self = tl.where(alone, pos_q, seqlen)
        k_self = _load_tile(k_base, pos_self, offs_d, stride_kt, stride_kd, seqlen, D)
        v_self = _load_tile(v_base, pos_self, offs_dv, stride_vt, stride_vd, seqlen, DV)
        out = tl.where(alone[:, None], v_self.to(tl.float32), out)
        lse = tl.where(alone, tl.sum(q.to(tl.float32) * k_self.to(tl.float32), 1) * sm_scale, lse)
    _store_tile(Out + row0 * DV, pos_q, offs_dv, DV, 1, seqlen, DV, out)
    tl.store(Lse + row0 + pos_q, lse, mask=row_ok)
    tl.store(SelfOnly + row0 + pos_q, alone.to(tl.int8), mask=row_ok)


@triton.jit
def _chunk_backward_dq_kernel(
    Q, K, V, Order, Out, Lse, SelfOnly, GradOut, GradLse, Delta, GradQ,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    num_heads, n_hashes, seqlen, chunk, blocks_per_chunk, sm_scale,
    D: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    """dq of one query block (written to the float32 round buffer), and delta of its queries
    for the dk/dv pass."""
    c, s0, s_end = _chunk_block(tl.program_id(0), chunk, blocks_per_chunk, seqlen, BLOCK_M)
    if s0 >= s_end:
        return
    q_base, k_base, v_base, row0 = _round_program(tl.program_id(1), num_heads, n_hashes, seqlen, Q, K, V,
                                                  stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh)
    qk_scale = sm_scale * LOG2E
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    pos_q = _slot_positions(Order + row0, s0, s_end, seqlen, BLOCK_M)
    row_ok = pos_q < seqlen
    q = _load_tile(q_base, pos_q, offs_d, stride_qt, stride_qd, seqlen, D)
    do = _load_tile(GradOut + row0 * DV, pos_q, offs_dv, DV, 1, seqlen, DV)
    o = _load_tile(Out + row0 * DV, pos_q, offs_dv, DV, 1, seqlen, DV)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1) - tl.load(GradLse + row0 + pos_q, mask=row_ok, other=0.0)
    tl.store(Delta + row0 + pos_q, delta, mask=row_ok)
    lse2 = tl.load(Lse + row0 + pos_q, mask=row_ok, other=0.0) * LOG2E
    self_only = tl.load(SelfOnly + row0 + pos_q, mask=row_ok, other=0) != 0
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(tl.maximum(c - 1, 0) * chunk, s_end, BLOCK_N):
        pos_k = _slot_positions(Order + row0, n0, s_end, seqlen, BLOCK_N)
        k = _load_tile(k_base, pos_k, offs_d, stride_kt, stride_kd, seqlen, D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        attended = _attended(pos_q[:, None], pos_k[None, :], self_only[:, None], seqlen, CAUSAL)
        p = tl.where(attended, tl.math.exp2(s - lse2[:, None]), 0.0)
        v = _load_tile(v_base, pos_k, offs_dv, stride_vt, stride_vd, seqlen, DV)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    _store_tile(GradQ + row0 * D, pos_q, offs_d, D, 1, seqlen, D, dq * sm_scale)


@triton.jit
def _chunk_backward_dkdv_kernel(
    Q, K, V, Order, Lse, SelfOnly, GradOut, Delta, GradK, GradV,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    num_heads, n_hashes, seqlen, chunk, blocks_per_chunk, sm_scale,
    D: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    """dk and dv of one key block (written to the float32 round buffers); works on transposed
    [keys, queries] tiles."""
    c, s0, s_end = _chunk_block(tl.program_id(0), chunk, blocks_per_chunk, seqlen, BLOCK_N)
    if s0 >= s_end:
        return
    q_base, k_base, v_base, row0 = _round_program(tl.program_id(1), num_heads, n_hashes, seqlen, Q, K, V,
                                                  stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh)
    qk_scale = sm_scale * LOG2E
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    pos_k = _slot_positions(Order + row0, s0, s_end, seqlen, BLOCK_N)
    k = _load_tile(k_base, pos_k, offs_d, stride_kt, stride_kd, seqlen, D)
    v = _load_tile(v_base, pos_k, offs_dv, stride_vt, stride_vd, seqlen, DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    q_end = tl.minimum((c + 2) * chunk, seqlen)
    for m0 in range(c * chunk, q_end, BLOCK_M):
        pos_q = _slot_positions(Order + row0, m0, q_end, seqlen, BLOCK_M)
        row_ok = pos_q < seqlen
        qt = _load_tile(q_base, offs_d, pos_q, stride_qd, stride_qt, D, seqlen)
        st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M]
        lse2 = tl.load(Lse + row0 + pos_q, mask=row_ok, other=0.0) * LOG2E
        self_only = tl.load(SelfOnly + row0 + pos_q, mask=row_ok, other=0) != 0
        attended = _attended(pos_q[None, :], pos_k[:, None], self_only[None, :], seqlen, CAUSAL)
        pt = tl.where(attended, tl.math.exp2(st - lse2[None, :]), 0.0)
        do = _load_tile(GradOut + row0 * DV, pos_q, offs_dv, DV, 1, seqlen, DV)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        delta = tl.load(Delta + row0 + pos_q, mask=row_ok, other=0.0)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)
    _store_tile(GradK + row0 * D, pos_k, offs_d, D, 1, seqlen, D, dk * sm_scale)
    _store_tile(GradV + row0 * DV, pos_k, offs_dv, DV, 1, seqlen, DV, dv)


# --------------------------------------------------------------------------- combination of the rounds


@triton.jit
def _round_weights(lse_head, tokens, n_hashes, seqlen, BLOCK_R: tl.constexpr):
    """[tokens, BLOCK_R] float32: softmax over the rounds of lse (lse_head: the head's
    [R, T] rows); 0 for rounds past n_hashes."""
    rounds = tl.arange(0, BLOCK_R)
    lse = tl.load(lse_head + rounds[None, :].to(tl.int64) * seqlen + tokens[:, None],
                  mask=(tokens[:, None] < seqlen) & (rounds[None, :] < n_hashes), other=float("-inf"))
    m = tl.max(lse, 1)
    m = tl.where(m == float("-inf"), 0.0, m)  # tokens past the end
    w = tl.math.exp2((lse - m[:, None]) * LOG2E)
    total = tl.sum(w, 1)
    return w / tl.where(total == 0.0, 1.0, total)[:, None]


@triton.jit
def _round_weight(w, r, BLOCK_R: tl.constexpr):
    """Column r of the [tokens, BLOCK_R] weights."""
    return tl.sum(tl.where(tl.arange(0, BLOCK_R)[None, :] == r, w, 0.0), 1)


@triton.jit
def _combine_forward_kernel(
    OutR, LseR, Out, n_hashes, seqlen,
    DV: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bh64 = tl.program_id(1).to(tl.int64)
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    w = _round_weights(LseR + bh64 * n_hashes * seqlen, tokens, n_hashes, seqlen, BLOCK_R)
    acc = tl.zeros([BLOCK_T, BLOCK_DV], dtype=tl.float32)
    for r in range(n_hashes):
        o_r = _load_tile(OutR + (bh64 * n_hashes + r) * seqlen * DV, tokens, offs_dv, DV, 1, seqlen, DV)
        acc += _round_weight(w, r, BLOCK_R)[:, None] * o_r.to(tl.float32)
    _store_tile(Out + bh64 * seqlen * DV, tokens, offs_dv, DV, 1, seqlen, DV, acc)


@triton.jit
def _combine_backward_kernel(
    OutR, LseR, GradOut, GradOutR, GradLseR, n_hashes, seqlen,
    DV: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bh64 = tl.program_id(1).to(tl.int64)
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    rounds = tl.arange(0, BLOCK_R)
    w = _round_weights(LseR + bh64 * n_hashes * seqlen, tokens, n_hashes, seqlen, BLOCK_R)
    do = _load_tile(GradOut + bh64 * seqlen * DV, tokens, offs_dv, DV, 1, seqlen, DV).to(tl.float32)
    g = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)  # out_r . dout, one column per round
    for r in range(n_hashes):
        row = (bh64 * n_hashes + r) * seqlen * DV
        w_r = _round_weight(w, r, BLOCK_R)
        _store_tile(GradOutR + row, tokens, offs_dv, DV, 1, seqlen, DV, w_r[:, None] * do)
        o_r = _load_tile(OutR + row, tokens, offs_dv, DV, 1, seqlen, DV)
        g = tl.where(rounds[None, :] == r, tl.sum(o_r.to(tl.float32) * do, 1)[:, None], g)
    dlse = w * (g - tl.sum(w * g, 1)[:, None])
    tl.store(GradLseR + (bh64 * n_hashes + rounds[None, :]) * seqlen + tokens[:, None], dlse,
             mask=(tokens[:, None] < seqlen) & (rounds[None, :] < n_hashes))


# --------------------------------------------------------------------------- launch helpers


@dataclasses.dataclass(frozen=True)
class ChunkTiles:
    block_m: int  # query tile
    block_n: int  # key tile
    num_warps: int
    num_stages: int


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _interpreting(device: torch.device) -> bool:
    return device.type != "cuda"


def chunk_tiles(chunk: int, block_d: int, interpreting: bool) -> ChunkTiles:
    """Tiles of the chunked attention passes for chunks of ``chunk`` slots and a padded head
    dim. Under the interpreter 16 x 16, so tests cross tile borders inside chunks. On a GPU a
    tile covers a chunk of up to 64 slots (32 past a padded head dim of 128, for registers);
    chosen from the compiled register and spill counts, not yet tuned by timing on a GPU."""
    if interpreting:
        return ChunkTiles(16, 16, 4, 1)
    block = min(max(16, triton.next_power_of_2(chunk)), 64 if block_d <= 128 else 32)
    return ChunkTiles(block, block, 4, 2)


def _token_block(block_dv: int, interpreting: bool) -> int:
    """Tokens per program of the combination kernels (launched with 4 warps, 2 stages)."""
    if interpreting:
        return 16
    return 64 if block_dv <= 128 else 32


def _chunk_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: torch.Tensor, chunk_size: int,
                  causal: bool, scale: float, queries: bool):
    """(grid, arguments after the pointers, meta) of a chunked-attention pass: programs over the
    query blocks (``queries``) or the key blocks of every chunk, times the round rows."""
    batch, heads, seqlen, head_dim = q.shape
    rounds = order.shape[2]
    chunk = min(chunk_size, seqlen)
    block_d, block_dv = _block_d(head_dim), _block_d(v.shape[-1])
    tiles = chunk_tiles(chunk, max(block_d, block_dv), _interpreting(q.device))
    block = tiles.block_m if queries else tiles.block_n
    blocks_per_chunk = triton.cdiv(chunk, block)
    grid = (triton.cdiv(seqlen, chunk) * blocks_per_chunk, batch * heads * rounds)
    scalars = (*q.stride(), *k.stride(), *v.stride(), heads, rounds, seqlen, chunk, blocks_per_chunk, float(scale))
    meta = dict(D=head_dim, DV=v.shape[-1], BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=block_d,
                BLOCK_DV=block_dv, CAUSAL=causal, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                num_warps=tiles.num_warps, num_stages=tiles.num_stages)
    return grid, scalars, meta


def chunk_attention_forward(q, k, v, order, out, lse, self_only, chunk_size: int, causal: bool, scale: float) -> None:
    """Writes each round's out [B, H, R, T, Dv], lse [B, H, R, T] (float32) and self_only
    [B, H, R, T] (int8) in original token order. q, k [B, H, T, D], v [B, H, T, Dv] with unit
    last strides; order [B, H, R, T] int32 and the outputs contiguous."""
    if lse.numel() == 0:
        return
    grid, scalars, meta = _chunk_launch(q, k, v, order, chunk_size, causal, scale, queries=True)
    torch.library.wrap_triton(_chunk_forward_kernel)[grid](q, k, v, order, out, lse, self_only, *scalars, **meta)


def chunk_attention_backward(grad_out, grad_lse, q, k, v, order, out, lse, self_only, grad_q, grad_k, grad_v,
                             chunk_size: int, causal: bool, scale: float) -> None:
    """Writes each round's gradients grad_q, grad_k [B, H, R, T, D] and grad_v [B, H, R, T, Dv]
    (float32, original token order). grad_out, grad_lse, out, lse, self_only as the forward's
    outputs (contiguous)."""
    if lse.numel() == 0:
        return
    delta = torch.empty_like(lse)
    grid, scalars, meta = _chunk_launch(q, k, v, order, chunk_size, causal, scale, queries=True)
    torch.library.wrap_triton(_chunk_backward_dq_kernel)[grid](
        q, k, v, order, out, lse, self_only, grad_out, grad_lse, delta, grad_q, *scalars, **meta)
    grid, scalars, meta = _chunk_launch(q, k, v, order, chunk_size, causal, scale, queries=False)
    torch.library.wrap_triton(_chunk_backward_dkdv_kernel)[grid](
        q, k, v, order, lse, self_only, grad_out, delta, grad_k, grad_v, *scalars, **meta)


def _combine_launch(out_rounds: torch.Tensor):
    batch, heads, rounds, seqlen, head_dim_v = out_rounds.shape
    block_dv = _block_d(head_dim_v)
    block_t = _token_block(block_dv, _interpreting(out_rounds.device))
    grid = (triton.cdiv(seqlen, block_t), batch * heads)
    meta = dict(DV=head_dim_v, BLOCK_T=block_t, BLOCK_R=triton.next_power_of_2(rounds), BLOCK_DV=block_dv,
                num_warps=4, num_stages=2)
    return grid, (rounds, seqlen), meta


def combine_forward(out_rounds, lse_rounds, out) -> None:
    """out [B, H, T, Dv] = sum_r softmax_r(lse_rounds) out_rounds; out_rounds [B, H, R, T, Dv],
    lse_rounds [B, H, R, T] float32, all contiguous."""
    if out.numel() == 0:
        return
    grid, scalars, meta = _combine_launch(out_rounds)
    torch.library.wrap_triton(_combine_forward_kernel)[grid](out_rounds, lse_rounds, out, *scalars, **meta)


def combine_backward(grad_out, out_rounds, lse_rounds, grad_out_rounds, grad_lse_rounds) -> None:
    """Writes grad_out_rounds [B, H, R, T, Dv] (out_rounds' dtype) and grad_lse_rounds
    [B, H, R, T] (float32) from grad_out [B, H, T, Dv]; all contiguous."""
    if grad_out_rounds.numel() == 0:
        return
    grid, scalars, meta = _combine_launch(out_rounds)
    torch.library.wrap_triton(_combine_backward_kernel)[grid](
        out_rounds, lse_rounds, grad_out, grad_out_rounds, grad_lse_rounds, *scalars, **meta)


# --------------------------------------------------------------------------- compile check


def compile_variants() -> list[CompileVariant]:
    """One build per kernel, with the tiles its launcher picks on a GPU: bfloat16, head dims 64,
    Reformer's chunks of 64, causal masks in the forward and the dk/dv pass, plain in the dq pass;
    the combination of 4 rounds."""
    head_dim = 64
    tiles = chunk_tiles(64, head_dim, interpreting=False)
    chunk_types = dict(Q="*bf16", K="*bf16", V="*bf16", Order="*i32", Out="*bf16", Lse="*fp32", SelfOnly="*i8",
                       GradOut="*bf16", GradLse="*fp32", Delta="*fp32", GradQ="*fp32", GradK="*fp32",
                       GradV="*fp32", sm_scale="fp32")
    chunk_meta = dict(D=head_dim, DV=head_dim, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=head_dim,
                      BLOCK_DV=head_dim, PRECISION="tf32")
    # the strides of the non-unit dims of [B, H, T, 64] inputs, and the chunk of 64
    divisible = tuple(f"stride_{t}{dim}" for t in "qkv" for dim in "bht") + ("chunk",)
    variants = []
    for kernel, causal in ((_chunk_forward_kernel, True), (_chunk_backward_dq_kernel, False),
                           (_chunk_backward_dkdv_kernel, True)):
        variants.append(CompileVariant(
            name=f"lsh_attention {kernel.__name__.strip('_').replace('_kernel', '')} bf16 D=64 chunk=64"
                 f"{' causal' if causal else ''}",
            kernel=kernel.__name__, types={a: t for a, t in chunk_types.items() if a in kernel.arg_names},
            constexprs=dict(chunk_meta, CAUSAL=causal), num_warps=tiles.num_warps, num_stages=tiles.num_stages,
            archs=(SM90,), divisible_by_16=divisible,
        ))
    combine_meta = dict(DV=head_dim, BLOCK_T=_token_block(head_dim, False), BLOCK_R=4, BLOCK_DV=head_dim)
    combine_types = dict(OutR="*bf16", LseR="*fp32", Out="*bf16", GradOut="*bf16", GradOutR="*bf16",
                         GradLseR="*fp32")
    for kernel in (_combine_forward_kernel, _combine_backward_kernel):
        variants.append(CompileVariant(
            name=f"lsh_attention {kernel.__name__.strip('_').replace('_kernel', '')} bf16 Dv=64 rounds=4",
            kernel=kernel.__name__, types={a: t for a, t in combine_types.items() if a in kernel.arg_names},
            constexprs=combine_meta, num_warps=4, num_stages=2, archs=(SM90,),
        ))
    return variants
