"""The op registry: the one place that says what each public fusednn op is made of.

An ``OpInfo`` names the op's function, its plain-PyTorch reference, its kernels and the
dtypes each one serves, a generator of sample calls, its bad-input cases and its
benchmark shapes. Everything else reads it:

* dispatch: ``OpInfo.select(device, dtype)`` picks the backend that runs a call (the
  op functions call it), so a dtype a kernel does not serve goes to the next one or to
  the reference (bfloat16 never reaches Triton's CPU interpreter, float64 never reaches
  a kernel without float64);
* ``python -m fusednn check`` runs every op's opcheck samples on the present device;
* the test suite (``tests/test_registry.py``) runs, for every op, every sample against
  the float64 reference with the comparison harness of ``fusednn.testing`` (outputs and
  the gradient of every input), ``torch.library.opcheck`` of every registered
  ``torch.ops.fusednn`` op the samples call, ``gradcheck`` (and ``gradgradcheck`` where
  double backward is supported) in float64 where a kernel takes float64, and every
  bad-input case;
* ``python -m fusednn bench`` takes the benchmark shapes; the compile checks take the
  kernels' compile variants.

Drop-in modules (``fusednn.nn``) register with the ``drop_in(twin)`` class decorator;
``drop_ins()`` lists them for the module tests.

Adding an op means: its kernel, its op module, its reference, one ``register(OpInfo(...))``
call at the end of the op module, and its samples and bad inputs in ``fusednn.cases``.
Family modules are found by name, so no other list names the op.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch
import torch.utils._pytree

from . import _runtime
from ._validate import dtype_list, dtype_name

# --------------------------------------------------------------------------- declarations


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One kernel backend of an op and the dtypes it serves."""

    backend: str  # "cuda" (C++/CUDA), "cpu" (C++), "triton"
    dtypes: tuple[torch.dtype, ...]
    # Triton: a function returning the variants the compile check builds for sm_80/sm_90a
    # (see tests/test_triton_compile.py); every Triton kernel of the op appears in one.
    compile_variants: Optional[Callable[[], list]] = None


@dataclasses.dataclass
class View:
    """A sample input given as ``layout(base)``: the harness casts ``base`` to the dtype and
    device under test, then applies ``layout`` (a transpose, a slice...), so the op sees a
    non-contiguous view. Gradients are compared for ``base`` when it requires grad."""

    base: torch.Tensor
    layout: Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """A per-output tolerance that replaces the default, with the reason."""

    why: str
    rtol: Optional[float] = None  # float32/float64 relative error
    atol: Optional[float] = None  # absolute error added to any bound (an output ~0 in exact arithmetic)


@dataclasses.dataclass
class Sample:
    """One call of an op. ``args`` / ``kwargs`` hold float64 CPU tensors (and ``View`` s,
    tuples, lists and plain values); floating tensors are cast to the dtype under test and
    every tensor moves to the device. Inputs that require grad get their gradients compared."""

    name: str
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    # output or "grad <input>" name -> Tolerance
    tolerances: dict = dataclasses.field(default_factory=dict)
    # small enough for gradcheck (and gradgradcheck) in float64
    gradcheck: bool = False
    # torch.library.opcheck of every registered op this sample calls (a few samples per op
    # cover its schema's optional arguments; opcheck runs each op several times)
    opcheck: bool = False
    # part of the float16/bfloat16 grid. The 2x rule compares the maxima of two error
    # distributions; on a tensor of a few dozen elements that statistic is too noisy (a
    # correct kernel exceeds it now and then), so tiny samples stay in float32/float64.
    low_precision: bool = True
    slow: bool = False


@dataclasses.dataclass
class BadInput:
    """A call that must raise ``error`` with a message matching ``match`` (re.search)."""

    name: str
    args: tuple
    kwargs: dict
    error: type
    match: str


@dataclasses.dataclass(frozen=True)
class BenchShapes:
    """Benchmark shapes (dicts of the family benchmark's own parameters) per device and mode."""

    gpu: tuple = ()
    gpu_quick: tuple = ()
    cpu: tuple = ()
    cpu_quick: tuple = ()

    def for_device(self, device_type: str, quick: bool) -> tuple:
        if device_type == "cuda":
            return self.gpu_quick if quick else self.gpu
        return self.cpu_quick if quick else self.cpu


