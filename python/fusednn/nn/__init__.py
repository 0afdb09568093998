"""Drop-in replacements for torch.nn modules (same arguments, parameter names and state_dict)."""

from .exact_attention import MultiheadAttention
from .normalization import LayerNorm, RMSNorm
from .recurrent import LSTM, LSTMCell

__all__ = ["LSTM", "LSTMCell", "LayerNorm", "MultiheadAttention", "RMSNorm"]
