"""``python -m fusednn check``: every op once, forward and backward, against its
float64 reference on the present device; a pass/fail table and exit code 1 on any failure.

Each case returns the kernel's outputs and gradients, the float64 reference's, and
(for float16/bfloat16) PyTorch's own result in that precision for the 2x rule.
"""

from __future__ import annotations

import dataclasses
import traceback
from typing import Callable

import torch

from . import _runtime, ops, reference, testing


@dataclasses.dataclass
class Result:
    op: str
    device: str
    dtype: str
    backend: str
    status: str  # "pass" | "FAIL" | "skip"
    detail: str


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    dy = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    return list(torch.autograd.grad(out, inputs, dy))


def _leaves(tensors: list[torch.Tensor], dtype: torch.dtype, device) -> list[torch.Tensor]:
    return [t.detach().to(device=device, dtype=dtype).requires_grad_(True) for t in tensors]


def _compare(name: str, fn_ours: Callable, fn_ref: Callable, inputs: list[torch.Tensor], dtype, device) -> str:
    """Run ours at (dtype, device) and the reference in float64 on the CPU; assert closeness."""
    ours_in = _leaves(inputs, dtype, device)
    out = fn_ours(*ours_in)
    got = [out] + _grads(out, ours_in, 0)
    ref_in = _leaves(inputs, torch.float64, "cpu")
    ref_out = fn_ref(*ref_in)
    want = [ref_out] + _grads(ref_out, ref_in, 0)
    lowp = [None] * len(got)
    if dtype in testing.ULP:
        base_in = _leaves(inputs, dtype, device)
        with _runtime.use_backend("reference"):  # PyTorch's own computation in this precision
            base_out = fn_ref(*base_in)
        lowp = [base_out] + _grads(base_out, base_in, 0)
    worst = 0.0
    for i, (a, e, b) in enumerate(zip(got, want, lowp)):
        label = f"{name} {'output' if i == 0 else f'grad[{i - 1}]'}"
        testing.assert_close(a, e, name=label, rtol=1e-4 if dtype == torch.float32 else None, lowp_baseline=b)
        worst = max(worst, testing.relative_error(a, e))
    return f"max rel err {worst:.1e} (output + {len(got) - 1} grads)"


def _case_lstm(dtype, device) -> str:
    T, B, I, H = 9, 3, 12, 10
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H)
    w_ih, w_hh = torch.randn(4 * H, I) * 0.3, torch.randn(4 * H, H) * 0.3
    b_ih, b_hh = torch.randn(4 * H), torch.randn(4 * H)

    def run(impl):
        return lambda x, h0, c0, w_ih, w_hh, b_ih, b_hh: impl(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)[0]

    return _compare("lstm", run(ops.lstm), run(reference.lstm), [x, h0, c0, w_ih, w_hh, b_ih, b_hh], dtype, device)


def _case_layer_norm(dtype, device) -> str:
    x, w, b = torch.randn(6, 37), torch.randn(37), torch.randn(37)
    return _compare(
        "layer_norm",
        lambda x, w, b: ops.layer_norm(x, (37,), w, b),
        lambda x, w, b: reference.layer_norm(x, (37,), w, b),
        [x, w, b],
        dtype,
        device,
    )


def _case_rms_norm(dtype, device) -> str:
    x, w = torch.randn(6, 37), torch.randn(37)
    return _compare(
        "rms_norm",
        lambda x, w: ops.rms_norm(x, (37,), w, eps=1e-6),
        lambda x, w: reference.rms_norm(x, (37,), w, eps=1e-6),
        [x, w],
        dtype,
        device,
    )


def _case_attention(dtype, device) -> str:
    # GQA, a causal window, a float bias and softcap in one case; lengths cross tile borders.
    B, Hq, Hkv, T, D = 2, 4, 2, 97, 64
    q, k, v = torch.randn(B, Hq, T, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    bias = torch.randn(1, Hq, T, T)
    options = dict(causal=True, window=(40, 0), softcap=20.0)

    def ours(q, k, v, bias):
        return ops.attention(q, k, v, attn_bias=bias, **options)

    def ref(q, k, v, bias):  # upcast=False: the low-precision baseline of the 2x rule
        return reference.attention(q, k, v, attn_bias=bias, upcast=False, **options)

    return _compare("attention", ours, ref, [q, k, v, bias], dtype, device)


# op name -> (case, the kernel backends the op has)
CASES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "lstm": (_case_lstm, ("cuda", "cpu")),
    "layer_norm": (_case_layer_norm, ("triton",)),
    "rms_norm": (_case_rms_norm, ("triton",)),
    "attention": (_case_attention, ("triton",)),
}


def run_checks(device: torch.device | None = None) -> list[Result]:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    results = []
    for name, (case, kernels) in CASES.items():
        for dtype in dtypes:
            dtype_name = str(dtype).replace("torch.", "")
            backend = _runtime.select_backend(name, device, kernels)
            if backend == "reference" and _runtime.requested_backend() == "auto":
                why = "no kernel serves this device here (Triton needs a GPU, or TRITON_INTERPRET=1)"
                results.append(Result(name, device.type, dtype_name, backend, "skip", why))
                continue
            torch.manual_seed(0)
            try:
                detail = case(dtype, device)
                results.append(Result(name, device.type, dtype_name, backend, "pass", detail))
            except Exception as exc:  # a failed check is reported, never raised
                last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                results.append(Result(name, device.type, dtype_name, backend, "FAIL", last))
    return results


def print_results(results: list[Result]) -> None:
    print(f"{'op':<12} {'device':<7} {'dtype':<9} {'backend':<10} {'status':<6} detail")
    for r in results:
        print(f"{r.op:<12} {r.device:<7} {r.dtype:<9} {r.backend:<10} {r.status:<6} {r.detail}")
    failed = sum(r.status == "FAIL" for r in results)
    passed = sum(r.status == "pass" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped")