@dataclasses.dataclass
class OpInfo:
    """Everything about one public op, ``fusednn.ops.<name>``."""

    name: str
    function: Callable
    # Plain PyTorch, the function's signature, any dtype: the float64 truth of the tests and
    # the fallback where no kernel serves.
    reference: Callable
    # Kernel backends, fastest first for CUDA tensors (the C++ CPU kernel goes first for CPU ones).
    kernels: tuple[Kernel, ...]
    family: str
    samples: Callable[[], list[Sample]]
    bad_inputs: Callable[[], list[BadInput]]
    # Names of the floating outputs, in the order the result flattens (pytree order).
    outputs: tuple[str, ...] = ("output",)
    # Names of inputs nested in an argument, as messages should show them ({"hx[0]": "h0"}).
    input_names: dict = dataclasses.field(default_factory=dict)
    # PyTorch's own computation at low precision (the 2x rule's baseline), the function's
    # signature; None: the reference run in that precision.
    baseline: Optional[Callable] = None
    # True: the backward is differentiable (gradgradcheck runs); False: asking for a
    # gradient of the gradient raises NotImplementedError at once.
    double_backward: bool = False
    bench: Optional[BenchShapes] = None

    @property
    def qualified_name(self) -> str:
        return f"fusednn.ops.{self.name}"

    def kernel(self, backend: str) -> Optional[Kernel]:
        return next((k for k in self.kernels if k.backend == backend), None)

    def select(self, device: torch.device, dtype: torch.dtype) -> str:
        """The backend that runs a call on ``device`` with ``dtype``: a kernel backend or
        ``"reference"``. ``auto`` takes the first kernel that serves the dtype and can run
        here (on CPU tensors the C++ kernel first); a forced backend that cannot serve
        raises NotImplementedError saying why."""
        requested = _runtime.requested_backend()
        if requested == "reference":
            return "reference"
        if requested == "auto":
            for kernel in self._auto_order(device):
                if dtype in kernel.dtypes and _runtime.why_unavailable(kernel.backend, device, dtype) is None:
                    return kernel.backend
            return "reference"
        kernel = self.kernel(requested)
        if kernel is None:
            have = ", ".join(k.backend for k in self.kernels) or "none"
            reason = f"the op has no {requested} kernel (it has: {have})"
        elif dtype not in kernel.dtypes:
            reason = f"its {requested} kernel takes {dtype_list(kernel.dtypes)}; got {dtype_name(dtype)}"
        else:
            reason = _runtime.why_unavailable(requested, device, dtype)
        if reason is not None:
            raise NotImplementedError(f"{self.qualified_name}: backend {requested!r} cannot run here: {reason}")
        return requested

    def _auto_order(self, device: torch.device) -> list[Kernel]:
        if device.type != "cpu":
            return list(self.kernels)
        # the native C++ kernel beats the interpreter
        return [k for k in self.kernels if k.backend == "cpu"] + [k for k in self.kernels if k.backend != "cpu"]

    def dtypes_with_kernel(self, device: torch.device) -> list[torch.dtype]:
        """The dtypes for which ``auto`` runs a kernel (not the reference) on ``device`` here."""
        dtypes = []
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            if any(dtype in k.dtypes and _runtime.why_unavailable(k.backend, device, dtype) is None
                   for k in self.kernels):
                dtypes.append(dtype)
        return dtypes


# --------------------------------------------------------------------------- the registry

_OPS: dict[str, OpInfo] = {}


def register(info: OpInfo) -> OpInfo:
    """Adds ``info``; an op module calls it once per public op, at its end."""
    if info.name in _OPS:
        raise ValueError(f"fusednn.registry.register: an op named {info.name!r} is registered already")
    _OPS[info.name] = info
    return info


def mark(samples: list[Sample], *, opcheck: frozenset = frozenset(), gradcheck: frozenset = frozenset(),
         ) -> list[Sample]:
    """Marks the named samples for opcheck and for gradcheck; returns the list."""
    missing = (set(opcheck) | set(gradcheck)) - {s.name for s in samples}
    if missing:
        raise ValueError(f"no samples named {sorted(missing)}")
    for sample in samples:
        sample.opcheck = sample.opcheck or sample.name in opcheck
        sample.gradcheck = sample.gradcheck or sample.name in gradcheck
    return samples


