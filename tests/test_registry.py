"""The tests every registered op gets from its registry entry (``fusednn.registry``):

* every sample against the float64 reference, outputs and input gradients, on every
  (device, dtype) where a kernel serves (the comparison harness of ``fusednn.testing``);
* ``torch.library.opcheck`` of every registered ``torch.ops.fusednn`` op the opcheck
  samples call;
* ``gradcheck`` in float64 where a kernel takes float64; double backward: gradgradcheck
  where the op supports it, a clear error at once where it does not;
* every bad-input case;
* dispatch: dtypes no kernel serves go to the reference (bfloat16 never reaches Triton's
  CPU interpreter), forced backends that cannot serve raise.

An op added to the registry is picked up here with no change to this file.

``FUSEDNN_TEST_GRID=curated`` (set by bench/gpu.sh, whose lease is short) keeps, on CUDA,
only the samples ``python -m fusednn check`` runs: each op's opcheck samples in every
dtype (the first low-precision one where those are tiny).
"""

from __future__ import annotations

import os
import re

import pytest
import torch

import fusednn
from fusednn import check, registry, testing
from fusednn._validate import LOW_PRECISION, dtype_name

OPS = registry.ops()
CURATED = os.environ.get("FUSEDNN_TEST_GRID", "full") == "curated"


def _sample(info: registry.OpInfo, name: str) -> registry.Sample:
    """The named sample, drawn fresh under the test's seed."""
    return next(s for s in info.samples() if s.name == name)


def _interpreted_low_precision(info: registry.OpInfo, dtype: torch.dtype) -> set[str]:
    """The samples of an op's float16 grid under Triton's interpreter."""
    return {s.name for s in check.check_samples(info, dtype)}


def _params(select, with_dtype: bool = True):
    """pytest params (op, sample[, device, dtype]) for the samples ``select`` keeps."""
    params = []
    for info in OPS:
        curated = {dtype: {s.name for s in check.check_samples(info, dtype)}
                   for _, dtype in testing.kernel_dtypes(info)} if CURATED else {}
        for sample in info.samples():
            if not select(sample):
                continue
            marks = [pytest.mark.slow] if sample.slow else []
            if not with_dtype:
                params.append(pytest.param(info.name, sample.name, id=f"{info.name}-{sample.name}", marks=marks))
                continue
            for device, dtype in testing.kernel_dtypes(info):
                if dtype in LOW_PRECISION and not sample.low_precision:
                    continue
                if CURATED and device == "cuda" and sample.name not in curated[dtype]:
                    continue
                # float16 through Triton's interpreter was half of this file's time, and runs the
                # float32 code with other casts: there it takes the samples ``check`` runs (the
                # opcheck ones, which cover each op's options); a GPU runs the whole grid.
                interpreted = device == "cpu" and info.select(torch.device(device), dtype) == "triton"
                low_precision = dtype in LOW_PRECISION
                if interpreted and low_precision and sample.name not in _interpreted_low_precision(info, dtype):
                    continue
                slow = [pytest.mark.slow] if interpreted and dtype in LOW_PRECISION else []
                params.append(pytest.param(info.name, sample.name, device, dtype, marks=marks + slow,
                                           id=f"{info.name}-{sample.name}-{device}-{dtype_name(dtype)}"))
    return params


# --------------------------------------------------------------------------- reference comparison


@pytest.mark.parametrize("op, sample, device, dtype", _params(lambda s: True))
def test_matches_reference(op, sample, device, dtype):
    info = registry.get(op)
    testing.compare_sample(info, _sample(info, sample), device, dtype)


# --------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("device", testing.devices())
@pytest.mark.parametrize("op, sample", _params(lambda s: s.opcheck, with_dtype=False))
def test_opcheck(op, sample, device):
    info = registry.get(op)
    dtypes = info.dtypes_with_kernel(torch.device(device))
    if not dtypes:
        pytest.skip(f"no kernel of {op} runs on {device} here")
    dtype = torch.float32 if torch.float32 in dtypes else dtypes[0]
    calls = testing.fusednn_calls(info, _sample(info, sample), device, dtype)
    assert calls, f"{op} [{sample}] called no registered fusednn op on {device}"
    assert any(c.forward for c in calls)
    checked = set()
    for call in calls:
        if call.op in checked:
            continue
        checked.add(call.op)
        testing.opcheck_call(call, triton=testing.is_triton_op(call.op))


