"""fusednn.ops.layer_norm / rms_norm against torch.nn.functional with float64 references.

On a CPU-only machine the Triton kernels run through the interpreter (float32, float16);
on a GPU machine the CUDA float32/float16/bfloat16 cases are added by device_dtypes.
"""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import _runtime
from fusednn.kernels import normalization as kernels
from fusednn.testing import assert_close, device_dtypes, max_abs_error, opcheck, scale

# Triton 3.6's interpreter turns runtime loop bounds into Python ints through a NumPy
# conversion that NumPy >= 1.25 deprecates (and 2.4 removes: see DESIGN.md).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

DEVICE_DTYPES = device_dtypes("triton")
TRITON_DEVICES = sorted({device for device, _ in DEVICE_DTYPES})
WIDTHS = [1, 37, 1000]
# parameters of each op: "none", weight only, weight and bias
LAYER_NORM_PARAMS = [(), ("weight",), ("weight", "bias")]
RMS_NORM_PARAMS = [(), ("weight",)]


def _eps_for(width):
    # A one-column row normalises to +-1 and its gradient is the difference of two nearly
    # equal terms: ill-conditioned in any float32 implementation, so give it a large eps.
    return 0.5 if width == 1 else 1e-5


def _assert_matches(actual, expected, baseline, name):
    """``expected``: float64 on the CPU; ``baseline``: PyTorch's result in actual's dtype."""
    if actual.dtype in (torch.float16, torch.bfloat16):
        assert_close(actual, expected, name=name, lowp_baseline=baseline)
    elif scale(expected) < 1e-6:  # an exactly-zero gradient (width-1 LayerNorm): absolute check
        err = max_abs_error(actual, expected)
        assert err <= 1e-6, f"{name}: max abs error {err:.3e} where the reference is ~0"
    else:
        assert_close(actual, expected, name=name)


def _make_params(op, names, shape, dtype, device):
    params = {}
    for name in names:
        base = 1.0 if name == "weight" else 0.0
        params[name] = (base + 0.5 * torch.randn(shape, dtype=dtype, device=device)).requires_grad_()
    return params


def _forward_backward(fn, x, normalized_shape, params, eps, grad_y):
    """y and the gradients of x and every parameter (in params' order)."""
    y = fn(x, normalized_shape, **params, eps=eps)
    grads = torch.autograd.grad(y, [x, *params.values()], grad_y)
    return y, grads


def _check_against_torch(op, x, normalized_shape, params, eps):
    """Runs fusednn.ops.<op>, torch's op in x's dtype (the baseline) and torch's op in
    float64 on the CPU (the reference); compares the output and every gradient."""
    ours_fn = getattr(fusednn.ops, op)
    torch_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)

    def torch_fn(x, _normalized_shape, **kwargs):  # F.layer_norm / rms_norm take no int shape
        return getattr(F, op)(x, torch_shape, **kwargs)

    grad_y = torch.randn(x.shape, dtype=x.dtype, device=x.device)
    y, grads = _forward_backward(ours_fn, x, normalized_shape, params, eps, grad_y)

    def detached(t, **kw):
        return t.detach().to(**kw).requires_grad_()

    base_x = detached(x)
    base_params = {k: detached(v) for k, v in params.items()}
    y_base, grads_base = _forward_backward(torch_fn, base_x, normalized_shape, base_params, eps, grad_y)
    ref_x = detached(x, dtype=torch.float64, device="cpu")
    ref_params = {k: detached(v, dtype=torch.float64, device="cpu") for k, v in params.items()}
    y_ref, grads_ref = _forward_backward(torch_fn, ref_x, normalized_shape, ref_params, eps, grad_y.double().cpu())

    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    names = ["y", "grad x"] + [f"grad {k}" for k in params]
    for name, actual, baseline, expected in zip(names, (y, *grads), (y_base, *grads_base), (y_ref, *grads_ref)):
        assert actual.dtype == x.dtype, name
        _assert_matches(actual, expected, baseline, f"{op} {name}")


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("device, dtype", [(d, t) for d, t in DEVICE_DTYPES if t != torch.float32])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_float32_parameters_with_low_precision_input(device, dtype, op):
    """Mixed precision: fp32 weight/bias with fp16/bf16 x, as torch allows. y and grad x
    come in x's dtype, the parameter gradients in float32 (reduced in float32)."""
    width = 37
    x = torch.randn(4, width, dtype=dtype, device=device).requires_grad_()
    names = ("weight", "bias") if op == "layer_norm" else ("weight",)
    params = _make_params(op, names, (width,), torch.float32, device)
    grad_y = torch.randn(x.shape, dtype=dtype, device=device)
    y, grads = _forward_backward(getattr(fusednn.ops, op), x, width, params, 1e-5, grad_y)
    with fusednn.use_backend("reference"):  # PyTorch's computation in x's dtype: the 2x-rule baseline
        y_base, grads_base = _forward_backward(getattr(fusednn.ops, op), x, width, params, 1e-5, grad_y)
    ref_x = x.detach().double().cpu().requires_grad_()
    ref_params = {k: v.detach().double().cpu().requires_grad_() for k, v in params.items()}
    y_ref, grads_ref = _forward_backward(
        lambda x, _s, **kw: getattr(F, op)(x, (width,), **kw), ref_x, width, ref_params, 1e-5, grad_y.double().cpu()
    )
    assert y.dtype == dtype and grads[0].dtype == dtype
    assert all(g.dtype == torch.float32 for g in grads[1:])
    _assert_matches(y, y_ref, y_base, f"{op} y")
    _assert_matches(grads[0], grads_ref[0], grads_base[0], f"{op} grad x")
    for name, g, g_ref in zip(names, grads[1:], grads_ref[1:]):
        assert_close(g, g_ref, name=f"{op} grad {name}")



