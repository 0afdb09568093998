"""Samples, bad inputs and benchmark shapes of ``block_sparse_attention``.

Every layout builder of ``fusednn.ops.sparsity``, causal and not, GQA, per-head layouts with
empty rows, Tq != Tk, odd lengths (a partial last block) and every block size. Under the
interpreter the kernels' tiles are 32 x 16 (forward, dq) and 16 x 32 (dk/dv), capped at the
block size, so blocks of 32 and more span several tiles and blocks of 16 one.
"""

from __future__ import annotations

import torch

from fusednn.ops import sparsity
from fusednn.registry import BadInput, BenchShapes, Sample, View, mark

from .exact_attention import _ONE_KEY_GRADS, _t, qkv

F64 = torch.float64

# bf16, H = 16: a BigBird layout of about 10% density and a local window, blocks of 64.
BENCH_SHAPES = BenchShapes(
    gpu=tuple({"T": t, "D": d, "layout": lay} for lay in ("bigbird", "local") for d in (64, 128)
              for t in (4096, 16384)),
    gpu_quick=({"T": 4096, "D": 128, "layout": "bigbird"}, {"T": 16384, "D": 128, "layout": "local"}),
)


def _blocks(t: int, block_size: int) -> int:
    return -(-t // block_size)


def _random_layout(heads: int, tq: int, tk: int, block_size: int, empty_row: bool = False) -> torch.Tensor:
    layout = torch.rand(heads, _blocks(tq, block_size), _blocks(tk, block_size)) < 0.5
    if empty_row:  # a query block that sees nothing in the last head: output 0, zero gradients
        layout[-1, 1] = False
    return layout


# name: ((B, Hq, Hkv, Tq, Tk, D, Dv), layout, block size, options); layouts are drawn at each call
def _cases() -> dict:
    return {
        "local-causal": ((1, 2, 2, 40, 40, 16, 16), sparsity.local_layout(3, 2, True), 16, dict(causal=True)),
        "local": ((2, 1, 1, 70, 70, 16, 16), sparsity.local_layout(5, 3, False), 16, {}),
        "strided-causal": ((1, 1, 1, 97, 97, 16, 16), sparsity.strided_layout(7, 3, 2, True), 16, dict(causal=True)),
        "bigbird": ((1, 1, 1, 80, 80, 16, 16), sparsity.bigbird_layout(5, 3, 1, 1, seed=3), 16, {}),
        "longformer": ((1, 1, 1, 90, 90, 16, 16), sparsity.longformer_layout(6, 3, [0, 4]), 16, {}),
        "per-head-empty-row": ((1, 2, 2, 50, 50, 16, 16), _random_layout(2, 50, 50, 16, empty_row=True), 16, {}),
        "gqa-causal": ((1, 4, 2, 50, 50, 16, 16), _random_layout(4, 50, 50, 16, empty_row=True), 16,
                       dict(causal=True)),
        "tq<tk": ((1, 2, 2, 40, 70, 16, 16), _random_layout(1, 40, 70, 16), 16, {}),
        "tq>tk-causal": ((1, 2, 2, 70, 40, 16, 16), _random_layout(1, 70, 40, 16), 16, dict(causal=True)),
        "block32-causal": ((1, 1, 1, 97, 97, 16, 16), sparsity.local_layout(4, 2, True), 32, dict(causal=True)),
        "block64": ((1, 1, 1, 150, 150, 16, 16), sparsity.longformer_layout(3, 1, [2]), 64, {}),
        "block128-causal": ((1, 1, 1, 150, 150, 16, 16), sparsity.local_layout(2, 1, True), 128,
                            dict(causal=True)),
        "D40-Dv24-scale": ((1, 2, 2, 40, 40, 40, 24), sparsity.local_layout(3, 2, False), 16, dict(scale=0.3)),
        "deterministic-mqa-causal": ((1, 2, 1, 40, 40, 16, 16), _random_layout(2, 40, 40, 16), 16,
                                     dict(causal=True, deterministic=True)),
        "deterministic-block32": ((1, 1, 1, 97, 97, 16, 16), sparsity.strided_layout(4, 2, 1, False), 32,
                                  dict(deterministic=True)),
        "T1": ((1, 2, 2, 1, 1, 16, 16), torch.ones(1, 1, 1, dtype=torch.bool), 16, {}),
        "2d-layout": ((1, 2, 2, 33, 33, 16, 16), sparsity.local_layout(3, 2, True)[0], 16, dict(causal=True)),
    }


# the samples also run in float16 (the tile lists are the same in every dtype: the rest run in
# float32 only, which keeps the interpreter's time in check)
_LOW_PRECISION = {"local-causal", "gqa-causal", "block32-causal", "deterministic-mqa-causal"}


def block_sparse_attention_samples() -> list[Sample]:
    samples = []
    for name, (shape, layout, block_size, options) in _cases().items():
        samples.append(Sample(name, (*qkv(*shape), layout), dict(options, block_size=block_size),
                              tolerances=_ONE_KEY_GRADS if name == "T1" else {},
                              low_precision=name in _LOW_PRECISION))
    B, H, T, D = 1, 2, 45, 16
    transposed = [View(_t(B, T, H, D), lambda x: x.transpose(1, 2)) for _ in range(3)]
    samples.append(Sample("bthd-transposed", (*transposed, sparsity.local_layout(3, 2, True)),
                          dict(block_size=16, causal=True)))
    samples.append(Sample("zero-batch", (*qkv(0, 2, 2, 20, 20, 16, 16), sparsity.local_layout(2, 1, False)),
                          dict(block_size=16)))
    for which in ("q", "v", "k+v"):
        q, k, v = qkv(1, 2, 1, 33, 33, 16, 16, grad=False)
        for arg, t in zip("qkv", (q, k, v)):
            t.requires_grad_(arg in which.split("+"))
        samples.append(Sample(f"only-{which}-grad", (q, k, v, sparsity.local_layout(3, 2, True)),
                              dict(block_size=16, causal=True)))
    return mark(samples, opcheck={"2d-layout", "deterministic-mqa-causal"}, gradcheck={"local-causal"})


def block_sparse_attention_bad_inputs() -> list[BadInput]:
    q, k, v = qkv(1, 2, 2, 40, 40, 16, 16, grad=False)
    good = sparsity.local_layout(3, 1, False)

    return [
        BadInput("layout-not-a-tensor", (q, k, v, [[True]]), dict(block_size=16), TypeError,
            r"layout must be a bool tensor"),
        BadInput("layout-float", (q, k, v, good.float()), dict(block_size=16), TypeError,
            r"layout must be a bool tensor.*float32"),
        BadInput("layout-wrong-blocks", (q, k, v, sparsity.local_layout(4, 1, False)), dict(block_size=16), ValueError,
            r"layout must be .*\[2 or 1, 3, 3\]"),
        BadInput("layout-wrong-heads", (q, k, v, good.expand(3, 3, 3)), dict(block_size=16), ValueError,
            r"layout must be .*\[2 or 1, 3, 3\]"),
        BadInput("layout-4d", (q, k, v, good[None]), dict(block_size=16), ValueError, r"layout must be 3-D"),
        BadInput("layout-meta-device", (q, k, v, good.to("meta")), dict(block_size=16), ValueError,
            r"layout must be on q's device"),
        BadInput("block-size-48", (q, k, v, good), dict(block_size=48), ValueError,
            r"block_size must be one of 16, 32"),
        BadInput("block-size-str", (q, k, v, good), dict(block_size="64"), TypeError, r"block_size must be one of"),
        BadInput("causal-not-bool", (q, k, v, good), dict(block_size=16, causal=1), TypeError,
            r"causal must be a bool"),
        BadInput("dropout-p-1.5", (q, k, v, good), dict(block_size=16, dropout_p=1.5), ValueError,
            r"dropout_p must be"),
        BadInput("k-float32", (q, k.float(), v, good), dict(block_size=16), TypeError, r"k must be of q's dtype"),
        BadInput("kv-heads-3", (q, *qkv(1, 3, 3, 40, 40, 16, 16, grad=False)[1:], good), dict(block_size=16),
            ValueError,
            r"k must be .*heads"),
        BadInput("q-3d", (q[0], k, v, good), dict(block_size=16), ValueError, r"q must be 4-D"),
    ]
