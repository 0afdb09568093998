"""Exact attention beyond what every op gets from the registry (tests/test_registry.py):
dropout (against the reference given the kernel's own mask), reproducibility, output
gradients in other layouts, the packed layout's special cases, the float64 reference path,
the reference against torch's SDPA, and the GPU-only checks (realistic sizes,
torch.compile, bitwise-deterministic gradients)."""

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import reference, registry, testing
from fusednn.cases.exact_attention import cu_seqlens, qkv
from fusednn.kernels import exact_attention as kernels
from fusednn.ops.exact_attention import _draw_seed
from fusednn.registry import Sample, View
from fusednn.testing import assert_close

ATTENTION = registry.get("attention")
PAIRS = testing.kernel_dtypes(ATTENTION)  # (device, dtype) where the Triton kernel runs here
DEVICES = sorted({device for device, _ in PAIRS})
requires_kernel = pytest.mark.skipif(not PAIRS, reason="no Triton attention kernel runs here")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pairs(*dtypes):
    return [pytest.param(d, t, id=f"{d}-{str(t)[6:]}") for d, t in PAIRS if not dtypes or t in dtypes]


# --------------------------------------------------------------------------- dropout


def _kernel_keep_mask(seed_value, dropout_p, B, H, Tq, Tk, device):
    """The keep-mask the kernel uses after torch.manual_seed(seed_value)."""
    torch.manual_seed(seed_value)
    seed = _draw_seed(dropout_p, torch.device(device))
    return kernels.dropout_keep_mask(seed, B, H, Tq, Tk, dropout_p)


@pytest.mark.parametrize("device, dtype", _pairs())
@pytest.mark.parametrize(
    "shape, options",
    [
        ((2, 2, 2, 33, 33, 16, 16), dict(dropout_p=0.3)),
        ((1, 4, 2, 17, 40, 16, 16), dict(dropout_p=0.5, causal=True, alignment="bottom_right")),
        ((1, 2, 1, 24, 24, 16, 16), dict(dropout_p=0.2, window=(4, 4), softcap=2.0, deterministic=True)),
    ],
    ids=["plain", "gqa-causal-bottom-right", "window-softcap-deterministic"],
)
def test_dropout_matches_reference_with_the_kernels_mask(device, dtype, shape, options):
    B, Hq, _, Tq, Tk = shape[:5]
    mask = _kernel_keep_mask(1234, options["dropout_p"], B, Hq, Tq, Tk, device)
    assert mask.shape == (B, Hq, Tq, Tk) and mask.dtype == torch.bool
    info = dataclasses.replace(ATTENTION, reference=functools.partial(reference.attention, dropout_mask=mask),
                               baseline=functools.partial(reference.attention, dropout_mask=mask, upcast=False))
    bias = torch.randn(1, Hq, Tq, Tk, dtype=torch.float64, requires_grad=True)
    sample = Sample("dropout", qkv(*shape), dict(options, attn_bias=bias, return_lse=True))
    torch.manual_seed(1234)  # the kernel draws its seed first, as _kernel_keep_mask did
    testing.compare_sample(info, sample, device, dtype)


@pytest.mark.parametrize("device", DEVICES)
# 0.5 alone would miss an inverted comparison (keep when rand < p); 0.8 repeats 0.1 mirrored
@pytest.mark.parametrize("dropout_p", [pytest.param(0.1, marks=pytest.mark.slow), 0.5,
                                       pytest.param(0.8, marks=pytest.mark.slow)])
def test_dropout_keep_fraction(device, dropout_p):
    B, H, Tq, Tk = 2, 4, 128, 100  # 102,400 decisions
    mask = _kernel_keep_mask(99, dropout_p, B, H, Tq, Tk, device).cpu()
    n, keep = mask.numel(), 1.0 - dropout_p
    sigma = math.sqrt(keep * dropout_p / n)  # ~1.5e-3 at p = 0.5
    assert abs(mask.float().mean().item() - keep) < 5 * sigma
    # neighbours are independent: both kept with probability keep^2 (n - 1 pairs along the keys)
    pairs = (mask[..., 1:] & mask[..., :-1]).float()
    pair_sigma = math.sqrt(keep**2 * (1 - keep**2) / pairs.numel())
    assert abs(pairs.mean().item() - keep**2) < 6 * pair_sigma  # pairs overlap: a little more spread
    # every batch entry and head draws its own decisions
    flat = mask.reshape(B * H, Tq * Tk)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(B * H) for j in range(i))


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_seed_follows_torch_generator(device):
    q, k, v = (t.to(device, torch.float32).detach().requires_grad_() for t in qkv(1, 2, 2, 17, 17, 16, 16))
    grad_out = torch.randn(1, 2, 17, 16, device=device)

    def run(seed):
        torch.manual_seed(seed)
        out = fusednn.ops.attention(q, k, v, dropout_p=0.4)
        return (out, *torch.autograd.grad(out, (q, k, v), grad_out))

    first, again, other = run(1), run(1), run(2)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    # back-to-back calls draw fresh seeds
    assert not torch.equal(fusednn.ops.attention(q, k, v, dropout_p=0.4), fusednn.ops.attention(q, k, v, dropout_p=0.4))


