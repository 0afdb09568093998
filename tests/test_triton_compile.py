"""Every Triton kernel variant compiles to a GPU binary for sm_90a (the common ones for sm_80 too).

The interpreter that runs the Triton kernels on CPU machines skips the compiler, so a
kernel that lowers badly (a layout the backend cannot handle, a dot shape it rejects, too
much shared memory) would only fail on a GPU. The variants come from the op registry: each
op's Triton kernel names a ``compile_variants`` function of its kernels module (a kernel
shared by several ops is built once), which lists ``fusednn.kernels.CompileVariant`` s with
the tiles and launch options its launchers pick. They compile in a subprocess with
TRITON_INTERPRET=0 (no GPU needed: triton.compile takes the target), two at a time, and
the registers, spill bytes and shared memory ptxas reports for the binary Triton built are
printed in the pytest summary beside the CUDA kernels'.

Run directly (``python tests/test_triton_compile.py``) it prints the report as JSON lines.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_FILES = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.py")))
# Shared memory per block an arch offers (bytes).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# The compile check runs on 2-core CI machines.
WORKERS = 2
PTXAS_LOG = "ptxas.log"


def _registry():
    import fusednn  # noqa: F401  (registers the ops)
    from fusednn import registry

    return registry


def variant_functions() -> list:
    """The compile_variants function of every registered op's Triton kernel, each once."""
    functions = []
    for info in _registry().ops():
        for kernel in info.kernels:
            if kernel.backend == "triton" and kernel.compile_variants not in functions:
                functions.append(kernel.compile_variants)
    return functions


def jobs() -> list[tuple[str, object, int]]:
    """(kernels module, variant, arch) for every build, in the order the variants list them
    (a module puts its slowest builds first), the archs of one variant next to each other."""
    return [(variant.module or function.__module__, variant, arch) for function in variant_functions() if function is not None
            for variant in function() for arch in variant.archs]


def _arch_name(arch: int) -> str:
    return f"sm_{arch}{'a' if arch >= 90 else ''}"


def _signature(fn, variant) -> dict:
    unknown = (set(variant.types) | set(variant.constexprs)) - set(fn.arg_names)
    if unknown:
        raise TypeError(f"{variant.kernel} has no arguments {sorted(unknown)}")
    return {name: "constexpr" if name in variant.constexprs else variant.types.get(name, "i32")
            for name in fn.arg_names}


def _compile(source, arch: int, options: dict):
    """Compiles with Triton; returns the kernel and the log of the ptxas run that built its
    binary. Triton prints that log only when it runs ptxas, so the log is kept in Triton's
    cache beside the binary for the runs that find it there."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.cache import get_cache_manager

    target = GPUTarget("cuda", arch, 64 if arch >= 90 else 32)
    compiled, log = _compile_printing(source, target, options)
    cache = get_cache_manager(compiled.hash)
    if "Used" not in log:  # found in the cache: ptxas did not run
        kept = cache.get_file(PTXAS_LOG)
        if kept is not None:
            with open(kept) as f:
                return compiled, f.read()
        # cached by a run that did not keep the log
        compiled, log = _compile_printing(source, target, options, always_compile=True)
    if "Used" in log:
        cache.put(log, PTXAS_LOG, binary=False)
    return compiled, log


def _compile_printing(source, target, options, always_compile=False):
    """triton.compile with the log of ptxas (when it runs) printed and captured."""
    import triton

    knobs = triton.knobs
    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, always_compile
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            compiled = triton.compile(source, target=target, options=options)
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
    return compiled, printed.getvalue()


def compile_job(job) -> dict:
    """Compile one variant for one arch; returns its name, arch, registers, spill bytes and
    shared bytes, or the error."""
    from triton.compiler import ASTSource

    module, variant, arch = job
    result = dict(name=variant.name, arch=_arch_name(arch))
    started = time.perf_counter()
    try:
        fn = getattr(importlib.import_module(module), variant.kernel)
        constexprs = {(fn.arg_names.index(k),): v for k, v in variant.constexprs.items()}
        signature = _signature(fn, variant)
        # what a launch with 16-byte aligned tensors specialises: aligned pointers and the
        # integers the variant names as multiples of 16
        attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name, kind in signature.items()
                 if kind.startswith("*") or name in variant.divisible_by_16}
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled, log = _compile(source, arch, dict(num_warps=variant.num_warps, num_stages=variant.num_stages))
    except Exception as exc:  # reported by the test
        return dict(result, error=f"{type(exc).__name__}: {str(exc)[:2000]}")
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return dict(result, registers=int(registers.group(1)) if registers else None,
                spills=int(spills.group(1)) if spills else None, shared=compiled.metadata.shared,
                seconds=round(time.perf_counter() - started, 1))


def _main() -> None:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=WORKERS) as pool:
        for result in pool.map(compile_job, jobs()):
            print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- tests


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
            report.append(f"triton {r['name']:<56} {r['arch']:<6} {r['registers']} registers, {r['spills']} bytes "
                          f"spilled, {r['shared']} bytes shared")
    return results


def test_every_op_names_its_compile_variants():
    missing = [info.name for info in _registry().ops() for kernel in info.kernels
               if kernel.backend == "triton" and kernel.compile_variants is None]
    assert not missing, f"ops whose Triton kernel has no compile_variants: {missing}"


@pytest.mark.slow  # the compile subprocess: make test-fast leaves it out
def test_every_variant_compiles(compile_results):
    assert len(compile_results) == len(jobs())
    errors = [f"{r['name']} ({r['arch']}): {r['error']}" for r in compile_results if "error" in r]
    errors += [f"{r['name']} ({r['arch']}): no register count in the ptxas log" for r in compile_results
               if "error" not in r and r["registers"] is None]
    assert not errors, "\n".join(errors)


@pytest.mark.slow
def test_shared_memory_within_the_arch_limit(compile_results):
    over = [f"{r['name']} ({r['arch']}): {r['shared']} bytes" for r in compile_results
            if "error" not in r and r["shared"] > SHARED_LIMIT[int(r["arch"][3:5])]]
    assert not over, "\n".join(over)


def test_every_entry_kernel_has_a_compile_variant():
    """An entry kernel (a @triton.jit function of kernels/ that no other one calls: the
    launchers start it) that no op's compile_variants lists would never be compiled in CI."""
    compiled = {(module, variant.kernel) for module, variant, _arch in jobs()}
    missing = sorted(f"{module}.{name}" for module, name in entry_kernels() if (module, name) not in compiled)
    assert not missing, f"entry kernels in no op's compile_variants: {missing}"


def entry_kernels() -> set[tuple[str, str]]:
    """(module, name) of the @triton.jit functions in kernels/ that no @triton.jit function calls."""
    defined, called = set(), set()
    for path in KERNEL_FILES:
        module = "fusednn.kernels." + os.path.splitext(os.path.basename(path))[0]
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(_is_triton_jit(d) for d in node.decorator_list):
                defined.add((module, node.name))
                called |= {_callee(call) for call in ast.walk(node) if isinstance(call, ast.Call)}
    return {(module, name) for module, name in defined if name not in called}


def _is_triton_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(target) in ("triton.jit", "jit")


def _callee(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    _main()
