"""fusednn.ops.attention / attention_varlen / scaled_dot_product_attention against float64
references: outputs, log-sum-exp and the gradient of every input.

On a CPU-only machine the Triton kernels run through the interpreter (float32, float16) on
tiny shapes; on a GPU machine device_dtypes adds the CUDA float32/float16/bfloat16 cases,
and the GPU-only tests at the end (realistic sizes, torch.compile, deterministic backward)
run.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fusednn
from fusednn import reference
from fusednn.kernels import exact_attention as kernels
from fusednn.ops.exact_attention import _draw_seed
from fusednn.testing import ULP, assert_close, device_dtypes, max_abs_error, opcheck, scale

# Triton 3.6's interpreter turns runtime loop bounds into Python ints through a NumPy
# conversion that NumPy >= 1.25 deprecates (and 2.4 removes: see DESIGN.md).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

DEVICE_DTYPES = [pytest.param(device, dtype, id=f"{device}-{str(dtype)[6:]}")
                 for device, dtype in device_dtypes("triton")]
TRITON_DEVICES = sorted({device for device, _ in device_dtypes("triton")})
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# float32: DESIGN.md's 1e-5. The kernels sum D-term dot products, Tk-term softmax sums and
# (backward) Tq-term dk/dv sums in an order unlike PyTorch's, so the error grows with those
# lengths; at the lengths here (T <= 130, D <= 256) the worst relative error measured under
# the interpreter is 8e-7, well inside the short-reduction bound. Long sequences would need 1e-4.
FP32_RTOL = 1e-5


# --------------------------------------------------------------------------- comparison helpers


def _assert_matches(actual, expected, baseline, lowp, name):
    """``expected``: float64 on the CPU. ``lowp``: the inputs' dtype when it is float16/bfloat16
    (``baseline`` is then PyTorch's computation in it, for the 2x rule), else None."""
    if lowp is None and scale(expected) < 1e-6:
        # zero in exact arithmetic (dq when each query sees one key: the softmax of one score
        # is constant); the kernel's value is the rounding of cancelling O(1) terms
        err = max_abs_error(actual, expected)
        assert err <= FP32_RTOL, f"{name}: max abs error {err:.3e} where the reference is ~0"
    elif lowp is None:
        assert_close(actual, expected, name=name, rtol=FP32_RTOL)
    elif actual.dtype == lowp:
        assert_close(actual, expected, name=name, lowp_baseline=baseline)
    else:  # a float32 result (lse, float32 bias grad) of a low-precision computation: the same 2x rule
        err, base = max_abs_error(actual, expected), max_abs_error(baseline, expected)
        bound = 2.0 * base + ULP[lowp] * max(scale(expected), 1.0)
        assert err <= bound, f"{name}: max error {err:.3e} exceeds 2 x PyTorch's {base:.3e} + ulp floor ({bound:.3e})"


def _assert_lse_matches(actual, expected, baseline, lowp, name="lse"):
    """Rows with no visible key must be -inf in both; the finite rows compare as usual."""
    assert actual.dtype == torch.float32, f"{name} dtype {actual.dtype}"
    hidden = torch.isneginf(expected)
    assert torch.equal(torch.isneginf(actual).cpu(), hidden), f"{name}: -inf rows differ from the reference"
    if baseline is not None:
        baseline = baseline.masked_fill(torch.isneginf(baseline), 0.0)  # its -inf rows are the same rows
    _assert_matches(actual.masked_fill(hidden.to(actual.device), 0.0), expected.masked_fill(hidden, 0.0), baseline,
                    lowp, name)


def _copies(inputs, dtype, device):
    """Detached copies (new leaves, same requires_grad) of the float tensors in ``dtype`` on
    ``device``; bool / int tensors (masks, cu_seqlens) only move."""
    def copy(t):
        if not isinstance(t, torch.Tensor):
            return t
        c = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        return c.requires_grad_(t.requires_grad)

    return [copy(t) for t in inputs]


def _run(fn, inputs, grad_out):
    """fn(*inputs) -> (out, lse or None); returns out, lse and the gradients of the inputs
    that require grad (grad_out drawn after the call when None, see _check)."""
    out, lse = fn(*inputs)
    if grad_out is None:
        grad_out = torch.randn_like(out)
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, wrt, grad_out) if wrt else ()
    return out, lse, grads, grad_out