@pytest.mark.parametrize("device, dtype", _pairs(torch.float32) + [pytest.param("cpu", torch.float64, id="cpu-float64")])
def test_dropout_p_one_drops_everything(device, dtype):
    """As torch's dropout: p = 1 zeroes the output and every gradient (float64 inputs run the
    reference, which must keep the same promise)."""
    q, k, v = (t.to(device, dtype).detach().requires_grad_() for t in qkv(1, 2, 2, 17, 17, 16, 16))
    out = fusednn.ops.attention(q, k, v, dropout_p=1.0)
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert torch.all(out == 0)
    assert all(torch.all(g == 0) for g in grads)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_opcheck(device):
    """opcheck of the registered ops with a dropout seed (the registry's samples draw none)."""
    q, k, v = (t.to(device, torch.float32).detach().requires_grad_() for t in qkv(1, 2, 1, 5, 6, 8, 4))
    sample_options = kernels.Options(None, None, 5, 6, 0.35, 0.0, -1, -1, False, 0.3,
                                     torch.tensor([42], dtype=torch.int64, device=device), True)
    testing.opcheck(torch.ops.fusednn.attention_forward.default, (q, k, v, None, *sample_options.values()),
                    triton=True)


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_dropout_follows_torch_generator(device):
    lengths_q, lengths_k = [17, 0, 9], [12, 3, 20]
    q = torch.randn(26, 2, 16, device=device, requires_grad=True)
    k, v = (torch.randn(35, 1, 16, device=device, requires_grad=True) for _ in range(2))
    cu_q, cu_k = cu_seqlens(lengths_q).to(device), cu_seqlens(lengths_k).to(device)
    grad_out = torch.randn(q.shape, device=device)

    def run(seed, dropout_p=0.4):
        torch.manual_seed(seed)
        out = fusednn.ops.attention_varlen(q, k, v, cu_q, cu_k, 17, 20, causal=True, dropout_p=dropout_p)
        return (out, *torch.autograd.grad(out, (q, k, v), grad_out))

    first, again, plain = run(1), run(1), run(1, dropout_p=0.0)
    for a, b in zip(first, again):
        assert torch.equal(a, b) and not a.isnan().any()
    assert not torch.allclose(first[0], plain[0])


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_dropout_is_applied(device):
    query, key, value = (torch.randn(2, 2, 17, 16, device=device) for _ in range(3))
    plain = fusednn.ops.scaled_dot_product_attention(query, key, value)
    dropped = fusednn.ops.scaled_dot_product_attention(query, key, value, dropout_p=0.5)
    assert dropped.shape == plain.shape and not torch.allclose(dropped, plain)


# --------------------------------------------------------------------------- layouts, reproducibility


