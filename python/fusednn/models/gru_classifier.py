"""A sequence classifier: embedding, bidirectional GRU over packed variable-length input,
pooling over each sequence's valid steps, and a linear head.

    tokens [B, T], lengths [B] -> embedding [B, T, E] -> dropout
    -> pack_padded_sequence(enforce_sorted=False) -> bidirectional GRU (L layers, hidden H)
    -> pooled features [B, F] -> dropout -> linear -> logits [B, classes]

Pooling (``pooling``), over the valid steps only (padding never reaches the GRU):

* ``"mean"``: the mean of the last layer's outputs ``[B, 2H]`` over the ``length`` valid steps;
* ``"final"``: the last layer's final states ``[B, 2H]``: the forward direction's after the
  sequence's last valid step, the backward direction's after step 0;
* ``"mean+final"``: both, concatenated ``[B, 4H]``.

``layers="fusednn"`` builds the GRU from ``fusednn.nn.GRU``, ``layers="torch"`` from
``torch.nn.GRU``; the two have the same parameter names, so their state_dicts load into
each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .. import nn as fused_nn
from .._validate import Args, dtype_name, shape_of
from ._checks import INDEX_DTYPES, LAYERS, check_token_range

__all__ = ["GRUClassifier", "GRUClassifierConfig"]

POOLINGS = ("mean", "final", "mean+final")


@dataclass
class GRUClassifierConfig:
    """Sizes of a ``GRUClassifier``.

    vocab_size: V, the number of token ids (0 .. V-1).
    num_classes: the number of classes (the logits' size).
    embedding_size: E, the size of a token's embedding.
    hidden_size: H, the GRU's hidden size per direction.
    num_layers: L, the GRU's layers (each bidirectional).
    dropout: the probability of dropout on the embeddings, between GRU layers and on the
        pooled features (training only).
    pooling: ``"mean"``, ``"final"`` or ``"mean+final"`` (see the module docstring).
    layers: ``"fusednn"`` (``fusednn.nn.GRU``) or ``"torch"`` (``torch.nn.GRU``).
    """

    vocab_size: int = 2
    num_classes: int = 2
    embedding_size: int = 8
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    pooling: str = "mean+final"
    layers: str = "fusednn"

    def __post_init__(self):
        args = Args("fusednn.models.GRUClassifierConfig")
        args.integer("vocab_size", self.vocab_size, minimum=1)
        args.integer("num_classes", self.num_classes, minimum=1)
        args.integer("embedding_size", self.embedding_size, minimum=1)
        args.integer("hidden_size", self.hidden_size, minimum=1)
        args.integer("num_layers", self.num_layers, minimum=1)
        args.real("dropout", self.dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        args.choice("pooling", self.pooling, POOLINGS)
        args.choice("layers", self.layers, LAYERS)


class GRUClassifier(torch.nn.Module):
    """Classifies variable-length token sequences with a bidirectional GRU (see the module
    docstring).

    Parameters: ``embedding.weight [V, E]``, ``gru.*`` (torch.nn.GRU's names, bidirectional),
    ``head.weight [classes, F]`` and ``head.bias [classes]`` with F = 2H (``"mean"``,
    ``"final"``) or 4H (``"mean+final"``).
    """

    def __init__(self, config: Optional[GRUClassifierConfig] = None, *, device=None, dtype=None):
        super().__init__()
        self.config = config = config if config is not None else GRUClassifierConfig()
        factory = dict(device=device, dtype=dtype)
        gru_class = fused_nn.GRU if config.layers == "fusednn" else torch.nn.GRU
        self.embedding = torch.nn.Embedding(config.vocab_size, config.embedding_size, **factory)
        self.dropout = torch.nn.Dropout(config.dropout)
        self.gru = gru_class(config.embedding_size, config.hidden_size, num_layers=config.num_layers,
                             dropout=config.dropout if config.num_layers > 1 else 0.0, batch_first=True,
                             bidirectional=True, **factory)
        features = 2 * config.hidden_size * (2 if config.pooling == "mean+final" else 1)
        self.head = torch.nn.Linear(features, config.num_classes, **factory)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens: ``[B, T]`` int64/int32 ids in [0, V) (checked on CPU tensors); entries past a
        sequence's length are ignored. lengths: ``[B]`` integers in [1, T], a tensor on any
        device (or a list).

        Returns logits ``[B, classes]``.
        """
        args = Args("fusednn.models.GRUClassifier")
        args.tensor("tokens", tokens, "[B, T]", ndim=2, dtypes=INDEX_DTYPES)
        B, T = tokens.shape
        if B == 0:
            raise args.error("tokens", "[B, T] with B >= 1", shape_of(tokens))
        if isinstance(lengths, torch.Tensor):
            args.tensor("lengths", lengths, "[B]", ndim=1, dtypes=INDEX_DTYPES)
            lengths_cpu = lengths.to("cpu", torch.int64)  # what pack_padded_sequence takes
        else:
            lengths_cpu = torch.tensor(args.int_list("lengths", lengths, "[B]"), dtype=torch.int64)
        if lengths_cpu.shape != (B,):
            raise args.error("lengths", f"[B] with B = {B} (the tokens' batch)", shape_of(lengths_cpu))
        if B > 0 and (int(lengths_cpu.min()) < 1 or int(lengths_cpu.max()) > T):
            raise args.error("lengths", f"in [1, T] with T = {T} (the tokens' length)",
                             f"lengths in [{int(lengths_cpu.min())}, {int(lengths_cpu.max())}]")
        check_token_range(args, "tokens", tokens, self.config.vocab_size)

        x = self.dropout(self.embedding(tokens))  # [B, T, E]
        packed = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
        packed_output, h_n = self.gru(packed)  # h_n: [L * 2, B, H], rows in the batch's order
        pooled = []
        if self.config.pooling in ("mean", "mean+final"):
            output, _ = pad_packed_sequence(packed_output, batch_first=True, total_length=T)  # [B, T, 2H], zero padded
            valid_steps = lengths_cpu.to(device=output.device, dtype=output.dtype).unsqueeze(1)
            pooled.append(output.sum(dim=1) / valid_steps)
        if self.config.pooling in ("final", "mean+final"):
            pooled.append(torch.cat([h_n[-2], h_n[-1]], dim=1))  # the last layer's forward, backward
        features = self.dropout(torch.cat(pooled, dim=1))
        return self.head(features)

    def loss(self, tokens: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits of ``(tokens [B, T], lengths [B])`` against
        ``labels [B]`` (class ids); a scalar."""
        args = Args("fusednn.models.GRUClassifier.loss")
        args.tensor("labels", labels, "[B]", ndim=1, dtypes=INDEX_DTYPES)
        if isinstance(tokens, torch.Tensor) and labels.shape[0] != tokens.shape[0]:
            raise args.error("labels", f"[B] with B = {tokens.shape[0]} (the tokens' batch)", shape_of(labels))
        return torch.nn.functional.cross_entropy(self(tokens, lengths), labels)

    def extra_repr(self) -> str:
        return (f"layers={self.config.layers!r}, pooling={self.config.pooling!r}, "
                f"dtype={dtype_name(self.head.weight.dtype)}")