def _check(ours, reference_fn, inputs, names, grad_out=None):
    """Runs ``ours(*inputs)`` and ``reference_fn(*inputs, upcast=...)`` on float64 CPU copies
    (the truth) and, for float16/bfloat16 inputs, on copies in their dtype with
    upcast=False (PyTorch's computation at that precision: the 2x-rule baseline); compares
    the output, the lse (when both give one) and the gradient of every input that
    requires grad. ``ours`` runs first, so a dropout seed it draws follows the caller's
    torch.manual_seed."""
    dtype = next(t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point())
    lowp = dtype if dtype in ULP else None
    out, lse, grads, grad_out = _run(ours, inputs, grad_out)
    expected = _run(lambda *a: reference_fn(*a, upcast=True), _copies(inputs, torch.float64, "cpu"),
                    grad_out.detach().double().cpu())
    baseline = (None,) * 3
    if lowp is not None:
        baseline = _run(lambda *a: reference_fn(*a, upcast=False), _copies(inputs, dtype, out.device), grad_out)
    assert out.dtype == dtype and out.device == inputs[0].device
    _assert_matches(out, expected[0], baseline[0], lowp, "out")
    if lse is not None and expected[1] is not None and (lowp is None or baseline[1] is not None):
        _assert_lse_matches(lse, expected[1], baseline[1], lowp)
    grad_names = [n for n, t in zip(names, inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    for i, (name, grad) in enumerate(zip(grad_names, grads)):
        source = next(t for n, t in zip(names, inputs) if n == name)
        assert grad.dtype == source.dtype and grad.shape == source.shape, name
        _assert_matches(grad, expected[2][i], baseline[2][i] if lowp else None, lowp, f"grad {name}")
    return out, lse, grads


def _reference_window(window):
    """The reference spells an unbounded side None only (the op also takes -1)."""
    if window is None:
        return None
    return tuple(None if side == -1 else side for side in window)


def _check_attention(q, k, v, attn_bias=None, *, dropout_mask=None, grad_out=None, **options):
    """fusednn.ops.attention (the kernel for float32/16 inputs) against fusednn.reference.attention."""
    def ours(q, k, v, bias):
        out, lse = fusednn.ops.attention(q, k, v, attn_bias=bias, return_lse=True, **options)
        if out.requires_grad:  # the kernel ran, not the reference fallback
            assert "fusednn_attention_forward" in type(out.grad_fn).__name__, type(out.grad_fn).__name__
        assert lse.shape == q.shape[:3]
        return out, lse

    ref_options = {name: value for name, value in options.items() if name != "deterministic"}
    ref_options["window"] = _reference_window(options.get("window"))

    def ref(q, k, v, bias, upcast):
        mask = dropout_mask.to(q.device) if dropout_mask is not None else None
        return reference.attention(q, k, v, attn_bias=bias, dropout_mask=mask, return_lse=True, upcast=upcast,
                                   **ref_options)

    return _check(ours, ref, (q, k, v, attn_bias), ("q", "k", "v", "attn_bias"), grad_out=grad_out)


def _qkv(B, Hq, Hkv, Tq, Tk, D, Dv, dtype, device, requires_grad=True):
    q = torch.randn(B, Hq, Tq, D, dtype=dtype, device=device)
    k = torch.randn(B, Hkv, Tk, D, dtype=dtype, device=device)
    v = torch.randn(B, Hkv, Tk, Dv, dtype=dtype, device=device)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


# --------------------------------------------------------------------------- dense attention

# name: ((B, Hq, Hkv, Tq, Tk, D, Dv), options)
CASES = {
    "full": ((2, 2, 2, 33, 33, 32, 32), {}),
    "causal": ((2, 2, 2, 33, 33, 32, 32), dict(causal=True)),
    "batch1-one-head": ((1, 1, 1, 20, 20, 16, 16), {}),
    "tq<tk": ((1, 2, 2, 17, 40, 16, 16), {}),
    "tq>tk": ((1, 2, 2, 40, 17, 16, 16), {}),
    "causal-tq<tk": ((1, 2, 2, 17, 40, 16, 16), dict(causal=True)),
    "causal-tq>tk": ((1, 2, 2, 40, 17, 16, 16), dict(causal=True)),
    "causal-bottom-right-tq<tk": ((1, 2, 2, 17, 40, 16, 16), dict(causal=True, alignment="bottom_right")),
    # the first Tq - Tk queries see no key: output 0, lse -inf, zero gradients
    "causal-bottom-right-tq>tk": ((1, 2, 2, 40, 17, 16, 16), dict(causal=True, alignment="bottom_right")),
    "window-8-0-causal": ((1, 2, 2, 40, 40, 16, 16), dict(causal=True, window=(8, 0))),
    "window-5-3": ((1, 2, 2, 40, 40, 16, 16), dict(window=(5, 3))),
    "window-None-4": ((1, 2, 2, 40, 40, 16, 16), dict(window=(None, 4))),
    "window-3-None": ((1, 2, 2, 40, 40, 16, 16), dict(window=(3, None))),
    "window-minus1-4": ((1, 2, 2, 40, 40, 16, 16), dict(window=(-1, 4))),
    "window-0-0": ((1, 2, 2, 40, 40, 16, 16), dict(window=(0, 0))),
    "window-bottom-right-tq<tk": ((1, 2, 2, 17, 40, 16, 16), dict(window=(4, 2), alignment="bottom_right")),
    "window-bottom-right-tq>tk": ((1, 2, 2, 40, 17, 16, 16), dict(window=(6, 0), alignment="bottom_right")),
    # queries past Tk + 2 see no key
    "window-past-the-keys": ((1, 2, 2, 40, 17, 16, 16), dict(window=(2, 2))),
    "gqa-causal": ((2, 4, 2, 33, 33, 16, 16), dict(causal=True)),
    "mqa": ((1, 4, 1, 19, 26, 16, 16), {}),
    "mqa-window-bottom-right": ((1, 4, 1, 19, 26, 16, 16), dict(window=(5, 1), alignment="bottom_right")),
    # scale 0.5 on D=16: scores with standard deviation 2, where tanh(s / 2) is far from linear
    "softcap": ((1, 2, 2, 33, 33, 16, 16), dict(softcap=2.0, scale=0.5)),
    "softcap-gqa-causal": ((1, 4, 2, 33, 33, 16, 16), dict(softcap=3.0, scale=0.7, causal=True)),
    "scale": ((1, 2, 2, 20, 20, 16, 16), dict(scale=0.3)),
}


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_attention_matches_reference(device, dtype, case):
    shape, options = CASES[case]
    _check_attention(*_qkv(*shape, dtype, device), **options)


# (B, Hq, Tq, Tk) -> bias shape
BIAS_SHAPES = {
    "tq-tk": lambda B, H, Tq, Tk: (Tq, Tk),
    "b-1-1-tk": lambda B, H, Tq, Tk: (B, 1, 1, Tk),
    "1-h-tq-tk": lambda B, H, Tq, Tk: (1, H, Tq, Tk),
    "b-h-tq-tk": lambda B, H, Tq, Tk: (B, H, Tq, Tk),
    "1-h-1-tk": lambda B, H, Tq, Tk: (1, H, 1, Tk),
}


def _bias(kind, shape, dtype, device):
    if kind == "bool":  # True = may attend; about a quarter hidden
        return torch.rand(shape, device=device) < 0.75
    bias = torch.randn(shape, dtype=dtype, device=device)
    return bias.requires_grad_(kind == "float-grad")


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", list(BIAS_SHAPES))
@pytest.mark.parametrize("kind", ["bool", "float", "float-grad"])
def test_attention_bias(device, dtype, shape, kind):
    B, Hq, Hkv, Tq, Tk = 2, 4, 2, 19, 24
    bias = _bias(kind, BIAS_SHAPES[shape](B, Hq, Tq, Tk), dtype, device)
    _check_attention(*_qkv(B, Hq, Hkv, Tq, Tk, 16, 16, dtype, device), bias)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "kind, options",
    [
        ("bool", dict(causal=True, alignment="bottom_right")),
        ("float-grad", dict(causal=True, alignment="bottom_right")),
        ("float-grad", dict(window=(4, 3))),
        ("float-grad", dict(softcap=2.0, scale=0.5)),
        ("bool", dict(softcap=2.0, window=(None, 2))),
    ],
    ids=["bool-causal-bottom-right", "float-grad-causal-bottom-right", "float-grad-window", "float-grad-softcap",
         "bool-softcap-window"],
)
def test_attention_bias_with_other_options(device, dtype, kind, options):
    B, Hq, Hkv, Tq, Tk = 1, 2, 1, 21, 30
    bias = _bias(kind, (B, Hq, Tq, Tk), dtype, device)
    _check_attention(*_qkv(B, Hq, Hkv, Tq, Tk, 16, 16, dtype, device), bias, **options)


def _hiding_some_rows(B, H, Tq, Tk, device):
    """Bool [B, H, Tq, Tk], True = may attend: row 3 hidden in every head, row 20 in head 1 only."""
    mask = torch.rand(B, H, Tq, Tk, device=device) < 0.7
    mask[:, :, 3] = False
    mask[:, 1, 20] = False
    return mask


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_bool_mask_hiding_whole_rows(device, dtype):
    B, H, Tq, Tk = 2, 2, 33, 20
    mask = _hiding_some_rows(B, H, Tq, Tk, device)
    out, lse, (dq, dk, dv) = _check_attention(*_qkv(B, H, H, Tq, Tk, 16, 16, dtype, device), mask)
    assert torch.all(out[:, :, 3] == 0) and torch.all(out[:, 1, 20] == 0)
    assert torch.all(dq[:, :, 3] == 0) and torch.all(dq[:, 1, 20] == 0)
    assert torch.all(torch.isneginf(lse[:, :, 3])) and torch.all(torch.isneginf(lse[:, 1, 20]))
    assert not any(t.isnan().any() for t in (out, dq, dk, dv))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_float_bias_of_minus_inf_hiding_whole_rows(device, dtype):
    """A float bias may carry -inf (torch's float masks do). A row of -inf sees no key:
    output 0, lse -inf, no gradient into q, k, v or the bias, and no NaN."""
    B, H, Tq, Tk = 1, 2, 33, 20
    q, k, v = _qkv(B, H, H, Tq, Tk, 16, 16, dtype, device)
    bias = torch.randn(B, H, Tq, Tk, dtype=dtype, device=device)
    bias = bias.masked_fill(~_hiding_some_rows(B, H, Tq, Tk, device), float("-inf")).requires_grad_()

    def ours(q, k, v, bias):
        return fusednn.ops.attention(q, k, v, attn_bias=bias, return_lse=True)

    def ref(q, k, v, bias, upcast):
        # fusednn.reference.attention gives those rows NaN gradients (logsumexp's backward of
        # an all -inf row), so they run on a finite bias and are zeroed after, which keeps
        # every gradient they would send at exactly 0.
        hidden_rows = torch.isneginf(bias).all(-1, keepdim=True)
        out, lse = reference.attention(q, k, v, attn_bias=torch.where(hidden_rows, 0.0, bias), return_lse=True,
                                       upcast=upcast)
        return out.masked_fill(hidden_rows, 0.0), lse.masked_fill(hidden_rows[..., 0], float("-inf"))

    out, lse, (dq, dk, dv, dbias) = _check(ours, ref, (q, k, v, bias), ("q", "k", "v", "attn_bias"))
    assert torch.all(out[:, :, 3] == 0) and torch.all(dq[:, :, 3] == 0) and torch.all(dbias[:, :, 3] == 0)
    assert not any(t.isnan().any() for t in (out, dq, dk, dv, dbias))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("T", [1, 17, 97, pytest.param(130, marks=pytest.mark.slow)])
@pytest.mark.parametrize("causal", [False, True])
def test_odd_lengths(device, dtype, T, causal):
    _check_attention(*_qkv(1, 1, 1, T, T, 16, 16, dtype, device), causal=causal)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("Tq, Tk", [(1, 97), (97, 1), (1, 1)])
def test_single_query_or_key(device, dtype, Tq, Tk):
    """Decoding (one query over a cache) and a single key, causal bottom-right."""
    _check_attention(*_qkv(1, 2, 1, Tq, Tk, 16, 16, dtype, device), causal=True, alignment="bottom_right")


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "D, Dv",
    [(16, 16), (40, 40), (64, 64), (80, 80), pytest.param(128, 128, marks=pytest.mark.slow), (40, 24), (16, 80),
     (8, 1), pytest.param(256, 256, marks=pytest.mark.slow)],
)
def test_head_dims(device, dtype, D, Dv):
    _check_attention(*_qkv(1, 2, 2, 20, 23, D, Dv, dtype, device), causal=True)


