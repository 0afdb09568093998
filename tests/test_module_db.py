"""torch's generic module tests over every fusednn drop-in module.

Every module registered with ``registry.drop_in(twin)`` runs the checks of PyTorch's own
module test suite with the inputs of torch's ModuleInfo for its twin
(``torch.testing._internal.common_modules.module_db``): forward (against the twin holding
the same weights, and torch's reference_fn where the entry has one), factory kwargs,
repr, pickling and state_dict, non-contiguous inputs, gradcheck and gradgradcheck (total
and partial derivatives, float64), memory formats of outputs and gradients, the
train/eval flag, error inputs (torch's exception type and message), ``.to()``, and
``torch.jit.script`` where torch's twin compiles with it.
torch's own skips for the twin (its ModuleInfo decorators) apply; its expected failures
do not (a drop-in may do better than the twin). A new drop-in joins with its decorator.
"""

from __future__ import annotations

import io
import re
from itertools import product

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten

import fusednn  # noqa: F401  (registers the drop-ins)
from fusednn import registry, testing

common_modules = pytest.importorskip("torch.testing._internal.common_modules",
                                     reason="torch's module tests need expecttest (make deps)")
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402
from torch.testing._internal.common_utils import freeze_rng_state  # noqa: E402

DTYPES = (torch.float32, torch.float64)
TESTS = ("forward", "factory_kwargs", "repr", "save_load", "non_contiguous_tensors", "grad", "gradgrad",
         "memory_format", "if_train_and_eval_modes_differ", "errors", "to")


def _infos(drop_in: registry.DropIn):
    return [info for info in module_db if info.module_cls is drop_in.twin]


def test_every_drop_in_has_a_module_info():
    """A drop-in without torch's ModuleInfo would silently get no generic tests."""
    assert registry.drop_ins(), "no drop-in modules registered"
    for drop_in in registry.drop_ins():
        assert _infos(drop_in), f"{drop_in.qualified_name}: torch's module_db has no entry for {drop_in.twin}"


# The tests a drop-in's extra forward keywords (DropIn.forward_kwargs) run with: those of
# the forward computation. They run in training mode only (train and eval differ by dropout,
# which the ops' own tests cover); the module mechanics (construction, repr, pickling, .to)
# do not depend on them, nor does the non-contiguous test (the ops' registry samples hold
# non-contiguous views of every input; through the interpreter it took over a minute).
FORWARD_TESTS = ("forward", "grad", "gradgrad", "memory_format")


def _params(test: str, dtypes=DTYPES):
    params = []
    for drop_in in registry.drop_ins():
        for info in _infos(drop_in):
            modes = (True, False) if info.train_and_eval_differ else (True,)
            if test == "if_train_and_eval_modes_differ":
                modes = (True,)
            combinations = list(product(testing.devices(), [d for d in dtypes if d in info.dtypes], modes, ({},)))
            if test in FORWARD_TESTS:
                combinations += product(testing.devices(), [d for d in dtypes if d in info.dtypes], (True,),
                                        drop_in.forward_kwargs)
            for device, dtype, training, kwargs in combinations:
                variant = "".join(f"-{k}={v}" for k, v in kwargs.items())
                mode = "train" if training else "eval"
                params.append(pytest.param(drop_in, info, device, dtype, training, kwargs,
                                           id=f"{drop_in.module.__name__}-{device}-{str(dtype)[6:]}-{mode}{variant}"))
    return params


def _skip_if_torch_skips(info, test: str, device: str, dtype: torch.dtype, training: bool) -> None:
    """torch's own skips for this test of the twin apply (e.g. memory_format of LayerNorm)."""
    for decorate in info.decorators:
        if not decorate.is_active("TestModule", f"test_{test}", device, dtype, {"training": training}):
            continue
        for decorator in decorate.decorators:
            # unittest.skip(reason)'s decorator; device-specific ones (skipMPS, ...) check
            # their device themselves and do not apply here.
            if getattr(decorator, "__qualname__", "").startswith("skip.<locals>"):
                pytest.skip(f"torch's ModuleInfo for {info.name} skips test_{test}")


