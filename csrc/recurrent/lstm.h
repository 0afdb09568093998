// LSTM pointwise steps: the parameter structs shared by the CPU and CUDA kernels
// and the CUDA launchers. Framework-free (no torch, no CUDA headers) so that the
// .cu file compiles with nvcc alone and the CPU build can include it too.
//
// One time step of a (possibly variable-length) batch: `rows` batch rows, of which
// the first `active_rows` advance this step (the rows of a packed batch are sorted
// by decreasing length, so the active rows are always a prefix). The gates of a row
// are laid out as torch does, [i | f | g | o], each `hidden` wide.
//
// Types (common/types.h): inputs, weights and outputs are in the storage type; cell
// states and saved gate activations in the accumulate type, so half and bfloat16
// sequences carry an fp32 cell state.
#pragma once

#include <cstdint>

#include "common/types.h"

struct CUstream_st;  // cudaStream_t is `CUstream_st*`; declared here to stay free of CUDA headers

namespace fusednn {
namespace lstm {

struct ForwardStepParams {
  Storage storage;
  int64_t rows;
  int64_t active_rows;
  int64_t hidden;
  // [rows, 4H] storage: x_t W_ih^T. Only active rows are read.
  const void* input_gates;
  // [active_rows, 4H] storage: h_{t-1} W_hh^T.
  const void* hidden_gates;
  // [4H] storage, or null: b_ih + b_hh (added here rather than in the GEMM: cheaper on
  // the CPU, and summed in the accumulate type for half types).
  const void* bias;
  // [rows, H] accumulate: c_{t-1} in, c_t out (active rows; the others keep their state).
  void* cell;
  // [rows, 4H] accumulate, or null: activations sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
  // for the backward pass; 0 for inactive rows. May alias input_gates when the types agree.
  void* saved_gates;
  // [rows, H] accumulate, or null: c_t for the backward pass; 0 for inactive rows.
  void* saved_cell;
  // [rows, H] storage: h_t = o * tanh(c_t) for active rows, 0 for the inactive ones.
  void* hidden_out;
  // [rows, H] storage, or null: also receives h_t of the active rows (the running h_n).
  void* hidden_last;
};

struct BackwardStepParams {
  Storage storage;
  int64_t rows;
  int64_t active_rows;
  int64_t hidden;
  const void* saved_gates;  // [rows, 4H] accumulate: activations saved by the forward step
  const void* cell;         // [rows, H] accumulate: c_t
  const void* cell_prev;    // [rows, H] accumulate: c_{t-1}
  const void* grad_output;  // [rows, H] storage, or null: dL/dy_t
  const void* grad_hidden;  // [rows, H] storage: dL/dh_t through the recurrence (and from h_n)
  // [rows, H] accumulate: dL/dc_t in, dL/dc_{t-1} out (active rows; the others keep theirs).
  void* grad_cell;
  // [rows, 4H] storage: dL/d(pre-activation gates); 0 for inactive rows.
  void* grad_gates;
};

// Launch one step on `stream` (a cudaStream_t). Return a cudaError_t as int (0 = success).
int launch_forward_step(const ForwardStepParams& params, CUstream_st* stream);
int launch_backward_step(const BackwardStepParams& params, CUstream_st* stream);

}  // namespace lstm
}  // namespace fusednn