def _non_contiguous(kind, B, H, T, D, dtype, device):
    """q, k, v [B, H, T, D] views that are not contiguous."""
    if kind == "bthd-transposed":  # the layout of a [B, T, H * D] projection
        q, k, v = (torch.randn(B, T, H, D, dtype=dtype, device=device).transpose(1, 2) for _ in range(3))
    elif kind == "packed-kv-slices":  # k and v halves of one [B, H, T, 2D] tensor; q a time slice
        kv = torch.randn(B, H, T, 2 * D, dtype=dtype, device=device)
        k, v = kv[..., :D], kv[..., D:]
        q = torch.randn(B, H, T + 5, D, dtype=dtype, device=device)[:, :, 3:3 + T]
    elif kind == "strided-head-dim":  # every other element of the head dim (copied by the op)
        q, k, v = (torch.randn(B, H, T, 2 * D, dtype=dtype, device=device)[..., ::2] for _ in range(3))
    elif kind == "expanded-kv-heads":  # one k/v head expanded over H (head stride 0)
        q = torch.randn(B, H, T, D, dtype=dtype, device=device)
        k, v = (torch.randn(B, 1, T, D, dtype=dtype, device=device).expand(B, H, T, D) for _ in range(2))
    else:
        raise AssertionError(kind)
    return [t.detach().requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kind", ["bthd-transposed", "packed-kv-slices", "strided-head-dim", "expanded-kv-heads"])
def test_non_contiguous_inputs(device, dtype, kind):
    B, H, T, D = 2, 2, 21, 16
    q, k, v = _non_contiguous(kind, B, H, T, D, dtype, device)
    assert not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous())
    # a transposed float bias with grad, and a gradient of the output laid out [B, T, H, D]
    bias = torch.randn(T, T, dtype=dtype, device=device).t().requires_grad_()
    grad_out = torch.randn(B, T, H, D, dtype=dtype, device=device).transpose(1, 2)
    _check_attention(q, k, v, bias, grad_out=grad_out, causal=True)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES[:1])