def _inputs(info, device, dtype, training, kwargs, requires_grad):
    inputs = info.module_inputs_func(info, device=device, dtype=dtype, requires_grad=requires_grad,
                                     training=training)
    inputs = [i for i in inputs if i.forward_input is not None]
    for module_input in inputs:
        module_input.forward_input.kwargs.update(kwargs)
    return inputs


def _construct(cls, module_input, device, dtype, training):
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    module = cls(*args, **kwargs)
    module.to(device).to(dtype)
    module.train(training)
    return module


def _pair(drop_in, module_input, device, dtype, training):
    """The drop-in and its twin with the same weights."""
    ours = _construct(drop_in.module, module_input, device, dtype, training)
    theirs = _construct(drop_in.twin, module_input, device, dtype, training)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _has_dropout(module) -> bool:
    return module.training and any(isinstance(getattr(m, "dropout", 0), float) and m.dropout > 0
                                   for m in module.modules())


def _assert_same(actual, expected, what: str, rtol=None) -> None:
    actual_leaves, expected_leaves = tree_leaves(actual), tree_leaves(expected)
    assert len(actual_leaves) == len(expected_leaves), what
    for i, (a, e) in enumerate(zip(actual_leaves, expected_leaves)):
        if isinstance(e, torch.Tensor):
            assert isinstance(a, torch.Tensor) and a.shape == e.shape and a.dtype == e.dtype, f"{what}[{i}]"
            if e.is_floating_point():
                testing.assert_close(a, e, name=f"{what}[{i}]", rtol=rtol)
            else:
                assert torch.equal(a, e), f"{what}[{i}]"
        else:
            assert a == e, f"{what}[{i}]"


def _rtol(dtype):
    # float32: the twin's own kernels (MKL, oneDNN) order their sums differently.
    return 1e-4 if dtype == torch.float32 else None


def _check_parameters(module, device, dtype):
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        assert tensor.device.type == device, name
        if tensor.is_floating_point():
            assert tensor.dtype == dtype, name


# --------------------------------------------------------------------------- forward, construction, pickling


@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs", _params("forward"))
def test_forward(drop_in, info, device, dtype, training, kwargs):
    """Outputs equal the twin's with the same weights (and torch's reference_fn);
    ``.float()``/``.double()`` convert the parameters."""
    _skip_if_torch_skips(info, "forward", device, dtype, training)
    for module_input in _inputs(info, device, dtype, training, kwargs, requires_grad=False):
        ours, theirs = _pair(drop_in, module_input, device, dtype, training)
        args, fkwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        with freeze_rng_state():
            outputs = ours(*args, **fkwargs)
        if not _has_dropout(ours):
            with freeze_rng_state():
                expected = theirs(*args, **fkwargs)
            _assert_same(outputs, expected, f"{module_input.desc or 'output'}", _rtol(dtype))
        if module_input.reference_fn is not None and not kwargs:  # written for torch's own inputs
            # float32's tolerances: torch's reference_fns for the norms compute in float32.
            torch.testing.assert_close(outputs, module_input.reference_fn(ours, *args, **fkwargs), rtol=1.3e-6,
                                       atol=1e-5)
        getattr(ours, "double" if dtype == torch.float64 else "float")()
        ours(*args, **fkwargs)
        _check_parameters(ours, device, dtype)


@pytest.mark.parametrize("drop_in", registry.drop_ins(), ids=lambda d: d.module.__name__)
def test_drop_in_runs_fusednn_ops(drop_in):
    """The generic tests test fusednn: on some of torch's inputs the drop-in calls fusednn's ops."""
    for info, kwargs in product(_infos(drop_in), ({},) + drop_in.forward_kwargs):
        for module_input in _inputs(info, "cpu", torch.float32, True, kwargs, requires_grad=False):
            module = _construct(drop_in.module, module_input, "cpu", torch.float32, True)
            with testing.recording_fusednn_calls() as calls:
                module(*module_input.forward_input.args, **module_input.forward_input.kwargs)
            if calls:
                return
    pytest.fail(f"{drop_in.qualified_name} ran no fusednn op on any of torch's inputs")


