// The operator schemas of the LSTM ops; the kernels are registered per backend in
// lstm_cpu.cpp and lstm_cuda.cpp, the time loop they share is lstm.cpp.

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusednn, m) {
  // One layer, one direction, time-major x [T, B, I]; batch_sizes (non-increasing)
  // makes a packed variable-length batch. Returns y [T, B, P], h_n [B, P], c_n [B, H]
  // and, with save_workspace, what lstm_backward needs: gates [T, B, 4H] and
  // cells [T, B, H] (fp32 for half types) and, with w_hr, hidden [T, B, H];
  // otherwise those three are empty.
  m.def(
      "lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? w_hr, int[]? batch_sizes, bool save_workspace) -> "
      "(Tensor y, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells, Tensor hidden)");
  // grad_w_ih_hh = [grad_w_ih | grad_w_hh] ([4H, I + P], one GEMM); grad_bias is the
  // gradient of b_ih and of b_hh alike; grad_x is empty unless input_grad, grad_w_hr
  // unless w_hr is given. gates, cells and hidden are lstm_forward's workspace, as it
  // returned them.
  m.def(
      "lstm_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, Tensor x, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? w_hr, int[]? batch_sizes, Tensor y, Tensor gates, Tensor cells, "
      "Tensor hidden, bool input_grad) -> "
      "(Tensor grad_x, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih_hh, Tensor grad_bias, Tensor grad_w_hr)");
}
