"""Exact attention beyond what every op gets from the registry (tests/test_registry.py):
dropout (against the reference given the kernel's own mask), reproducibility, output
gradients in other layouts, the packed layout's special cases, the float64 reference path,
the reference against torch's SDPA, scaled_dot_product_attention against torch's own
(attn_mask with is_causal, CausalBias masks also under torch.compile, which mask tensors
it takes, the RuntimeErrors torch code catches), and the GPU-only checks (realistic sizes,
torch.compile, bitwise-deterministic gradients)."""

import dataclasses
import functools
import math
import warnings

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import fusednn
from fusednn import reference, registry, testing
from fusednn.cases.exact_attention import cu_seqlens, qkv, strided_nested_tensor
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


@pytest.mark.parametrize("device, dtype",
                         _pairs(torch.float32) + [pytest.param("cpu", torch.float64, id="cpu-float64")])
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
    assert forward == (f"fusednn::attention_forward(Tensor q, Tensor k, Tensor v, Tensor? bias, {options}) "
                       "-> (Tensor, Tensor)")
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


# --------------------------------------------------------------------------- scaled_dot_product_attention as torch's


def _sdpa_inputs(L, S, dtype, B=2, H=2, E=16, Ev=8):
    shapes = ((B, H, L, E), (B, H, S, E), (B, H, S, Ev))
    return [torch.randn(shape, dtype=torch.float64).to(dtype).requires_grad_() for shape in shapes]


def _sdpa_against_torch(inputs, torch_kwargs, **ours_kwargs):
    """(ours, torch's) outputs and input gradients: ours on ``inputs``, torch's own SDPA on float64
    copies (the truth); the same output gradient for both."""
    truth_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ours = fusednn.ops.scaled_dot_product_attention(*inputs, **ours_kwargs)
    theirs = F.scaled_dot_product_attention(*truth_inputs, **torch_kwargs)
    grad_out = torch.randn(theirs.shape, dtype=torch.float64)
    ours_grads = torch.autograd.grad(ours, inputs, grad_out.to(ours.dtype))
    theirs_grads = torch.autograd.grad(theirs, truth_inputs, grad_out)
    return [ours, *ours_grads], [theirs, *theirs_grads]


# float64 runs the reference path, float32 the kernel (Triton's interpreter on the CPU)
_SDPA_DTYPES = [pytest.param(torch.float64, id="float64-reference")] + [
    pytest.param(torch.float32, id="cpu-float32") for pair in PAIRS if pair == ("cpu", torch.float32)]
_LENGTHS = [pytest.param(13, 19, id="L<S"), pytest.param(17, 17, id="L=S"), pytest.param(19, 13, id="L>S")]