@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs", _params("factory_kwargs"))
def test_factory_kwargs(drop_in, info, device, dtype, training, kwargs):
    """device and dtype reach every parameter and buffer. As in torch's own test, only modules
    that create parameters or buffers take them (torch's pooling modules take neither)."""
    checked = 0
    for module_input in _inputs(info, device, dtype, training, kwargs, requires_grad=False):
        args, ckwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        plain = drop_in.module(*args, **ckwargs)
        if not [*plain.parameters(), *plain.buffers()]:
            continue
        module = drop_in.module(*args, **{**ckwargs, "device": device, "dtype": dtype})
        _check_parameters(module, device, dtype)
        checked += 1
    if not checked:
        pytest.skip(f"torch's {drop_in.twin.__name__} creates no parameters or buffers: it takes no device or dtype")


@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs", _params("repr", dtypes=(torch.float32,)))
def test_repr(drop_in, info, device, dtype, training, kwargs):
    """repr and str are the twin's, with the class name."""
    for module_input in _inputs(info, device, dtype, training, kwargs, requires_grad=False):
        ours, theirs = _pair(drop_in, module_input, device, dtype, training)
        expected = repr(theirs).replace(drop_in.twin.__name__, drop_in.module.__name__, 1)
        assert repr(ours) == expected and str(ours) == expected


@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs", _params("save_load"))
def test_save_load(drop_in, info, device, dtype, training, kwargs):
    """A pickled module gives the same outputs; the state_dict has the twin's keys and
    round-trips, also with weights_only=True."""
    for module_input in _inputs(info, device, dtype, training, kwargs, requires_grad=False):
        with freeze_rng_state():
            ours, theirs = _pair(drop_in, module_input, device, dtype, training)
            state = ours.state_dict()
            assert list(state) == list(theirs.state_dict())
            args, fkwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            output = ours(*args, **fkwargs)
            buffer = io.BytesIO()
            torch.save(ours, buffer)
            buffer.seek(0)
            copied = torch.load(buffer, weights_only=False)
            assert type(copied) is drop_in.module
            if not _has_dropout(ours):
                _assert_same(copied(*args, **fkwargs), output, "output of the unpickled module")
            buffer = io.BytesIO()
            torch.save(state, buffer)
            for weights_only in (False, True):
                buffer.seek(0)
                loaded = torch.load(buffer, weights_only=weights_only)
                assert loaded.keys() == state.keys()
                assert all(torch.equal(loaded[k], state[k]) for k in state)


# --------------------------------------------------------------------------- gradients


def _traverse(obj, fn):
    return tree_map(lambda t: fn(t) if isinstance(t, torch.Tensor) else t, obj)


def _backward_all(outputs, grads):
    for out, grad in zip(tree_leaves(outputs), tree_leaves(grads)):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.backward(grad, retain_graph=True)


