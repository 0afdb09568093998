// The recurrent cells' pointwise steps: what a cell is, the parameter structs shared
// by the CPU and CUDA kernels, and the CUDA launchers. Framework-free (no torch, no
// CUDA headers) so that the .cu file compiles with nvcc alone and the CPU build can
// include it too.
//
// A cell is described by four numbers (see below): how many gate blocks its GEMMs
// produce, how many blocks of activations it saves for backward, how many blocks
// its bias has, and whether it carries a state of its own in the accumulate type.
// Everything else of a cell is its pointwise forward and backward step
// (cell_cpu.cpp, cell.cu); the time loop (sequence.cpp) is the same for every cell.
//
//   LSTM   gates [i | f | g | o] (torch's order)        c_t = f c_{t-1} + i g, h_t = o tanh(c_t)
//          saves  i, f, g, o activations; state c (saved per step)
//          bias   b_ih + b_hh
//   GRU    gates [r | z | n] (torch's order)            n = tanh(x_n + b_in + r (h_n + b_hn))
//          saves  r, z, n and h_n + b_hn                h_t = (1 - z) n + z h_{t-1}
//          state  h in the accumulate type (saved per step: the next step's h_{t-1})
//          bias   [b_ir + b_hr | b_iz + b_hz | b_in | b_hn]
//   RNN    gates [a]                                    h_t = tanh(a) or relu(a)
//          saves  h_t; no state; bias b_ih + b_hh
//
// One time step of a (possibly variable-length) batch has `rows` batch rows, of which
// the first `active_rows` advance this step (the rows of a packed batch are sorted by
// decreasing length, so the active rows are always a prefix). A row's gates are
// `gates(cell)` blocks, each `hidden` wide.
//
// Types (common/types.h): inputs, weights and outputs are in the storage type; cell
// states and saved activations in the accumulate type, so half and bfloat16
// sequences carry an fp32 state.
#pragma once

#include <cstdint>

#include "common/types.h"

struct CUstream_st;  // cudaStream_t is `CUstream_st*`; declared here to stay free of CUDA headers

namespace fusednn {
namespace recurrent {

enum class Cell : int32_t { kLSTM = 0, kGRU = 1, kRNNTanh = 2, kRNNReLU = 3 };

// The cell's numbers are needed by host code and by the CUDA kernels alike.
#ifdef __CUDACC__
#define FUSEDNN_HOST_DEVICE __host__ __device__
#else
#define FUSEDNN_HOST_DEVICE
#endif

// Gate blocks of the input and hidden GEMMs' outputs (and of their gradients).
FUSEDNN_HOST_DEVICE constexpr int64_t gates(Cell cell) { return cell == Cell::kLSTM ? 4 : cell == Cell::kGRU ? 3 : 1; }
// Blocks of activations saved per row and step for backward.
FUSEDNN_HOST_DEVICE constexpr int64_t saved_gates(Cell cell) { return cell == Cell::kLSTM || cell == Cell::kGRU ? 4 : 1; }
// Blocks of the bias the pointwise step adds (see the table above).
FUSEDNN_HOST_DEVICE constexpr int64_t bias_blocks(Cell cell) { return cell == Cell::kGRU ? 4 : gates(cell); }
// Whether the cell carries a [rows, H] state in the accumulate type (LSTM: c; GRU: h).
FUSEDNN_HOST_DEVICE constexpr bool has_state(Cell cell) { return cell == Cell::kLSTM || cell == Cell::kGRU; }

struct ForwardStepParams {
  Storage storage;
  Cell cell;
  int64_t rows;
  int64_t active_rows;
  int64_t hidden;
  // [rows, gates * H] storage: x_t W_ih^T. Only active rows are read.
  const void* input_gates;
  // [active_rows, gates * H] storage: h_{t-1} W_hh^T.
  const void* hidden_gates;
  // [bias_blocks * H] storage, or null (added here rather than in the GEMM: cheaper on
  // the CPU, and summed in the accumulate type for half types).
  const void* bias;
  // [rows, H] accumulate, or null without a state: the state in, the new one out
  // (active rows; the others keep theirs).
  void* state;
  // [rows, saved_gates * H] accumulate, or null: the activations backward needs; 0 for
  // inactive rows. May alias input_gates when the types agree and the widths do (LSTM).
  void* saved_gates;
  // [rows, H] accumulate, or null: the new state for the backward pass; 0 for inactive rows.
  void* saved_state;
  // [rows, H] storage: h_t for active rows, 0 for the inactive ones.
  void* hidden_out;
  // [rows, H] storage, or null: also receives h_t of the active rows (the running h_n).
  void* hidden_last;
};

struct BackwardStepParams {
  Storage storage;
  Cell cell;
  int64_t rows;
  int64_t active_rows;
  int64_t hidden;
  const void* saved_gates;  // [rows, saved_gates * H] accumulate: saved by the forward step
  const void* state;        // [rows, H] accumulate, or null: the state after the step (LSTM: c_t)
  const void* state_prev;   // [rows, H] accumulate, or null: the state before it (c_{t-1}; GRU: h_{t-1})
  const void* grad_output;  // [rows, H] storage, or null: dL/dy_t
  const void* grad_hidden;  // [rows, H] storage: dL/dh_t through the recurrent GEMM (and from h_n)
  // [rows, H] accumulate, or null for the RNN: the gradient carried past the GEMM (LSTM:
  // dL/dc; GRU: dL/dh through h_t = ... + z h_{t-1}). In: from step t+1; out: to step
  // t-1 (active rows; the others keep theirs).
  void* grad_state;
  // [rows, gates * H] storage: dL/d(hidden GEMM output + its bias), what the recurrent
  // GEMM dL/dh_{t-1} = dG W_hh and dW_hh take; 0 for inactive rows.
  void* grad_gates;
  // [rows, gates * H] storage, or null where it equals grad_gates (LSTM, RNN): dL/d(input
  // GEMM output + its bias), for dW_ih and dx (GRU: differs in the n block).
  void* grad_input_gates;
};

// Launch one step on `stream` (a cudaStream_t). Return a cudaError_t as int (0 = success).
int launch_forward_step(const ForwardStepParams& params, CUstream_st* stream);
int launch_backward_step(const BackwardStepParams& params, CUstream_st* stream);

}  // namespace recurrent
}  // namespace fusednn