@pytest.mark.parametrize("dtype", _SDPA_DTYPES)
@pytest.mark.parametrize("L, S", _LENGTHS)
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_sdpa_mask_with_is_causal_matches_torch(mask_kind, L, S, dtype):
    """attn_mask and is_causal together: torch's CPU flash kernel (its default for 4-D CPU inputs
    and a mask without grad) applies both; fusednn must give the same."""
    inputs = _sdpa_inputs(L, S, dtype, Ev=16)  # Ev = E: torch's CPU flash kernel takes only those
    mask = (torch.rand(L, S) < 0.6) | torch.eye(L, S, dtype=torch.bool)
    mask[4] = False  # a row no key is visible to: 0 from both
    if mask_kind == "float":
        mask = torch.randn(L, S, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    actual, expected = _sdpa_against_torch(inputs, dict(attn_mask=mask, is_causal=True),
                                           attn_mask=mask.to(dtype) if mask_kind == "float" else mask, is_causal=True)
    for name, a, e in zip(("output", "grad query", "grad key", "grad value"), actual, expected):
        assert_close(a, e, name=name)
    assert torch.all(actual[0][:, :, 4] == 0)


@pytest.mark.parametrize("L, S", _LENGTHS)
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_reference_sdpa_mask_with_is_causal_is_torchs_cpu_kernel(mask_kind, L, S):
    """The reference (torch's math backend, which refuses the combination) composes the mask
    with the causal band; torch's default CPU path computes the same."""
    q, k, v = (t.detach() for t in _sdpa_inputs(L, S, torch.float64, Ev=16))
    mask = torch.rand(2, 1, L, S) < 0.6
    if mask_kind == "float":
        mask = torch.randn(2, 1, L, S, dtype=torch.float64).masked_fill(mask, float("-inf"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    assert_close(reference.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True), expected)


_CAUSAL_BIASES = {"upper_left": causal_upper_left, "lower_right": causal_lower_right}


def _causal_bias(variant, L, S):
    with warnings.catch_warnings():  # lower-right with L > S: torch warns that its GPU kernels give NaN there
        warnings.simplefilter("ignore")
        return _CAUSAL_BIASES[variant](L, S)


@pytest.mark.parametrize("dtype", _SDPA_DTYPES)
@pytest.mark.parametrize("L, S", _LENGTHS)
@pytest.mark.parametrize("variant", list(_CAUSAL_BIASES))
def test_sdpa_causal_bias_matches_torch(variant, L, S, dtype):
    """torch.nn.attention.bias.CausalBias as attn_mask runs as the causal band of its alignment.
    Lower-right with L > S: the first L - S queries see no key; torch's CPU path (the
    materialised mask through its math backend) gives them 0 too, so every row is compared."""
    inputs = _sdpa_inputs(L, S, dtype)
    bias = _causal_bias(variant, L, S)
    actual, expected = _sdpa_against_torch(inputs, dict(attn_mask=bias), attn_mask=bias)
    for name, a, e in zip(("output", "grad query", "grad key", "grad value"), actual, expected):
        assert_close(a, e, name=name)
    if variant == "lower_right" and L > S:
        assert torch.all(actual[0][:, :, :L - S] == 0) and torch.all(actual[1][:, :, :L - S] == 0)


def test_sdpa_causal_bias_runs_as_the_kernels_band():
    """No mask tensor reaches the registered op: the band carries the alignment."""
    calls = []
    q, k, v = (t.detach() for t in _sdpa_inputs(5, 7, torch.float32))

    class Record(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.fusednn.attention_forward.default:
                calls.append(args)
            return func(*args, **(kwargs or {}))

    if not PAIRS:
        pytest.skip("no Triton attention kernel runs here")
    for variant, bottom_right in (("upper_left", False), ("lower_right", True)):
        bias = _causal_bias(variant, 5, 7)  # made outside the mode, which would take its constructor's allocation
        with Record():
            fusednn.ops.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        options = kernels.Options(*calls[-1][4:])
        assert calls[-1][3] is None  # no bias tensor
        assert (options.window_right, options.bottom_right) == (0, bottom_right)


def test_sdpa_causal_bias_with_is_causal_raises_as_torch():
    q, k, v = (t.detach() for t in _sdpa_inputs(5, 7, torch.float64))
    bias = causal_upper_left(5, 7)
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=True)
    with pytest.raises(ValueError, match=r"is_causal must be False with a CausalBias attn_mask"):
        fusednn.ops.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=True)


@pytest.mark.parametrize("L, S", [(5, 7), (7, 5)])
def test_sdpa_causal_bias_of_other_lengths_names_attn_mask(L, S):
    q, k, v = (t.detach() for t in _sdpa_inputs(L, S, torch.float64))
    for bias in (causal_upper_left(L + 1, S), _causal_bias("lower_right", L, S - 1)):
        with pytest.raises(ValueError, match=rf"attn_mask must be a CausalBias of query's and key's lengths "
                                             rf"\(L, S\) = \({L}, {S}\); got a CausalBias"):
            fusednn.ops.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _sdpa_loss(query, key, value, attn_mask):
    out = fusednn.ops.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
    return (out * torch.arange(out.shape[-1], dtype=out.dtype)).sum()


@pytest.mark.parametrize("dtype, backend", [
    pytest.param(torch.float64, "aot_eager", id="float64-aot_eager", marks=pytest.mark.slow),  # about 4 s
    # Triton's interpreter cannot run on the fake tensors aot_autograd traces with (CUDA runs it):
    # dynamo's trace (fullgraph: no graph break) with the kernel run eagerly
    pytest.param(torch.float32, "eager", id="float32-dynamo", marks=requires_kernel),
])
def test_sdpa_masks_under_torch_compile(dtype, backend):
    """One graph (fullgraph) per mask kind; a CausalBias of the other variant recompiles (the
    variant is guarded on), and plain masks and a learned bias (Parameter) still trace."""
    torch._dynamo.reset()
    compiled = torch.compile(_sdpa_loss, fullgraph=True, backend=backend)
    for kind, (L, S) in (("upper_left", (5, 7)), ("lower_right", (5, 7)), ("lower_right", (7, 5)),
                         ("float", (5, 7)), ("parameter", (5, 7))):
        inputs = _sdpa_inputs(L, S, dtype)
        if kind in _CAUSAL_BIASES:
            mask = truth_mask = _causal_bias(kind, L, S)
        else:
            truth_mask = torch.randn(L, S, dtype=torch.float64)
            mask = truth_mask.to(dtype)
            mask = torch.nn.Parameter(mask) if kind == "parameter" else mask
        got = compiled(*inputs, mask)
        got_grads = torch.autograd.grad(got, inputs)
        truth = [t.detach().double().requires_grad_() for t in inputs]
        out = F.scaled_dot_product_attention(*truth, attn_mask=truth_mask)
        want = (out * torch.arange(out.shape[-1], dtype=out.dtype)).sum()
        want_grads = torch.autograd.grad(want, truth)
        assert_close(got, want, name=f"{kind} {L}x{S}: loss")
        for name, g, w in zip(("query", "key", "value"), got_grads, want_grads):
            assert_close(g, w, name=f"{kind} {L}x{S}: grad {name}")


class _DispatchWrapper(torch.Tensor):
    """A wrapper subclass with a ``__torch_dispatch__`` of its own."""

    @staticmethod
    def __new__(cls, inner):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device)

    def __init__(self, inner):
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda t: t.inner if isinstance(t, _DispatchWrapper) else t  # noqa: E731
        return func(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in (kwargs or {}).items()})


