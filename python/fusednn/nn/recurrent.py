"""Drop-in ``torch.nn.LSTM``, ``GRU``, ``RNN`` and their cells running on the fused recurrent ops.

They subclass the torch modules, so constructor arguments, parameter names and
shapes, initialisation and ``state_dict`` are torch's own; only ``forward`` changes.
Every layer and direction is one call of ``fusednn.ops.lstm`` / ``gru`` / ``rnn``, driven by
``_run_layers`` (layers, directions, dropout, PackedSequence, batch_first, unbatched
input: the same for the three); a cell is one call of its cell op, its arguments checked
by ``_check_cell_call`` (the same for the three cells).

Under ``torch.jit.script`` a drop-in compiles the first branch of its ``forward`` only,
torch's own kernel for tensor inputs (TorchScript cannot compile the fused ops' Python);
the fused path is the ``@torch.jit.unused`` method ``_fused_forward``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from .. import ops, registry
from .._validate import Args, describe, dtype_name, shape_of

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell"]


# --------------------------------------------------------------------------- the multi-layer driver


def _reverse_in_time(x: torch.Tensor, reverse_index: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence of a time-major ``[T, B, F]`` batch within its own length."""
    if reverse_index is None:
        return x.flip(0)
    return x.gather(0, reverse_index.unsqueeze(-1).expand_as(x))


def _reverse_index(lengths: torch.Tensor, T: int, device) -> torch.Tensor:
    """``[T, B]``: time step t of row b reads step ``length_b - 1 - t`` (padding stays put)."""
    t = torch.arange(T).unsqueeze(1)
    lengths = lengths.to(torch.int64).unsqueeze(0)
    return torch.where(t < lengths, lengths - 1 - t, t).to(device)


def _layer_weights(module: torch.nn.Module, suffix: str) -> tuple:
    """(w_ih, w_hh, b_ih, b_hh) of one layer and direction (``suffix``: ``_l1_reverse``)."""
    biases = (getattr(module, "bias_ih" + suffix), getattr(module, "bias_hh" + suffix)) if module.bias else (None, None)
    return (getattr(module, "weight_ih" + suffix), getattr(module, "weight_hh" + suffix), *biases)


def _initial_states(where: str, hx, paired: bool, batched: bool) -> tuple[torch.Tensor, ...]:
    """The module's hx as a tuple of ``[L * D, B, *]`` tensors: (h_0, c_0) for the LSTM
    (``paired``), (h_0,) for the GRU and RNN; torch's checks of their ranks, with torch's messages."""
    if paired:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise Args(where).error("hx", "a pair (h_0, c_0) of tensors or None", describe(hx), TypeError)
        states = tuple(hx)
    else:
        Args(where).tensor("hx", hx, "[num_layers * num_directions, B, hidden_size]", dtypes=None, optional=True)
        states = (hx,)
    rank = 3 if batched else 2
    if any(state.dim() != rank for state in states):
        ranks = ", ".join(f"{state.dim()}-D" for state in states)
        got = f"hx and cx should also be {rank}-D but got ({ranks}) tensors" if paired else \
            f"hx should also be {rank}-D but got {ranks} tensor"
        raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, {got}")
    return states if batched else tuple(state.unsqueeze(1) for state in states)


