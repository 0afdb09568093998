"""Installs what fusednn needs into the running interpreter, keeping what is already there.

Run by the Makefile inside the project's virtual environment. Idempotent: a second run
installs nothing. An installed torch (>= 2.6) is kept whatever its build (CUDA machines
bring their own); otherwise torch==2.13.0 is installed.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

TORCH_SPEC = "torch==2.13.0"
TRITON_SPEC = "triton==3.6.0"


def version(dist: str) -> tuple[int, ...] | None:
    try:
        raw = md.version(dist)
    except md.PackageNotFoundError:
        return None
    parts = []
    for piece in raw.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def main() -> int:
    wanted: list[str] = []
    torch_v = version("torch")
    if torch_v is None or torch_v < (2, 6):
        wanted.append(TORCH_SPEC)
    if version("triton") is None and version("pytorch-triton") is None:
        wanted.append(TRITON_SPEC)
    numpy_v = version("numpy")
    # Triton 3.6's interpreter (what runs the Triton kernels on a CPU-only machine) fails on numpy >= 2.4.
    if numpy_v is None or (numpy_v >= (2, 4) and not _has_cuda_torch()):
        wanted.append("numpy<2.4")
    for dist, spec in (("pybind11", "pybind11"), ("ninja", "ninja"), ("pytest", "pytest"),
                       ("setuptools", "setuptools>=64"), ("wheel", "wheel")):
        if version(dist) is None:
            wanted.append(spec)
    if not wanted:
        print("fusednn: dependencies already installed")
        return 0
    print("fusednn: installing " + " ".join(wanted), flush=True)
    return subprocess.call([sys.executable, "-m", "pip", "install", *wanted])


def _has_cuda_torch() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.version.cuda is not None


if __name__ == "__main__":
    sys.exit(main())
