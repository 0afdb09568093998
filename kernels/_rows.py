"""Launch configuration of the row-wise Triton kernels (a reduction over the last dimension
of a [M, N] matrix: the norms, and softmax, cross-entropy and fused add + norm alike).

A row is either held in registers whole (one block of ``next_power_of_2(N)`` columns) or,
when wider than the kernel's limit, walked in column blocks of a fixed width. A pass that
accumulates across rows (a weight gradient) runs a few programs per SM, each owning a
contiguous block of rows.
"""

from __future__ import annotations

import functools

import torch
import triton

# Programs per SM of a row-block launch are chosen so that about this many warps are resident.
WARPS_PER_SM = 16
# The interpreter runs programs one after another: two programs exercise both the
# in-program row loop and whatever combines the programs' results.
INTERPRETER_PROGRAMS = 2


def block_warps(block_n: int) -> int:
    """About 16 elements per thread: 1 warp up to 512 columns, 8 at 4096, 16 from 8192."""
    return min(max(block_n // 512, 1), 16)


# Narrow rows are processed several at a time, as [BLOCK_M, BLOCK_N] tiles of about this
# many elements (a program per 8-wide row would leave most lanes of a warp idle).
TILE_ELEMENTS = 2048


def row_config(n_cols: int, max_fused: int, looped_block: int) -> tuple[int, int, bool, int]:
    """(BLOCK_M, BLOCK_N, SINGLE_BLOCK, num_warps) for rows of ``n_cols`` elements: whole
    rows in one block up to ``max_fused`` padded columns, BLOCK_M of them per tile when
    they are narrow; else one row at a time in blocks of ``looped_block`` columns."""
    block_n = triton.next_power_of_2(n_cols)
    if block_n <= max_fused:
        block_m = max(1, TILE_ELEMENTS // block_n)
        return block_m, block_n, True, block_warps(block_m * block_n)
    return 1, looped_block, False, block_warps(looped_block)


@functools.lru_cache(maxsize=None)
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def row_programs(device: torch.device, n_rows: int, num_warps: int) -> int:
    """How many programs share ``n_rows`` rows, each taking a contiguous block of them."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        wanted = multiprocessor_count(index) * max(1, WARPS_PER_SM // num_warps)
    else:
        wanted = INTERPRETER_PROGRAMS
    return max(1, min(n_rows, wanted))
