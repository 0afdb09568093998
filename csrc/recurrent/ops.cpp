// The recurrent ops: their schemas and their CPU and CUDA registrations, all thin
// wrappers of the shared sequence algorithm (sequence.cpp) with a cell and a device.
// The kernels behind a device are its registered pointwise steps (cell_cpu.cpp,
// cell_cuda.cpp), so this file needs no CUDA headers.

#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "recurrent/sequence.h"

namespace fusednn {
namespace recurrent {
namespace {

using Tensor = at::Tensor;
using OptionalTensor = std::optional<at::Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tensor6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Cell rnn_cell_of(const std::string& op, c10::string_view nonlinearity) {
  if (nonlinearity == "tanh") return Cell::kRNNTanh;
  TORCH_CHECK_VALUE(nonlinearity == "relu", op, ": nonlinearity must be \"tanh\" or \"relu\"; got \"",
                    std::string(nonlinearity), "\"");
  return Cell::kRNNReLU;
}

template <at::DeviceType kDevice>
Tensor6 lstm_forward(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                     const OptionalTensor& b_ih, const OptionalTensor& b_hh, const OptionalTensor& w_hr,
                     at::OptionalIntArrayRef batch_sizes, bool save_workspace) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));  // x's device is checked with the rest
  ForwardResult r = sequence_forward(Cell::kLSTM, "fusednn::lstm_forward", kDevice, x, h0, c0, w_ih, w_hh, b_ih,
                                     b_hh, w_hr, batch_sizes, save_workspace);
  return {r.y, r.h_n, r.c_n, r.gates, r.states, r.hidden};
}

template <at::DeviceType kDevice>
Tensor6 lstm_backward(const OptionalTensor& grad_y, const OptionalTensor& grad_h_n, const OptionalTensor& grad_c_n,
                      const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                      const OptionalTensor& w_hr, at::OptionalIntArrayRef batch_sizes, const Tensor& y,
                      const Tensor& gates, const Tensor& cells, const Tensor& hidden, bool input_grad) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  BackwardResult r = sequence_backward(Cell::kLSTM, "fusednn::lstm_backward", kDevice, grad_y, grad_h_n, grad_c_n,
                                       x, h0, c0, w_ih, w_hh, w_hr, batch_sizes, y, gates, cells, hidden, input_grad);
  return {r.grad_x, r.grad_h0, r.grad_c0, r.grad_w_ih_hh, r.grad_bias, r.grad_w_hr};
}

template <at::DeviceType kDevice>
Tensor4 gru_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                    const OptionalTensor& b_ih, const OptionalTensor& b_hh, at::OptionalIntArrayRef batch_sizes,
                    bool save_workspace) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  ForwardResult r = sequence_forward(Cell::kGRU, "fusednn::gru_forward", kDevice, x, h0, std::nullopt, w_ih, w_hh,
                                     b_ih, b_hh, std::nullopt, batch_sizes, save_workspace);
  return {r.y, r.h_n, r.gates, r.states};
}

template <at::DeviceType kDevice>
Tensor6 gru_backward(const OptionalTensor& grad_y, const OptionalTensor& grad_h_n, const Tensor& x, const Tensor& h0,
                     const Tensor& w_ih, const Tensor& w_hh, at::OptionalIntArrayRef batch_sizes, const Tensor& y,
                     const Tensor& gates, const Tensor& states, bool input_grad) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  BackwardResult r =
      sequence_backward(Cell::kGRU, "fusednn::gru_backward", kDevice, grad_y, grad_h_n, std::nullopt, x, h0,
                        std::nullopt, w_ih, w_hh, std::nullopt, batch_sizes, y, gates, states, Tensor(), input_grad);
  return {r.grad_x, r.grad_h0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
}

template <at::DeviceType kDevice>
std::tuple<Tensor, Tensor, Tensor> rnn_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                               const Tensor& w_hh, const OptionalTensor& b_ih,
                                               const OptionalTensor& b_hh, c10::string_view nonlinearity,
                                               at::OptionalIntArrayRef batch_sizes, bool save_workspace) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  const char* op = "fusednn::rnn_forward";
  ForwardResult r = sequence_forward(rnn_cell_of(op, nonlinearity), op, kDevice, x, h0, std::nullopt, w_ih, w_hh,
                                     b_ih, b_hh, std::nullopt, batch_sizes, save_workspace);
  return {r.y, r.h_n, r.gates};
}

