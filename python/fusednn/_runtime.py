"""Runtime plumbing shared by every op: the compiled extension, backend selection,
and output poisoning for tests.

Backends
--------
``auto`` (default)  CUDA tensors: the op's fastest GPU kernel. CPU tensors: the C++
                    kernel if the op has one, else its Triton kernel when
                    ``TRITON_INTERPRET=1`` is set, else the plain-PyTorch reference.
``cuda``            the C++/CUDA kernel (CUDA tensors only).
``cpu``             the C++ CPU kernel (CPU tensors only).
``triton``          the Triton kernel (CUDA tensors, or CPU tensors under
                    ``TRITON_INTERPRET=1``).
``reference``       the plain-PyTorch reference, on any device.

Force one with ``with fusednn.use_backend(name):`` or the ``FUSEDNN_BACKEND``
environment variable; forcing a backend that cannot serve the inputs raises.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Iterator, Sequence

import torch

BACKENDS = ("auto", "triton", "cuda", "cpu", "reference")

# --------------------------------------------------------------------------- extension

def _load_extension():
    """Imports fusednn._C: the build in the package, or the one in FUSEDNN_EXTENSION_DIR
    when that is set (``make sanitize`` points it at an ASan/UBSan build)."""
    directory = os.environ.get("FUSEDNN_EXTENSION_DIR")
    if not directory:
        from fusednn import _C as module

        return module
    import glob
    import importlib.util
    import sys

    paths = sorted(glob.glob(os.path.join(directory, "_C*.so")))
    if not paths:
        raise ImportError(f"FUSEDNN_EXTENSION_DIR={directory} holds no _C*.so")
    spec = importlib.util.spec_from_file_location("fusednn._C", paths[0])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fusednn._C"] = module
    spec.loader.exec_module(module)
    return module


try:
    _C = _load_extension()  # importing registers the torch.ops.fusednn.* kernels
    _EXTENSION_ERROR: str | None = None
except ImportError as exc:  # a source tree that was never built
    _C = None
    _EXTENSION_ERROR = (
        f"fusednn._C could not be imported ({exc}); build it with "
        "`pip install --no-build-isolation -e .`"
    )


def extension():
    """The compiled module ``fusednn._C``; raises ImportError with the reason if it is missing."""
    if _C is None:
        raise ImportError(_EXTENSION_ERROR)
    return _C


def extension_has_cuda() -> bool:
    return _C is not None and bool(_C.build_info()["cuda"])


# --------------------------------------------------------------------------- triton


def interpreter_enabled() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Decided once at import (find_spec does not import triton), so that select_backend
# stays traceable by torch.compile.
_TRITON_ERROR: str | None = None if importlib.util.find_spec("triton") else "triton is not installed"


def triton_available() -> bool:
    return _TRITON_ERROR is None


# --------------------------------------------------------------------------- backend choice

# A plain module global (not a ContextVar) so that torch.compile can trace and guard on it.
_backend_override: str | None = None


def _check_backend_name(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force the kernel backend of every fusednn op inside the block.

    ``name`` is one of ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpu"``, ``"reference"``.
    """
    global _backend_override
    previous = _backend_override
    _backend_override = _check_backend_name(name, "fusednn.use_backend(name)")
    try:
        yield
    finally:
        _backend_override = previous


def requested_backend() -> str:
    """The backend asked for: ``use_backend`` if active, else ``FUSEDNN_BACKEND``, else ``auto``."""
    if _backend_override is not None:
        return _backend_override
    return _check_backend_name(os.environ.get("FUSEDNN_BACKEND", "auto"), "environment variable FUSEDNN_BACKEND")


def _why_not(backend: str, device: torch.device, kernels: Sequence[str]) -> str | None:
    """None if ``backend`` can serve tensors on ``device``, else the reason it cannot."""
    if backend == "reference":
        return None
    if backend not in kernels:
        return f"the op has no {backend} kernel (it has: {', '.join(kernels) or 'none'})"
    if backend == "triton":
        if not triton_available():
            return _TRITON_ERROR
        if device.type == "cuda":
            return None
        if device.type == "cpu" and interpreter_enabled():
            return None
        return f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); got {device.type} tensors"
    if _C is None:
        return _EXTENSION_ERROR
    if backend == "cpu":
        return None if device.type == "cpu" else f"the cpu backend takes CPU tensors; got {device.type} tensors"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend takes CUDA tensors; got {device.type} tensors"
        if not extension_has_cuda():
            return "fusednn._C was built without CUDA kernels (see `python -m fusednn info`)"
        return None
    raise AssertionError(backend)


def select_backend(op: str, device: torch.device, kernels: Sequence[str]) -> str:
    """Pick the backend that runs ``op`` on ``device``.

    ``kernels`` lists the kernel backends the op has, fastest first for CUDA tensors
    (e.g. ``("cuda", "cpu")`` or ``("triton",)``). Returns one of ``kernels`` or
    ``"reference"``; raises NotImplementedError if a forced backend cannot serve.
    """
    requested = requested_backend()
    if requested == "auto":
        order = list(kernels)
        if device.type == "cpu" and "cpu" in order:  # the native C++ kernel beats the interpreter
            order.remove("cpu")
            order.insert(0, "cpu")
        for backend in order:
            if _why_not(backend, device, kernels) is None:
                return backend
        return "reference"
    reason = _why_not(requested, device, kernels)
    if reason is not None:
        raise NotImplementedError(f"fusednn.ops.{op}: backend {requested!r} cannot run here: {reason}")
    return requested


# --------------------------------------------------------------------------- poisoning

_POISON = os.environ.get("FUSEDNN_POISON", "0") == "1"


def poison_enabled() -> bool:
    return _POISON


def set_poison_outputs(enabled: bool) -> None:
    """Fill freshly allocated floating-point outputs with NaN (Python and C++ ops)."""
    global _POISON
    _POISON = bool(enabled)
    if _C is not None:
        _C._set_poison_outputs(_POISON)


if _POISON and _C is not None:
    _C._set_poison_outputs(True)


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last dim has unit stride (or size <= 1), else a contiguous copy:
    the kernels take any other strides but load the last dim as contiguous vectors."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def empty(*size, **kwargs) -> torch.Tensor:
    """``torch.empty`` for kernel outputs: NaN-filled while poisoning is on."""
    out = torch.empty(*size, **kwargs)
    if _POISON and out.is_floating_point():
        out.fill_(float("nan"))
    return out