class _PlainSubclass(torch.Tensor):
    """A subclass that overrides nothing: its values are its storage's."""


def test_is_plain_tensor():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode

    from fusednn.cases.exact_attention import TensorWithOwnTorchFunction
    from fusednn.ops.exact_attention import _is_plain_tensor

    t = torch.randn(3, 4)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(t)
    with FunctionalTensorMode():
        functional = FunctionalTensor.to_functional(t)
    nested = strided_nested_tensor([t, t])
    plain = {"tensor": t, "parameter": torch.nn.Parameter(t), "fake": fake, "functional": functional,
             "subclass-without-overrides": t.as_subclass(_PlainSubclass)}
    not_plain = {"causal-bias": causal_upper_left(3, 4), "nested": nested,
                 "jagged": torch.nested.nested_tensor([t, t[:2]], layout=torch.jagged),
                 "own-torch-function": t.as_subclass(TensorWithOwnTorchFunction),
                 "own-torch-dispatch": _DispatchWrapper(t)}
    assert {name: _is_plain_tensor(x) for name, x in plain.items()} == dict.fromkeys(plain, True)
    assert {name: _is_plain_tensor(x) for name, x in not_plain.items()} == dict.fromkeys(not_plain, False)


def test_sdpa_refuses_mask_subclasses_naming_attn_mask():
    q, k, v = (t.detach() for t in _sdpa_inputs(3, 4, torch.float64))
    mask = torch.randn(3, 4, dtype=torch.float64)
    nested = strided_nested_tensor([mask, mask])
    for bad, got in ((_DispatchWrapper(mask), "_DispatchWrapper"), (nested, "a nested tensor")):
        with pytest.raises(TypeError, match=rf"scaled_dot_product_attention: attn_mask must be a plain tensor "
                                            rf"\(bool mask or float bias\), a torch.nn.attention.bias.CausalBias "
                                            rf"or None; got .*{got}"):
            fusednn.ops.scaled_dot_product_attention(q, k, v, attn_mask=bad)
    with pytest.raises(TypeError, match=r"fusednn.ops.attention: attn_bias must be a plain tensor \(bool mask or "
                                        r"float bias\) or None; got a torch.nn.attention.bias.CausalBias"):
        fusednn.ops.attention(q, k, v, attn_bias=causal_upper_left(3, 4))


def test_sdpa_learned_bias_parameter_gets_its_gradient():
    q, k, v = (t.detach() for t in _sdpa_inputs(5, 7, torch.float64))
    bias = torch.nn.Parameter(torch.randn(2, 1, 5, 7, dtype=torch.float64))
    truth = bias.detach().clone().requires_grad_()
    out = fusednn.ops.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=truth)
    grad_out = torch.randn(out.shape, dtype=torch.float64)
    assert_close(out, expected)
    assert_close(torch.autograd.grad(out, bias, grad_out)[0], torch.autograd.grad(expected, truth, grad_out)[0],
                 name="grad attn_mask")


