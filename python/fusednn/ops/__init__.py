"""Functional fusednn ops. Each is registered with torch.library as ``fusednn::<name>``,
has a fake (meta) implementation and autograd, and dispatches per ``fusednn.use_backend``."""

from .exact_attention import attention, attention_varlen, scaled_dot_product_attention
from .normalization import layer_norm, rms_norm
from .recurrent import lstm, lstm_cell

__all__ = [
    "attention",
    "attention_varlen",
    "layer_norm",
    "lstm",
    "lstm_cell",
    "rms_norm",
    "scaled_dot_product_attention",
]
