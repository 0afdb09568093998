"""Benchmarks of fusednn (installed as ``fusednn.bench``): ``runner`` plus one module per
family. Run them with ``python -m fusednn bench``; results land in ``bench/results/``."""
