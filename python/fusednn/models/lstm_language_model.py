"""An LSTM language model: embedding, multi-layer LSTM, dropout, and an output layer tied
to the embedding (Press & Wolf, 2017; Zaremba et al., 2014 for the dropout placement).

    tokens [B, T] -> embedding [B, T, E] -> dropout -> LSTM (L layers, hidden H) [B, T, H]
    -> dropout -> (projection H -> E, only when H != E) -> logits = x @ embedding.weight.T + bias [B, T, V]

The output layer reuses the embedding's weight, so its input must have the embedding's
size E: when the LSTM's hidden size H differs, a bias-free linear projection ``[E, H]``
maps its output to E first (a projection rather than a constraint H == E, so that the
hidden size can be chosen freely).

``layers="fusednn"`` builds the LSTM from ``fusednn.nn.LSTM``, ``layers="torch"`` from
``torch.nn.LSTM``; the two have the same parameter names, so their state_dicts load into
each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .. import nn as fused_nn
from .._validate import Args, describe, dtype_name, shape_of
from . import _language_model
from ._checks import INDEX_DTYPES, LAYERS, check_token_range

__all__ = ["LSTMLanguageModel", "LSTMLanguageModelConfig"]


@dataclass
class LSTMLanguageModelConfig:
    """Sizes of an ``LSTMLanguageModel``.

    vocab_size: V, the number of token ids (0 .. V-1).
    embedding_size: E, the size of a token's embedding (and of the tied output layer's input).
    hidden_size: H, the LSTM's hidden size; H != E adds a projection H -> E before the output.
    num_layers: L, the LSTM's layers.
    dropout: the probability of dropout on the embeddings, between LSTM layers and on the
        LSTM's output (training only).
    layers: ``"fusednn"`` (``fusednn.nn.LSTM``) or ``"torch"`` (``torch.nn.LSTM``).
    """

    vocab_size: int = 16
    embedding_size: int = 32
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.0
    layers: str = "fusednn"

    def __post_init__(self):
        args = Args("fusednn.models.LSTMLanguageModelConfig")
        args.integer("vocab_size", self.vocab_size, minimum=1)
        args.integer("embedding_size", self.embedding_size, minimum=1)
        args.integer("hidden_size", self.hidden_size, minimum=1)
        args.integer("num_layers", self.num_layers, minimum=1)
        args.real("dropout", self.dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        args.choice("layers", self.layers, LAYERS)


class LSTMLanguageModel(torch.nn.Module):
    """Next-token prediction with an LSTM and a tied output layer (see the module docstring).

    Parameters: ``embedding.weight [V, E]`` (also the output layer's weight),
    ``lstm.*`` (torch.nn.LSTM's names), ``projection.weight [E, H]`` when H != E,
    ``output_bias [V]``.
    """

    def __init__(self, config: Optional[LSTMLanguageModelConfig] = None, *, device=None, dtype=None):
        super().__init__()
        self.config = config = config if config is not None else LSTMLanguageModelConfig()
        factory = dict(device=device, dtype=dtype)
        lstm_class = fused_nn.LSTM if config.layers == "fusednn" else torch.nn.LSTM
        self.embedding = torch.nn.Embedding(config.vocab_size, config.embedding_size, **factory)
        self.dropout = torch.nn.Dropout(config.dropout)
        self.lstm = lstm_class(config.embedding_size, config.hidden_size, num_layers=config.num_layers,
                               dropout=config.dropout if config.num_layers > 1 else 0.0, batch_first=True, **factory)
        self.projection = (torch.nn.Linear(config.hidden_size, config.embedding_size, bias=False, **factory)
                           if config.hidden_size != config.embedding_size else None)
        self.output_bias = torch.nn.Parameter(torch.zeros(config.vocab_size, **factory))

    def forward(self, tokens: torch.Tensor, state: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """tokens: ``[B, T]`` int64/int32 ids in [0, V) (checked on CPU tensors).
        state: the ``(h [L, B, H], c [L, B, H])`` a previous call returned, or None for zeros.

        Returns ``(logits [B, T, V], state)``: ``logits[:, t]`` scores the token after
        ``tokens[:, t]``; ``state`` after the last step, to continue the sequence with.
        """
        args = Args("fusednn.models.LSTMLanguageModel")
        args.tensor("tokens", tokens, "[B, T]", ndim=2, dtypes=INDEX_DTYPES)
        if tokens.shape[1] == 0:
            raise args.error("tokens", "[B, T] with T >= 1", shape_of(tokens))
        check_token_range(args, "tokens", tokens, self.config.vocab_size)
        if state is not None and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise args.error("state", "a pair (h [L, B, H], c [L, B, H]) or None", describe(state), TypeError)
        x = self.dropout(self.embedding(tokens))
        y, state = self.lstm(x, state)
        y = self.dropout(y)
        if self.projection is not None:
            y = self.projection(y)
        logits = F.linear(y, self.embedding.weight, self.output_bias)
        return logits, state

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting ``targets [B, T]`` (usually the tokens shifted by
        one) from ``tokens [B, T]``, starting from a zero state; a scalar."""
        return _language_model.next_token_loss(self, "fusednn.models.LSTMLanguageModel.loss", tokens, targets)

    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue ``prompt`` by ``max_new_tokens`` sampled tokens.

        prompt: ``[B, P]`` or ``[P]`` token ids, P >= 1. temperature: >= 0; 0 picks the most
        likely token (greedy, as ``top_k=1`` does). top_k: sample among the k most likely
        tokens only (None: all V). generator: the ``torch.Generator`` to sample with.

        Returns ``[B, P + max_new_tokens]`` (``[P + max_new_tokens]`` for a 1-D prompt): the
        prompt followed by the new tokens. The prompt is read once; each new token is one
        LSTM step from the carried state (no recomputation of the sequence). Runs in eval
        mode (no dropout) and restores the module's mode afterwards.
        """
        return _language_model.generate(self, "fusednn.models.LSTMLanguageModel.generate", prompt, max_new_tokens,
                                    temperature, top_k, generator)

    def extra_repr(self) -> str:
        return f"layers={self.config.layers!r}, dtype={dtype_name(self.output_bias.dtype)}"
