"""Triton kernels of fusednn (installed as ``fusednn.kernels``): ``@triton.jit`` functions
and their launch helpers only; registration and autograd live in ``fusednn.ops``.

Shared pieces: ``_tiles`` (device helpers of the tiled kernels: strided tiles, head
pointers, packed sequences, band tile skipping, log2(e) / ln(2)) and ``_rows`` (launch
configuration of the row-wise kernels). Each kernel module also has a
``compile_variants()`` returning ``CompileVariant`` s, named by its op's registry entry.
"""

from __future__ import annotations

import dataclasses

import torch

# Archs of the compile check: compute capability 9.0 builds for sm_90a.
SM90 = 90
SM80 = 80
# What a launch that names no num_warps / num_stages gets.
TRITON_DEFAULT_WARPS = 4
TRITON_DEFAULT_STAGES = 3

_TRITON_TYPES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def triton_type(dtype: torch.dtype) -> str:
    """Triton's name of a floating dtype ("bf16"); a pointer to it is "*" + that."""
    return _TRITON_TYPES[dtype]


@dataclasses.dataclass(frozen=True)
class CompileVariant:
    """One build of an entry kernel for the compile check (tests/test_triton_compile.py), with
    the tile configuration and launch options its launcher would pick.

    ``types`` gives the Triton type of every pointer argument ("*bf16") and float scalar
    ("fp32"); every other argument that is not among ``constexprs`` is an i32. Every
    variant builds for sm_90a; the common ones (the default options) for sm_80 too."""

    name: str  # in the report: "attention forward causal bf16 D=128"
    kernel: str  # a @triton.jit function of the module that lists the variant
    types: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    archs: tuple[int, ...] = (SM90,)
    # integer arguments a launch would find divisible by 16 (channel counts, strides of the
    # non-unit dims): Triton specialises them, and the build should see what a launch sees.
    # Pointer arguments are always taken as 16-byte aligned (as torch allocates).
    divisible_by_16: tuple[str, ...] = ()
    # the module defining ``kernel`` when it is not the module that lists the variant (a
    # shared kernel, such as the convolutions' epilogue backward)
    module: str | None = None
