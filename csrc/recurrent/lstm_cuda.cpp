// CUDA registration of fusednn::lstm_forward / fusednn::lstm_backward: the shared
// sequence algorithm (lstm.cpp, GEMMs through ATen -> cuBLAS) with the pointwise
// steps of lstm.cu launched on the current stream. Built only against a CUDA torch.

#include <ATen/DeviceGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "recurrent/lstm.h"
#include "recurrent/lstm_sequence.h"

namespace fusednn {
namespace lstm {
namespace {

void check_launch(int status, const char* step) {
  TORCH_CHECK(status == static_cast<int>(cudaSuccess), "fusednn lstm: the ", step, " kernel failed to launch: ",
              cudaGetErrorString(static_cast<cudaError_t>(status)));
}

void cuda_forward_step(const ForwardStepParams& p) {
  check_launch(launch_forward_step(p, c10::cuda::getCurrentCUDAStream().stream()), "forward step");
}

void cuda_backward_step(const BackwardStepParams& p) {
  check_launch(launch_backward_step(p, c10::cuda::getCurrentCUDAStream().stream()), "backward step");
}

// No fused GEMM + pointwise steps: the time loop runs cuBLAS, then the step kernel.
constexpr PointwiseSteps kCudaSteps{at::kCUDA, cuda_forward_step, cuda_backward_step, nullptr, nullptr};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cuda(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, at::OptionalIntArrayRef batch_sizes, bool save_workspace) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));  // x's device is checked with the rest
  return sequence_forward(kCudaSteps, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save_workspace);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward_cuda(
    const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    at::OptionalIntArrayRef batch_sizes, const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cells,
    const at::Tensor& hidden, bool input_grad) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  return sequence_backward(kCudaSteps, grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, batch_sizes, y, gates,
                           cells, hidden, input_grad);
}

}  // namespace
}  // namespace lstm
}  // namespace fusednn

TORCH_LIBRARY_IMPL(fusednn, CUDA, m) {
  m.impl("lstm_forward", &fusednn::lstm::lstm_forward_cuda);
  m.impl("lstm_backward", &fusednn::lstm::lstm_backward_cuda);
}