def _run_layers(module: torch.nn.RNNBase, name: str, input, hx, run_layer):  # noqa: A002
    """The forward of an LSTM, GRU or RNN drop-in (``name``) over all its layers and directions.

    ``input``: ``[T, B, I]`` (``[B, T, I]`` with batch_first), ``[T, I]`` unbatched, or a
    PackedSequence. ``hx``: the module's ``(h_0, c_0)`` for the LSTM, ``h_0`` for the GRU and
    RNN (``[L * D, B, *]``, ``[L * D, *]`` unbatched), or None for zeros.
    ``run_layer(x, state, suffix, batch_sizes) -> (y, state)`` runs one layer in one
    direction over a time-major ``x [T, B, F]`` from ``state``, a tuple of ``[B, *]`` tensors
    ((h, c) for the LSTM, (h,) otherwise); ``suffix`` names its parameters (``_l1_reverse``).

    Returns ``(output, final states)``: output in the input's layout (a PackedSequence for
    a PackedSequence), the final states a tuple like ``state`` of ``[L * D, B, *]`` tensors
    (``[L * D, *]`` unbatched).
    """
    where = f"fusednn.nn.{name}"
    paired = module.mode == "LSTM"
    packed = isinstance(input, PackedSequence)
    batch_sizes = lengths = sorted_indices = unsorted_indices = None
    if packed:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        T = batch_sizes.numel()
        # Time-major, rows in the packed (length-sorted) order, so that the rows
        # of step t are the prefix [0, batch_sizes[t]).
        x, lengths = torch.ops.aten._pad_packed_sequence(data, batch_sizes, False, 0.0, T)
        B = int(batch_sizes[0])
        batched, checked = True, data
    else:
        layout = "[B, T, I]" if module.batch_first else "[T, B, I]"
        Args(where).tensor("input", input, f"{layout} (or [T, I] unbatched), or a PackedSequence", ndim=(2, 3),
                           dtypes=None)
        batched = input.dim() == 3
        checked = input if batched else input.unsqueeze(0 if module.batch_first else 1)
        x = checked.transpose(0, 1) if module.batch_first else checked
        B = x.shape[1]

    directions = 2 if module.bidirectional else 1
    if hx is None:
        widths = (module.proj_size or module.hidden_size, module.hidden_size) if paired else (module.hidden_size,)
        h0 = tuple(torch.zeros(module.num_layers * directions, B, width, dtype=x.dtype, device=x.device)
                   for width in widths)
    else:
        h0 = _initial_states(where, hx, paired, batched)
        if sorted_indices is not None:
            h0 = tuple(state.index_select(1, sorted_indices) for state in h0)
    # torch's own shape checks and messages (input size, hidden sizes).
    module.check_forward_args(checked, h0 if paired else h0[0], batch_sizes)

    reverse_index = _reverse_index(lengths, x.shape[0], x.device) if module.bidirectional and packed else None
    layer_input = x
    finals = []  # the final state of each layer and direction, in h_n's order
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            index = layer * directions + direction
            seq = layer_input if direction == 0 else _reverse_in_time(layer_input, reverse_index)
            y, state = run_layer(seq, tuple(h[index] for h in h0), suffix, batch_sizes)
            outputs.append(y if direction == 0 else _reverse_in_time(y, reverse_index))
            finals.append(state)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
        if module.dropout > 0 and module.training and layer < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)
    h_n = tuple(torch.stack(states) for states in zip(*finals))

    if packed:
        data, _ = torch.ops.aten._pack_padded_sequence(layer_input, lengths, False)
        if unsorted_indices is not None:  # None when the batch came sorted (enforce_sorted=True)
            h_n = tuple(h.index_select(1, unsorted_indices) for h in h_n)
        return PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices), h_n
    if not batched:
        return layer_input.squeeze(1), tuple(h.squeeze(1) for h in h_n)
    return (layer_input.transpose(0, 1) if module.batch_first else layer_input), h_n