def _make_non_contiguous(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 0:
        return t
    out = torch.repeat_interleave(t.detach(), 2, dim=-1)[..., ::2]
    return out.requires_grad_(t.requires_grad)


@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs", _params("non_contiguous_tensors"))
def test_non_contiguous_tensors(drop_in, info, device, dtype, training, kwargs):
    """Non-contiguous inputs and output gradients give the contiguous ones' outputs and gradients."""
    _skip_if_torch_skips(info, "non_contiguous_tensors", device, dtype, training)
    for module_input in _inputs(info, device, dtype, training, kwargs, requires_grad=True):
        args, fkwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        if not any(isinstance(t, torch.Tensor) and t.dim() > 0 for t in tree_leaves((args, fkwargs))):
            continue
        module = _construct(drop_in.module, module_input, device, dtype, training)
        results = []
        variants = [(args, fkwargs), _traverse((args, fkwargs), _make_non_contiguous)]
        grad_outputs = None
        for (in_args, in_kwargs), non_contiguous_grad in product(variants, (False, True)):
            leaves = [t for t in tree_leaves((in_args, in_kwargs)) if isinstance(t, torch.Tensor)]
            for t in [*leaves, *module.parameters()]:
                t.grad = None
            with freeze_rng_state():
                out = module(*in_args, **in_kwargs)
            if grad_outputs is None:
                grad_outputs = _traverse(out, lambda o: torch.randn_like(o) if o.requires_grad else None)
            grads = _traverse(grad_outputs, _make_non_contiguous) if non_contiguous_grad else grad_outputs
            _backward_all(out, grads)
            results.append((out, [t.grad for t in leaves if t.requires_grad],
                            [p.grad for p in module.parameters()]))
        for out, input_grads, param_grads in results[1:]:
            _assert_same(out, results[0][0], "output")
            _assert_same(input_grads, results[0][1], "input gradients", rtol=_rtol(dtype))
            _assert_same(param_grads, results[0][2], "parameter gradients", rtol=_rtol(dtype))


def _eval_computes_as_training(drop_in: registry.DropIn, module_input) -> bool:
    """Whether eval mode computes what training mode does for this input, so that its
    gradient checks would repeat training mode's: a recurrent module (whose forward reads
    ``training`` only for the dropout between layers) constructed without dropout."""
    return issubclass(drop_in.twin, torch.nn.RNNBase) and not module_input.constructor_input.kwargs.get("dropout")


# The second derivatives of the recurrent drop-ins all come from one mechanism (autograd
# through the op's reference, registry.differentiable_backward), whose options the
# registry's gradgradchecks cover op by op; here every third of torch's module inputs
# (3 is coprime to the 2-way flags torch's input lists alternate) checks the module plumbing
# of multi-layer, bidirectional and packed calls. The first derivatives run on every input.
RECURRENT_GRADGRAD_STRIDE = 3


def _gradient_check_params(dtypes=(torch.float64,), second_order=False):
    params = []
    for param in _params("grad", dtypes=dtypes):
        drop_in, info, device, dtype, training, kwargs = param.values
        inputs = _inputs(info, device, dtype, training, kwargs, requires_grad=False)
        recurrent = issubclass(drop_in.twin, (torch.nn.RNNBase, torch.nn.RNNCellBase))
        params += [pytest.param(*param.values, index, id=f"{param.id}-input{index}")
                   for index, module_input in enumerate(inputs)
                   if (training or not _eval_computes_as_training(drop_in, module_input))
                   and not (second_order and recurrent and index % RECURRENT_GRADGRAD_STRIDE)]
    return params


def _gradient_checks(drop_in, info, device, dtype, training, kwargs, index, check):
    """torch's: the total derivative over inputs, parameters and keyword tensors, then each
    parameter and keyword tensor alone. In gradcheck's fast mode (the Jacobian against random
    vectors): slow mode's one evaluation per input element takes over ten minutes here for
    the double backward of the LSTM inputs alone."""
    module_input = _inputs(info, device, dtype, training, kwargs, requires_grad=True)[index]
    module = _construct(drop_in.module, module_input, device, dtype, training)
    params = tuple(module.parameters())
    args, fkwargs = module_input.forward_input.args, module_input.forward_input.kwargs
    tensor_kwargs = [(k, v) for k, v in fkwargs.items() if isinstance(v, torch.Tensor)]
    other_kwargs = {k: v for k, v in fkwargs.items() if not isinstance(v, torch.Tensor)}
    spec = None

    def run(*flat):
        values = tree_unflatten(list(flat), spec)
        new_args = values[:len(args)]
        new_kwargs = dict(zip([k for k, _ in tensor_kwargs], values[len(args) + len(params):]))
        with freeze_rng_state():
            return [t for t in tree_leaves(module(*new_args, **new_kwargs, **other_kwargs)) if t is not None]

    def do_check():
        nonlocal spec
        flat, spec = tree_flatten((*args, *params, *(v for _, v in tensor_kwargs)))
        assert check(run, tuple(flat), nondet_tol=0.0, fast_mode=True), module_input.desc

    do_check()
    switchable = [*params, *(v for _, v in tensor_kwargs)]
    was = [t.requires_grad for t in switchable]
    for t in switchable:
        t.requires_grad_(False)
    for t, old in zip(switchable, was):
        if old:
            t.requires_grad_(True)
            do_check()
            t.requires_grad_(False)
    for t, old in zip(switchable, was):
        t.requires_grad_(old)


@pytest.mark.slow
@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs, index", _gradient_check_params())
def test_grad(drop_in, info, device, dtype, training, kwargs, index):
    _skip_if_torch_skips(info, "grad", device, dtype, training)
    _gradient_checks(drop_in, info, device, dtype, training, kwargs, index, torch.autograd.gradcheck)


@pytest.mark.slow
@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs, index",
                         _gradient_check_params(second_order=True))
