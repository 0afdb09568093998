// The LSTM sequence algorithm shared by the CPU and CUDA backends (lstm.cpp): the
// time loop, its GEMMs through ATen, the workspace saved for backward, and the
// backward loop. Each backend supplies only the fused pointwise step.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "common/recurrent_gemm.h"
#include "recurrent/lstm.h"

namespace fusednn {
namespace lstm {

// The per-device fused pointwise steps (lstm_cpu.cpp, lstm_cuda.cpp).
struct PointwiseSteps {
  at::DeviceType device;  // the device type of x (and of every other tensor)
  void (*forward)(const ForwardStepParams&);
  void (*backward)(const BackwardStepParams&);
  // Optional (null where a device has none, as on CUDA): the step's recurrent GEMM and its
  // pointwise step as one, so that the device can share the work out itself (CPU: each
  // thread multiplies and activates its own batch rows in one fork/join per step, and
  // the backward GEMM is split over its inner dimension). Forward runs gemm
  // (hidden_gates = h_{t-1} W_hh^T) then the pointwise step; backward runs the pointwise
  // step then gemm (dL/dh_{t-1} = dG_t W_hh). Each returns false, having done nothing, for
  // inputs it does not take; the time loop then runs the GEMM through ATen and the
  // pointwise step separately.
  bool (*forward_with_gemm)(const ForwardStepParams&, const RecurrentGemm&);
  bool (*backward_with_gemm)(const BackwardStepParams&, const RecurrentGemm&);
};

// fusednn::lstm_forward -> (y, h_n, c_n, gates, cells, hidden); see lstm_schema.cpp.
// Both check every argument first (ValueError / TypeError in Python).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sequence_forward(
    const PointwiseSteps& steps, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    at::OptionalIntArrayRef batch_sizes, bool save_workspace);

// fusednn::lstm_backward -> (grad_x, grad_h0, grad_c0, [grad_w_ih | grad_w_hh], grad_bias, grad_w_hr).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sequence_backward(
    const PointwiseSteps& steps, const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    at::OptionalIntArrayRef batch_sizes, const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cells,
    const at::Tensor& hidden, bool input_grad);

}  // namespace lstm
}  // namespace fusednn
