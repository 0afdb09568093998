"""fusednn: fused GPU kernels (CUDA C++ and Triton) as autograd-aware PyTorch ops.

* ``fusednn.ops``        functional ops (``fusednn.ops.lstm``, ``fusednn.ops.layer_norm``, ...)
* ``fusednn.nn``         drop-in replacements for ``torch.nn`` modules
* ``fusednn.models``     full models on the fused layers
* ``fusednn.reference``  plain-PyTorch references of every op
* ``fusednn.registry``   what every op is made of: kernels and their dtypes, reference,
                         samples, bad inputs, benchmark shapes
* ``fusednn.use_backend`` force a kernel backend (see ``fusednn._runtime``)
* ``fusednn.fold_conv_bn`` fold inference BatchNorms into the convolutions before them
"""

from . import _runtime
from ._runtime import BACKENDS, use_backend

__version__ = "0.1.0"


def build_info() -> dict:
    """What the compiled extension contains (backends, CUDA archs, compiler, torch)."""
    return dict(_runtime.extension().build_info())


from . import ops, nn, models, reference, registry, testing  # noqa: E402  (ops register on import)
from .fold import fold_conv_bn  # noqa: E402

__all__ = ["BACKENDS", "build_info", "fold_conv_bn", "models", "nn", "ops", "reference", "registry", "testing",
           "use_backend", "__version__"]
