"""Triton kernels of fusednn (installed as ``fusednn.kernels``): ``@triton.jit`` functions
and their launch helpers only; registration and autograd live in ``fusednn.ops``."""
