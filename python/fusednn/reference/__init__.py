"""Plain-PyTorch references of every fusednn op: short, readable, any dtype and device."""

from .exact_attention import attention, attention_varlen
from .normalization import layer_norm, rms_norm
from .recurrent import lstm, lstm_cell

__all__ = ["attention", "attention_varlen", "layer_norm", "lstm", "lstm_cell", "rms_norm"]
