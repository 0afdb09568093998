"""Drop-in ``torch.nn.LSTM`` and ``torch.nn.LSTMCell`` running on the fused LSTM ops.

They subclass the torch modules, so constructor arguments, parameter names and
shapes, initialisation and ``state_dict`` are torch's own; only ``forward`` changes.
Every layer and direction is one call of ``fusednn.ops.lstm``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from .. import ops, registry
from .._validate import Args, describe, dtype_name, shape_of

__all__ = ["LSTM", "LSTMCell"]


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
        packed = isinstance(input, PackedSequence)
        batch_sizes = lengths = None
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            T = batch_sizes.numel()
            # Time-major, rows in the packed (length-sorted) order, so that the rows
            # of step t are the prefix [0, batch_sizes[t]).
            x, lengths = torch.ops.aten._pad_packed_sequence(data, batch_sizes, False, 0.0, T)
            B = int(batch_sizes[0])
            batched = True
        else:
            sorted_indices = unsorted_indices = None
            layout = "[B, T, I]" if self.batch_first else "[T, B, I]"
            Args("fusednn.nn.LSTM").tensor("input", input, f"{layout} (or [T, I] unbatched), or a PackedSequence",
                                           ndim=(2, 3), dtypes=None)
            batched = input.dim() == 3
            checked = input if batched else input.unsqueeze(0 if self.batch_first else 1)
            x = checked.transpose(0, 1) if self.batch_first else checked
            B = x.shape[1]

        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        if hx is None:
            zeros = dict(dtype=x.dtype, device=x.device)
            h0 = torch.zeros(self.num_layers * num_directions, B, real_hidden, **zeros)
            c0 = torch.zeros(self.num_layers * num_directions, B, self.hidden_size, **zeros)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise Args("fusednn.nn.LSTM").error("hx", "a pair (h_0, c_0) of tensors or None", describe(hx),
                                                    TypeError)
            h0, c0 = hx
            if not batched:
                if h0.dim() != 2 or c0.dim() != 2:
                    raise RuntimeError(
                        f"For unbatched 2-D input, hx and cx should also be 2-D but got "
                        f"({h0.dim()}-D, {c0.dim()}-D) tensors"
                    )
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            elif h0.dim() != 3 or c0.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx and cx should also be 3-D but got ({h0.dim()}-D, {c0.dim()}-D) tensors"
                )
            if sorted_indices is not None:
                h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        # torch's own shape checks and messages (input size, hidden sizes).
        self.check_forward_args(data if packed else checked, (h0, c0), batch_sizes)

        reverse_index = None
        if self.bidirectional and packed:
            reverse_index = _reverse_index(lengths, x.shape[0], x.device)
        layer_input = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                state = layer * num_directions + direction
                seq = layer_input if direction == 0 else _reverse_in_time(layer_input, reverse_index)
                y, (h, c) = ops.lstm(
                    seq,
                    (h0[state], c0[state]),
                    getattr(self, "weight_ih" + suffix),
                    getattr(self, "weight_hh" + suffix),
                    getattr(self, "bias_ih" + suffix) if self.bias else None,
                    getattr(self, "bias_hh" + suffix) if self.bias else None,
                    getattr(self, "weight_hr" + suffix) if self.proj_size > 0 else None,
                    batch_sizes,
                )
                outputs.append(y if direction == 0 else _reverse_in_time(y, reverse_index))
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)

        if packed:
            data, _ = torch.ops.aten._pack_padded_sequence(layer_input, lengths, False)
            output = PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:  # None when the batch came sorted (enforce_sorted=True)
                h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
            return output, (h_n, c_n)
        if not batched:
            return layer_input.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, (h_n, c_n)


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
        args = Args("fusednn.nn.LSTMCell")
        # torch's checks in torch's order, each message also carrying torch's own text.
        args.tensor("input", input, dtypes=None)
        if input.dim() not in (1, 2):
            raise args.error("input", "1-D [input_size] or 2-D [B, input_size]", shape_of(input),
                             torch_message=f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise args.error("hx", "a pair (h, c) of tensors or None", describe(hx), TypeError)
            for i, state in enumerate(hx):
                args.tensor(f"hx[{i}]", state, dtypes=None)
                if state.dim() not in (1, 2):
                    raise args.error(f"hx[{i}]", "1-D [hidden_size] or 2-D [B, hidden_size]", shape_of(state),
                                     torch_message=f"LSTMCell: Expected hx[{i}] to be 1D or 2D, got {state.dim()}D "
                                                   "instead")
        if input.shape[-1] != self.input_size:
            raise args.error("input", f"[B, input_size] with input_size = {self.input_size}", shape_of(input),
                             torch_message=f"input has inconsistent input_size: got {input.shape[-1]} expected "
                                           f"{self.input_size}")
        if hx is not None:
            for i, state in enumerate(hx):
                name, layout = f"hx[{i}]", "[B, hidden_size]" if input.dim() == 2 else "[hidden_size]"
                if state.dim() != input.dim():
                    raise args.error(name, f"{input.dim()}-D {layout} like input", shape_of(state))
                if input.dim() == 2 and state.shape[0] != input.shape[0]:
                    raise args.error(name, f"{layout} with B = {input.shape[0]} (input's batch)", shape_of(state),
                                     torch_message=f"Input batch size {input.shape[0]} doesn't match hidden{i} batch "
                                                   f"size {state.shape[0]}")
                if state.shape[-1] != self.hidden_size:
                    raise args.error(name, f"{layout} with hidden_size = {self.hidden_size}", shape_of(state),
                                     torch_message=f"hidden{i} has inconsistent hidden_size: got {state.shape[-1]}, "
                                                   f"expected {self.hidden_size}")
        if input.dtype != self.weight_ih.dtype:
            raise args.error("input", f"of the module's dtype {dtype_name(self.weight_ih.dtype)}",
                             dtype_name(input.dtype), TypeError)
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        elif not batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = ops.lstm_cell(x, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))
