"""Sample calls, bad-input cases and benchmark shapes of every op, one module per family.

The op registry (``fusednn.registry``) refers to these; the test suite, ``python -m
fusednn check`` and the benchmarks read them from there. Sample tensors are float64 on the
CPU, drawn fresh on every call; the comparison harness casts them to the dtype and device
under test.
"""
