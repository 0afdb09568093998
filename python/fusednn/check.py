"""``python -m fusednn check``: every registered op, forward and backward, against its
float64 reference on the present device, through the comparison harness of
``fusednn.testing``; a pass/fail table and exit code 1 on any failure.

The samples checked are each op's opcheck samples (a handful chosen to cover the op's
options) in float32 and, on a GPU, bfloat16 and float16 (there the 2x rule applies).
"""

from __future__ import annotations

import dataclasses
import traceback
from typing import Optional, Sequence

import torch

from . import _runtime, registry, testing
from ._validate import LOW_PRECISION, dtype_name


@dataclasses.dataclass
class Result:
    op: str
    sample: str
    device: str
    dtype: str
    backend: str
    status: str  # "pass" | "FAIL" | "skip"
    detail: str


def check_samples(info: registry.OpInfo, dtype: torch.dtype) -> list[registry.Sample]:
    """The samples ``check`` runs for an op in a dtype."""
    samples = [s for s in info.samples() if dtype not in LOW_PRECISION or s.low_precision]
    chosen = [s for s in samples if s.opcheck]
    return chosen or samples[:1]


def run_checks(device: Optional[torch.device] = None, ops: Optional[Sequence[str]] = None) -> list[Result]:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = [torch.float32, torch.bfloat16, torch.float16] if device.type == "cuda" else [torch.float32]
    infos = [registry.get(name) for name in ops] if ops else registry.ops()
    results = []
    for info in infos:
        for dtype in dtypes:
            results.extend(_check_op(info, device, dtype))
    return results


def _check_op(info: registry.OpInfo, device: torch.device, dtype: torch.dtype) -> list[Result]:
    def result(sample, status, detail, backend="-"):
        return Result(info.name, sample, device.type, dtype_name(dtype), backend, status, detail)

    try:
        backend = info.select(device, dtype)
    except NotImplementedError as exc:  # a forced backend that cannot serve here
        return [result("-", "skip", str(exc).split(": ", 1)[-1])]
    if backend == "reference" and _runtime.requested_backend() == "auto":
        why = "no kernel of this op serves this device and dtype here"
        if info.kernel("triton") is not None and device.type == "cpu":
            why += " (Triton kernels need a GPU, or TRITON_INTERPRET=1 for float32/float16)"
        return [result("-", "skip", why, backend)]
    results = []
    for sample in check_samples(info, dtype):
        torch.manual_seed(0)
        try:
            comparisons = testing.compare_sample(info, sample, device, dtype, raise_on_failure=False)
        except Exception as exc:  # a crash is reported as a failure, never raised
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            results.append(result(sample.name, "FAIL", last, backend))
            continue
        failed = [c for c in comparisons if not c.ok]
        if failed:
            results.append(result(sample.name, "FAIL", "; ".join(c.message() for c in failed), backend))
        else:
            worst = max(comparisons, key=lambda c: c.error / c.bound if c.bound > 0 else 0.0, default=None)
            detail = (f"{len(comparisons)} tensors; closest to its bound: {worst.name} "
                      f"({worst.error:.1e} of {worst.bound:.1e})" if worst else "no tensors")
            results.append(result(sample.name, "pass", detail, backend))
    return results


def print_results(results: list[Result]) -> None:
    width = max([len(r.op) for r in results] + [2])
    sample_width = max([len(r.sample) for r in results] + [6])
    print(f"{'op':<{width}} {'sample':<{sample_width}} {'device':<6} {'dtype':<8} {'backend':<9} {'status':<6} detail")
    for r in results:
        print(f"{r.op:<{width}} {r.sample:<{sample_width}} {r.device:<6} {r.dtype:<8} {r.backend:<9} {r.status:<6} "
              f"{r.detail}")
    failed = sum(r.status == "FAIL" for r in results)
    passed = sum(r.status == "pass" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped")


def print_registry() -> None:
    """``check --list``: every registered op, its kernels and the dtypes each serves."""
    infos = registry.ops()
    width = max(len(info.name) for info in infos)
    print(f"{'op':<{width}}  {'family':<16} kernels (dtypes)")
    for info in infos:
        kernels = "; ".join(f"{k.backend} ({', '.join(dtype_name(d) for d in k.dtypes)})" for k in info.kernels)
        print(f"{info.name:<{width}}  {info.family:<16} {kernels or 'none: reference only'}")