def get(name: str) -> OpInfo:
    try:
        return _OPS[name]
    except KeyError:
        raise KeyError(f"no fusednn op named {name!r}; registered: {', '.join(_OPS)}") from None


def ops(family: Optional[str] = None) -> list[OpInfo]:
    """Every registered op (of one family), in registration order."""
    return [info for info in _OPS.values() if family is None or info.family == family]


# --------------------------------------------------------------------------- drop-in modules


@dataclasses.dataclass(frozen=True)
class DropIn:
    """A ``fusednn.nn`` module that replaces a torch module (its ``twin``): same constructor,
    parameters, state_dict, inputs, outputs, errors and layouts. ``tests/test_module_db.py``
    runs torch's generic module checks over it with torch's ModuleInfo for the twin and
    compares it with the twin holding the same weights. ``forward_kwargs``: extra forward
    keyword sets the checks also run with (each merged into every one of torch's inputs),
    for paths torch's inputs do not reach (MultiheadAttention's ``need_weights=False``)."""

    module: type
    twin: type
    forward_kwargs: tuple[dict, ...] = ()

    @property
    def qualified_name(self) -> str:
        return f"fusednn.nn.{self.module.__name__}"


_DROP_INS: dict[str, DropIn] = {}


def drop_in(twin: type, *, forward_kwargs: tuple[dict, ...] = ()) -> Callable[[type], type]:
    """Class decorator registering a ``fusednn.nn`` module as a drop-in for torch's ``twin``::

        @registry.drop_in(torch.nn.LSTM)
        class LSTM(torch.nn.LSTM): ...
    """

    def register_module(cls: type) -> type:
        if cls.__name__ in _DROP_INS:
            raise ValueError(f"fusednn.registry.drop_in: a module named {cls.__name__!r} is registered already")
        _DROP_INS[cls.__name__] = DropIn(cls, twin, tuple(forward_kwargs))
        return cls

    return register_module


def drop_ins() -> list[DropIn]:
    """Every registered drop-in module, in registration order."""
    return list(_DROP_INS.values())


# --------------------------------------------------------------------------- double backward


def differentiable_backward(reference: Callable, inputs: Sequence, needs_input_grad: Sequence[bool],
                            grad_outputs: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
    """The first gradient as a differentiable function, for a backward called with
    ``create_graph=True`` (grad mode on inside it) whose fused formula is not differentiable.

    Recomputes the op's differentiable outputs with ``reference(*inputs)`` (plain PyTorch,
    so autograd knows every step) from the inputs the forward saved, and returns autograd's
    gradients of them with a graph: to the inputs and to ``grad_outputs``, so second
    derivatives (gradgradcheck, gradient penalties, Hessian-vector products) are exact.
    ``grad_outputs`` follow the reference's outputs in pytree order (None: no gradient
    flows into that output). Returns one entry per input: the gradient where
    ``needs_input_grad`` (zeros where the outputs do not depend on it), else None.
    Costs the reference's forward and backward: first-order gradients never come here.
    """
    with torch.enable_grad():
        outputs = torch.utils._pytree.tree_leaves(reference(*inputs))
    if len(outputs) != len(grad_outputs):
        raise RuntimeError(f"differentiable_backward: the reference has {len(outputs)} outputs, "
                           f"{len(grad_outputs)} gradients given")
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
    wanted = [i for i, needed in enumerate(needs_input_grad) if needed]
    result: list[Optional[torch.Tensor]] = [None] * len(inputs)
    if not wanted:
        return result
    if pairs:
        grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                    create_graph=True, allow_unused=True)
    else:
        grads = [None] * len(wanted)
    for i, grad in zip(wanted, grads):
        result[i] = torch.zeros_like(inputs[i]) if grad is None else grad
    return result


def check_no_double_backward(op: str) -> None:
    """Called first by a backward formula that is not differentiable: with
    ``create_graph=True`` (grad mode on inside the backward) it raises at once, where a
    first gradient without a graph would make the second one silently zero."""
    if torch.is_grad_enabled():
        raise NotImplementedError(
            f"fusednn.ops.{op}: double backward (a gradient of this op's gradient, as create_graph=True asks) is "
            "not supported yet; compute the first gradient without create_graph, or use the reference backend "
            "(fusednn.use_backend('reference'))"
        )
