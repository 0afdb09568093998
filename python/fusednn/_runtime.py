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

Force one with ``with fusednn.use_backend(name):`` (per thread) or the ``FUSEDNN_BACKEND``
environment variable; forcing a backend that cannot serve the inputs raises. Which
backend serves which dtypes is declared per op in ``fusednn.registry``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from typing import Iterator

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


# Read once: dispatch asks on every call, and torch.compile cannot trace into the extension.
_EXTENSION_HAS_CUDA = _C is not None and bool(_C.build_info()["cuda"])


def extension_has_cuda() -> bool:
    return _EXTENSION_HAS_CUDA


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

# The backend forced by ``use_backend``, per thread: a block in one thread leaves the
# others alone. torch.compile traces attribute reads of a threading.local and guards on
# their values, so a compiled function follows the backend of the thread that calls it.
_override = threading.local()


def _check_backend_name(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where} must be one of {', '.join(repr(b) for b in BACKENDS)}; got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force the kernel backend of every fusednn op called by this thread inside the block.

    ``name`` is one of ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpu"``, ``"reference"``.
    Blocks nest; other threads keep their own choice (``FUSEDNN_BACKEND`` or ``auto``).
    """
    _check_backend_name(name, "fusednn.use_backend: name")
    previous = getattr(_override, "name", None)
    _override.name = name
    try:
        yield
    finally:
        _override.name = previous


def requested_backend() -> str:
    """The backend asked for: ``use_backend`` if active, else ``FUSEDNN_BACKEND``, else ``auto``."""
    name = getattr(_override, "name", None)
    if name is not None:
        return name
    return _check_backend_name(os.environ.get("FUSEDNN_BACKEND", "auto"), "the environment variable FUSEDNN_BACKEND")


def why_unavailable(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None if ``backend``'s kernels can run on ``device`` with ``dtype`` here, else the reason.
    (Whether an op has a kernel for that backend and dtype is the op registry's business.)"""
    if backend == "reference":
        return None
    if backend == "triton":
        if not triton_available():
            return _TRITON_ERROR
        if device.type == "cuda":
            return None
        if device.type == "cpu" and interpreter_enabled():
            if dtype == torch.bfloat16:
                return ("Triton's CPU interpreter computes bfloat16 wrongly (its tl.dot multiplies the raw bit "
                        "patterns), so bfloat16 CPU tensors run the reference")
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



def export_families(package: str, path, namespace: dict, helpers: tuple[str, ...] = ()) -> list[str]:
    """Imports every family module of ``package`` (``fusednn.ops``, ``.reference``, ``.nn``)
    and puts the names in each one's ``__all__`` into the package's ``namespace``; returns
    them. A new family module is picked up by its presence: no list to extend. ``helpers``
    are modules imported (reached as ``package.<module>``) whose names stay in them."""
    import importlib
    import pkgutil

    exported = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        if info.name in helpers:
            continue
        for name in module.__all__:
            namespace[name] = getattr(module, name)
            exported.append(name)
    return sorted(exported)
