"""Block-sparse attention: exact attention over the key blocks a layout lists for each query
block, run by the exact-attention kernels (``fusednn.kernels.exact_attention``) with a tile
list in place of the causal/window band.

The layout travels to the registered ``fusednn::attention_forward`` / ``attention_backward``
ops as the ``layout`` and ``block_size`` fields of their options; each pass of the kernels
turns it into the tiles its programs visit (``sparse_tile_lists``): for each query tile the
key tiles of its listed blocks (for each key tile, in the dk/dv pass, the query tiles), those
crossing the causal diagonal or the end of the keys first (masked), then the fully visible
ones (no mask arithmetic). Time grows with the number of true blocks. Layout builders are in
``fusednn.ops.sparsity``.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from fusednn import _runtime, registry
from fusednn import reference as _reference
from fusednn._validate import Args, describe, dtype_name, shape_of
from fusednn.cases import block_sparse_attention as _cases
from fusednn.kernels import exact_attention as _kernels
from fusednn.kernels.exact_attention import Options

from .exact_attention import _KERNEL_DTYPES, _check_qkv, _draw_seed

__all__ = ["block_sparse_attention"]

BLOCK_SIZES = (16, 32, 64, 128)  # the block sizes the kernels take


def _check_layout(args: Args, layout, q: Tensor, k: Tensor, block_size: int) -> Tensor:
    """A bool [Hq or 1, ceil(Tq / block_size), ceil(Tk / block_size)] layout (2-D: one for all
    heads) on q's device (a CPU layout is moved there), as a 3-D tensor."""
    doc = "[Hq or 1, ceil(Tq / block_size), ceil(Tk / block_size)]"
    if not isinstance(layout, Tensor):
        raise args.error("layout", f"a bool tensor {doc}", describe(layout), TypeError)
    if layout.dtype != torch.bool:
        raise args.error("layout", f"a bool tensor {doc}", f"dtype {dtype_name(layout.dtype)}", TypeError)
    if layout.dim() not in (2, 3):
        raise args.error("layout", f"3-D {doc} (or 2-D, shared by every head)", shape_of(layout))
    heads = q.shape[1]
    blocks = (-(-q.shape[2] // block_size), -(-k.shape[2] // block_size))
    layout3 = layout if layout.dim() == 3 else layout.unsqueeze(0)
    if tuple(layout3.shape[1:]) != blocks or layout3.shape[0] not in (1, heads):
        raise args.error("layout", f"{doc} = [{heads} or 1, {blocks[0]}, {blocks[1]}] for Tq = {q.shape[2]}, "
                         f"Tk = {k.shape[2]}, block_size = {block_size}", shape_of(layout))
    if layout.device != q.device:
        if layout.device.type != "cpu":
            raise args.error("layout", f"on q's device {q.device} (or the CPU)", str(layout.device))
        layout3 = layout3.to(q.device)
    return layout3


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Tensor,
    *,
    block_size: int = 64,
    causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    deterministic: bool = False,
) -> Tensor:
    """Attention restricted to the blocks of ``layout``, exactly equal to dense attention with
    the expanded mask (``fusednn.ops.sparsity.layout_to_mask``) but visiting only the listed
    blocks.

    q: [B, Hq, Tq, D]; k: [B, Hkv, Tk, D]; v: [B, Hkv, Tk, Dv]; any strides; Hq a multiple of
    Hkv (GQA). layout: bool [Hq or 1, ceil(Tq / block_size), ceil(Tk / block_size)] (a 2-D
    layout is shared by every head; a CPU layout is moved to q's device): query block i
    attends to key block j where ``layout[h, i, j]``, and with ``causal`` only to keys j <= i
    inside them. block_size: 16, 32, 64 or 128. scale: default D ** -0.5. dropout_p: dropout
    on the probabilities, drawn in the kernel from a seed of torch's generator (as
    ``fusednn.ops.attention``). deterministic: the backward computes dq in its own pass (no
    float32 atomics), so gradients are bitwise reproducible. A query that sees no key gets
    output 0 and zero gradients.
    float16, bfloat16, float32 through the kernels (float64 runs the reference).

    Returns [B, Hq, Tq, Dv] in q's dtype. Saved for backward: q, k, v, the output, the
    log-sum-exp, the layout and the dropout seed; the backward recomputes the probabilities
    of the listed blocks only.
    """
    args = Args("fusednn.ops.block_sparse_attention")
    _check_qkv(args, q, k, v, 4, "[B, H, T, D]")
    if not isinstance(block_size, int) or isinstance(block_size, bool):
        raise args.error("block_size", "one of " + ", ".join(map(str, BLOCK_SIZES)), describe(block_size), TypeError)
    args.choice("block_size", block_size, BLOCK_SIZES)
    args.boolean("causal", causal)
    if scale is not None:
        scale = args.real("scale", scale)
    dropout_p = args.real("dropout_p", dropout_p, minimum=0.0, maximum=1.0)
    args.boolean("deterministic", deterministic)
    layout = _check_layout(args, layout, q, k, block_size)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if BLOCK_SPARSE_ATTENTION.select(q.device, q.dtype) == "reference":
        return _reference.block_sparse_attention(q, k, v, layout, block_size=block_size, causal=causal, scale=scale,
                                                 dropout_p=dropout_p)
    q, k, v = (_runtime.unit_last_stride(t) for t in (q, k, v))
    options = Options(None, None, q.shape[2], k.shape[2], scale, 0.0, -1, 0 if causal else -1, False, dropout_p,
                      _draw_seed(dropout_p, q.device), deterministic, layout, block_size)
    out, _lse = torch.ops.fusednn.attention_forward(q, k, v, None, *options.values())
    return out


BLOCK_SPARSE_ATTENTION = registry.register(registry.OpInfo(
    name="block_sparse_attention", family="efficient_attention", function=block_sparse_attention,
    reference=_reference.block_sparse_attention,
    baseline=functools.partial(_reference.block_sparse_attention, upcast=False),
    kernels=(registry.Kernel("triton", _KERNEL_DTYPES, compile_variants=_kernels.block_sparse_compile_variants),),
    samples=_cases.block_sparse_attention_samples, bad_inputs=_cases.block_sparse_attention_bad_inputs,
    bench=_cases.BENCH_SHAPES,
))