@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(
    "op, param_names",
    [("layer_norm", p) for p in LAYER_NORM_PARAMS] + [("rms_norm", p) for p in RMS_NORM_PARAMS],
    ids=lambda v: v if isinstance(v, str) else "+".join(v) or "none",
)
def test_norm_matches_torch(device, dtype, width, op, param_names):
    x = torch.randn(3, width, dtype=dtype, device=device).requires_grad_()
    params = _make_params(op, param_names, (width,), dtype, device)
    _check_against_torch(op, x, (width,), params, _eps_for(width))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize(
    "shape, normalized_shape",
    [((37,), (37,)), ((1, 37), 37), ((2, 3, 37), (37,)), ((2, 3, 4, 5), (4, 5)), ((2, 3, 4, 5), (3, 4, 5))],
    ids=["1d", "single-row", "3d", "2-normalized-dims", "3-normalized-dims"],
)
def test_leading_and_normalized_shapes(device, dtype, op, shape, normalized_shape):
    x = torch.randn(shape, dtype=dtype, device=device).requires_grad_()
    weight_shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    names = ("weight", "bias") if op == "layer_norm" else ("weight",)
    _check_against_torch(op, x, normalized_shape, _make_params(op, names, weight_shape, dtype, device), 1e-5)


def _non_contiguous(kind, dtype, device):
    """A [2, 3, 37] view that is not contiguous, and whether its rows still have unit stride."""
    if kind == "strided-columns":  # every other element: rows must be copied
        return torch.randn(2, 3, 74, dtype=dtype, device=device)[..., ::2]
    if kind == "column-slice":  # rows of a wider tensor: used in place through the row stride
        return torch.randn(2, 3, 50, dtype=dtype, device=device)[..., 3:40]
    if kind == "transposed":  # leading dims permuted: rows contiguous, leading dims not mergeable
        return torch.randn(3, 2, 37, dtype=dtype, device=device).transpose(0, 1)
    raise AssertionError(kind)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("kind", ["strided-columns", "column-slice", "transposed"])
