"""Block-sparse attention beyond the registry's grid (tests/test_registry.py): the layout
builders of ``fusednn.ops.sparsity`` and ``layout_to_mask``, the kernel against exact
attention with the expanded mask for every builder, the tile lists (only listed blocks are
visited), dropout against the reference given the kernel's own mask, and
``fusednn.nn.BlockSparseSelfAttention``."""

import dataclasses
import functools

import pytest
import torch

import fusednn
from fusednn import reference, registry, testing
from fusednn.cases.exact_attention import qkv
from fusednn.kernels import exact_attention as kernels
from fusednn.ops import sparsity
from fusednn.ops.exact_attention import _draw_seed
from fusednn.registry import Sample

BLOCK_SPARSE = registry.get("block_sparse_attention")
PAIRS = testing.kernel_dtypes(BLOCK_SPARSE)
DEVICES = sorted({device for device, _ in PAIRS})


def _pairs(*dtypes):
    return [pytest.param(d, t, id=f"{d}-{str(t)[6:]}") for d, t in PAIRS if not dtypes or t in dtypes]


# --------------------------------------------------------------------------- layouts


def _dense_window(n, before, after):
    return torch.tensor([[i - before <= j <= i + after for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("n, window", [(1, 1), (6, 1), (6, 3), (7, 4), (5, 9)])
def test_local_layout(n, window):
    assert torch.equal(sparsity.local_layout(n, window, causal=True), _dense_window(n, window - 1, 0)[None])
    expected = _dense_window(n, window // 2, (window - 1) // 2)
    layout = sparsity.local_layout(n, window, causal=False)
    assert layout.dtype == torch.bool and layout.shape == (1, n, n)
    assert torch.equal(layout[0], expected)


def test_strided_layout():
    layout = sparsity.strided_layout(9, 3, 2, causal=True)[0]
    for i in range(9):
        for j in range(9):
            assert bool(layout[i, j]) == (j <= i and (i - j < 2 or (i - j) % 3 == 0)), (i, j)
    both = sparsity.strided_layout(9, 4, 1, causal=False)[0]
    assert torch.equal(both, both.T) and bool(both[0, 8]) and not bool(both[0, 7])


def test_bigbird_layout():
    n, window, global_blocks, random_blocks = 12, 3, 2, 2
    layout = sparsity.bigbird_layout(n, window, global_blocks, random_blocks, seed=5)[0]
    assert layout[:global_blocks].all() and layout[:, :global_blocks].all()
    assert (layout & _dense_window(n, 1, 1)).equal(_dense_window(n, 1, 1))
    base = _dense_window(n, 1, 1)
    base[:global_blocks] = True
    base[:, :global_blocks] = True
    extra = (layout & ~base).sum(1)
    assert (extra[global_blocks:] == random_blocks).all() and (extra[:global_blocks] == 0).all()
    assert torch.equal(layout, sparsity.bigbird_layout(n, window, global_blocks, random_blocks, seed=5)[0])
    assert not torch.equal(layout, sparsity.bigbird_layout(n, window, global_blocks, random_blocks, seed=6)[0])


def test_longformer_layout():
    layout = sparsity.longformer_layout(8, 3, [0, 5])[0]
    expected = _dense_window(8, 1, 1)
    expected[[0, 5]] = True
    expected[:, [0, 5]] = True
    assert torch.equal(layout, expected)


def test_layout_to_mask():
    layout = torch.rand(2, 3, 4) < 0.5
    mask = sparsity.layout_to_mask(layout, 16, 40, 60)
    assert mask.shape == (2, 40, 60)
    for i, j in ((0, 0), (15, 16), (16, 15), (39, 59), (33, 47)):
        assert torch.equal(mask[:, i, j], layout[:, i // 16, j // 16])
    assert sparsity.layout_to_mask(layout[0], 16, 40, 60).shape == (40, 60)


@pytest.mark.parametrize("call, error, match", [
    (lambda: sparsity.local_layout(4, 0), ValueError, r"local_layout: window_blocks must be an int >= 1"),
    (lambda: sparsity.local_layout(-1, 2), ValueError, r"n_blocks must be"),
    (lambda: sparsity.strided_layout(4, 0, 1), ValueError, r"stride must be"),
    (lambda: sparsity.bigbird_layout(4, 3, 5, 1), ValueError, r"global_blocks must be"),
    (lambda: sparsity.bigbird_layout(4, 3, 1, 1, seed=1.5), TypeError, r"seed must be an int"),
    (lambda: sparsity.longformer_layout(4, 3, [4]), ValueError, r"global_block_ids must be block indices in \[0, 4\)"),
    (lambda: sparsity.layout_to_mask(torch.ones(1, 2, 2, dtype=torch.bool), 16, 40, 20), ValueError,
     r"layout must be .*\[\.\.\., 3, 2\]"),
    (lambda: sparsity.layout_to_mask(torch.ones(1, 2, 2), 16, 20, 20), TypeError, r"layout must be bool"),
])
def test_layout_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- the kernel


def _builders(n):
    return {
        "local-causal": (sparsity.local_layout(n, 2, True), True),
        "strided-causal": (sparsity.strided_layout(n, 2, 1, True), True),
        "bigbird": (sparsity.bigbird_layout(n, 1, 1, 1, seed=0), False),
        "longformer": (sparsity.longformer_layout(n, 1, [1]), False),
    }


@pytest.mark.parametrize("device, dtype", _pairs(torch.float32))
@pytest.mark.parametrize("builder", ["local-causal", "strided-causal", "bigbird", "longformer"])
def test_equals_exact_attention_with_the_expanded_mask(device, dtype, builder):
    """The block-sparse kernel and the exact-attention kernel given layout_to_mask agree (both
    fused; forward and gradients), GQA and a partial last block included."""
    T, block = 45, 16
    layout, causal = _builders(-(-T // block))[builder]
    q, k, v = (t.detach().to(device, dtype).requires_grad_() for t in qkv(1, 4, 2, T, T, 16, 16))
    out = fusednn.ops.block_sparse_attention(q, k, v, layout, block_size=block, causal=causal)
    mask = sparsity.layout_to_mask(layout, block, T, T).to(device)
    expected = fusednn.ops.attention(q, k, v, causal=causal, attn_bias=mask)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(grads, expected_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_tile_lists_visit_only_listed_blocks():
    """Every (query tile, key tile) pair the lists name lies in a true block (and, causal, has
    a visible pair); every such pair is listed once; the partially visible ones come first."""
    layout = torch.rand(2, 5, 4) < 0.5
    Tq, Tk, block, tile_m, tile_n = 70, 60, 16, 16, 16
    for causal in (False, True):
        for by_key in (False, True):
            lists, counts = kernels.sparse_tile_lists(layout, block, tile_m, tile_n, Tq, Tk, causal, by_key)
            for h in range(2):
                for tile in range(lists.shape[1]):
                    n_partial, n_all = counts[h, tile].tolist()
                    listed = lists[h, tile, :n_all].tolist()
                    assert len(set(listed)) == n_all
                    expected = []
                    for other in range(lists.shape[2]):
                        i, j = (other, tile) if by_key else (tile, other)
                        q0, k0 = i * tile_m, j * tile_n
                        visible = bool(layout[h, q0 // block, k0 // block]) and (not causal or k0 <= q0 + tile_m - 1)
                        if visible:
                            partial = k0 + tile_n > Tk or (causal and k0 + tile_n - 1 > q0)
                            expected.append((other, partial))
                    assert sorted(listed) == [o for o, _ in expected]
                    partial_set = {o for o, p in expected if p}
                    assert set(listed[:n_partial]) == partial_set


@pytest.mark.parametrize("device, dtype", _pairs(torch.float32))
def test_dropout_matches_reference_with_the_kernels_mask(device, dtype):
    B, H, T, block, p = 1, 2, 40, 16, 0.3
    layout = sparsity.local_layout(3, 2, True)
    torch.manual_seed(77)
    keep = kernels.dropout_keep_mask(_draw_seed(p, torch.device(device)), B, H, T, T, p)
    info = dataclasses.replace(
        BLOCK_SPARSE, reference=functools.partial(reference.block_sparse_attention, dropout_mask=keep),
        baseline=functools.partial(reference.block_sparse_attention, dropout_mask=keep, upcast=False))
    sample = Sample("dropout", (*qkv(B, H, H, T, T, 16, 16), layout), dict(block_size=block, causal=True,
                                                                            dropout_p=p))
    torch.manual_seed(77)  # the op draws its seed first, as above
    testing.compare_sample(info, sample, device, dtype)


# --------------------------------------------------------------------------- the module


@pytest.mark.parametrize("device", DEVICES or ["cpu"])
def test_module_matches_projections_around_the_reference(device):
    E, H, T, block = 32, 2, 40, 16
    layout = sparsity.local_layout(4, 2, True)  # covers 64 tokens; T = 40 uses its first 3 blocks
    module = fusednn.nn.BlockSparseSelfAttention(E, H, layout, block_size=block, causal=True).to(device)
    x = torch.randn(2, T, E, device=device, requires_grad=True)
    out = module(x)

    def heads(t):
        return t.view(2, T, H, E // H).transpose(1, 2)

    q, k, v = heads(module.q_proj(x)), heads(module.k_proj(x)), heads(module.v_proj(x))
    core = reference.block_sparse_attention(q, k, v, layout[:, :3, :3], block_size=block, causal=True)
    expected = module.out_proj(core.transpose(1, 2).reshape(2, T, E))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0],
                               rtol=1e-5, atol=1e-6)
    assert set(module.state_dict()) == {f"{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")} | {
        "out_proj.weight", "out_proj.bias"}


@pytest.mark.parametrize("build, error, match", [
    (lambda: fusednn.nn.BlockSparseSelfAttention(30, 4, sparsity.local_layout(2, 1)), ValueError,
     r"num_heads must be a divisor of embed_dim 30"),
    (lambda: fusednn.nn.BlockSparseSelfAttention(32, 4, sparsity.local_layout(2, 1).float()), TypeError,
     r"layout must be bool"),
    (lambda: fusednn.nn.BlockSparseSelfAttention(32, 4, sparsity.local_layout(2, 1), block_size=8), ValueError,
     r"block_size must be one of 16, 32, 64, 128"),
    (lambda: fusednn.nn.BlockSparseSelfAttention(32, 4, torch.ones(3, 2, 2, dtype=torch.bool)), ValueError,
     r"layout must be \[4 or 1, n_blocks, n_blocks\]"),
    (lambda: fusednn.nn.BlockSparseSelfAttention(32, 4, sparsity.local_layout(2, 1), block_size=16)(
        torch.randn(1, 33, 32)), ValueError, r"x must be at most 32 tokens long"),
])
def test_module_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()
