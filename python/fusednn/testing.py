"""Correctness helpers shared by the test suite and ``python -m fusednn check``.

Tolerances (see DESIGN.md):

* references run in float64 on the CPU;
* float64 kernels: relative error <= 1e-10; float32: <= 1e-5 (callers pass 1e-4 for
  tf32 or long reductions and say why);
* float16 / bfloat16 (GPU): the FlashAttention rule: the kernel's error against the
  float64 reference is at most twice the error of the same PyTorch computation done
  in that precision, plus an ulp floor of the output's scale.

Relative error is ``max|actual - expected| / max|expected|``: normalised by the
tensor's scale, so elements near zero do not blow it up.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from . import _runtime

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# Machine epsilon of the low precisions, the floor of the 2x rule.
ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.shape != expected.shape:
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
    return err / max(scale(expected), 1e-30) if err == err else err


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    name: str = "output",
    rtol: float | None = None,
    lowp_baseline: torch.Tensor | None = None,
) -> None:
    """Compare a kernel's result with a float64 reference.

    For float16/bfloat16 ``actual``, ``lowp_baseline`` (the same computation done by
    PyTorch in that precision) is required and the 2x rule applies; otherwise the
    relative error must be at most ``rtol`` (default by dtype).
    """
    if actual.dtype in ULP:
        if lowp_baseline is None:
            raise ValueError(f"{name}: {actual.dtype} results need lowp_baseline for the 2x rule")
        err = max_abs_error(actual, expected)
        base = max_abs_error(lowp_baseline, expected)
        bound = 2.0 * base + ULP[actual.dtype] * max(scale(expected), 1.0)
        if not err <= bound:  # NaN fails too
            raise AssertionError(
                f"{name} ({actual.dtype}): max error {err:.3e} exceeds 2 x PyTorch's {base:.3e} + ulp floor "
                f"(bound {bound:.3e})"
            )
        return
    tol = rtol if rtol is not None else RTOL.get(actual.dtype)
    if tol is None:
        raise ValueError(f"{name}: no default tolerance for {actual.dtype}; pass rtol")
    err = relative_error(actual, expected)
    if not err <= tol:
        raise AssertionError(f"{name} ({actual.dtype}): relative error {err:.3e} exceeds {tol:.1e}")


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


def device_dtypes(kernel: str) -> list[tuple[str, torch.dtype]]:
    """(device, dtype) pairs a family's tests cover on this machine.

    ``kernel="cpp"``: C++ CPU kernels in float64/float32; on CUDA float32, float16, bfloat16.
    ``kernel="triton"``: on the CPU only under the interpreter, in float32/float16 (its bf16
    arithmetic is unreliable); on CUDA float32, float16, bfloat16.
    """
    pairs: list[tuple[str, torch.dtype]] = []
    if kernel == "cpp":
        pairs += [("cpu", torch.float64), ("cpu", torch.float32)]
    elif kernel == "triton":
        if _runtime.interpreter_enabled():
            pairs += [("cpu", torch.float32), ("cpu", torch.float16)]
    else:
        raise ValueError(f"kernel must be 'cpp' or 'triton', got {kernel!r}")
    if torch.cuda.is_available():
        pairs += [("cuda", torch.float32), ("cuda", torch.float16), ("cuda", torch.bfloat16)]
    return pairs


# AOTAutograd traces a triton_op's body; the interpreter executes kernels eagerly and
# cannot run on the fake tensors of that trace, so under TRITON_INTERPRET=1 opcheck
# runs every test but test_aot_dispatch_dynamic (on a GPU all of them run).
_OPCHECK_ALL = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def opcheck(op, args, kwargs=None, *, triton: bool = False) -> None:
    """``torch.library.opcheck`` with the test set this machine can run.

    ``triton=True`` marks a ``triton_op``: on CPU tensors (the interpreter) it skips
    test_aot_dispatch_dynamic, for the reason above.
    """
    on_cpu = all(not (isinstance(a, torch.Tensor) and a.is_cuda) for a in args)
    tests = _OPCHECK_ALL[:-1] if (triton and on_cpu) else _OPCHECK_ALL
    torch.library.opcheck(op, args, kwargs, test_utils=tests)