def test_gradgrad(drop_in, info, device, dtype, training, kwargs, index):
    if not info.supports_gradgrad:
        pytest.skip(f"torch's ModuleInfo for {info.name} declares no double backward")
    _skip_if_torch_skips(info, "gradgrad", device, dtype, training)
    _gradient_checks(drop_in, info, device, dtype, training, kwargs, index, torch.autograd.gradgradcheck)


# --------------------------------------------------------------------------- layouts, modes, errors


def _memory_formats(args):
    ranks = {t.dim() for t in tree_leaves(args) if isinstance(t, torch.Tensor)}
    if 4 in ranks:
        return [torch.contiguous_format, torch.channels_last], [torch.preserve_format, torch.contiguous_format,
                                                                torch.channels_last]
    if 5 in ranks:
        return [torch.contiguous_format, torch.channels_last_3d], [torch.preserve_format, torch.contiguous_format,
                                                                   torch.channels_last_3d]
    return [torch.contiguous_format], [torch.preserve_format, torch.contiguous_format]


def _to_memory_format(fmt, obj):
    def convert(t):
        if (fmt == torch.channels_last and t.dim() != 4) or (fmt == torch.channels_last_3d and t.dim() != 5):
            return t.detach().clone().requires_grad_(t.requires_grad)
        return t.detach().clone().to(memory_format=fmt).requires_grad_(t.requires_grad)

    return _traverse(obj, convert)


def _check_layout(tensors, input_fmt, module_fmt, affects_output):
    for t in tree_leaves(tensors):
        if not isinstance(t, torch.Tensor):
            continue
        if t.dim() == 4 and (input_fmt == torch.channels_last or
                             (module_fmt == torch.channels_last and affects_output)):
            assert t.numel() == 0 or t.is_contiguous(memory_format=torch.channels_last), t.stride()
        elif t.dim() == 5 and (input_fmt == torch.channels_last_3d or
                               (module_fmt == torch.channels_last_3d and affects_output)):
            assert t.numel() == 0 or t.is_contiguous(memory_format=torch.channels_last_3d), t.stride()
        else:
            assert t.is_contiguous(), (tuple(t.shape), t.stride())


def _differentiable(tree):
    return tuple(t for t in tree_leaves(tree) if isinstance(t, torch.Tensor) and t.requires_grad)


@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs", _params("memory_format"))
def test_memory_format(drop_in, info, device, dtype, training, kwargs):
    """Outputs and gradients (inputs' and parameters') in torch's layouts for every input and
    module memory format, with the contiguous values."""
    _skip_if_torch_skips(info, "memory_format", device, dtype, training)
    for module_input in _inputs(info, device, dtype, training, kwargs, requires_grad=True):
        with freeze_rng_state():
            module = _construct(drop_in.module, module_input, device, dtype, training)
            args, fkwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            expected = module(*args, **fkwargs)
            outputs = _differentiable(expected)
            check_grads = training and bool(outputs)
            if check_grads:
                grad_outputs = tuple(torch.rand_like(t) for t in outputs)
                inputs = _differentiable((args, fkwargs, list(module.parameters())))
                expected_grads = torch.autograd.grad(outputs, inputs, grad_outputs)
            input_fmts, module_fmts = _memory_formats(args)
            for input_fmt, module_fmt in product(input_fmts, module_fmts):
                in_args, in_kwargs = _to_memory_format(input_fmt, (args, fkwargs))
                module.to(memory_format=module_fmt)
                result = module(*in_args, **in_kwargs)
                _assert_same(result, expected, "output", _rtol(dtype))
                _check_layout(result, input_fmt, module_fmt, info.module_memformat_affects_out)
                if check_grads:
                    outs = _differentiable(result)
                    grads = torch.autograd.grad(
                        outs, _differentiable((in_args, in_kwargs, list(module.parameters()))),
                        tuple(torch.empty_like(o).copy_(g) for o, g in zip(outs, grad_outputs)))
                    _assert_same(grads, expected_grads, "gradients", _rtol(dtype))
                    _check_layout(grads, input_fmt, module_fmt, info.module_memformat_affects_out)


