"""Block layouts for ``fusednn.ops.block_sparse_attention``.

A layout is a bool tensor ``[1, n_blocks, n_blocks]`` (one layout for every head; stack or
concatenate builders' results along dim 0 for one per head): ``layout[h, i, j]`` says query
block i attends to key block j. The builders give the classic patterns, on the CPU (the op
moves a CPU layout to the inputs' device):

* ``local_layout``: a sliding window of blocks (the local attention of Longformer or the
  Sparse Transformer's local heads).
* ``strided_layout``: the Sparse Transformer's strided pattern, a local window and every
  ``stride``-th block before (and, not causal, after) the query block.
* ``bigbird_layout``: BigBird: a window, global blocks that attend and are attended
  everywhere, and random blocks per query block.
* ``longformer_layout``: a window and the given global blocks.

A window of ``window_blocks`` blocks is centred on the query block when not causal (block i
sees blocks i - w // 2 .. i + w // 2, w = window_blocks; an even w sees one more block
before than after, i - w // 2 .. i + w // 2 - 1) and ends at it when causal (i - w + 1 .. i).
``layout_to_mask`` expands a layout to the element mask that dense attention takes, for
references and tests.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._validate import Args

__all__ = ["bigbird_layout", "layout_to_mask", "local_layout", "longformer_layout", "strided_layout"]


def _offsets(n_blocks: int) -> torch.Tensor:
    """i - j for query block i (rows) and key block j (columns)."""
    index = torch.arange(n_blocks)
    return index[:, None] - index[None, :]


def _window(n_blocks: int, window_blocks: int, causal: bool) -> torch.Tensor:
    offset = _offsets(n_blocks)  # i - j: the key block is offset blocks before the query block
    if causal:
        return (offset >= 0) & (offset < window_blocks)
    before, after = window_blocks // 2, (window_blocks - 1) // 2
    return (offset <= before) & (-offset <= after)


def _check_blocks(args: Args, n_blocks, window_blocks) -> tuple[int, int]:
    n_blocks = args.integer("n_blocks", n_blocks, minimum=0)
    window_blocks = args.integer("window_blocks", window_blocks, minimum=1)
    return n_blocks, window_blocks


def local_layout(n_blocks: int, window_blocks: int, causal: bool = False) -> torch.Tensor:
    """Each query block attends to a window of ``window_blocks`` key blocks: centred on it,
    or ending at it with ``causal``. Returns bool [1, n_blocks, n_blocks]."""
    args = Args("fusednn.ops.sparsity.local_layout")
    n_blocks, window_blocks = _check_blocks(args, n_blocks, window_blocks)
    args.boolean("causal", causal)
    return _window(n_blocks, window_blocks, causal).unsqueeze(0)


def strided_layout(n_blocks: int, stride: int, local_blocks: int, causal: bool = False) -> torch.Tensor:
    """The Sparse Transformer's strided pattern: query block i attends to the ``local_blocks``
    blocks ending at it (centred on it without ``causal``) and to every block j with
    (i - j) divisible by ``stride`` (only j <= i with ``causal``). Returns bool [1, n_blocks, n_blocks]."""
    args = Args("fusednn.ops.sparsity.strided_layout")
    n_blocks = args.integer("n_blocks", n_blocks, minimum=0)
    stride = args.integer("stride", stride, minimum=1)
    local_blocks = args.integer("local_blocks", local_blocks, minimum=1)
    args.boolean("causal", causal)
    offset = _offsets(n_blocks)
    strided = offset % stride == 0
    if causal:
        strided &= offset >= 0
    return (_window(n_blocks, local_blocks, causal) | strided).unsqueeze(0)


def bigbird_layout(n_blocks: int, window_blocks: int, global_blocks: int, random_blocks: int,
                   seed: Optional[int] = 0) -> torch.Tensor:
    """BigBird (not causal): a centred window of ``window_blocks``; the first ``global_blocks``
    blocks attend to every block and every block attends to them; and each other query
    block attends to ``random_blocks`` key blocks drawn uniformly (without replacement) from
    those it does not see yet, by a ``torch.Generator`` seeded with ``seed`` (the same seed
    gives the same layout). Returns bool [1, n_blocks, n_blocks]."""
    args = Args("fusednn.ops.sparsity.bigbird_layout")
    n_blocks, window_blocks = _check_blocks(args, n_blocks, window_blocks)
    global_blocks = args.integer("global_blocks", global_blocks, minimum=0, maximum=n_blocks)
    random_blocks = args.integer("random_blocks", random_blocks, minimum=0)
    seed = args.integer("seed", seed)
    layout = _window(n_blocks, window_blocks, causal=False)
    layout[:global_blocks, :] = True
    layout[:, :global_blocks] = True
    generator = torch.Generator().manual_seed(seed)
    for i in range(global_blocks, n_blocks):
        unseen = (~layout[i]).nonzero().flatten()
        if random_blocks and unseen.numel():
            pick = torch.randperm(unseen.numel(), generator=generator)[:random_blocks]
            layout[i, unseen[pick]] = True
    return layout.unsqueeze(0)


def longformer_layout(n_blocks: int, window_blocks: int, global_block_ids: Sequence[int] = ()) -> torch.Tensor:
    """Longformer (not causal): a centred window of ``window_blocks``, and the blocks in
    ``global_block_ids`` global: they attend to every block and every block attends to them.
    Returns bool [1, n_blocks, n_blocks]."""
    args = Args("fusednn.ops.sparsity.longformer_layout")
    n_blocks, window_blocks = _check_blocks(args, n_blocks, window_blocks)
    ids = args.int_list("global_block_ids", global_block_ids, "of block indices")
    bad = [i for i in ids if not 0 <= i < n_blocks]
    if bad:
        raise args.error("global_block_ids", f"block indices in [0, {n_blocks})", repr(bad[0]))
    layout = _window(n_blocks, window_blocks, causal=False)
    layout[ids, :] = True
    layout[:, ids] = True
    return layout.unsqueeze(0)


def layout_to_mask(layout: torch.Tensor, block_size: int, Tq: int, Tk: int) -> torch.Tensor:
    """The element mask of a block layout: bool [..., Tq, Tk], True where query i
    may attend to key j, i.e. ``layout[..., i // block_size, j // block_size]``. The layout
    must cover the lengths: [..., ceil(Tq / block_size), ceil(Tk / block_size)]."""
    args = Args("fusednn.ops.sparsity.layout_to_mask")
    args.tensor("layout", layout, "[H, n_query_blocks, n_key_blocks]", dtypes=(torch.bool,), ndim=(2, 3))
    block_size = args.integer("block_size", block_size, minimum=1)
    Tq = args.integer("Tq", Tq, minimum=0)
    Tk = args.integer("Tk", Tk, minimum=0)
    blocks = (-(-Tq // block_size), -(-Tk // block_size))
    if tuple(layout.shape[-2:]) != blocks:
        raise args.error("layout", f"[..., ceil(Tq / block_size), ceil(Tk / block_size)] = "
                         f"[..., {blocks[0]}, {blocks[1]}]", f"shape {list(layout.shape)}")
    rows = torch.arange(Tq, device=layout.device) // block_size
    cols = torch.arange(Tk, device=layout.device) // block_size
    return layout[..., rows[:, None], cols[None, :]]