# --------------------------------------------------------------------------- gradients


def _float64_kernel_devices(info):
    return [d for d in testing.devices() if torch.float64 in info.dtypes_with_kernel(torch.device(d))]


def _gradcheck_params(check_double: bool):
    params = []
    for info in OPS:
        if check_double and not info.double_backward:
            continue
        for device in _float64_kernel_devices(info):
            for sample in info.samples():
                if sample.gradcheck:
                    params.append(pytest.param(info.name, sample.name, device, id=f"{info.name}-{sample.name}-{device}"))
    return params


def _differentiable(info, sample, device, dtype):
    """(function of the differentiable inputs returning the floating outputs, those inputs)."""
    inputs = testing.Inputs(info.function, sample, dtype, device)

    def fn(*leaves):
        args, kwargs = inputs.build(leaves)
        return tuple(o for o in testing.floating_outputs(info.function(*args, **kwargs)) if o.requires_grad)

    return fn, inputs.leaves


@pytest.mark.parametrize("op, sample, device", _gradcheck_params(check_double=False))
def test_gradcheck(op, sample, device):
    info = registry.get(op)
    fn, leaves = _differentiable(info, _sample(info, sample), device, torch.float64)
    assert torch.autograd.gradcheck(fn, tuple(leaves))


@pytest.mark.parametrize("op, sample, device", _gradcheck_params(check_double=True))
def test_gradgradcheck(op, sample, device):
    info = registry.get(op)
    fn, leaves = _differentiable(info, _sample(info, sample), device, torch.float64)
    assert torch.autograd.gradgradcheck(fn, tuple(leaves))


@pytest.mark.parametrize("device", testing.devices())
@pytest.mark.parametrize("op", [info.name for info in OPS if not info.double_backward])
def test_double_backward_raises_at_once(op, device):
    """An op without double backward refuses create_graph=True: a first gradient without a
    graph would make a gradient penalty silently zero."""
    info = registry.get(op)
    dtypes = info.dtypes_with_kernel(torch.device(device))
    if not dtypes:
        pytest.skip(f"no kernel of {op} runs on {device} here")
    dtype = torch.float32 if torch.float32 in dtypes else dtypes[0]
    sample = next(s for s in info.samples() if s.gradcheck)
    fn, leaves = _differentiable(info, sample, device, dtype)
    outputs = fn(*leaves)
    loss = sum(o.sum() for o in outputs)
    with pytest.raises(NotImplementedError, match=rf"fusednn\.ops\.\w+: double backward .*not supported"):
        torch.autograd.grad(loss, leaves, create_graph=True)
    # without create_graph the same gradient is fine
    assert all(g is not None for g in torch.autograd.grad(sum(o.sum() for o in fn(*leaves)), leaves,
                                                          allow_unused=True)[:1])


# --------------------------------------------------------------------------- bad inputs


def _bad_params():
    return [pytest.param(info.name, case.name, id=f"{info.name}-{case.name}") for info in OPS
            for case in info.bad_inputs()]


@pytest.mark.parametrize("op, case", _bad_params())
def test_bad_input_raises_naming_the_argument(op, case):
    info = registry.get(op)
    bad = next(c for c in info.bad_inputs() if c.name == case)
    with pytest.raises(bad.error) as raised:
        info.function(*bad.args, **bad.kwargs)
    message = str(raised.value)
    assert re.search(bad.match, message), f"message {message!r} does not match {bad.match!r}"
    assert message.startswith(f"{info.qualified_name}: "), message