def test_broadcast_output_gradient(device, dtype):
    """grad_out may arrive with stride 0 (from a sum or an expand)."""
    q, k, v = _qkv(1, 2, 2, 17, 17, 16, 16, dtype, device)
    grad_out = torch.randn(1, 1, 1, 16, dtype=dtype, device=device).expand(1, 2, 17, 16)
    _check_attention(q, k, v, grad_out=grad_out, window=(3, 3))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "case, with_bias", [("gqa-causal", False), ("window-bottom-right-tq>tk", False), ("softcap", True)],
    ids=["gqa-causal", "window-bottom-right-tq>tk", "softcap-bias-grad"],
)
@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_flag(device, dtype, case, with_bias, deterministic):
    """Both backward paths (dq by atomics, dq in its own pass) against the reference."""
    shape, options = CASES[case]
    B, Hq, _, Tq, Tk = shape[:5]
    bias = _bias("float-grad", (B, Hq, Tq, Tk), dtype, device) if with_bias else None
    _check_attention(*_qkv(*shape, dtype, device), bias, deterministic=deterministic, **options)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_deterministic_backward_is_reproducible(device):
    q, k, v = _qkv(2, 4, 2, 33, 33, 16, 16, torch.float32, device)
    grad_out = torch.randn(2, 4, 33, 16, device=device)

    def grads():
        return torch.autograd.grad(fusednn.ops.attention(q, k, v, causal=True, deterministic=True), (q, k, v),
                                   grad_out)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "B, Tq, Tk", [(0, 9, 9), (2, 0, 9), (2, 9, 0), (2, 0, 0)], ids=["batch-0", "tq-0", "tk-0", "both-0"]
)
def test_zero_size(device, dtype, B, Tq, Tk):
    q, k, v = _qkv(B, 2, 1, Tq, Tk, 16, 8, dtype, device)
    bias = torch.randn(B, 2, Tq, Tk, dtype=dtype, device=device, requires_grad=True)
    out, lse, grads = _check_attention(q, k, v, bias, causal=True)
    assert out.shape == (B, 2, Tq, 8) and lse.shape == (B, 2, Tq)
    if Tk == 0:  # no key anywhere: zero output, lse -inf, zero dq
        assert torch.all(out == 0) and torch.all(torch.isneginf(lse)) and torch.all(grads[0] == 0)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("which", ["q", "v", "attn_bias", "k+attn_bias"])
def test_only_some_inputs_need_grad(device, dtype, which):
    q, k, v = _qkv(1, 2, 1, 17, 20, 16, 16, dtype, device, requires_grad=False)
    bias = torch.randn(1, 2, 17, 20, dtype=dtype, device=device)
    for name, t in zip(("q", "k", "v", "attn_bias"), (q, k, v, bias)):
        t.requires_grad_(name in which.split("+"))
    _check_attention(q, k, v, bias, causal=True, alignment="bottom_right")


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_return_lse_false_gives_the_same_output(device):
    q, k, v = _qkv(1, 2, 2, 17, 17, 16, 16, torch.float32, device, requires_grad=False)
    out = fusednn.ops.attention(q, k, v, causal=True)
    out_with_lse, _ = fusednn.ops.attention(q, k, v, causal=True, return_lse=True)
    assert isinstance(out, torch.Tensor) and torch.equal(out, out_with_lse)


# --------------------------------------------------------------------------- dropout


def _kernel_keep_mask(seed_value, dropout_p, B, H, Tq, Tk, device):
    """The keep-mask the kernel uses after torch.manual_seed(seed_value)."""
    torch.manual_seed(seed_value)
    seed = _draw_seed(dropout_p, torch.device(device))
    return kernels.dropout_keep_mask(seed, B, H, Tq, Tk, dropout_p)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
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
    q, k, v = _qkv(*shape, dtype, device)
    bias = _bias("float-grad", (1, Hq, Tq, Tk), dtype, device)
    mask = _kernel_keep_mask(1234, options["dropout_p"], B, Hq, Tq, Tk, device)
    assert mask.shape == (B, Hq, Tq, Tk) and mask.dtype == torch.bool
    torch.manual_seed(1234)
    _check_attention(q, k, v, bias, dropout_mask=mask, **options)


@pytest.mark.parametrize("device", TRITON_DEVICES)
# 0.5 alone would miss an inverted comparison (keep when rand < p); 0.8 repeats 0.1 mirrored
@pytest.mark.parametrize("dropout_p", [0.1, 0.5, pytest.param(0.8, marks=pytest.mark.slow)])
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


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_dropout_seed_follows_torch_generator(device):
    q, k, v = _qkv(1, 2, 2, 17, 17, 16, 16, torch.float32, device)
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


@pytest.mark.parametrize(
    "device, dtype", DEVICE_DTYPES[:1] + [pytest.param("cpu", torch.float64, id="cpu-float64-reference")]
)
def test_dropout_p_one_drops_everything(device, dtype):
    """As torch's dropout: p = 1 zeroes the output and every gradient (float64 inputs run the
    reference, which must keep the same promise)."""
    q, k, v = _qkv(1, 2, 2, 17, 17, 16, 16, dtype, device)
    out = fusednn.ops.attention(q, k, v, dropout_p=1.0)
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert torch.all(out == 0)
    assert all(torch.all(g == 0) for g in grads)


# --------------------------------------------------------------------------- varlen


def _packed(lengths, H, D, dtype, device):
    return torch.randn(sum(lengths), H, D, dtype=dtype, device=device, requires_grad=True)


def _cu_seqlens(lengths, device, dtype=torch.int32):
    return torch.tensor([0] + lengths, device=device).cumsum(0).to(dtype)


