"""Correctness helpers shared by the test suite and ``python -m fusednn check``.

The comparison harness
----------------------
``compare_sample(info, sample, device, dtype)`` runs an op three ways and compares the
output and the gradient of every input that requires grad:

* ours: the op on the inputs cast to ``dtype`` on ``device`` (dispatch picks the kernel);
* the truth: the op's plain-PyTorch reference in float64 on the CPU;
* the baseline (float16/bfloat16 only): PyTorch's own computation in that precision
  (the op's ``baseline``, by default its reference run in that precision).

Tolerances
----------
* float64: relative error <= 1e-10; float32: <= 1e-5. Relative error is
  ``max|actual - expected| / max|expected|``: normalised by the tensor's scale, so
  elements near zero do not blow it up. A sample may set another tolerance for one
  output (a tf32 product, a long reduction, a value ~0 in exact arithmetic) and says why.
* float16/bfloat16 (the FlashAttention rule): the error against the float64 truth is at
  most twice the error of the same PyTorch computation done in that precision, plus a
  floor of ``FLOOR[dtype] * max|expected|``: half a rounding of the largest expected
  element (a quarter of the dtype's machine epsilon, relative to the expected tensor's own
  scale, so small tensors such as gradients get no slack beyond their size). It covers
  the case where PyTorch's computation happens to round well and ours rounds the other way;
  it stays below what a 1% error costs in bfloat16. Results in float32 of a low-precision
  computation (a log-sum-exp, a float32 statistic) follow the same rule.
* Positions where the expected value is infinite (a log-sum-exp of -inf) must hold the
  same value; NaN anywhere else fails.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.nn.utils.rnn import PackedSequence
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import _runtime
from ._validate import LOW_PRECISION, dtype_name
from .registry import OpInfo, Sample, Tolerance, View

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# Machine epsilon of the low precisions.
ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
# The 2x rule's floor, relative to the expected tensor's scale: half a unit roundoff.
FLOOR = {dtype: eps / 4 for dtype, eps in ULP.items()}


# --------------------------------------------------------------------------- errors


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"shape mismatch: got {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return 0.0
    diff = (actual.detach().double().cpu() - expected.detach().double().cpu()).abs()
    if torch.isnan(diff).any():
        return float("nan")
    return diff.max().item()


def scale(t: torch.Tensor) -> float:
    return t.detach().double().abs().max().item() if t.numel() else 0.0


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max|expected|`` (NaN anywhere gives NaN)."""
    err = max_abs_error(actual, expected)
    return err / max(scale(expected), 1e-300) if err == err else err


@dataclasses.dataclass
class Comparison:
    """One tensor's comparison: its error, the bound it had to meet, and the verdict."""

    name: str
    error: float  # max abs error
    bound: float  # max abs error allowed
    relative: float  # error / max|expected|
    rule: str

    @property
    def ok(self) -> bool:
        return self.error <= self.bound  # NaN fails

    def message(self) -> str:
        return (f"{self.name}: max error {self.error:.3e} (relative {self.relative:.2e}) exceeds the bound "
                f"{self.bound:.3e} ({self.rule})")