def test_non_contiguous_input(device, dtype, op, kind):
    x = _non_contiguous(kind, dtype, device).requires_grad_()
    assert not x.is_contiguous()
    names = ("weight", "bias") if op == "layer_norm" else ("weight",)
    params = _make_params(op, names, (37,), dtype, device)
    # a non-contiguous weight too
    params["weight"] = torch.randn(74, dtype=dtype, device=device)[::2].requires_grad_()
    _check_against_torch(op, x, (37,), params, 1e-5)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES[:1])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_non_contiguous_output_gradient(device, dtype, op):
    """grad_y may arrive broadcast (row stride 0, e.g. from a sum or an expand)."""
    x = torch.randn(3, 37, dtype=dtype, device=device, requires_grad=True)
    weight = torch.randn(37, dtype=dtype, device=device, requires_grad=True)
    grad_y = torch.randn(1, 37, dtype=dtype, device=device).expand(3, 37)
    getattr(fusednn.ops, op)(x, 37, weight, eps=1e-5).backward(grad_y)
    x_ref = x.detach().double().requires_grad_()
    w_ref = weight.detach().double().requires_grad_()
    getattr(F, op)(x_ref, (37,), w_ref, eps=1e-5).backward(grad_y.double())
    assert_close(x.grad, x_ref.grad, name="grad x")
    assert_close(weight.grad, w_ref.grad, name="grad weight")


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("width", [37, 100])
def test_wide_row_looped_kernels(monkeypatch, device, dtype, op, width):
    """Rows wider than the fused limit take the column-block loops (forced with tiny limits)."""
    monkeypatch.setattr(kernels, "FORWARD_MAX_FUSED", 16)
    monkeypatch.setattr(kernels, "BACKWARD_MAX_FUSED", 16)
    monkeypatch.setattr(kernels, "LOOPED_BLOCK", 16)
    assert not kernels.row_config(width, kernels.FORWARD_MAX_FUSED)[1]
    x = torch.randn(5, width, dtype=dtype, device=device).requires_grad_()
    names = ("weight", "bias") if op == "layer_norm" else ("weight",)
    _check_against_torch(op, x, (width,), _make_params(op, names, (width,), dtype, device), 1e-5)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES[:1])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_eps_is_applied(device, dtype, op):
    x = torch.randn(3, 37, dtype=dtype, device=device).requires_grad_()
    _check_against_torch(op, x, (37,), {}, 0.75)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_rms_norm_default_eps_is_dtype_epsilon(device, dtype):
    x = 0.05 * torch.randn(4, 37, dtype=dtype, device=device)  # small rms so eps matters
    y = fusednn.ops.rms_norm(x, 37)
    expected = F.rms_norm(x.double().cpu(), (37,), eps=torch.finfo(dtype).eps)
    assert_close(y, expected, lowp_baseline=F.rms_norm(x, (37,)) if dtype != torch.float32 else None)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES[:1])
@pytest.mark.parametrize("which", ["x", "weight", "bias", "weight+bias"])
def test_only_some_inputs_need_grad(device, dtype, which):
    x = torch.randn(4, 37, dtype=dtype, device=device, requires_grad="x" in which.split("+"))
    weight = torch.randn(37, dtype=dtype, device=device, requires_grad="weight" in which.split("+"))
    bias = torch.randn(37, dtype=dtype, device=device, requires_grad="bias" in which.split("+"))
    grad_y = torch.randn(4, 37, dtype=dtype, device=device)
    fusednn.ops.layer_norm(x, 37, weight, bias).backward(grad_y)
    refs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    F.layer_norm(refs[0], (37,), refs[1], refs[2]).backward(grad_y.double())
    for name, t, ref in zip(("x", "weight", "bias"), (x, weight, bias), refs):
        if t.requires_grad:
            assert_close(t.grad, ref.grad, name=f"grad {name}")
        else:
            assert t.grad is None


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_backward_is_deterministic(device, op):
    x = torch.randn(7, 37, device=device, requires_grad=True)
    weight = torch.randn(37, device=device, requires_grad=True)
    grad_y = torch.randn(7, 37, device=device)
    first = torch.autograd.grad(getattr(fusednn.ops, op)(x, 37, weight), (x, weight), grad_y)
    second = torch.autograd.grad(getattr(fusednn.ops, op)(x, 37, weight), (x, weight), grad_y)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_gradcheck_float64(device):
    x = torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: fusednn.ops.layer_norm(a[0], 5, a[1], a[2]), (x, weight, bias))
    assert torch.autograd.gradcheck(lambda *a: fusednn.ops.rms_norm(a[0], 5, a[1], 1e-5), (x, weight))


# --------------------------------------------------------------------------- registration


