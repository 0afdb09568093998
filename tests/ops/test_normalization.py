"""LayerNorm / RMSNorm beyond what every op gets from the registry (tests/test_registry.py):
mixed-precision parameters, the wide-row kernels, broadcast output gradients, determinism,
torch's default eps rule, and the reference against torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import _runtime, registry, testing
from fusednn.kernels import normalization as kernels
from fusednn.registry import Sample
from fusednn.testing import assert_close

OPS = ("layer_norm", "rms_norm")
PARAMS = {"layer_norm": ("weight", "bias"), "rms_norm": ("weight",)}


def _kernel_pairs(op, *, low_precision_only=False):
    pairs = testing.kernel_dtypes(registry.get(op))
    if low_precision_only:
        pairs = [(d, t) for d, t in pairs if t in (torch.float16, torch.bfloat16)]
    return pairs


def _params(op, shape, dtype=torch.float64, device="cpu"):
    return {name: ((1.0 if name == "weight" else 0.0) + 0.5 * torch.randn(shape, dtype=dtype, device=device))
            .requires_grad_() for name in PARAMS[op]}


@pytest.mark.parametrize("op", OPS)
def test_float32_parameters_with_low_precision_input(op):
    """Mixed precision: float32 weight/bias with float16/bfloat16 x, as torch allows. y and
    grad x come in x's dtype, the parameter gradients in float32 (reduced in float32)."""
    pairs = _kernel_pairs(op, low_precision_only=True)
    if not pairs:
        pytest.skip("no low-precision kernel dtype on this machine")
    for device, dtype in pairs:
        x = torch.randn(4, 37, dtype=dtype, device=device, requires_grad=True)
        params = _params(op, (37,), torch.float32, device)
        grad_y = torch.randn(4, 37, dtype=dtype, device=device)
        y = getattr(fusednn.ops, op)(x, 37, **params, eps=1e-5)
        grads = torch.autograd.grad(y, [x, *params.values()], grad_y)
        assert y.dtype == dtype and grads[0].dtype == dtype
        assert all(g.dtype == torch.float32 for g in grads[1:])
        with fusednn.use_backend("reference"):  # PyTorch's computation in x's dtype: the 2x-rule baseline
            y_base = getattr(fusednn.ops, op)(x, 37, **params, eps=1e-5)
            grads_base = torch.autograd.grad(y_base, [x, *params.values()], grad_y)
        x_ref = x.detach().double().cpu().requires_grad_()
        ref_params = {k: v.detach().double().cpu().requires_grad_() for k, v in params.items()}
        y_ref = getattr(F, op)(x_ref, (37,), **ref_params, eps=1e-5)
        grads_ref = torch.autograd.grad(y_ref, [x_ref, *ref_params.values()], grad_y.double().cpu())
        assert_close(y, y_ref, name="y", lowp_baseline=y_base)
        assert_close(grads[0], grads_ref[0], name="grad x", lowp_baseline=grads_base[0])
        for name, g, g_base, g_ref in zip(PARAMS[op], grads[1:], grads_base[1:], grads_ref[1:]):
            # reduced in float32 from low-precision terms: the same 2x rule
            assert_close(g, g_ref, name=f"grad {name}", lowp_baseline=g_base, precision=dtype)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("width", [37, 100])
def test_wide_row_looped_kernels(monkeypatch, op, width):
    """Rows wider than the fused limit take the column-block loops (forced with tiny limits)."""
    monkeypatch.setattr(kernels, "FORWARD_MAX_FUSED", 16)
    monkeypatch.setattr(kernels, "BACKWARD_MAX_FUSED", 16)
    monkeypatch.setattr(kernels, "LOOPED_BLOCK", 16)
    assert not kernels.row_config(width, kernels.FORWARD_MAX_FUSED)[2]
    info = registry.get(op)
    x = torch.randn(5, width, dtype=torch.float64, requires_grad=True)
    sample = Sample(f"looped-{width}", (x, (width,)), dict(_params(op, (width,)), eps=1e-5))
    for device, dtype in _kernel_pairs(op):
        testing.compare_sample(info, sample, device, dtype)


@pytest.mark.parametrize("op", OPS)
def test_broadcast_output_gradient(op):
    """grad_y may arrive broadcast (row stride 0, e.g. from a sum or an expand)."""
    for device, dtype in _kernel_pairs(op)[:1]:
        x = torch.randn(3, 37, dtype=dtype, device=device, requires_grad=True)
        weight = torch.randn(37, dtype=dtype, device=device, requires_grad=True)
        grad_y = torch.randn(1, 37, dtype=dtype, device=device).expand(3, 37)
        getattr(fusednn.ops, op)(x, 37, weight, eps=1e-5).backward(grad_y)
        x_ref = x.detach().double().cpu().requires_grad_()
        w_ref = weight.detach().double().cpu().requires_grad_()
        getattr(F, op)(x_ref, (37,), w_ref, eps=1e-5).backward(grad_y.double().cpu())
        assert_close(x.grad, x_ref.grad, name="grad x")
        assert_close(weight.grad, w_ref.grad, name="grad weight")


