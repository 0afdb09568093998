// The sequence algorithm shared by every recurrent cell and by the CPU and CUDA
// backends (sequence.cpp): the time loop, its GEMMs through ATen, the workspace saved
// for backward, and the backward loop. A backend supplies only the cells' fused
// pointwise steps (cell_cpu.cpp, cell_cuda.cpp), registered here by device.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common/recurrent_gemm.h"
#include "recurrent/cell.h"

namespace fusednn {
namespace recurrent {

// A step's recurrent GEMM for PointwiseSteps::*_with_gemm: output rows [0, rows) =
// input [rows, k] (row stride lda) x the packed weight (output row stride ldo).
struct StepGemm {
  const UnitPanels* weight;
  const void* input;
  int64_t rows;
  int64_t lda;
  void* output;  // backward only (the forward's output is the pointwise step's tile)
  int64_t ldo;
};

// One device's fused pointwise steps (every cell: the step reads params.cell).
struct PointwiseSteps {
  at::DeviceType device;
  void (*forward)(const ForwardStepParams&);
  void (*backward)(const BackwardStepParams&);
  // Optional (null where a device has none, as on CUDA): a step's recurrent GEMM and its
  // pointwise step as one, so that the device can share the work out itself (CPU: each
  // thread takes a range of hidden units, one fork/join per step). Forward: the GEMM
  // h_{t-1} W_hh^T (weight: W_hh^T [P, G*H] packed by gate blocks), then the pointwise step
  // on it. Backward: first the previous step's GEMM dL/dh_t = dG_{t+1} W_hh into
  // params.grad_hidden (weight: W_hh [G*H, H] packed as one block; no GEMM at t = T-1),
  // then the pointwise step t; the time loop runs the last GEMM (dL/dh0) itself. Each
  // returns false, having done nothing, for a storage type it does not take; the time
  // loop then runs the GEMMs through ATen and the pointwise steps alone.
  bool (*forward_with_gemm)(const ForwardStepParams&, const StepGemm&);
  bool (*backward_with_gemm)(const BackwardStepParams&, const StepGemm&);
};

// A backend registers its steps once, from a static initializer; returns true.
bool register_steps(const PointwiseSteps& steps);
// The steps of `device`; throws (RuntimeError) where this build has none for it.
const PointwiseSteps& steps_for(at::DeviceType device);

// The cell's name in messages ("fusednn::gru_forward: ...").
const char* cell_name(Cell cell);

// One layer, one direction over a time-major x [T, B, I]. c0 and w_hr are the LSTM's
// only (absent otherwise). `op` names the operator in error messages. Every argument
// is checked first (ValueError / TypeError in Python).
struct ForwardResult {
  at::Tensor y;       // [T, B, P]
  at::Tensor h_n;     // [B, P]
  at::Tensor c_n;     // [B, H] (LSTM), else undefined
  at::Tensor gates;   // [T, B, saved_gates * H] accumulate with save_workspace, else empty
  at::Tensor states;  // [T, B, H] accumulate with save_workspace and has_state, else empty
  at::Tensor hidden;  // [T, B, H] storage with save_workspace and w_hr (m_t), else empty
};
ForwardResult sequence_forward(Cell cell, const char* op, at::DeviceType device, const at::Tensor& x,
                               const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
                               at::OptionalIntArrayRef batch_sizes, bool save_workspace);

struct BackwardResult {
  at::Tensor grad_x;        // [T, B, I] with input_grad, else empty
  at::Tensor grad_h0;       // [B, P]
  at::Tensor grad_c0;       // [B, H] (LSTM), else undefined
  // Where the input and hidden gate gradients agree (LSTM, RNN): [dW_ih | dW_hh]
  // ([G*H, I + P], one GEMM) and the gradient of b_ih and b_hh alike. GRU: grad_w_ih,
  // grad_w_hh, grad_b_ih, grad_b_hh each on its own.
  at::Tensor grad_w_ih_hh, grad_bias;
  at::Tensor grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh;
  at::Tensor grad_w_hr;     // [P, H] with w_hr, else empty
};
// `gates`, `states` and `hidden` are sequence_forward's workspace, as it returned them.
BackwardResult sequence_backward(Cell cell, const char* op, at::DeviceType device,
                                 const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& grad_h_n,
                                 const std::optional<at::Tensor>& grad_c_n, const at::Tensor& x, const at::Tensor& h0,
                                 const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 const std::optional<at::Tensor>& w_hr, at::OptionalIntArrayRef batch_sizes,
                                 const at::Tensor& y, const at::Tensor& gates, const at::Tensor& states,
                                 const at::Tensor& hidden, bool input_grad);

}  // namespace recurrent
}  // namespace fusednn
