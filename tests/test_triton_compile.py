"""Every Triton kernel variant compiles to a GPU binary for sm_80 and sm_90a.

The interpreter that runs the Triton kernels on CPU machines skips the compiler, so a
kernel that lowers badly (a layout the backend cannot handle, a dot shape it rejects, too
much shared memory) would only fail on a GPU. This test compiles each variant with the
tile configuration the launcher would pick, in a subprocess with TRITON_INTERPRET=0 (no GPU
needed: triton.compile takes the target), and reports registers and spill bytes in the
pytest summary beside the CUDA kernels'.

Run directly (``python tests/test_triton_compile.py``) it prints the report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

ARCHS = (90, 80)
# Shared memory per block an arch offers (bytes).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
ELEMENT = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def attention_cases() -> list[dict]:
    """(kernel name, pointer types, constexprs, warps, stages) for the exact-attention variants."""
    from fusednn.kernels import exact_attention as ka

    def flags(**overrides):
        base = dict(VARLEN=False, BOTTOM_RIGHT=False, HAS_LEFT=False, HAS_RIGHT=False, SOFTCAP=False, BIAS_KIND=0,
                    DROPOUT=False, PRECISION="tf32")
        return {**base, **overrides}

    everything = flags(VARLEN=True, BOTTOM_RIGHT=True, HAS_LEFT=True, HAS_RIGHT=True, SOFTCAP=True, BIAS_KIND=1,
                       DROPOUT=True)
    variants = [  # (name, dtype, head dim, flags, every arch?)
        ("plain", "bf16", 64, flags(), True),
        ("plain", "bf16", 128, flags(), True),
        ("plain", "bf16", 256, flags(), True),
        ("causal", "bf16", 128, flags(HAS_RIGHT=True), False),
        ("all-options", "bf16", 128, everything, False),
        ("fp32-bool-mask", "fp32", 64, flags(BIAS_KIND=2, PRECISION="ieee"), False),
        ("fp16-window", "fp16", 80, flags(HAS_LEFT=True, HAS_RIGHT=True), False),
    ]
    cases = []
    for name, dtype, d, meta, every_arch in variants:
        tensor = ELEMENT[dtype]
        pointers = dict(Q=tensor, K=tensor, V=tensor, Out=tensor, DOut=tensor, DK=tensor, DV_=tensor, DQ=tensor,
                        Bias="*u8" if meta["BIAS_KIND"] == 2 else "*fp32", Lse="*fp32", Delta="*fp32",
                        DBias="*fp32", DQAcc="*fp32", CuQ="*i32", CuK="*i32", Seed="*i64")
        block_d = max(16, 1 << (d - 1).bit_length())
        dims = dict(D=d, DV=d, BLOCK_D=block_d, BLOCK_DV=block_d)
        archs = ARCHS if every_arch else ARCHS[:1]
        for kernel_pass, fn, extra in (
            ("forward", "_forward_kernel", {}),
            ("dkdv", "_backward_dkdv_kernel", dict(BIAS_GRAD=meta["BIAS_KIND"] == 1, ATOMIC_DQ=name != "plain")),
            ("dq", "_backward_dq_kernel", {}),
        ):
            config = ka.tile_config(kernel_pass, block_d, interpreting=False)
            constexprs = dict(meta, **dims, **extra, BLOCK_M=config.block_m, BLOCK_N=config.block_n)
            for arch in archs:
                cases.append(dict(name=f"attention {kernel_pass} {name} {dtype} D={d}", fn=fn, arch=arch,
                                  pointers=pointers, constexprs=constexprs, warps=config.num_warps,
                                  stages=config.num_stages))
    for arch in ARCHS:
        cases.append(dict(name="attention preprocess bf16 D=128", fn="_backward_preprocess_kernel", arch=arch,
                          pointers=dict(Out="*bf16", DOut="*bf16", Delta="*fp32", CuQ="*i32"),
                          constexprs=dict(BLOCK_M=64, DV=128, BLOCK_DV=128, VARLEN=True), warps=4, stages=1))
    cases.append(dict(name="attention dropout mask", fn="_dropout_mask_kernel", arch=90,
                      pointers=dict(Mask="*i8", Seed="*i64"), constexprs=dict(BLOCK_M=64, BLOCK_N=64), warps=4,
                      stages=1))
    return cases


_FLOAT_SCALARS = {"sm_scale", "softcap", "dropout_p", "dropout_scale"}


def compile_case(case: dict) -> dict:
    """Compile one case; returns its name, arch, registers, spill bytes, shared bytes or the error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fusednn.kernels import exact_attention

    fn, arch = getattr(exact_attention, case["fn"]), case["arch"]
    signature = {}
    for name in fn.arg_names:
        if name in case["constexprs"]:
            signature[name] = "constexpr"
        elif name in case["pointers"]:
            signature[name] = case["pointers"][name]
        else:
            signature[name] = "fp32" if name in _FLOAT_SCALARS else "i32"
    constexprs = {(fn.arg_names.index(k),): v for k, v in case["constexprs"].items()}
    result = dict(name=case["name"], arch=f"sm_{arch}")
    try:
        compiled = triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=constexprs),
            target=GPUTarget("cuda", arch, 64 if arch >= 90 else 32),
            options=dict(num_warps=case["warps"], num_stages=case["stages"]),
        )
    except Exception as exc:  # reported by the test
        return dict(result, error=f"{type(exc).__name__}: {str(exc)[:2000]}")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    try:
        log = subprocess.run([ptxas, f"-arch=sm_{arch}{'a' if arch >= 90 else ''}", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True).stderr
    finally:
        os.unlink(f.name)
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return dict(result, registers=int(registers.group(1)) if registers else None,
                spills=int(spills.group(1)) if spills else None, shared=compiled.metadata.shared)


def _main() -> None:
    from concurrent.futures import ProcessPoolExecutor

    cases = attention_cases()
    with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for result in pool.map(compile_case, cases):
            print(json.dumps(result), flush=True)


@pytest.fixture(scope="module")
def compile_results(request):
    pytest.importorskip("triton")
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no NVIDIA backend")
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True, text=True, env=env,
                          timeout=1200)
    if proc.returncode != 0:
        pytest.fail(f"the compile subprocess failed:\n{proc.stderr[-4000:]}")
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    from test_cuda_compile import COMPILE_REPORT

    report = request.config.stash.setdefault(COMPILE_REPORT, [])
    for r in results:
        if "error" not in r:
            report.append(f"triton {r['name']:<48} {r['arch']:<6} {r['registers']} registers, {r['spills']} bytes "
                          f"spilled, {r['shared']} bytes shared")
    return results


def test_every_attention_variant_compiles(compile_results):
    assert len(compile_results) == len(attention_cases())
    errors = [f"{r['name']} ({r['arch']}): {r['error']}" for r in compile_results if "error" in r]
    assert not errors, "\n".join(errors)


def test_shared_memory_within_the_arch_limit(compile_results):
    over = [f"{r['name']} ({r['arch']}): {r['shared']} bytes" for r in compile_results
            if "error" not in r and r["shared"] > SHARED_LIMIT[int(r["arch"][3:])]]
    assert not over, "\n".join(over)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _main()
