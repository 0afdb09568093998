"""Triton kernels of linear attention by its recurrence (``algorithm="recurrent"`` of
``fusednn.ops.linear_attention``): one time step per loop iteration, the state in fp32
registers. The decoding path, and the checker of the chunked kernels.

Notation (``fusednn.reference.linear_attention``): φq_t = scale φ(q_t), φk_t = φ(k_t), γ the
head's decay (causal only), positions t = 0..L-1 of one sequence::

    S_t = γ S_{t-1} + φk_t v_tᵀ       z_t = γ z_{t-1} + φk_t        (S_{-1}, z_{-1}: the initial state)
    n_t = S_tᵀ φq_t                   d_t = φq_t·z_t + eps           o_t = n_t / d_t  (n_t without normalize)

Without causal every query reads the final sums (no decay). Varlen: program n reads rows
cu[n]:cu[n+1] of the packed [1, H, total, D] tensors and state n.

Two kernels, each a sweep over time of a state M [Dk, Dv] (and a vector m [Dk] with normalize)
that takes ``M = γ M + κ_t υ_tᵀ``, ``m = γ m + c_t κ_t`` at each step and reads it out:

* ``_state_columns_kernel``: one program per (sequence, head, block of Dv columns) holding
  M[:, block]; it reads out ``out_t = Mᵀ ρ_t`` (divided by ``ρ_t·m + eps`` with normalize),
  a sum over Dk.
  Forward: κ = φk, υ = v, ρ = φq; it writes o, d (the denominator, saved for backward)
  and the final state.
  dv (REVERSE): the gradient A_t = dL/dS_t obeys A_t = γ A_{t+1} + φq_t gn_tᵀ, from the
  final state's gradient, backwards in time; dv_t = A_tᵀ φk_t. That is this kernel with
  κ = φq, υ = gn_t = do_t / d_t, ρ = φk, run from the last position to the first (the decay
  applied after the read-out).
* ``_state_rows_kernel``: one program per (sequence, head, block of Dk rows) holding
  M[block, :]; it reads out ``g_t = M ω_t + c'_t m`` (a sum over Dv), the gradient of the
  feature ρ_t, and writes ``g_t · dφ(x)/dx`` at the input x of ρ.
  dq (forward in time): M = S, m = z, κ = φk, υ = v, c = 1; ω = gn_t, c' = gd_t, where
  gd_t = -(do_t·o_t) / d_t is the gradient of d_t: g_t = S_t gn_t + gd_t z_t.
  dk (REVERSE): M = A, m = a = dL/dz_t (a_t = γ a_{t+1} + gd_t φq_t), κ = φq, υ = gn_t,
  c = gd_t; ω = v_t, c' = 1: g_t = A_t v_t + a_t. It ends on the initial state's gradients.
  With a decay the dq pass also carries the states' history R_t = γ R_{t-1} + S_{t-1}
  (and Rz_t of z) and reads dL/dγ = Σ_t φq_t·(R_t gn_t + gd_t Rz_t) + <R, gS_L> + <Rz, gz_L>
  out of it (``fusednn.ops._linear_attention_recurrent``), one share per program.

No pass divides by γ to step back in time: the backward recomputes the states forward (dq)
and carries the gradients backward (dk, dv), three passes in all, each program writing only
its own block (no atomics, deterministic). Non-causal: one sweep accumulates, a second
reads out. Row offsets are 64-bit (the interpreter checks 32-bit arithmetic for overflow).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusednn.kernels import SM80, SM90, CompileVariant
from fusednn.kernels._feature_map import FEATURE_MAP_CODES, feature_map, feature_map_derivative
from fusednn.kernels._tiles import _head_ptr

# Columns per program of the columns kernel and rows per program of the rows kernel: the
# state block [Dk, 16] (or [16, Dv]) is 16 fp32 registers a thread at D = 128 with 4 warps
# (the compile check: 72 registers for the forward, 128 for the dq pass that also carries the
# states' history, no spills; blocks of 32 spill on sm_80), and more programs keep more SMs
# busy at small B * H. The interpreter runs programs one after another at a cost per
# operation, not per element: its blocks of 32 still give head dims above 32 two blocks, so
# the tests cover the block masks.
BLOCK = 16
INTERPRETER_BLOCK = 32
NUM_WARPS = 4
NUM_STAGES = 2


# --------------------------------------------------------------------------- device code


@triton.jit
def _sequence_bounds(Cu, n, seq_len, VARLEN: tl.constexpr):
    """(batch index, first row, length) of sequence n: batch n rows 0..T-1, or varlen rows
    cu[n]..cu[n+1] of the single packed batch entry."""
    if VARLEN:
        start = tl.load(Cu + n)
        return n * 0, start, tl.load(Cu + n + 1) - start
    start = tl.full((), 0, tl.int32)  # a tensor even where the launch specialises seq_len = 1
    return n, start, start + seq_len


@triton.jit
def _columns_sweep(state, norm, Rh, Kh, Vh, Denh, Outh, OutDenh, length, ks, vs, k_mask, v_mask,
                   stride_r_t, stride_k_t, stride_v_t, stride_o_t, gamma, read_scale, key_scale, eps, first_block,
                   PHI: tl.constexpr, ACCUMULATE: tl.constexpr, EMIT: tl.constexpr, REVERSE: tl.constexpr,
                   NORMALIZE: tl.constexpr, VALUES_OVER_DEN: tl.constexpr, HAS_DECAY: tl.constexpr):
    """One sweep over the positions of a sequence (see the module docstring): the state takes
    each position (ACCUMULATE) and/or is read out there (EMIT). REVERSE walks from the last
    position and applies the decay after the read-out (a gradient's recurrence). The row
    pointers advance by one position per step."""
    first = 0
    step: tl.constexpr = -1 if REVERSE else 1
    if REVERSE:
        first = (length - 1).to(tl.int64)
    if ACCUMULATE:
        k_ptrs = Kh + first * stride_k_t + ks
        v_ptrs = Vh + first * stride_v_t + vs
        den_ptr = Denh + first
    if EMIT:
        r_ptrs = Rh + first * stride_r_t + ks
        o_ptrs = Outh + first * stride_o_t + vs
        out_den_ptr = OutDenh + first
    for _ in range(0, length):
        if ACCUMULATE:
            # zero on the padding rows, where φ(0) need not be 0
            keys = tl.where(k_mask, feature_map(tl.load(k_ptrs, mask=k_mask, other=0.0).to(tl.float32), PHI), 0.0)
            keys = keys * key_scale
            values = tl.load(v_ptrs, mask=v_mask, other=0.0).to(tl.float32)
            if VALUES_OVER_DEN:
                values = values / tl.load(den_ptr)
                den_ptr += step
            if HAS_DECAY and not REVERSE:
                state = state * gamma
                if NORMALIZE:
                    norm = norm * gamma
            state += keys[:, None] * values[None, :]
            if NORMALIZE:
                norm += keys
            k_ptrs += stride_k_t * step
            v_ptrs += stride_v_t * step
        if EMIT:
            reads = feature_map(tl.load(r_ptrs, mask=k_mask, other=0.0).to(tl.float32), PHI) * read_scale
            out = tl.sum(reads[:, None] * state, axis=0)
            if NORMALIZE:
                den = tl.sum(reads * norm, axis=0) + eps
                out = out / den
                tl.store(out_den_ptr, den, mask=first_block)
                out_den_ptr += step
            tl.store(o_ptrs, out.to(Outh.dtype.element_ty), mask=v_mask)
            r_ptrs += stride_r_t * step
            o_ptrs += stride_o_t * step
        if HAS_DECAY and REVERSE and ACCUMULATE:
            state = state * gamma
            if NORMALIZE:
                norm = norm * gamma
    return state, norm


@triton.jit
def _state_columns_kernel(
    Reads, Keys, Values,  # [B, H, T, Dk], [B, H, T, Dk], [B, H, T, Dv] strided (unit last stride)
    Den,  # [B, H, T] fp32: divides the values (VALUES_OVER_DEN)
    Decay,  # [H] (HAS_DECAY)
    State0, Norm0,  # [N, H, Dk, Dv], [N, H, Dk] contiguous (HAS_STATE0, HAS_NORM0)
    Cu,  # [N + 1] int32 (VARLEN)
    Out,  # [B, H, T, Dv] strided
    OutDen,  # [B, H, T] fp32: the denominators (NORMALIZE)
    StateOut, NormOut,  # [N, H, Dk, Dv], [N, H, Dk] fp32 contiguous (WRITE_STATE)
    stride_r_b, stride_r_h, stride_r_t,
    stride_k_b, stride_k_h, stride_k_t,
    stride_v_b, stride_v_h, stride_v_t,
    stride_o_b, stride_o_h, stride_o_t,
    num_heads, seq_len, key_dim, value_dim,
    read_scale, key_scale, eps,
    PHI: tl.constexpr, CAUSAL: tl.constexpr, REVERSE: tl.constexpr, NORMALIZE: tl.constexpr,
    VALUES_OVER_DEN: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_STATE0: tl.constexpr, HAS_NORM0: tl.constexpr,
    VARLEN: tl.constexpr, WRITE_STATE: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """out_t = M_tᵀ φ(reads_t) read_scale, M_t = γ M_{t±1} + φ(keys_t) key_scale values_tᵀ,
    for one (sequence, head, block of Dv columns); see the module docstring."""
    nh = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    n = nh // num_heads
    h = nh % num_heads
    batch, start, length = _sequence_bounds(Cu, n, seq_len, VARLEN)
    ks = tl.arange(0, BLOCK_K)
    vs = block * BLOCK_V + tl.arange(0, BLOCK_V)
    k_mask = ks < key_dim
    v_mask = vs < value_dim
    state_offsets = nh * key_dim * value_dim + ks[:, None].to(tl.int64) * value_dim + vs[None, :]
    state_mask = k_mask[:, None] & v_mask[None, :]
    if HAS_STATE0:
        state = tl.load(State0 + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    else:
        state = tl.full([BLOCK_K, BLOCK_V], 0.0, tl.float32)
    if HAS_NORM0:
        norm = tl.load(Norm0 + nh * key_dim + ks, mask=k_mask, other=0.0).to(tl.float32)
    else:
        norm = tl.full([BLOCK_K], 0.0, tl.float32)
    gamma = 1.0
    if HAS_DECAY:
        gamma = tl.load(Decay + h).to(tl.float32)
    Rh = _head_ptr(Reads, batch, h, start, stride_r_b, stride_r_h, stride_r_t)
    Kh = _head_ptr(Keys, batch, h, start, stride_k_b, stride_k_h, stride_k_t)
    Vh = _head_ptr(Values, batch, h, start, stride_v_b, stride_v_h, stride_v_t)
    Outh = _head_ptr(Out, batch, h, start, stride_o_b, stride_o_h, stride_o_t)
    den_row = (batch * num_heads + h) * seq_len + start
    first_block = block == 0  # every column block computes the same denominators: one writes them
    if CAUSAL:
        state, norm = _columns_sweep(state, norm, Rh, Kh, Vh, Den + den_row, Outh, OutDen + den_row, length, ks, vs,
                                     k_mask, v_mask, stride_r_t, stride_k_t, stride_v_t, stride_o_t, gamma,
                                     read_scale, key_scale, eps, first_block, PHI, True, True, REVERSE, NORMALIZE,
                                     VALUES_OVER_DEN, HAS_DECAY)
    else:
        state, norm = _columns_sweep(state, norm, Rh, Kh, Vh, Den + den_row, Outh, OutDen + den_row, length, ks, vs,
                                     k_mask, v_mask, stride_r_t, stride_k_t, stride_v_t, stride_o_t, gamma,
                                     read_scale, key_scale, eps, first_block, PHI, True, False, REVERSE, NORMALIZE,
                                     VALUES_OVER_DEN, False)
        state, norm = _columns_sweep(state, norm, Rh, Kh, Vh, Den + den_row, Outh, OutDen + den_row, length, ks, vs,
                                     k_mask, v_mask, stride_r_t, stride_k_t, stride_v_t, stride_o_t, gamma,
                                     read_scale, key_scale, eps, first_block, PHI, False, True, REVERSE, NORMALIZE,
                                     VALUES_OVER_DEN, False)
    if WRITE_STATE:
        tl.store(StateOut + state_offsets, state, mask=state_mask)
        if NORMALIZE:
            tl.store(NormOut + nh * key_dim + ks, norm, mask=k_mask & first_block)


@triton.jit
def _rows_sweep(state, norm, history, norm_history, decay_terms, Rh, Kh, Vh, Oh, DOh, Denh, DXh, length, ks, vs, k_mask,
                v_mask, stride_r_t, stride_k_t, stride_v_t, stride_o_t, stride_do_t, stride_dx_t, gamma, read_scale,
                key_scale, PHI: tl.constexpr, ACCUMULATE: tl.constexpr, EMIT: tl.constexpr, REVERSE: tl.constexpr,
                NORMALIZE: tl.constexpr, HAS_DECAY: tl.constexpr, DECAY_GRAD: tl.constexpr):
    """One sweep of the rows kernel (see the module docstring); REVERSE is the dk pass (from
    the last position, the output's gradient entering the state), else the dq pass, which
    with DECAY_GRAD also carries the states' decayed history (R, Rz) and reads dL/dγ out of it."""
    first = 0
    step: tl.constexpr = -1 if REVERSE else 1
    if REVERSE:
        first = (length - 1).to(tl.int64)
    # the output's gradient (gn, gd) enters the state in the dk pass and reads it in the dq pass
    GRAD_ROWS: tl.constexpr = (ACCUMULATE and REVERSE) or (EMIT and not REVERSE)
    VALUE_ROWS: tl.constexpr = (ACCUMULATE and not REVERSE) or (EMIT and REVERSE)
    if GRAD_ROWS:
        do_ptrs = DOh + first * stride_do_t + vs
        o_ptrs = Oh + first * stride_o_t + vs
        den_ptr = Denh + first
    if VALUE_ROWS:
        v_ptrs = Vh + first * stride_v_t + vs
    if ACCUMULATE:
        k_ptrs = Kh + first * stride_k_t + ks
    if EMIT:
        r_ptrs = Rh + first * stride_r_t + ks
        dx_ptrs = DXh + first * stride_dx_t + ks
    for _ in range(0, length):
        if GRAD_ROWS:  # gn = do / d, gd = -(do·o) / d: the gradients of the numerator and denominator
            grad_num = tl.load(do_ptrs, mask=v_mask, other=0.0).to(tl.float32)
            grad_den = 0.0
            if NORMALIZE:
                grad_num = grad_num / tl.load(den_ptr)
                grad_den = -tl.sum(grad_num * tl.load(o_ptrs, mask=v_mask, other=0.0).to(tl.float32), axis=0)
                o_ptrs += stride_o_t * step
                den_ptr += step
            do_ptrs += stride_do_t * step
        if VALUE_ROWS:
            v = tl.load(v_ptrs, mask=v_mask, other=0.0).to(tl.float32)
            v_ptrs += stride_v_t * step
        if ACCUMULATE:
            # zero on the padding rows, where φ(0) need not be 0
            keys = tl.where(k_mask, feature_map(tl.load(k_ptrs, mask=k_mask, other=0.0).to(tl.float32), PHI), 0.0)
            keys = keys * key_scale
            k_ptrs += stride_k_t * step
            if DECAY_GRAD:  # R_t = γ R_{t-1} + S_{t-1}, before S_t takes position t
                history = history * gamma + state
                if NORMALIZE:
                    norm_history = norm_history * gamma + norm
            if HAS_DECAY and not REVERSE:
                state = state * gamma
                if NORMALIZE:
                    norm = norm * gamma
            if REVERSE:
                state += keys[:, None] * grad_num[None, :]
                if NORMALIZE:
                    norm += keys * grad_den
            else:
                state += keys[:, None] * v[None, :]
                if NORMALIZE:
                    norm += keys
        if EMIT:
            if REVERSE:
                grad = tl.sum(state * v[None, :], axis=1)
                if NORMALIZE:
                    grad += norm
            else:
                grad = tl.sum(state * grad_num[None, :], axis=1)
                if NORMALIZE:
                    grad += norm * grad_den
            x = tl.load(r_ptrs, mask=k_mask, other=0.0).to(tl.float32)
            tl.store(dx_ptrs, (grad * feature_map_derivative(x, PHI) * read_scale).to(DXh.dtype.element_ty),
                     mask=k_mask)
            r_ptrs += stride_r_t * step
            dx_ptrs += stride_dx_t * step
            if DECAY_GRAD:  # φq_t·(R_t gn_t + gd_t Rz_t)
                history_grad = tl.sum(history * grad_num[None, :], axis=1)
                if NORMALIZE:
                    history_grad += norm_history * grad_den
                decay_terms += feature_map(x, PHI) * history_grad
        if HAS_DECAY and REVERSE and ACCUMULATE:
            state = state * gamma
            if NORMALIZE:
                norm = norm * gamma
    return state, norm, history, norm_history, decay_terms


@triton.jit
def _state_rows_kernel(
    Reads, Keys, V, O, DO,  # [B, H, T, Dk], [B, H, T, Dk], [B, H, T, Dv] x 3, strided (unit last stride)
    Den,  # [B, H, T] fp32: the forward's denominators (NORMALIZE)
    Decay,  # [H] (HAS_DECAY)
    State0, Norm0,  # [N, H, Dk, Dv], [N, H, Dk] contiguous (HAS_STATE0, HAS_NORM0)
    Cu,  # [N + 1] int32 (VARLEN)
    DX,  # [B, H, T, Dk] strided: the gradient of the reads' input
    StateOut, NormOut,  # [N, H, Dk, Dv], [N, H, Dk] fp32 contiguous (WRITE_STATE)
    GradFinal, GradNormFinal,  # [N, H, Dk, Dv], [N, H, Dk] contiguous: the final state's gradients (HAS_GRAD_FINAL)
    DecayGrad,  # [N * H, Dk blocks] fp32: each program's share of dL/dγ (DECAY_GRAD)
    stride_r_b, stride_r_h, stride_r_t,
    stride_k_b, stride_k_h, stride_k_t,
    stride_v_b, stride_v_h, stride_v_t,
    stride_o_b, stride_o_h, stride_o_t,
    stride_do_b, stride_do_h, stride_do_t,
    stride_dx_b, stride_dx_h, stride_dx_t,
    num_heads, seq_len, key_dim, value_dim,
    read_scale, key_scale,
    PHI: tl.constexpr, CAUSAL: tl.constexpr, REVERSE: tl.constexpr, NORMALIZE: tl.constexpr,
    HAS_DECAY: tl.constexpr, DECAY_GRAD: tl.constexpr, HAS_STATE0: tl.constexpr, HAS_NORM0: tl.constexpr,
    HAS_GRAD_FINAL: tl.constexpr, VARLEN: tl.constexpr, WRITE_STATE: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """The dq pass (reads = q, keys = k) or with REVERSE the dk pass (reads = k, keys = q)
    for one (sequence, head, block of Dk rows); see the module docstring."""
    nh = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    n = nh // num_heads
    h = nh % num_heads
    batch, start, length = _sequence_bounds(Cu, n, seq_len, VARLEN)
    ks = block * BLOCK_K + tl.arange(0, BLOCK_K)
    vs = tl.arange(0, BLOCK_V)
    k_mask = ks < key_dim
    v_mask = vs < value_dim
    state_offsets = nh * key_dim * value_dim + ks[:, None].to(tl.int64) * value_dim + vs[None, :]
    state_mask = k_mask[:, None] & v_mask[None, :]
    norm_offsets = nh * key_dim + ks
    if HAS_STATE0:
        state = tl.load(State0 + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    else:
        state = tl.full([BLOCK_K, BLOCK_V], 0.0, tl.float32)
    if HAS_NORM0:
        norm = tl.load(Norm0 + norm_offsets, mask=k_mask, other=0.0).to(tl.float32)
    else:
        norm = tl.full([BLOCK_K], 0.0, tl.float32)
    gamma = 1.0
    if HAS_DECAY:
        gamma = tl.load(Decay + h).to(tl.float32)
    if DECAY_GRAD:  # R, Rz and the terms of dL/dγ
        history = tl.full([BLOCK_K, BLOCK_V], 0.0, tl.float32)
        norm_history = tl.full([BLOCK_K], 0.0, tl.float32)
        decay_terms = tl.full([BLOCK_K], 0.0, tl.float32)
    else:  # placeholders the sweep passes through untouched
        history = state
        norm_history = norm
        decay_terms = norm
    Rh = _head_ptr(Reads, batch, h, start, stride_r_b, stride_r_h, stride_r_t)
    Kh = _head_ptr(Keys, batch, h, start, stride_k_b, stride_k_h, stride_k_t)
    Vh = _head_ptr(V, batch, h, start, stride_v_b, stride_v_h, stride_v_t)
    Oh = _head_ptr(O, batch, h, start, stride_o_b, stride_o_h, stride_o_t)
    DOh = _head_ptr(DO, batch, h, start, stride_do_b, stride_do_h, stride_do_t)
    DXh = _head_ptr(DX, batch, h, start, stride_dx_b, stride_dx_h, stride_dx_t)
    Denh = Den + (batch * num_heads + h) * seq_len + start
    if CAUSAL:
        state, norm, history, norm_history, decay_terms = _rows_sweep(
            state, norm, history, norm_history, decay_terms, Rh, Kh, Vh, Oh, DOh, Denh, DXh, length, ks, vs, k_mask,
            v_mask, stride_r_t, stride_k_t, stride_v_t, stride_o_t, stride_do_t, stride_dx_t, gamma, read_scale,
            key_scale, PHI, True, True, REVERSE, NORMALIZE, HAS_DECAY, DECAY_GRAD)
    else:
        state, norm, history, norm_history, decay_terms = _rows_sweep(
            state, norm, history, norm_history, decay_terms, Rh, Kh, Vh, Oh, DOh, Denh, DXh, length, ks, vs, k_mask,
            v_mask, stride_r_t, stride_k_t, stride_v_t, stride_o_t, stride_do_t, stride_dx_t, gamma, read_scale,
            key_scale, PHI, True, False, REVERSE, NORMALIZE, False, False)
        state, norm, history, norm_history, decay_terms = _rows_sweep(
            state, norm, history, norm_history, decay_terms, Rh, Kh, Vh, Oh, DOh, Denh, DXh, length, ks, vs, k_mask,
            v_mask, stride_r_t, stride_k_t, stride_v_t, stride_o_t, stride_do_t, stride_dx_t, gamma, read_scale,
            key_scale, PHI, False, True, REVERSE, NORMALIZE, False, False)
    if DECAY_GRAD:
        decay_grad = tl.sum(decay_terms, axis=0) * read_scale
        if HAS_GRAD_FINAL:  # the final state's gradient reads the history at the last position
            grad_final = tl.load(GradFinal + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
            decay_grad += tl.sum(tl.sum(history * grad_final, axis=1), axis=0)
            if NORMALIZE:
                grad_norm_final = tl.load(GradNormFinal + norm_offsets, mask=k_mask, other=0.0).to(tl.float32)
                decay_grad += tl.sum(norm_history * grad_norm_final, axis=0)
        tl.store(DecayGrad + nh * tl.num_programs(1) + block, decay_grad)
    if WRITE_STATE:
        tl.store(StateOut + state_offsets, state, mask=state_mask)
        if NORMALIZE:
            tl.store(NormOut + norm_offsets, norm, mask=k_mask)


# --------------------------------------------------------------------------- launch helpers


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, time) strides of a [B, H, T, D] tensor (its last stride is 1)."""
    return t.stride(0), t.stride(1), t.stride(2)


def _full_block(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _block(dim: int, device: torch.device) -> int:
    return min(BLOCK if device.type == "cuda" else INTERPRETER_BLOCK, _full_block(dim))


def _launch(kernel, grid, *args, **constexprs) -> None:
    if grid[0] * grid[1]:
        torch.library.wrap_triton(kernel)[grid](*args, **constexprs, num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def _sizes(q: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None) -> tuple[int, ...]:
    """(sequences N, heads H, rows per batch entry T, Dk, Dv)."""
    sequences = q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    return sequences, q.shape[1], q.shape[2], q.shape[3], v.shape[3]


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def linear_attention_recurrent_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor | None, s0: torch.Tensor | None,
    z0: torch.Tensor | None, cu_seqlens: torch.Tensor | None, *, feature_map: str, causal: bool, normalize: bool,
    scale: float, eps: float, o: torch.Tensor, den: torch.Tensor | None, s_final: torch.Tensor | None,
    z_final: torch.Tensor | None,
) -> None:
    """Writes o [B, H, T, Dv] (any strides, unit last), den [B, H, T] fp32 (the denominators
    φq_t·z_t + eps; with normalize), and with s_final the final state s_final [N, H, Dk, Dv]
    and z_final [N, H, Dk] (with normalize), fp32 contiguous. q, k: [B, H, T, Dk], v: [B, H, T, Dv]
    (unit last stride); decay [H] or None; s0 [N, H, Dk, Dv], z0 [N, H, Dk] or None; cu_seqlens
    int32 [N + 1] or None. decay applies only with causal; z0 only with normalize."""
    sequences, heads, length, key_dim, value_dim = _sizes(q, v, cu_seqlens)
    block_v = _block(value_dim, q.device)
    z0 = z0 if normalize else None

    def pointer(t):
        return o if t is None else t

    _launch(
        _state_columns_kernel, (sequences * heads, triton.cdiv(value_dim, block_v)),
        q, k, v, o, pointer(decay), pointer(_contiguous(s0)), pointer(_contiguous(z0)), pointer(cu_seqlens), o,
        pointer(den), pointer(s_final), pointer(z_final), *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        heads, length, key_dim, value_dim, scale, 1.0, eps,
        PHI=FEATURE_MAP_CODES[feature_map], CAUSAL=causal, REVERSE=False, NORMALIZE=normalize,
        VALUES_OVER_DEN=False, HAS_DECAY=causal and decay is not None, HAS_STATE0=s0 is not None,
        HAS_NORM0=z0 is not None, VARLEN=cu_seqlens is not None, WRITE_STATE=s_final is not None,
        BLOCK_K=_full_block(key_dim), BLOCK_V=block_v,
    )


def linear_attention_recurrent_backward(
    grad_o: torch.Tensor, grad_s: torch.Tensor | None, grad_z: torch.Tensor | None, q: torch.Tensor,
    k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, den: torch.Tensor | None, decay: torch.Tensor | None,
    s0: torch.Tensor | None, z0: torch.Tensor | None, cu_seqlens: torch.Tensor | None, *, feature_map: str,
    causal: bool, normalize: bool, scale: float, dq: torch.Tensor | None, dk: torch.Tensor | None,
    dv: torch.Tensor | None, grad_s0: torch.Tensor | None, grad_z0: torch.Tensor | None, decay_grad: bool,
) -> torch.Tensor | None:
    """Writes the gradients given as tensors (None: not wanted): dq, dk [B, H, T, Dk], dv
    [B, H, T, Dv] (any strides, unit last), grad_s0 [N, H, Dk, Dv], grad_z0 [N, H, Dk] (fp32
    contiguous). grad_o: [B, H, T, Dv] (unit last stride); grad_s / grad_z: the final state's
    gradients or None; o and den: the forward's output and denominators; the other inputs as
    the forward's. With decay_grad and a causal decay returns dL/dγ, float32 [H] (summed
    over the sequences), else None. Runs the dq pass, the dk pass and the dv pass, each only
    where needed."""
    sequences, heads, length, key_dim, value_dim = _sizes(q, v, cu_seqlens)
    has_decay = causal and decay is not None
    decay_grad = decay_grad and has_decay
    block_k = _block(key_dim, q.device)
    rows_grid = (sequences * heads, triton.cdiv(key_dim, block_k))
    f32 = dict(dtype=torch.float32, device=q.device)
    unused = grad_o

    def pointer(t):
        return unused if t is None else t

    common = dict(PHI=FEATURE_MAP_CODES[feature_map], CAUSAL=causal, HAS_DECAY=has_decay,
                  VARLEN=cu_seqlens is not None)
    shared = (pointer(cu_seqlens), heads, length, key_dim, value_dim)
    den = den if normalize else None
    grad_s = _contiguous(grad_s)
    grad_z = _contiguous(grad_z) if normalize else None

    def rows_pass(reverse: bool, dx, state0, norm0, state_out=None, norm_out=None, decay_out=None):
        reads, keys = (k, q) if reverse else (q, k)
        read_scale, key_scale = (1.0, scale) if reverse else (scale, 1.0)
        _launch(
            _state_rows_kernel, rows_grid,
            reads, keys, v, o, grad_o, pointer(den), pointer(decay), pointer(state0), pointer(norm0), shared[0], dx,
            pointer(state_out), pointer(norm_out), pointer(grad_s), pointer(grad_z), pointer(decay_out),
            *_strides(reads), *_strides(keys), *_strides(v), *_strides(o), *_strides(grad_o), *_strides(dx),
            *shared[1:], read_scale, key_scale, REVERSE=reverse, NORMALIZE=normalize,
            DECAY_GRAD=decay_out is not None, HAS_STATE0=state0 is not None, HAS_NORM0=norm0 is not None,
            HAS_GRAD_FINAL=grad_s is not None, WRITE_STATE=state_out is not None, BLOCK_K=block_k,
            BLOCK_V=_full_block(value_dim), **common,
        )

    decay_shares = None
    if dq is not None or decay_grad:
        decay_shares = torch.empty(rows_grid, **f32) if decay_grad else None
        rows_pass(False, dq if dq is not None else torch.empty_like(q), _contiguous(s0),
                  _contiguous(z0) if normalize else None, decay_out=decay_shares)
    if dk is not None or grad_s0 is not None or grad_z0 is not None:
        state_out = grad_s0
        if state_out is None and grad_z0 is not None:
            state_out = torch.empty((sequences, heads, key_dim, value_dim), **f32)
        norm_out = grad_z0
        if norm_out is None and normalize and state_out is not None:
            norm_out = torch.empty((sequences, heads, key_dim), **f32)
        rows_pass(True, dk if dk is not None else torch.empty_like(k), grad_s, grad_z, state_out, norm_out)
    if dv is not None:
        block_v = _block(value_dim, q.device)
        _launch(
            _state_columns_kernel, (sequences * heads, triton.cdiv(value_dim, block_v)),
            k, q, grad_o, pointer(den), pointer(decay), pointer(grad_s), unused, shared[0], dv, unused, unused, unused,
            *_strides(k), *_strides(q), *_strides(grad_o), *_strides(dv), *shared[1:], 1.0, scale, 0.0,
            REVERSE=True, NORMALIZE=False, VALUES_OVER_DEN=normalize, HAS_STATE0=grad_s is not None,
            HAS_NORM0=False, WRITE_STATE=False, BLOCK_K=_full_block(key_dim), BLOCK_V=block_v, **common,
        )
    return None if decay_shares is None else decay_shares.view(sequences, heads, -1).sum((0, 2))


# --------------------------------------------------------------------------- compile check


def compile_variants() -> list[CompileVariant]:
    """bfloat16, causal with decay, normalize and initial/final states: the forward (the
    columns kernel) at Dk = Dv = 128, for sm_80 too; the dq pass (the rows kernel, with the
    decay's gradient) at 128; the dk pass (the rows kernel backwards) and the dv pass (the
    columns kernel backwards) at 64."""
    columns_strides = tuple(f"stride_{name}_{axis}" for name in ("r", "k", "v", "o") for axis in "bht")
    rows_strides = columns_strides + tuple(f"stride_{name}_{axis}" for name in ("do", "dx") for axis in "bht")
    bf16, fp32 = "*bf16", "*fp32"
    states = dict(Decay=fp32, State0=fp32, Norm0=fp32, Cu="*i32", StateOut=fp32, NormOut=fp32, read_scale="fp32",
                  key_scale="fp32")
    columns_types = dict(states, Reads=bf16, Keys=bf16, Values=bf16, Den=fp32, Out=bf16, OutDen=fp32, eps="fp32")
    rows_types = dict(states, Reads=bf16, Keys=bf16, V=bf16, O=bf16, DO=bf16, Den=fp32, DX=bf16, GradFinal=fp32,
                      GradNormFinal=fp32, DecayGrad=fp32)
    common = dict(PHI=FEATURE_MAP_CODES["elu+1"], CAUSAL=True, HAS_DECAY=True, HAS_STATE0=True, VARLEN=False)
    forward = dict(common, REVERSE=False, NORMALIZE=True, VALUES_OVER_DEN=False, HAS_NORM0=True, WRITE_STATE=True)
    dq_pass = dict(common, REVERSE=False, NORMALIZE=True, DECAY_GRAD=True, HAS_NORM0=True, HAS_GRAD_FINAL=True,
                   WRITE_STATE=False)
    dk_pass = dict(common, REVERSE=True, NORMALIZE=True, DECAY_GRAD=False, HAS_NORM0=True, HAS_GRAD_FINAL=True,
                   WRITE_STATE=True)
    dv_pass = dict(common, REVERSE=True, NORMALIZE=False, VALUES_OVER_DEN=True, HAS_NORM0=False, WRITE_STATE=False)
    # module: the op's compile_variants lists these beside the chunked kernels' variants
    launch = dict(num_warps=NUM_WARPS, num_stages=NUM_STAGES, module=__name__)
    columns = dict(launch, kernel="_state_columns_kernel", types=columns_types,
                   divisible_by_16=columns_strides + ("key_dim", "value_dim"))
    rows = dict(launch, kernel="_state_rows_kernel", types=rows_types,
                divisible_by_16=rows_strides + ("key_dim", "value_dim"))
    return [
        CompileVariant(name="linear_attention recurrent forward bf16 D=128", archs=(SM90, SM80),
                       constexprs=dict(forward, BLOCK_K=128, BLOCK_V=BLOCK), **columns),
        CompileVariant(name="linear_attention recurrent dq bf16 D=128", constexprs=dict(dq_pass, BLOCK_K=BLOCK,
                                                                                        BLOCK_V=128), **rows),
        CompileVariant(name="linear_attention recurrent dk bf16 D=64", constexprs=dict(dk_pass, BLOCK_K=BLOCK,
                                                                                       BLOCK_V=64), **rows),
        CompileVariant(name="linear_attention recurrent dv bf16 D=64", constexprs=dict(dv_pass, BLOCK_K=64,
                                                                                       BLOCK_V=BLOCK), **columns),
    ]