@pytest.mark.parametrize("device, dtype", _pairs())
@pytest.mark.parametrize("layout", ["bthd", "broadcast"])
def test_output_gradient_layouts(device, dtype, layout):
    """grad_out laid out [B, T, H, D] (as from a projection), or broadcast with stride 0."""
    q, k, v = (t.to(device, dtype).detach().requires_grad_() for t in qkv(2, 2, 2, 21, 21, 16, 16))
    if layout == "bthd":
        grad_out = torch.randn(2, 21, 2, 16, dtype=dtype, device=device).transpose(1, 2)
    else:
        grad_out = torch.randn(1, 1, 1, 16, dtype=dtype, device=device).expand(2, 2, 21, 16)
    got = torch.autograd.grad(fusednn.ops.attention(q, k, v, window=(3, 3)), (q, k, v), grad_out)
    refs = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(reference.attention(*refs, window=(3, 3)), refs, grad_out.double().cpu())
    base = [t.detach().requires_grad_() for t in (q, k, v)]
    baseline = torch.autograd.grad(reference.attention(*base, window=(3, 3), upcast=False), base, grad_out)
    for name, a, e, b in zip(("dq", "dk", "dv"), got, want, baseline):
        assert_close(a, e, name=name, lowp_baseline=b if dtype in testing.ULP else None)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_backward_is_reproducible(device):
    q, k, v = (t.to(device, torch.float32).detach().requires_grad_() for t in qkv(2, 4, 2, 33, 33, 16, 16))
    grad_out = torch.randn(2, 4, 33, 16, device=device)

    def grads():
        return torch.autograd.grad(fusednn.ops.attention(q, k, v, causal=True, deterministic=True), (q, k, v),
                                   grad_out)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_return_lse_false_gives_the_same_output(device):
    q, k, v = (t.to(device, torch.float32).detach() for t in qkv(1, 2, 2, 17, 17, 16, 16))
    out = fusednn.ops.attention(q, k, v, causal=True)
    out_with_lse, _ = fusednn.ops.attention(q, k, v, causal=True, return_lse=True)
    assert isinstance(out, torch.Tensor) and torch.equal(out, out_with_lse)


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_single_sequence_equals_dense(device):
    """One packed sequence is the dense op on [1, H, T, D] (same kernel, same result)."""
    q, k, v = (torch.randn(1, 2, 23, 16, device=device) for _ in range(3))
    dense = fusednn.ops.attention(q, k, v, causal=True)
    packed = [t[0].transpose(0, 1) for t in (q, k, v)]
    cu = cu_seqlens([23]).to(device)
    varlen = fusednn.ops.attention_varlen(*packed, cu, cu, 23, 23, causal=True)
    assert torch.allclose(varlen, dense[0].transpose(0, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_zero_sequences_and_zero_tokens(device):
    q, k, v = (torch.randn(0, 2, 16, device=device, requires_grad=True) for _ in range(3))
    for cu in (torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(3, dtype=torch.int32, device=device)):
        out, lse = fusednn.ops.attention_varlen(q, k, v, cu, cu, 0, 0, return_lse=True)
        assert out.shape == (0, 2, 16) and lse.shape == (2, 0)
        assert all(g.shape == (0, 2, 16) for g in torch.autograd.grad(out, (q, k, v), torch.randn_like(out)))


@pytest.mark.parametrize("device, dtype", _pairs())
def test_hidden_rows_give_zeros_and_no_nan(device, dtype):
    """Rows that see no key (a bool mask hiding them, a float bias of -inf): output 0, lse
    -inf, zero gradients, no NaN anywhere (the registry compares the values)."""
    mask = torch.ones(1, 2, 33, 20, dtype=torch.bool, device=device)
    mask[:, :, 3] = False
    bias = torch.zeros(1, 2, 33, 20, dtype=dtype, device=device).masked_fill(~mask, float("-inf"))
    for attn_bias in (mask, bias.requires_grad_()):
        q, k, v = (t.to(device, dtype).detach().requires_grad_() for t in qkv(1, 2, 2, 33, 20, 16, 16))
        out, lse = fusednn.ops.attention(q, k, v, attn_bias=attn_bias, return_lse=True)
        leaves = [q, k, v] + ([attn_bias] if attn_bias.requires_grad else [])
        grads = torch.autograd.grad(out, leaves, torch.randn_like(out))
        assert torch.all(out[:, :, 3] == 0) and torch.all(torch.isneginf(lse[:, :, 3]))
        assert torch.all(grads[0][:, :, 3] == 0)
        assert not any(t.isnan().any() for t in (out, *grads))


# --------------------------------------------------------------------------- float64 (the reference path)


def test_float64_runs_the_reference_and_gradchecks():
    q, k, v = qkv(1, 2, 1, 5, 6, 4, 3)
    bias = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, bias):
        return fusednn.ops.attention(q, k, v, attn_bias=bias, causal=True, alignment="bottom_right", softcap=2.0)

    assert ATTENTION.select(torch.device("cpu"), torch.float64) == "reference"
    assert torch.autograd.gradcheck(fn, (q, k, v, bias))
    expected = reference.attention(q, k, v, attn_bias=bias, causal=True, alignment="bottom_right", softcap=2.0)
    assert_close(fn(q, k, v, bias), expected)


def test_float64_row_of_minus_inf_bias_has_zero_gradients():
    q, k, v = qkv(1, 1, 1, 4, 5, 8, 8)
    bias = torch.randn(4, 5, dtype=torch.float64)
    bias[1] = float("-inf")
    bias.requires_grad_()
    out = fusednn.ops.attention(q, k, v, attn_bias=bias)
    grads = torch.autograd.grad(out, (q, k, v, bias), torch.randn_like(out))
    assert torch.all(out[:, :, 1] == 0)
    for name, grad in zip(("q", "k", "v", "attn_bias"), grads):
        assert not grad.isnan().any(), f"grad {name} has NaN"
    assert torch.all(grads[0][:, :, 1] == 0) and torch.all(grads[3][1] == 0)


@pytest.mark.parametrize("case", ["plain", "causal", "bool-mask", "float-mask", "gqa"])
def test_reference_matches_torch_sdpa(case):
    """fusednn.reference.attention (the truth of the registry tests) against torch's SDPA
    (math backend) in float64, where torch has the same option."""
    q, k, v = qkv(2, 4, 2 if case == "gqa" else 4, 13, 19, 16, 8)
    kwargs, ours_kwargs = {}, {}
    if case == "causal":
        kwargs, ours_kwargs = dict(is_causal=True), dict(causal=True)
    elif case == "bool-mask":
        mask = (torch.rand(13, 19) < 0.7) | torch.eye(13, 19, dtype=torch.bool)
        kwargs, ours_kwargs = dict(attn_mask=mask), dict(attn_bias=mask)
    elif case == "float-mask":
        mask = torch.randn(2, 1, 13, 19, dtype=torch.float64)
        kwargs, ours_kwargs = dict(attn_mask=mask), dict(attn_bias=mask)
    elif case == "gqa":
        kwargs = dict(enable_gqa=True)
    ours = reference.attention(q, k, v, **ours_kwargs)
    theirs = reference.scaled_dot_product_attention(q, k, v, **kwargs)
    assert_close(ours, theirs)


def test_registered_schemas_list_the_options_once():
    forward = str(torch.ops.fusednn.attention_forward.default._schema)
    backward = str(torch.ops.fusednn.attention_backward.default._schema)
    options = ", ".join(f"{f.metadata['schema']} {f.name}" for f in dataclasses.fields(kernels.Options))
    assert forward == f"fusednn::attention_forward(Tensor q, Tensor k, Tensor v, Tensor? bias, {options}) -> (Tensor, Tensor)"
    assert backward.endswith(f"Tensor? bias, bool bias_grad, {options}) -> (Tensor, Tensor, Tensor, Tensor)")


# --------------------------------------------------------------------------- GPU only


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_low_precision_at_realistic_size(dtype, D, causal):
    """The 2x rule at a realistic size, torch's math SDPA in the same dtype as the baseline."""
    info = dataclasses.replace(ATTENTION, baseline=_math_sdpa_baseline)
    sample = Sample("realistic", qkv(2, 4, 4, 257, 257, D, D), dict(causal=causal))
    testing.compare_sample(info, sample, "cuda", dtype)


def _math_sdpa_baseline(q, k, v, *, causal=False, **_):
    return reference.scaled_dot_product_attention(q, k, v, is_causal=causal)


class _TinyAttentionModel(torch.nn.Module):
    """qkv projection, causal GQA attention, output projection: x [B, T, dim] -> [B, T, dim]."""

    def __init__(self, dim=64, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.qkv = torch.nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.heads * self.head_dim, *[self.kv_heads * self.head_dim] * 2], dim=-1)
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        y = fusednn.ops.attention(q, k, v, causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


@requires_cuda
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_gpu_torch_compile_fullgraph_matches_eager(backend):
    model = _TinyAttentionModel().cuda()
    x = torch.randn(2, 97, 64, device="cuda", requires_grad=True)
    grad_y = torch.randn(2, 97, 64, device="cuda")
    params = [x, *model.parameters()]
    eager = model(x)
    eager_grads = torch.autograd.grad(eager, params, grad_y)
    compiled = torch.compile(model, fullgraph=True, backend=backend)(x)
    compiled_grads = torch.autograd.grad(compiled, params, grad_y)
    assert_close(compiled, eager.detach().double(), name="output")
    for i, (got, want) in enumerate(zip(compiled_grads, eager_grads)):
        assert_close(got, want.double(), name=f"grad[{i}]")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gpu_deterministic_gradients_are_bitwise_reproducible(dtype):
    q, k, v = (t.to("cuda", dtype).detach().requires_grad_() for t in qkv(2, 4, 2, 1024, 1024, 64, 64))
    bias = torch.randn(1, 4, 1024, 1024, dtype=dtype, device="cuda", requires_grad=True)
    grad_out = torch.randn(2, 4, 1024, 64, dtype=dtype, device="cuda")

    def grads():
        out = fusednn.ops.attention(q, k, v, attn_bias=bias, causal=True, deterministic=True)
        return torch.autograd.grad(out, (q, k, v, bias), grad_out)

    for name, a, b in zip(("dq", "dk", "dv", "dbias"), grads(), grads()):
        assert torch.equal(a, b), name


def test_views_in_samples_keep_their_layout():
    """A View sample input reaches the op as the non-contiguous view it describes."""
    sample = next(s for s in ATTENTION.samples() if s.name == "non-contiguous-bthd-transposed")
    assert isinstance(sample.args[0], View)
    args, _ = testing.Inputs(ATTENTION.function, sample, torch.float32, "cpu").build()
    assert not args[0].is_contiguous() and args[0].shape == (2, 2, 21, 16)