template <at::DeviceType kDevice>
Tensor4 rnn_backward(const OptionalTensor& grad_y, const OptionalTensor& grad_h_n, const Tensor& x, const Tensor& h0,
                     const Tensor& w_ih, const Tensor& w_hh, c10::string_view nonlinearity,
                     at::OptionalIntArrayRef batch_sizes, const Tensor& y, const Tensor& gates, bool input_grad) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  const char* op = "fusednn::rnn_backward";
  BackwardResult r = sequence_backward(rnn_cell_of(op, nonlinearity), op, kDevice, grad_y, grad_h_n, std::nullopt,
                                       x, h0, std::nullopt, w_ih, w_hh, std::nullopt, batch_sizes, y, gates, Tensor(),
                                       Tensor(), input_grad);
  return {r.grad_x, r.grad_h0, r.grad_w_ih_hh, r.grad_bias};
}

template <at::DeviceType kDevice>
void register_impls(torch::Library& m) {
  m.impl("lstm_forward", &lstm_forward<kDevice>);
  m.impl("lstm_backward", &lstm_backward<kDevice>);
  m.impl("gru_forward", &gru_forward<kDevice>);
  m.impl("gru_backward", &gru_backward<kDevice>);
  m.impl("rnn_forward", &rnn_forward<kDevice>);
  m.impl("rnn_backward", &rnn_backward<kDevice>);
}

}  // namespace
}  // namespace recurrent
}  // namespace fusednn

TORCH_LIBRARY_FRAGMENT(fusednn, m) {
  // One layer, one direction, time-major x [T, B, I]; batch_sizes (non-increasing)
  // makes a packed variable-length batch: step t advances rows [0, batch_sizes[t]), the
  // others keep their state and give y = 0. With save_workspace the forward also returns
  // what its backward needs, in the accumulate dtype (float32 for half types); otherwise
  // those are empty. The backward's grad_x is empty unless input_grad.
  //
  // LSTM: y [T, B, P], h_n [B, P], c_n [B, H]; gates [T, B, 4H] (the activations
  // i, f, g, o), cells [T, B, H] and, with w_hr, hidden [T, B, H] (storage dtype).
  // grad_w_ih_hh = [grad_w_ih | grad_w_hh] ([4H, I + P], one GEMM); grad_bias is the
  // gradient of b_ih and of b_hh alike; grad_w_hr is empty unless w_hr is given.
  m.def(
      "lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? w_hr, int[]? batch_sizes, bool save_workspace) -> "
      "(Tensor y, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells, Tensor hidden)");
  m.def(
      "lstm_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, Tensor x, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? w_hr, int[]? batch_sizes, Tensor y, Tensor gates, Tensor cells, "
      "Tensor hidden, bool input_grad) -> "
      "(Tensor grad_x, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih_hh, Tensor grad_bias, Tensor grad_w_hr)");
  // GRU (gate order r, z, n): y [T, B, H], h_n [B, H]; gates [T, B, 4H] (r, z, n and
  // W_hn h + b_hn), states [T, B, H] (h_t). The input and hidden gate gradients differ,
  // so each weight and bias gradient comes on its own.
  m.def(
      "gru_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, int[]? batch_sizes, "
      "bool save_workspace) -> (Tensor y, Tensor h_n, Tensor gates, Tensor states)");
  m.def(
      "gru_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "int[]? batch_sizes, Tensor y, Tensor gates, Tensor states, bool input_grad) -> "
      "(Tensor grad_x, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  // Elman RNN, h_t = nonlinearity(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh) with
  // nonlinearity "tanh" or "relu": y [T, B, H], h_n [B, H]; gates [T, B, H] (h_t).
  // grad_w_ih_hh = [grad_w_ih | grad_w_hh] ([H, I + H]); grad_bias as the LSTM's.
  m.def(
      "rnn_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, str nonlinearity, "
      "int[]? batch_sizes, bool save_workspace) -> (Tensor y, Tensor h_n, Tensor gates)");
  m.def(
      "rnn_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "str nonlinearity, int[]? batch_sizes, Tensor y, Tensor gates, bool input_grad) -> "
      "(Tensor grad_x, Tensor grad_h0, Tensor grad_w_ih_hh, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(fusednn, CPU, m) { fusednn::recurrent::register_impls<at::kCPU>(m); }
TORCH_LIBRARY_IMPL(fusednn, CUDA, m) { fusednn::recurrent::register_impls<at::kCUDA>(m); }