# name: (q lengths, k lengths, Hq, Hkv, options)
VARLEN_CASES = {
    "equal-lengths": ([17, 0, 1, 40], [17, 0, 1, 40], 2, 2, {}),
    "equal-lengths-causal": ([17, 0, 1, 40], [17, 0, 1, 40], 2, 2, dict(causal=True)),
    # a sequence with queries but no key (output 0) and one with keys but no query (dk = dv = 0)
    "tq!=tk": ([17, 0, 3, 1, 40], [30, 4, 0, 1, 23], 2, 2, {}),
    "tq!=tk-causal": ([17, 0, 3, 1, 40], [30, 4, 0, 1, 23], 2, 2, dict(causal=True)),
    "tq!=tk-causal-bottom-right": ([17, 0, 3, 1, 40], [30, 4, 0, 1, 23], 2, 2,
                                   dict(causal=True, alignment="bottom_right")),
    "window-bottom-right": ([17, 5, 40], [30, 5, 23], 2, 2, dict(window=(4, 2), alignment="bottom_right")),
    "gqa-causal": ([17, 1, 40], [20, 1, 33], 4, 2, dict(causal=True)),
    "mqa-softcap-deterministic": ([17, 40], [17, 33], 4, 1, dict(softcap=2.0, scale=0.5, deterministic=True)),
}


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", list(VARLEN_CASES))
def test_varlen_matches_separate_sequences(device, dtype, case):
    """Packed sequences against fusednn.reference.attention_varlen: the reference run on
    each sequence separately."""
    lengths_q, lengths_k, Hq, Hkv, options = VARLEN_CASES[case]
    q, k = _packed(lengths_q, Hq, 16, dtype, device), _packed(lengths_k, Hkv, 16, dtype, device)
    v = _packed(lengths_k, Hkv, 24, dtype, device)
    # int64 offsets in one case (the op takes both); max_seqlen above the longest in another
    cu_dtype = torch.int64 if case == "gqa-causal" else torch.int32
    cu_q, cu_k = _cu_seqlens(lengths_q, device, cu_dtype), _cu_seqlens(lengths_k, device, cu_dtype)
    max_q, max_k = max(lengths_q) + (7 if case == "tq!=tk" else 0), max(lengths_k)

    def ours(q, k, v):
        out, lse = fusednn.ops.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, return_lse=True, **options)
        assert out.shape == (q.shape[0], Hq, 24) and lse.shape == (Hq, q.shape[0])
        return out, lse

    ref_options = {name: value for name, value in options.items() if name != "deterministic"}

    def ref(q, k, v, upcast):
        return reference.attention_varlen(q, k, v, cu_q.cpu() if upcast else cu_q, cu_k.cpu() if upcast else cu_k,
                                          max_q, max_k, return_lse=True, upcast=upcast, **ref_options)

    _check(ours, ref, (q, k, v), ("q", "k", "v"))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES[:1])
