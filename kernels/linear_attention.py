"""Triton kernels of chunked linear attention (``fusednn.ops.linear_attention``, algorithm "chunk").

Notation per (sequence, head): φq_t = scale·φ(q_t) and φk_s the features ([Dk]), v_s [Dv],
γ the head's decay (1 without one), S [Dk, Dv] and z [Dk] the states, which the reference
(``fusednn.reference.linear_attention``) updates step by step: S_t = γ S_{t-1} + φk_t v_tᵀ,
o_t = φq_tᵀ S_t / (φq_tᵀ z_t + eps) (or the numerator alone without normalize).

Chunks. The sequence is cut into chunks of CHUNK positions; with c0 a chunk's first position,
i = t - c0 and S_prev the state before the chunk, the causal output of the chunk is

    num_i = γ^(i+1) φq_iᵀ S_prev + Σ_{j<=i} γ^(i-j) (φq_i·φk_j) v_j
    den_i = γ^(i+1) φq_i·z_prev  + Σ_{j<=i} γ^(i-j) (φq_i·φk_j)

(an intra-chunk [C, C] matrix A = (φQ φKᵀ) ⊙ D, D_ij = γ^(i-j) for j <= i, then A V, plus the
inter-chunk product φQ S_prev), and the state passes on as S = γ^L S_prev + Σ_j γ^(L-1-j) φk_j v_jᵀ
(L the chunk's length; z likewise with v = 1). Every decay factor is relative to the chunk's
start or end, so every factor is <= 1: nothing overflows, and a factor that underflows is one
whose term is negligible. Without causal: S = S_0 + φKᵀV and z = z_0 + Σ φk in one pass over
the chunks, then o = φQ S / (φQ z + eps) in a second (no decay, as the reference).

Forward (``_chunk_forward_kernel``): one program per (sequence, head, block of BLOCK_DV value
columns), a sequential loop over the chunks carrying S [Dk, BLOCK_DV] and z [Dk] in fp32
registers. It writes o, den = φQ z + intra row sums ([B, H, T] fp32, for the backward: the
normalisation's denominator without eps) and, when asked, the final states.

Backward: with g_i = do_i / (den_i + eps) and gden_i = -(do_i·o_i) / (den_i + eps) the
gradients of the numerator and denominator (g = do, gden = 0 without normalize), two kernels,
independent of each other, whose programs each hold one block of the head dims' states:

* ``_chunk_backward_dq_kernel``, one program per (sequence, head, block of Dk rows), sweeps the
  chunks forward carrying S[kb, :] and z[kb] (recomputed, never saved) and writes
  dφq_i = γ^(i+1) (S_prev g_i + gden_i z_prev) + Σ_{j<=i} γ^(i-j) (g_i·v_j + gden_i) φk_j on its
  columns kb, and its share of the decay gradient. Every term but the intra-chunk factor
  g_i·v_j (a sum over Dv, recomputed by each block) involves only the block's rows;
* ``_chunk_backward_dkdv_kernel``, one program per (sequence, head, block of Dk rows, block of
  Dv columns), sweeps them backward carrying dS[kb, vb] and dz[kb] (from the final state's
  gradient): dφk_j = Σ_{i>=j} γ^(i-j) (g_i·v_j + gden_i) φq_i + γ^(L-1-j) (dS v_j + dz) on
  columns kb needs all of Dv (WRITE_DK), dv_j = Σ_{i>=j} γ^(i-j) (φq_i·φk_j) g_i + γ^(L-1-j)
  dSᵀ φk_j on columns vb all of Dk (WRITE_DV); it passes on dS = γ^L dS + Σ_i γ^(i+1) φq_i g_iᵀ
  and at the start writes dS_0 and dz_0 (with WRITE_DK). A Dk that fits one block takes one
  launch writing both; a wider one a launch over Dk blocks with every Dv column (dk, dS_0,
  dz_0) and one over Dv blocks with every Dk row (dv), each gradient written by one program:
  deterministic, no atomics, no partial sums to add up (splitting dv over Dk blocks would
  need a float32 [Dk blocks, T, Dv] buffer per head and a reduction pass).

The gradients of q and k go through φ' and scale. Memory stays O(B·H·Dk·Dv) besides the
inputs: no per-chunk state is saved, the dq kernel recomputes the states the forward had.

Decay gradient: the dq kernel also carries the tangents Ṡ = dS/dlogγ and ż (forward mode for the
one scalar logγ: Ṡ = γ^L (Ṡ_prev + L S_prev) + Σ_j (L-1-j) γ^(L-1-j) φk_j v_jᵀ) and sums
dL/dlogγ = Σ_ij (i-j) A_ij m_ij (the intra-chunk factors; m = (g vᵀ + gden) ⊙ D)
+ Σ_i γ^(i+1) ((i+1) φq_i·dφq_i(inter) + φq_i·(Ṡ_prev g_i + gden_i ż_prev)) + <Ṡ_T, dS_T> +
<ż_T, dz_T>: a sum over the Dk rows (A = φQ φKᵀ ⊙ D is one too), so each dq program adds up
its block's share in float32 (with its rows of Ṡ and ż) into a [N·H, Dk blocks] buffer that
the launcher sums in a fixed order (dL/dγ = that / γ).
Every weight in it is chunk-local (<= CHUNK). The identity dL/dlogγ = Σ_t t φq_t·dφq_t -
Σ_s s φk_s·dφk_s + ... needs no tangent, but its two sums grow with the position t and
cancel to a fraction of their size (about T / the decay's reach): float32 rounding of the
per-position gradients then shows at 1e-4 of the result, 16-bit rounding at 1e-2 and more.
The tangent costs three more products in the dq kernel (then seven, as the dk/dv kernel).

Packed sequences (VARLEN): q, k, v are [1, H, total, D]; program n reads rows cu_seqlens[n] ..
cu_seqlens[n+1] and the states of sequence n. Tiles are read through four strides, so
a [B, T, H, D] tensor seen as [B, H, T, D] costs no copy (the last stride must be 1 for
vector loads: the ops layer ensures it). States are contiguous float32.

Precision: products of input tiles (φQ φKᵀ, A V, φKᵀ V, ...) take the input dtype's
operands (fp16/bf16 tensor cores; fp32 "ieee"). Products with the fp32 states (φQ S, g Sᵀ,
V dSᵀ, φK dS) take bfloat16 operands for bfloat16 inputs (STATE_LOW: its range is fp32's) and
fp32 ones otherwise ("tf32" for float16, whose 65504 a state summed over a long sequence can
exceed; "ieee" for float32). States, sums and the decay gradient stay fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusednn.kernels import SM80, SM90, TRITON_DEFAULT_STAGES, CompileVariant, triton_type
from fusednn.kernels import linear_attention_recurrent as _recurrent
from fusednn.kernels._feature_map import FEATURE_MAP_CODES, feature_map, feature_map_derivative
from fusednn.kernels._tiles import _head_ptr, _load_tile, _sequence, _store_tile

# Head dims the kernels take (tiles hold a whole head dim or a backward program's block of
# one, padded to a power of two >= 16).
MAX_HEAD_DIM = 128
# Chunk lengths on a GPU. Registers bound them, not the arithmetic (the work per position
# does not grow with shorter chunks): the chunk's [C, D] tiles and [C, C] products sit beside
# the fp32 states [Dk, Dv] held through the loop (two in the dq kernel: S and the decay's
# tangent Ṡ), and what exceeds 255 registers per thread spills to local memory. The longest
# chunks ptxas builds for sm_90a without spilling (bfloat16): forward 64 at head dims up to 64
# and 32 at 128 (64 spilled 188 bytes), float32 forward 32; backward 16 with the head-dim
# blocks below (32 spilled 24 bytes in the dq build at 128). Under
# the interpreter: 32, so that the tests' short sequences (33, 63, 130 positions) span several
# chunks and the passing of the state from chunk to chunk is exercised (the interpreter's cost
# is per chunk: each one's operations, not their size).
FORWARD_CHUNK = {64: 64, 128: 32}  # by the larger padded head dim
FORWARD_CHUNK_FP32 = 32
BACKWARD_CHUNK = 16
INTERPRETER_CHUNK = 32
# Value columns per forward program on a GPU (more programs for short batches; the
# normalisation's z is recomputed by each): 64, or 32 for float32, whose "ieee" dots run on
# FMA units with their operands in registers (64 spilled 9 KB per thread).
FORWARD_BLOCK_DV = 64
FORWARD_BLOCK_DV_FP32 = 32
# Head-dim blocks of the backward programs on a GPU (the module docstring's split): a dq
# program holds two fp32 state blocks (S and Ṡ) of [32, Dv], a dk (dv) program one of [64, Dv]
# ([Dk, 64]), the same registers. With BACKWARD_CHUNK (bfloat16) no build spills on sm_90a,
# nor at head dim 128 on sm_80 (dq blocks of 64 at Dv = 128 spilled 56 bytes on sm_90a, whole
# head dims 0.2-15 KB); the one-block dk/dv build at 64 spills 244 bytes on sm_80. Under the
# interpreter 32 for both, so that the tests' head dims 40 and 64 take two blocks.
BACKWARD_DQ_BLOCK = 32
BACKWARD_KV_BLOCK = 64
INTERPRETER_BACKWARD_BLOCK = 32
NUM_WARPS = 8


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _program_sequence(Cu, H, T, VARLEN: tl.constexpr):
    """This program's (sequence, head) index nh = n * H + h (axis 0, int64), its head h, batch
    entry b (0 for packed input) and its sequence's first row and length."""
    nh = tl.program_id(0).to(tl.int64)
    n = nh // H
    start, length, _k_start, _k_len, _shift = _sequence(n, Cu, Cu, T, T, VARLEN, False)
    return nh, nh % H, n * (1 - VARLEN), start, length