@pytest.mark.parametrize("op", OPS)
def test_backward_is_deterministic(op):
    for device, _ in _kernel_pairs(op)[:1]:
        x = torch.randn(7, 37, device=device, requires_grad=True)
        weight = torch.randn(37, device=device, requires_grad=True)
        grad_y = torch.randn(7, 37, device=device)
        first = torch.autograd.grad(getattr(fusednn.ops, op)(x, 37, weight), (x, weight), grad_y)
        second = torch.autograd.grad(getattr(fusednn.ops, op)(x, 37, weight), (x, weight), grad_y)
        for a, b in zip(first, second):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_rms_norm_default_eps_is_torchs(dtype):
    """eps=None is torch's default: the epsilon of the precision the statistics are computed in
    (float32 for float16/bfloat16/float32 inputs), not of x's dtype. Rows this small show it:
    torch gives [1, 1] for x = [[0.01], [0.03]] in float16."""
    x = torch.tensor([[0.01], [0.03]], dtype=dtype)
    expected = F.rms_norm(x, (1,))
    for backend in ("auto", "reference"):
        with fusednn.use_backend(backend):
            got = fusednn.ops.rms_norm(x, (1,))
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(fusednn.nn.RMSNorm(1, dtype=dtype)(x), torch.nn.RMSNorm(1, dtype=dtype)(x))
    # and on wider rows, against torch in float64 with the same eps
    x = 0.05 * torch.randn(4, 37, dtype=dtype)
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    expected = F.rms_norm(x.double(), (37,), eps=eps)
    got = fusednn.ops.rms_norm(x, 37)
    if dtype in (torch.float16, torch.bfloat16):
        assert_close(got, expected, lowp_baseline=F.rms_norm(x, (37,)))
    else:
        assert_close(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("op", OPS)
def test_reference_matches_torch(dtype, op):
    x = torch.randn(2, 3, 4, 5, dtype=dtype)
    weight = torch.randn(4, 5, dtype=dtype)
    ours = getattr(fusednn.reference, op)(x, (4, 5), weight, eps=1e-5)
    expected = getattr(F, op)(x.double(), (4, 5), weight.double(), eps=1e-5)
    if dtype in (torch.float16, torch.bfloat16):
        assert_close(ours, expected, lowp_baseline=getattr(F, op)(x, (4, 5), weight, eps=1e-5))
    else:
        assert_close(ours, expected)


def test_registered_schemas():
    schemas = {name: str(getattr(torch.ops.fusednn, name).default._schema) for name in (
        "layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward")}
    assert schemas["layer_norm_forward"] == (
        "fusednn::layer_norm_forward(Tensor x, SymInt normalized_ndim, Tensor? weight, Tensor? bias, float eps) "
        "-> (Tensor, Tensor, Tensor)"
    )
    assert schemas["rms_norm_backward"] == (
        "fusednn::rms_norm_backward(Tensor grad_y, Tensor x, SymInt normalized_ndim, Tensor? weight, Tensor rstd, "
        "bool weight_grad) -> (Tensor, Tensor)"
    )


def test_forced_triton_without_a_device_raises(monkeypatch):
    monkeypatch.setattr(_runtime, "interpreter_enabled", lambda: False)
    with fusednn.use_backend("triton"), pytest.raises(NotImplementedError, match="layer_norm.*triton"):
        fusednn.ops.layer_norm(torch.randn(2, 5), 5)


_LAYOUTS = {
    "channels_last": lambda: torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
    "channels_last_3d": lambda: torch.randn(2, 3, 2, 4, 5).to(memory_format=torch.channels_last_3d),
    "transposed": lambda: torch.randn(3, 2, 5).transpose(0, 1),
    "strided": lambda: torch.randn(2, 3, 10)[..., ::2],
}


@pytest.mark.parametrize("layout", _LAYOUTS)
@pytest.mark.parametrize("normalized_ndim", [1, 2])
@pytest.mark.parametrize("op", OPS)
def test_output_and_gradient_layouts_follow_torch(op, normalized_ndim, layout):
    """y, grad x and the parameter gradients have torch's strides: rms_norm keeps a
    channels_last x's format, layer_norm returns contiguous tensors, parameter gradients
    are contiguous."""
    for device, dtype in _kernel_pairs(op):
        x = _LAYOUTS[layout]().to(device=device, dtype=dtype).requires_grad_()
        shape = x.shape[x.dim() - normalized_ndim:]
        params = _params(op, shape, dtype, device)
        ours = getattr(fusednn.ops, op)(x, shape, **params)
        theirs = getattr(F, op)(x, shape, **params)
        assert ours.stride() == theirs.stride(), (device, dtype)
        rtol = testing.RTOL.get(dtype)
        if rtol is not None:  # the values of low precisions are the registry's 2x rule's business
            assert_close(ours, theirs, name="y", rtol=rtol)
        grad = torch.rand_like(theirs)
        ours_grads = torch.autograd.grad(ours, [x, *params.values()], grad)
        theirs_grads = torch.autograd.grad(theirs, [x, *params.values()], grad)
        for name, a, b in zip(["x", *params], ours_grads, theirs_grads):
            assert a.stride() == b.stride(), (name, device, dtype)
            if rtol is not None:
                assert_close(a, b, name=f"grad {name}", rtol=rtol * 10)


@pytest.mark.parametrize("op", OPS)
def test_double_backward_matches_torch(op):
    """A gradient penalty: d/dparams of |dy/dx . g|^2 agrees with torch's own functions."""
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    params = _params(op, (7,))
    grad = torch.randn(3, 7, dtype=torch.float64)
    results = []
    for function in (getattr(fusednn.ops, op), getattr(F, op)):
        (gx,) = torch.autograd.grad(function(x, (7,), **params), x, grad, create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum(), [x, params["weight"]]))
    for name, a, b in zip(["x", "weight"], *results):
        assert b.abs().max() > 0
        assert_close(a, b, name=f"second derivative by {name}", rtol=1e-10)