def test_varlen_single_sequence_equals_dense(device, dtype):
    """One packed sequence is the dense op on [1, H, T, D] (same kernel, same result)."""
    q, k, v = (torch.randn(1, 2, 23, 16, dtype=dtype, device=device) for _ in range(3))
    dense = fusednn.ops.attention(q, k, v, causal=True)
    packed = [t[0].transpose(0, 1) for t in (q, k, v)]
    cu = _cu_seqlens([23], device)
    varlen = fusednn.ops.attention_varlen(*packed, cu, cu, 23, 23, causal=True)
    assert torch.allclose(varlen, dense[0].transpose(0, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_varlen_zero_sequences_and_zero_tokens(device):
    q = torch.randn(0, 2, 16, device=device, requires_grad=True)
    k = torch.randn(0, 2, 16, device=device, requires_grad=True)
    v = torch.randn(0, 2, 16, device=device, requires_grad=True)
    for cu in (torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(3, dtype=torch.int32, device=device)):
        out, lse = fusednn.ops.attention_varlen(q, k, v, cu, cu, 0, 0, return_lse=True)
        assert out.shape == (0, 2, 16) and lse.shape == (2, 0)
        assert all(g.shape == (0, 2, 16) for g in torch.autograd.grad(out, (q, k, v), torch.randn_like(out)))


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_varlen_dropout_follows_torch_generator(device):
    lengths_q, lengths_k = [17, 0, 9], [12, 3, 20]
    q, k, v = _packed(lengths_q, 2, 16, torch.float32, device), *(_packed(lengths_k, 1, 16, torch.float32, device)
                                                                  for _ in range(2))
    cu_q, cu_k = _cu_seqlens(lengths_q, device), _cu_seqlens(lengths_k, device)
    grad_out = torch.randn(q.shape, device=device)

    def run(seed, dropout_p=0.4):
        torch.manual_seed(seed)
        out = fusednn.ops.attention_varlen(q, k, v, cu_q, cu_k, 17, 20, causal=True, dropout_p=dropout_p)
        return (out, *torch.autograd.grad(out, (q, k, v), grad_out))

    first, again, plain = run(1), run(1), run(1, dropout_p=0.0)
    for a, b in zip(first, again):
        assert torch.equal(a, b) and not a.isnan().any()
    assert not torch.allclose(first[0], plain[0])


# --------------------------------------------------------------------------- scaled_dot_product_attention


def _sdpa_reference(query, key, value, attn_mask, upcast, **kwargs):
    """torch's SDPA: in float64 the reference; in the inputs' low precision through its math
    backend, PyTorch's computation at that precision (the 2x-rule baseline)."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, **kwargs), None


def _rank_shapes(L, S, E, Ev):
    """name -> (query shape, key shape, value shape)"""
    return {
        "2d": ((L, E), (S, E), (S, Ev)),
        "3d": ((3, L, E), (3, S, E), (3, S, Ev)),
        "4d": ((2, 3, L, E), (2, 3, S, E), (2, 3, S, Ev)),
        "5d": ((2, 2, 2, L, E), (2, 2, 2, S, E), (2, 2, 2, S, Ev)),
        "broadcast-batch": ((2, 3, L, E), (1, 3, S, E), (3, S, Ev)),
        "broadcast-heads": ((2, 3, L, E), (2, 1, S, E), (2, 1, S, Ev)),
        "query-3d-key-4d": ((3, L, E), (2, 3, S, E), (2, 3, S, Ev)),
    }


SDPA_SHAPES = _rank_shapes(13, 19, 16, 8)

# name: (shape name, kwargs, mask shape and kind)
SDPA_CASES = {
    **{shape: (shape, {}, None) for shape in SDPA_SHAPES},
    "causal-L<S": ("4d", dict(is_causal=True), None),
    "causal-L>S": ("swapped", dict(is_causal=True), None),
    "scale": ("3d", dict(scale=0.3), None),
    "gqa": ("gqa", dict(enable_gqa=True), None),
    "gqa-causal-5d": ("gqa-5d", dict(enable_gqa=True, is_causal=True), None),
    "bool-mask-L-S": ("4d", {}, ((13, 19), "bool")),
    "bool-mask-broadcast-3d": ("3d", {}, ((3, 1, 19), "bool")),
    "float-mask-B-1-L-S": ("4d", {}, ((2, 1, 13, 19), "float")),
    "float-mask-with-grad": ("5d", {}, ((2, 1, 13, 19), "float-grad")),
    "float-mask-minus-inf": ("broadcast-heads", {}, ((13, 19), "float-inf")),
}


def _sdpa_shapes(name):
    if name == "swapped":  # L > S
        return ((2, 3, 19, 16), (2, 3, 13, 16), (2, 3, 13, 8))
    if name == "gqa":
        return ((2, 4, 13, 16), (2, 2, 19, 16), (2, 2, 19, 8))
    if name == "gqa-5d":
        return ((2, 2, 4, 13, 16), (2, 2, 1, 19, 16), (2, 2, 1, 19, 8))
    return SDPA_SHAPES[name]


def _sdpa_mask(spec, dtype, device):
    if spec is None:
        return None
    shape, kind = spec
    if kind == "bool":  # the diagonal kept so that every row sees a key (torch gives such rows NaN)
        return (torch.rand(shape, device=device) < 0.7) | torch.eye(shape[-2], shape[-1], dtype=torch.bool,
                                                                    device=device)
    mask = torch.randn(shape, dtype=dtype, device=device)
    if kind == "float-inf":
        mask = mask.masked_fill((torch.rand(shape, device=device) < 0.3).fill_diagonal_(False), float("-inf"))
    return mask.requires_grad_(kind == "float-grad")


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_matches_torch(device, dtype, case):
    shape_name, kwargs, mask_spec = SDPA_CASES[case]
    query, key, value = (torch.randn(s, dtype=dtype, device=device, requires_grad=True)
                         for s in _sdpa_shapes(shape_name))
    mask = _sdpa_mask(mask_spec, dtype, device)

    def ours(query, key, value, attn_mask):
        return fusednn.ops.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, **kwargs), None

    def ref(query, key, value, attn_mask, upcast):
        return _sdpa_reference(query, key, value, attn_mask, upcast, **kwargs)

    out, _, _ = _check(ours, ref, (query, key, value, mask), ("query", "key", "value", "attn_mask"))
    assert out.dim() == max(query.dim(), key.dim(), value.dim())


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_sdpa_dropout_is_applied(device):
    query, key, value = (torch.randn(2, 2, 17, 16, device=device) for _ in range(3))
    plain = fusednn.ops.scaled_dot_product_attention(query, key, value)
    dropped = fusednn.ops.scaled_dot_product_attention(query, key, value, dropout_p=0.5)
    assert dropped.shape == plain.shape and not torch.allclose(dropped, plain)


# --------------------------------------------------------------------------- float64 (reference path)


def test_float64_runs_the_reference_and_gradchecks():
    q, k, v = _qkv(1, 2, 1, 5, 6, 4, 3, torch.float64, "cpu")
    bias = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, bias):
        return fusednn.ops.attention(q, k, v, attn_bias=bias, causal=True, alignment="bottom_right", softcap=2.0)

    assert torch.autograd.gradcheck(fn, (q, k, v, bias))
    expected = reference.attention(q, k, v, attn_bias=bias, causal=True, alignment="bottom_right", softcap=2.0)
    assert_close(fn(q, k, v, bias), expected)


def test_float64_row_of_minus_inf_bias_has_zero_gradients():
    """float64 inputs run fusednn.reference.attention: a float bias row of -inf must give
    output 0 and zero (not NaN) gradients there too."""
    q, k, v = _qkv(1, 1, 1, 4, 5, 8, 8, torch.float64, "cpu")
    bias = torch.randn(4, 5, dtype=torch.float64)
    bias[1] = float("-inf")
    bias.requires_grad_()
    out = fusednn.ops.attention(q, k, v, attn_bias=bias)
    grads = torch.autograd.grad(out, (q, k, v, bias), torch.randn_like(out))
    assert torch.all(out[:, :, 1] == 0)
    for name, grad in zip(("q", "k", "v", "attn_bias"), grads):
        assert not grad.isnan().any(), f"grad {name} has NaN"
    assert torch.all(grads[0][:, :, 1] == 0) and torch.all(grads[3][1] == 0)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_forced_triton_with_float64_raises(device):
    q = torch.randn(1, 1, 3, 4, dtype=torch.float64, device=device)
    with fusednn.use_backend("triton"), pytest.raises(NotImplementedError, match="attention.*float64"):
        fusednn.ops.attention(q, q, q)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_reference_backend_agrees(device, dtype):
    q, k, v = _qkv(1, 2, 1, 17, 20, 16, 16, dtype, device)
    grad_out = torch.randn(1, 2, 17, 16, dtype=dtype, device=device)

    def run():
        out = fusednn.ops.attention(q, k, v, causal=True, alignment="bottom_right")
        return out, *torch.autograd.grad(out, (q, k, v), grad_out)

    with fusednn.use_backend("triton"):
        kernel_results = run()
    with fusednn.use_backend("reference"):
        reference_results = run()
    # both compute in float32; float16 results may round a few elements differently
    tol = 1e-5 if dtype == torch.float32 else 4 * ULP[dtype]
    for name, a, b in zip(("out", "dq", "dk", "dv"), kernel_results, reference_results):
        assert max_abs_error(a, b) <= tol * max(scale(b), 1.0), name


# --------------------------------------------------------------------------- registration


def _opcheck_cases(device):
    def t(*shape, dtype=torch.float32, grad=True):
        return torch.randn(shape, dtype=dtype, device=device, requires_grad=grad)

    q, k, v = t(1, 2, 5, 8), t(1, 1, 6, 8), t(1, 1, 6, 4)
    bias, mask = t(1, 2, 5, 6), torch.rand(1, 2, 5, 6, device=device) < 0.7
    seed = torch.tensor([42], dtype=torch.int64, device=device)
    pq, pk, pv = t(7, 2, 8), t(9, 1, 8), t(9, 1, 4)
    cu_q = torch.tensor([0, 3, 3, 7], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 5, 6, 9], dtype=torch.int32, device=device)
    dense = (q, k, v)
    packed = (pq, pk, pv)
    # (bias, cu_q, cu_k, max_q, max_k, scale, softcap, left, right, bottom_right, dropout_p, seed, deterministic)
    cases = {
        "forward-dense": (*dense, None, None, None, 5, 6, 0.35, 0.0, -1, -1, False, 0.0, None, False),
        "forward-dense-causal-float-bias-softcap": (*dense, bias, None, None, 5, 6, 0.35, 2.0, -1, 0, True, 0.0, None,
                                                    False),
        "forward-dense-bool-mask-window": (*dense, mask, None, None, 5, 6, 0.35, 0.0, 2, 1, False, 0.0, None, False),
        "forward-dense-dropout-deterministic": (*dense, None, None, None, 5, 6, 0.35, 0.0, -1, -1, False, 0.3, seed,
                                                True),
        "forward-packed": (*packed, None, cu_q, cu_k, 4, 5, 0.35, 0.0, -1, 0, True, 0.0, None, False),
    }
    ops = {name: (torch.ops.fusednn.attention_forward, args) for name, args in cases.items()}
    with torch.no_grad():
        out, lse = torch.ops.fusednn.attention_forward(*cases["forward-dense-causal-float-bias-softcap"])
        pout, plse = torch.ops.fusednn.attention_forward(*cases["forward-packed"])
    grad_out, pgrad_out = torch.randn_like(out), torch.randn_like(pout)
    detached = [x.detach() for x in dense]
    ops["backward-dense-bias-grad"] = (torch.ops.fusednn.attention_backward, (
        grad_out, *detached, out, lse, bias.detach(), None, None, 5, 6, 0.35, 2.0, -1, 0, True, 0.0, None, True, False))
    ops["backward-packed-deterministic"] = (torch.ops.fusednn.attention_backward, (
        pgrad_out, *[x.detach() for x in packed], pout, plse, None, cu_q, cu_k, 4, 5, 0.35, 0.0, -1, 0, True, 0.0,
        None, False, True))
    return ops


# not list(_opcheck_cases(...)): that would run the kernels at collection
OPCHECK_NAMES = [
    "forward-dense", "forward-dense-causal-float-bias-softcap", "forward-dense-bool-mask-window",
    "forward-dense-dropout-deterministic", "forward-packed", "backward-dense-bias-grad",
    "backward-packed-deterministic",
]


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("case", OPCHECK_NAMES)
def test_opcheck(device, case):
    cases = _opcheck_cases(device)
    assert sorted(cases) == sorted(OPCHECK_NAMES)
    op, args = cases[case]
    opcheck(op, args, triton=True)


def test_registered_schemas():
    forward = str(torch.ops.fusednn.attention_forward.default._schema)
    backward = str(torch.ops.fusednn.attention_backward.default._schema)
    assert forward.startswith("fusednn::attention_forward(Tensor q, Tensor k, Tensor v, Tensor? bias, ")
    assert forward.endswith("-> (Tensor, Tensor)")
    assert backward.endswith("-> (Tensor, Tensor, Tensor, Tensor)")


# --------------------------------------------------------------------------- validation

_Q = torch.randn(2, 4, 5, 8)
_K = torch.randn(2, 2, 6, 8)
_V = torch.randn(2, 2, 6, 8)
_PQ, _PK = torch.randn(7, 4, 8), torch.randn(9, 2, 8)
_CU_Q, _CU_K = torch.tensor([0, 3, 7], dtype=torch.int32), torch.tensor([0, 4, 9], dtype=torch.int32)
_attn = fusednn.ops.attention
_varlen = fusednn.ops.attention_varlen
_sdpa = fusednn.ops.scaled_dot_product_attention


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        # ranks, heads, lengths, head dims
        (lambda: _attn(_Q[0], _K, _V), ValueError, r"q must be 4-D.*\(4, 5, 8\)"),
        (lambda: _attn(_Q, _K[0], _V), ValueError, r"k must be 4-D.*\(2, 6, 8\)"),
        (lambda: _attn(_Q[:, :3], _K, _V), ValueError, r"query heads \(3\).*key/value heads \(2\)"),
        (lambda: _attn(_Q, _K, _V[:, :1]), ValueError, r"k and v.*same number of heads.*2 and 1"),
        (lambda: _attn(_Q, _K, _V[:, :, :5]), ValueError, r"k and v.*same length.*6 and 5"),
        (lambda: _attn(_Q, _K[:1], _V[:1]), ValueError, r"batch size.*2, 1, 1"),
        (lambda: _attn(_Q, _K[..., :4], _V), ValueError, r"q and k.*head dim.*8 and 4"),
        (lambda: _attn(torch.randn(1, 1, 3, 257), torch.randn(1, 1, 3, 257), torch.randn(1, 1, 3, 8)), ValueError,
         r"q/k head dim.*256.*257"),
        (lambda: _attn(_Q, _K, torch.randn(2, 2, 6, 300)), ValueError, r"v head dim.*256.*300"),
        # dtypes and devices
        (lambda: _attn(_Q, _K.half(), _V), TypeError, r"same dtype.*float32.*float16"),
        (lambda: _attn(_Q.long(), _K.long(), _V.long()), TypeError, r"q must be float16.*int64"),
        (lambda: _attn(_Q, _K.to("meta"), _V), ValueError, r"same device.*cpu.*meta"),
        (lambda: _attn(_Q.numpy(), _K, _V), TypeError, r"q must be a torch.Tensor.*ndarray"),
        # attn_bias
        (lambda: _attn(_Q, _K, _V, attn_bias=torch.randn(3, 6)), ValueError,
         r"attn_bias.*broadcastable.*\[2, 4, 5, 6\].*\(3, 6\)"),
        (lambda: _attn(_Q, _K, _V, attn_bias=torch.randn(1, 2, 4, 5, 6)), ValueError,
         r"attn_bias.*broadcastable.*\(1, 2, 4, 5, 6\)"),
        (lambda: _attn(_Q, _K, _V, attn_bias=torch.ones(5, 6, dtype=torch.int32)), TypeError,
         r"attn_bias.*bool.*float.*int32"),
        (lambda: _attn(_Q, _K, _V, attn_bias=torch.randn(5, 6, device="meta")), ValueError,
         r"attn_bias.*device.*meta"),
        # scalar options
        (lambda: _attn(_Q, _K, _V, window=(1,)), TypeError, r"window must be None or a pair"),
        (lambda: _attn(_Q, _K, _V, window=(-2, 0)), ValueError, r"window left.*-2"),
        (lambda: _attn(_Q, _K, _V, window=(0, 1.5)), ValueError, r"window right.*1.5"),
        (lambda: _attn(_Q, _K, _V, causal=True, window=(2, 3)), ValueError, r"causal.*window right.*\(2, 3\)"),
        (lambda: _attn(_Q, _K, _V, causal=1), TypeError, r"causal must be a bool"),
        (lambda: _attn(_Q, _K, _V, dropout_p=1.5), ValueError, r"dropout_p.*\[0, 1\].*1.5"),
        (lambda: _attn(_Q, _K, _V, dropout_p=-0.1), ValueError, r"dropout_p.*-0.1"),
        (lambda: _attn(_Q, _K, _V, softcap=-1.0), ValueError, r"softcap.*-1.0"),
        (lambda: _attn(_Q, _K, _V, scale=float("inf")), TypeError, r"scale.*inf"),
        (lambda: _attn(_Q, _K, _V, alignment="center"), ValueError, r"alignment.*'center'"),
        (lambda: _attn(_Q, _K, _V, deterministic=None), TypeError, r"deterministic must be a bool"),
        # varlen
        (lambda: _varlen(_Q, _K, _V, _CU_Q, _CU_K, 4, 5), ValueError, r"attention_varlen.*q must be 3-D"),
        (lambda: _varlen(_PQ, _PK, _PK, _CU_Q.float(), _CU_K, 4, 5), TypeError, r"cu_seqlens_q.*int32/int64"),
        (lambda: _varlen(_PQ, _PK, _PK, _CU_Q[None], _CU_K, 4, 5), TypeError, r"cu_seqlens_q.*1-D"),
        (lambda: _varlen(_PQ, _PK, _PK, _CU_Q, _CU_K.to("meta"), 4, 5), ValueError, r"cu_seqlens_k.*device.*meta"),
        (lambda: _varlen(_PQ, _PK, _PK, torch.tensor([0, 3, 6], dtype=torch.int32), _CU_K, 4, 5), ValueError,
         r"cu_seqlens_q.*end at the packed length 7.*\[0, 3, 6\]"),
        (lambda: _varlen(_PQ, _PK, _PK, torch.tensor([1, 3, 7], dtype=torch.int32), _CU_K, 4, 5), ValueError,
         r"cu_seqlens_q.*start at 0"),
        (lambda: _varlen(_PQ, _PK, _PK, _CU_Q, torch.tensor([0, 6, 4, 9], dtype=torch.int32), 4, 6), ValueError,
         r"cu_seqlens_k.*non-decreasing"),
        (lambda: _varlen(_PQ, _PK, _PK, _CU_Q, _CU_K, 3, 5), ValueError, r"cu_seqlens_q.*longer \(4\).*\(3\)"),
        (lambda: _varlen(_PQ, _PK, _PK, _CU_Q, _CU_K, -1, 5), ValueError, r"max_seqlen.*cu_seqlens_q.*-1"),
        (lambda: _varlen(_PQ, _PK, _PK, _CU_Q, torch.tensor([0, 9], dtype=torch.int32), 4, 9), ValueError,
         r"same number of sequences.*2 and 1"),
        # scaled_dot_product_attention
        (lambda: _sdpa(_Q, _Q, _Q, attn_mask=torch.ones(5, 5, dtype=torch.bool), is_causal=True), ValueError,
         r"attn_mask.*is_causal"),
        (lambda: _sdpa(_Q, _Q, _Q, attn_mask=torch.ones(4, 5)), ValueError, r"attn_mask.*broadcastable.*\(4, 5\)"),
        (lambda: _sdpa(_Q, _K, _V, enable_gqa=False), ValueError, r"leading dims.*do not broadcast"),
        (lambda: _sdpa(_Q[:, :3], _K, _V, enable_gqa=True), ValueError, r"enable_gqa.*query heads \(3\).*\(2\)"),
        (lambda: _sdpa(torch.randn(8), torch.randn(8), torch.randn(8)), ValueError, r"query.*at least 2 dims"),
    ],
)
def test_bad_inputs_are_named(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# --------------------------------------------------------------------------- GPU only


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_low_precision_against_sdpa_math(dtype, D, causal):
    """The 2x rule at a realistic size, with torch's math SDPA in the same dtype as the baseline."""
    q, k, v = _qkv(2, 4, 4, 257, 257, D, D, dtype, "cuda")

    def ours(q, k, v):
        return fusednn.ops.attention(q, k, v, causal=causal, return_lse=True)

    def ref(q, k, v, upcast):
        if upcast:
            return reference.attention(q, k, v, causal=causal, return_lse=True)
        return _sdpa_reference(q, k, v, None, upcast, is_causal=causal)

    _check(ours, ref, (q, k, v), ("q", "k", "v"))


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
    q, k, v = _qkv(2, 4, 2, 1024, 1024, 64, 64, dtype, "cuda")
    bias = torch.randn(1, 4, 1024, 1024, dtype=dtype, device="cuda", requires_grad=True)
    grad_out = torch.randn(2, 4, 1024, 64, dtype=dtype, device="cuda")

    def grads():
        out = fusednn.ops.attention(q, k, v, attn_bias=bias, causal=True, deterministic=True)
        return torch.autograd.grad(out, (q, k, v, bias), grad_out)

    for name, a, b in zip(("dq", "dk", "dv", "dbias"), grads(), grads()):
        assert torch.equal(a, b), name
