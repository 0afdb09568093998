"""Functional fusednn ops, one module per family. Each op is declared in the op registry
(``fusednn.registry``), registered with torch.library as ``fusednn::<name>_forward`` /
``_backward`` (C++ or Triton), has a fake (meta) implementation and autograd, and
dispatches per ``fusednn.use_backend``. Every name in a family module's ``__all__`` is
exported here, except those of ``sparsity`` (the block layouts of block-sparse attention,
reached as ``fusednn.ops.sparsity.<builder>``)."""

from .._runtime import export_families

__all__ = export_families(__name__, __path__, globals(), helpers=("sparsity",))