def _opcheck_cases(device):
    x = torch.randn(4, 37, device=device, requires_grad=True)
    w = torch.randn(37, device=device, requires_grad=True)
    b = torch.randn(37, device=device, requires_grad=True)
    grad_y = torch.randn(4, 37, device=device)
    with torch.no_grad():
        _, mean, rstd = torch.ops.fusednn.layer_norm_forward(x, w, b, 1e-5)
        _, rms_rstd = torch.ops.fusednn.rms_norm_forward(x, w, 1e-5)
    return {
        "layer_norm_forward-affine": (torch.ops.fusednn.layer_norm_forward, (x, w, b, 1e-5)),
        "layer_norm_forward-weight": (torch.ops.fusednn.layer_norm_forward, (x, w, None, 1e-5)),
        "layer_norm_forward-plain": (torch.ops.fusednn.layer_norm_forward, (x, None, None, 1e-5)),
        "layer_norm_backward-affine": (
            torch.ops.fusednn.layer_norm_backward,
            (grad_y, x.detach(), w.detach(), mean, rstd, True, True),
        ),
        "layer_norm_backward-plain": (
            torch.ops.fusednn.layer_norm_backward,
            (grad_y, x.detach(), None, mean, rstd, False, False),
        ),
        "rms_norm_forward-weight": (torch.ops.fusednn.rms_norm_forward, (x, w, 1e-5)),
        "rms_norm_forward-plain": (torch.ops.fusednn.rms_norm_forward, (x, None, 1e-5)),
        "rms_norm_backward-weight": (
            torch.ops.fusednn.rms_norm_backward,
            (grad_y, x.detach(), w.detach(), rms_rstd, True),
        ),
        "rms_norm_backward-frozen-weight": (
            torch.ops.fusednn.rms_norm_backward,
            (grad_y, x.detach(), w.detach(), rms_rstd, False),
        ),
    }


OPCHECK_NAMES = list(_opcheck_cases("cpu"))


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("case", OPCHECK_NAMES)
def test_opcheck(device, case):
    op, args = _opcheck_cases(device)[case]
    opcheck(op, args, triton=True)


def test_registered_schemas():
    schemas = {name: str(getattr(torch.ops.fusednn, name).default._schema) for name in (
        "layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward")}
    assert schemas["layer_norm_forward"] == (
        "fusednn::layer_norm_forward(Tensor x, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)"
    )
    assert schemas["rms_norm_backward"] == (
        "fusednn::rms_norm_backward(Tensor grad_y, Tensor x, Tensor? weight, Tensor rstd, bool weight_grad) "
        "-> (Tensor, Tensor)"
    )


# --------------------------------------------------------------------------- validation