@triton.jit
def _state_tile(nh, cols_k, cols_v, dim_k, dim_v):
    """Mask and offsets of the rows cols_k and columns cols_v of (sequence, head) nh's state in
    a contiguous [N, H, Dk, Dv] tensor."""
    mask = (cols_k[:, None] < dim_k) & (cols_v[None, :] < dim_v)
    return mask, nh * dim_k * dim_v + cols_k[:, None] * dim_v + cols_v[None, :]


@triton.jit
def _features(base, rows, cols, stride_t, stride_d, n_rows, n_cols, PHI: tl.constexpr):
    """(x, φ(x)) fp32 [len(rows), len(cols)] of a tile, φ(x) zeroed outside [n_rows, n_cols]
    (padding must not count: φ(0) = 1 for elu+1)."""
    x = _load_tile(base, rows, cols, stride_t, stride_d, n_rows, n_cols).to(tl.float32)
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return x, tl.where(inside, feature_map(x, PHI), 0.0)


@triton.jit
def _state_dot(a, b, dot_type: tl.constexpr, STATE_LOW: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b where one side is an fp32 state: operands in the input dtype with STATE_LOW, else fp32."""
    if STATE_LOW:
        return tl.dot(a.to(dot_type), b.to(dot_type))
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _decay_masks(Decay, h, CHUNK: tl.constexpr, HAS_DECAY: tl.constexpr):
    """(log2γ, positions 0..C-1, lag i-j [C, C], D [C, C] = γ^(i-j) for j <= i else 0, γ^(i+1) [C]).
    Powers of γ are exp2(n·log2γ) with n >= 0 (log2γ = 0 without decay); an exponent the mask
    drops is clamped at 0."""
    log2_gamma = 0.0
    if HAS_DECAY:
        log2_gamma = tl.log2(tl.load(Decay + h).to(tl.float32))
    positions = tl.arange(0, CHUNK)
    lag = positions[:, None] - positions[None, :]
    intra = tl.where(lag >= 0, tl.exp2(tl.maximum(lag, 0).to(tl.float32) * log2_gamma), 0.0)
    row_decay = tl.exp2((positions + 1).to(tl.float32) * log2_gamma)
    return log2_gamma, positions, lag, intra, row_decay


@triton.jit
def _numerator_gradients(DOb, Ob, Denb, rows, cols_v, length, stride_dot, stride_dod, stride_ot, stride_od, dim_v, eps,
                         NORMALIZE: tl.constexpr):
    """(g, gden): the gradients of the numerator ([C, BLOCK_DV] fp32) and of the denominator
    ([C] fp32) of the rows, from do, and with normalize from o and den."""
    do = _load_tile(DOb, rows, cols_v, stride_dot, stride_dod, length, dim_v).to(tl.float32)
    if NORMALIZE:
        inv = 1.0 / (tl.load(Denb + rows, mask=rows < length, other=0.0) + eps)
        o = _load_tile(Ob, rows, cols_v, stride_ot, stride_od, length, dim_v).to(tl.float32)
        return do * inv[:, None], -tl.sum(do * o, axis=1) * inv
    else:
        return do, tl.sum(do, axis=1) * 0.0


# --------------------------------------------------------------------------- forward


@triton.jit
def _chunk_forward_kernel(
    Q, K, V,  # [B, H, T, Dk] / [B, H, T, Dv], strided (unit last stride)
    Decay,  # [H] (if HAS_DECAY)
    S0, Z0,  # [N, H, Dk, Dv], [N, H, Dk] fp32 contiguous (if HAS_S0 / HAS_Z0)
    Cu,  # [N + 1] int32 (if VARLEN)
    O,  # [B, H, T, Dv] strided, v's dtype
    Den,  # [B, H, T] fp32 contiguous (if NORMALIZE)
    SF, ZF,  # [N, H, Dk, Dv], [N, H, Dk] fp32 contiguous (if WRITE_FINAL)
    T, H, dim_k, dim_v, scale, eps,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    PHI: tl.constexpr, CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, HAS_DECAY: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_Z0: tl.constexpr, WRITE_FINAL: tl.constexpr, VARLEN: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
    STATE_LOW: tl.constexpr,
):
    nh, h, b, start, length = _program_sequence(Cu, H, T, VARLEN)
    cols_k = tl.arange(0, BLOCK_DK)
    cols_v = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    Qb = _head_ptr(Q, b, h, start, stride_qb, stride_qh, stride_qt)
    Kb = _head_ptr(K, b, h, start, stride_kb, stride_kh, stride_kt)
    Vb = _head_ptr(V, b, h, start, stride_vb, stride_vh, stride_vt)
    Ob = _head_ptr(O, b, h, start, stride_ob, stride_oh, stride_ot)
    Denb = Den + (b * H + h) * T + start
    state_mask, state_offsets = _state_tile(nh, cols_k, cols_v, dim_k, dim_v)
    if HAS_S0:
        s = tl.load(S0 + state_offsets, mask=state_mask, other=0.0)
    else:
        s = tl.zeros([BLOCK_DK, BLOCK_DV], dtype=tl.float32)
    if HAS_Z0:
        z = tl.load(Z0 + nh * dim_k + cols_k, mask=cols_k < dim_k, other=0.0)
    else:
        z = tl.zeros([BLOCK_DK], dtype=tl.float32)
    log2_gamma, positions, _lag, intra, row_decay = _decay_masks(Decay, h, CHUNK, HAS_DECAY)
    dot_type: tl.constexpr = Q.dtype.element_ty
    if not CAUSAL:  # the states over the whole sequence first
        for c0 in range(0, length, CHUNK):
            rows = c0 + positions
            _k, fk = _features(Kb, rows, cols_k, stride_kt, stride_kd, length, dim_k, PHI)
            v = _load_tile(Vb, rows, cols_v, stride_vt, stride_vd, length, dim_v)
            s += tl.dot(tl.trans(fk.to(dot_type)), v.to(dot_type), input_precision=PRECISION)
            z += tl.sum(fk, axis=0)
    for c0 in range(0, length, CHUNK):
        rows = c0 + positions
        valid = rows < length
        _q, fq = _features(Qb, rows, cols_k, stride_qt, stride_qd, length, dim_k, PHI)
        fq = fq * scale
        num = _state_dot(fq, s, dot_type, STATE_LOW, PRECISION)
        den = tl.sum(fq * z[None, :], axis=1)
        if CAUSAL:
            _k, fk = _features(Kb, rows, cols_k, stride_kt, stride_kd, length, dim_k, PHI)
            v = _load_tile(Vb, rows, cols_v, stride_vt, stride_vd, length, dim_v)
            a = tl.dot(fq.to(dot_type), tl.trans(fk.to(dot_type)), input_precision=PRECISION) * intra
            num = num * row_decay[:, None] + tl.dot(a.to(dot_type), v.to(dot_type), input_precision=PRECISION)
            den = den * row_decay + tl.sum(a, axis=1)
            # the state after the chunk: L = its length, factors γ^(L-1-j) on its rows
            chunk_len = tl.minimum(length - c0, CHUNK)
            end_lag = tl.maximum(chunk_len - 1 - positions, 0)
            end_decay = tl.where(valid, tl.exp2(end_lag.to(tl.float32) * log2_gamma), 0.0)
            chunk_decay = tl.exp2(chunk_len.to(tl.float32) * log2_gamma)
            fk_end = fk * end_decay[:, None]
            s = s * chunk_decay + tl.dot(tl.trans(fk_end.to(dot_type)), v.to(dot_type), input_precision=PRECISION)
            z = z * chunk_decay + tl.sum(fk_end, axis=0)
        if NORMALIZE:
            out = num / (den + eps)[:, None]
            if tl.program_id(1) == 0:
                tl.store(Denb + rows, den, mask=valid)
        else:
            out = num
        _store_tile(Ob, rows, cols_v, stride_ot, stride_od, length, dim_v, out)
    if WRITE_FINAL:
        tl.store(SF + state_offsets, s, mask=state_mask)
        if NORMALIZE:
            if tl.program_id(1) == 0:
                tl.store(ZF + nh * dim_k + cols_k, z, mask=cols_k < dim_k)


# --------------------------------------------------------------------------- backward


@triton.jit
def _chunk_backward_dq_kernel(
    Q, K, V,  # as the forward's
    O, Den,  # the forward's outputs (if NORMALIZE)
    DO,  # [B, H, T, Dv] strided (unit last stride)
    DSF, DZF,  # [N, H, Dk, Dv], [N, H, Dk] fp32 contiguous: the final states' gradients (if HAS_DSF / HAS_DZF)
    Decay, S0, Z0, Cu,  # as the forward's
    DQ,  # [B, H, T, Dk] strided, q's dtype
    DecayGrad,  # [N * H, Dk blocks] fp32: each program's share of dL/dlogγ (if DECAY_GRAD)
    T, H, dim_k, dim_v, scale, eps,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_dob, stride_doh, stride_dot, stride_dod,
    stride_dqb, stride_dqh, stride_dqt, stride_dqd,
    PHI: tl.constexpr, CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, HAS_DECAY: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_Z0: tl.constexpr, HAS_DSF: tl.constexpr, HAS_DZF: tl.constexpr,
    DECAY_GRAD: tl.constexpr, VARLEN: tl.constexpr, CHUNK: tl.constexpr, BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, STATE_LOW: tl.constexpr,
):
    nh, h, b, start, length = _program_sequence(Cu, H, T, VARLEN)
    cols_k = tl.program_id(1) * BLOCK_DK + tl.arange(0, BLOCK_DK)
    cols_v = tl.arange(0, BLOCK_DV)
    Qb = _head_ptr(Q, b, h, start, stride_qb, stride_qh, stride_qt)
    Kb = _head_ptr(K, b, h, start, stride_kb, stride_kh, stride_kt)
    Vb = _head_ptr(V, b, h, start, stride_vb, stride_vh, stride_vt)
    Ob = _head_ptr(O, b, h, start, stride_ob, stride_oh, stride_ot)
    DOb = _head_ptr(DO, b, h, start, stride_dob, stride_doh, stride_dot)
    DQb = _head_ptr(DQ, b, h, start, stride_dqb, stride_dqh, stride_dqt)
    Denb = Den + (b * H + h) * T + start
    k_mask = cols_k < dim_k
    state_mask, state_offsets = _state_tile(nh, cols_k, cols_v, dim_k, dim_v)
    log2_gamma, positions, lag, intra, row_decay = _decay_masks(Decay, h, CHUNK, HAS_DECAY)
    dot_type: tl.constexpr = Q.dtype.element_ty
    if HAS_S0:
        s = tl.load(S0 + state_offsets, mask=state_mask, other=0.0)
    else:
        s = tl.zeros([BLOCK_DK, BLOCK_DV], dtype=tl.float32)
    if HAS_Z0:
        z = tl.load(Z0 + nh * dim_k + cols_k, mask=k_mask, other=0.0)
    else:
        z = tl.zeros([BLOCK_DK], dtype=tl.float32)
    if not CAUSAL:  # the states over the whole sequence first
        for c0 in range(0, length, CHUNK):
            rows = c0 + positions
            _k, fk = _features(Kb, rows, cols_k, stride_kt, stride_kd, length, dim_k, PHI)
            v = _load_tile(Vb, rows, cols_v, stride_vt, stride_vd, length, dim_v)
            s += tl.dot(tl.trans(fk.to(dot_type)), v.to(dot_type), input_precision=PRECISION)
            z += tl.sum(fk, axis=0)
    if DECAY_GRAD:  # the tangents Ṡ = dS/dlogγ, ż, and dL/dlogγ
        s_dot = tl.zeros([BLOCK_DK, BLOCK_DV], dtype=tl.float32)
        z_dot = tl.zeros([BLOCK_DK], dtype=tl.float32)
        lag_weights = tl.maximum(lag, 0).to(tl.float32)
        decay_grad = 0.0
    for c0 in range(0, length, CHUNK):
        rows = c0 + positions
        q, fq = _features(Qb, rows, cols_k, stride_qt, stride_qd, length, dim_k, PHI)
        g, gden = _numerator_gradients(DOb, Ob, Denb, rows, cols_v, length, stride_dot, stride_dod, stride_ot,
                                       stride_od, dim_v, eps, NORMALIZE)
        # through the state before the chunk (the whole sequence's without causal)
        dfq = _state_dot(g, tl.trans(s), dot_type, STATE_LOW, PRECISION) + gden[:, None] * z[None, :]
        if CAUSAL:
            _k, fk = _features(Kb, rows, cols_k, stride_kt, stride_kd, length, dim_k, PHI)
            v = _load_tile(Vb, rows, cols_v, stride_vt, stride_vd, length, dim_v)
            m = (tl.dot(g.to(dot_type), tl.trans(v.to(dot_type)), input_precision=PRECISION) + gden[:, None]) * intra
            chunk_len = tl.minimum(length - c0, CHUNK)
            end_lag = tl.maximum(chunk_len - 1 - positions, 0)
            end_decay = tl.where(rows < length, tl.exp2(end_lag.to(tl.float32) * log2_gamma), 0.0)
            chunk_decay = tl.exp2(chunk_len.to(tl.float32) * log2_gamma)
            if DECAY_GRAD:
                # the intra-chunk factors γ^(i-j) give (i-j)·A_ij·m_ij; the inter-chunk ones
                # γ^(i+1) on S_prev give (i+1)·φq_i·dφq_i(inter), plus S_prev's own tangent
                fqs = fq * scale
                qk = tl.dot(fqs.to(dot_type), tl.trans(fk.to(dot_type)), input_precision=PRECISION)
                tangent_rows = tl.sum(fqs * (_state_dot(g, tl.trans(s_dot), dot_type, STATE_LOW, PRECISION)
                                             + gden[:, None] * z_dot[None, :]), axis=1)
                decay_grad += tl.sum(tl.sum(lag_weights * qk * m, axis=1))
                decay_grad += tl.sum(row_decay * ((positions + 1).to(tl.float32) * tl.sum(fqs * dfq, axis=1)
                                                  + tangent_rows))
                fk_lag = fk * (end_decay * end_lag.to(tl.float32))[:, None]
                s_dot = (s_dot + s * chunk_len.to(tl.float32)) * chunk_decay + tl.dot(
                    tl.trans(fk_lag.to(dot_type)), v.to(dot_type), input_precision=PRECISION)
                z_dot = (z_dot + z * chunk_len.to(tl.float32)) * chunk_decay + tl.sum(fk_lag, axis=0)
            dfq = dfq * row_decay[:, None] + tl.dot(m.to(dot_type), fk.to(dot_type), input_precision=PRECISION)
            fk_end = fk * end_decay[:, None]
            s = s * chunk_decay + tl.dot(tl.trans(fk_end.to(dot_type)), v.to(dot_type), input_precision=PRECISION)
            z = z * chunk_decay + tl.sum(fk_end, axis=0)
        dq = dfq * (feature_map_derivative(q, PHI) * scale)
        _store_tile(DQb, rows, cols_k, stride_dqt, stride_dqd, length, dim_k, dq)
    if DECAY_GRAD:
        # and through the final state: <Ṡ_T, dS_T> + <ż_T, dz_T>
        if HAS_DSF:
            decay_grad += tl.sum(tl.sum(s_dot * tl.load(DSF + state_offsets, mask=state_mask, other=0.0), axis=1))
        if HAS_DZF:
            decay_grad += tl.sum(z_dot * tl.load(DZF + nh * dim_k + cols_k, mask=k_mask, other=0.0))
        tl.store(DecayGrad + nh * tl.num_programs(1) + tl.program_id(1), decay_grad)


@triton.jit
def _chunk_backward_dkdv_kernel(
    Q, K, V,  # as the forward's
    O, Den,  # the forward's outputs (if NORMALIZE)
    DO,  # [B, H, T, Dv] strided (unit last stride)
    DSF, DZF,  # [N, H, Dk, Dv], [N, H, Dk] fp32 contiguous: the final states' gradients (if HAS_DSF / HAS_DZF)
    Decay, Cu,  # as the forward's
    DK, DV,  # strided, k's and v's dtype (if WRITE_DK / WRITE_DV)
    DS0, DZ0,  # fp32 contiguous (if S0_GRAD / Z0_GRAD)
    T, H, dim_k, dim_v, scale, eps,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_dob, stride_doh, stride_dot, stride_dod,
    stride_dkb, stride_dkh, stride_dkt, stride_dkd,
    stride_dvb, stride_dvh, stride_dvt, stride_dvd,
    PHI: tl.constexpr, CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, HAS_DECAY: tl.constexpr,
    HAS_DSF: tl.constexpr, HAS_DZF: tl.constexpr, S0_GRAD: tl.constexpr, Z0_GRAD: tl.constexpr,
    WRITE_DK: tl.constexpr, WRITE_DV: tl.constexpr, VARLEN: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, STATE_LOW: tl.constexpr,
):
    """One program per (sequence, head, block of Dk rows, block of Dv columns) carrying
    dS[rows, columns]: dk (and dz, dz_0) needs all columns in its block, dv all rows."""
    nh, h, b, start, length = _program_sequence(Cu, H, T, VARLEN)
    cols_k = tl.program_id(1) * BLOCK_DK + tl.arange(0, BLOCK_DK)
    cols_v = tl.program_id(2) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    Qb = _head_ptr(Q, b, h, start, stride_qb, stride_qh, stride_qt)
    Kb = _head_ptr(K, b, h, start, stride_kb, stride_kh, stride_kt)
    Vb = _head_ptr(V, b, h, start, stride_vb, stride_vh, stride_vt)
    Ob = _head_ptr(O, b, h, start, stride_ob, stride_oh, stride_ot)
    DOb = _head_ptr(DO, b, h, start, stride_dob, stride_doh, stride_dot)
    DKb = _head_ptr(DK, b, h, start, stride_dkb, stride_dkh, stride_dkt)
    DVb = _head_ptr(DV, b, h, start, stride_dvb, stride_dvh, stride_dvt)
    Denb = Den + (b * H + h) * T + start
    k_mask = cols_k < dim_k
    state_mask, state_offsets = _state_tile(nh, cols_k, cols_v, dim_k, dim_v)
    log2_gamma, positions, lag, _intra, row_decay = _decay_masks(Decay, h, CHUNK, HAS_DECAY)
    # the transposed mask: intra_t[j, i] = γ^(i-j) for i >= j
    intra_t = tl.where(lag <= 0, tl.exp2(tl.maximum(-lag, 0).to(tl.float32) * log2_gamma), 0.0)
    dot_type: tl.constexpr = Q.dtype.element_ty
    if HAS_DSF:
        ds = tl.load(DSF + state_offsets, mask=state_mask, other=0.0)
    else:
        ds = tl.zeros([BLOCK_DK, BLOCK_DV], dtype=tl.float32)
    if HAS_DZF:
        dz = tl.load(DZF + nh * dim_k + cols_k, mask=k_mask, other=0.0)
    else:
        dz = tl.zeros([BLOCK_DK], dtype=tl.float32)
    # (gden sums over the block's columns: it and dz are whole only where WRITE_DK)
    if not CAUSAL:  # the states' gradients over the whole sequence first
        for c0 in range(0, length, CHUNK):
            rows = c0 + positions
            _q, fq = _features(Qb, rows, cols_k, stride_qt, stride_qd, length, dim_k, PHI)
            fq = fq * scale
            g, gden = _numerator_gradients(DOb, Ob, Denb, rows, cols_v, length, stride_dot, stride_dod, stride_ot,
                                           stride_od, dim_v, eps, NORMALIZE)
            ds += tl.dot(tl.trans(fq.to(dot_type)), g.to(dot_type), input_precision=PRECISION)
            dz += tl.sum(fq * gden[:, None], axis=0)
    n_chunks = tl.cdiv(length, CHUNK)
    for chunk in range(0, n_chunks):
        c0 = (n_chunks - 1 - chunk) * CHUNK
        rows = c0 + positions
        k, fk = _features(Kb, rows, cols_k, stride_kt, stride_kd, length, dim_k, PHI)
        # through the state after the chunk (the whole sequence's without causal)
        if WRITE_DK:
            v = _load_tile(Vb, rows, cols_v, stride_vt, stride_vd, length, dim_v)
            dfk = _state_dot(v.to(tl.float32), tl.trans(ds), dot_type, STATE_LOW, PRECISION) + dz[None, :]
        if WRITE_DV:
            dv = _state_dot(fk, ds, dot_type, STATE_LOW, PRECISION)
        if CAUSAL:
            _q, fq = _features(Qb, rows, cols_k, stride_qt, stride_qd, length, dim_k, PHI)
            fq = fq * scale
            g, gden = _numerator_gradients(DOb, Ob, Denb, rows, cols_v, length, stride_dot, stride_dod, stride_ot,
                                           stride_od, dim_v, eps, NORMALIZE)
            chunk_len = tl.minimum(length - c0, CHUNK)
            end_lag = tl.maximum(chunk_len - 1 - positions, 0)
            end_decay = tl.where(rows < length, tl.exp2(end_lag.to(tl.float32) * log2_gamma), 0.0)
            if WRITE_DK:  # p[j, i] = γ^(i-j) (g_i·v_j + gden_i) for i >= j
                p = (tl.dot(v.to(dot_type), tl.trans(g.to(dot_type)), input_precision=PRECISION)
                     + gden[None, :]) * intra_t
                dfk = dfk * end_decay[:, None] + tl.dot(p.to(dot_type), fq.to(dot_type), input_precision=PRECISION)
            if WRITE_DV:  # a[j, i] = γ^(i-j) φk_j·φq_i for i >= j
                a = tl.dot(fk.to(dot_type), tl.trans(fq.to(dot_type)), input_precision=PRECISION) * intra_t
                dv = dv * end_decay[:, None] + tl.dot(a.to(dot_type), g.to(dot_type), input_precision=PRECISION)
            chunk_decay = tl.exp2(chunk_len.to(tl.float32) * log2_gamma)
            fq_start = fq * row_decay[:, None]
            ds = ds * chunk_decay + tl.dot(tl.trans(fq_start.to(dot_type)), g.to(dot_type), input_precision=PRECISION)
            dz = dz * chunk_decay + tl.sum(fq_start * gden[:, None], axis=0)
        if WRITE_DK:
            _store_tile(DKb, rows, cols_k, stride_dkt, stride_dkd, length, dim_k, dfk * feature_map_derivative(k, PHI))
        if WRITE_DV:
            _store_tile(DVb, rows, cols_v, stride_dvt, stride_dvd, length, dim_v, dv)
    if S0_GRAD:
        tl.store(DS0 + state_offsets, ds, mask=state_mask)
    if Z0_GRAD:
        tl.store(DZ0 + nh * dim_k + cols_k, dz, mask=k_mask)


# --------------------------------------------------------------------------- launch helpers


def _block(dim: int) -> int:
    """A head dim's tile width: a power of two, at least tl.dot's 16."""
    return max(16, triton.next_power_of_2(dim))


def _config(dim_k: int, dim_v: int, dtype: torch.dtype, on_gpu: bool, backward: bool) -> dict:
    """Chunk, tiles, warps and dot precisions of a launch."""
    block_dk, block_dv = _block(dim_k), _block(dim_v)
    config = dict(BLOCK_DK=block_dk, BLOCK_DV=block_dv, PRECISION="ieee" if dtype == torch.float32 else "tf32",
                  STATE_LOW=dtype == torch.bfloat16, num_warps=NUM_WARPS)
    if not on_gpu:
        return dict(config, CHUNK=INTERPRETER_CHUNK)
    if backward:
        return dict(config, CHUNK=BACKWARD_CHUNK)
    if dtype == torch.float32:
        return dict(config, CHUNK=FORWARD_CHUNK_FP32, BLOCK_DV=min(block_dv, FORWARD_BLOCK_DV_FP32))
    return dict(config, CHUNK=FORWARD_CHUNK[max(block_dk, block_dv, 64)], BLOCK_DV=min(block_dv, FORWARD_BLOCK_DV))


def _backward_configs(dim_k: int, dim_v: int, dtype: torch.dtype, on_gpu: bool) -> dict[str, dict]:
    """The backward's launches by name: "dq" over blocks of Dk rows, then "dkdv" (one block of
    each dim: dk, dv and the initial states' gradients) when Dk fits one block, else "dk" over
    blocks of Dk rows (dk and the initial states' gradients) and "dv" over blocks of Dv columns."""
    config = _config(dim_k, dim_v, dtype, on_gpu, backward=True)
    dq_split, kv_split = (BACKWARD_DQ_BLOCK, BACKWARD_KV_BLOCK) if on_gpu else (INTERPRETER_BACKWARD_BLOCK,) * 2
    block_dk, block_dv = min(config["BLOCK_DK"], kv_split), min(config["BLOCK_DV"], kv_split)
    dq = dict(config, BLOCK_DK=min(config["BLOCK_DK"], dq_split))
    if block_dk == config["BLOCK_DK"]:
        return dict(dq=dq, dkdv=dict(config, WRITE_DK=True, WRITE_DV=True))
    return dict(dq=dq, dk=dict(config, BLOCK_DK=block_dk, WRITE_DK=True, WRITE_DV=False),
                dv=dict(config, BLOCK_DV=block_dv, WRITE_DK=False, WRITE_DV=True))


def _on_gpu(q: torch.Tensor) -> bool:
    return q.device.type == "cuda"


def _sequences(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1


def chunk_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor | None,
                  s0: torch.Tensor | None, z0: torch.Tensor | None, cu_seqlens: torch.Tensor | None, *,
                  feature_map: str, causal: bool, normalize: bool, scale: float, eps: float, o: torch.Tensor,
                  den: torch.Tensor | None, s_final: torch.Tensor | None, z_final: torch.Tensor | None) -> None:
    """Writes o [B, H, T, Dv] (any strides, unit last), den [B, H, T] (with normalize) and the
    final states s_final [N, H, Dk, Dv] / z_final [N, H, Dk] where given. q, k, v: unit last
    stride; decay [H]; s0, z0 fp32 contiguous; cu_seqlens int32 [N + 1] (q is then [1, H, total, Dk])."""
    heads, length, dim_k = q.shape[1:]
    dim_v = v.shape[-1]
    programs = _sequences(q, cu_seqlens) * heads
    if programs == 0:
        return
    config = _config(dim_k, dim_v, q.dtype, _on_gpu(q), backward=False)
    torch.library.wrap_triton(_chunk_forward_kernel)[(programs, triton.cdiv(dim_v, config["BLOCK_DV"]))](
        q, k, v, q if decay is None else decay, q if s0 is None else s0, q if z0 is None else z0,
        q if cu_seqlens is None else cu_seqlens, o, o if den is None else den,
        o if s_final is None else s_final, o if z_final is None else z_final,
        length, heads, dim_k, dim_v, scale, eps,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        PHI=FEATURE_MAP_CODES[feature_map], CAUSAL=causal, NORMALIZE=normalize, HAS_DECAY=decay is not None,
        HAS_S0=s0 is not None, HAS_Z0=z0 is not None, WRITE_FINAL=s_final is not None,
        VARLEN=cu_seqlens is not None, **config,
    )


def chunk_backward(grad_o: torch.Tensor, grad_s: torch.Tensor | None, grad_z: torch.Tensor | None, q: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor, o: torch.Tensor | None, den: torch.Tensor | None,
                   decay: torch.Tensor | None, s0: torch.Tensor | None, z0: torch.Tensor | None,
                   cu_seqlens: torch.Tensor | None, *, feature_map: str, causal: bool, normalize: bool, scale: float,
                   eps: float, dq: torch.Tensor | None, dk: torch.Tensor | None, dv: torch.Tensor | None,
                   ds0: torch.Tensor | None, dz0: torch.Tensor | None,
                   decay_grad: bool) -> torch.Tensor | None:
    """Writes the gradients given: dq from the dq kernel, which runs when dq is given or with
    decay_grad; dk, dv (both or neither), ds0 and dz0 (fp32 contiguous) from the dk/dv
    kernels, which run when any is given (then dk and dv must be). With decay_grad returns
    dL/dlogγ, float32 [N, H] (the dq programs' shares summed in a fixed order; sum it over the
    sequences and divide by γ for dL/dγ), else None. grad_o: unit last stride; grad_s /
    grad_z: fp32 contiguous or None; o and den: the forward's (with normalize); the rest as
    ``chunk_forward``."""
    heads, length, dim_k = q.shape[1:]
    dim_v = v.shape[-1]
    sequences = _sequences(q, cu_seqlens)
    programs = sequences * heads
    configs = _backward_configs(dim_k, dim_v, q.dtype, _on_gpu(q))
    k_blocks = triton.cdiv(dim_k, configs["dq"]["BLOCK_DK"])
    decay_shares = torch.empty(programs, k_blocks, dtype=torch.float32, device=q.device) if decay_grad else None
    if programs == 0:
        return None if decay_shares is None else decay_shares.view(sequences, heads, k_blocks).sum(-1)
    o = grad_o if o is None else o
    shared = dict(PHI=FEATURE_MAP_CODES[feature_map], CAUSAL=causal, NORMALIZE=normalize,
                  HAS_DECAY=decay is not None, HAS_DSF=grad_s is not None, HAS_DZF=grad_z is not None,
                  VARLEN=cu_seqlens is not None)
    common = (q, k, v, o, grad_o if den is None else den, grad_o, grad_o if grad_s is None else grad_s,
              grad_o if grad_z is None else grad_z, grad_o if decay is None else decay)
    cu = grad_o if cu_seqlens is None else cu_seqlens
    sizes = (length, heads, dim_k, dim_v, scale, eps)
    strides = (*q.stride(), *k.stride(), *v.stride(), *o.stride(), *grad_o.stride())
    if dq is not None or decay_grad:
        dq_out = dq if dq is not None else torch.empty_like(q)
        torch.library.wrap_triton(_chunk_backward_dq_kernel)[(programs, k_blocks)](
            *common, grad_o if s0 is None else s0, grad_o if z0 is None else z0, cu, dq_out,
            grad_o if decay_shares is None else decay_shares, *sizes, *strides, *dq_out.stride(),
            HAS_S0=s0 is not None, HAS_Z0=z0 is not None, DECAY_GRAD=decay_grad, **shared, **configs["dq"],
        )
    if dk is not None:
        for config in (config for name, config in configs.items() if name != "dq"):
            initial_grads = config["WRITE_DK"]  # from the launch with every Dv column (dz_0 sums over them)
            grid = (programs, triton.cdiv(dim_k, config["BLOCK_DK"]), triton.cdiv(dim_v, config["BLOCK_DV"]))
            torch.library.wrap_triton(_chunk_backward_dkdv_kernel)[grid](
                *common, cu, dk, dv, grad_o if ds0 is None else ds0, grad_o if dz0 is None else dz0,
                *sizes, *strides, *dk.stride(), *dv.stride(),
                S0_GRAD=initial_grads and ds0 is not None, Z0_GRAD=initial_grads and dz0 is not None,
                **shared, **config,
            )
    return None if decay_shares is None else decay_shares.view(sequences, heads, k_blocks).sum(-1)


# --------------------------------------------------------------------------- compile check


def compile_variants() -> list[CompileVariant]:
    """The forward and the backward's launches, causal with decay, normalisation, initial and
    final states (every gradient asked for), elu+1, on [B, T, H, D] tensors seen as
    [B, H, T, D] (unit last strides, the others multiples of 16), with the chunks, tiles and
    warps the launchers pick on a GPU: bfloat16 at Dk = Dv = 64 (dq, dkdv) and 128 (dq, dk,
    dv) on sm_90a and sm_80, and the float32 forward at 64 (its dots run on FMA units); then
    the recurrent kernels' variants (``algorithm="recurrent"``, listed by their own module)."""
    fp32 = "*fp32"
    variants = []
    for dtype, dim, archs, backward in ((torch.bfloat16, 64, (SM90, SM80), True),
                                        (torch.bfloat16, 128, (SM90, SM80), True),
                                        (torch.float32, 64, (SM90,), False)):
        p = "*" + triton_type(dtype)
        strides = tuple(f"stride_{t}{d}" for t in ("q", "k", "v", "o", "do") for d in "bht")
        flags = dict(PHI=FEATURE_MAP_CODES["elu+1"], CAUSAL=True, NORMALIZE=True, HAS_DECAY=True, VARLEN=False,
                     stride_qd=1, stride_kd=1, stride_vd=1, stride_od=1)
        label = f"{triton_type(dtype)} D={dim}"
        launches = dict(forward=_config(dim, dim, dtype, on_gpu=True, backward=False))
        if backward:
            launches.update(_backward_configs(dim, dim, dtype, on_gpu=True))
        for kernel_pass, config in launches.items():
            config = dict(config)
            num_warps = config.pop("num_warps")
            if kernel_pass == "forward":
                kernel = _chunk_forward_kernel
                types = dict(Q=p, K=p, V=p, Decay=p, S0=fp32, Z0=fp32, Cu="*i32", O=p, Den=fp32, SF=fp32, ZF=fp32)
                constexprs = dict(flags, **config, HAS_S0=True, HAS_Z0=True, WRITE_FINAL=True)
                divisible = strides[:12]
            else:
                types = dict(Q=p, K=p, V=p, O=p, Den=fp32, DO=p, DSF=fp32, DZF=fp32, Decay=p, Cu="*i32")
                constexprs = dict(flags, **config, HAS_DSF=True, HAS_DZF=True, stride_dod=1)
                if kernel_pass == "dq":
                    kernel = _chunk_backward_dq_kernel
                    types.update(S0=fp32, Z0=fp32, DQ=p, DecayGrad=fp32)
                    constexprs.update(HAS_S0=True, HAS_Z0=True, DECAY_GRAD=True, stride_dqd=1)
                    divisible = strides + ("stride_dqb", "stride_dqh", "stride_dqt")
                else:
                    kernel = _chunk_backward_dkdv_kernel
                    types.update(DK=p, DV=p, DS0=fp32, DZ0=fp32)
                    constexprs.update(S0_GRAD=config["WRITE_DK"], Z0_GRAD=config["WRITE_DK"], stride_dkd=1,
                                      stride_dvd=1)
                    divisible = strides + tuple(f"stride_d{t}{d}" for t in "kv" for d in "bht")
            variants.append(CompileVariant(
                name=f"linear_attention chunk {kernel_pass} {label}", kernel=kernel.__name__,
                types=dict(types, scale="fp32", eps="fp32"), constexprs=constexprs, num_warps=num_warps,
                num_stages=TRITON_DEFAULT_STAGES, archs=archs, divisible_by_16=("dim_k", "dim_v") + divisible,
            ))
    return variants + _recurrent.compile_variants()
