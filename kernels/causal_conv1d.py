"""Triton kernels of the causal depthwise conv1d (``fusednn.ops.causal_conv1d``) and of its
one-step decoding update (``fusednn.ops.causal_conv1d_update``).

Each channel d of x ``[B, D, L]`` has its own ``TAPS`` (W, 2..8) weights; output position t
sees xpad positions t..t+W-1, where xpad = cat(initial_state or zeros, x) is x left-padded
with W-1 values. In x's coordinates tap k reads position ``t - (W-1) + k``; positions
-(W-1)..-1 come from ``initial_state`` (or are zeros).

Layout: every tensor is addressed through its strides, so a ``[B, L, D]`` tensor
transposed to ``[B, D, L]`` (channels contiguous) is read in place, and so is a time-
contiguous ``[B, D, L]`` one. Triton specialises a stride of 1, so the tiles are
coalesced along whichever axis is contiguous, and the launchers lay the tile's long side
along it. Offsets are 64-bit (see the device helpers).

Forward (``_causal_conv1d_forward_kernel``): one program per (block of BLOCK_T positions,
block of BLOCK_D channels, batch entry). The W taps are unrolled (W is a constexpr); each
tap is a [BLOCK_T, BLOCK_D] tile of x shifted by k - (W-1) positions, so the program reads
its x tile and a halo of W-1 earlier positions, the W overlapping tiles coming from L1
(DRAM traffic: x once). fp32 accumulation, then bias and the activation (None or silu).
The program of the last time block also writes final_state, the last W-1 xpad positions.
Bytes: read x, write y.

Backward (``_causal_conv1d_backward_kernel``): with dz = dy * act'(pre) the gradient of
the pre-activation (pre recomputed from x and the weights, never saved: W tap loads per
position, from L1),

    dx[t] = sum_j weight[W-1-j] * dz[t + j]      (the correlation with the flipped
                                                  weight, read forward in time)
    dweight[k] = sum_{b,t} dz[t] * xpad[t + k],  dbias = sum_{b,t} dz[t]
    dinitial_state[i] = dx at position i - (W-1)  (the first W-1 xpad positions)

and the final state's gradient adds to dx (or dinitial_state) at the last W-1 xpad
positions. One program per (chunk of ``blocks_per_program`` time blocks, block of
channels, batch entry): it loops over its time blocks and keeps its dweight / dbias sums
in fp32 registers, then writes one partial row each; the launcher sums the [programs, W,
D] partials with torch (no atomics: deterministic for a given device). The program of the
first chunk also computes dinitial_state. Bytes: read x, dy, write dx (with silu the
recomputation of pre at t+1..t+W-1 reads x through L1 W-1 more times; its loop is not
unrolled, or the compiler would hoist all W^2 loads and spill).

Update (``_causal_conv1d_update_kernel``): one program per (block of channels, batch
entry) computes y_t from the window (conv_state, x_t) and shifts conv_state in place; the
state is read whole before a barrier and written after it, so no thread overwrites a slot
another still has to read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusednn import _runtime
from fusednn.kernels import SM80, SM90, TRITON_DEFAULT_STAGES, CompileVariant, _rows, triton_type
from fusednn.kernels._activation import ACTIVATION_CODES, activate, activation_derivative

# The kernel widths the kernels are built for (W is a constexpr: one build per width).
MIN_TAPS, MAX_TAPS = 2, 8

# Tiles [BLOCK_T positions, BLOCK_D channels] for channels-contiguous tensors (a [B, L, D]
# tensor seen as [B, D, L]); time-contiguous ones take them transposed, so that the
# contiguous axis is the long one. The backward holds more tiles at once (dz, dx, the
# recomputed pre-activation), so its tile is half the forward's. Both build without spills
# (tests/test_triton_compile.py).
FORWARD_TILE = (32, 64)
BACKWARD_TILE = (16, 64)
FORWARD_WARPS = 4
BACKWARD_WARPS = 4
UPDATE_BLOCK_D = 256
UPDATE_WARPS = 4
# The interpreter runs programs one after another and costs per tile operation: tiles small
# enough that the samples' short sequences and few channels still span several blocks.
INTERPRETER_TILE = (32, 32)
# Backward programs per SM, and the interpreter's time blocks per program (so the loop over
# a chunk's blocks runs more than once there).
BACKWARD_PROGRAMS_PER_SM = 4
INTERPRETER_BLOCKS_PER_PROGRAM = 2


# --------------------------------------------------------------------------- device helpers
#
# Positions and channels are int64 vectors: no offset overflows, and Triton's interpreter
# checks every 32-bit integer operation for overflow (a dozen operations each) but not
# 64-bit ones; the GPU pays a few registers (the compile check shows no spills). The tap loop
# walks its pointers forward by the time stride instead of recomputing them, and reads xpad
# inline: the interpreter also charges each call of a jit function.


@triton.jit
def _tile_pointers(Base, pos, chans, stride_d, stride_t):
    """Pointers [T, D] to positions ``pos`` [T] and channels ``chans`` [D] of one batch entry."""
    return Base + ((pos * stride_t)[:, None] + (chans * stride_d)[None, :])


@triton.jit
def _tap_walk(Xb, Initb, Wt, Bias, dz, pos, chans, chan_mask, L, stride_x_d, stride_x_t, stride_i_d, stride_i_t,
              stride_w_d, stride_w_k, TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
              WEIGHT_SUMS: tl.constexpr, TAPS_BLOCK: tl.constexpr):
    """Reads the W taps of positions ``pos`` [T], xpad[pos + k] (x position pos - (W-1) + k:
    x for 0 <= p < L, initial_state slot p + W-1 for p < 0, zeros without one), one [T, D]
    tile each, and returns

    * the pre-activation bias + sum_k weight[:, k] * xpad[pos + k], fp32 [T, D], or
    * with WEIGHT_SUMS, the weight gradient's terms sum_t dz[t] * xpad[pos + k] as an fp32
      [TAPS_BLOCK, D] tile (row k; ``dz`` [T, D] is the pre-activation's gradient at pos).
    """
    p = pos - (TAPS - 1)
    x_ptrs = Xb + ((p * stride_x_t)[:, None] + (chans * stride_x_d)[None, :])
    if HAS_INIT:
        init_ptrs = Initb + ((pos * stride_i_t)[:, None] + (chans * stride_i_d)[None, :])  # slot p + W-1
    w_ptrs = Wt + chans * stride_w_d
    if WEIGHT_SUMS:
        taps = tl.arange(0, TAPS_BLOCK)
        out = tl.zeros([TAPS_BLOCK, chans.shape[0]], dtype=tl.float32)
    else:
        out = tl.zeros([pos.shape[0], chans.shape[0]], dtype=tl.float32)
    for k in tl.static_range(TAPS):
        if HAS_INIT:
            valid = (p >= 1 - TAPS) & (p < L)
            ptrs = tl.where((p < 0)[:, None], init_ptrs, x_ptrs)
            init_ptrs += stride_i_t
        else:
            valid = (p >= 0) & (p < L)
            ptrs = x_ptrs
        x = tl.load(ptrs, mask=valid[:, None] & chan_mask[None, :], other=0.0).to(tl.float32)
        if WEIGHT_SUMS:
            out += tl.where(taps[:, None] == k, tl.sum(dz * x, axis=0)[None, :], 0.0)
        else:
            out += x * tl.load(w_ptrs, mask=chan_mask, other=0.0).to(tl.float32)[None, :]
        p += 1
        x_ptrs += stride_x_t
        w_ptrs += stride_w_k
    if HAS_BIAS and not WEIGHT_SUMS:
        out += tl.load(Bias + chans, mask=chan_mask, other=0.0).to(tl.float32)[None, :]
    return out


@triton.jit
def _pre_activation_grad(Xb, Initb, Wt, Bias, DYb, pos, chans, chan_mask, L, stride_x_d, stride_x_t, stride_i_d,
                         stride_i_t, stride_w_d, stride_w_k, stride_dy_d, stride_dy_t, TAPS: tl.constexpr,
                         ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr):
    """dz = dy * act'(pre) at positions ``pos`` (0 outside [0, L)), fp32 [T, D]; without an
    activation dz is dy and x is not read."""
    valid = (pos >= 0) & (pos < L)
    dz = tl.load(_tile_pointers(DYb, pos, chans, stride_dy_d, stride_dy_t), mask=valid[:, None] & chan_mask[None, :],
                 other=0.0).to(tl.float32)
    if ACT != 0:
        pre = _tap_walk(Xb, Initb, Wt, Bias, dz, pos, chans, chan_mask, L, stride_x_d, stride_x_t, stride_i_d,
                        stride_i_t, stride_w_d, stride_w_k, TAPS, HAS_BIAS, HAS_INIT, False, 1)
        dz = dz * activation_derivative(pre, ACT)
    return dz


@triton.jit
def _xpad_grad(dz, Xb, Initb, Wt, Bias, DYb, DFinalb, pos, chans, chan_mask, L, stride_x_d, stride_x_t, stride_i_d,
               stride_i_t, stride_w_d, stride_w_k, stride_dy_d, stride_dy_t, stride_df_d, stride_df_t,
               TAPS: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
               HAS_DFINAL: tl.constexpr):
    """The gradient of xpad at x positions ``pos``, given ``dz`` there: sum_j weight[W-1-j] *
    dz[pos + j] (the correlation with the flipped weight, forward in time), plus the final
    state's gradient where pos is one of the last W-1 xpad positions (L-(W-1)..L-1)."""
    w_ptrs = Wt + chans * stride_w_d + (TAPS - 1) * stride_w_k
    grad = dz * tl.load(w_ptrs, mask=chan_mask, other=0.0).to(tl.float32)[None, :]
    # a loop, not unrolled: the W recomputations' loads would all be hoisted and spill
    for j in range(1, TAPS):
        w_ptrs -= stride_w_k
        dz_j = _pre_activation_grad(Xb, Initb, Wt, Bias, DYb, pos + j, chans, chan_mask, L, stride_x_d, stride_x_t,
                                    stride_i_d, stride_i_t, stride_w_d, stride_w_k, stride_dy_d, stride_dy_t, TAPS,
                                    ACT, HAS_BIAS, HAS_INIT)
        grad += dz_j * tl.load(w_ptrs, mask=chan_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_DFINAL:
        slot = pos - (L - (TAPS - 1))
        in_final = (slot >= 0) & (slot < TAPS - 1)
        grad += tl.load(_tile_pointers(DFinalb, slot, chans, stride_df_d, stride_df_t),
                        mask=in_final[:, None] & chan_mask[None, :], other=0.0).to(tl.float32)
    return grad


# --------------------------------------------------------------------------- forward


@triton.jit
def _causal_conv1d_forward_kernel(
    X,  # [B, D, L] strided
    Wt,  # [D, W] strided
    Bias,  # [D] (if HAS_BIAS)
    Init,  # [B, D, W-1] strided (if HAS_INIT)
    Y,  # [B, D, L] strided, x's dtype
    Final,  # [B, D, W-1] strided (if WRITE_FINAL)
    L, D,
    stride_x_b, stride_x_d, stride_x_t,
    stride_w_d, stride_w_k,
    stride_i_b, stride_i_d, stride_i_t,
    stride_y_b, stride_y_d, stride_y_t,
    stride_f_b, stride_f_d, stride_f_t,
    TAPS: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    WRITE_FINAL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, STATE_BLOCK: tl.constexpr,
):
    block_t = tl.program_id(0)
    batch = tl.program_id(2).to(tl.int64)
    pos = block_t * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    chans = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chans < D
    Xb = X + batch * stride_x_b
    Initb = Init + batch * stride_i_b
    pre = _tap_walk(Xb, Initb, Wt, Bias, pos, pos, chans, chan_mask, L, stride_x_d, stride_x_t, stride_i_d,
                    stride_i_t, stride_w_d, stride_w_k, TAPS, HAS_BIAS, HAS_INIT, False, 1)  # (no dz)
    tl.store(_tile_pointers(Y + batch * stride_y_b, pos, chans, stride_y_d, stride_y_t),
             activate(pre, ACT).to(Y.dtype.element_ty), mask=(pos < L)[:, None] & chan_mask[None, :])
    if WRITE_FINAL:
        if block_t == tl.num_programs(0) - 1:
            # final_state[i] = xpad[L + i]: x position L - (W-1) + i, or initial_state slot L + i
            slots = tl.arange(0, STATE_BLOCK).to(tl.int64)
            in_state = (slots < TAPS - 1)[:, None] & chan_mask[None, :]
            state_pos = slots + (L - (TAPS - 1))
            state = tl.load(_tile_pointers(Xb, state_pos, chans, stride_x_d, stride_x_t),
                            mask=(state_pos >= 0)[:, None] & in_state, other=0.0)
            if HAS_INIT:
                state += tl.load(_tile_pointers(Initb, slots + L, chans, stride_i_d, stride_i_t),
                                 mask=(state_pos < 0)[:, None] & in_state, other=0.0)
            tl.store(_tile_pointers(Final + batch * stride_f_b, slots, chans, stride_f_d, stride_f_t),
                     state.to(Final.dtype.element_ty), mask=in_state)


# --------------------------------------------------------------------------- backward


@triton.jit
def _causal_conv1d_backward_kernel(
    X,  # [B, D, L] strided
    Wt,  # [D, W] strided
    Bias,  # [D] (if HAS_BIAS; read only with an activation)
    Init,  # [B, D, W-1] strided (if HAS_INIT)
    DY,  # [B, D, L] strided
    DFinal,  # [B, D, W-1] strided (if HAS_DFINAL)
    DX,  # [B, D, L] strided (if X_GRAD)
    DInit,  # [B, D, W-1] strided (if INIT_GRAD)
    DW_partial,  # [programs, W, D] fp32 (if WEIGHT_GRAD)
    DB_partial,  # [programs, D] fp32 (if BIAS_GRAD)
    L, D, blocks_per_program,
    stride_x_b, stride_x_d, stride_x_t,
    stride_w_d, stride_w_k,
    stride_i_b, stride_i_d, stride_i_t,
    stride_dy_b, stride_dy_d, stride_dy_t,
    stride_df_b, stride_df_d, stride_df_t,
    stride_dx_b, stride_dx_d, stride_dx_t,
    stride_di_b, stride_di_d, stride_di_t,
    TAPS: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_DFINAL: tl.constexpr, X_GRAD: tl.constexpr, INIT_GRAD: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
    BIAS_GRAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, STATE_BLOCK: tl.constexpr,
    TAPS_BLOCK: tl.constexpr,
):
    chunk = tl.program_id(0)
    batch = tl.program_id(2).to(tl.int64)
    chans = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chans < D
    Xb = X + batch * stride_x_b
    Initb = Init + batch * stride_i_b
    DYb = DY + batch * stride_dy_b
    DFinalb = DFinal + batch * stride_df_b
    taps = tl.arange(0, TAPS_BLOCK)
    dw_acc = tl.zeros([TAPS_BLOCK, BLOCK_D], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    first_block = chunk * blocks_per_program
    last_block = tl.minimum(first_block + blocks_per_program, tl.cdiv(L, BLOCK_T))
    for block in range(first_block, last_block):
        pos = block * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
        dz = _pre_activation_grad(Xb, Initb, Wt, Bias, DYb, pos, chans, chan_mask, L, stride_x_d, stride_x_t,
                                  stride_i_d, stride_i_t, stride_w_d, stride_w_k, stride_dy_d, stride_dy_t, TAPS, ACT,
                                  HAS_BIAS, HAS_INIT)
        if X_GRAD:
            dx = _xpad_grad(dz, Xb, Initb, Wt, Bias, DYb, DFinalb, pos, chans, chan_mask, L, stride_x_d, stride_x_t,
                            stride_i_d, stride_i_t, stride_w_d, stride_w_k, stride_dy_d, stride_dy_t, stride_df_d,
                            stride_df_t, TAPS, ACT, HAS_BIAS, HAS_INIT, HAS_DFINAL)
            tl.store(_tile_pointers(DX + batch * stride_dx_b, pos, chans, stride_dx_d, stride_dx_t),
                     dx.to(DX.dtype.element_ty), mask=(pos < L)[:, None] & chan_mask[None, :])
        if BIAS_GRAD:
            db_acc += tl.sum(dz, axis=0)
        if WEIGHT_GRAD:
            dw_acc += _tap_walk(Xb, Initb, Wt, Bias, dz, pos, chans, chan_mask, L, stride_x_d, stride_x_t, stride_i_d,
                                stride_i_t, stride_w_d, stride_w_k, TAPS, HAS_BIAS, HAS_INIT, True, TAPS_BLOCK)
    if INIT_GRAD:
        if chunk == 0:
            # xpad positions 0..W-2 are x positions -(W-1)..-1, where no output is: dz = 0
            slots = tl.arange(0, STATE_BLOCK).to(tl.int64)
            grad = _xpad_grad(tl.zeros([STATE_BLOCK, BLOCK_D], dtype=tl.float32), Xb, Initb, Wt, Bias, DYb, DFinalb,
                              slots - (TAPS - 1), chans, chan_mask, L, stride_x_d, stride_x_t, stride_i_d, stride_i_t,
                              stride_w_d, stride_w_k, stride_dy_d, stride_dy_t, stride_df_d, stride_df_t, TAPS, ACT,
                              HAS_BIAS, HAS_INIT, HAS_DFINAL)
            tl.store(_tile_pointers(DInit + batch * stride_di_b, slots, chans, stride_di_d, stride_di_t),
                     grad.to(DInit.dtype.element_ty), mask=(slots < TAPS - 1)[:, None] & chan_mask[None, :])
    row = batch * tl.num_programs(0) + chunk
    if WEIGHT_GRAD:
        tl.store(DW_partial + row * TAPS * D + (taps[:, None] * D + chans[None, :]), dw_acc,
                 mask=(taps < TAPS)[:, None] & chan_mask[None, :])
    if BIAS_GRAD:
        tl.store(DB_partial + row * D + chans, db_acc, mask=chan_mask)


# --------------------------------------------------------------------------- update


@triton.jit
def _causal_conv1d_update_kernel(
    X,  # [B, D] strided: x_t
    State,  # [B, D, W-1] strided: conv_state, updated in place
    Wt,  # [D, W] strided
    Bias,  # [D] (if HAS_BIAS)
    Y,  # [B, D] strided
    D,
    stride_x_b, stride_x_d,
    stride_s_b, stride_s_d, stride_s_t,
    stride_w_d, stride_w_k,
    stride_y_b, stride_y_d,
    TAPS: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
    STATE_BLOCK: tl.constexpr,
):
    batch = tl.program_id(1).to(tl.int64)
    chans = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chans < D
    slots = tl.arange(0, STATE_BLOCK).to(tl.int64)
    slot_mask = (slots < TAPS - 1)[:, None] & chan_mask[None, :]
    state_ptrs = _tile_pointers(State + batch * stride_s_b, slots, chans, stride_s_d, stride_s_t)
    x = tl.load(X + batch * stride_x_b + chans * stride_x_d, mask=chan_mask, other=0.0)
    state = tl.load(state_ptrs, mask=slot_mask, other=0.0)
    weights = tl.load(_tile_pointers(Wt, slots, chans, stride_w_d, stride_w_k), mask=slot_mask, other=0.0)
    acc = tl.sum(state.to(tl.float32) * weights.to(tl.float32), axis=0)
    last_tap = tl.load(Wt + chans * stride_w_d + (TAPS - 1) * stride_w_k, mask=chan_mask, other=0.0)
    acc += x.to(tl.float32) * last_tap.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(Bias + chans, mask=chan_mask, other=0.0).to(tl.float32)
    tl.store(Y + batch * stride_y_b + chans * stride_y_d, activate(acc, ACT).to(Y.dtype.element_ty), mask=chan_mask)
    # slot i takes slot i + 1, the last one x_t: every old slot is read before any is written
    following = tl.load(state_ptrs + stride_s_t, mask=((slots + 1) < TAPS - 1)[:, None] & chan_mask[None, :],
                        other=0.0)
    tl.debug_barrier()
    shifted = tl.where((slots == TAPS - 2)[:, None], x[None, :].to(following.dtype), following)
    tl.store(state_ptrs, shifted, mask=slot_mask)


# --------------------------------------------------------------------------- launch helpers


def _state_block(taps: int) -> int:
    return max(2, triton.next_power_of_2(taps - 1))


def _tile(x: torch.Tensor, backward: bool) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_D) for x [B, D, L]: the long side along its contiguous axis."""
    if x.device.type != "cuda":
        return INTERPRETER_TILE
    block_t, block_d = BACKWARD_TILE if backward else FORWARD_TILE
    time_contiguous = x.stride(2) == 1 and x.shape[2] > 1
    return (block_d, block_t) if time_contiguous else (block_t, block_d)


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


def causal_conv1d_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          initial_state: torch.Tensor | None, activation: str | None, *, y: torch.Tensor,
                          final_state: torch.Tensor | None) -> None:
    """Writes y [B, D, L] and (when given) final_state [B, D, W-1]. Every tensor is read
    and written through its strides."""
    batch, channels, length = x.shape
    taps = weight.shape[1]
    if batch == 0 or (length == 0 and final_state is None):
        return
    block_t, block_d = _tile(x, backward=False)
    # L = 0 still runs one time block: it writes final_state
    grid = (max(1, triton.cdiv(length, block_t)), triton.cdiv(channels, block_d), batch)
    torch.library.wrap_triton(_causal_conv1d_forward_kernel)[grid](
        x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x, y,
        final_state if final_state is not None else y,
        length, channels,
        *x.stride(), *weight.stride(), *_strides3(initial_state), *y.stride(), *_strides3(final_state),
        TAPS=taps, ACT=ACTIVATION_CODES[activation], HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None,
        WRITE_FINAL=final_state is not None, BLOCK_T=block_t, BLOCK_D=block_d, STATE_BLOCK=_state_block(taps),
        num_warps=FORWARD_WARPS,
    )


def _backward_chunks(device: torch.device, time_blocks: int, other_programs: int) -> tuple[int, int]:
    """(chunks, blocks_per_program): the time blocks split into chunks, one program each,
    so that about BACKWARD_PROGRAMS_PER_SM programs per SM run in all."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        wanted = max(1, _rows.multiprocessor_count(index) * BACKWARD_PROGRAMS_PER_SM // max(1, other_programs))
        per_program = max(1, triton.cdiv(time_blocks, wanted))
    else:
        per_program = INTERPRETER_BLOCKS_PER_PROGRAM
    return max(1, triton.cdiv(time_blocks, per_program)), per_program


def causal_conv1d_backward(grad_y: torch.Tensor, grad_final_state: torch.Tensor | None, x: torch.Tensor,
                           weight: torch.Tensor, bias: torch.Tensor | None, initial_state: torch.Tensor | None,
                           activation: str | None, *, grad_x: torch.Tensor | None,
                           grad_initial_state: torch.Tensor | None, weight_grad: bool, bias_grad: bool,
                           ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Writes grad_x [B, D, L] and grad_initial_state [B, D, W-1] where given; returns
    (dweight [D, W], dbias [D]) as fp32 sums (None where not asked for)."""
    batch, channels, length = x.shape
    taps = weight.shape[1]
    zeros = dict(dtype=torch.float32, device=x.device)
    if batch == 0 or channels == 0:
        return (torch.zeros(channels, taps, **zeros) if weight_grad else None,
                torch.zeros(channels, **zeros) if bias_grad else None)
    block_t, block_d = _tile(x, backward=True)
    channel_blocks = triton.cdiv(channels, block_d)
    chunks, per_program = _backward_chunks(x.device, triton.cdiv(length, block_t), channel_blocks * batch)
    rows = batch * chunks
    dw_partial = _runtime.empty((rows, taps, channels), **zeros) if weight_grad else None
    db_partial = _runtime.empty((rows, channels), **zeros) if bias_grad else None
    torch.library.wrap_triton(_causal_conv1d_backward_kernel)[(chunks, channel_blocks, batch)](
        x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x, grad_y,
        grad_final_state if grad_final_state is not None else grad_y,
        grad_x if grad_x is not None else grad_y,
        grad_initial_state if grad_initial_state is not None else grad_y,
        dw_partial if dw_partial is not None else grad_y, db_partial if db_partial is not None else grad_y,
        length, channels, per_program,
        *x.stride(), *weight.stride(), *_strides3(initial_state), *grad_y.stride(), *_strides3(grad_final_state),
        *_strides3(grad_x), *_strides3(grad_initial_state),
        TAPS=taps, ACT=ACTIVATION_CODES[activation], HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None,
        HAS_DFINAL=grad_final_state is not None, X_GRAD=grad_x is not None, INIT_GRAD=grad_initial_state is not None,
        WEIGHT_GRAD=weight_grad, BIAS_GRAD=bias_grad, BLOCK_T=block_t, BLOCK_D=block_d,
        STATE_BLOCK=_state_block(taps), TAPS_BLOCK=triton.next_power_of_2(taps), num_warps=BACKWARD_WARPS,
    )
    dweight = dw_partial.sum(0).t() if dw_partial is not None else None
    dbias = db_partial.sum(0) if db_partial is not None else None
    return dweight, dbias


def causal_conv1d_update(x_t: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, activation: str | None, *, y: torch.Tensor) -> None:
    """Writes y_t [B, D] and shifts conv_state [B, D, W-1] in place (x_t appended)."""
    batch, channels = x_t.shape
    if batch == 0 or channels == 0:
        return
    taps = weight.shape[1]
    block_d = min(UPDATE_BLOCK_D, triton.next_power_of_2(channels))
    torch.library.wrap_triton(_causal_conv1d_update_kernel)[(triton.cdiv(channels, block_d), batch)](
        x_t, conv_state, weight, bias if bias is not None else x_t, y, channels,
        *x_t.stride(), *conv_state.stride(), *weight.stride(), *y.stride(),
        TAPS=taps, ACT=ACTIVATION_CODES[activation], HAS_BIAS=bias is not None, BLOCK_D=block_d,
        STATE_BLOCK=_state_block(taps), num_warps=UPDATE_WARPS,
    )


# --------------------------------------------------------------------------- compile check


def compile_variants() -> list[CompileVariant]:
    """The forward and the backward kernel (every gradient asked for, the states included) in
    bfloat16 with W = 4 and silu on channels-contiguous tensors (a [B, L, D] x, as a Mamba
    block holds it; sm_90a and sm_80), and in float32 with W = 8, no activation, on
    time-contiguous ones (sm_90a); the update kernel in bfloat16 with W = 4 and silu (sm_90a
    and sm_80). Tiles and warps as the launchers pick them on a GPU; the unit strides are
    constants, as Triton specialises a stride of 1 at launch (parameters and states are
    contiguous)."""
    variants = []
    cases = [  # (dtype, W, activation, contiguous axis of x, y, dy and dx, archs)
        (torch.bfloat16, 4, "silu", "channels", (SM90, SM80)),
        (torch.float32, 8, None, "time", (SM90,)),
    ]
    for dtype, taps, activation, contiguous, archs in cases:
        p = "*" + triton_type(dtype)
        axis = "d" if contiguous == "channels" else "t"
        flags = dict(TAPS=taps, ACT=ACTIVATION_CODES[activation], HAS_BIAS=True, HAS_INIT=True,
                     STATE_BLOCK=_state_block(taps), stride_w_k=1, stride_i_t=1)
        label = f"{triton_type(dtype)} W={taps}{' ' + activation if activation else ''} {contiguous}-contiguous"
        tiles = {}
        for kernel_pass, (block_t, block_d) in (("forward", FORWARD_TILE), ("backward", BACKWARD_TILE)):
            tiles[kernel_pass] = (block_t, block_d) if contiguous == "channels" else (block_d, block_t)
        block_t, block_d = tiles["forward"]
        variants.append(CompileVariant(
            name=f"causal_conv1d forward {label}", kernel=_causal_conv1d_forward_kernel.__name__,
            types=dict(X=p, Wt=p, Bias=p, Init=p, Y=p, Final=p),
            constexprs=dict(flags, WRITE_FINAL=True, BLOCK_T=block_t, BLOCK_D=block_d, stride_f_t=1,
                            **{f"stride_x_{axis}": 1, f"stride_y_{axis}": 1}),
            num_warps=FORWARD_WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=archs,
        ))
        block_t, block_d = tiles["backward"]
        variants.append(CompileVariant(
            name=f"causal_conv1d backward {label}", kernel=_causal_conv1d_backward_kernel.__name__,
            types=dict(X=p, Wt=p, Bias=p, Init=p, DY=p, DFinal=p, DX=p, DInit=p, DW_partial="*fp32",
                       DB_partial="*fp32"),
            constexprs=dict(flags, HAS_DFINAL=True, X_GRAD=True, INIT_GRAD=True, WEIGHT_GRAD=True, BIAS_GRAD=True,
                            BLOCK_T=block_t, BLOCK_D=block_d, TAPS_BLOCK=triton.next_power_of_2(taps),
                            stride_df_t=1, stride_di_t=1,
                            **{f"stride_x_{axis}": 1, f"stride_dy_{axis}": 1, f"stride_dx_{axis}": 1}),
            num_warps=BACKWARD_WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=archs,
        ))
    bf16 = "*" + triton_type(torch.bfloat16)
    variants.append(CompileVariant(
        name="causal_conv1d_update bf16 W=4 silu", kernel=_causal_conv1d_update_kernel.__name__,
        types=dict(X=bf16, State=bf16, Wt=bf16, Bias=bf16, Y=bf16),
        constexprs=dict(TAPS=4, ACT=ACTIVATION_CODES["silu"], HAS_BIAS=True, BLOCK_D=UPDATE_BLOCK_D,
                        STATE_BLOCK=_state_block(4), stride_x_d=1, stride_s_t=1, stride_w_k=1, stride_y_d=1),
        num_warps=UPDATE_WARPS, num_stages=TRITON_DEFAULT_STAGES, archs=(SM90, SM80),
    ))
    return variants