def test_sdpa_mask_as_traced_by_export_and_make_fx():
    """torch.export (non-strict) and make_fx hand the op FakeTensors: the mask is a plain tensor."""
    from torch.fx.experimental.proxy_tensor import make_fx

    q, k, v = (t.detach() for t in _sdpa_inputs(5, 7, torch.float64))
    mask = torch.randn(5, 7, dtype=torch.float64)

    class Attend(torch.nn.Module):
        def forward(self, q, k, v, mask):
            return fusednn.ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)

    expected = reference.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    exported = torch.export.export(Attend(), (q, k, v, mask), strict=False)
    assert_close(exported.module()(q, k, v, mask), expected, name="exported")
    traced = make_fx(Attend(), tracing_mode="fake")(q, k, v, mask)
    assert_close(traced(q, k, v, mask), expected, name="make_fx")


# name: (query, key, value shapes, kwargs); torch's SDPA raises RuntimeError for each
_E = 8
_TORCH_RUNTIME_ERRORS = {
    "key-dtype": (((2, 4, 5, _E), (2, 4, 6, _E), (2, 4, 6, _E)), dict(key_dtype=torch.float64), "key"),
    "value-dtype": (((2, 4, 5, _E), (2, 4, 6, _E), (2, 4, 6, _E)), dict(value_dtype=torch.float16), "value"),
    "query-1d": (((_E,), (6, _E), (6, _E)), {}, "query"),
    "all-1d": (((_E,), (_E,), (_E,)), {}, "query"),
    "query-0d": (((), (6, _E), (6, _E)), {}, "query"),
    "head-dims": (((2, 4, 5, _E), (2, 4, 6, 4), (2, 4, 6, _E)), {}, "key"),
    "batch": (((2, 4, 5, _E), (3, 4, 6, _E), (3, 4, 6, _E)), {}, "key"),
    "heads-without-gqa": (((2, 4, 5, _E), (2, 3, 6, _E), (2, 3, 6, _E)), {}, "key"),
    "heads-gqa": (((2, 3, 5, _E), (2, 2, 6, _E), (2, 2, 6, _E)), dict(enable_gqa=True), "key"),
    "mask-shape": (((2, 4, 5, _E), (2, 4, 6, _E), (2, 4, 6, _E)), dict(attn_mask=torch.zeros(4, 6)), "attn_mask"),
    "mask-int": (((2, 4, 5, _E), (2, 4, 6, _E), (2, 4, 6, _E)),
                 dict(attn_mask=torch.zeros(5, 6, dtype=torch.int32)), "attn_mask"),
    "int-inputs": (((2, 4, 5, _E), (2, 4, 6, _E), (2, 4, 6, _E)), dict(dtype=torch.int64), "query"),
    "dropout-above-1": (((2, 4, 5, _E), (2, 4, 6, _E), (2, 4, 6, _E)), dict(dropout_p=2.0), "dropout_p"),
}


@pytest.mark.parametrize("case", list(_TORCH_RUNTIME_ERRORS))
def test_sdpa_raises_runtime_error_where_torch_does(case):
    """Code written for torch catches RuntimeError; fusednn's errors are RuntimeErrors too
    (ValueError / TypeError as well), with the message naming the argument."""
    shapes, options, argument = _TORCH_RUNTIME_ERRORS[case]
    options = dict(options)
    dtype = options.pop("dtype", torch.float32)
    dtypes = (dtype, options.pop("key_dtype", dtype), options.pop("value_dtype", dtype))
    query, key, value = (torch.randn(shape).to(d) for shape, d in zip(shapes, dtypes))
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(query, key, value, **options)
    with pytest.raises(RuntimeError, match=rf"^fusednn\.ops\.scaled_dot_product_attention: {argument} must be "):
        fusednn.ops.scaled_dot_product_attention(query, key, value, **options)


@pytest.mark.parametrize("op", ["attention", "attention_varlen", "scaled_dot_product_attention"])
def test_every_bad_input_is_a_runtime_error(op):
    """Every declared mistake raises an exception that is also a RuntimeError, as torch's would be."""
    info = registry.get(op)
    for bad in info.bad_inputs():
        with pytest.raises(bad.error) as raised:
            info.function(*bad.args, **bad.kwargs)
        assert isinstance(raised.value, RuntimeError), (bad.name, type(raised.value))