@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs",
                         _params("if_train_and_eval_modes_differ", dtypes=(torch.float32,)))
def test_if_train_and_eval_modes_differ(drop_in, info, device, dtype, training, kwargs):
    """The forward reads ``training`` only if torch's ModuleInfo says train and eval differ."""
    for module_input in _inputs(info, device, dtype, training, kwargs, requires_grad=False):
        module = _construct(drop_in.module, module_input, device, dtype, training)
        delattr(module, "training")
        try:
            module(*module_input.forward_input.args, **module_input.forward_input.kwargs)
        except AttributeError as error:
            if "'training'" not in str(error):
                raise
            assert info.train_and_eval_differ, f"{drop_in.qualified_name} reads training, torch's twin does not"


def _error_params():
    return [p for p in _params("errors") if p.values[1].module_error_inputs_func is not None]


@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs", _error_params())
def test_errors(drop_in, info, device, dtype, training, kwargs):
    """torch's error inputs raise torch's exception type with torch's message."""
    errors = info.module_error_inputs_func(info, device=device, dtype=dtype, requires_grad=False, training=training)
    for error in errors:
        module_input = error.module_error_input
        args, ckwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error.error_type, match=error.error_regex):
                drop_in.module(*args, **ckwargs)
        else:
            module = drop_in.module(*args, **ckwargs)
            with pytest.raises(error.error_type) as raised:
                module(*module_input.forward_input.args, **module_input.forward_input.kwargs)
            assert re.search(error.error_regex, str(raised.value)), (error.error_regex, str(raised.value))


@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs", _params("torchscript", dtypes=(torch.float64,)))
def test_torchscript(drop_in, info, device, dtype, training, kwargs):
    """Where torch's twin compiles with torch.jit.script, the drop-in does too and the
    scripted module gives the eager outputs."""
    compiled = 0
    for module_input in _inputs(info, device, dtype, training, kwargs, requires_grad=False):
        ours, theirs = _pair(drop_in, module_input, device, dtype, training)
        try:
            torch.jit.script(theirs)
        except Exception:  # noqa: BLE001  (whatever TorchScript raises: not a case torch supports)
            continue
        scripted = torch.jit.script(ours)
        compiled += 1
        if _has_dropout(ours):
            continue
        args, fkwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        _assert_same(scripted(*args, **fkwargs), ours(*args, **fkwargs), "scripted output")
    if not compiled:
        pytest.skip(f"torch's {drop_in.twin.__name__} compiles with torch.jit.script for none of these inputs")


def _sum_backward(outputs) -> None:
    first = tree_leaves(outputs)[0]
    if first.requires_grad:
        first.sum().backward()


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("drop_in, info, device, dtype, training, kwargs", _params("to", dtypes=(torch.float32,)))
def test_to(drop_in, info, device, dtype, training, kwargs, swap):
    """``.to(dtype)`` keeps Parameters (swapped in place with swap_module_params_on_conversion)
    and the module still runs, forward and backward, after a round trip."""
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        for module_input in _inputs(info, device, dtype, training, kwargs, requires_grad=False):
            module = _construct(drop_in.module, module_input, device, dtype, training)
            args, fkwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            _sum_backward(module(*args, **fkwargs))
            ids = [id(p) for p in module.parameters()]
            for target in (torch.float64, torch.float32):
                module.to(dtype=target)
                assert all(isinstance(p, torch.nn.Parameter) and p.dtype == target for p in module.parameters())
                if swap:
                    assert [id(p) for p in module.parameters()] == ids
            module.zero_grad()
            _sum_backward(module(*args, **fkwargs))
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)


def test_skips_follow_torch():
    """The skip lookup works: torch's ModuleInfo for LayerNorm skips test_memory_format."""
    info = next(i for i in module_db if i.module_cls is torch.nn.LayerNorm)
    with pytest.raises(pytest.skip.Exception):
        _skip_if_torch_skips(info, "memory_format", "cpu", torch.float32, True)
    _skip_if_torch_skips(info, "forward", "cpu", torch.float32, True)  # no skip: returns

