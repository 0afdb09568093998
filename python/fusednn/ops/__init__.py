"""Functional fusednn ops. Each is registered with torch.library as ``fusednn::<name>``,
has a fake (meta) implementation and autograd, and dispatches per ``fusednn.use_backend``."""

from .normalization import layer_norm, rms_norm
from .recurrent import lstm, lstm_cell

__all__ = ["layer_norm", "lstm", "lstm_cell", "rms_norm"]