def _split_nonfinite(actual: torch.Tensor, expected: torch.Tensor, name: str):
    """Checks that actual matches expected where expected is infinite or NaN and returns
    both (as float64 CPU tensors) with those positions zeroed."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    special = ~torch.isfinite(e)
    if special.any():
        same = (a[special] == e[special]) | (torch.isnan(a[special]) & torch.isnan(e[special]))
        if not bool(same.all()):
            raise AssertionError(f"{name}: differs from the reference where the reference is infinite or NaN")
        a, e = a.masked_fill(special, 0.0), e.masked_fill(special, 0.0)
    return a, e, special


def compare(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    name: str = "output",
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    lowp_baseline: Optional[torch.Tensor] = None,
    precision: Optional[torch.dtype] = None,
) -> Comparison:
    """Compares a kernel's result with a float64 reference (see the module docstring).

    ``precision`` is the dtype the computation ran in (default: actual's dtype); for
    float16/bfloat16 ``lowp_baseline`` (PyTorch's computation in that precision) is
    required and the 2x rule applies, otherwise the relative tolerance ``rtol`` (default
    by dtype). ``atol`` adds an absolute allowance (a sample's stated reason).
    """
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{name}: expected a tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    precision = precision or actual.dtype
    a, e, special = _split_nonfinite(actual, expected, name)
    err = max_abs_error(a, e)
    size = scale(e)
    extra = atol or 0.0
    if precision in ULP:
        if lowp_baseline is None:
            raise ValueError(f"{name}: a {dtype_name(precision)} computation needs lowp_baseline for the 2x rule")
        b = lowp_baseline.detach().double().cpu()
        if tuple(b.shape) != tuple(e.shape):
            raise AssertionError(f"{name}: the baseline has shape {tuple(b.shape)}, expected {tuple(e.shape)}")
        base = max_abs_error(b.masked_fill(special, 0.0), e)
        if base != base:
            raise AssertionError(f"{name}: the low-precision baseline has NaN where the reference does not")
        bound = 2.0 * base + FLOOR[precision] * size + extra
        rule = f"2 x PyTorch's {dtype_name(precision)} error {base:.3e} + floor"
    else:
        tol = rtol if rtol is not None else RTOL.get(precision)
        if tol is None:
            raise ValueError(f"{name}: no default tolerance for {precision}; pass rtol")
        bound = tol * size + extra
        rule = f"relative {tol:.0e}"
    if extra:
        rule += f" + atol {extra:.0e}"
    return Comparison(name, err, bound, err / max(size, 1e-300) if err == err else err, rule)


def assert_close(actual, expected, *, name="output", rtol=None, atol=None, lowp_baseline=None, precision=None,
                 ) -> Comparison:
    """``compare`` that raises AssertionError when the bound is not met."""
    result = compare(actual, expected, name=name, rtol=rtol, atol=atol, lowp_baseline=lowp_baseline,
                     precision=precision)
    if not result.ok:
        raise AssertionError(result.message())
    return result


# --------------------------------------------------------------------------- sample inputs


class _Leaf:
    """Placeholder for the i-th differentiable input in an input template."""

    def __init__(self, index: int):
        self.index = index


class _Laid:
    """Placeholder for ``layout(tensor or leaf)``."""

    def __init__(self, inner: Any, layout: Callable):
        self.inner = inner
        self.layout = layout


class _Packed:
    """Placeholder for a PackedSequence whose data is a (possibly differentiable) input."""

    def __init__(self, data, batch_sizes, sorted_indices, unsorted_indices):
        self.data, self.batch_sizes = data, batch_sizes
        self.sorted_indices, self.unsorted_indices = sorted_indices, unsorted_indices


class Inputs:
    """A sample's arguments cast to (dtype, device). ``leaves`` are the copies of the inputs
    that require grad, ``names`` theirs (``"x"``, ``"hx[0]"``); ``build(leaves)`` gives
    ``(args, kwargs)`` made of the given leaves (gradcheck passes its own)."""

    def __init__(self, fn: Callable, sample: Sample, dtype: torch.dtype, device):
        self.leaves: list[torch.Tensor] = []
        self.names: list[str] = []
        bound = _positional_names(fn)
        self._args = tuple(self._convert(v, bound[i] if i < len(bound) else f"args[{i}]", dtype, device)
                           for i, v in enumerate(sample.args))
        self._kwargs = {k: self._convert(v, k, dtype, device) for k, v in sample.kwargs.items()}

    def _convert(self, value: Any, name: str, dtype, device) -> Any:
        if isinstance(value, View):
            return _Laid(self._convert(value.base, name, dtype, device), value.layout)
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                copy = value.detach().to(device=device, dtype=dtype)
                if value.requires_grad:
                    self.leaves.append(copy.requires_grad_())
                    self.names.append(name)
                    return _Leaf(len(self.leaves) - 1)
                return copy
            return value.to(device)
        if isinstance(value, PackedSequence):  # batch_sizes stay on the CPU, as torch wants them
            data = self._convert(value.data, name, dtype, device)
            indices = [i.to(device) if i is not None else None for i in (value.sorted_indices, value.unsorted_indices)]
            return _Packed(data, value.batch_sizes, *indices)
        if isinstance(value, (tuple, list)):
            return type(value)(self._convert(v, f"{name}[{i}]", dtype, device) for i, v in enumerate(value))
        return value

    def build(self, leaves: Optional[Sequence[torch.Tensor]] = None) -> tuple[tuple, dict]:
        leaves = self.leaves if leaves is None else leaves

        def fill(value):
            if isinstance(value, _Leaf):
                return leaves[value.index]
            if isinstance(value, _Laid):
                return value.layout(fill(value.inner))
            if isinstance(value, _Packed):
                return PackedSequence(fill(value.data), value.batch_sizes, value.sorted_indices, value.unsorted_indices)
            if isinstance(value, (tuple, list)):
                return type(value)(fill(v) for v in value)
            return value

        return tuple(fill(v) for v in self._args), {k: fill(v) for k, v in self._kwargs.items()}


def _positional_names(fn: Callable) -> list[str]:
    """The names of ``fn``'s positional parameters (what the sample's args are called)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    names = []
    for p in parameters:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    return names


def floating_outputs(result: Any) -> list[torch.Tensor]:
    """The floating tensors of an op's result, flattened in pytree order."""
    leaves, _ = tree_flatten(result)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


@dataclasses.dataclass
class Run:
    outputs: list[torch.Tensor]
    grads: list[torch.Tensor]  # one per differentiable input (zeros where it got none)
    differentiated: list[int]  # indices of the outputs that carried a gradient


def cotangent(index: int, output: torch.Tensor) -> torch.Tensor:
    """The gradient fed into output ``index`` (float64 on the CPU): random, and the same for
    every run of a comparison since it depends only on the index and the shape."""
    generator = torch.Generator().manual_seed(7919 * (index + 1))
    return torch.randn(output.shape, generator=generator, dtype=torch.float64)


def run_sample(fn: Callable, inputs: Inputs, differentiate: Optional[list[int]] = None,
               parameters: Sequence[torch.Tensor] = ()) -> Run:
    """Calls ``fn`` on the inputs, then (when inputs require grad) backpropagates
    ``sum_i <output_i, cotangent(i)>`` over the outputs in ``differentiate`` (default: the
    outputs that require grad) into the inputs and ``parameters`` (a module's)."""
    args, kwargs = inputs.build()
    outputs = floating_outputs(fn(*args, **kwargs))
    if differentiate is None:
        differentiate = [i for i, o in enumerate(outputs) if o.requires_grad]
    leaves = list(inputs.leaves) + list(parameters)
    grads = [torch.zeros_like(leaf) for leaf in leaves]
    used = [i for i in differentiate if outputs[i].requires_grad]
    if leaves and used:
        cotangents = [cotangent(i, outputs[i]).to(device=outputs[i].device, dtype=outputs[i].dtype) for i in used]
        got = torch.autograd.grad([outputs[i] for i in used], leaves, cotangents, allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(got, leaves)]
    return Run([o.detach() for o in outputs], [g.detach() for g in grads], differentiate)


def output_names(info: OpInfo, count: int) -> list[str]:
    if count <= len(info.outputs):
        return list(info.outputs[:count])
    return [f"output[{i}]" for i in range(count)]


def compare_sample(info: OpInfo, sample: Sample, device, dtype: torch.dtype, *, raise_on_failure: bool = True,
                   ) -> list[Comparison]:
    """Runs ``info``'s op on ``sample`` at (dtype, device), its reference in float64 on the
    CPU and, for float16/bfloat16, its baseline at that precision; compares every output
    and every input gradient. Raises AssertionError listing the failures (unless told not to)."""
    device = torch.device(device)
    ours_inputs = Inputs(info.function, sample, dtype, device)
    ours = run_sample(info.function, ours_inputs)
    truth = run_sample(info.reference, Inputs(info.function, sample, torch.float64, "cpu"), ours.differentiated)
    baseline = None
    if dtype in LOW_PRECISION:
        baseline = run_sample(info.baseline or info.reference, Inputs(info.function, sample, dtype, device),
                              ours.differentiated)
    names = output_names(info, len(ours.outputs)) + [f"grad {info.input_names.get(n, n)}" for n in ours_inputs.names]
    return _compare_runs(f"{info.name} [{sample.name}]", names, ours, truth, baseline, sample.tolerances, device,
                         dtype, raise_on_failure)


def compare_modules(ours: torch.nn.Module, theirs: torch.nn.Module, sample: Sample, device, dtype: torch.dtype, *,
                    rtol: Optional[float] = None, raise_on_failure: bool = True) -> list[Comparison]:
    """A drop-in module against its torch twin (same parameters): ``ours`` at (dtype, device),
    a float64 CPU copy of ``theirs`` as the truth and, for float16/bfloat16, a copy of
    ``theirs`` at that precision as the baseline. ``sample`` holds the forward arguments.
    Compares every output, input gradient and parameter gradient (``rtol`` replaces the
    float32/float64 default for all of them; say why where you pass it)."""
    device = torch.device(device)
    ours = ours.to(device=device, dtype=dtype)
    forward = ours.forward  # bound: its signature names the arguments
    truth_module = copy.deepcopy(theirs).to(device="cpu", dtype=torch.float64)
    ours_inputs = Inputs(forward, sample, dtype, device)
    run = run_sample(ours, ours_inputs, parameters=list(ours.parameters()))
    truth = run_sample(truth_module, Inputs(forward, sample, torch.float64, "cpu"), run.differentiated,
                       parameters=list(truth_module.parameters()))
    baseline = None
    if dtype in LOW_PRECISION:
        low = copy.deepcopy(theirs).to(device=device, dtype=dtype)
        baseline = run_sample(low, Inputs(forward, sample, dtype, device), run.differentiated,
                              parameters=list(low.parameters()))
    names = ([f"output[{i}]" for i in range(len(run.outputs))] + [f"grad {n}" for n in ours_inputs.names]
             + [f"grad {n}" for n, _ in ours.named_parameters()])
    tolerances = {name: Tolerance("the caller's", rtol=rtol) for name in names} if rtol else {}
    return _compare_runs(f"{type(ours).__name__} [{sample.name}]", names, run, truth, baseline,
                         {**tolerances, **sample.tolerances}, device, dtype, raise_on_failure)


def _compare_runs(what: str, names: list[str], ours: Run, truth: Run, baseline: Optional[Run], tolerances: dict,
                  device: torch.device, dtype: torch.dtype, raise_on_failure: bool) -> list[Comparison]:
    if len(truth.outputs) != len(ours.outputs):
        raise AssertionError(f"{what}: {len(ours.outputs)} floating outputs, the reference gives "
                             f"{len(truth.outputs)}")
    actuals, expecteds = ours.outputs + ours.grads, truth.outputs + truth.grads
    baselines = baseline.outputs + baseline.grads if baseline is not None else [None] * len(names)
    lowp = dtype if dtype in LOW_PRECISION else None
    results = []
    for name, actual, expected, base in zip(names, actuals, expecteds, baselines):
        tolerance: Tolerance = tolerances.get(name, Tolerance(""))
        results.append(compare(actual, expected, name=name, rtol=tolerance.rtol, atol=tolerance.atol,
                               lowp_baseline=base, precision=lowp or dtype))
    failures = [r.message() for r in results if not r.ok]
    if failures and raise_on_failure:
        raise AssertionError(f"{what} on {device.type} {dtype_name(dtype)}:\n  " + "\n  ".join(failures))
    return results


# --------------------------------------------------------------------------- opcheck


class CapturedCall:
    def __init__(self, op, args, kwargs, forward: bool):
        self.op, self.args, self.kwargs, self.forward = op, args, kwargs, forward


class _Capture(TorchDispatchMode):
    """Records every call of a ``torch.ops.fusednn`` op below autograd."""

    def __init__(self):
        super().__init__()
        self.calls: list[CapturedCall] = []
        self.forward = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "namespace", None) == "fusednn":
            self.calls.append(CapturedCall(func, args, kwargs, self.forward))
        return func(*args, **kwargs)


def is_triton_op(op) -> bool:
    """True for a ``torch.ops.fusednn`` op made with ``torch.library.triton_op`` (a Python
    custom op), False for a C++ one."""
    from torch._library.custom_ops import _maybe_get_opdef

    return _maybe_get_opdef(op._name) is not None


@contextlib.contextmanager
def recording_fusednn_calls() -> Iterator[list[CapturedCall]]:
    """Records the ``torch.ops.fusednn`` ops called inside the block (below autograd);
    yields the list it fills."""
    capture = _Capture()
    with capture:
        yield capture.calls


def fusednn_calls(info: OpInfo, sample: Sample, device, dtype: torch.dtype) -> list[CapturedCall]:
    """The registered fusednn ops a sample calls (forward, then backward), with their arguments."""
    inputs = Inputs(info.function, sample, dtype, device)
    capture = _Capture()
    with capture:
        args, kwargs = inputs.build()
        outputs = [o for o in floating_outputs(info.function(*args, **kwargs)) if o.requires_grad]
        capture.forward = False
        if outputs and inputs.leaves:
            torch.autograd.grad(outputs, inputs.leaves, [torch.randn_like(o) for o in outputs], allow_unused=True)
    return capture.calls


# AOTAutograd traces a triton_op's body; the interpreter executes kernels eagerly and
# cannot run on the fake tensors of that trace, so under TRITON_INTERPRET=1 opcheck
# runs every test but test_aot_dispatch_dynamic on CPU tensors of Triton ops.
_OPCHECK_ALL = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def opcheck(op, args, kwargs=None, *, triton: bool = False) -> None:
    """``torch.library.opcheck`` with the test set this machine can run (``triton=True``
    marks a ``triton_op``)."""
    on_cpu = all(not (isinstance(a, torch.Tensor) and a.is_cuda) for a in args)
    tests = _OPCHECK_ALL[:-1] if (triton and on_cpu and _runtime.interpreter_enabled()) else _OPCHECK_ALL
    torch.library.opcheck(op, args, kwargs, test_utils=tests)


def opcheck_call(call: CapturedCall, triton: bool) -> None:
    """opcheck of a captured call: a forward op keeps its inputs' requires_grad (so the
    autograd registration is checked); a backward op gets detached inputs."""
    def prepare(value):
        if isinstance(value, torch.Tensor):
            copy = value.detach().clone()
            return copy.requires_grad_(value.requires_grad) if call.forward and value.is_floating_point() else copy
        if isinstance(value, (tuple, list)):
            return type(value)(prepare(v) for v in value)
        return value

    opcheck(call.op, tuple(prepare(a) for a in call.args), {k: prepare(v) for k, v in call.kwargs.items()},
            triton=triton)


# --------------------------------------------------------------------------- test plumbing


@contextlib.contextmanager
def poison_outputs(enabled: bool = True) -> Iterator[None]:
    """Inside the block, kernel outputs start as NaN so unwritten elements show."""
    previous = _runtime.poison_enabled()
    _runtime.set_poison_outputs(enabled)
    try:
        yield
    finally:
        _runtime.set_poison_outputs(previous)


def devices() -> list[str]:
    """The devices tests run on: the CPU always, CUDA when present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def kernel_dtypes(info: OpInfo) -> list[tuple[str, torch.dtype]]:
    """(device, dtype) pairs where ``auto`` runs one of the op's kernels on this machine
    (CPU: C++ kernels, and Triton's interpreter when TRITON_INTERPRET=1, which never takes
    bfloat16; CUDA when present)."""
    return [(device, dtype) for device in devices() for dtype in info.dtypes_with_kernel(torch.device(device))]


def device_dtypes(kernel: str) -> list[tuple[str, torch.dtype]]:
    """(device, dtype) pairs a family's tests cover on this machine, by kind of kernel:
    ``"cpp"``: CPU float64/float32; ``"triton"``: CPU float32/float16 under the interpreter
    only; both: CUDA float32/float16/bfloat16 when present. (Per op, ``kernel_dtypes`` reads
    the registry instead.)"""
    pairs: list[tuple[str, torch.dtype]] = []
    if kernel == "cpp":
        pairs += [("cpu", torch.float64), ("cpu", torch.float32)]
    elif kernel == "triton":
        if _runtime.interpreter_enabled():
            pairs += [("cpu", torch.float32), ("cpu", torch.float16)]
    else:
        raise ValueError(f"fusednn.testing.device_dtypes: kernel must be 'cpp' or 'triton'; got {kernel!r}")
    if torch.cuda.is_available():
        pairs += [("cuda", torch.float32), ("cuda", torch.float16), ("cuda", torch.bfloat16)]
    return pairs
