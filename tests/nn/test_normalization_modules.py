"""fusednn.nn.LayerNorm / RMSNorm as drop-in replacements of the torch.nn modules."""

import pytest
import torch

import fusednn
from fusednn import registry, testing
from fusednn.registry import Sample
from fusednn.testing import assert_close

DEVICE_DTYPES = [pytest.param(d, t, id=f"{d}-{str(t)[6:]}") for d, t in testing.kernel_dtypes(registry.get("layer_norm"))
                 if t != torch.float64]

# (module name, constructor arguments)
CONFIGS = [
    ("LayerNorm", dict(normalized_shape=37)),
    ("LayerNorm", dict(normalized_shape=37, bias=False)),
    ("LayerNorm", dict(normalized_shape=(3, 37), eps=1e-3)),
    ("LayerNorm", dict(normalized_shape=37, elementwise_affine=False)),
    ("RMSNorm", dict(normalized_shape=37)),
    ("RMSNorm", dict(normalized_shape=[3, 37], eps=1e-4)),
    ("RMSNorm", dict(normalized_shape=37, elementwise_affine=False)),
]
CONFIG_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kwargs.items())}" for name, kwargs in CONFIGS]


def _randomize(module):
    """Parameters away from their 1/0 initialisation, so a swapped or ignored one shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


def _pair(name, kwargs, device="cpu", dtype=torch.float32):
    ours = getattr(fusednn.nn, name)(**kwargs, device=device, dtype=dtype)
    theirs = getattr(torch.nn, name)(**kwargs, device=device, dtype=dtype)
    return ours, theirs


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_same_parameters_and_repr(name, kwargs):
    ours, theirs = _pair(name, kwargs)
    assert isinstance(ours, getattr(torch.nn, name))
    assert [(n, p.shape, p.dtype) for n, p in ours.named_parameters()] == [
        (n, p.shape, p.dtype) for n, p in theirs.named_parameters()
    ]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours) == repr(theirs)
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p_ours, p_theirs)  # same initialisation


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_loads_both_ways(name, kwargs):
    ours, theirs = _pair(name, kwargs)
    ours.load_state_dict(_randomize(theirs).state_dict())
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p_ours, p_theirs)
    ours2, theirs2 = _pair(name, kwargs)
    theirs2.load_state_dict(_randomize(ours2).state_dict())
    for p_ours, p_theirs in zip(ours2.parameters(), theirs2.parameters()):
        assert torch.equal(p_ours, p_theirs)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_forward_backward_match_torch_module(device, dtype, name, kwargs):
    """Output and gradients (input and parameters) against the torch module in float64,
    with the torch module in ``dtype`` as the low-precision baseline."""
    ours, theirs = _pair(name, kwargs, dtype=torch.float64)
    ours.load_state_dict(_randomize(theirs).state_dict())
    x = torch.randn(2, 3, 37, dtype=torch.float64, requires_grad=True)
    testing.compare_modules(ours, theirs, Sample(name, (x,)), device, dtype)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES[:1])
def test_module_uses_the_kernel_and_trains(device, dtype):
    """One optimizer step through the module changes weight and bias as torch's would."""
    ours, theirs = _pair("LayerNorm", dict(normalized_shape=37), device, dtype)
    ours.load_state_dict(_randomize(theirs).state_dict())
    x = torch.randn(4, 37, dtype=dtype, device=device)
    target = torch.randn(4, 37, dtype=dtype, device=device)
    for module in (ours, theirs):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        torch.nn.functional.mse_loss(module(x), target).backward()
        optimizer.step()
    assert "fusednn" in ours(x).grad_fn.name()
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        assert_close(p_ours, p_theirs.double())


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm"])
def test_torchscript_and_trace(name):
    """torch.jit.script compiles the module (to torch's function) and torch.jit.trace records
    the fused op; both give the eager results."""
    ours = getattr(fusednn.nn, name)(7).double()
    with torch.no_grad():
        ours.weight.normal_()
    theirs = getattr(torch.nn, name)(7).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, dtype=torch.float64)
    assert_close(torch.jit.script(ours)(x), theirs(x))
    assert_close(torch.jit.trace(ours, (x,))(x), theirs(x))