def _scripted_batch(input: torch.Tensor, hx: Optional[torch.Tensor], batch_first: bool, states: int,
                    hidden_size: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """TorchScript's path of GRU and RNN (input already 2-D or 3-D): (x batched, h_0 batched,
    whether the input was), as torch's modules prepare them; zeros when hx is None."""
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(0 if batch_first else 1)
    if hx is None:
        h0 = torch.zeros(states, x.size(0 if batch_first else 1), hidden_size, dtype=x.dtype, device=x.device)
    else:
        h0 = hx if batched else hx.unsqueeze(1)
    return x, h0, batched


# --------------------------------------------------------------------------- LSTM, GRU, RNN


@registry.drop_in(torch.nn.LSTM)
class LSTM(torch.nn.LSTM):
    """``torch.nn.LSTM`` (same arguments, parameters, inputs and outputs) on fused kernels.

    Supports multiple layers, ``bidirectional``, ``batch_first``, ``dropout`` between
    layers in training, ``proj_size``, ``PackedSequence`` input (and output), optional
    ``(h_0, c_0)`` and unbatched 2-D input. ``torch.jit.script`` (of the module, or of a
    model holding it) compiles tensor inputs to torch's own LSTM kernel; PackedSequence
    inputs are eager only.
    """

    def forward(self, input: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None,  # noqa: A002
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if torch.jit.is_scripting():
            # TorchScript compiles this branch only: torch's LSTM for tensor inputs, its own
            # kernel (TorchScript cannot compile the fused op's Python).
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            x = input if batched else input.unsqueeze(batch_dim)
            directions = 2 if self.bidirectional else 1
            real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
            B = x.size(0) if self.batch_first else x.size(1)
            if hx is None:
                h0 = torch.zeros(self.num_layers * directions, B, real_hidden, dtype=x.dtype, device=x.device)
                c0 = torch.zeros(self.num_layers * directions, B, self.hidden_size, dtype=x.dtype, device=x.device)
            else:
                h0, c0 = hx
                if not batched:
                    h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            self.check_forward_args(x, (h0, c0), None)
            result = torch._VF.lstm(x, (h0, c0), self._flat_weights, self.bias, self.num_layers, float(self.dropout),
                                    self.training, self.bidirectional, self.batch_first)
            output, h_n, c_n = result[0], result[1], result[2]
            if not batched:
                return output.squeeze(batch_dim), (h_n.squeeze(1), c_n.squeeze(1))
            return output, (h_n, c_n)
        return self._fused_forward(input, hx)

    @torch.jit.unused
    def _fused_forward(self, input: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]],  # noqa: A002
                       ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        output, (h_n, c_n) = _run_layers(self, "LSTM", input, hx, self._fused_layer)
        return output, (h_n, c_n)

    def _fused_layer(self, x, state, suffix, batch_sizes):
        w_hr = getattr(self, "weight_hr" + suffix) if self.proj_size > 0 else None
        return ops.lstm(x, state, *_layer_weights(self, suffix), w_hr, batch_sizes)


@registry.drop_in(torch.nn.GRU)
class GRU(torch.nn.GRU):
    """``torch.nn.GRU`` (same arguments, parameters, inputs and outputs) on fused kernels.

    Supports multiple layers, ``bidirectional``, ``batch_first``, ``dropout`` between
    layers in training, ``PackedSequence`` input (and output), optional ``h_0`` and
    unbatched 2-D input. ``torch.jit.script`` compiles tensor inputs to torch's own GRU
    kernel; PackedSequence inputs are eager only.
    """

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None,  # noqa: A002
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():
            # TorchScript compiles this branch only: torch's GRU, its own kernel.
            if input.dim() not in (2, 3):
                raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
            states = self.num_layers * (2 if self.bidirectional else 1)
            x, h0, batched = _scripted_batch(input, hx, self.batch_first, states, self.hidden_size)
            self.check_forward_args(x, h0, None)
            result = torch._VF.gru(x, h0, self._flat_weights, self.bias, self.num_layers, float(self.dropout),
                                   self.training, self.bidirectional, self.batch_first)
            if not batched:
                return result[0].squeeze(0 if self.batch_first else 1), result[1].squeeze(1)
            return result[0], result[1]
        return self._fused_forward(input, hx)

    @torch.jit.unused
    def _fused_forward(self, input: torch.Tensor, hx: Optional[torch.Tensor],  # noqa: A002
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        output, (h_n,) = _run_layers(self, "GRU", input, hx, self._fused_layer)
        return output, h_n

    def _fused_layer(self, x, state, suffix, batch_sizes):
        y, h = ops.gru(x, state[0], *_layer_weights(self, suffix), batch_sizes)
        return y, (h,)


@registry.drop_in(torch.nn.RNN)
class RNN(torch.nn.RNN):
    """``torch.nn.RNN`` (same arguments, parameters, inputs and outputs) on fused kernels.

    Supports ``nonlinearity`` "tanh" and "relu", multiple layers, ``bidirectional``,
    ``batch_first``, ``dropout`` between layers in training, ``PackedSequence`` input (and
    output), optional ``h_0`` and unbatched 2-D input. ``torch.jit.script`` compiles tensor
    inputs to torch's own RNN kernels; PackedSequence inputs are eager only.
    """

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None,  # noqa: A002
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():
            # TorchScript compiles this branch only: torch's RNN, its own kernels.
            if input.dim() not in (2, 3):
                raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            states = self.num_layers * (2 if self.bidirectional else 1)
            x, h0, batched = _scripted_batch(input, hx, self.batch_first, states, self.hidden_size)
            self.check_forward_args(x, h0, None)
            if self.mode == "RNN_TANH":
                result = torch._VF.rnn_tanh(x, h0, self._flat_weights, self.bias, self.num_layers,
                                            float(self.dropout), self.training, self.bidirectional, self.batch_first)
            else:
                result = torch._VF.rnn_relu(x, h0, self._flat_weights, self.bias, self.num_layers,
                                            float(self.dropout), self.training, self.bidirectional, self.batch_first)
            if not batched:
                return result[0].squeeze(0 if self.batch_first else 1), result[1].squeeze(1)
            return result[0], result[1]
        return self._fused_forward(input, hx)

    @torch.jit.unused
    def _fused_forward(self, input: torch.Tensor, hx: Optional[torch.Tensor],  # noqa: A002
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        output, (h_n,) = _run_layers(self, "RNN", input, hx, self._fused_layer)
        return output, h_n

    def _fused_layer(self, x, state, suffix, batch_sizes):
        y, h = ops.rnn(x, state[0], *_layer_weights(self, suffix), self.nonlinearity, batch_sizes)
        return y, (h,)


# --------------------------------------------------------------------------- cells


def _check_cell_call(module: torch.nn.RNNCellBase, name: str, input, hx) -> bool:  # noqa: A002
    """torch's checks of a cell module's call (``name``: LSTMCell, GRUCell or RNNCell) in
    torch's order, each message also carrying torch's own text. hx: the LSTMCell's pair
    (h, c), the GRUCell's and RNNCell's tensor h, or None. Returns whether input is batched."""
    args = Args(f"fusednn.nn.{name}")
    args.tensor("input", input, dtypes=None)
    if input.dim() not in (1, 2):
        raise args.error("input", "1-D [input_size] or 2-D [B, input_size]", shape_of(input),
                         torch_message=f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    states = []  # (our name, torch's name, tensor)
    if hx is not None:
        if name == "LSTMCell":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise args.error("hx", "a pair (h, c) of tensors or None", describe(hx), TypeError)
            states = [(f"hx[{i}]", f"hx[{i}]", state) for i, state in enumerate(hx)]
        else:
            states = [("hx", "hidden", hx)]
        for state_name, torch_name, state in states:
            args.tensor(state_name, state, dtypes=None)
            if state.dim() not in (1, 2):
                raise args.error(state_name, "1-D [hidden_size] or 2-D [B, hidden_size]", shape_of(state),
                                 torch_message=f"{name}: Expected {torch_name} to be 1D or 2D, got {state.dim()}D "
                                               "instead")
    if input.shape[-1] != module.input_size:
        raise args.error("input", f"[B, input_size] with input_size = {module.input_size}", shape_of(input),
                         torch_message=f"input has inconsistent input_size: got {input.shape[-1]} expected "
                                       f"{module.input_size}")
    for i, (state_name, _, state) in enumerate(states):
        layout = "[B, hidden_size]" if input.dim() == 2 else "[hidden_size]"
        if state.dim() != input.dim():
            raise args.error(state_name, f"{input.dim()}-D {layout} like input", shape_of(state))
        if input.dim() == 2 and state.shape[0] != input.shape[0]:
            raise args.error(state_name, f"{layout} with B = {input.shape[0]} (input's batch)", shape_of(state),
                             torch_message=f"Input batch size {input.shape[0]} doesn't match hidden{i} batch "
                                           f"size {state.shape[0]}")
        if state.shape[-1] != module.hidden_size:
            raise args.error(state_name, f"{layout} with hidden_size = {module.hidden_size}", shape_of(state),
                             torch_message=f"hidden{i} has inconsistent hidden_size: got {state.shape[-1]}, "
                                           f"expected {module.hidden_size}")
    if input.dtype != module.weight_ih.dtype:
        raise args.error("input", f"of the module's dtype {dtype_name(module.weight_ih.dtype)}",
                         dtype_name(input.dtype), TypeError)
    return input.dim() == 2


def _scripted_cell_batch(input: torch.Tensor, hx: Optional[torch.Tensor], hidden_size: int,
                         ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """TorchScript's path of GRUCell and RNNCell (input already 1-D or 2-D): (x batched,
    h batched, whether the input was); zeros when hx is None."""
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    if hx is None:
        return x, torch.zeros(x.size(0), hidden_size, dtype=x.dtype, device=x.device), batched
    return x, (hx if batched else hx.unsqueeze(0)), batched


@registry.drop_in(torch.nn.LSTMCell)
class LSTMCell(torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` (same arguments, parameters, inputs and outputs) on fused kernels.
    ``torch.jit.script`` compiles it to torch's own cell kernel."""

    def forward(self, input: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None,  # noqa: A002
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():
            # TorchScript compiles this branch only: torch's LSTMCell, its own cell kernel.
            if input.dim() not in (1, 2):
                raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
            batched = input.dim() == 2
            x = input if batched else input.unsqueeze(0)
            if hx is None:
                zeros = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
                state = (zeros, zeros)
            else:
                state = hx if batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
            h, c = torch._VF.lstm_cell(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
            return (h, c) if batched else (h.squeeze(0), c.squeeze(0))
        return self._fused_forward(input, hx)

    @torch.jit.unused
    def _fused_forward(self, input: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]],  # noqa: A002
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        batched = _check_cell_call(self, "LSTMCell", input, hx)
        x = input if batched else input.unsqueeze(0)
        if hx is not None and not batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = ops.lstm_cell(x, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


@registry.drop_in(torch.nn.GRUCell)
class GRUCell(torch.nn.GRUCell):
    """``torch.nn.GRUCell`` (same arguments, parameters, inputs and outputs) on fused kernels.
    ``torch.jit.script`` compiles it to torch's own cell kernel."""

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: A002
        if torch.jit.is_scripting():
            # TorchScript compiles this branch only: torch's GRUCell, its own cell kernel.
            if input.dim() not in (1, 2):
                raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
            x, h, batched = _scripted_cell_batch(input, hx, self.hidden_size)
            h = torch._VF.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
            return h if batched else h.squeeze(0)
        return self._fused_forward(input, hx)

    @torch.jit.unused
    def _fused_forward(self, input: torch.Tensor, hx: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: A002
        batched = _check_cell_call(self, "GRUCell", input, hx)
        x = input if batched else input.unsqueeze(0)
        h = hx if hx is None or batched else hx.unsqueeze(0)
        h = ops.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if batched else h.squeeze(0)


@registry.drop_in(torch.nn.RNNCell)
class RNNCell(torch.nn.RNNCell):
    """``torch.nn.RNNCell`` (same arguments, parameters, inputs and outputs; ``nonlinearity``
    "tanh" or "relu") on fused kernels. ``torch.jit.script`` compiles it to torch's own cell
    kernels."""

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: A002
        if torch.jit.is_scripting():
            # TorchScript compiles this branch only: torch's RNNCell, its own cell kernels.
            if input.dim() not in (1, 2):
                raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
            x, h, batched = _scripted_cell_batch(input, hx, self.hidden_size)
            if self.nonlinearity == "tanh":
                h = torch._VF.rnn_tanh_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
            elif self.nonlinearity == "relu":
                h = torch._VF.rnn_relu_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
            else:
                raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
            return h if batched else h.squeeze(0)
        return self._fused_forward(input, hx)

    @torch.jit.unused
    def _fused_forward(self, input: torch.Tensor, hx: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: A002
        batched = _check_cell_call(self, "RNNCell", input, hx)
        x = input if batched else input.unsqueeze(0)
        h = hx if hx is None or batched else hx.unsqueeze(0)
        h = ops.rnn_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)
        return h if batched else h.squeeze(0)