_X = torch.randn(2, 3, 5)
_W = torch.randn(5)


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: fusednn.ops.layer_norm(_X, (4,)), ValueError, r"normalized_shape.*\(4,\).*\(2, 3, 5\)"),
        (lambda: fusednn.ops.layer_norm(_X, (1, 2, 3, 5)), ValueError, r"normalized_shape.*\(1, 2, 3, 5\)"),
        (lambda: fusednn.ops.rms_norm(_X, (2, 5)), ValueError, r"normalized_shape.*\(2, 5\).*\(2, 3, 5\)"),
        (lambda: fusednn.ops.layer_norm(_X, ()), ValueError, r"normalized_shape.*non-empty"),
        (lambda: fusednn.ops.layer_norm(_X, "5"), TypeError, r"normalized_shape.*int"),
        (lambda: fusednn.ops.layer_norm(_X, 5, torch.randn(4)), ValueError, r"weight.*\(5,\).*\(4,\)"),
        (lambda: fusednn.ops.layer_norm(_X, 5, _W, torch.randn(5, 1)), ValueError, r"bias.*\(5,\).*\(5, 1\)"),
        (lambda: fusednn.ops.rms_norm(_X, 5, torch.randn(3, 5)), ValueError, r"weight.*\(5,\).*\(3, 5\)"),
        (lambda: fusednn.ops.layer_norm(_X.long(), 5), TypeError, r"x must be float.*torch.int64"),
        (lambda: fusednn.ops.rms_norm(_X.int(), 5), TypeError, r"x must be float.*torch.int32"),
        (lambda: fusednn.ops.layer_norm(_X, 5, _W.long()), TypeError, r"weight must be float.*torch.int64"),
        (lambda: fusednn.ops.layer_norm(_X, 5, _W, _W.int()), TypeError, r"bias must be float.*torch.int32"),
        (lambda: fusednn.ops.rms_norm(_X.half(), 5, _W.bool()), TypeError, r"weight must be float.*torch.bool"),
        (lambda: fusednn.ops.layer_norm(_X, 5, _W.to("meta")), ValueError, r"weight.*device cpu.*meta"),
        (lambda: fusednn.ops.rms_norm(_X, 5, _W.to("meta")), ValueError, r"weight.*device cpu.*meta"),
        (lambda: fusednn.ops.layer_norm(_X.numpy(), 5), TypeError, r"x must be a torch.Tensor.*ndarray"),
        (lambda: fusednn.ops.layer_norm(_X, 5, [1.0] * 5), TypeError, r"weight must be a torch.Tensor.*list"),
        (lambda: fusednn.ops.layer_norm(_X, 5, eps=-1e-5), ValueError, r"eps must be >= 0.*-1e-05"),
        (lambda: fusednn.ops.rms_norm(_X, 5, eps="tiny"), TypeError, r"eps must be a float.*str"),
    ],
)
def test_bad_inputs_are_named(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape, normalized_shape", [((0, 37), (37,)), ((2, 0, 37), (37,)), ((3, 0), (0,))])
def test_zero_size(device, op, shape, normalized_shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    weight = torch.randn(normalized_shape, device=device, requires_grad=True)
    y = getattr(fusednn.ops, op)(x, normalized_shape, weight, eps=1e-5)
    assert y.shape == x.shape and y.dtype == x.dtype
    grad_x, grad_weight = torch.autograd.grad(y, (x, weight), torch.randn_like(y))
    assert grad_x.shape == x.shape
    assert torch.equal(grad_weight, torch.zeros_like(weight))


# --------------------------------------------------------------------------- backends


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_reference_backend_agrees(device, dtype, op):
    x = torch.randn(2, 3, 37, dtype=dtype, device=device, requires_grad=True)
    weight = torch.randn(37, dtype=dtype, device=device, requires_grad=True)
    grad_y = torch.randn(2, 3, 37, dtype=dtype, device=device)
    fn = getattr(fusednn.ops, op)

    def run():
        y = fn(x, 37, weight, eps=0.01)  # not a default, so a dropped eps shows
        return y, *torch.autograd.grad(y, (x, weight), grad_y)

    with fusednn.use_backend("triton"):
        kernel_results = run()
        assert "fusednn" in str(kernel_results[0].grad_fn.next_functions)
    with fusednn.use_backend("reference"):
        reference_results = run()
        assert "fusednn" not in str(reference_results[0].grad_fn.next_functions)
    # Both compute in float32; in float16/bfloat16 they may round a few elements differently.
    ulps = 1e-5 if dtype == torch.float32 else 4 * fusednn.testing.ULP[dtype]
    for name, a, b in zip(("y", "grad x", "grad weight"), kernel_results, reference_results):
        assert max_abs_error(a, b) <= ulps * max(scale(b), 1.0), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_reference_matches_torch(dtype, op):
    x = torch.randn(2, 3, 4, 5, dtype=dtype)
    weight = torch.randn(4, 5, dtype=dtype)
    ours = getattr(fusednn.reference, op)(x, (4, 5), weight, eps=1e-5)
    expected = getattr(F, op)(x.double(), (4, 5), weight.double(), eps=1e-5)
    if dtype in (torch.float16, torch.bfloat16):
        assert_close(ours, expected, lowp_baseline=getattr(F, op)(x, (4, 5), weight, eps=1e-5))
    else:
        assert_close(ours, expected)


def test_forced_triton_without_a_device_raises(monkeypatch):
    monkeypatch.setattr(_runtime, "interpreter_enabled", lambda: False)
    with fusednn.use_backend("triton"), pytest.raises(NotImplementedError, match="layer_norm.*triton"):
        fusednn.ops.layer_norm(torch.randn(2, 5), 5)