def test_bad_input_messages_share_one_form():
    """``fusednn.ops.<op>: <argument> must be <expected>; got <actual>`` (or an unsupported
    combination, said as such)."""
    for info in OPS:
        for bad in info.bad_inputs():
            with pytest.raises(Exception) as raised:
                info.function(*bad.args, **bad.kwargs)
            message = str(raised.value)
            if isinstance(raised.value, NotImplementedError):
                continue
            assert re.match(rf"{re.escape(info.qualified_name)}: .+ must be .+; got .+", message), (info.name, message)


# --------------------------------------------------------------------------- dispatch


def _ops_with(backend: str) -> list[str]:
    return [info.name for info in OPS if info.kernel(backend) is not None]


@pytest.mark.parametrize("op", _ops_with("triton"))
def test_interpreter_never_gets_bfloat16(op, monkeypatch):
    """Triton's CPU interpreter computes bfloat16 wrongly; bfloat16 CPU tensors must go to a
    C++ kernel or the reference, and still give the right answer."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    info = registry.get(op)
    cpu = torch.device("cpu")
    assert info.select(cpu, torch.bfloat16) != "triton"
    if info.kernel("cpu") is None:
        assert info.select(cpu, torch.bfloat16) == "reference"
    with fusednn.use_backend("triton"), pytest.raises(NotImplementedError, match="bfloat16"):
        info.select(cpu, torch.bfloat16)
    sample = next(s for s in info.samples() if s.low_precision)
    calls = testing.fusednn_calls(info, sample, "cpu", torch.bfloat16)
    assert all(not testing.is_triton_op(c.op) for c in calls)
    testing.compare_sample(info, sample, "cpu", torch.bfloat16)


def test_every_kernel_dtype_is_a_float_dtype():
    for info in OPS:
        for kernel in info.kernels:
            assert kernel.backend in ("triton", "cuda", "cpu"), (info.name, kernel.backend)
            assert kernel.dtypes and set(kernel.dtypes) <= set(fusednn._validate.FLOAT_DTYPES), info.name


@pytest.mark.parametrize("op", [info.name for info in OPS])
def test_forced_backend_that_cannot_serve_raises(op):
    info = registry.get(op)
    cpu = torch.device("cpu")
    for backend in ("triton", "cuda", "cpu"):
        kernel = info.kernel(backend)
        with fusednn.use_backend(backend):
            if kernel is None:
                with pytest.raises(NotImplementedError, match=f"backend '{backend}' cannot run here: the op has no"):
                    info.select(cpu, torch.float32)
            elif backend == "cuda":
                with pytest.raises(NotImplementedError, match="cuda"):
                    info.select(cpu, torch.float32)
        if kernel is not None and torch.float64 not in kernel.dtypes:
            with fusednn.use_backend(backend), pytest.raises(NotImplementedError, match=f"{op}.*float64"):
                info.select(cpu, torch.float64)
    with fusednn.use_backend("reference"):
        assert info.select(cpu, torch.float32) == "reference"


def test_reference_backend_runs_no_kernel():
    for info in OPS:
        sample = next(s for s in info.samples() if s.gradcheck or s.low_precision)
        with fusednn.use_backend("reference"):
            assert not testing.fusednn_calls(info, sample, "cpu", torch.float32), info.name


# --------------------------------------------------------------------------- the registry itself


def test_every_public_op_is_registered_and_exported():
    names = sorted(info.name for info in OPS)
    assert sorted(fusednn.ops.__all__) == names
    for info in OPS:
        assert getattr(fusednn.ops, info.name) is info.function
        assert info.function.__doc__, f"{info.name} has no docstring"
        assert info.samples() and info.bad_inputs(), f"{info.name} needs samples and bad inputs"
        assert len({s.name for s in info.samples()}) == len(info.samples()), f"{info.name}: sample names repeat"
        assert any(s.gradcheck for s in info.samples()) or info.kernels == (), f"{info.name}: no tiny sample"
        assert any(s.opcheck for s in info.samples()), f"{info.name}: no opcheck sample"


def test_register_refuses_a_second_op_of_the_same_name():
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.get("lstm"))
